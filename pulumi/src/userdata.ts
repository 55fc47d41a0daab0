// UserData for the server and the workers, and the agent's config file.
//
// Inputs are plain strings: callers resolve Outputs first (pulumi.all(...).apply(...)) so the same
// functions serve the Pulumi program, the unit tests and scripts/check-infra.sh (via
// pulumi/scripts/render-samples.ts), and what shellcheck checks is exactly what instances run.
// Instances receive it gzip-compressed (cloud-init decompresses gzip user data), which keeps the
// script with its AWS helper and units under EC2's 16 KiB limit.
import * as zlib from "zlib";
import { readRepoFile } from "./files";
import { renderTemplate } from "./render";

/** EC2 rejects UserData over 16 KiB (before base64). */
export const USERDATA_LIMIT_BYTES = 16384;

export const AGENT_METRICS_PORT = 9102;
/** How long a new worker waits for the server to publish the agent token (a new cluster's server installs meanwhile). */
export const AGENT_TOKEN_WAIT_SECONDS = 1800;

export interface AgentConfigInput {
    ssmPath: string;
    tokenSecretId: string;
    joinTimeout: string;
}

/** /etc/smartscale/agent.yaml: keys and defaults as in docs/interfaces.md. */
export function agentConfigYaml(i: AgentConfigInput): string {
    return [
        "# smartscale-agent configuration (docs/interfaces.md), written by the worker bootstrap.",
        "# metrics_listen is overridden in /etc/smartscale/agent.env with this node's private address.",
        `ssm_path: ${i.ssmPath}`,
        `token_secret_id: ${i.tokenSecretId}`,
        "k3s_config_path: /etc/rancher/k3s/config.yaml",
        'k3s_start_command: ["systemctl", "start", "k3s-agent"]',
        "kubeconfig: /var/lib/rancher/k3s/agent/kubelet.kubeconfig",
        `join_timeout: ${i.joinTimeout}`,
        `metrics_listen: 127.0.0.1:${AGENT_METRICS_PORT}`,
        "state_dir: /var/lib/smartscale-agent",
        "",
    ].join("\n");
}

/** A pinned object version of the artifacts bucket. */
export interface ObjectRef {
    key: string;
    versionId: string;
    sha256: string;
}

export interface K3sRefs {
    version: string;
    binary: ObjectRef;
    installScript: ObjectRef;
}

function k3sValues(k: K3sRefs): Record<string, string> {
    return {
        K3S_VERSION: k.version,
        K3S_BINARY_KEY: k.binary.key,
        K3S_BINARY_VERSION_ID: k.binary.versionId,
        K3S_BINARY_SHA256: k.binary.sha256,
        K3S_INSTALL_KEY: k.installScript.key,
        K3S_INSTALL_VERSION_ID: k.installScript.versionId,
        K3S_INSTALL_SHA256: k.installScript.sha256,
    };
}

const commonBlocks = () => ({
    COMMON_FUNCTIONS: readRepoFile("userdata", "common.sh"),
    ARTIFACT_FUNCTIONS: readRepoFile("userdata", "artifacts.sh"),
    AWS_HELPER: readRepoFile("userdata", "smartscale-aws.py"),
});

export interface WorkerUserDataInput {
    region: string;
    clusterId: string;
    asgName: string;
    launchHookName: string;
    heartbeatIntervalSeconds: number;
    bucket: string;
    agent: ObjectRef;
    k3s: K3sRefs;
    agentConfig: AgentConfigInput;
    /** The group has a warm pool (smartscale:warmPool enabled): join at boot, k3s-agent never enabled. */
    warmPool: boolean;
}

/**
 * /usr/local/lib/smartscale/join (userdata/worker-join.sh.tpl): the join steps, run by the bootstrap
 * and, in a warm-pool group, by smartscale-join.service at boot. Written by the worker bootstrap.
 */
export function workerJoinScript(i: WorkerUserDataInput): string {
    return renderTemplate(readRepoFile("userdata", "worker-join.sh.tpl"), {
        shell: true,
        values: {
            REGION: i.region,
            ASG_NAME: i.asgName,
            LAUNCH_HOOK_NAME: i.launchHookName,
            HEARTBEAT_INTERVAL: String(i.heartbeatIntervalSeconds),
            AGENT_TOKEN_SECRET_ID: i.agentConfig.tokenSecretId,
            AGENT_TOKEN_WAIT_SECONDS: String(AGENT_TOKEN_WAIT_SECONDS),
        },
        blocks: { COMMON_FUNCTIONS: readRepoFile("userdata", "common.sh") },
    });
}

export function workerScript(i: WorkerUserDataInput): string {
    return renderTemplate(readRepoFile("userdata", "worker.sh.tpl"), {
        shell: true,
        values: {
            REGION: i.region,
            CLUSTER_ID: i.clusterId,
            ASG_NAME: i.asgName,
            LAUNCH_HOOK_NAME: i.launchHookName,
            HEARTBEAT_INTERVAL: String(i.heartbeatIntervalSeconds),
            ARTIFACT_BUCKET: i.bucket,
            AGENT_KEY: i.agent.key,
            AGENT_VERSION_ID: i.agent.versionId,
            AGENT_SHA256: i.agent.sha256,
            ...k3sValues(i.k3s),
            AGENT_METRICS_PORT: String(AGENT_METRICS_PORT),
            WARM_POOL: String(i.warmPool),
        },
        blocks: {
            ...commonBlocks(),
            AGENT_CONFIG: agentConfigYaml(i.agentConfig),
            AGENT_UNIT: readRepoFile("userdata", "systemd", "smartscale-agent.service"),
            JOIN_SCRIPT: workerJoinScript(i),
            JOIN_UNIT: readRepoFile("userdata", "systemd", "smartscale-join.service"),
        },
    });
}

export interface ServerUserDataInput {
    region: string;
    clusterId: string;
    bucket: string;
    k3s: K3sRefs;
    serverTokenSecretId: string;
    agentTokenSecretId: string;
    grafanaSecretId: string;
    releaseParam: string;
    controllerConfigParam: string;
    /**
     * Lambda mode only: the secret the server writes the controller function's Kubernetes identity
     * into (userdata/publish-identity.sh). Given, the server leaves the daemon controller disabled;
     * absent, it runs the daemon.
     */
    controllerIdentitySecretId?: string;
}

export function serverScript(i: ServerUserDataInput): string {
    return renderTemplate(readRepoFile("userdata", "server.sh.tpl"), {
        shell: true,
        values: {
            REGION: i.region,
            CLUSTER_ID: i.clusterId,
            ARTIFACT_BUCKET: i.bucket,
            ...k3sValues(i.k3s),
            SERVER_TOKEN_SECRET_ID: i.serverTokenSecretId,
            AGENT_TOKEN_SECRET_ID: i.agentTokenSecretId,
            GRAFANA_SECRET_ID: i.grafanaSecretId,
            RELEASE_PARAM: i.releaseParam,
            CONTROLLER_CONFIG_PARAM: i.controllerConfigParam,
            CONTROLLER_MODE: i.controllerIdentitySecretId ? "lambda" : "daemon",
            CONTROLLER_IDENTITY_SECRET_ID: i.controllerIdentitySecretId ?? "",
        },
        blocks: {
            ...commonBlocks(),
            CONTROLLER_UNIT: readRepoFile("userdata", "systemd", "smartscale-controller.service"),
            SYNC_SERVICE: readRepoFile("userdata", "systemd", "smartscale-sync.service"),
            SYNC_TIMER: readRepoFile("userdata", "systemd", "smartscale-sync.timer"),
            IDENTITY_PUBLISHER: readRepoFile("userdata", "publish-identity.sh"),
            IDENTITY_UNIT: readRepoFile("userdata", "systemd", "smartscale-identity.service"),
        },
    });
}

/** The script as EC2 receives it: gzip, base64-encoded; refused if over EC2's limit. */
export function packUserData(what: string, script: string): string {
    const gz = zlib.gzipSync(Buffer.from(script, "utf8"), { level: 9 });
    if (gz.length > USERDATA_LIMIT_BYTES) {
        throw new Error(`${what} UserData is ${gz.length} bytes gzip-compressed, over EC2's ${USERDATA_LIMIT_BYTES}-byte limit`);
    }
    return gz.toString("base64");
}

/** Inverse of packUserData (tests, render-samples). */
export function unpackUserData(base64: string): string {
    return zlib.gunzipSync(Buffer.from(base64, "base64")).toString("utf8");
}
