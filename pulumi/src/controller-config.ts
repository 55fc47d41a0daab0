// The controller's config file (docs/interfaces.md, "Controller config"). `pulumi up` writes it into
// the SSM parameter names.controllerConfigParam; smartscale-sync on the server puts it in place
// and restarts the controller when it changed, so min/max, prices, dry-run, interval and the
// signals' PromQL follow the stack config on a running cluster.
import { StackConfig } from "./config";
import { readRepoFile } from "./files";
import { Names } from "./names";

export const CONTROLLER_API_LISTEN = "127.0.0.1:8080";
export const PROMETHEUS_URL = "http://127.0.0.1:9090";

/** dashboards/signals/worker-signals.json: CPU and memory over the workers only. */
export function workerSignals(): { cpu: string; memory: string } {
    const q = JSON.parse(readRepoFile("dashboards", "signals", "worker-signals.json"));
    return { cpu: q.cpu, memory: q.memory };
}

/** A YAML single-quoted scalar. */
const quoted = (s: string) => `'${s.replace(/'/g, "''")}'`;

export function controllerConfigYaml(cfg: StackConfig, names: Names): string {
    const q = workerSignals();
    return [
        `# smartscale-controller configuration (docs/interfaces.md), written by \`pulumi up\` into SSM`,
        `# ${names.controllerConfigParam} and applied by smartscale-sync on the server.`,
        `cluster_id: ${cfg.clusterId}`,
        `interval: ${cfg.controllerInterval}`,
        `dry_run: ${cfg.dryRun}`,
        "log_format: json",
        "prometheus:",
        `  url: ${PROMETHEUS_URL}`,
        "  queries:",
        `    cpu: ${quoted(q.cpu)}`,
        `    memory: ${quoted(q.memory)}`,
        "state:",
        `  table: ${names.tableName}`,
        "node_groups:",
        `  - asg_name: ${names.asgName}`,
        `    min: ${cfg.workerMinSize}`,
        `    max: ${cfg.workerMaxSize}`,
        `    instance_type: ${cfg.workerInstanceTypes[0]}`,
        `    allocatable: { cpu: ${cfg.workerAllocatableCpu}, memory_gib: ${cfg.workerAllocatableMemoryGib} }`,
        `    hourly_price: ${cfg.workerHourlyPrice}`,
        "api:",
        `  listen: ${CONTROLLER_API_LISTEN}`,
        "  token_file: /etc/smartscale/api-token",
        "",
    ].join("\n");
}
