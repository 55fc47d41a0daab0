// smartscale:warmPool under Pulumi mocks: the ASG and launch template the program creates are held
// to the rules AWS enforces on a warm pool, not to what the program happens to produce. Sources:
//   EC2 Auto Scaling API Reference, PutWarmPool: "cannot be called on an Auto Scaling group that has
//   a mixed instances policy or a launch template or launch configuration that requests Spot
//   Instances"; WarmPoolConfiguration: MinSize >= 0, MaxGroupPreparedCapacity >= -1, PoolState
//   Stopped | Running | Hibernated, InstanceReusePolicy.ReuseOnScaleIn a boolean
//   EC2 Auto Scaling User Guide, warm pools: instances are stopped or hibernated only with an EBS
//   root volume; a launch lifecycle hook keeps an instance in Warmed:Pending:Wait until the boot
//   into the pool has finished (otherwise the stop interrupts the user data)
import * as assert from "assert";
import * as fs from "fs";
import { Recorded, baseConfig, configError, fakeBinaries, one, prepare, runStack, userData } from "./harness";
import { T, asList, statements } from "./stack.test";

/** What AWS would refuse (or what would break the boot into the pool) in this group and template. */
export function warmPoolAwsProblems(asg: any, lt: any): string[] {
    const wp = asg.warmPool;
    if (!wp) return [];
    const p: string[] = [];
    if (asg.mixedInstancesPolicy) p.push("PutWarmPool refuses a group with a mixed instances policy");
    if (lt.instanceMarketOptions?.marketType === "spot") p.push("PutWarmPool refuses a launch template that requests Spot Instances");
    if (!asg.launchTemplate?.id || !lt.instanceType) p.push("without a mixed instances policy the group launches the launch template's own instance type");
    if (!["Stopped", "Running", "Hibernated"].includes(wp.poolState ?? "Stopped")) p.push(`PoolState ${wp.poolState}`);
    if (!Number.isInteger(wp.minSize ?? 0) || (wp.minSize ?? 0) < 0) p.push(`MinSize ${wp.minSize}`);
    if (wp.maxGroupPreparedCapacity !== undefined && (!Number.isInteger(wp.maxGroupPreparedCapacity) || wp.maxGroupPreparedCapacity < -1)) {
        p.push(`MaxGroupPreparedCapacity ${wp.maxGroupPreparedCapacity}`);
    }
    if (wp.instanceReusePolicy && typeof wp.instanceReusePolicy.reuseOnScaleIn !== "boolean") p.push("ReuseOnScaleIn is a boolean");
    if (wp.poolState === "Hibernated" && lt.hibernationOptions?.configured !== true) p.push("Hibernated needs hibernation configured on the launch template");
    const root = (lt.blockDeviceMappings ?? [])[0];
    if ((wp.poolState ?? "Stopped") !== "Running" && !root?.ebs) p.push("a stopped or hibernated pool needs an EBS root volume");
    if (!(asg.initialLifecycleHooks ?? []).some((h: any) => h.lifecycleTransition === "autoscaling:EC2_INSTANCE_LAUNCHING")) {
        p.push("no launch lifecycle hook: the group stops a pool instance before its user data has finished");
    }
    return p;
}


describe("warm pool (smartscale:warmPool)", function () {
    const bins = fakeBinaries();
    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));
    const warmReady = () => ({
        ...baseConfig(bins),
        "smartscale:workerInstanceTypes": "t3.medium",
        "smartscale:onDemandPercentageAboveBase": "100",
    });

    describe("off by default", () => {
        let recorded: Recorded[];
        before(async () => {
            recorded = (await runStack(baseConfig(bins))).recorded;
        });

        it("creates no warm pool and keeps the mixed instances policy and capacity rebalance", () => {
            const asg = one(recorded, T.asg).inputs;
            assert.strictEqual(asg.warmPool, undefined);
            assert.ok(asg.mixedInstancesPolicy);
            assert.strictEqual(asg.capacityRebalance, true);
            assert.strictEqual(one(recorded, T.lt).inputs.instanceType, undefined);
        });

        it("renders the worker bootstrap without the warm-pool flag (k3s-agent enabled, no join unit at boot)", () => {
            assert.match(userData(recorded).worker, /\nWARM_POOL='false'\n/);
        });

        it("lets the controller describe the warm pool (no resource-level permissions: resource *)", () => {
            const s = statements(one(recorded, T.rolePolicy, "server-controller")).filter((x) => asList(x.Action).includes("autoscaling:DescribeWarmPool"));
            assert.strictEqual(s.length, 1);
            assert.deepStrictEqual(asList(s[0].Resource), ["*"]);
        });
    });

    describe("enabled", () => {
        let recorded: Recorded[];
        before(async () => {
            recorded = (
                await runStack({
                    ...warmReady(),
                    "smartscale:warmPool": JSON.stringify({ enabled: true, minSize: 2, maxGroupPreparedCapacity: 6 }),
                })
            ).recorded;
        });

        it("passes the warm pool to the ASG: Stopped, minSize, maxGroupPreparedCapacity, reuse on scale-in", () => {
            assert.deepStrictEqual(one(recorded, T.asg).inputs.warmPool, {
                poolState: "Stopped",
                minSize: 2,
                maxGroupPreparedCapacity: 6,
                instanceReusePolicy: { reuseOnScaleIn: true },
            });
        });

        it("builds a group AWS accepts a warm pool for: no mixed instances policy, no Spot, one on-demand type, EBS root, launch hook", () => {
            const asg = one(recorded, T.asg).inputs;
            const lt = one(recorded, T.lt).inputs;
            assert.deepStrictEqual(warmPoolAwsProblems(asg, lt), []);
            assert.strictEqual(lt.instanceType, "t3.medium");
            assert.strictEqual(asg.capacityRebalance, false, "Capacity Rebalancing is for Spot Instances");
            assert.strictEqual(asg.launchTemplate.version, "1");
        });

        it("that check refuses what AWS refuses: the default group with a warm pool added, and Hibernated without hibernation", () => {
            const lt = one(recorded, T.lt).inputs;
            const hooks = one(recorded, T.asg).inputs.initialLifecycleHooks;
            const mixed = { mixedInstancesPolicy: {}, warmPool: { poolState: "Stopped" }, initialLifecycleHooks: hooks };
            assert.deepStrictEqual(warmPoolAwsProblems(mixed, { ...lt, instanceType: undefined }), [
                "PutWarmPool refuses a group with a mixed instances policy",
                "without a mixed instances policy the group launches the launch template's own instance type",
            ]);
            const hib = { launchTemplate: { id: "lt" }, warmPool: { poolState: "Hibernated", minSize: -1 }, initialLifecycleHooks: [] };
            assert.deepStrictEqual(warmPoolAwsProblems(hib, lt), [
                "MinSize -1",
                "Hibernated needs hibernation configured on the launch template",
                "no launch lifecycle hook: the group stops a pool instance before its user data has finished",
            ]);
        });

        it("renders the worker bootstrap for a warm-pool group, with the join script and its unit", () => {
            const ud = userData(recorded).worker;
            assert.match(ud, /\nWARM_POOL='true'\n/);
            assert.match(ud, /\nExecStart=\/usr\/local\/lib\/smartscale\/join\n/);
            assert.match(ud, /imds_get autoscaling\/target-lifecycle-state/);
        });

        it("accepts string fields, as `pulumi config set --path` may store them, and Running without reuse", async () => {
            const { loadConfig } = await import("../src/config");
            await prepare({
                ...warmReady(),
                "smartscale:warmPool": JSON.stringify({ enabled: "true", minSize: "1", poolState: "Running", reuseOnScaleIn: "false" }),
            });
            assert.deepStrictEqual(loadConfig().warmPool, { enabled: true, minSize: 1, maxGroupPreparedCapacity: undefined, poolState: "Running", reuseOnScaleIn: false });
        });
    });

    describe("refused configurations, with what to do", () => {
        const enabled = (wp: object) => JSON.stringify({ enabled: true, ...wp });

        it("AWS: no warm pool with a mixed instances policy (several types) or Spot (the default 20% on-demand)", async () => {
            const msg = await configError({ ...baseConfig(bins), "smartscale:warmPool": enabled({}) });
            assert.match(msg, /smartscale:workerInstanceTypes lists 3 types: AWS allows no warm pool in a group with a mixed instances policy/);
            assert.match(msg, /pulumi config set smartscale:workerInstanceTypes t3\.medium/);
            assert.match(msg, /smartscale:onDemandPercentageAboveBase is 20: the rest would be Spot, and AWS allows no warm pool in a group that launches Spot Instances/);
            assert.match(msg, /pulumi config set smartscale:onDemandPercentageAboveBase 100/);
        });

        it("keys of the mixed instances policy that would do nothing", async () => {
            const msg = await configError({ ...warmReady(), "smartscale:spotAllocationStrategy": "capacity-optimized", "smartscale:warmPool": enabled({}) });
            assert.match(msg, /smartscale:spotAllocationStrategy applies to the mixed instances policy[\s\S]*pulumi config rm smartscale:spotAllocationStrategy/);
        });

        it("Hibernated, with why", async () => {
            const msg = await configError({ ...warmReady(), "smartscale:warmPool": enabled({ poolState: "Hibernated" }) });
            assert.match(msg, /invalid value for smartscale:warmPool: poolState: Hibernated is not supported: hibernation needs the launch template's HibernationOptions/);
        });

        it("minSize above the group's max, maxGroupPreparedCapacity below minSize or above the max", async () => {
            let msg = await configError({ ...warmReady(), "smartscale:workerMaxSize": "4", "smartscale:warmPool": enabled({ minSize: 5, maxGroupPreparedCapacity: 3 }) });
            assert.match(msg, /smartscale:warmPool\.minSize \(5\) is larger than smartscale:workerMaxSize \(4\)[\s\S]*pulumi config set --path smartscale:warmPool\.minSize 4/);
            assert.match(msg, /smartscale:warmPool\.maxGroupPreparedCapacity \(3\) is smaller than smartscale:warmPool\.minSize \(5\)/);
            msg = await configError({ ...warmReady(), "smartscale:workerMaxSize": "4", "smartscale:warmPool": enabled({ maxGroupPreparedCapacity: 9 }) });
            assert.match(msg, /maxGroupPreparedCapacity \(9\) is larger than smartscale:workerMaxSize \(4\)/);
        });

        it("a Running pool that reuses instances on scale-in", async () => {
            const msg = await configError({ ...warmReady(), "smartscale:warmPool": enabled({ poolState: "Running" }) });
            assert.match(msg, /poolState Running with reuseOnScaleIn true is not supported[\s\S]*smartscale:warmPool\.reuseOnScaleIn false/);
        });

        it("values outside AWS's ranges, a typo'd field, a wrong case, and a value that is not an object", async () => {
            let msg = await configError({ ...warmReady(), "smartscale:warmPool": enabled({ minSize: -1, maxGroupPreparedCapacity: -2, poolState: "stopped", reuseOnScaleln: true }) });
            assert.match(msg, /minSize: -1 is outside 0\.\.100000/);
            assert.match(msg, /maxGroupPreparedCapacity: -2 is outside -1\.\.100000/);
            assert.match(msg, /poolState: "stopped" is not Stopped or Running \(AWS spells it Stopped\)/);
            assert.match(msg, /unknown field reuseOnScaleln \(did you mean reuseOnScaleIn\?\)/);
            msg = await configError({ ...warmReady(), "smartscale:warmPool": "true" });
            assert.match(msg, /invalid value for smartscale:warmPool: true is not an object/);
        });

        it("maxGroupPreparedCapacity -1 is AWS's way of leaving it unset", async () => {
            const { loadConfig } = await import("../src/config");
            await prepare({ ...warmReady(), "smartscale:warmPool": enabled({ maxGroupPreparedCapacity: -1 }) });
            assert.strictEqual(loadConfig().warmPool.maxGroupPreparedCapacity, undefined);
        });
    });
});
