// The AMI for every instance: Canonical's Ubuntu 24.04 LTS (glibc 2.39) unless amiId is set.
// The release binaries are built on Debian 12 (glibc 2.36); scripts/check-glibc.sh checks that the
// highest GLIBC_x.y symbol version a binary needs is <= the AMI's glibc.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";

export const UBUNTU_OWNER = "099720109477"; // Canonical
export const UBUNTU_2404_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*";

export interface Ami {
    id: pulumi.Output<string>;
    rootDeviceName: pulumi.Output<string>;
}

export function lookupAmi(cfg: StackConfig): Ami {
    const ami = cfg.amiId
        ? aws.ec2.getAmiOutput({ filters: [{ name: "image-id", values: [cfg.amiId] }] })
        : aws.ec2.getAmiOutput({
              owners: [UBUNTU_OWNER],
              mostRecent: true,
              filters: [
                  { name: "name", values: [UBUNTU_2404_NAME] },
                  { name: "architecture", values: ["x86_64"] },
                  { name: "virtualization-type", values: ["hvm"] },
                  { name: "root-device-type", values: ["ebs"] },
              ],
          });
    return { id: ami.id, rootDeviceName: ami.rootDeviceName };
}
