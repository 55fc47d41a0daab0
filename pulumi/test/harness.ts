// Pulumi mocks for the SmartScale program: records every resource's inputs, fills in the values
// AWS would compute (ARNs, IPs, version ids, the generated passwords), and answers the data-source
// calls the program makes. No Pulumi CLI and no AWS are involved.
import * as assert from "assert";
import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import * as settings from "@pulumi/pulumi/runtime/settings";
import { K3S_RELEASES } from "../src/k3s";
import { sha256File } from "../src/files";
import { unpackUserData } from "../src/userdata";

export const ACCOUNT = "123456789012";
export const REGION = "eu-west-1";
/** Distinctive values for the two RandomPasswords: they must appear nowhere but in their SecretVersion. */
export const MOCK_K3S_TOKEN = "MockK3sServerToken7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e4";
export const MOCK_GRAFANA_PASSWORD = "MockGrafanaAdminPw4d2b8e6a0c9f1e3b";
export const MOCK_SERVER_PRIVATE_IP = "10.20.0.10";
export const MOCK_SERVER_PUBLIC_IP = "203.0.113.10";

/** Prices the mocked Price List API answers (distinct from the fallbacks). */
export const MOCK_SERVER_PRICE = 0.0456;
export const MOCK_GP3_PRICE = 0.088;

export interface Recorded {
    type: string;
    name: string;
    inputs: any;
    state: any;
    /** From the RegisterResource request: dependency URNs and ignoreChanges. */
    options: { dependencies: string[]; ignoreChanges: string[] };
}

export function asgArn(name: string): string {
    return `arn:aws:autoscaling:${REGION}:${ACCOUNT}:autoScalingGroup:0f4e7c1a-2b3d-4e5f-8a9b-1c2d3e4f5a6b:autoScalingGroupName/${name}`;
}

const SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";

/** Inputs the provider schema marks secret arrive wrapped; tests look at the plain values. */
function unwrapSecrets(v: any): any {
    if (Array.isArray(v)) return v.map(unwrapSecrets);
    if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
        if (v[SECRET_SIG_KEY] === SECRET_SIG) return unwrapSecrets(v.value);
        return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, unwrapSecrets(x)]));
    }
    return v;
}

/** A GetProducts PriceList entry as AWS returns it (trimmed). */
function priceListEntry(usd: number, unit: string): string {
    return JSON.stringify({
        product: { productFamily: unit === "Hrs" ? "Compute Instance" : "Storage", sku: "MOCKSKU" },
        terms: {
            OnDemand: {
                "MOCKSKU.JRTCKXETXF": {
                    priceDimensions: {
                        "MOCKSKU.JRTCKXETXF.6YS6EN2CT7": { unit, pricePerUnit: { USD: usd.toFixed(10) }, description: "mock" },
                    },
                },
            },
        },
    });
}

export const mockOptions = { pricingFails: false };

class Mocks implements pulumi.runtime.Mocks {
    constructor(
        private readonly recorded: Recorded[],
        private readonly options: Map<string, Recorded["options"]>,
    ) {}

    newResource(args: pulumi.runtime.MockResourceArgs): { id: string; state: Record<string, any> } {
        const i = unwrapSecrets(args.inputs);
        const state: Record<string, any> = { ...i };
        switch (args.type) {
            case "random:index/randomPassword:RandomPassword":
                state.result = args.name === "k3s-token" ? MOCK_K3S_TOKEN : MOCK_GRAFANA_PASSWORD;
                break;
            case "aws:autoscaling/group:Group":
                state.arn = asgArn(i.name);
                break;
            case "aws:ec2/instance:Instance":
                state.privateIp = MOCK_SERVER_PRIVATE_IP;
                state.publicIp = MOCK_SERVER_PUBLIC_IP;
                break;
            case "aws:secretsmanager/secret:Secret":
                state.arn = `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:${i.name}-AbC123`;
                break;
            case "aws:s3/bucket:Bucket":
                // The provider appends 26 characters to bucketPrefix.
                state.bucket = `${i.bucketPrefix}20240101000000000000000001`;
                state.arn = `arn:aws:s3:::${state.bucket}`;
                break;
            case "aws:s3/bucketObjectv2:BucketObjectv2":
                state.versionId = `Vv1.${args.name}_3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY`;
                break;
            case "aws:dynamodb/table:Table":
                state.arn = `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${i.name}`;
                break;
            case "aws:ssm/parameter:Parameter":
                state.arn = `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter${i.name}`;
                break;
            case "aws:ec2/launchTemplate:LaunchTemplate":
                state.latestVersion = 1;
                state.arn = `arn:aws:ec2:${REGION}:${ACCOUNT}:launch-template/lt-0123456789abcdef0`;
                break;
            case "aws:iam/role:Role":
                state.name = `${args.name}-role-1a2b3c`;
                state.arn = `arn:aws:iam::${ACCOUNT}:role/${state.name}`;
                break;
            case "aws:iam/instanceProfile:InstanceProfile":
                state.name = `${args.name}-profile-1a2b3c`;
                state.arn = `arn:aws:iam::${ACCOUNT}:instance-profile/${state.name}`;
                break;
            default:
                state.arn ??= `arn:aws:mock:${REGION}:${ACCOUNT}:${args.type.split(":")[1]}/${args.name}`;
        }
        const options = this.options.get(`${args.type}::${args.name}`) ?? { dependencies: [], ignoreChanges: [] };
        this.recorded.push({ type: args.type, name: args.name, inputs: i, state, options });
        return { id: `${args.name}-id`, state };
    }

    call(args: pulumi.runtime.MockCallArgs): Record<string, any> {
        switch (args.token) {
            case "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {
                    id: REGION,
                    names: [`${REGION}a`, `${REGION}b`, `${REGION}c`],
                    zoneIds: ["euw1-az1", "euw1-az2", "euw1-az3"],
                };
            case "aws:index/getCallerIdentity:getCallerIdentity":
                return { id: ACCOUNT, accountId: ACCOUNT, arn: `arn:aws:iam::${ACCOUNT}:user/test`, userId: "AIDATEST" };
            case "aws:index/getPartition:getPartition":
                return { id: "aws", partition: "aws", dnsSuffix: "amazonaws.com", reverseDnsPrefix: "com.amazonaws" };
            case "aws:pricing/getProduct:getProduct": {
                if (mockOptions.pricingFails) throw new Error("AccessDeniedException: not authorized to perform pricing:GetProducts");
                const f = Object.fromEntries((args.inputs.filters as any[]).map((x) => [x.field, x.value]));
                const usd = f.volumeApiName === "gp3" ? MOCK_GP3_PRICE : MOCK_SERVER_PRICE;
                return { ...args.inputs, id: "pricing", result: priceListEntry(usd, f.volumeApiName ? "GB-Mo" : "Hrs") };
            }
            case "aws:ec2/getAmi:getAmi":
                return { id: "ami-0123456789abcdef0", name: "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250101", rootDeviceName: "/dev/sda1" };
            default:
                throw new Error(`unmocked data source call ${args.token}`);
        }
    }
}

/** Resolves an Output's value (under mocks every value is known). */
export function valueOf<T>(o: pulumi.Output<T> | T): Promise<T> {
    if (!pulumi.Output.isInstance(o)) return Promise.resolve(o as T);
    return new Promise((resolve) => (o as pulumi.Output<T>).apply((v) => resolve(v)));
}

export const K3S_VERSION = "v1.33.4+k3s1";

export interface FakeBuild {
    dir: string;
    agent: string;
    controller: string;
    /** A fake k3s release (k3s, install.sh), pinned in K3S_RELEASES for the tests. */
    k3sDir: string;
}

/** Fake "binaries" (ELF magic plus random bytes, so SHA-256s are unique per run) and a fake, pinned k3s release. */
export function fakeBinaries(): FakeBuild {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "smartscale-pulumi-test-"));
    const make = (name: string, sub = "") => {
        fs.mkdirSync(path.join(dir, sub), { recursive: true });
        const p = path.join(dir, sub, name);
        fs.writeFileSync(p, Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), crypto.randomBytes(4096)]));
        return p;
    };
    // The same bytes in every fake build, so that every test file's pin agrees.
    const k3sDir = path.join(dir, "k3s");
    fs.mkdirSync(k3sDir);
    const k3s = path.join(k3sDir, "k3s");
    const install = path.join(k3sDir, "install.sh");
    fs.writeFileSync(k3s, Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.from(`fake k3s ${K3S_VERSION}\n`)]));
    fs.writeFileSync(install, "#!/bin/sh\n# fake k3s install script\n");
    K3S_RELEASES[K3S_VERSION] = { k3s: sha256File(k3s), "install.sh": sha256File(install) };
    return { dir, agent: make("smartscale-agent"), controller: make("smartscale-controller"), k3sDir };
}

export function baseConfig(bins: FakeBuild): Record<string, string> {
    return {
        "aws:region": REGION,
        "smartscale:adminCidr": "198.51.100.7/32",
        "smartscale:agentBinaryPath": bins.agent,
        "smartscale:controllerBinaryPath": bins.controller,
        "smartscale:k3sDir": bins.k3sDir,
    };
}

let stackCounter = 0;

/** Sets mocks and config for a fresh stack name (so URNs never collide between scenarios). */
export async function prepare(config: Record<string, string>, stackName?: string): Promise<Recorded[]> {
    const recorded: Recorded[] = [];
    const options = new Map<string, Recorded["options"]>();
    const name = stackName ?? `test${++stackCounter}`;
    await pulumi.runtime.setMocks(new Mocks(recorded, options), "smartscale", name, false);
    // The mock monitor passes only type, name and inputs to the mocks: keep the request's
    // dependencies and ignoreChanges too.
    const monitor: any = settings.getMonitor();
    const register = monitor.registerResource.bind(monitor);
    monitor.registerResource = (req: any, callback: any) => {
        options.set(`${req.getType()}::${req.getName()}`, {
            dependencies: req.getDependenciesList(),
            ignoreChanges: req.getIgnorechangesList(),
        });
        return register(req, callback);
    };
    pulumi.runtime.setAllConfig(config);
    return recorded;
}

/** Runs the program under mocks and waits until every resource is registered. */
export async function runStack(config: Record<string, string>, stackName?: string) {
    const recorded = await prepare(config, stackName);
    const { createStack } = await import("../src/stack");
    const stack = createStack();
    await valueOf(pulumi.all(stack.resources.map((r) => r.urn)));
    const outputs = await valueOf(pulumi.output(stack.outputs));
    return { stack, outputs, recorded };
}

/** The worker and server scripts as the instances run them (gunzipped). */
export function userData(recorded: Recorded[]): { worker: string; server: string } {
    return {
        worker: unpackUserData(one(recorded, "aws:ec2/launchTemplate:LaunchTemplate").inputs.userData),
        server: unpackUserData(one(recorded, "aws:ec2/instance:Instance").inputs.userDataBase64),
    };
}

/** Whether `r` depends (explicitly or through an input) on the resource `type::name`. */
export function dependsOn(r: Recorded, type: string, name: string): boolean {
    return r.options.dependencies.some((urn) => urn.endsWith(`::${type}::${name}`));
}

export function ofType(recorded: Recorded[], type: string): Recorded[] {
    return recorded.filter((r) => r.type === type);
}

export function one(recorded: Recorded[], type: string, name?: string): Recorded {
    const found = recorded.filter((r) => r.type === type && (name === undefined || r.name === name));
    if (found.length !== 1) {
        throw new Error(`expected one ${type}${name ? ` named ${name}` : ""}, found ${found.length}`);
    }
    return found[0];
}

/** The ConfigError message `createStack()` throws for `config` (fails the test if it accepts it). */
export async function configError(config: Record<string, string>, stack = "dev"): Promise<string> {
    await prepare(config, stack);
    const { createStack } = await import("../src/stack");
    try {
        createStack();
    } catch (e) {
        assert.strictEqual((e as Error).name, "ConfigError");
        return (e as Error).message;
    }
    assert.fail("createStack() accepted the configuration");
}
