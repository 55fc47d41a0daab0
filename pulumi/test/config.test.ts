// Stack configuration as a new user meets it: a missing or mistyped key must fail `pulumi preview`
// with a message that names the key and says how to set it.
import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { CONFIG_KEYS, clusterIdFromStack } from "../src/config";
import { readRepoFile } from "../src/files";
import { baseConfig, configError, fakeBinaries, prepare } from "./harness";


describe("stack configuration", () => {
    const bins = fakeBinaries();
    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));

    it("names a missing required key and how to set it", async () => {
        const cfg = baseConfig(bins);
        delete cfg["smartscale:adminCidr"];
        const msg = await configError(cfg);
        assert.match(msg, /missing required key smartscale:adminCidr/);
        assert.match(msg, /pulumi config set smartscale:adminCidr 203\.0\.113\.7\/32/);
        assert.match(msg, /stack "dev"/);
    });

    it("names a typo'd key, suggests the right one, and still reports the missing key", async () => {
        const cfg = baseConfig(bins);
        cfg["smartscale:adminCdir"] = cfg["smartscale:adminCidr"];
        delete cfg["smartscale:adminCidr"];
        const msg = await configError(cfg);
        assert.match(msg, /unknown key smartscale:adminCdir \(did you mean smartscale:adminCidr\?\)/);
        assert.match(msg, /pulumi config rm smartscale:adminCdir/);
        assert.match(msg, /missing required key smartscale:adminCidr/);
    });

    it("rejects a typo in an optional key instead of silently using the default", async () => {
        const msg = await configError({ ...baseConfig(bins), "smartscale:workerMaxSzie": "20" });
        assert.match(msg, /unknown key smartscale:workerMaxSzie \(did you mean smartscale:workerMaxSize\?\)/);
    });

    it("names a missing aws:region", async () => {
        const cfg = baseConfig(bins);
        delete cfg["aws:region"];
        assert.match(await configError(cfg), /missing required key aws:region[\s\S]*pulumi config set aws:region us-east-1/);
    });

    it("reports every invalid value with its key, all at once", async () => {
        const msg = await configError({
            ...baseConfig(bins),
            "smartscale:lifecycleHeartbeatTimeout": "5",
            "smartscale:azCount": "1",
            "smartscale:adminCidr": "everyone",
            "smartscale:drainTimeout": "ten minutes",
            "smartscale:workerInstanceTypes": "[]",
        });
        for (const k of ["lifecycleHeartbeatTimeout", "azCount", "adminCidr", "drainTimeout", "workerInstanceTypes"]) {
            assert.match(msg, new RegExp(`invalid value for smartscale:${k}`), k);
        }
    });

    it("checks cross-key constraints", async () => {
        const msg = await configError({ ...baseConfig(bins), "smartscale:workerMinSize": "5", "smartscale:workerMaxSize": "3" });
        assert.match(msg, /smartscale:workerMinSize \(5\) is larger than smartscale:workerMaxSize \(3\)/);
    });

    it("requires the binary paths to be existing ELF files", async () => {
        const notElf = path.join(bins.dir, "README");
        fs.writeFileSync(notElf, "not a binary");
        const msg = await configError({
            ...baseConfig(bins),
            "smartscale:agentBinaryPath": path.join(bins.dir, "missing"),
            "smartscale:controllerBinaryPath": notElf,
        });
        assert.match(msg, /invalid value for smartscale:agentBinaryPath: no file at/);
        assert.match(msg, /invalid value for smartscale:controllerBinaryPath: .* is not an ELF executable/);
    });

    it("accepts comma-separated or JSON instance type lists", async () => {
        const { loadConfig } = await import("../src/config");
        await prepare({ ...baseConfig(bins), "smartscale:workerInstanceTypes": "t3.large, m5.large" });
        assert.deepStrictEqual(loadConfig().workerInstanceTypes, ["t3.large", "m5.large"]);
        await prepare({ ...baseConfig(bins), "smartscale:workerInstanceTypes": '["c5.large","c6i.large"]' });
        assert.deepStrictEqual(loadConfig().workerInstanceTypes, ["c5.large", "c6i.large"]);
    });

    it("derives a valid cluster id from the stack name", () => {
        assert.strictEqual(clusterIdFromStack("Prod_EU"), "prod-eu");
        assert.strictEqual(clusterIdFromStack("2024-staging-environment-x"), "staging-environment");
        assert.strictEqual(clusterIdFromStack("___"), "smartscale");
    });

    it("finding 10: refuses an adminCidr wider than a /16 unless explicitly confirmed", async () => {
        const msg = await configError({ ...baseConfig(bins), "smartscale:adminCidr": "0.0.0.0/0" });
        assert.match(msg, /smartscale:adminCidr 0\.0\.0\.0\/0 is wider than a \/16: the K3s API would be open to the whole internet/);
        assert.match(msg, /pulumi config set smartscale:allowWideAdminCidr true/);
        const { loadConfig } = await import("../src/config");
        await prepare({ ...baseConfig(bins), "smartscale:adminCidr": "0.0.0.0/0", "smartscale:allowWideAdminCidr": "true" });
        assert.strictEqual(loadConfig().adminCidr, "0.0.0.0/0");
        await prepare({ ...baseConfig(bins), "smartscale:adminCidr": "10.0.0.0/16" });
        assert.strictEqual(loadConfig().adminCidr, "10.0.0.0/16");
    });

    it("finding 10: refuses node labels the kubelet would refuse to register with", async () => {
        for (const [labels, why] of [
            ["node-role.kubernetes.io/worker=true", /kubelet refuses node labels in the kubernetes\.io and k8s\.io namespaces/],
            ["kubernetes.io/team=web", /kubelet refuses/],
            ["example.k8s.io/x=y", /kubelet refuses/],
            ["smartscale.io/node-group=other", /is set by the agent on every worker/],
            ["team=-web", /a value must be empty or 1-63/],
            ["Team.Example.com/x=y", /prefix must be a lowercase DNS subdomain/],
        ] as const) {
            const msg = await configError({ ...baseConfig(bins), "smartscale:workerNodeLabels": labels });
            assert.match(msg, /invalid value for smartscale:workerNodeLabels/, labels);
            assert.match(msg, why, labels);
        }
        const { loadConfig } = await import("../src/config");
        const ok = "team=web,node.kubernetes.io/pool=batch,kubelet.kubernetes.io/x=1,example.com/tier=";
        await prepare({ ...baseConfig(bins), "smartscale:workerNodeLabels": ok });
        assert.strictEqual(loadConfig().workerNodeLabels, ok);
        assert.match(await configError({ ...baseConfig(bins), "smartscale:workerNodeTaints": "smartscale.io/draining=true:NoSchedule" }), /the agent's draining taint/);
    });

    it("finding 10: refuses the agent's own rebalance drain, which would leave a cordoned node behind", async () => {
        const msg = await configError({ ...baseConfig(bins), "smartscale:rebalanceEnabled": "true" });
        assert.match(msg, /invalid value for smartscale:rebalanceEnabled: an agent drain on a rebalance recommendation leaves a cordoned node/);
    });

    it("bounds the join and capacity timeouts", async () => {
        const msg = await configError({ ...baseConfig(bins), "smartscale:workerCapacityTimeout": "0s", "smartscale:workerJoinTimeout": "5h" });
        assert.match(msg, /invalid value for smartscale:workerCapacityTimeout: "0s" is not a duration/);
        assert.match(msg, /invalid value for smartscale:workerJoinTimeout: 5h is outside 60s\.\.7200s/);
    });

    it("keeps the token wait and the join inside the launch action's global timeout", async () => {
        const msg = await configError({ ...baseConfig(bins), "smartscale:lifecycleHeartbeatTimeout": "30", "smartscale:workerJoinTimeout": "30m" });
        assert.match(msg, /smartscale:workerJoinTimeout \(30m\) plus the 1800s a worker may wait for the agent token does not fit in the launch action's global timeout \(100 x smartscale:lifecycleHeartbeatTimeout = 3000s\)/);
    });

    it("finding 9: refuses a K3s release that is not pinned by SHA-256", async () => {
        await prepare({ ...baseConfig(bins), "smartscale:k3sVersion": "v1.99.0+k3s1" });
        const { createStack } = await import("../src/stack");
        assert.throws(() => createStack(), /k3s v1\.99\.0\+k3s1 has no pinned SHA-256 in pulumi\/k3s-releases\.json[\s\S]*fetch-k3s\.sh --pin v1\.99\.0\+k3s1/);
    });

    it("documents every key in docs/deploy.md", () => {
        const doc = readRepoFile("docs", "deploy.md");
        for (const k of CONFIG_KEYS) {
            assert.ok(doc.includes(k.key), `${k.key} is missing from docs/deploy.md`);
        }
    });
});
