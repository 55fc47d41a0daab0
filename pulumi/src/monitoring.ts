// The server's K3s manifest: namespace, controller RBAC, the Prometheus and Grafana HelmCharts
// with SmartScale's alerting and cost recording rules (dashboards/rules/), and the dashboards
// ConfigMap from dashboards/*.json. Rendered at deploy time with this stack's fixed prices, then
// uploaded as a new object version that smartscale-sync puts in place on the server.
import { StackConfig } from "./config";
import { dashboardFiles, readRepoFile } from "./files";
import { Price } from "./pricing";
import { renderTemplate } from "./render";

/** Hours in AWS's billing month (EBS is priced per GiB-month). */
export const HOURS_PER_MONTH = 730;

export interface ManifestPrices {
    serverHourly: Price;
    ebsGibMonth: Price;
    publicIpv4Hourly: Price;
}

const num = (n: number) => String(Number(n.toPrecision(6)));

/** dashboards/rules/cost.yml.tpl with the stack's prices. */
export function costRules(cfg: StackConfig, p: ManifestPrices): string {
    const ebsHourly = (gib: number) => (gib * p.ebsGibMonth.dollars) / HOURS_PER_MONTH;
    const workerEbs = ebsHourly(cfg.workerRootVolumeGiB);
    return renderTemplate(readRepoFile("dashboards", "rules", "cost.yml.tpl"), {
        shell: false,
        values: {
            SERVER_HOURLY: num(p.serverHourly.dollars),
            SERVER_INSTANCE_TYPE: cfg.serverInstanceType,
            SERVER_PRICE_SOURCE: p.serverHourly.source,
            SERVER_EBS_HOURLY: num(ebsHourly(cfg.serverRootVolumeGiB)),
            SERVER_VOLUME_GIB: String(cfg.serverRootVolumeGiB),
            EBS_PRICE_SOURCE: p.ebsGibMonth.source,
            IPV4_HOURLY: num(p.publicIpv4Hourly.dollars),
            IPV4_PRICE_SOURCE: p.publicIpv4Hourly.source,
            WORKER_EBS_HOURLY: num(workerEbs),
            WORKER_VOLUME_GIB: String(cfg.workerRootVolumeGiB),
            WORKER_OVERHEAD_HOURLY: num(workerEbs + p.publicIpv4Hourly.dollars),
        },
    });
}

export function serverManifest(cfg: StackConfig, prices: ManifestPrices): string {
    const base = renderTemplate(readRepoFile("userdata", "manifests", "smartscale.yaml"), {
        values: { GRAFANA_NODE_PORT: String(cfg.grafanaNodePort) },
        blocks: {
            ALERTING_RULES: readRepoFile("dashboards", "rules", "alerts.yml"),
            RECORDING_RULES: costRules(cfg, prices),
        },
        shell: false,
    });
    const lines = [
        "---",
        "# Grafana dashboards from dashboards/*.json (loaded by the Grafana chart's dashboardsConfigMaps).",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: smartscale-dashboards",
        "  namespace: monitoring",
        "data:",
    ];
    for (const d of dashboardFiles()) {
        // Re-serialise so the block scalar has no tabs or trailing spaces.
        const pretty = JSON.stringify(JSON.parse(d.json), null, 2);
        lines.push(`  ${d.name}: |-`);
        for (const l of pretty.split("\n")) {
            lines.push(`    ${l}`);
        }
    }
    return `${base.trimEnd()}\n${lines.join("\n")}\n`;
}
