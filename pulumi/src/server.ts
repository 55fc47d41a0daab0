// The K3s server instance. Its UserData (userdata/server.sh.tpl) installs k3s with the token from
// Secrets Manager, the monitoring stack through K3s HelmChart manifests, and the controller unit.
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
    userData: pulumi.Output<string>,
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
            userData,
            tags: baseTags(cfg, names, `${names.prefix}-server`),
            volumeTags: baseTags(cfg, names, `${names.prefix}-server`),
        },
        {
            dependsOn,
            // A newer Ubuntu image or a new controller build must not stop or replace the running
            // server (and with it the cluster); UserData runs only at first boot anyway. New
            // controller builds are rolled out as docs/deploy.md ("Updating") describes.
            ignoreChanges: ["ami", "userData"],
        },
    );
}
