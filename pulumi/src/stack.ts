// Wires the modules together. `index.ts` calls createStack() and exports its outputs; the unit
// tests call it directly under Pulumi's mocks.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { lookupAmi } from "./ami";
import { createArtifacts } from "./artifacts";
import { StackConfig, loadConfig } from "./config";
import {
    attachPolicy,
    controllerStatements,
    createInstanceIdentity,
    serverBootStatements,
    workerBootStatements,
    workerLifecycleStatements,
} from "./iam";
import { namesFor } from "./names";
import { createNetwork } from "./network";
import { createAgentParams } from "./params";
import { createSecrets } from "./secrets";
import { createServer } from "./server";
import { createStateTable } from "./state";
import { serverUserData, workerUserData } from "./userdata";
import { createWorkers } from "./workers";

export interface StackOutputs {
    serverPublicIp: pulumi.Output<string>;
    grafanaUrl: pulumi.Output<string>;
    asgName: pulumi.Output<string>;
    tableName: pulumi.Output<string>;
    clusterId: string;
    artifactBucket: pulumi.Output<string>;
    agentSha256: string;
    controllerSha256: string;
    grafanaAdminPassword: pulumi.Output<string>;
}

export interface Stack {
    config: StackConfig;
    outputs: StackOutputs;
    /** Every resource created, for tests to wait on. */
    resources: pulumi.Resource[];
}

export function createStack(): Stack {
    const cfg = loadConfig();
    const names = namesFor(cfg);
    const resources: pulumi.Resource[] = [];

    const net = createNetwork(cfg, names);
    const secrets = createSecrets(cfg, names);
    const table = createStateTable(cfg, names);
    const artifacts = createArtifacts(cfg, names);
    const ami = lookupAmi(cfg);
    resources.push(...net.resources, ...secrets.resources, table, ...artifacts.resources);

    const identity = aws.getCallerIdentityOutput();
    const partition = aws.getPartitionOutput();
    const objectArn = (key: string) => pulumi.interpolate`${artifacts.bucket.arn}/${key}`;

    // ---- server: boot permissions exist before it starts; controller permissions follow the ASG.
    const serverIdentity = createInstanceIdentity(cfg, names, "server");
    const serverBootPolicy = attachPolicy(
        "server-boot",
        serverIdentity,
        serverBootStatements({
            tokenSecretArn: secrets.tokenSecret.arn,
            grafanaSecretArn: secrets.grafanaSecret.arn,
            objectArns: [objectArn(artifacts.controller.key), ...artifacts.manifests.map((m) => objectArn(m.artifact.key))],
        }),
    );

    const serverScript = pulumi
        .all([
            artifacts.bucket.bucket,
            artifacts.controller.versionId,
            secrets.tokenSecret.arn,
            secrets.grafanaSecret.arn,
            pulumi.all(artifacts.manifests.map((m) => m.artifact.versionId)),
        ])
        .apply(([bucket, controllerVersionId, tokenSecretArn, grafanaSecretArn, manifestVersions]) =>
            serverUserData({
                region: cfg.region,
                clusterId: cfg.clusterId,
                bucket,
                controllerKey: artifacts.controller.key,
                controllerVersionId,
                controllerSha256: artifacts.controller.sha256,
                tokenSecretId: tokenSecretArn,
                grafanaSecretId: grafanaSecretArn,
                k3sVersion: cfg.k3sVersion,
                manifests: artifacts.manifests.map((m, i) => ({
                    fileName: m.fileName,
                    key: m.artifact.key,
                    versionId: manifestVersions[i],
                    sha256: m.artifact.sha256,
                })),
                controller: {
                    clusterId: cfg.clusterId,
                    interval: cfg.controllerInterval,
                    dryRun: cfg.dryRun,
                    tableName: names.tableName,
                    asgName: names.asgName,
                    minSize: cfg.workerMinSize,
                    maxSize: cfg.workerMaxSize,
                    instanceType: cfg.workerInstanceTypes[0],
                    allocatableCpu: cfg.workerAllocatableCpu,
                    allocatableMemoryGib: cfg.workerAllocatableMemoryGib,
                    hourlyPrice: cfg.workerHourlyPrice,
                },
            }),
        );
    const server = createServer(cfg, names, net, ami, serverIdentity, serverScript, [serverBootPolicy, ...artifacts.resources]);
    resources.push(serverIdentity.role, serverIdentity.profile, serverBootPolicy, server);

    // ---- agent settings in SSM (server_url needs the server's private address).
    const params = createAgentParams(cfg, names, pulumi.interpolate`https://${server.privateIp}:6443`);
    resources.push(...params.params);

    // ---- workers: boot permissions before the ASG exists; lifecycle permissions name the ASG.
    const workerIdentity = createInstanceIdentity(cfg, names, "worker");
    const ssmPathArn = pulumi.interpolate`arn:${partition.partition}:ssm:${cfg.region}:${identity.accountId}:parameter${names.ssmPath}`;
    const workerBootPolicy = attachPolicy(
        "worker-boot",
        workerIdentity,
        workerBootStatements({
            tokenSecretArn: secrets.tokenSecret.arn,
            ssmPathArn,
            ssmParameterArns: params.params.map((p) => p.arn),
            agentObjectArn: objectArn(artifacts.agent.key),
        }),
    );

    const workerScript = pulumi
        .all([artifacts.bucket.bucket, artifacts.agent.versionId, secrets.tokenSecret.arn])
        .apply(([bucket, agentVersionId, tokenSecretArn]) =>
            workerUserData({
                region: cfg.region,
                clusterId: cfg.clusterId,
                asgName: names.asgName,
                launchHookName: names.launchHookName,
                bucket,
                agentKey: artifacts.agent.key,
                agentVersionId,
                agentSha256: artifacts.agent.sha256,
                k3sVersion: cfg.k3sVersion,
                agent: {
                    ssmPath: names.ssmPath,
                    tokenSecretId: tokenSecretArn,
                    joinTimeoutSeconds: cfg.lifecycleHeartbeatTimeout,
                },
            }),
        );
    const workers = createWorkers(cfg, names, net, ami, workerIdentity, workerScript, [workerBootPolicy, ...params.params, server]);
    const workerLifecyclePolicy = attachPolicy(
        "worker-lifecycle",
        workerIdentity,
        workerLifecycleStatements(cfg, names, workers.asg.arn),
    );
    resources.push(
        workerIdentity.role,
        workerIdentity.profile,
        workerBootPolicy,
        workers.launchTemplate,
        workers.asg,
        ...workers.hooks,
        workerLifecyclePolicy,
    );

    // ---- controller permissions: the tagged ASG and the table.
    const controllerPolicy = attachPolicy(
        "server-controller",
        serverIdentity,
        controllerStatements(cfg, names, { asgArn: workers.asg.arn, tableArn: table.arn }),
    );
    resources.push(controllerPolicy);

    return {
        config: cfg,
        resources,
        outputs: {
            serverPublicIp: server.publicIp,
            grafanaUrl: pulumi.interpolate`http://${server.publicIp}:${cfg.grafanaNodePort}`,
            asgName: workers.asg.name,
            tableName: table.name,
            clusterId: cfg.clusterId,
            artifactBucket: artifacts.bucket.bucket,
            agentSha256: artifacts.agent.sha256,
            controllerSha256: artifacts.controller.sha256,
            grafanaAdminPassword: secrets.grafanaPassword,
        },
    };
}
