// UserData for the server and the workers, and the config files they write.
//
// Inputs are plain strings: callers resolve Outputs first (pulumi.all(...).apply(...)) so the same
// functions serve the Pulumi program, the unit tests and scripts/check-infra.sh (via
// pulumi/scripts/render-samples.ts), and what shellcheck checks is exactly what instances run.
import { readRepoFile } from "./files";
import { renderTemplate } from "./render";

/** EC2 rejects UserData over 16 KiB (before base64). */
export const USERDATA_LIMIT_BYTES = 16384;

export const AGENT_METRICS_PORT = 9102;
export const CONTROLLER_API_LISTEN = "127.0.0.1:8080";
export const PROMETHEUS_URL = "http://127.0.0.1:9090";

export interface AgentConfigInput {
    ssmPath: string;
    tokenSecretId: string;
    joinTimeoutSeconds: number;
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
        `join_timeout: ${i.joinTimeoutSeconds}s`,
        `metrics_listen: 127.0.0.1:${AGENT_METRICS_PORT}`,
        "state_dir: /var/lib/smartscale-agent",
        "",
    ].join("\n");
}

export interface ControllerConfigInput {
    clusterId: string;
    interval: string;
    dryRun: boolean;
    tableName: string;
    asgName: string;
    minSize: number;
    maxSize: number;
    instanceType: string;
    allocatableCpu: number;
    allocatableMemoryGib: number;
    hourlyPrice: number;
}

/** /etc/smartscale/controller.yaml: keys as in docs/interfaces.md; everything else keeps its default. */
export function controllerConfigYaml(i: ControllerConfigInput): string {
    return [
        "# smartscale-controller configuration (docs/interfaces.md), written by the server bootstrap.",
        `cluster_id: ${i.clusterId}`,
        `interval: ${i.interval}`,
        `dry_run: ${i.dryRun}`,
        "log_format: json",
        "prometheus:",
        `  url: ${PROMETHEUS_URL}`,
        "state:",
        `  table: ${i.tableName}`,
        "node_groups:",
        `  - asg_name: ${i.asgName}`,
        `    min: ${i.minSize}`,
        `    max: ${i.maxSize}`,
        `    instance_type: ${i.instanceType}`,
        `    allocatable: { cpu: ${i.allocatableCpu}, memory_gib: ${i.allocatableMemoryGib} }`,
        `    hourly_price: ${i.hourlyPrice}`,
        "api:",
        `  listen: ${CONTROLLER_API_LISTEN}`,
        "  token_file: /etc/smartscale/api-token",
        "",
    ].join("\n");
}

export interface WorkerUserDataInput {
    region: string;
    clusterId: string;
    asgName: string;
    launchHookName: string;
    bucket: string;
    agentKey: string;
    agentVersionId: string;
    agentSha256: string;
    k3sVersion: string;
    agent: AgentConfigInput;
}

export function workerUserData(i: WorkerUserDataInput): string {
    return checkSize(
        "worker",
        renderTemplate(readRepoFile("userdata", "worker.sh.tpl"), {
            shell: true,
            values: {
                REGION: i.region,
                CLUSTER_ID: i.clusterId,
                ASG_NAME: i.asgName,
                LAUNCH_HOOK_NAME: i.launchHookName,
                ARTIFACT_BUCKET: i.bucket,
                AGENT_KEY: i.agentKey,
                AGENT_VERSION_ID: i.agentVersionId,
                AGENT_SHA256: i.agentSha256,
                K3S_VERSION: i.k3sVersion,
                AGENT_METRICS_PORT: String(AGENT_METRICS_PORT),
            },
            blocks: {
                COMMON_FUNCTIONS: readRepoFile("userdata", "common.sh"),
                AGENT_CONFIG: agentConfigYaml(i.agent),
                AGENT_UNIT: readRepoFile("userdata", "systemd", "smartscale-agent.service"),
            },
        }),
    );
}

export interface ManifestFetch {
    fileName: string;
    key: string;
    versionId: string;
    sha256: string;
}

export interface ServerUserDataInput {
    region: string;
    clusterId: string;
    bucket: string;
    controllerKey: string;
    controllerVersionId: string;
    controllerSha256: string;
    tokenSecretId: string;
    grafanaSecretId: string;
    k3sVersion: string;
    manifests: ManifestFetch[];
    controller: ControllerConfigInput;
}

function shellQuote(s: string): string {
    if (!/^[\x20-\x26\x28-\x7e]*$/.test(s)) {
        throw new Error(`refusing to quote ${JSON.stringify(s)} for the shell`);
    }
    return `'${s}'`;
}

export function serverUserData(i: ServerUserDataInput): string {
    const fetches = i.manifests.map((m) => {
        if (!/^[a-z0-9-]+\.yaml$/.test(m.fileName)) {
            throw new Error(`bad manifest file name ${m.fileName}`);
        }
        return (
            `fetch_verified "$ARTIFACT_BUCKET" ${shellQuote(m.key)} ${shellQuote(m.versionId)} ${shellQuote(m.sha256)} \\\n` +
            `  "\${MANIFEST_DIR}/${m.fileName}" 0600`
        );
    });
    return checkSize(
        "server",
        renderTemplate(readRepoFile("userdata", "server.sh.tpl"), {
            shell: true,
            values: {
                REGION: i.region,
                CLUSTER_ID: i.clusterId,
                ARTIFACT_BUCKET: i.bucket,
                CONTROLLER_KEY: i.controllerKey,
                CONTROLLER_VERSION_ID: i.controllerVersionId,
                CONTROLLER_SHA256: i.controllerSha256,
                TOKEN_SECRET_ID: i.tokenSecretId,
                GRAFANA_SECRET_ID: i.grafanaSecretId,
                K3S_VERSION: i.k3sVersion,
            },
            blocks: {
                COMMON_FUNCTIONS: readRepoFile("userdata", "common.sh"),
                MANIFEST_FETCHES: fetches.join("\n"),
                CONTROLLER_CONFIG: controllerConfigYaml(i.controller),
                CONTROLLER_UNIT: readRepoFile("userdata", "systemd", "smartscale-controller.service"),
            },
        }),
    );
}

function checkSize(what: string, script: string): string {
    const bytes = Buffer.byteLength(script, "utf8");
    if (bytes > USERDATA_LIMIT_BYTES) {
        throw new Error(`${what} UserData is ${bytes} bytes, over EC2's ${USERDATA_LIMIT_BYTES}-byte limit`);
    }
    return script;
}
