// Renders the server and worker UserData, the units, the server manifest and the controller config
// with sample values, exactly as the Pulumi program does, into OUTDIR. scripts/check-infra.sh runs
// shellcheck, systemd-analyze, promtool and the manifest checks on the result.
//
//   npx ts-node --transpile-only scripts/render-samples.ts OUTDIR
import * as fs from "fs";
import * as path from "path";
import { StackConfig } from "../src/config";
import { controllerConfigYaml } from "../src/controller-config";
import { readRepoFile } from "../src/files";
import { costRules, serverManifest } from "../src/monitoring";
import { namesFor } from "../src/names";
import { heartbeatIntervalSeconds } from "../src/params";
import { WorkerUserDataInput, serverScript, workerJoinScript, workerScript } from "../src/userdata";

const out = process.argv[2];
if (!out) {
    console.error("usage: render-samples.ts OUTDIR");
    process.exit(2);
}
fs.mkdirSync(out, { recursive: true });

const region = "eu-west-1";
const cfg = {
    region,
    stack: "demo",
    clusterId: "demo",
    serverInstanceType: "t3.medium",
    serverRootVolumeGiB: 30,
    workerRootVolumeGiB: 20,
    workerInstanceTypes: ["t3.medium", "t3a.medium"],
    workerMinSize: 1,
    workerMaxSize: 10,
    workerAllocatableCpu: 2,
    workerAllocatableMemoryGib: 3.5,
    workerHourlyPrice: 0.0416,
    controllerInterval: "30s",
    dryRun: false,
    lifecycleHeartbeatTimeout: 300,
    grafanaNodePort: 30300,
} as StackConfig;
const names = namesFor(cfg);
// The prices dashboards/rules/cost.test.yml expects.
const prices = {
    serverHourly: { dollars: 0.0416, source: "price_list" },
    ebsGibMonth: { dollars: 0.08, source: "price_list" },
    publicIpv4Hourly: { dollars: 0.005, source: "config" },
};
const secretArn = (n: string) => `arn:aws:secretsmanager:${region}:123456789012:secret:smartscale/demo/${n}-AbC123`;
const bucket = "smartscale-demo-20240101000000000000000001";
const sha = (c: string) => c.repeat(64);
const k3s = {
    version: "v1.33.4+k3s1",
    binary: { key: "k3s/v1.33.4+k3s1/k3s", versionId: "k3s.1_abcdef", sha256: sha("d") },
    installScript: { key: "k3s/v1.33.4+k3s1/install.sh", versionId: "inst.2_abcdef", sha256: sha("e") },
};

const worker: WorkerUserDataInput = {
    region,
    clusterId: "demo",
    asgName: names.asgName,
    launchHookName: names.launchHookName,
    heartbeatIntervalSeconds: heartbeatIntervalSeconds(cfg.lifecycleHeartbeatTimeout),
    bucket,
    agent: { key: "bin/smartscale-agent", versionId: "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", sha256: sha("a") },
    k3s,
    agentConfig: { ssmPath: names.ssmPath, tokenSecretId: secretArn("k3s-agent-token"), joinTimeout: "10m" },
    warmPool: false,
};

const files: Record<string, string> = {
    "worker.sh": workerScript(worker),
    // A group with a warm pool (smartscale:warmPool enabled), and the join script both embed.
    "worker-warm-pool.sh": workerScript({ ...worker, warmPool: true }),
    "worker-join.sh": workerJoinScript(worker),
    "server.sh": serverScript({
        region,
        clusterId: "demo",
        bucket,
        k3s,
        serverTokenSecretId: secretArn("k3s-server-token"),
        agentTokenSecretId: secretArn("k3s-agent-token"),
        grafanaSecretId: secretArn("grafana-admin"),
        releaseParam: names.serverReleaseParam,
        controllerConfigParam: names.controllerConfigParam,
    }),
    "smartscale-agent.service": readRepoFile("userdata", "systemd", "smartscale-agent.service"),
    "smartscale-join.service": readRepoFile("userdata", "systemd", "smartscale-join.service"),
    "smartscale-controller.service": readRepoFile("userdata", "systemd", "smartscale-controller.service"),
    "smartscale-sync.service": readRepoFile("userdata", "systemd", "smartscale-sync.service"),
    "smartscale-identity.service": readRepoFile("userdata", "systemd", "smartscale-identity.service"),
    "smartscale-sync.timer": readRepoFile("userdata", "systemd", "smartscale-sync.timer"),
    "smartscale.yaml": serverManifest(cfg, prices),
    "recording_rules.yml": costRules(cfg, prices),
    "controller.yaml": controllerConfigYaml(cfg, names),
};

for (const [name, text] of Object.entries(files)) {
    fs.writeFileSync(path.join(out, name), text, { mode: name.endsWith(".sh") ? 0o755 : 0o644 });
    console.log(`rendered ${path.join(out, name)} (${Buffer.byteLength(text)} bytes)`);
}
