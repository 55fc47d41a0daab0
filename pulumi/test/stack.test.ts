// The Pulumi program under mocks: what it creates, checked against the requirements.
import * as assert from "assert";
import * as fs from "fs";
import { READ_ONLY_DESCRIBE_ACTIONS } from "../src/iam";
import { sha256File } from "../src/files";
import { USERDATA_LIMIT_BYTES } from "../src/userdata";
import { agentSection, documentedAgentKeys, documentedControllerKeys, yamlKeyPaths } from "./docs";
import {
    MOCK_GRAFANA_PASSWORD,
    MOCK_K3S_TOKEN,
    MOCK_SERVER_PUBLIC_IP,
    Recorded,
    asgArn,
    baseConfig,
    fakeBinaries,
    ofType,
    one,
    runStack,
} from "./harness";

const T = {
    asg: "aws:autoscaling/group:Group",
    lt: "aws:ec2/launchTemplate:LaunchTemplate",
    instance: "aws:ec2/instance:Instance",
    subnet: "aws:ec2/subnet:Subnet",
    ingress: "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    rolePolicy: "aws:iam/rolePolicy:RolePolicy",
    policy: "aws:iam/policy:Policy",
    attachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    role: "aws:iam/role:Role",
    secret: "aws:secretsmanager/secret:Secret",
    secretVersion: "aws:secretsmanager/secretVersion:SecretVersion",
    param: "aws:ssm/parameter:Parameter",
    bucket: "aws:s3/bucket:Bucket",
    pab: "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    versioning: "aws:s3/bucketVersioning:BucketVersioning",
    sse: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    object: "aws:s3/bucketObjectv2:BucketObjectv2",
    table: "aws:dynamodb/table:Table",
};

interface PolicyStatement {
    Sid: string;
    Effect: string;
    Action: string | string[];
    Resource: string | string[];
    Condition?: Record<string, Record<string, string>>;
}

const asList = <X>(x: X | X[]): X[] => (Array.isArray(x) ? x : [x]);
const statements = (p: Recorded): PolicyStatement[] => JSON.parse(p.inputs.policy).Statement;

describe("SmartScale stack under Pulumi mocks", function () {
    const bins = fakeBinaries();
    let recorded: Recorded[];
    let outputs: Record<string, any>;
    let workerUserData: string;
    let serverUserData: string;

    before(async function () {
        const run = await runStack(baseConfig(bins), "prod");
        recorded = run.recorded;
        outputs = run.outputs;
        workerUserData = Buffer.from(one(recorded, T.lt).inputs.userData, "base64").toString("utf8");
        serverUserData = one(recorded, T.instance).inputs.userData;
    });

    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));

    describe("instances", () => {
        it("requires IMDSv2 with hop limit 1 on the launch template and the server", () => {
            for (const md of [one(recorded, T.lt).inputs.metadataOptions, one(recorded, T.instance).inputs.metadataOptions]) {
                assert.strictEqual(md.httpTokens, "required");
                assert.strictEqual(md.httpPutResponseHopLimit, 1);
                assert.strictEqual(md.httpEndpoint, "enabled");
            }
        });

        it("uses encrypted gp3 root volumes", () => {
            const ebs = one(recorded, T.lt).inputs.blockDeviceMappings[0].ebs;
            assert.strictEqual(ebs.volumeType, "gp3");
            assert.strictEqual(ebs.encrypted, "true");
            assert.strictEqual(one(recorded, T.lt).inputs.blockDeviceMappings[0].deviceName, "/dev/sda1");
            const root = one(recorded, T.instance).inputs.rootBlockDevice;
            assert.strictEqual(root.volumeType, "gp3");
            assert.strictEqual(root.encrypted, true);
        });

        it("keeps UserData under EC2's 16 KiB limit with every placeholder filled", () => {
            for (const ud of [workerUserData, serverUserData]) {
                assert.ok(Buffer.byteLength(ud) <= USERDATA_LIMIT_BYTES, `${Buffer.byteLength(ud)} bytes`);
                assert.ok(!ud.includes("@@"), "leftover placeholder");
                assert.match(ud, /^#!\/bin\/bash\n/);
                assert.match(ud, /\nset -euo pipefail\n/);
            }
        });
    });

    describe("worker Auto Scaling Group", () => {
        it("spans at least two subnets in distinct availability zones", () => {
            const asg = one(recorded, T.asg).inputs;
            const subnets = ofType(recorded, T.subnet);
            assert.ok(asg.vpcZoneIdentifiers.length >= 2);
            assert.deepStrictEqual([...asg.vpcZoneIdentifiers].sort(), subnets.map((s) => `${s.name}-id`).sort());
            const azs = new Set(subnets.map((s) => s.inputs.availabilityZone));
            assert.strictEqual(azs.size, subnets.length);
        });

        it("mixes an on-demand base with a spot share over several instance types, with capacity rebalance", () => {
            const asg = one(recorded, T.asg).inputs;
            assert.strictEqual(asg.capacityRebalance, true);
            const dist = asg.mixedInstancesPolicy.instancesDistribution;
            assert.strictEqual(dist.onDemandBaseCapacity, 1);
            assert.ok(dist.onDemandPercentageAboveBaseCapacity < 100, "some capacity above the base must be spot");
            assert.strictEqual(dist.spotAllocationStrategy, "price-capacity-optimized");
            const types = asg.mixedInstancesPolicy.launchTemplate.overrides.map((o: any) => o.instanceType);
            assert.ok(types.length >= 2, `instance types: ${types}`);
            assert.strictEqual(asg.mixedInstancesPolicy.launchTemplate.launchTemplateSpecification.launchTemplateId, "worker-id");
        });

        it("has a launching hook (ABANDON) and a terminating hook (CONTINUE), heartbeat 300 s by default", () => {
            const hooks = one(recorded, T.asg).inputs.initialLifecycleHooks;
            assert.strictEqual(hooks.length, 2);
            const launch = hooks.find((h: any) => h.lifecycleTransition === "autoscaling:EC2_INSTANCE_LAUNCHING");
            const term = hooks.find((h: any) => h.lifecycleTransition === "autoscaling:EC2_INSTANCE_TERMINATING");
            assert.deepStrictEqual(
                { name: launch.name, defaultResult: launch.defaultResult, heartbeatTimeout: launch.heartbeatTimeout },
                { name: "smartscale-prod-launch", defaultResult: "ABANDON", heartbeatTimeout: 300 },
            );
            assert.deepStrictEqual(
                { name: term.name, defaultResult: term.defaultResult, heartbeatTimeout: term.heartbeatTimeout },
                { name: "smartscale-prod-terminate", defaultResult: "CONTINUE", heartbeatTimeout: 300 },
            );
        });

        it("also manages both hooks as LifecycleHook resources, identical to the initial ones", () => {
            const initial = one(recorded, T.asg).inputs.initialLifecycleHooks;
            const managed = ofType(recorded, "aws:autoscaling/lifecycleHook:LifecycleHook").map((h) => h.inputs);
            assert.strictEqual(managed.length, 2);
            for (const h of managed) {
                assert.strictEqual(h.autoscalingGroupName, "smartscale-prod-workers");
                const twin = initial.find((i: any) => i.name === h.name);
                assert.ok(twin, h.name);
                for (const k of ["lifecycleTransition", "defaultResult", "heartbeatTimeout"]) {
                    assert.strictEqual(h[k], twin[k], `${h.name}.${k}`);
                }
            }
        });

        it("takes the heartbeat timeout from stack config", async () => {
            const run = await runStack({ ...baseConfig(bins), "smartscale:lifecycleHeartbeatTimeout": "900" });
            const hooks = one(run.recorded, T.asg).inputs.initialLifecycleHooks;
            assert.deepStrictEqual(hooks.map((h: any) => h.heartbeatTimeout), [900, 900]);
            const managed = ofType(run.recorded, "aws:autoscaling/lifecycleHook:LifecycleHook");
            assert.deepStrictEqual(managed.map((h) => h.inputs.heartbeatTimeout), [900, 900]);
            const ud = Buffer.from(one(run.recorded, T.lt).inputs.userData, "base64").toString("utf8");
            assert.match(ud, /\njoin_timeout: 900s\n/);
        });

        it("carries the cluster tag that the IAM conditions rely on", () => {
            const tags = one(recorded, T.asg).inputs.tags;
            assert.ok(tags.some((t: any) => t.key === "smartscale.io/cluster" && t.value === "prod" && t.propagateAtLaunch));
        });
    });

    describe("secrets", () => {
        it("stores the generated K3s token and Grafana password only in Secrets Manager", () => {
            const versions = ofType(recorded, T.secretVersion).map((v) => v.inputs.secretString).sort();
            assert.deepStrictEqual(versions, [MOCK_GRAFANA_PASSWORD, MOCK_K3S_TOKEN].sort());
            for (const r of recorded) {
                if (r.type === T.secretVersion) continue;
                const text = JSON.stringify(r.inputs);
                assert.ok(!text.includes(MOCK_K3S_TOKEN), `${r.type} ${r.name} contains the K3s token`);
                assert.ok(!text.includes(MOCK_GRAFANA_PASSWORD), `${r.type} ${r.name} contains the Grafana password`);
            }
        });

        it("puts no secret material in any UserData; it is fetched from Secrets Manager at boot", () => {
            for (const ud of [workerUserData, serverUserData]) {
                assert.ok(!ud.includes(MOCK_K3S_TOKEN));
                assert.ok(!ud.includes(MOCK_GRAFANA_PASSWORD));
                assert.ok(!/K3S_TOKEN=/.test(ud), "no K3S_TOKEN environment variable");
                assert.ok(!/--token[ =]/.test(ud), "no --token argument");
            }
            const tokenArn = one(recorded, T.secret, "k3s-token").state.arn;
            // The server reads it into a 0600 file; the worker's agent reads it itself.
            assert.match(serverUserData, /read_secret_to_file "\$TOKEN_SECRET_ID" "\$\{K3S_DIR\}\/token"/);
            assert.ok(serverUserData.includes(`TOKEN_SECRET_ID='${tokenArn}'`));
            assert.match(serverUserData, /get-secret-value/);
            assert.match(serverUserData, /token-file: \$\{K3S_DIR\}\/token/);
            assert.ok(workerUserData.includes(`token_secret_id: ${tokenArn}`));
        });

        it("names the secrets as docs/interfaces.md does", () => {
            assert.deepStrictEqual(
                ofType(recorded, T.secret).map((s) => s.inputs.name).sort(),
                ["smartscale/prod/grafana-admin", "smartscale/prod/k3s-token"],
            );
        });
    });

    describe("agent SSM parameters", () => {
        it("live under /smartscale/<cluster>/agent/ with the names in docs/interfaces.md", () => {
            const params = ofType(recorded, T.param);
            const doc = agentSection();
            const byName: Record<string, string> = {};
            for (const p of params) {
                assert.ok(p.inputs.name.startsWith("/smartscale/prod/agent/"), p.inputs.name);
                assert.strictEqual(p.inputs.type, "String");
                const key = p.inputs.name.slice("/smartscale/prod/agent/".length);
                assert.ok(doc.includes(`\`${key}\``), `${key} is not documented in docs/interfaces.md`);
                byName[key] = p.inputs.value;
            }
            assert.deepStrictEqual(byName, {
                server_url: "https://10.20.0.10:6443",
                launch_hook_name: "smartscale-prod-launch",
                terminate_hook_name: "smartscale-prod-terminate",
                drain_timeout: "10m",
                spot_drain_deadline: "90s",
                on_drain_timeout: "continue",
                eviction_concurrency: "10",
                rebalance_enabled: "false",
            });
        });

        it("adds node_labels and node_taints only when configured", async () => {
            const run = await runStack({
                ...baseConfig(bins),
                "smartscale:workerNodeLabels": "team=web",
                "smartscale:workerNodeTaints": "dedicated=batch:NoSchedule",
            });
            const names = ofType(run.recorded, T.param).map((p) => p.inputs.name);
            assert.ok(names.some((n) => n.endsWith("/node_labels")));
            assert.ok(names.some((n) => n.endsWith("/node_taints")));
        });
    });

    describe("IAM", () => {
        it("creates inline role policies only (no managed policy attachments)", () => {
            assert.strictEqual(ofType(recorded, T.attachment).length, 0);
            assert.strictEqual(ofType(recorded, T.policy).length, 0);
            assert.strictEqual(ofType(recorded, T.rolePolicy).length, 4);
            for (const role of ofType(recorded, T.role)) {
                const doc = JSON.parse(role.inputs.assumeRolePolicy);
                assert.deepStrictEqual(doc.Statement, [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }]);
            }
        });

        it('has no "*" (or wildcard) action anywhere and pins every resource, except read-only Describe on "*"', () => {
            for (const p of [...ofType(recorded, T.rolePolicy), ...ofType(recorded, T.policy)]) {
                for (const s of statements(p)) {
                    assert.strictEqual(s.Effect, "Allow");
                    const actions = asList(s.Action);
                    assert.ok(actions.length > 0);
                    for (const a of actions) {
                        assert.ok(!a.includes("*"), `${p.name}/${s.Sid}: wildcard action ${a}`);
                        assert.match(a, /^[a-z0-9-]+:[A-Za-z0-9]+$/);
                    }
                    for (const r of asList(s.Resource)) {
                        if (r === "*") {
                            for (const a of actions) {
                                assert.ok(READ_ONLY_DESCRIBE_ACTIONS.includes(a), `${p.name}/${s.Sid}: ${a} on "*"`);
                                assert.match(a, /^autoscaling:Describe/);
                            }
                        } else {
                            assert.match(r, /^arn:aws:/, `${p.name}/${s.Sid}: resource ${r}`);
                            assert.ok(!r.includes("*"), `${p.name}/${s.Sid}: wildcard resource ${r}`);
                        }
                    }
                }
            }
        });

        it("lets only the ASG's own ARN, with the cluster tag condition, be scaled or have its hooks answered", () => {
            const changing = [
                "autoscaling:SetDesiredCapacity",
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
            ];
            const seen = new Set<string>();
            for (const p of ofType(recorded, T.rolePolicy)) {
                for (const s of statements(p)) {
                    const acts = asList(s.Action).filter((a) => changing.includes(a));
                    if (acts.length === 0) continue;
                    acts.forEach((a) => seen.add(a));
                    assert.deepStrictEqual(asList(s.Resource), [asgArn("smartscale-prod-workers")]);
                    assert.deepStrictEqual(s.Condition, { StringEquals: { "autoscaling:ResourceTag/smartscale.io/cluster": "prod" } });
                }
            }
            assert.deepStrictEqual([...seen].sort(), [...changing].sort());
        });

        it("gives the worker role exactly its secret, its parameters, its binary and its ASG's hooks", () => {
            const worker = ofType(recorded, T.rolePolicy).filter((p) => p.name.startsWith("worker-"));
            const all = worker.flatMap(statements);
            const actions = all.flatMap((s) => asList(s.Action)).sort();
            assert.deepStrictEqual(actions, [
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLifecycleHooks",
                "autoscaling:RecordLifecycleActionHeartbeat",
                "s3:GetObject",
                "s3:GetObjectVersion",
                "secretsmanager:GetSecretValue",
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:GetParametersByPath",
            ]);
            const res = (action: string) => all.filter((s) => asList(s.Action).includes(action)).flatMap((s) => asList(s.Resource));
            assert.deepStrictEqual(res("secretsmanager:GetSecretValue"), [one(recorded, T.secret, "k3s-token").state.arn]);
            for (const r of [...res("ssm:GetParameter"), ...res("ssm:GetParametersByPath")]) {
                assert.ok(r.startsWith("arn:aws:ssm:eu-west-1:123456789012:parameter/smartscale/prod/agent"), r);
            }
            const bucketArn = one(recorded, T.bucket).state.arn;
            assert.deepStrictEqual(res("s3:GetObject"), [`${bucketArn}/bin/smartscale-agent`]);
        });

        it("gives the controller only the tagged ASG, Describe and its own table", () => {
            const controller = statements(one(recorded, T.rolePolicy, "server-controller"));
            const table = one(recorded, T.table).state.arn;
            const dynamo = controller.filter((s) => asList(s.Action).some((a) => a.startsWith("dynamodb:")));
            assert.strictEqual(dynamo.length, 1);
            assert.deepStrictEqual(asList(dynamo[0].Resource), [table]);
            const boot = statements(one(recorded, T.rolePolicy, "server-boot"));
            const secretArns = boot.filter((s) => asList(s.Action).includes("secretsmanager:GetSecretValue")).flatMap((s) => asList(s.Resource));
            assert.deepStrictEqual(secretArns.sort(), ofType(recorded, T.secret).map((s) => s.state.arn).sort());
        });
    });

    describe("artifacts bucket", () => {
        it("blocks all public access, is versioned and encrypted", () => {
            const pab = one(recorded, T.pab).inputs;
            assert.deepStrictEqual(
                [pab.blockPublicAcls, pab.blockPublicPolicy, pab.ignorePublicAcls, pab.restrictPublicBuckets],
                [true, true, true, true],
            );
            assert.strictEqual(pab.bucket, "artifacts-id");
            assert.strictEqual(one(recorded, T.versioning).inputs.versioningConfiguration.status, "Enabled");
            assert.strictEqual(one(recorded, T.sse).inputs.rules[0].applyServerSideEncryptionByDefault.sseAlgorithm, "AES256");
            assert.ok(!one(recorded, T.bucket).inputs.acl, "no ACL");
        });

        it("uploads both binaries with the SHA-256 computed at deploy time, and UserData checks it", () => {
            const objects = ofType(recorded, T.object);
            const agent = objects.find((o) => o.inputs.key === "bin/smartscale-agent")!;
            const controller = objects.find((o) => o.inputs.key === "bin/smartscale-controller")!;
            assert.strictEqual(agent.inputs.metadata.sha256, sha256File(bins.agent));
            assert.strictEqual(controller.inputs.metadata.sha256, sha256File(bins.controller));
            assert.ok(workerUserData.includes(`AGENT_SHA256='${sha256File(bins.agent)}'`));
            assert.ok(workerUserData.includes(`AGENT_VERSION_ID='${agent.state.versionId}'`));
            assert.ok(serverUserData.includes(`CONTROLLER_SHA256='${sha256File(bins.controller)}'`));
            assert.strictEqual(outputs.agentSha256, sha256File(bins.agent));
        });
    });

    describe("state table", () => {
        it("has cluster_id + record keys, TTL on expires_at, point-in-time recovery and encryption", () => {
            const t = one(recorded, T.table).inputs;
            assert.strictEqual(t.name, "smartscale-prod-state");
            assert.strictEqual(t.hashKey, "cluster_id");
            assert.strictEqual(t.rangeKey, "record");
            assert.deepStrictEqual(t.ttl, { attributeName: "expires_at", enabled: true });
            assert.deepStrictEqual(t.pointInTimeRecovery, { enabled: true });
            assert.deepStrictEqual(t.serverSideEncryption, { enabled: true });
        });
    });

    describe("security groups", () => {
        it("never opens ingress to the whole internet", () => {
            for (const r of ofType(recorded, T.ingress)) {
                assert.notStrictEqual(r.inputs.cidrIpv4, "0.0.0.0/0", r.name);
                assert.notStrictEqual(r.inputs.ipProtocol, "-1", r.name);
            }
        });

        it("opens 6443 only to the admin CIDR and the workers, and Grafana only to the admin", () => {
            const api = ofType(recorded, T.ingress).filter((r) => r.inputs.fromPort === 6443);
            assert.deepStrictEqual(
                api.map((r) => r.inputs.cidrIpv4 ?? r.inputs.referencedSecurityGroupId).sort(),
                ["198.51.100.7/32", "worker-id"],
            );
            const grafana = ofType(recorded, T.ingress).filter((r) => r.inputs.fromPort === 30300);
            assert.deepStrictEqual(grafana.map((r) => r.inputs.cidrIpv4), ["198.51.100.7/32"]);
            assert.ok(!ofType(recorded, T.ingress).some((r) => r.inputs.fromPort === 22), "no SSH without sshKeyName");
        });
    });

    describe("bootstrap contents", () => {
        it("worker: verified agent download, join, then the run unit", () => {
            const order = [
                "fetch_verified \"$ARTIFACT_BUCKET\" \"$AGENT_KEY\"",
                "install_k3s agent INSTALL_K3S_SKIP_START=true",
                "/usr/local/bin/smartscale-agent --config /etc/smartscale/agent.yaml join",
                "systemctl enable --now smartscale-agent.service",
            ].map((s) => workerUserData.indexOf(s));
            assert.ok(order.every((i) => i > 0), `missing step: ${order}`);
            assert.deepStrictEqual([...order].sort((a, b) => a - b), order, "steps out of order");
            assert.match(workerUserData, /ExecStart=\/usr\/local\/bin\/smartscale-agent --config \/etc\/smartscale\/agent.yaml run/);
        });

        it("server: token file, verified manifests, k3s, Grafana secret, controller unit", () => {
            for (const s of [
                "fetch_verified \"$ARTIFACT_BUCKET\" 'manifests/smartscale.yaml'",
                "install_k3s server",
                "create secret generic grafana-admin",
                "ExecStart=/usr/local/bin/smartscale-controller --config /etc/smartscale/controller.yaml",
                "systemctl enable --now smartscale-controller.service",
            ]) {
                assert.ok(serverUserData.includes(s), `missing: ${s}`);
            }
        });

        it("writes agent and controller configs with only the keys of docs/interfaces.md", () => {
            const block = (ud: string, file: string) => {
                const m = new RegExp(`cat >"?[^\\n]*${file}"? <<'SMARTSCALE_EOF'\\n([\\s\\S]*?)\\nSMARTSCALE_EOF`).exec(ud);
                assert.ok(m, `no heredoc for ${file}`);
                return m[1];
            };
            const agentKeys = yamlKeyPaths(block(workerUserData, "agent.yaml"));
            const controllerKeys = yamlKeyPaths(block(serverUserData, "controller.yaml"));
            const docAgent = documentedAgentKeys();
            const docController = documentedControllerKeys();
            for (const k of agentKeys) assert.ok(docAgent.has(k), `agent key ${k} is not in docs/interfaces.md`);
            for (const k of controllerKeys) assert.ok(docController.has(k), `controller key ${k} is not in docs/interfaces.md`);
            for (const k of ["ssm_path", "token_secret_id"]) assert.ok(agentKeys.has(k), `required agent key ${k}`);
            for (const k of ["cluster_id", "prometheus.url", "state.table", "node_groups.asg_name"]) assert.ok(controllerKeys.has(k), `required controller key ${k}`);
            assert.match(block(serverUserData, "controller.yaml"), /\n {2}table: smartscale-prod-state\n/);
            assert.match(block(serverUserData, "controller.yaml"), /\n {2}- asg_name: smartscale-prod-workers\n/);
        });
    });

    describe("outputs", () => {
        it("exposes serverPublicIp, grafanaUrl, asgName and tableName", () => {
            assert.strictEqual(outputs.serverPublicIp, MOCK_SERVER_PUBLIC_IP);
            assert.strictEqual(outputs.grafanaUrl, `http://${MOCK_SERVER_PUBLIC_IP}:30300`);
            assert.strictEqual(outputs.asgName, "smartscale-prod-workers");
            assert.strictEqual(outputs.tableName, "smartscale-prod-state");
        });

        it("index.ts exports them as stack outputs", async () => {
            const { prepare, valueOf } = await import("./harness");
            await prepare(baseConfig(bins), "index-check");
            const mod = await import("../index");
            const keys = Object.keys(mod).sort();
            for (const k of ["serverPublicIp", "grafanaUrl", "asgName", "tableName"]) assert.ok(keys.includes(k), k);
            assert.strictEqual(await valueOf((mod as any).asgName), "smartscale-index-check-workers");
        });
    });
});
