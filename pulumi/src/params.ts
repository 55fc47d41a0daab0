// SSM Parameter Store: the live configuration of a running cluster. `pulumi up` rewrites these and
// the cluster follows without replacing anything:
//   /smartscale/<id>/agent/*           the agent's settings (docs/interfaces.md), read at each start
//   /smartscale/<id>/controller/config the controller's config file (controller-config.ts)
//   /smartscale/<id>/server/release    the controller binary and manifests the server must run (JSON)
// smartscale-sync on the server applies the last two within a minute.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { Artifact } from "./artifacts";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

/** Standard-tier parameters hold at most 4 KB. */
export const SSM_STANDARD_VALUE_LIMIT = 4096;
/** Prometheus scrapes the agents this often (userdata/manifests/smartscale.yaml). */
export const AGENT_SCRAPE_INTERVAL_SECONDS = 10;

/** Heartbeats every fifth of the hook's timeout (at least 10 s): three can fail before it expires. */
export function heartbeatIntervalSeconds(heartbeatTimeout: number): number {
    return Math.max(10, Math.floor(heartbeatTimeout / 5));
}

/** Parameter name (relative to the path) -> value. Empty optional ones are left out (SSM rejects empty values). */
export function agentParamValues(cfg: StackConfig, names: Names, serverUrl: pulumi.Input<string>): Record<string, pulumi.Input<string>> {
    const values: Record<string, pulumi.Input<string>> = {
        server_url: serverUrl,
        launch_hook_name: names.launchHookName,
        terminate_hook_name: names.terminateHookName,
        drain_timeout: cfg.drainTimeout,
        spot_drain_deadline: cfg.spotDrainDeadline,
        on_drain_timeout: cfg.onDrainTimeout,
        eviction_concurrency: String(cfg.evictionConcurrency),
        rebalance_enabled: String(cfg.rebalanceEnabled),
        heartbeat_interval: `${heartbeatIntervalSeconds(cfg.lifecycleHeartbeatTimeout)}s`,
        // Requested of the agent (pulumi/README.md): wait until /metrics was scraped once after a
        // drain, at most this long, before completing the terminate hook. Older agents log and ignore it.
        metrics_flush_wait: `${2 * AGENT_SCRAPE_INTERVAL_SECONDS}s`,
    };
    if (cfg.workerNodeLabels) values.node_labels = cfg.workerNodeLabels;
    if (cfg.workerNodeTaints) values.node_taints = cfg.workerNodeTaints;
    return values;
}

/** The JSON smartscale-sync reads: which object versions the server runs. */
export function releaseJson(bucket: pulumi.Input<string>, controller: Artifact, manifests: Record<string, Artifact>): pulumi.Output<string> {
    const ref = (a: Artifact) => ({ key: a.key, versionId: a.versionId, sha256: a.sha256 });
    return pulumi.jsonStringify({
        bucket,
        controller: ref(controller),
        manifests: Object.fromEntries(Object.entries(manifests).map(([name, a]) => [name, ref(a)])),
    });
}

const param = (cfg: StackConfig, names: Names, id: string, name: string, value: pulumi.Input<string>, description: string) =>
    new aws.ssm.Parameter(id, { name, type: "String", tier: "Standard", value, description, tags: baseTags(cfg, names) });

/** The agent's settings; server_url needs the server's private address, so they follow the server. */
export function createAgentParams(cfg: StackConfig, names: Names, serverUrl: pulumi.Input<string>): aws.ssm.Parameter[] {
    return Object.entries(agentParamValues(cfg, names, serverUrl)).map(([key, value]) =>
        param(cfg, names, `agent-${key.replace(/_/g, "-")}`, `${names.ssmPath}/${key}`, value, `smartscale-agent setting ${key} (docs/interfaces.md)`),
    );
}

/** What the server runs; it reads both at first boot, so they precede it. */
export function createServerParams(
    cfg: StackConfig,
    names: Names,
    i: { controllerConfig: string; release: pulumi.Output<string> },
): aws.ssm.Parameter[] {
    return [
        param(cfg, names, "controller-config", names.controllerConfigParam, i.controllerConfig, "smartscale-controller config file (YAML), applied by smartscale-sync"),
        param(cfg, names, "server-release", names.serverReleaseParam, i.release, "controller binary and K3s manifests the server runs (JSON), applied by smartscale-sync"),
    ];
}
