// Lambda mode (`smartscale:controllerMode lambda`): the controller as an AWS Lambda function
// (provided.al2023; the controller binary is the `bootstrap`), run by an EventBridge schedule,
// one full cycle per invocation (README, "Lambda mode").
//
// What it creates:
//   - the function in the VPC, in two private subnets whose only way out is a NAT gateway (AWS's
//     APIs; Lambda gives a function's network interfaces no public address), with reserved
//     concurrency 1, no retries of a failed tick (the next tick is a minute away), and its log
//     group with a retention;
//   - its own security group, and ingress on the server for Prometheus (9090) and the K3s API
//     (6443) from that group only;
//   - its role: the daemon controller's rights on the tagged group and the table, plus reading its
//     config parameter and its Kubernetes identity, publishing to the topic, putting metrics in
//     its own namespace, its VPC network interfaces and its log group, nothing else;
//   - the EventBridge rule (default rate(1 minute)) and the permission for it to invoke;
//   - the Kubernetes identity secret (createControllerIdentity, before the server, which writes
//     it at first boot), created empty: the K3s server writes the controller's ServiceAccount token
//     (with the CA and the API address) into it at every boot (userdata/publish-identity.sh), so
//     no credential is in the function's environment, its code package or the Pulumi state;
//   - optionally an SNS topic for the notifications (`smartscale:notificationTopic`).
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { PROMETHEUS_URL, controllerConfigYaml } from "./controller-config";
import { Arns, Statement, controllerStatements, policyDocument } from "./iam";
import { Names, baseTags } from "./names";
import { Network, PORTS } from "./network";

/** Prometheus on the server's host network (userdata/manifests/smartscale.yaml). */
export const PROMETHEUS_PORT = 9090;
export const CLOUDWATCH_NAMESPACE = "SmartScale/Autoscaler";

export interface LambdaNames {
    functionName: string;
    logGroupName: string;
    configParam: string;
    identitySecretName: string;
    topicName: string;
}

export function lambdaNames(names: Names, clusterId: string): LambdaNames {
    const functionName = `${names.prefix}-controller`;
    return {
        functionName,
        logGroupName: `/aws/lambda/${functionName}`,
        configParam: `/smartscale/${clusterId}/controller/lambda-config`,
        identitySecretName: `smartscale/${clusterId}/controller-kubernetes`,
        topicName: `${names.prefix}-notifications`,
    };
}

/** Seconds between two ticks of a `rate(N unit)` expression. */
export function scheduleSeconds(rate: string): number {
    const m = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(rate);
    if (!m) throw new Error(`"${rate}" is not a rate(N minutes|hours|days) expression`);
    const unit = { minute: 60, minutes: 60, hour: 3600, hours: 3600, day: 86400, days: 86400 }[m[2] as "minute"];
    return Number(m[1]) * unit;
}

/**
 * The function's config: the daemon's (controller-config.ts), with Prometheus at the server's
 * private address, the schedule as the interval, a lease that outlives one tick, and the
 * reporting the stack chose.
 */
export function lambdaConfigYaml(
    cfg: StackConfig,
    names: Names,
    i: { serverPrivateIp: string; topicArn?: string },
): string {
    const interval = scheduleSeconds(cfg.lambdaSchedule);
    const lines = controllerConfigYaml(cfg, names)
        .replace(`url: ${PROMETHEUS_URL}`, `url: http://${i.serverPrivateIp}:${PROMETHEUS_PORT}`)
        .replace(/^interval: .*$/m, `interval: ${interval}s`)
        .replace(/^# .*\n/gm, "")
        .replace(/^api:\n(  .*\n)*/m, "")
        .replace(/^state:\n/m, `state:\n  lease_ttl: ${Math.max(90, 2 * interval + 30)}s\n`)
        .trimEnd()
        .split("\n");
    const header = [
        "# smartscale-controller configuration for the Lambda mode (docs/interfaces.md), written by",
        "# `pulumi up` into SSM and into the code package (the fallback).",
    ];
    if (i.topicArn) lines.push("notifications:", `  sns_topic_arn: ${i.topicArn}`);
    if (cfg.cloudwatchMetrics) lines.push("cloudwatch:", "  enabled: true", `  namespace: ${CLOUDWATCH_NAMESPACE}`);
    return [...header, ...lines, ""].join("\n");
}

/** The private subnets' CIDRs: a.b.(128+16i).0/20, clear of the public /20s (at most six). */
export function privateSubnetCidr(vpcCidr: string, index: number): string {
    const [a, b] = vpcCidr.split(".");
    return `${a}.${b}.${128 + index * 16}.0/20`;
}

/** The secret the server writes the function's Kubernetes identity into, and its right to. */
export interface ControllerIdentity {
    secret: aws.secretsmanager.Secret;
    /** The server role's PutSecretValue on it. */
    publishPolicy: aws.iam.RolePolicy;
    resources: pulumi.Resource[];
}

/**
 * Created before the server, whose first boot writes it: the secret (empty; only the server ever
 * gives it a value) and the server role's right to write it.
 */
export function createControllerIdentity(cfg: StackConfig, names: Names, serverRole: aws.iam.Role): ControllerIdentity {
    const secret = new aws.secretsmanager.Secret("controller-kubernetes", {
        name: lambdaNames(names, cfg.clusterId).identitySecretName,
        description: `SmartScale ${cfg.clusterId}: the controller's ServiceAccount token, CA and API address (written by the K3s server)`,
        recoveryWindowInDays: 0,
        tags: baseTags(cfg, names),
    });
    const publishPolicy = new aws.iam.RolePolicy("server-publish-controller-identity", {
        role: serverRole.id,
        policy: policyDocument([
            { Sid: "PublishControllerIdentity", Effect: "Allow", Action: ["secretsmanager:PutSecretValue"], Resource: secret.arn },
        ]),
    });
    return { secret, publishPolicy, resources: [secret, publishPolicy] };
}

export interface LambdaInputs {
    net: Network;
    arns: Arns;
    asgArn: pulumi.Input<string>;
    tableArn: pulumi.Input<string>;
    serverPrivateIp: pulumi.Output<string>;
    /** The identity secret the server writes (createControllerIdentity). */
    identity: ControllerIdentity;
}

export interface LambdaController {
    fn: aws.lambda.Function;
    rule: aws.cloudwatch.EventRule;
    role: aws.iam.Role;
    securityGroup: aws.ec2.SecurityGroup;
    topic?: aws.sns.Topic;
    resources: pulumi.Resource[];
}

const LAMBDA_ASSUME_ROLE = JSON.stringify({
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" }],
});

/** The function's rights beyond the daemon controller's (controllerStatements). */
export function lambdaStatements(
    cfg: StackConfig,
    i: {
        configParamArn: pulumi.Input<string>;
        identitySecretArn: pulumi.Input<string>;
        logGroupArn: pulumi.Input<string>;
        topicArn?: pulumi.Input<string>;
        networkInterfaceArn: pulumi.Input<string>;
        subnetArns: pulumi.Input<string>[];
        securityGroupArn: pulumi.Input<string>;
    },
): Statement[] {
    const s: Statement[] = [
        { Sid: "ReadOwnConfig", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: i.configParamArn },
        { Sid: "ReadKubernetesIdentity", Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: i.identitySecretArn },
        { Sid: "WriteOwnLogs", Effect: "Allow", Action: ["logs:CreateLogStream", "logs:PutLogEvents"], Resource: pulumi.interpolate`${i.logGroupArn}:*` },
        // What Lambda does on the function's behalf to place it in the VPC (the managed
        // AWSLambdaVPCAccessExecutionRole, scoped to this VPC's subnets and group).
        {
            Sid: "FunctionNetworkInterfaces",
            Effect: "Allow",
            Action: ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"],
            Resource: [i.networkInterfaceArn, ...i.subnetArns, i.securityGroupArn],
        },
        { Sid: "DescribeNetworkInterfaces", Effect: "Allow", Action: ["ec2:DescribeNetworkInterfaces"], Resource: "*" },
    ];
    if (i.topicArn) s.push({ Sid: "PublishNotifications", Effect: "Allow", Action: ["sns:Publish"], Resource: i.topicArn });
    if (cfg.cloudwatchMetrics) {
        s.push({
            Sid: "PutOwnMetrics",
            Effect: "Allow",
            Action: ["cloudwatch:PutMetricData"],
            Resource: "*",
            Condition: { StringEquals: { "cloudwatch:namespace": CLOUDWATCH_NAMESPACE } },
        });
    }
    return s;
}

export function createLambdaController(cfg: StackConfig, names: Names, i: LambdaInputs): LambdaController {
    const ln = lambdaNames(names, cfg.clusterId);
    const tags = (n?: string) => baseTags(cfg, names, n);
    const resources: pulumi.Resource[] = [];
    const region = cfg.region;

    // ---- network: private subnets behind a NAT gateway, the function's group, the server's ingress.
    const eip = new aws.ec2.Eip("lambda-nat", { domain: "vpc", tags: tags(`${names.prefix}-lambda-nat`) });
    const nat = new aws.ec2.NatGateway("lambda-nat", { allocationId: eip.id, subnetId: i.net.subnets[0].id, tags: tags(`${names.prefix}-lambda-nat`) });
    const routes = new aws.ec2.RouteTable("lambda-private", {
        vpcId: i.net.vpc.id,
        routes: [{ cidrBlock: "0.0.0.0/0", natGatewayId: nat.id }],
        tags: tags(`${names.prefix}-lambda-private`),
    });
    // DynamoDB through the free gateway endpoint: the table's traffic never crosses the NAT.
    const dynamodb = new aws.ec2.VpcEndpoint("lambda-dynamodb", {
        vpcId: i.net.vpc.id,
        serviceName: `com.amazonaws.${region}.dynamodb`,
        vpcEndpointType: "Gateway",
        routeTableIds: [routes.id],
        tags: tags(`${names.prefix}-dynamodb`),
    });
    resources.push(eip, nat, routes, dynamodb);
    const subnets = i.net.subnets.slice(0, 2).map((pub, n) => {
        const subnet = new aws.ec2.Subnet(`lambda-private-${n}`, {
            vpcId: i.net.vpc.id,
            cidrBlock: privateSubnetCidr(cfg.vpcCidr, n),
            availabilityZone: pub.availabilityZone,
            mapPublicIpOnLaunch: false,
            tags: tags(`${names.prefix}-lambda-private-${n}`),
        });
        resources.push(subnet, new aws.ec2.RouteTableAssociation(`lambda-private-${n}`, { subnetId: subnet.id, routeTableId: routes.id }));
        return subnet;
    });
    const sg = new aws.ec2.SecurityGroup("controller-lambda", {
        vpcId: i.net.vpc.id,
        description: "SmartScale controller Lambda function",
        tags: tags(`${names.prefix}-controller-lambda`),
    });
    resources.push(sg);
    const tcp = (port: number) => ({ ipProtocol: "tcp", fromPort: port, toPort: port });
    resources.push(
        new aws.vpc.SecurityGroupIngressRule("server-prometheus-lambda", {
            securityGroupId: i.net.serverSg.id,
            referencedSecurityGroupId: sg.id,
            ...tcp(PROMETHEUS_PORT),
            description: "Prometheus from the controller function only",
        }),
        new aws.vpc.SecurityGroupIngressRule("server-api-lambda", {
            securityGroupId: i.net.serverSg.id,
            referencedSecurityGroupId: sg.id,
            ...tcp(PORTS.k3sApi),
            description: "K3s API from the controller function",
        }),
        new aws.vpc.SecurityGroupEgressRule("lambda-prometheus", {
            securityGroupId: sg.id,
            referencedSecurityGroupId: i.net.serverSg.id,
            ...tcp(PROMETHEUS_PORT),
            description: "Prometheus on the server",
        }),
        new aws.vpc.SecurityGroupEgressRule("lambda-k3s-api", {
            securityGroupId: sg.id,
            referencedSecurityGroupId: i.net.serverSg.id,
            ...tcp(PORTS.k3sApi),
            description: "K3s API on the server",
        }),
        new aws.vpc.SecurityGroupEgressRule("lambda-aws-apis", {
            securityGroupId: sg.id,
            cidrIpv4: "0.0.0.0/0",
            ...tcp(443),
            description: "AWS APIs (HTTPS) through the NAT gateway",
        }),
    );

    // ---- what it reads: its config (SSM and packaged); its Kubernetes identity is i.identity.
    const topic = cfg.notificationTopic
        ? new aws.sns.Topic("notifications", { name: ln.topicName, tags: tags() })
        : undefined;
    const configYaml = pulumi
        .all([i.serverPrivateIp, topic ? topic.arn : pulumi.output(undefined)])
        .apply(([serverPrivateIp, topicArn]) => lambdaConfigYaml(cfg, names, { serverPrivateIp, topicArn }));
    const configParam = new aws.ssm.Parameter("controller-lambda-config", {
        name: ln.configParam,
        type: "String",
        tier: "Standard",
        value: configYaml,
        description: "smartscale-controller config (YAML) of the Lambda mode",
        tags: tags(),
    });
    const logGroup = new aws.cloudwatch.LogGroup("controller-lambda", {
        name: ln.logGroupName,
        retentionInDays: cfg.lambdaLogRetentionDays,
        tags: tags(),
    });
    resources.push(configParam, logGroup, ...(topic ? [topic] : []));

    // ---- its role: the daemon controller's rights, plus lambdaStatements (its config, the identity the server writes, its logs).
    const role = new aws.iam.Role("controller-lambda", {
        assumeRolePolicy: LAMBDA_ASSUME_ROLE,
        description: `SmartScale ${cfg.clusterId}: controller Lambda function`,
        tags: tags(),
    });
    const ec2Arn = (what: string) => pulumi.interpolate`arn:${i.arns.partition}:ec2:${region}:${i.arns.accountId}:${what}`;
    const policy = new aws.iam.RolePolicy("controller-lambda", {
        role: role.id,
        policy: policyDocument([
            ...controllerStatements(cfg, names, { asgArn: i.asgArn, tableArn: i.tableArn }),
            ...lambdaStatements(cfg, {
                configParamArn: configParam.arn,
                identitySecretArn: i.identity.secret.arn,
                logGroupArn: logGroup.arn,
                topicArn: topic?.arn,
                networkInterfaceArn: ec2Arn("network-interface/*"),
                subnetArns: subnets.map((s) => s.arn),
                securityGroupArn: sg.arn,
            }),
        ]),
    });
    resources.push(role, policy);

    // ---- the function and its schedule.
    const code = configYaml.apply(
        (yaml) =>
            new pulumi.asset.AssetArchive({
                bootstrap: new pulumi.asset.FileAsset(cfg.controllerBinaryPath),
                "controller.yaml": new pulumi.asset.StringAsset(yaml),
            }),
    );
    const fn = new aws.lambda.Function(
        "controller",
        {
            name: ln.functionName,
            description: `SmartScale ${cfg.clusterId}: one controller cycle per invocation`,
            runtime: "provided.al2023",
            handler: "bootstrap",
            architectures: ["x86_64"],
            code,
            role: role.arn,
            memorySize: cfg.lambdaMemoryMb,
            timeout: cfg.lambdaTimeout,
            // One execution at a time; the lease would hold a second one back anyway.
            reservedConcurrentExecutions: 1,
            vpcConfig: { subnetIds: subnets.map((s) => s.id), securityGroupIds: [sg.id] },
            loggingConfig: { logFormat: "Text", logGroup: logGroup.name },
            // Names only: no credential, no kubeconfig.
            environment: {
                variables: {
                    SMARTSCALE_CONFIG_PARAMETER: ln.configParam,
                    SMARTSCALE_KUBERNETES_SECRET: ln.identitySecretName,
                    RUST_LOG: "info",
                },
            },
            tags: tags(),
        },
        { dependsOn: [policy, logGroup] },
    );
    const invokeConfig = new aws.lambda.FunctionEventInvokeConfig("controller", {
        functionName: fn.name,
        // A failed tick is not retried: the next one is a schedule period away and reads afresh.
        maximumRetryAttempts: 0,
        maximumEventAgeInSeconds: 60,
    });
    const rule = new aws.cloudwatch.EventRule("controller-schedule", {
        name: `${names.prefix}-controller-schedule`,
        description: `SmartScale ${cfg.clusterId}: runs the controller function`,
        scheduleExpression: cfg.lambdaSchedule,
        tags: tags(),
    });
    const permission = new aws.lambda.Permission("controller-schedule", {
        action: "lambda:InvokeFunction",
        function: fn.name,
        principal: "events.amazonaws.com",
        sourceArn: rule.arn,
    });
    const target = new aws.cloudwatch.EventTarget("controller-schedule", {
        rule: rule.name,
        arn: fn.arn,
        retryPolicy: { maximumRetryAttempts: 0, maximumEventAgeInSeconds: 60 },
    }, { dependsOn: [permission] });
    resources.push(fn, invokeConfig, rule, permission, target);
    return { fn, rule, role, securityGroup: sg, topic, resources };
}
