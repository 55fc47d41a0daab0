// Names derived from the cluster id. Several are fixed (not auto-named) on purpose: the server's
// UserData and the controller config need the ASG, hook and table names before those resources
// exist, and docs/interfaces.md fixes the SSM path and secret id layout.
import { StackConfig } from "./config";

export interface Names {
    prefix: string;
    asgName: string;
    launchHookName: string;
    terminateHookName: string;
    tableName: string;
    tokenSecretName: string;
    grafanaSecretName: string;
    /** SSM Parameter Store path holding the agent's settings (no trailing slash). */
    ssmPath: string;
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
        tokenSecretName: `smartscale/${cfg.clusterId}/k3s-token`,
        grafanaSecretName: `smartscale/${cfg.clusterId}/grafana-admin`,
        ssmPath: `/smartscale/${cfg.clusterId}/agent`,
        clusterTagKey: "smartscale.io/cluster",
    };
}

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
