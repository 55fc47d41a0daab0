// Names derived from the cluster id. Several are fixed (not auto-named) on purpose: the server's
// UserData, the agent's SSM parameters and the IAM policies need the ASG, hook, table, secret and
// parameter names before those resources exist, and docs/interfaces.md fixes the SSM layout.
// test/aws-limits.test.ts holds every name to AWS's length and character rules with the longest
// cluster id config.ts accepts.
import { StackConfig } from "./config";

export interface Names {
    prefix: string;
    asgName: string;
    launchHookName: string;
    terminateHookName: string;
    tableName: string;
    /** The K3s server token: full administrator access to the cluster; only the server role reads it. */
    serverTokenSecretName: string;
    /** The K3s agent token (K10<CA hash>::node:<password>), written by the server; workers read only this. */
    agentTokenSecretName: string;
    grafanaSecretName: string;
    /** SSM Parameter Store path holding the agent's settings (no trailing slash). */
    ssmPath: string;
    /** SSM parameter holding the controller's whole config file (YAML), applied by smartscale-sync. */
    controllerConfigParam: string;
    /** SSM parameter naming the controller binary and manifests the server runs (JSON). */
    serverReleaseParam: string;
    /** S3 bucketPrefix: the provider appends 26 characters and S3 allows 63, so at most 37. */
    bucketPrefix: string;
    /** Tag put on every resource; IAM conditions on the ASG use it. */
    clusterTagKey: string;
}

export function namesFor(cfg: StackConfig): Names {
    const prefix = `smartscale-${cfg.clusterId}`;
    return {
        prefix,
        asgName: `${prefix}-workers`,
        launchHookName: `${prefix}-launch`,
        terminateHookName: `${prefix}-terminate`,
        tableName: `${prefix}-state`,
        serverTokenSecretName: `smartscale/${cfg.clusterId}/k3s-server-token`,
        agentTokenSecretName: `smartscale/${cfg.clusterId}/k3s-agent-token`,
        grafanaSecretName: `smartscale/${cfg.clusterId}/grafana-admin`,
        ssmPath: `/smartscale/${cfg.clusterId}/agent`,
        controllerConfigParam: `/smartscale/${cfg.clusterId}/controller/config`,
        serverReleaseParam: `/smartscale/${cfg.clusterId}/server/release`,
        bucketPrefix: `${prefix}-`,
        clusterTagKey: "smartscale.io/cluster",
    };
}

/**
 * Tags for every resource. Their keys contain '/', which instance metadata tags do not allow:
 * that is why the launch template keeps instance metadata tags off (workers.ts).
 */
export function baseTags(cfg: StackConfig, names: Names, name?: string): Record<string, string> {
    const tags: Record<string, string> = {
        [names.clusterTagKey]: cfg.clusterId,
        "smartscale.io/stack": cfg.stack,
    };
    if (name) {
        tags["Name"] = name;
    }
    return tags;
}
