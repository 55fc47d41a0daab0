// Worker launch template and Auto Scaling Group: MixedInstancesPolicy (on-demand base + spot share
// over several instance types, capacity rebalance) and the two lifecycle hooks the agent answers.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { Ami } from "./ami";
import { StackConfig } from "./config";
import { InstanceIdentity } from "./iam";
import { Names, baseTags } from "./names";
import { Network } from "./network";

export const LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING";
export const TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING";

export interface Workers {
    launchTemplate: aws.ec2.LaunchTemplate;
    asg: aws.autoscaling.Group;
    hooks: aws.autoscaling.LifecycleHook[];
}

export function createWorkers(
    cfg: StackConfig,
    names: Names,
    net: Network,
    ami: Ami,
    identity: InstanceIdentity,
    userData: pulumi.Output<string>,
    dependsOn: pulumi.Resource[],
): Workers {
    const tags = baseTags(cfg, names, `${names.prefix}-worker`);
    const launchTemplate = new aws.ec2.LaunchTemplate("worker", {
        namePrefix: `${names.prefix}-worker-`,
        description: `SmartScale ${cfg.clusterId} worker`,
        imageId: ami.id,
        iamInstanceProfile: { arn: identity.profile.arn },
        vpcSecurityGroupIds: [net.workerSg.id],
        metadataOptions: {
            httpEndpoint: "enabled",
            httpTokens: "required", // IMDSv2 only
            httpPutResponseHopLimit: 1, // pods (one hop further) cannot reach IMDS and the role
            instanceMetadataTags: "enabled", // the agent can read aws:autoscaling:groupName locally
        },
        blockDeviceMappings: [
            {
                deviceName: ami.rootDeviceName,
                ebs: {
                    volumeType: "gp3",
                    volumeSize: cfg.workerRootVolumeGiB,
                    encrypted: "true",
                    deleteOnTermination: "true",
                },
            },
        ],
        userData: userData.apply((u) => Buffer.from(u, "utf8").toString("base64")),
        updateDefaultVersion: true,
        // Instance tags come from the ASG (propagateAtLaunch); volumes get theirs here.
        tagSpecifications: [{ resourceType: "volume", tags }],
        tags,
    });

    const hooks = [
        {
            name: names.launchHookName,
            lifecycleTransition: LAUNCHING,
            // Not Ready in time -> the instance is terminated and replaced.
            defaultResult: "ABANDON",
            heartbeatTimeout: cfg.lifecycleHeartbeatTimeout,
        },
        {
            name: names.terminateHookName,
            lifecycleTransition: TERMINATING,
            // Agent gone or stuck -> termination proceeds anyway.
            defaultResult: "CONTINUE",
            heartbeatTimeout: cfg.lifecycleHeartbeatTimeout,
        },
    ];

    const asg = new aws.autoscaling.Group(
        "workers",
        {
            name: names.asgName,
            vpcZoneIdentifiers: net.subnets.map((s) => s.id),
            minSize: cfg.workerMinSize,
            maxSize: cfg.workerMaxSize,
            desiredCapacity: cfg.workerMinSize,
            capacityRebalance: true,
            healthCheckType: "EC2",
            healthCheckGracePeriod: 300,
            // Do not block `pulumi up` on workers joining; watch them with `kubectl get nodes`.
            waitForCapacityTimeout: "0",
            mixedInstancesPolicy: {
                instancesDistribution: {
                    onDemandBaseCapacity: cfg.onDemandBaseCapacity,
                    onDemandPercentageAboveBaseCapacity: cfg.onDemandPercentageAboveBase,
                    onDemandAllocationStrategy: "prioritized",
                    spotAllocationStrategy: cfg.spotAllocationStrategy,
                },
                launchTemplate: {
                    launchTemplateSpecification: {
                        launchTemplateId: launchTemplate.id,
                        version: launchTemplate.latestVersion.apply((v) => String(v)),
                    },
                    overrides: cfg.workerInstanceTypes.map((instanceType) => ({ instanceType })),
                },
            },
            // Created with the group, so that the very first instances already wait in Pending:Wait.
            initialLifecycleHooks: hooks,
            tags: Object.entries(tags).map(([key, value]) => ({ key, value, propagateAtLaunch: true })),
        },
        {
            dependsOn,
            // The controller owns the desired capacity after creation.
            ignoreChanges: ["desiredCapacity"],
        },
    );
    // The provider applies initialLifecycleHooks only when it creates the group; these resources
    // (same names, PutLifecycleHook is an upsert) keep the hooks in line with later config changes,
    // e.g. a new heartbeat timeout.
    const hookResources = hooks.map(
        (h, i) =>
            new aws.autoscaling.LifecycleHook(i === 0 ? "launch-hook" : "terminate-hook", {
                ...h,
                autoscalingGroupName: asg.name,
            }),
    );
    return { launchTemplate, asg, hooks: hookResources };
}
