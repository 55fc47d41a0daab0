// IAM: one role per instance kind, with inline policies that name exact resources.
//
// Rules (checked by test/stack.test.ts and test/aws-limits.test.ts on every policy created):
//   - no action is "*" or contains a wildcard; every action is listed by name;
//   - every resource is an exact ARN (a secret, an SSM parameter, an S3 object key, the table),
//     except:
//       * the worker ASG, written `autoScalingGroup:*:autoScalingGroupName/<exact name>`: the
//         group's id is only known once it exists, and the policy must be in place before the
//         first instance boots; AWS documents this form for name-scoped Auto Scaling policies.
//         Actions that change the group are also conditioned on its cluster tag.
//       * NO_RESOURCE_LEVEL_ACTIONS: read-only calls the Service Authorization Reference lists with
//         no resource type, which AWS accepts only on "*" (and, for the Lambda mode's role only,
//         NO_RESOURCE_LEVEL_LAMBDA_ACTIONS: DescribeNetworkInterfaces, PutMetricData).
//   - each role's inline policies stay under IAM's 10,240-character aggregate limit.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

export const NO_RESOURCE_LEVEL_ACTIONS = [
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:DescribeScalingActivities",
    // The worker group's warm pool and its instances (smartscale:warmPool), for the controller.
    "autoscaling:DescribeWarmPool",
    "ec2:DescribeInstances",
    "ec2:DescribeSpotPriceHistory",
    "pricing:GetProducts",
];

/**
 * The Lambda mode's own calls without resource-level permissions (the Service Authorization
 * Reference lists none): its VPC interfaces' lookup, and metrics (conditioned on the namespace).
 */
export const NO_RESOURCE_LEVEL_LAMBDA_ACTIONS = ["ec2:DescribeNetworkInterfaces", "cloudwatch:PutMetricData"];

export interface Statement {
    Sid: string;
    Effect: "Allow";
    Action: string[];
    Resource: pulumi.Input<string> | pulumi.Input<string>[];
    Condition?: Record<string, Record<string, pulumi.Input<string>>>;
}

export function policyDocument(statements: Statement[]): pulumi.Output<string> {
    for (const s of statements) {
        for (const a of s.Action) {
            if (a.includes("*")) {
                throw new Error(`IAM statement ${s.Sid}: wildcard action ${a} is not allowed`);
            }
        }
        const starOk = (a: string) => NO_RESOURCE_LEVEL_ACTIONS.includes(a) || NO_RESOURCE_LEVEL_LAMBDA_ACTIONS.includes(a);
        if (s.Resource === "*" && !s.Action.every(starOk)) {
            throw new Error(`IAM statement ${s.Sid}: only ${NO_RESOURCE_LEVEL_ACTIONS.join(", ")} may use resource "*"`);
        }
    }
    return pulumi.jsonStringify({ Version: "2012-10-17", Statement: statements });
}

export interface Arns {
    partition: pulumi.Input<string>;
    accountId: pulumi.Input<string>;
}

/** The worker ASG by name (see the header): usable before the group exists. */
export function asgArn(cfg: StackConfig, names: Names, a: Arns): pulumi.Output<string> {
    return pulumi.interpolate`arn:${a.partition}:autoscaling:${cfg.region}:${a.accountId}:autoScalingGroup:*:autoScalingGroupName/${names.asgName}`;
}

export function ssmParameterArn(cfg: StackConfig, a: Arns, name: string): pulumi.Output<string> {
    return pulumi.interpolate`arn:${a.partition}:ssm:${cfg.region}:${a.accountId}:parameter${name}`;
}

const EC2_ASSUME_ROLE = JSON.stringify({
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }],
});

export interface InstanceIdentity {
    role: aws.iam.Role;
    profile: aws.iam.InstanceProfile;
}

export function createInstanceIdentity(cfg: StackConfig, names: Names, kind: "server" | "worker"): InstanceIdentity {
    const role = new aws.iam.Role(kind, {
        assumeRolePolicy: EC2_ASSUME_ROLE,
        description: kind === "server" ? `SmartScale ${cfg.clusterId}: K3s server and controller` : `SmartScale ${cfg.clusterId}: K3s workers and agent`,
        tags: baseTags(cfg, names),
    });
    const profile = new aws.iam.InstanceProfile(kind, { role: role.name, tags: baseTags(cfg, names) });
    return { role, profile };
}

/** Condition that pins ASG-changing actions to the ASG carrying this cluster's tag. */
function clusterTagCondition(cfg: StackConfig, names: Names) {
    return { StringEquals: { [`autoscaling:ResourceTag/${names.clusterTagKey}`]: cfg.clusterId } };
}

const download = (sid: string, objectArns: pulumi.Input<string>[]): Statement => ({
    Sid: sid,
    Effect: "Allow",
    Action: ["s3:GetObject", "s3:GetObjectVersion"],
    Resource: objectArns,
});

/** A worker: the agent token, its parameters, its binaries, and its own ASG's lifecycle hooks. */
export function workerStatements(
    cfg: StackConfig,
    names: Names,
    i: {
        agentTokenSecretArn: pulumi.Input<string>;
        ssmPathArn: pulumi.Input<string>;
        ssmParameterArns: pulumi.Input<string>[];
        objectArns: pulumi.Input<string>[];
        asgArn: pulumi.Input<string>;
    },
): Statement[] {
    return [
        // The agent token only: the server token (cluster admin) is not readable from a worker.
        { Sid: "ReadAgentToken", Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: i.agentTokenSecretArn },
        { Sid: "ReadAgentParameterPath", Effect: "Allow", Action: ["ssm:GetParametersByPath"], Resource: i.ssmPathArn },
        { Sid: "ReadAgentParameters", Effect: "Allow", Action: ["ssm:GetParameter", "ssm:GetParameters"], Resource: i.ssmParameterArns },
        download("DownloadWorkerArtifacts", i.objectArns),
        {
            Sid: "AnswerOwnLifecycleHooks",
            Effect: "Allow",
            Action: ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
            Resource: i.asgArn,
            Condition: clusterTagCondition(cfg, names),
        },
        // Read-only, resource "*" only (see the header): the agent finds its ASG (instance metadata
        // tags are off) and its hooks' timeouts.
        {
            Sid: "DescribeOwnInstanceReadOnly",
            Effect: "Allow",
            Action: ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeLifecycleHooks"],
            Resource: "*",
        },
    ];
}

/** The server: its secrets, publishing the agent token, its objects and its two parameters. */
export function serverStatements(i: {
    serverTokenSecretArn: pulumi.Input<string>;
    grafanaSecretArn: pulumi.Input<string>;
    agentTokenSecretArn: pulumi.Input<string>;
    objectArns: pulumi.Input<string>[];
    parameterArns: pulumi.Input<string>[];
}): Statement[] {
    return [
        { Sid: "ReadServerSecrets", Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: [i.serverTokenSecretArn, i.grafanaSecretArn] },
        { Sid: "PublishAgentToken", Effect: "Allow", Action: ["secretsmanager:PutSecretValue"], Resource: i.agentTokenSecretArn },
        download("DownloadServerArtifacts", i.objectArns),
        { Sid: "ReadReleaseAndControllerConfig", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: i.parameterArns },
    ];
}

/** The controller: scale and terminate in the tagged ASG, describe, prices, and its own table. */
export function controllerStatements(
    cfg: StackConfig,
    names: Names,
    i: { asgArn: pulumi.Input<string>; tableArn: pulumi.Input<string> },
): Statement[] {
    return [
        {
            Sid: "ScaleTaggedWorkerGroup",
            Effect: "Allow",
            Action: [
                "autoscaling:SetDesiredCapacity",
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                // Guards against AWS choosing victims: suspend AZRebalance, protect instances.
                "autoscaling:SuspendProcesses",
                "autoscaling:SetInstanceProtection",
                "autoscaling:UpdateAutoScalingGroup",
            ],
            Resource: i.asgArn,
            Condition: clusterTagCondition(cfg, names),
        },
        // Read-only, resource "*" only (see the header): groups and activities, and the real
        // on-demand (Price List) and spot (DescribeSpotPriceHistory) prices of the workers.
        { Sid: "ReadOnlyWithoutResourceLevel", Effect: "Allow", Action: [...NO_RESOURCE_LEVEL_ACTIONS], Resource: "*" },
        {
            Sid: "ControllerStateTable",
            Effect: "Allow",
            Action: [
                "dynamodb:DescribeTable",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:Query",
                "dynamodb:ConditionCheckItem",
            ],
            Resource: i.tableArn,
        },
    ];
}

export function attachPolicy(name: string, identity: InstanceIdentity, statements: Statement[]): aws.iam.RolePolicy {
    return new aws.iam.RolePolicy(name, { role: identity.role.id, policy: policyDocument(statements) });
}
