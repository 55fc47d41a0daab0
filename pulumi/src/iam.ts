// IAM: one role per instance kind, with inline policies that name exact resources.
//
// Rules (checked by test/stack.test.ts on every policy the program creates):
//   - no action is "*" or contains a wildcard; every action is listed by name;
//   - every resource is an exact ARN (the secret, each SSM parameter, each S3 object, the ASG,
//     the table), except READ_ONLY_DESCRIBE_ACTIONS below;
//   - actions that change the ASG are also conditioned on the cluster tag of the ASG.
//
// The one unavoidable resource "*": AWS Auto Scaling's Describe* calls do not support
// resource-level permissions (the Service Authorization Reference lists no resource type for
// them), so a policy can only grant them on "*". They are read-only (group, instance, hook and
// activity metadata; no secrets, no changes) and are the only actions ever granted on "*".
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

export const READ_ONLY_DESCRIBE_ACTIONS = [
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:DescribeScalingActivities",
];

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
        if (s.Resource === "*" && !s.Action.every((a) => READ_ONLY_DESCRIBE_ACTIONS.includes(a))) {
            throw new Error(`IAM statement ${s.Sid}: only ${READ_ONLY_DESCRIBE_ACTIONS.join(", ")} may use resource "*"`);
        }
    }
    return pulumi.jsonStringify({ Version: "2012-10-17", Statement: statements });
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

/** What a worker needs before it can join: its token, its parameters, its agent binary. */
export function workerBootStatements(i: {
    tokenSecretArn: pulumi.Input<string>;
    ssmPathArn: pulumi.Input<string>;
    ssmParameterArns: pulumi.Input<string>[];
    agentObjectArn: pulumi.Input<string>;
}): Statement[] {
    return [
        { Sid: "ReadJoinToken", Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: i.tokenSecretArn },
        { Sid: "ReadAgentParameterPath", Effect: "Allow", Action: ["ssm:GetParametersByPath"], Resource: i.ssmPathArn },
        { Sid: "ReadAgentParameters", Effect: "Allow", Action: ["ssm:GetParameter", "ssm:GetParameters"], Resource: i.ssmParameterArns },
        { Sid: "DownloadAgent", Effect: "Allow", Action: ["s3:GetObject", "s3:GetObjectVersion"], Resource: i.agentObjectArn },
    ];
}

/** The agent answering its own ASG's lifecycle hooks. */
export function workerLifecycleStatements(cfg: StackConfig, names: Names, asgArn: pulumi.Input<string>): Statement[] {
    return [
        {
            Sid: "AnswerOwnLifecycleHooks",
            Effect: "Allow",
            Action: ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
            Resource: asgArn,
            Condition: clusterTagCondition(cfg, names),
        },
        // Read-only, resource "*" only (see the header): lets the agent find its ASG and hooks.
        {
            Sid: "DescribeOwnInstanceReadOnly",
            Effect: "Allow",
            Action: ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeLifecycleHooks"],
            Resource: "*",
        },
    ];
}

/** What the server needs to boot: the two secrets and its pinned S3 objects. */
export function serverBootStatements(i: {
    tokenSecretArn: pulumi.Input<string>;
    grafanaSecretArn: pulumi.Input<string>;
    objectArns: pulumi.Input<string>[];
}): Statement[] {
    return [
        {
            Sid: "ReadBootSecrets",
            Effect: "Allow",
            Action: ["secretsmanager:GetSecretValue"],
            Resource: [i.tokenSecretArn, i.grafanaSecretArn],
        },
        { Sid: "DownloadServerArtifacts", Effect: "Allow", Action: ["s3:GetObject", "s3:GetObjectVersion"], Resource: i.objectArns },
    ];
}

/** The controller: scale and terminate in the tagged ASG, describe, and its own table. */
export function controllerStatements(
    cfg: StackConfig,
    names: Names,
    i: { asgArn: pulumi.Input<string>; tableArn: pulumi.Input<string> },
): Statement[] {
    return [
        {
            Sid: "ScaleTaggedWorkerGroup",
            Effect: "Allow",
            Action: ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            Resource: i.asgArn,
            Condition: clusterTagCondition(cfg, names),
        },
        // Read-only, resource "*" only (see the header).
        { Sid: "DescribeAutoScalingReadOnly", Effect: "Allow", Action: [...READ_ONLY_DESCRIBE_ACTIONS], Resource: "*" },
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
