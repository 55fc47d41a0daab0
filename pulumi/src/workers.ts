// Worker launch template and Auto Scaling Group: MixedInstancesPolicy (on-demand base + spot share
// over several instance types, capacity rebalance) and the two lifecycle hooks the agent answers.
// With smartscale:warmPool enabled, a warm pool instead of the MixedInstancesPolicy: AWS allows no
// warm pool in a group with a mixed instances policy or Spot Instances (PutWarmPool), so the group
// launches the launch template's one on-demand instance type (config.ts checks the config says so).
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { Ami } from "./ami";
import { StackConfig } from "./config";
import { InstanceIdentity } from "./iam";
import { Names, baseTags } from "./names";
import { Network } from "./network";

export const LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING";
export const TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING";

/**
 * Resource options of the ASG: the controller owns the desired capacity, and the hooks are set at
 * creation only. Since provider 5.25 a change to initialLifecycleHooks replaces the group (every
 * worker with it), and a second definition as LifecycleHook resources is what the provider docs
 * warn against; docs/deploy.md ("Updating") says how to change a hook's timeout.
 */
export const ASG_IGNORE_CHANGES = ["desiredCapacity", "initialLifecycleHooks"];

export interface Workers {
    launchTemplate: aws.ec2.LaunchTemplate;
    asg: aws.autoscaling.Group;
}

export function createWorkers(
    cfg: StackConfig,
    names: Names,
    net: Network,
    ami: Ami,
    identity: InstanceIdentity,
    /** gzip + base64 (userdata.ts packUserData). */
    userDataBase64: pulumi.Output<string>,
    dependsOn: pulumi.Resource[],
): Workers {
    const tags = baseTags(cfg, names, `${names.prefix}-worker`);
    const warm = cfg.warmPool.enabled;
    const launchTemplate = new aws.ec2.LaunchTemplate("worker", {
        namePrefix: `${names.prefix}-worker-`,
        description: `SmartScale ${cfg.clusterId} worker`,
        imageId: ami.id,
        // Only without a MixedInstancesPolicy (warm pool): otherwise its overrides name the types.
        instanceType: warm ? cfg.workerInstanceTypes[0] : undefined,
        iamInstanceProfile: { arn: identity.profile.arn },
        vpcSecurityGroupIds: [net.workerSg.id],
        metadataOptions: {
            httpEndpoint: "enabled",
            httpTokens: "required", // IMDSv2 only
            httpPutResponseHopLimit: 1, // pods (one hop further) cannot reach IMDS and the role
            // Off, as Karpenter does: with metadata tags on, EC2 refuses to launch an instance whose
            // tag keys contain '/' (smartscale.io/cluster, cluster-autoscaler node-template tags).
            // The agent finds its ASG with DescribeAutoScalingInstances instead.
            instanceMetadataTags: "disabled",
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
        userData: userDataBase64,
        updateDefaultVersion: true,
        // Instance tags come from the ASG (propagateAtLaunch); volumes get theirs here.
        tagSpecifications: [{ resourceType: "volume", tags }],
        tags,
    });

    const asg = new aws.autoscaling.Group(
        "workers",
        {
            name: names.asgName,
            vpcZoneIdentifiers: net.subnets.map((s) => s.id),
            minSize: cfg.workerMinSize,
            maxSize: cfg.workerMaxSize,
            desiredCapacity: cfg.workerMinSize,
            // Capacity Rebalancing replaces at-risk Spot Instances; a warm-pool group has none.
            capacityRebalance: !warm,
            // AWS never picks a victim of its own: no AZ rebalancing after the controller's chosen
            // terminations, and no instance removed by a lowered desired capacity (the controller
            // checks and re-applies both at run time too).
            suspendedProcesses: ["AZRebalance"],
            protectFromScaleIn: true,
            healthCheckType: "EC2",
            healthCheckGracePeriod: 300,
            // `pulumi up` waits until workerMinSize workers are in service, i.e. joined and Ready
            // (the launch hook holds them in Pending:Wait until then), and fails if they are not.
            waitForCapacityTimeout: cfg.workerCapacityTimeout,
            ...(warm ? warmPoolArgs(cfg, launchTemplate) : { mixedInstancesPolicy: mixedInstancesPolicy(cfg, launchTemplate) }),
            // Created with the group, so that the very first instances already wait in Pending:Wait.
            initialLifecycleHooks: [
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
            ],
            tags: Object.entries(tags).map(([key, value]) => ({ key, value, propagateAtLaunch: true })),
        },
        // dependsOn: the worker policy (hooks answered from the first boot), the agent's
        // parameters and the server (workers join it).
        { dependsOn, ignoreChanges: ASG_IGNORE_CHANGES },
    );
    return { launchTemplate, asg };
}

const launchTemplateRef = (lt: aws.ec2.LaunchTemplate) => ({
    id: lt.id,
    version: lt.latestVersion.apply((v) => String(v)),
});

/** On-demand base + spot share over several instance types (no warm pool). */
function mixedInstancesPolicy(cfg: StackConfig, launchTemplate: aws.ec2.LaunchTemplate): aws.types.input.autoscaling.GroupMixedInstancesPolicy {
    return {
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
    };
}

/**
 * The warm pool (PutWarmPool through the provider) and the launch template alone (one on-demand
 * type). maxGroupPreparedCapacity is sent only when configured; left out, AWS sizes the pool as the
 * group's max size minus its desired capacity (at least minSize). The launch hook answers both launches: into the pool (the agent sees a `Warmed:` target
 * state and completes it with CONTINUE) and from the pool into service (the join).
 */
function warmPoolArgs(cfg: StackConfig, launchTemplate: aws.ec2.LaunchTemplate) {
    const wp = cfg.warmPool;
    return {
        launchTemplate: launchTemplateRef(launchTemplate),
        warmPool: {
            poolState: wp.poolState,
            minSize: wp.minSize,
            ...(wp.maxGroupPreparedCapacity !== undefined ? { maxGroupPreparedCapacity: wp.maxGroupPreparedCapacity } : {}),
            instanceReusePolicy: { reuseOnScaleIn: wp.reuseOnScaleIn },
        },
    };
}
