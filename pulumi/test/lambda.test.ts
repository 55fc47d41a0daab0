// Lambda mode (`smartscale:controllerMode lambda`) under Pulumi mocks: the function in the VPC on
// an EventBridge schedule, reserved concurrency 1, its own least-privilege role, its log group,
// Prometheus and the K3s API open to its security group only, and no credential in its
// environment or code package.
import * as assert from "assert";
import * as fs from "fs";
import { scheduleSeconds } from "../src/lambda";
import { NO_RESOURCE_LEVEL_ACTIONS, NO_RESOURCE_LEVEL_LAMBDA_ACTIONS } from "../src/iam";
import { documentedControllerKeys, yamlKeyPaths } from "./docs";
import { ACCOUNT, MOCK_K3S_TOKEN, MOCK_SERVER_PRIVATE_IP, REGION, Recorded, baseConfig, dependsOn, fakeBinaries, ofType, one, runStack, userData } from "./harness";

const T = {
    fn: "aws:lambda/function:Function",
    rule: "aws:cloudwatch/eventRule:EventRule",
    target: "aws:cloudwatch/eventTarget:EventTarget",
    permission: "aws:lambda/permission:Permission",
    invokeConfig: "aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig",
    logGroup: "aws:cloudwatch/logGroup:LogGroup",
    role: "aws:iam/role:Role",
    rolePolicy: "aws:iam/rolePolicy:RolePolicy",
    subnet: "aws:ec2/subnet:Subnet",
    sg: "aws:ec2/securityGroup:SecurityGroup",
    ingress: "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    egress: "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
    param: "aws:ssm/parameter:Parameter",
    secret: "aws:secretsmanager/secret:Secret",
    topic: "aws:sns/topic:Topic",
};

interface Stmt {
    Sid: string;
    Action: string | string[];
    Resource: string | string[];
    Condition?: Record<string, Record<string, string>>;
}
const list = <X>(x: X | X[]): X[] => (Array.isArray(x) ? x : [x]);
const statements = (p: Recorded): Stmt[] => JSON.parse(p.inputs.policy).Statement;

/** The files of the function's code archive (an AssetArchive: its `assets` is a promise). */
async function archiveFiles(code: any): Promise<Record<string, any>> {
    assert.ok(code?.assets, `the code is not an asset archive: ${JSON.stringify(code).slice(0, 300)}`);
    return await code.assets;
}

describe("Lambda mode under Pulumi mocks", function () {
    const bins = fakeBinaries();
    let recorded: Recorded[];
    let outputs: Record<string, any>;

    before(async function () {
        const run = await runStack({ ...baseConfig(bins), "smartscale:controllerMode": "lambda" }, "prod");
        recorded = run.recorded;
        outputs = run.outputs;
    });
    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));

    const fn = () => one(recorded, T.fn);

    it("runs the controller binary as the provided.al2023 bootstrap, one execution at a time", async () => {
        const f = fn().inputs;
        assert.strictEqual(f.runtime, "provided.al2023");
        assert.strictEqual(f.handler, "bootstrap");
        assert.deepStrictEqual(f.architectures, ["x86_64"]);
        assert.strictEqual(f.reservedConcurrentExecutions, 1);
        assert.strictEqual(f.timeout, 60);
        assert.strictEqual(f.memorySize, 256);
        assert.strictEqual(outputs.controllerFunction, "smartscale-prod-controller");
        const files = await archiveFiles(f.code);
        assert.deepStrictEqual(Object.keys(files).sort(), ["bootstrap", "controller.yaml"]);
        assert.strictEqual(await files.bootstrap.path, bins.controller, "the bootstrap is the controller binary");
        const yaml: string = await files["controller.yaml"].text;
        assert.ok(yaml.startsWith("# smartscale-controller configuration for the Lambda mode"), yaml);
        assert.ok(!yaml.includes(MOCK_K3S_TOKEN) && !yaml.includes("token:"), "no credential in the package");
    });

    it("places the function in two private subnets of the VPC, in distinct zones, behind a NAT gateway", () => {
        const vpc = fn().inputs.vpcConfig;
        assert.strictEqual(vpc.subnetIds.length, 2);
        const subnets = vpc.subnetIds.map((id: string) => ofType(recorded, T.subnet).find((s) => `${s.name}-id` === id)!);
        for (const s of subnets) {
            assert.ok(s, "a subnet of the stack");
            assert.strictEqual(s.inputs.mapPublicIpOnLaunch, false, `${s.name} is private`);
            assert.strictEqual(s.inputs.vpcId, "vpc-id");
        }
        assert.notStrictEqual(subnets[0].inputs.availabilityZone, subnets[1].inputs.availabilityZone);
        assert.deepStrictEqual(vpc.securityGroupIds, ["controller-lambda-id"]);
        const routes = one(recorded, "aws:ec2/routeTable:RouteTable", "lambda-private").inputs.routes;
        assert.deepStrictEqual(routes, [{ cidrBlock: "0.0.0.0/0", natGatewayId: "lambda-nat-id" }]);
    });

    it("runs on an EventBridge schedule, every minute by default, and never retries a tick", () => {
        const rule = one(recorded, T.rule);
        assert.strictEqual(rule.inputs.scheduleExpression, "rate(1 minute)");
        const target = one(recorded, T.target);
        assert.strictEqual(target.inputs.rule, rule.state.name);
        assert.strictEqual(target.inputs.arn, fn().state.arn);
        assert.strictEqual(target.inputs.retryPolicy.maximumRetryAttempts, 0);
        const permission = one(recorded, T.permission);
        assert.strictEqual(permission.inputs.principal, "events.amazonaws.com");
        assert.strictEqual(permission.inputs.sourceArn, rule.state.arn);
        assert.strictEqual(permission.inputs.action, "lambda:InvokeFunction");
        assert.strictEqual(one(recorded, T.invokeConfig).inputs.maximumRetryAttempts, 0);
    });

    it("keeps every Kubernetes credential out of its environment and code package", () => {
        const env = fn().inputs.environment.variables;
        assert.deepStrictEqual(Object.keys(env).sort(), ["RUST_LOG", "SMARTSCALE_CONFIG_PARAMETER", "SMARTSCALE_KUBERNETES_SECRET"]);
        assert.strictEqual(env.SMARTSCALE_KUBERNETES_SECRET, "smartscale/prod/controller-kubernetes");
        const text = JSON.stringify(fn().inputs);
        for (const bad of ["KUBECONFIG", "token:", MOCK_K3S_TOKEN, "client-key", "BEGIN"]) {
            assert.ok(!text.includes(bad), `the function's inputs contain ${bad}`);
        }
        // The identity secret is created empty: the K3s server writes it at boot.
        const secret = ofType(recorded, T.secret).find((s) => s.name === "controller-kubernetes")!;
        assert.ok(secret, "the identity secret");
        assert.ok(
            !ofType(recorded, "aws:secretsmanager/secretVersion:SecretVersion").some((v) => v.inputs.secretId === "controller-kubernetes-id"),
            "no value in the Pulumi state",
        );
    });

    it("gives the function its own role with the least privilege", () => {
        const role = one(recorded, T.role, "controller-lambda");
        assert.strictEqual(JSON.parse(role.inputs.assumeRolePolicy).Statement[0].Principal.Service, "lambda.amazonaws.com");
        assert.strictEqual(fn().inputs.role, role.state.arn);
        const policies = ofType(recorded, T.rolePolicy).filter((p) => p.inputs.role === "controller-lambda-id");
        assert.strictEqual(policies.length, 1, "one inline policy, nothing attached");
        assert.strictEqual(ofType(recorded, "aws:iam/rolePolicyAttachment:RolePolicyAttachment").length, 0);
        const st = statements(policies[0]);
        const actions = st.flatMap((s) => list(s.Action));
        for (const a of actions) assert.ok(!a.includes("*"), `wildcard action ${a}`);
        for (const s of st.filter((s) => list(s.Resource).includes("*"))) {
            for (const a of list(s.Action)) {
                assert.ok([...NO_RESOURCE_LEVEL_ACTIONS, ...NO_RESOURCE_LEVEL_LAMBDA_ACTIONS].includes(a), `${a} on "*"`);
            }
        }
        const on = (action: string) => st.filter((s) => list(s.Action).includes(action)).flatMap((s) => list(s.Resource));
        assert.deepStrictEqual(on("secretsmanager:GetSecretValue"), [`arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:smartscale/prod/controller-kubernetes-AbC123`]);
        assert.deepStrictEqual(on("ssm:GetParameter"), [`arn:aws:ssm:${REGION}:${ACCOUNT}:parameter/smartscale/prod/controller/lambda-config`]);
        assert.deepStrictEqual(on("autoscaling:SetDesiredCapacity"), [
            `arn:aws:autoscaling:${REGION}:${ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/smartscale-prod-workers`,
        ]);
        const scale = st.find((s) => list(s.Action).includes("autoscaling:SetDesiredCapacity"))!;
        assert.deepStrictEqual(scale.Condition, { StringEquals: { "autoscaling:ResourceTag/smartscale.io/cluster": "prod" } });
        assert.deepStrictEqual(on("logs:PutLogEvents"), [`arn:aws:mock:${REGION}:${ACCOUNT}:cloudwatch/logGroup/controller-lambda:*`]);
        for (const a of ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface"]) {
            assert.ok(on(a).every((r) => r !== "*" && r.includes(`:${REGION}:`)), `${a}: ${on(a)}`);
        }
        // Off by default: no SNS, no CloudWatch metrics, and never the other secrets or the bucket.
        for (const a of ["sns:Publish", "cloudwatch:PutMetricData", "secretsmanager:PutSecretValue", "s3:GetObject", "iam:PassRole"]) {
            assert.deepStrictEqual(on(a), [], a);
        }
    });

    it("lets the server write the function's identity, and nothing else new", () => {
        const p = one(recorded, T.rolePolicy, "server-publish-controller-identity");
        assert.strictEqual(p.inputs.role, "server-id");
        assert.deepStrictEqual(statements(p).map((s) => [s.Action, s.Resource]), [
            [["secretsmanager:PutSecretValue"], `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:smartscale/prod/controller-kubernetes-AbC123`],
        ]);
    });

    it("has the server publish the identity at boot and leave the daemon controller disabled", () => {
        const ud = userData(recorded).server;
        const secretArn = `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:smartscale/prod/controller-kubernetes-AbC123`;
        assert.match(ud, /\nCONTROLLER_MODE='lambda'\n/);
        assert.ok(ud.includes(`\nCONTROLLER_IDENTITY_SECRET_ID='${secretArn}'\n`), "the identity secret's ARN in the server's UserData");
        // The publisher and its per-boot unit travel in the UserData; the daemon is disabled.
        assert.match(ud, /\n# smartscale-publish-identity \(Lambda mode only\)/);
        assert.match(ud, /\nExecStart=\/usr\/local\/lib\/smartscale\/publish-identity\n/);
        assert.match(ud, /\n {2}systemctl disable --now smartscale-controller\.service\n/);
        // The secret and the right to write it exist before the server's first boot writes it.
        const server = one(recorded, "aws:ec2/instance:Instance");
        assert.ok(dependsOn(server, T.secret, "controller-kubernetes"), "the server waits for the identity secret");
        assert.ok(dependsOn(server, T.rolePolicy, "server-publish-controller-identity"), "the server waits for its PutSecretValue");
    });

    it("gives the server none of the controller's rights: only the function acts", () => {
        const serverPolicies = ofType(recorded, T.rolePolicy).filter((p) => p.inputs.role === "server-id");
        assert.deepStrictEqual(serverPolicies.map((p) => p.name).sort(), ["server", "server-publish-controller-identity"]);
        const actions = serverPolicies.flatMap(statements).flatMap((s) => list(s.Action));
        for (const a of ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup", "dynamodb:PutItem"]) {
            assert.ok(!actions.includes(a), `the server may ${a}`);
        }
    });

    it("gives the function its own log group with a retention", () => {
        const lg = one(recorded, T.logGroup);
        assert.strictEqual(lg.inputs.name, "/aws/lambda/smartscale-prod-controller");
        assert.strictEqual(lg.inputs.retentionInDays, 14);
        assert.strictEqual(fn().inputs.loggingConfig.logGroup, lg.state.name);
    });

    it("opens Prometheus and the K3s API to the function's security group only", () => {
        const ingress = ofType(recorded, T.ingress);
        const prometheus = ingress.filter((r) => r.inputs.fromPort === 9090 || r.inputs.toPort === 9090);
        assert.strictEqual(prometheus.length, 1);
        assert.strictEqual(prometheus[0].inputs.securityGroupId, "server-id");
        assert.strictEqual(prometheus[0].inputs.referencedSecurityGroupId, "controller-lambda-id");
        assert.strictEqual(prometheus[0].inputs.cidrIpv4, undefined);
        const api = ingress.filter((r) => r.inputs.fromPort === 6443 && r.inputs.referencedSecurityGroupId === "controller-lambda-id");
        assert.strictEqual(api.length, 1);
        assert.ok(!ingress.some((r) => r.inputs.securityGroupId === "controller-lambda-id"), "nothing reaches the function");
        const egress = ofType(recorded, T.egress).filter((r) => r.inputs.securityGroupId === "controller-lambda-id");
        assert.deepStrictEqual(egress.map((r) => [r.inputs.toPort, r.inputs.referencedSecurityGroupId ?? r.inputs.cidrIpv4]).sort(), [
            [443, "0.0.0.0/0"],
            [6443, "server-id"],
            [9090, "server-id"],
        ]);
    });

    it("writes a config the controller documents: Prometheus at the server, the schedule as interval", () => {
        const p = ofType(recorded, T.param).find((x) => x.inputs.name === "/smartscale/prod/controller/lambda-config")!;
        const yaml: string = p.inputs.value;
        assert.ok(yaml.includes(`url: http://${MOCK_SERVER_PRIVATE_IP}:9090`), yaml);
        assert.ok(/^interval: 60s$/m.test(yaml), yaml);
        assert.ok(/^  lease_ttl: 150s$/m.test(yaml), yaml);
        assert.ok(!yaml.includes("api:"), "no HTTP API in lambda mode");
        const documented = documentedControllerKeys();
        for (const k of yamlKeyPaths(yaml)) assert.ok(documented.has(k), `${k} is not in docs/interfaces.md`);
        assert.strictEqual(fn().inputs.environment.variables.SMARTSCALE_CONFIG_PARAMETER, "/smartscale/prod/controller/lambda-config");
    });
});

describe("Lambda mode options", function () {
    const bins = fakeBinaries();
    after(() => fs.rmSync(bins.dir, { recursive: true, force: true }));

    it("creates the notification topic and CloudWatch rights in its own namespace when asked", async () => {
        const { recorded, outputs } = await runStack({
            ...baseConfig(bins),
            "smartscale:controllerMode": "lambda",
            "smartscale:notificationTopic": "true",
            "smartscale:cloudwatchMetrics": "true",
            "smartscale:lambdaSchedule": "rate(5 minutes)",
            "smartscale:lambdaLogRetentionDays": "30",
        });
        const topic = one(recorded, T.topic);
        assert.strictEqual(outputs.notificationTopicArn, topic.state.arn);
        const st = statements(ofType(recorded, T.rolePolicy).find((p) => p.inputs.role === "controller-lambda-id")!);
        const publish = st.find((s) => list(s.Action).includes("sns:Publish"))!;
        assert.deepStrictEqual(list(publish.Resource), [topic.state.arn]);
        const metrics = st.find((s) => list(s.Action).includes("cloudwatch:PutMetricData"))!;
        assert.deepStrictEqual(metrics.Condition, { StringEquals: { "cloudwatch:namespace": "SmartScale/Autoscaler" } });
        const yaml: string = ofType(recorded, T.param).find((x) => x.inputs.name.endsWith("/lambda-config"))!.inputs.value;
        assert.ok(yaml.includes(`sns_topic_arn: ${topic.state.arn}`), yaml);
        assert.ok(/^cloudwatch:\n  enabled: true\n  namespace: SmartScale\/Autoscaler$/m.test(yaml), yaml);
        assert.ok(/^interval: 300s$/m.test(yaml), yaml);
        assert.strictEqual(one(recorded, T.rule).inputs.scheduleExpression, "rate(5 minutes)");
        assert.strictEqual(one(recorded, T.logGroup).inputs.retentionInDays, 30);
    });

    it("creates no function in daemon mode, and refuses lambda settings there", async () => {
        const { recorded } = await runStack(baseConfig(bins));
        assert.strictEqual(ofType(recorded, T.fn).length, 0);
        assert.strictEqual(ofType(recorded, T.rule).length, 0);
        await assert.rejects(
            runStack({ ...baseConfig(bins), "smartscale:cloudwatchMetrics": "true" }),
            /smartscale:cloudwatchMetrics applies to smartscale:controllerMode lambda only/,
        );
    });

    it("refuses a schedule EventBridge would refuse, and a retention CloudWatch does not offer", async () => {
        for (const [key, value, why] of [
            ["lambdaSchedule", "rate(1 minutes)", /singular unit for 1/],
            ["lambdaSchedule", "every minute", /not a rate expression/],
            ["lambdaLogRetentionDays", "10", /not a CloudWatch Logs retention/],
            ["lambdaTimeout", "901", /outside 10..900/],
        ] as const) {
            await assert.rejects(
                runStack({ ...baseConfig(bins), "smartscale:controllerMode": "lambda", [`smartscale:${key}`]: value }),
                why,
                `${key}=${value}`,
            );
        }
        assert.strictEqual(scheduleSeconds("rate(2 hours)"), 7200);
    });
});
