// The K3s server instance. Its UserData (userdata/server.sh.tpl) installs k3s with the server
// token from Secrets Manager, publishes the agent token, and starts smartscale-sync, which keeps
// the controller, its config and the K3s manifests in line with SSM Parameter Store.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { Ami } from "./ami";
import { StackConfig } from "./config";
import { InstanceIdentity } from "./iam";
import { Names, baseTags } from "./names";
import { Network } from "./network";

export function createServer(
    cfg: StackConfig,
    names: Names,
    net: Network,
    ami: Ami,
    identity: InstanceIdentity,
    /** gzip + base64 (userdata.ts packUserData). */
    userDataBase64: pulumi.Output<string>,
    dependsOn: pulumi.Resource[],
): aws.ec2.Instance {
    return new aws.ec2.Instance(
        "server",
        {
            ami: ami.id,
            instanceType: cfg.serverInstanceType,
            subnetId: net.subnets[0].id,
            vpcSecurityGroupIds: [net.serverSg.id],
            iamInstanceProfile: identity.profile.name,
            keyName: cfg.sshKeyName,
            metadataOptions: {
                httpEndpoint: "enabled",
                httpTokens: "required",
                httpPutResponseHopLimit: 1,
            },
            rootBlockDevice: {
                volumeType: "gp3",
                volumeSize: cfg.serverRootVolumeGiB,
                encrypted: true,
                deleteOnTermination: true,
            },
            userDataBase64,
            tags: baseTags(cfg, names, `${names.prefix}-server`),
            volumeTags: baseTags(cfg, names, `${names.prefix}-server`),
        },
        {
            dependsOn,
            // A newer Ubuntu image must not replace the running server (and with it the cluster),
            // and its UserData runs only at first boot anyway: everything a later `pulumi up`
            // changes reaches it through SSM and smartscale-sync (docs/deploy.md, "Updating").
            ignoreChanges: ["ami", "userData", "userDataBase64"],
        },
    );
}
