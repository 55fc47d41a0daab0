// VPC with one public subnet per AZ (at least two AZs), and the two security groups.
//
// Subnets are public so instances reach container registries and AWS APIs without a NAT gateway
// (which would cost more per hour than a worker); their bootstrap downloads come from the stack's
// bucket through the S3 gateway endpoint. Nothing is reachable from the internet except what the
// security groups below open to adminCidr: the K3s API and, with a key pair, SSH. Grafana is not
// opened at all: it is reached through an SSH tunnel (docs/deploy.md).
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

export interface Network {
    vpc: aws.ec2.Vpc;
    subnets: aws.ec2.Subnet[];
    serverSg: aws.ec2.SecurityGroup;
    workerSg: aws.ec2.SecurityGroup;
    resources: pulumi.Resource[];
}

/** Ports opened between cluster members, documented in one place. */
export const PORTS = {
    k3sApi: 6443,
    flannelVxlan: 8472, // udp
    kubelet: 10250,
    nodeExporter: 9100,
    agentMetrics: 9102,
    ssh: 22,
};

/** a.b.0.0/16 -> a.b.(16*i).0/20 */
export function subnetCidr(vpcCidr: string, index: number): string {
    const [a, b] = vpcCidr.split(".");
    return `${a}.${b}.${index * 16}.0/20`;
}

export function createNetwork(cfg: StackConfig, names: Names): Network {
    const tags = (n: string) => baseTags(cfg, names, n);
    const resources: pulumi.Resource[] = [];

    const vpc = new aws.ec2.Vpc("vpc", {
        cidrBlock: cfg.vpcCidr,
        enableDnsHostnames: true,
        enableDnsSupport: true,
        tags: tags(`${names.prefix}-vpc`),
    });
    // The VPC's default security group allows all traffic between its members; strip it so
    // nothing can use it by accident.
    const defaultSg = new aws.ec2.DefaultSecurityGroup("default-sg-locked", {
        vpcId: vpc.id,
        tags: tags(`${names.prefix}-default-unused`),
    });
    const igw = new aws.ec2.InternetGateway("igw", { vpcId: vpc.id, tags: tags(`${names.prefix}-igw`) });
    const routeTable = new aws.ec2.RouteTable("public", {
        vpcId: vpc.id,
        routes: [{ cidrBlock: "0.0.0.0/0", gatewayId: igw.id }],
        tags: tags(`${names.prefix}-public`),
    });
    // Free gateway endpoint: binary downloads from the artifacts bucket stay inside AWS's network.
    const s3Endpoint = new aws.ec2.VpcEndpoint("s3", {
        vpcId: vpc.id,
        serviceName: `com.amazonaws.${cfg.region}.s3`,
        vpcEndpointType: "Gateway",
        routeTableIds: [routeTable.id],
        tags: tags(`${names.prefix}-s3`),
    });
    resources.push(vpc, defaultSg, igw, routeTable, s3Endpoint);

    const azs = aws.getAvailabilityZonesOutput({ state: "available", filters: [{ name: "opt-in-status", values: ["opt-in-not-required"] }] });
    const subnets: aws.ec2.Subnet[] = [];
    for (let i = 0; i < cfg.azCount; i++) {
        const az = azs.names.apply((n) => {
            if (n.length < cfg.azCount) {
                throw new Error(
                    `smartscale:azCount is ${cfg.azCount} but region ${cfg.region} has only ${n.length} available zones; ` +
                        `lower it with: pulumi config set smartscale:azCount ${n.length}`,
                );
            }
            return n[i];
        });
        const subnet = new aws.ec2.Subnet(`public-${i}`, {
            vpcId: vpc.id,
            cidrBlock: subnetCidr(cfg.vpcCidr, i),
            availabilityZone: az,
            mapPublicIpOnLaunch: true,
            tags: tags(`${names.prefix}-public-${i}`),
        });
        const assoc = new aws.ec2.RouteTableAssociation(`public-${i}`, { subnetId: subnet.id, routeTableId: routeTable.id });
        subnets.push(subnet);
        resources.push(subnet, assoc);
    }

    const serverSg = new aws.ec2.SecurityGroup("server", {
        vpcId: vpc.id,
        description: "SmartScale K3s server",
        tags: tags(`${names.prefix}-server`),
    });
    const workerSg = new aws.ec2.SecurityGroup("worker", {
        vpcId: vpc.id,
        description: "SmartScale K3s workers",
        tags: tags(`${names.prefix}-worker`),
    });
    resources.push(serverSg, workerSg);

    const rule = (name: string, args: aws.vpc.SecurityGroupIngressRuleArgs) => {
        resources.push(new aws.vpc.SecurityGroupIngressRule(name, args));
    };
    const tcp = (port: number) => ({ ipProtocol: "tcp", fromPort: port, toPort: port });
    const udp = (port: number) => ({ ipProtocol: "udp", fromPort: port, toPort: port });

    // Server: the K3s API for workers and the admin; flannel and kubelet inside the cluster; SSH
    // (the way to Grafana) for the admin only, if a key pair is configured.
    rule("server-api-admin", { securityGroupId: serverSg.id, cidrIpv4: cfg.adminCidr, ...tcp(PORTS.k3sApi), description: "K3s API from the admin" });
    rule("server-api-workers", { securityGroupId: serverSg.id, referencedSecurityGroupId: workerSg.id, ...tcp(PORTS.k3sApi), description: "K3s API from workers" });
    rule("server-vxlan-workers", { securityGroupId: serverSg.id, referencedSecurityGroupId: workerSg.id, ...udp(PORTS.flannelVxlan), description: "flannel VXLAN from workers" });
    rule("server-kubelet-workers", { securityGroupId: serverSg.id, referencedSecurityGroupId: workerSg.id, ...tcp(PORTS.kubelet), description: "kubelet from workers (metrics-server)" });
    if (cfg.sshKeyName) {
        rule("server-ssh-admin", { securityGroupId: serverSg.id, cidrIpv4: cfg.adminCidr, ...tcp(PORTS.ssh), description: "SSH from the admin" });
    }

    // Workers: flannel between all nodes; kubelet, node-exporter and agent metrics from the server
    // (Prometheus runs there on the host network).
    rule("worker-vxlan-server", { securityGroupId: workerSg.id, referencedSecurityGroupId: serverSg.id, ...udp(PORTS.flannelVxlan), description: "flannel VXLAN from the server" });
    rule("worker-vxlan-workers", { securityGroupId: workerSg.id, referencedSecurityGroupId: workerSg.id, ...udp(PORTS.flannelVxlan), description: "flannel VXLAN between workers" });
    rule("worker-kubelet-server", { securityGroupId: workerSg.id, referencedSecurityGroupId: serverSg.id, ...tcp(PORTS.kubelet), description: "kubelet from the server" });
    rule("worker-kubelet-workers", { securityGroupId: workerSg.id, referencedSecurityGroupId: workerSg.id, ...tcp(PORTS.kubelet), description: "kubelet between workers (metrics-server)" });
    rule("worker-node-exporter-server", { securityGroupId: workerSg.id, referencedSecurityGroupId: serverSg.id, ...tcp(PORTS.nodeExporter), description: "node-exporter scrape from Prometheus" });
    rule("worker-agent-metrics-server", { securityGroupId: workerSg.id, referencedSecurityGroupId: serverSg.id, ...tcp(PORTS.agentMetrics), description: "smartscale-agent metrics scrape from Prometheus" });

    // Egress: both need the internet (container images, AWS APIs).
    for (const [name, sg] of [["server", serverSg], ["worker", workerSg]] as const) {
        resources.push(
            new aws.vpc.SecurityGroupEgressRule(`${name}-egress`, {
                securityGroupId: sg.id,
                cidrIpv4: "0.0.0.0/0",
                ipProtocol: "-1",
                description: "outbound: container images, AWS APIs",
            }),
        );
    }

    return { vpc, subnets, serverSg, workerSg, resources };
}
