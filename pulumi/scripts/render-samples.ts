// Renders the server and worker UserData, the units and the server manifest with sample values,
// exactly as the Pulumi program does, into OUTDIR. scripts/check-infra.sh runs shellcheck and
// systemd-analyze on the result.
//
//   npx ts-node --transpile-only scripts/render-samples.ts OUTDIR
import * as fs from "fs";
import * as path from "path";
import { StackConfig } from "../src/config";
import { readRepoFile } from "../src/files";
import { serverManifest } from "../src/artifacts";
import { serverUserData, workerUserData } from "../src/userdata";

const out = process.argv[2];
if (!out) {
    console.error("usage: render-samples.ts OUTDIR");
    process.exit(2);
}
fs.mkdirSync(out, { recursive: true });

const region = "eu-west-1";
const secretArn = (n: string) => `arn:aws:secretsmanager:${region}:123456789012:secret:smartscale/demo/${n}-AbC123`;
const bucket = "smartscale-demo-artifacts-20240101000000000000000001";
const sha = (c: string) => c.repeat(64);

const files: Record<string, string> = {
    "worker.sh": workerUserData({
        region,
        clusterId: "demo",
        asgName: "smartscale-demo-workers",
        launchHookName: "smartscale-demo-launch",
        bucket,
        agentKey: "bin/smartscale-agent",
        agentVersionId: "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
        agentSha256: sha("a"),
        k3sVersion: "v1.33.4+k3s1",
        agent: { ssmPath: "/smartscale/demo/agent", tokenSecretId: secretArn("k3s-token"), joinTimeoutSeconds: 300 },
    }),
    "server.sh": serverUserData({
        region,
        clusterId: "demo",
        bucket,
        controllerKey: "bin/smartscale-controller",
        controllerVersionId: "Xy9.bC_3HL4kqtJlcpXroDTDm",
        controllerSha256: sha("b"),
        tokenSecretId: secretArn("k3s-token"),
        grafanaSecretId: secretArn("grafana-admin"),
        k3sVersion: "v1.33.4+k3s1",
        manifests: [{ fileName: "smartscale.yaml", key: "manifests/smartscale.yaml", versionId: "m.1_abc", sha256: sha("c") }],
        controller: {
            clusterId: "demo",
            interval: "30s",
            dryRun: false,
            tableName: "smartscale-demo-state",
            asgName: "smartscale-demo-workers",
            minSize: 1,
            maxSize: 10,
            instanceType: "t3.medium",
            allocatableCpu: 2,
            allocatableMemoryGib: 3.5,
            hourlyPrice: 0.0416,
        },
    }),
    "smartscale-agent.service": readRepoFile("userdata", "systemd", "smartscale-agent.service"),
    "smartscale-controller.service": readRepoFile("userdata", "systemd", "smartscale-controller.service"),
    "smartscale.yaml": serverManifest({ grafanaNodePort: 30300 } as StackConfig),
};

for (const [name, text] of Object.entries(files)) {
    fs.writeFileSync(path.join(out, name), text, { mode: name.endsWith(".sh") ? 0o755 : 0o644 });
    console.log(`rendered ${path.join(out, name)} (${Buffer.byteLength(text)} bytes)`);
}
