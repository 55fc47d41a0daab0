// Wires the modules together. `index.ts` calls createStack() and exports its outputs; the unit
// tests call it directly under Pulumi's mocks.
//
// Order matters where AWS reads something before Pulumi would otherwise create it: the server
// boots with its policy, its two SSM parameters and every artifact in place; the ASG is created
// only after the worker policy (its hooks are answered from the first boot), the agent's
// parameters and the server exist.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { lookupAmi } from "./ami";
import { Artifact, createArtifacts } from "./artifacts";
import { StackConfig, loadConfig } from "./config";
import { controllerConfigYaml } from "./controller-config";
import { asgArn, attachPolicy, controllerStatements, createInstanceIdentity, serverStatements, ssmParameterArn, workerStatements } from "./iam";
import { k3sFiles } from "./k3s";
import { createControllerIdentity, createLambdaController } from "./lambda";
import { serverManifest } from "./monitoring";
import { namesFor } from "./names";
import { createNetwork } from "./network";
import { createAgentParams, createServerParams, heartbeatIntervalSeconds, releaseJson } from "./params";
import { fixedPrices } from "./pricing";
import { createSecrets } from "./secrets";
import { createServer } from "./server";
import { createStateTable } from "./state";
import { ObjectRef, packUserData, serverScript, workerScript } from "./userdata";
import { createWorkers } from "./workers";

export interface StackOutputs {
    serverPublicIp: pulumi.Output<string>;
    serverPrivateIp: pulumi.Output<string>;
    /** The SSH command that opens Grafana on http://localhost:3000. */
    grafanaTunnel: pulumi.Output<string>;
    asgName: pulumi.Output<string>;
    tableName: pulumi.Output<string>;
    clusterId: string;
    artifactBucket: pulumi.Output<string>;
    agentSha256: pulumi.Output<string>;
    controllerSha256: pulumi.Output<string>;
    grafanaAdminPassword: pulumi.Output<string>;
    /** Lambda mode: the controller function, its schedule rule and the notification topic (if created). */
    controllerFunction?: pulumi.Output<string>;
    controllerSchedule?: pulumi.Output<string>;
    notificationTopicArn?: pulumi.Output<string>;
}

export interface Stack {
    config: StackConfig;
    outputs: StackOutputs;
    /** Every resource created, for tests to wait on. */
    resources: pulumi.Resource[];
}

const ref = (a: Artifact): pulumi.Output<ObjectRef> =>
    pulumi.all([a.versionId, a.sha256]).apply(([versionId, sha256]) => ({ key: a.key, versionId, sha256 }));

export function createStack(): Stack {
    const cfg = loadConfig();
    const names = namesFor(cfg);
    const k3s = k3sFiles(cfg.k3sVersion, cfg.k3sDir);

    const net = createNetwork(cfg, names);
    const secrets = createSecrets(cfg, names);
    const table = createStateTable(cfg, names);
    const prices = fixedPrices(cfg);
    const manifest = pulumi
        .all([prices.serverHourly, prices.ebsGibMonth, prices.publicIpv4Hourly])
        .apply(([serverHourly, ebsGibMonth, publicIpv4Hourly]) => serverManifest(cfg, { serverHourly, ebsGibMonth, publicIpv4Hourly }));
    const artifacts = createArtifacts(cfg, names, k3s, manifest);
    const ami = lookupAmi(cfg);

    const identity = aws.getCallerIdentityOutput();
    const partition = aws.getPartitionOutput();
    const arns = { partition: partition.partition, accountId: identity.accountId };
    const objectArn = (a: Artifact) => pulumi.interpolate`${artifacts.bucket.arn}/${a.key}`;
    const workerAsgArn = asgArn(cfg, names, arns);
    const k3sRefs = pulumi
        .all([ref(artifacts.k3sBinary), ref(artifacts.k3sInstallScript)])
        .apply(([binary, installScript]) => ({ version: k3s.version, binary, installScript }));

    // ---- the server: what it reads at first boot exists before it starts.
    const serverParams = createServerParams(cfg, names, {
        controllerConfig: controllerConfigYaml(cfg, names),
        release: releaseJson(artifacts.bucket.bucket, artifacts.controller, artifacts.manifests),
    });
    const serverIdentity = createInstanceIdentity(cfg, names, "server");
    const serverPolicy = attachPolicy(
        "server",
        serverIdentity,
        serverStatements({
            serverTokenSecretArn: secrets.serverTokenSecret.arn,
            grafanaSecretArn: secrets.grafanaSecret.arn,
            agentTokenSecretArn: secrets.agentTokenSecret.arn,
            objectArns: [artifacts.controller, artifacts.k3sBinary, artifacts.k3sInstallScript, ...Object.values(artifacts.manifests)].map(objectArn),
            parameterArns: [names.serverReleaseParam, names.controllerConfigParam].map((n) => ssmParameterArn(cfg, arns, n)),
        }),
    );
    // Daemon mode: the controller runs on the server with the server's role. Lambda mode: the
    // server only publishes the function's Kubernetes identity (the secret exists before it boots)
    // and gets none of the controller's rights.
    const controllerPolicy =
        cfg.controllerMode === "daemon"
            ? attachPolicy("server-controller", serverIdentity, controllerStatements(cfg, names, { asgArn: workerAsgArn, tableArn: table.arn }))
            : undefined;
    const controllerIdentity = cfg.controllerMode === "lambda" ? createControllerIdentity(cfg, names, serverIdentity.role) : undefined;
    const serverUserData = pulumi
        .all([
            artifacts.bucket.bucket,
            k3sRefs,
            secrets.serverTokenSecret.arn,
            secrets.agentTokenSecret.arn,
            secrets.grafanaSecret.arn,
            controllerIdentity ? controllerIdentity.secret.arn : pulumi.output(undefined),
        ])
        .apply(([bucket, k3sRef, serverTokenSecretId, agentTokenSecretId, grafanaSecretId, controllerIdentitySecretId]) =>
            packUserData(
                "server",
                serverScript({
                    region: cfg.region,
                    clusterId: cfg.clusterId,
                    bucket,
                    k3s: k3sRef,
                    serverTokenSecretId,
                    agentTokenSecretId,
                    grafanaSecretId,
                    releaseParam: names.serverReleaseParam,
                    controllerConfigParam: names.controllerConfigParam,
                    controllerIdentitySecretId,
                }),
            ),
        );
    const server = createServer(cfg, names, net, ami, serverIdentity, serverUserData, [
        serverPolicy,
        ...serverParams,
        ...secrets.resources,
        ...artifacts.resources,
        ...(controllerIdentity?.resources ?? []),
    ]);

    // ---- lambda mode: the controller as a function in the VPC on a schedule (src/lambda.ts).
    const lambda =
        controllerIdentity !== undefined
            ? createLambdaController(cfg, names, {
                  net,
                  arns,
                  asgArn: workerAsgArn,
                  tableArn: table.arn,
                  serverPrivateIp: server.privateIp,
                  identity: controllerIdentity,
              })
            : undefined;

    // ---- workers: policy, parameters and the server exist before the group launches anything.
    const agentParams = createAgentParams(cfg, names, pulumi.interpolate`https://${server.privateIp}:6443`);
    const workerIdentity = createInstanceIdentity(cfg, names, "worker");
    const workerPolicy = attachPolicy(
        "worker",
        workerIdentity,
        workerStatements(cfg, names, {
            agentTokenSecretArn: secrets.agentTokenSecret.arn,
            ssmPathArn: ssmParameterArn(cfg, arns, names.ssmPath),
            ssmParameterArns: agentParams.map((p) => p.arn),
            objectArns: [artifacts.agent, artifacts.k3sBinary, artifacts.k3sInstallScript].map(objectArn),
            asgArn: workerAsgArn,
        }),
    );
    const workerUserData = pulumi
        .all([artifacts.bucket.bucket, ref(artifacts.agent), k3sRefs, secrets.agentTokenSecret.arn])
        .apply(([bucket, agent, k3sRef, agentTokenSecretId]) =>
            packUserData(
                "worker",
                workerScript({
                    region: cfg.region,
                    clusterId: cfg.clusterId,
                    asgName: names.asgName,
                    launchHookName: names.launchHookName,
                    heartbeatIntervalSeconds: heartbeatIntervalSeconds(cfg.lifecycleHeartbeatTimeout),
                    bucket,
                    agent,
                    k3s: k3sRef,
                    agentConfig: { ssmPath: names.ssmPath, tokenSecretId: agentTokenSecretId, joinTimeout: cfg.workerJoinTimeout },
                    warmPool: cfg.warmPool.enabled,
                }),
            ),
        );
    const workers = createWorkers(cfg, names, net, ami, workerIdentity, workerUserData, [workerPolicy, ...agentParams, server]);

    return {
        config: cfg,
        resources: [
            ...net.resources,
            ...secrets.resources,
            table,
            ...prices.resources,
            ...artifacts.resources,
            ...serverParams,
            serverIdentity.role,
            serverIdentity.profile,
            serverPolicy,
            ...(controllerPolicy ? [controllerPolicy] : []),
            ...(controllerIdentity?.resources ?? []),
            server,
            ...agentParams,
            workerIdentity.role,
            workerIdentity.profile,
            workerPolicy,
            workers.launchTemplate,
            workers.asg,
            ...(lambda?.resources ?? []),
        ],
        outputs: {
            serverPublicIp: server.publicIp,
            serverPrivateIp: server.privateIp,
            grafanaTunnel: pulumi.interpolate`ssh -N -L 3000:${server.privateIp}:${cfg.grafanaNodePort} ubuntu@${server.publicIp}`,
            asgName: workers.asg.name,
            tableName: table.name,
            clusterId: cfg.clusterId,
            artifactBucket: artifacts.bucket.bucket,
            agentSha256: artifacts.agent.sha256,
            controllerSha256: artifacts.controller.sha256,
            grafanaAdminPassword: secrets.grafanaPassword,
            controllerFunction: lambda?.fn.name,
            controllerSchedule: lambda?.rule.name,
            notificationTopicArn: lambda?.topic?.arn,
        },
    };
}
