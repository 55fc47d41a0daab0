// The agent's SSM parameters under /smartscale/<clusterId>/agent/ (docs/interfaces.md).
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

export interface AgentParams {
    params: aws.ssm.Parameter[];
}

/** Parameter name (relative to the path) -> value. Empty optional ones are left out (SSM rejects empty values). */
export function agentParamValues(
    cfg: StackConfig,
    names: Names,
    serverUrl: pulumi.Input<string>,
): Record<string, pulumi.Input<string>> {
    const values: Record<string, pulumi.Input<string>> = {
        server_url: serverUrl,
        launch_hook_name: names.launchHookName,
        terminate_hook_name: names.terminateHookName,
        drain_timeout: cfg.drainTimeout,
        spot_drain_deadline: cfg.spotDrainDeadline,
        on_drain_timeout: cfg.onDrainTimeout,
        eviction_concurrency: String(cfg.evictionConcurrency),
        rebalance_enabled: String(cfg.rebalanceEnabled),
    };
    if (cfg.workerNodeLabels) values.node_labels = cfg.workerNodeLabels;
    if (cfg.workerNodeTaints) values.node_taints = cfg.workerNodeTaints;
    return values;
}

export function createAgentParams(cfg: StackConfig, names: Names, serverUrl: pulumi.Input<string>): AgentParams {
    const params = Object.entries(agentParamValues(cfg, names, serverUrl)).map(
        ([key, value]) =>
            new aws.ssm.Parameter(`agent-${key.replace(/_/g, "-")}`, {
                name: `${names.ssmPath}/${key}`,
                type: "String",
                value,
                description: `smartscale-agent setting ${key} (docs/interfaces.md)`,
                tags: baseTags(cfg, names),
            }),
    );
    return { params };
}
