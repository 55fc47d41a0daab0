// The rules AWS (and the AWS provider) enforce on what the program creates, checked on a stack with
// the longest cluster id config.ts accepts and every optional parameter set, so a name or a policy
// that would only fail in a real account fails here. Sources:
//   S3 bucket naming rules (AmazonS3 User Guide, "Bucket naming rules"); bucket_prefix <= 37 (the
//   provider appends 26 characters; terraform-provider-aws #7778, #20955)
//   IAM and STS quotas (IAM User Guide): role names <= 64, instance profiles and inline policy names
//   <= 128, names of [\w+=,.@-]; a role's inline policies <= 10,240 characters in total and a
//   managed policy <= 6,144, whitespace not counted; policy text within U+0009..U+00FF
//   EC2 Auto Scaling API: AutoScalingGroupName 1-255, ASCII 33-126 without ':';
//   LifecycleHookName 1-255 of [A-Za-z0-9\-_\/]; HeartbeatTimeout 30-7200; GlobalTimeout is
//   min(172800, 100 x HeartbeatTimeout)
//   EC2 API: LaunchTemplateName 3-128 of [a-zA-Z0-9().\-/_]; security group names <= 255; tag keys
//   <= 127 and values <= 255, no "aws:" prefix, at most 50 per resource; UserData <= 16 KiB; with
//   instance metadata tags on, instance tag keys only of [0-9a-zA-Z-_+=,.@:] (no '/', not ".",
//   ".." or "_index"), else the launch fails
//   Secrets Manager names <= 512 of [A-Za-z0-9/_+=.@-]; SSM parameter names <= 1011 of
//   [a-zA-Z0-9_.\-/], at most 15 levels, not starting with "aws" or "ssm"; Standard values <= 4 KB
//   DynamoDB table names 3-255 of [a-zA-Z0-9_.-]
//   Pulumi auto-naming: "<logical name>-<7 hex>" (8 characters appended)
import * as assert from "assert";
import * as fs from "fs";
import { unpackUserData } from "../src/userdata";
import { Recorded, baseConfig, fakeBinaries, ofType, one, runStack } from "./harness";
import { T, asList, statements } from "./stack.test";

/** The longest cluster id config.ts accepts (20 characters). */
const LONGEST_ID = "abcdefghij-klmnopqrs";

const AUTONAME_SUFFIX = 8; // "-" + 7 hex
const PREFIX_SUFFIX = 26; // the provider's unique suffix after a namePrefix / bucketPrefix

/** The name AWS will see: explicit, prefix + unique suffix, or Pulumi's auto-name. */
function effectiveName(r: Recorded, field = "name"): string {
    const prefixField = field === "bucket" ? "bucketPrefix" : "namePrefix";
    if (r.inputs[field]) return r.inputs[field];
    if (r.inputs[prefixField]) return r.inputs[prefixField] + "x".repeat(PREFIX_SUFFIX);
    return `${r.name}-${"a".repeat(AUTONAME_SUFFIX - 1)}`;
}

function within(what: string, value: string, max: number, re?: RegExp, min = 1): void {
    assert.ok(value.length >= min && value.length <= max, `${what} "${value}" is ${value.length} characters (AWS allows ${min}-${max})`);
    if (re) assert.match(value, re, `${what} "${value}" has characters AWS refuses`);
}

const METADATA_TAG_KEY = /^[0-9a-zA-Z\-_+=,.@:]+$/;

/** Tag keys a launch from this template and group would put on the instance, and whether IMDS serves them. */
export function instanceMetadataTagProblems(lt: any, asg: any): string[] {
    if (lt.metadataOptions?.instanceMetadataTags !== "enabled") return [];
    const keys = [
        ...(asg.tags ?? []).filter((t: any) => t.propagateAtLaunch).map((t: any) => t.key),
        ...(lt.tagSpecifications ?? []).filter((s: any) => s.resourceType === "instance").flatMap((s: any) => Object.keys(s.tags ?? {})),
    ];
    return keys
        .filter((k: string) => !METADATA_TAG_KEY.test(k) || [".", "..", "_index"].includes(k))
        .map((k: string) => `instance tag key "${k}" is not allowed with instance metadata tags on; EC2 refuses the launch`);
}

describe("AWS limits, with the longest cluster id", function () {
    const bins = fakeBinaries();
    let recorded: Recorded[];

    before(async function () {
        const run = await runStack(
            {
                ...baseConfig(bins),
                "smartscale:clusterId": LONGEST_ID,
                "smartscale:azCount": "3",
                "smartscale:workerNodeLabels": "team=web,tier=batch,node.kubernetes.io/pool=general-purpose,example.com/cost-center=engineering-platform",
                "smartscale:workerNodeTaints": "dedicated=batch:NoSchedule,example.com/gpu=true:NoExecute",
                "smartscale:workerInstanceTypes": '["t3.medium","t3a.medium","t2.medium","m5.large","m5a.large","m6i.large"]',
                "smartscale:sshKeyName": "a-very-long-key-pair-name-used-by-the-platform-team",
            },
            "prod",
        );
        recorded = run.recorded;
    });

    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));

    it("S3: bucketPrefix <= 37, and the resulting bucket name follows the bucket naming rules", () => {
        const b = one(recorded, T.bucket);
        within("bucketPrefix", b.inputs.bucketPrefix, 37);
        const name = b.state.bucket as string;
        within("bucket", name, 63, /^[a-z0-9][a-z0-9.-]*[a-z0-9]$/, 3);
        assert.ok(!name.includes("..") && !/^\d+\.\d+\.\d+\.\d+$/.test(name) && !/^(xn--|sthree-)/.test(name) && !/(-s3alias|--ol-s3)$/.test(name), name);
    });

    it("IAM: role, instance profile and inline policy names", () => {
        for (const r of ofType(recorded, T.role)) {
            if (r.inputs.namePrefix) within("role namePrefix", r.inputs.namePrefix, 38);
            within("role name", effectiveName(r), 64, /^[\w+=,.@-]+$/);
        }
        for (const r of ofType(recorded, "aws:iam/instanceProfile:InstanceProfile")) within("instance profile", effectiveName(r), 128, /^[\w+=,.@-]+$/);
        for (const r of ofType(recorded, T.rolePolicy)) within("inline policy name", effectiveName(r), 128, /^[^\\/*? ]+$/);
    });

    it("IAM: each role's inline policies stay under 10,240 characters (whitespace not counted), in IAM's character set", () => {
        assert.strictEqual(ofType(recorded, T.policy).length, 0, "no managed policies (6,144 each) to check");
        const byRole = new Map<string, number>();
        for (const p of ofType(recorded, T.rolePolicy)) {
            const text = p.inputs.policy as string;
            assert.ok(/^[\t\n\r\x20-\xff]*$/.test(text), `${p.name}: characters outside U+0009..U+00FF`);
            byRole.set(p.inputs.role, (byRole.get(p.inputs.role) ?? 0) + text.replace(/\s/g, "").length);
        }
        for (const [role, size] of byRole) assert.ok(size <= 10240, `${role}: inline policies total ${size} characters`);
        assert.ok(statements(one(recorded, T.rolePolicy, "worker")).length > 0);
    });

    it("Auto Scaling: group name, hook names and timeouts", () => {
        const asg = one(recorded, T.asg).inputs;
        within("ASG name", asg.name, 255, /^[\x21-\x39\x3b-\x7e]+$/);
        for (const h of asg.initialLifecycleHooks) {
            within("lifecycle hook name", h.name, 255, /^[A-Za-z0-9\-_/]+$/);
            assert.ok(h.heartbeatTimeout >= 30 && h.heartbeatTimeout <= 7200, `HeartbeatTimeout ${h.heartbeatTimeout}`);
            assert.ok(["CONTINUE", "ABANDON"].includes(h.defaultResult));
        }
        assert.ok(asg.minSize <= asg.desiredCapacity && asg.desiredCapacity <= asg.maxSize);
        assert.match(asg.waitForCapacityTimeout, /^[1-9]\d*[smh]$/, "a non-zero Go duration (0 skips the wait)");
    });

    it("Auto Scaling: the agent's hook parameters name the group's hooks, and a join fits in the launch action", () => {
        const hooks = one(recorded, T.asg).inputs.initialLifecycleHooks;
        const value = (k: string) => ofType(recorded, T.param).find((p) => p.inputs.name === `/smartscale/${LONGEST_ID}/agent/${k}`)!.inputs.value;
        const byTransition = (t: string) => hooks.find((h: any) => h.lifecycleTransition === `autoscaling:EC2_INSTANCE_${t}`);
        assert.strictEqual(value("launch_hook_name"), byTransition("LAUNCHING").name);
        assert.strictEqual(value("terminate_hook_name"), byTransition("TERMINATING").name);
        const timeout = byTransition("LAUNCHING").heartbeatTimeout;
        const global = Math.min(172800, 100 * timeout);
        const seconds = (d: string) => Number(d.slice(0, -1)) * { s: 1, m: 60, h: 3600 }[d.slice(-1) as "s" | "m" | "h"];
        assert.ok(seconds(value("heartbeat_interval")) <= timeout / 3, "a heartbeat at least every third of the timeout");
        const ud = unpackUserData(one(recorded, T.lt).inputs.userData);
        const tokenWait = Number(/\nAGENT_TOKEN_WAIT_SECONDS='(\d+)'\n/.exec(ud)![1]);
        const join = seconds(/\njoin_timeout: (\S+)\n/.exec(ud)![1]);
        assert.ok(tokenWait + join < global, `token wait ${tokenWait}s + join ${join}s must end before the global timeout ${global}s`);
    });

    it("EC2: launch template and security group names, rule descriptions", () => {
        within("launch template name", effectiveName(one(recorded, T.lt)), 128, /^[a-zA-Z0-9().\-/_]+$/, 3);
        for (const sg of ofType(recorded, "aws:ec2/securityGroup:SecurityGroup")) {
            within("security group name", effectiveName(sg), 255);
            within("security group description", sg.inputs.description, 255, /^[\x20-\x7e]+$/);
        }
        for (const r of ofType(recorded, T.ingress)) within("rule description", r.inputs.description, 255, /^[a-zA-Z0-9. _\-:/()#,@[\]+=&;{}!$*]+$/);
    });

    it("EC2: tags everywhere: keys <= 127, values <= 255, no aws: prefix, at most 50", () => {
        for (const r of recorded) {
            const tags: Record<string, string> = Array.isArray(r.inputs.tags)
                ? Object.fromEntries(r.inputs.tags.map((t: any) => [t.key, t.value]))
                : r.inputs.tags ?? {};
            assert.ok(Object.keys(tags).length <= 50, `${r.name}: ${Object.keys(tags).length} tags`);
            for (const [k, v] of Object.entries(tags)) {
                within(`${r.name} tag key`, k, 127);
                assert.ok(String(v).length <= 255, `${r.name} tag ${k}`);
                assert.ok(!/^aws:/i.test(k), `${r.name}: tag key ${k} uses the reserved aws: prefix`);
            }
        }
    });

    it("EC2: instance metadata tags are off, or every instance tag key is one IMDS can serve", () => {
        assert.deepStrictEqual(instanceMetadataTagProblems(one(recorded, T.lt).inputs, one(recorded, T.asg).inputs), []);
    });

    it("EC2: that check refuses the old launch template (metadata tags on, smartscale.io/cluster propagated)", () => {
        const problems = instanceMetadataTagProblems(
            { metadataOptions: { instanceMetadataTags: "enabled" } },
            { tags: [{ key: "smartscale.io/cluster", value: "prod", propagateAtLaunch: true }, { key: "Name", value: "w", propagateAtLaunch: true }] },
        );
        assert.deepStrictEqual(problems, ['instance tag key "smartscale.io/cluster" is not allowed with instance metadata tags on; EC2 refuses the launch']);
    });

    it("EC2: UserData is at most 16 KiB as sent", () => {
        const sizes = [one(recorded, T.lt).inputs.userData, one(recorded, T.instance).inputs.userDataBase64].map((b) => Buffer.from(b, "base64").length);
        for (const n of sizes) assert.ok(n <= 16384, `${n} bytes`);
    });

    it("Secrets Manager, SSM and DynamoDB names; SSM Standard values <= 4 KB", () => {
        for (const s of ofType(recorded, T.secret)) within("secret name", s.inputs.name, 512, /^[A-Za-z0-9/_+=.@-]+$/);
        for (const p of ofType(recorded, T.param)) {
            within("SSM parameter name", p.inputs.name, 1011, /^[a-zA-Z0-9_.\-/]+$/);
            assert.ok(p.inputs.name.split("/").length - 1 <= 15, `${p.inputs.name}: more than 15 levels`);
            assert.ok(!/^\/?(aws|ssm)/i.test(p.inputs.name), `${p.inputs.name}: reserved prefix`);
            assert.strictEqual(p.inputs.tier, "Standard");
            assert.ok(Buffer.byteLength(p.inputs.value) <= 4096, `${p.inputs.name}: ${Buffer.byteLength(p.inputs.value)} bytes`);
        }
        within("table name", one(recorded, T.table).inputs.name, 255, /^[a-zA-Z0-9_.-]+$/, 3);
    });

    it("Names that IAM conditions and policies depend on contain the cluster id in full", () => {
        const worker = statements(one(recorded, T.rolePolicy, "worker"));
        const asgArns = worker.filter((s) => asList(s.Action).includes("autoscaling:CompleteLifecycleAction")).flatMap((s) => asList(s.Resource));
        assert.deepStrictEqual(asgArns, [`arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/smartscale-${LONGEST_ID}-workers`]);
    });
});
