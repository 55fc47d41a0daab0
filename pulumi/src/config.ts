// Stack configuration: every key SmartScale reads, its default, and its validation.
//
// All problems are collected and reported together, each naming the exact key and the
// `pulumi config set` command that fixes it. Unknown keys in the `smartscale:` namespace
// (typos such as `smartscale:adminCdir`) are errors too, with a "did you mean" hint,
// because a silently ignored key is how a stack ends up with settings nobody chose.
import * as fs from "fs";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import { nodeLabelProblems, nodeTaintProblems } from "./kubelet-labels";
import { AGENT_TOKEN_WAIT_SECONDS } from "./userdata";

export const NAMESPACE = "smartscale";

export interface KeyDoc {
    /** Full key, e.g. `smartscale:adminCidr`. */
    key: string;
    required: boolean;
    description: string;
    /** Example value used in error messages and docs. */
    example: string;
    /** Default as users see it (docs); undefined when required. */
    default?: string;
}

export interface StackConfig {
    region: string;
    stack: string;
    clusterId: string;
    adminCidr: string;
    allowWideAdminCidr: boolean;
    agentBinaryPath: string;
    controllerBinaryPath: string;
    azCount: number;
    vpcCidr: string;
    serverInstanceType: string;
    serverRootVolumeGiB: number;
    workerInstanceTypes: string[];
    workerRootVolumeGiB: number;
    workerMinSize: number;
    workerMaxSize: number;
    onDemandBaseCapacity: number;
    onDemandPercentageAboveBase: number;
    spotAllocationStrategy: string;
    lifecycleHeartbeatTimeout: number;
    workerJoinTimeout: string;
    workerCapacityTimeout: string;
    drainTimeout: string;
    spotDrainDeadline: string;
    onDrainTimeout: "continue" | "keep_heartbeating";
    evictionConcurrency: number;
    rebalanceEnabled: boolean;
    workerNodeLabels?: string;
    workerNodeTaints?: string;
    workerHourlyPrice: number;
    serverHourlyPrice?: number;
    ebsGibMonthPrice?: number;
    publicIpv4HourlyPrice: number;
    workerAllocatableCpu: number;
    workerAllocatableMemoryGib: number;
    controllerInterval: string;
    dryRun: boolean;
    k3sVersion: string;
    /** Directory holding the pinned k3s release (`k3s`, `install.sh`), from pulumi/scripts/fetch-k3s.sh. */
    k3sDir: string;
    amiId?: string;
    sshKeyName?: string;
    grafanaNodePort: number;
    /** `daemon`: the controller on the K3s server; `lambda`: a Lambda function (src/lambda.ts). */
    controllerMode: "daemon" | "lambda";
    lambdaSchedule: string;
    lambdaTimeout: number;
    lambdaMemoryMb: number;
    lambdaLogRetentionDays: number;
    notificationTopic: boolean;
    cloudwatchMetrics: boolean;
    /** EC2 Auto Scaling warm pool of the worker group (src/workers.ts); `enabled: false` by default. */
    warmPool: WarmPoolConfig;
}

/** `smartscale:warmPool`: a structured value (pulumi config set --path smartscale:warmPool.enabled true). */
export interface WarmPoolConfig {
    enabled: boolean;
    /** PutWarmPool MinSize: instances kept in the pool (>= 0). */
    minSize: number;
    /** PutWarmPool MaxGroupPreparedCapacity; undefined: AWS's default (the group's max size minus its desired capacity). */
    maxGroupPreparedCapacity?: number;
    /** `Hibernated` is refused: see parseWarmPool. */
    poolState: "Stopped" | "Running";
    /** InstanceReusePolicy.ReuseOnScaleIn: instances go back to the pool on scale-in instead of terminating. */
    reuseOnScaleIn: boolean;
}

export const WARM_POOL_DEFAULTS: WarmPoolConfig = { enabled: false, minSize: 0, poolState: "Stopped", reuseOnScaleIn: true };

/** The retention periods CloudWatch Logs accepts (PutRetentionPolicy). */
export const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];

const DEFAULT_WORKER_TYPES = ["t3.medium", "t3a.medium", "t2.medium"];

/** Every key the program reads, in the order the docs list them. */
export const CONFIG_KEYS: KeyDoc[] = [
    { key: "aws:region", required: true, example: "us-east-1", description: "AWS region to deploy into" },
    {
        key: "smartscale:adminCidr", required: true, example: "203.0.113.7/32",
        description: "CIDR allowed to reach the K3s API (6443) and, if sshKeyName is set, SSH (the way to Grafana); a prefix shorter than /16 needs allowWideAdminCidr",
    },
    {
        key: "smartscale:allowWideAdminCidr", required: false, example: "true", default: "false",
        description: "confirms an adminCidr wider than a /16 (0.0.0.0/0 opens the K3s API and SSH to the whole internet)",
    },
    {
        key: "smartscale:agentBinaryPath", required: true, example: "../target/release-agent/smartscale-agent",
        description: "local path of the built smartscale-agent binary (x86_64 Linux ELF); uploaded with its SHA-256",
    },
    {
        key: "smartscale:controllerBinaryPath", required: true, example: "../target/release/smartscale-controller",
        description: "local path of the built smartscale-controller binary (x86_64 Linux ELF); uploaded with its SHA-256",
    },
    {
        key: "smartscale:clusterId", required: false, example: "prod", default: "the stack name",
        description: "cluster id: DynamoDB partition key and the name in /smartscale/<clusterId>/agent and resource names (lowercase letters, digits, '-', at most 20)",
    },
    { key: "smartscale:azCount", required: false, example: "3", default: "2", description: "number of availability zones (subnets) to spread over, at least 2" },
    { key: "smartscale:vpcCidr", required: false, example: "10.20.0.0/16", default: "10.20.0.0/16", description: "VPC CIDR, a /16 (one /20 subnet per AZ); must not overlap K3s's 10.42.0.0/16 and 10.43.0.0/16" },
    { key: "smartscale:serverInstanceType", required: false, example: "t3.large", default: "t3.medium", description: "instance type of the K3s server (also runs Prometheus, Grafana and the controller)" },
    { key: "smartscale:serverRootVolumeGiB", required: false, example: "40", default: "30", description: "server root volume size (gp3, encrypted)" },
    {
        key: "smartscale:workerInstanceTypes", required: false, example: '["t3.medium","t3a.medium"]', default: JSON.stringify(DEFAULT_WORKER_TYPES),
        description: "worker instance types for the MixedInstancesPolicy (JSON list or comma-separated), same vCPU/memory; the first is the controller's instance_type",
    },
    { key: "smartscale:workerRootVolumeGiB", required: false, example: "30", default: "20", description: "worker root volume size (gp3, encrypted)" },
    { key: "smartscale:workerMinSize", required: false, example: "2", default: "1", description: "ASG minimum size (also the controller's min)" },
    { key: "smartscale:workerMaxSize", required: false, example: "20", default: "10", description: "ASG maximum size (also the controller's max)" },
    { key: "smartscale:onDemandBaseCapacity", required: false, example: "2", default: "1", description: "on-demand instances before any spot" },
    { key: "smartscale:onDemandPercentageAboveBase", required: false, example: "0", default: "20", description: "percentage of on-demand above the base; the rest is spot" },
    { key: "smartscale:spotAllocationStrategy", required: false, example: "capacity-optimized", default: "price-capacity-optimized", description: "spot allocation strategy" },
    {
        key: "smartscale:warmPool", required: false, example: '{"enabled":true,"minSize":2}',
        default: '{"enabled":false,"minSize":0,"poolState":"Stopped","reuseOnScaleIn":true}',
        description: "EC2 Auto Scaling warm pool of the worker group (an object: enabled, minSize, maxGroupPreparedCapacity, poolState Stopped|Running, reuseOnScaleIn); workers boot and install once into the pool, stopped ones pay only for their EBS volumes. AWS allows no warm pool with a mixed instances policy or Spot: it needs one workerInstanceType and onDemandPercentageAboveBase 100",
    },
    { key: "smartscale:lifecycleHeartbeatTimeout", required: false, example: "600", default: "300", description: "heartbeat timeout of both lifecycle hooks, seconds (30-7200), set when the ASG is created (docs/deploy.md, Updating); agents heartbeat every fifth of it" },
    { key: "smartscale:workerJoinTimeout", required: false, example: "15m", default: "10m", description: "agent join_timeout: how long a new worker may take from the join to Ready before it is abandoned" },
    { key: "smartscale:workerCapacityTimeout", required: false, example: "30m", default: "20m", description: "how long `pulumi up` waits for workerMinSize workers to join (in service) before it fails (5m-2h)" },
    { key: "smartscale:drainTimeout", required: false, example: "15m", default: "10m", description: "agent SSM parameter drain_timeout" },
    { key: "smartscale:spotDrainDeadline", required: false, example: "100s", default: "90s", description: "agent SSM parameter spot_drain_deadline" },
    { key: "smartscale:onDrainTimeout", required: false, example: "keep_heartbeating", default: "continue", description: "agent SSM parameter on_drain_timeout (continue | keep_heartbeating)" },
    { key: "smartscale:evictionConcurrency", required: false, example: "5", default: "10", description: "agent SSM parameter eviction_concurrency" },
    { key: "smartscale:rebalanceEnabled", required: false, example: "false", default: "false", description: "agent SSM parameter rebalance_enabled; only false: the ASG's capacity rebalancing replaces an at-risk spot instance and the terminate hook drains it, while an agent drain alone would leave a cordoned node nothing removes" },
    { key: "smartscale:workerNodeLabels", required: false, example: "team=web,tier=batch", default: "(none)", description: "agent SSM parameter node_labels (comma-separated k=v); keys in the kubernetes.io and k8s.io namespaces only where the kubelet allows them (node.kubernetes.io/, kubelet.kubernetes.io/), none the agent sets itself" },
    { key: "smartscale:workerNodeTaints", required: false, example: "dedicated=batch:NoSchedule", default: "(none)", description: "agent SSM parameter node_taints (comma-separated k=v:Effect)" },
    { key: "smartscale:workerHourlyPrice", required: false, example: "0.0376", default: "0.0416", description: "fallback on-demand $/hour of a worker, used by the controller when the AWS price APIs do not answer (t3.medium in us-east-1)" },
    { key: "smartscale:serverHourlyPrice", required: false, example: "0.0832", default: "from the AWS Price List API", description: "on-demand $/hour of the server for the Cost dashboard; set it to skip the Price List lookup" },
    { key: "smartscale:ebsGibMonthPrice", required: false, example: "0.088", default: "from the AWS Price List API", description: "gp3 $ per GiB-month for the Cost dashboard; set it to skip the Price List lookup" },
    { key: "smartscale:publicIpv4HourlyPrice", required: false, example: "0.005", default: "0.005", description: "$/hour of a public IPv4 address (AWS's price since February 2024) for the Cost dashboard" },
    { key: "smartscale:workerAllocatableCpu", required: false, example: "2", default: "2", description: "allocatable vCPUs per worker, for bin-packing pending pods" },
    { key: "smartscale:workerAllocatableMemoryGib", required: false, example: "3.8", default: "3.5", description: "allocatable memory per worker in GiB" },
    { key: "smartscale:controllerInterval", required: false, example: "15s", default: "30s", description: "controller decision interval" },
    { key: "smartscale:dryRun", required: false, example: "true", default: "false", description: "controller decides and records but never changes the ASG" },
    { key: "smartscale:k3sVersion", required: false, example: "v1.33.4+k3s1", default: "v1.33.4+k3s1", description: "K3s release installed on the server and workers; it must be pinned in pulumi/k3s-releases.json" },
    { key: "smartscale:k3sDir", required: false, example: ".k3s/v1.33.4+k3s1", default: ".k3s/<k3sVersion>", description: "directory with that release's k3s binary and install.sh (pulumi/scripts/fetch-k3s.sh puts them there); uploaded to the bucket after their SHA-256 is checked against the pins" },
    { key: "smartscale:amiId", required: false, example: "ami-0123456789abcdef0", default: "latest Canonical Ubuntu 24.04 LTS amd64", description: "AMI for all instances (must have glibc >= what scripts/check-glibc.sh reports)" },
    { key: "smartscale:sshKeyName", required: false, example: "my-keypair", default: "(none: no SSH)", description: "EC2 key pair for SSH to the server (kubectl, logs, the tunnel to Grafana); opens 22/tcp to adminCidr" },
    { key: "smartscale:grafanaNodePort", required: false, example: "30300", default: "30300", description: "NodePort on the server where Grafana listens (30000-32767); reachable only through an SSH tunnel, never opened in a security group" },
    { key: "smartscale:controllerMode", required: false, example: "lambda", default: "daemon", description: "daemon: the controller runs on the K3s server (pending pods act within about a second); lambda: an AWS Lambda function on an EventBridge schedule (pending-pod latency is then the schedule)" },
    { key: "smartscale:lambdaSchedule", required: false, example: "rate(2 minutes)", default: "rate(1 minute)", description: "lambda mode: EventBridge schedule of the controller function, rate(N minutes|hours|days), at least 1 minute" },
    { key: "smartscale:lambdaTimeout", required: false, example: "120", default: "60", description: "lambda mode: function timeout in seconds (10-900); a cycle still reading its sources then ends with a deadline error, nothing written" },
    { key: "smartscale:lambdaMemoryMb", required: false, example: "512", default: "256", description: "lambda mode: function memory in MB (128-10240; CPU grows with it)" },
    { key: "smartscale:lambdaLogRetentionDays", required: false, example: "30", default: "14", description: "lambda mode: retention of the function's log group, one of CloudWatch's periods (1, 3, 5, 7, 14, 30, 60, 90, ...)" },
    { key: "smartscale:notificationTopic", required: false, example: "true", default: "false", description: "lambda mode: create an SNS topic for the controller's notifications (each executed action, repeated errors) and set notifications.sns_topic_arn" },
    { key: "smartscale:cloudwatchMetrics", required: false, example: "true", default: "false", description: "lambda mode: publish ClusterCPU, NodeCount, ScaleUpEvents, ExecutionTime, ... to CloudWatch (namespace SmartScale/Autoscaler, one PutMetricData per cycle)" },
];

const KNOWN = new Map(CONFIG_KEYS.map((k) => [k.key, k]));

class Problems {
    readonly items: string[] = [];
    add(msg: string): void {
        this.items.push(msg);
    }
}

/** Reads and validates one key at a time; records problems instead of stopping at the first. */
class Reader {
    readonly problems = new Problems();
    private readonly raw: Record<string, string>;

    constructor(raw: Record<string, string>) {
        this.raw = raw;
    }

    private doc(key: string): KeyDoc {
        const d = KNOWN.get(key);
        if (!d) {
            throw new Error(`internal: config key ${key} is read but not listed in CONFIG_KEYS`);
        }
        return d;
    }

    required<T>(key: string, parse: (raw: string) => T): T | undefined {
        const d = this.doc(key);
        const raw = this.raw[key];
        if (raw === undefined || raw.trim() === "") {
            this.problems.add(
                `missing required key ${key}: ${d.description}\n` +
                    `      set it with: pulumi config set ${key} ${shellWord(d.example)}`,
            );
            return undefined;
        }
        return this.parse(key, raw, parse);
    }

    optional<T>(key: string, parse: (raw: string) => T, fallback: T): T {
        this.doc(key);
        const raw = this.raw[key];
        if (raw === undefined || raw.trim() === "") {
            return fallback;
        }
        const v = this.parse(key, raw, parse);
        return v === undefined ? fallback : v;
    }

    private parse<T>(key: string, raw: string, parse: (raw: string) => T): T | undefined {
        try {
            return parse(raw.trim());
        } catch (e) {
            const d = this.doc(key);
            this.problems.add(
                `invalid value for ${key}: ${(e as Error).message}\n` +
                    `      expected: ${d.description}\n` +
                    `      e.g.: pulumi config set ${key} ${shellWord(d.example)}`,
            );
            return undefined;
        }
    }

    rejectUnknown(namespace: string): void {
        for (const key of Object.keys(this.raw).sort()) {
            if (!key.startsWith(`${namespace}:`) || KNOWN.has(key)) {
                continue;
            }
            const hint = closest(key, [...KNOWN.keys()].filter((k) => k.startsWith(`${namespace}:`)));
            this.problems.add(
                `unknown key ${key}${hint ? ` (did you mean ${hint}?)` : ""}\n` +
                    `      remove it with: pulumi config rm ${key}`,
            );
        }
    }
}

function shellWord(s: string): string {
    return /^[A-Za-z0-9._:/=+,@-]+$/.test(s) ? s : `'${s}'`;
}

function levenshtein(a: string, b: string): number {
    const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
        let prev = dp[0];
        dp[0] = i;
        for (let j = 1; j <= b.length; j++) {
            const tmp = dp[j];
            dp[j] = Math.min(dp[j] + 1, dp[j - 1] + 1, prev + (a[i - 1].toLowerCase() === b[j - 1].toLowerCase() ? 0 : 1));
            prev = tmp;
        }
    }
    return dp[b.length];
}

function closest(key: string, candidates: string[]): string | undefined {
    let best: string | undefined;
    let bestDist = Infinity;
    for (const c of candidates) {
        const d = levenshtein(key, c);
        if (d < bestDist) {
            bestDist = d;
            best = c;
        }
    }
    return bestDist <= Math.max(3, Math.floor(key.length / 4)) ? best : undefined;
}

// ---------------------------------------------------------------- parsers

const parseCidr = (raw: string): string => {
    const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(raw);
    if (!m || m.slice(1, 5).some((o) => Number(o) > 255) || Number(m[5]) > 32) {
        throw new Error(`"${raw}" is not an IPv4 CIDR`);
    }
    return raw;
};

const parseVpcCidr = (raw: string): string => {
    parseCidr(raw);
    const m = /^(\d+)\.(\d+)\.0\.0\/16$/.exec(raw);
    if (!m) {
        throw new Error(`"${raw}" must be a /16 of the form a.b.0.0/16`);
    }
    if (raw === "10.42.0.0/16" || raw === "10.43.0.0/16") {
        throw new Error(`"${raw}" overlaps the K3s pod or service network`);
    }
    return raw;
};

const int = (min: number, max: number) => (raw: string): number => {
    if (!/^-?\d+$/.test(raw)) {
        throw new Error(`"${raw}" is not an integer`);
    }
    const n = Number(raw);
    if (n < min || n > max) {
        throw new Error(`${n} is outside ${min}..${max}`);
    }
    return n;
};

const positiveNumber = (raw: string): number => {
    const n = Number(raw);
    if (!/^\d+(\.\d+)?$/.test(raw) || !(n > 0)) {
        throw new Error(`"${raw}" is not a positive number`);
    }
    return n;
};

const bool = (raw: string): boolean => {
    if (raw === "true") return true;
    if (raw === "false") return false;
    throw new Error(`"${raw}" is not true or false`);
};

const duration = (raw: string): string => {
    if (!/^[1-9][0-9]*(s|m|h)$/.test(raw)) {
        throw new Error(`"${raw}" is not a duration like 90s, 10m or 1h`);
    }
    return raw;
};

const oneOf = <T extends string>(...allowed: T[]) => (raw: string): T => {
    if (!(allowed as string[]).includes(raw)) {
        throw new Error(`"${raw}" is not one of ${allowed.join(", ")}`);
    }
    return raw as T;
};

const pattern = (re: RegExp, what: string) => (raw: string): string => {
    if (!re.test(raw)) {
        throw new Error(`"${raw}" is not ${what}`);
    }
    return raw;
};

const instanceType = pattern(/^[a-z][a-z0-9-]*\.[a-z0-9]+$/, "an EC2 instance type like t3.medium");

const instanceTypes = (raw: string): string[] => {
    let list: unknown;
    if (raw.startsWith("[")) {
        try {
            list = JSON.parse(raw);
        } catch {
            throw new Error(`"${raw}" is not a JSON list`);
        }
    } else {
        list = raw.split(",").map((s) => s.trim());
    }
    if (!Array.isArray(list) || list.length === 0 || !list.every((t) => typeof t === "string")) {
        throw new Error(`"${raw}" is not a non-empty list of instance types`);
    }
    const types = (list as string[]).map(instanceType);
    if (new Set(types).size !== types.length) {
        throw new Error(`"${raw}" lists an instance type twice`);
    }
    return types;
};

const checked = (problems: (raw: string) => string[]) => (raw: string): string => {
    const p = problems(raw);
    if (p.length > 0) {
        throw new Error(p.join("; "));
    }
    return raw;
};
const labelList = checked(nodeLabelProblems);
const taintList = checked(nodeTaintProblems);

/** A duration like 90s, 10m or 1h within [min, max] seconds. */
const durationIn = (min: number, max: number) => (raw: string): string => {
    duration(raw);
    const n = Number(raw.slice(0, -1)) * { s: 1, m: 60, h: 3600 }[raw.slice(-1) as "s" | "m" | "h"];
    if (n < min || n > max) {
        throw new Error(`${raw} is outside ${min}s..${max}s`);
    }
    return raw;
};

/** `rate(N minute[s]|hour[s]|day[s])`, singular only for 1, as EventBridge requires. */
const rateExpression = (raw: string): string => {
    const m = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(raw);
    if (!m || Number(m[1]) < 1) {
        throw new Error(`"${raw}" is not a rate expression like rate(1 minute) or rate(5 minutes)`);
    }
    if ((Number(m[1]) === 1) !== !m[2].endsWith("s")) {
        throw new Error(`"${raw}": EventBridge wants the singular unit for 1 and the plural otherwise`);
    }
    return raw;
};

const logRetention = (raw: string): number => {
    const n = int(1, 3653)(raw);
    if (!LOG_RETENTION_DAYS.includes(n)) {
        throw new Error(`${n} days is not a CloudWatch Logs retention (${LOG_RETENTION_DAYS.join(", ")})`);
    }
    return n;
};

// ---------------------------------------------------------------- warm pool

const WARM_POOL_FIELDS = ["enabled", "minSize", "maxGroupPreparedCapacity", "poolState", "reuseOnScaleIn"] as const;

/**
 * `smartscale:warmPool`, an object. `pulumi config set --path` may store a field as a YAML bool or
 * number or as a string: both are accepted. Every problem is reported, unknown fields with a hint.
 * The limits are PutWarmPool's (WarmPoolConfiguration): MinSize >= 0, MaxGroupPreparedCapacity
 * >= -1 (-1 clears it: AWS's default size), PoolState Stopped | Running | Hibernated.
 */
export const parseWarmPool = (raw: string): WarmPoolConfig => {
    let v: unknown;
    try {
        v = JSON.parse(raw);
    } catch {
        throw new Error(`"${raw}" is not an object; set its fields with: pulumi config set --path smartscale:warmPool.enabled true`);
    }
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
        throw new Error(`${raw} is not an object like {"enabled":true,"minSize":2}`);
    }
    const o = v as Record<string, unknown>;
    const problems: string[] = [];
    for (const k of Object.keys(o)) {
        if (!(WARM_POOL_FIELDS as readonly string[]).includes(k)) {
            const hint = closest(k, [...WARM_POOL_FIELDS]);
            problems.push(`unknown field ${k}${hint ? ` (did you mean ${hint}?)` : ""}; the fields are ${WARM_POOL_FIELDS.join(", ")}`);
        }
    }
    const field = <T>(k: (typeof WARM_POOL_FIELDS)[number], parse: (x: string) => T, fallback: T): T => {
        const x = o[k];
        if (x === undefined || x === null) return fallback;
        if (typeof x !== "string" && typeof x !== "number" && typeof x !== "boolean") {
            problems.push(`${k}: ${JSON.stringify(x)} is not a single value`);
            return fallback;
        }
        try {
            return parse(String(x).trim());
        } catch (e) {
            problems.push(`${k}: ${(e as Error).message}`);
            return fallback;
        }
    };
    const poolState = (x: string): "Stopped" | "Running" => {
        if (x === "Stopped" || x === "Running") return x;
        if (x === "Hibernated") {
            throw new Error(
                "Hibernated is not supported: hibernation needs the launch template's HibernationOptions, an encrypted " +
                    "root volume with room for the instance's RAM and an instance type and AMI that support it, none of " +
                    "which this stack sets up; use Stopped (pays only for EBS while warmed) or Running",
            );
        }
        const hint = ["Stopped", "Running"].find((p) => p.toLowerCase() === x.toLowerCase());
        throw new Error(`"${x}" is not Stopped or Running${hint ? ` (AWS spells it ${hint})` : ""}`);
    };
    const d = WARM_POOL_DEFAULTS;
    const mgpc = field<number | undefined>("maxGroupPreparedCapacity", int(-1, 100000), undefined);
    const wp: WarmPoolConfig = {
        enabled: field("enabled", bool, d.enabled),
        minSize: field("minSize", int(0, 100000), d.minSize),
        // -1 is how PutWarmPool clears the value: the same as leaving it out.
        maxGroupPreparedCapacity: mgpc === -1 ? undefined : mgpc,
        poolState: field("poolState", poolState, d.poolState),
        reuseOnScaleIn: field("reuseOnScaleIn", bool, d.reuseOnScaleIn),
    };
    if (problems.length > 0) {
        throw new Error(problems.join("; "));
    }
    return wp;
};

/**
 * Rules between smartscale:warmPool and the other keys (an enabled pool only), each saying whose rule
 * it is and how to fix it.
 */
export function warmPoolProblems(
    wp: WarmPoolConfig,
    c: { workerInstanceTypes: string[]; workerMaxSize: number; onDemandPercentageAboveBase: number },
    isSet: (key: string) => boolean,
): string[] {
    if (!wp.enabled) return [];
    const p: string[] = [];
    const fix = "      ";
    // AWS: PutWarmPool "cannot be called on an Auto Scaling group that has a mixed instances policy or
    // a launch template or launch configuration that requests Spot Instances" (EC2 Auto Scaling API
    // Reference). With a warm pool the group uses the launch template alone: one instance type, on-demand.
    if (c.workerInstanceTypes.length !== 1) {
        p.push(
            `smartscale:warmPool is enabled but smartscale:workerInstanceTypes lists ${c.workerInstanceTypes.length} types: AWS allows no warm pool ` +
                "in a group with a mixed instances policy (PutWarmPool), so the workers must be one instance type\n" +
                `${fix}set one with: pulumi config set smartscale:workerInstanceTypes ${c.workerInstanceTypes[0]}`,
        );
    }
    if (c.onDemandPercentageAboveBase !== 100) {
        p.push(
            `smartscale:warmPool is enabled but smartscale:onDemandPercentageAboveBase is ${c.onDemandPercentageAboveBase}: the rest would be Spot, and AWS ` +
                "allows no warm pool in a group that launches Spot Instances (PutWarmPool); warm-pool workers are all on-demand\n" +
                `${fix}confirm with: pulumi config set smartscale:onDemandPercentageAboveBase 100`,
        );
    }
    for (const k of ["onDemandBaseCapacity", "spotAllocationStrategy"]) {
        if (isSet(`${NAMESPACE}:${k}`)) {
            p.push(
                `smartscale:${k} applies to the mixed instances policy, which a group with a warm pool cannot have\n` +
                    `${fix}remove it with: pulumi config rm smartscale:${k}`,
            );
        }
    }
    // SmartScale's rules (AWS accepts these, but they buy nothing): the pool never holds more than
    // max(MinSize, MaxGroupPreparedCapacity - desired) instances (EC2 Auto Scaling User Guide, warm
    // pool size), and only up to the group's max size of them can ever be in service.
    if (wp.minSize > c.workerMaxSize) {
        p.push(
            `smartscale:warmPool.minSize (${wp.minSize}) is larger than smartscale:workerMaxSize (${c.workerMaxSize}): the pool would keep ` +
                "instances (and pay for their volumes) that could never all be in service\n" +
                `${fix}lower it with: pulumi config set --path smartscale:warmPool.minSize ${c.workerMaxSize}`,
        );
    }
    if (wp.maxGroupPreparedCapacity !== undefined) {
        if (wp.maxGroupPreparedCapacity < wp.minSize) {
            p.push(
                `smartscale:warmPool.maxGroupPreparedCapacity (${wp.maxGroupPreparedCapacity}) is smaller than smartscale:warmPool.minSize (${wp.minSize}): ` +
                    "AWS keeps minSize instances in the pool regardless, so the cap would never apply\n" +
                    `${fix}raise it, or leave it out (AWS's default: workerMaxSize minus the desired capacity): pulumi config rm --path smartscale:warmPool.maxGroupPreparedCapacity`,
            );
        }
        if (wp.maxGroupPreparedCapacity > c.workerMaxSize) {
            p.push(
                `smartscale:warmPool.maxGroupPreparedCapacity (${wp.maxGroupPreparedCapacity}) is larger than smartscale:workerMaxSize (${c.workerMaxSize}): ` +
                    "the instances above the group's max could never be in service\n" +
                    `${fix}lower it with: pulumi config set --path smartscale:warmPool.maxGroupPreparedCapacity ${c.workerMaxSize}`,
            );
        }
    }
    // SmartScale's rule: a Running pool's instance returned on scale-in keeps running, still a (drained)
    // Node, and is put back in service without a boot, so nothing on it would run the join again.
    if (wp.poolState === "Running" && wp.reuseOnScaleIn) {
        p.push(
            "smartscale:warmPool.poolState Running with reuseOnScaleIn true is not supported: an instance returned to a running pool " +
                "stays a drained Node and is put back in service without a boot, so it would never join again\n" +
                `${fix}terminate on scale-in instead: pulumi config set --path smartscale:warmPool.reuseOnScaleIn false (or use poolState Stopped)`,
        );
    }
    return p;
}

/** Only `false`: see the rebalanceEnabled description. */
const rebalance = (raw: string): boolean => {
    if (bool(raw)) {
        throw new Error(
            "an agent drain on a rebalance recommendation leaves a cordoned node that nothing removes; the ASG's capacity " +
                "rebalancing already launches a replacement and terminates the at-risk instance through the terminate hook, " +
                "which the agent drains",
        );
    }
    return false;
};

const clusterIdPattern = /^[a-z][a-z0-9-]{0,19}$/;
const clusterId = (raw: string): string => {
    if (!clusterIdPattern.test(raw) || raw.endsWith("-")) {
        throw new Error(`"${raw}" must be 1-20 lowercase letters, digits or '-', starting with a letter`);
    }
    return raw;
};

/** Derives a cluster id from the stack name: lowercase, '-' for anything else, at most 20 chars. */
export function clusterIdFromStack(stack: string): string {
    let id = stack.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^[^a-z]+/, "").slice(0, 20).replace(/-+$/, "");
    if (id === "") id = "smartscale";
    return id;
}

/**
 * A readable ELF file. Relative paths are resolved against the Pulumi project directory
 * (the working directory of `pulumi up`).
 */
const elfPath = (raw: string): string => {
    const p = path.resolve(raw);
    let st: fs.Stats;
    try {
        st = fs.statSync(p);
    } catch {
        throw new Error(`no file at ${p} (build it first: cargo build --release)`);
    }
    if (!st.isFile()) {
        throw new Error(`${p} is not a regular file`);
    }
    const fd = fs.openSync(p, "r");
    const magic = Buffer.alloc(4);
    try {
        fs.readSync(fd, magic, 0, 4, 0);
    } finally {
        fs.closeSync(fd);
    }
    if (!magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) {
        throw new Error(`${p} is not an ELF executable`);
    }
    return p;
};

// ---------------------------------------------------------------- loading

/** Thrown for configuration problems; Pulumi prints a RunError without a stack trace. */
export class ConfigError extends pulumi.RunError {
    constructor(readonly problems: string[], stack: string) {
        super(
            `SmartScale stack configuration is invalid (stack "${stack}"):\n` +
                problems.map((p) => `  - ${p}`).join("\n") +
                `\n  (all keys: docs/deploy.md)`,
        );
        this.name = "ConfigError";
    }
}

/** Loads and validates the whole stack configuration, or throws a ConfigError listing every problem. */
export function loadConfig(): StackConfig {
    const stack = pulumi.getStack();
    const r = new Reader(pulumi.runtime.allConfig());
    const s = (k: string) => `${NAMESPACE}:${k}`;

    const region = r.required("aws:region", pattern(/^[a-z]{2}(-[a-z]+)+-\d$/, "an AWS region like us-east-1"));
    const adminCidr = r.required(s("adminCidr"), parseCidr);
    const agentBinaryPath = r.required(s("agentBinaryPath"), elfPath);
    const controllerBinaryPath = r.required(s("controllerBinaryPath"), elfPath);

    const k3sVersion = r.optional(s("k3sVersion"), pattern(/^v\d+\.\d+\.\d+\+k3s\d+$/, "a K3s release like v1.33.4+k3s1"), "v1.33.4+k3s1");
    const cfg = {
        region,
        stack,
        clusterId: r.optional(s("clusterId"), clusterId, clusterIdFromStack(stack)),
        adminCidr,
        allowWideAdminCidr: r.optional(s("allowWideAdminCidr"), bool, false),
        agentBinaryPath,
        controllerBinaryPath,
        azCount: r.optional(s("azCount"), int(2, 6), 2),
        vpcCidr: r.optional(s("vpcCidr"), parseVpcCidr, "10.20.0.0/16"),
        serverInstanceType: r.optional(s("serverInstanceType"), instanceType, "t3.medium"),
        serverRootVolumeGiB: r.optional(s("serverRootVolumeGiB"), int(20, 1000), 30),
        workerInstanceTypes: r.optional(s("workerInstanceTypes"), instanceTypes, DEFAULT_WORKER_TYPES),
        workerRootVolumeGiB: r.optional(s("workerRootVolumeGiB"), int(10, 1000), 20),
        workerMinSize: r.optional(s("workerMinSize"), int(0, 1000), 1),
        workerMaxSize: r.optional(s("workerMaxSize"), int(1, 1000), 10),
        onDemandBaseCapacity: r.optional(s("onDemandBaseCapacity"), int(0, 1000), 1),
        onDemandPercentageAboveBase: r.optional(s("onDemandPercentageAboveBase"), int(0, 100), 20),
        spotAllocationStrategy: r.optional(
            s("spotAllocationStrategy"),
            oneOf("price-capacity-optimized", "capacity-optimized", "capacity-optimized-prioritized", "lowest-price"),
            "price-capacity-optimized",
        ),
        lifecycleHeartbeatTimeout: r.optional(s("lifecycleHeartbeatTimeout"), int(30, 7200), 300),
        workerJoinTimeout: r.optional(s("workerJoinTimeout"), durationIn(60, 7200), "10m"),
        workerCapacityTimeout: r.optional(s("workerCapacityTimeout"), durationIn(300, 7200), "20m"),
        drainTimeout: r.optional(s("drainTimeout"), duration, "10m"),
        spotDrainDeadline: r.optional(s("spotDrainDeadline"), duration, "90s"),
        onDrainTimeout: r.optional(s("onDrainTimeout"), oneOf("continue", "keep_heartbeating"), "continue"),
        evictionConcurrency: r.optional(s("evictionConcurrency"), int(1, 100), 10),
        rebalanceEnabled: r.optional(s("rebalanceEnabled"), rebalance, false),
        workerNodeLabels: r.optional<string | undefined>(s("workerNodeLabels"), labelList, undefined),
        workerNodeTaints: r.optional<string | undefined>(s("workerNodeTaints"), taintList, undefined),
        workerHourlyPrice: r.optional(s("workerHourlyPrice"), positiveNumber, 0.0416),
        serverHourlyPrice: r.optional<number | undefined>(s("serverHourlyPrice"), positiveNumber, undefined),
        ebsGibMonthPrice: r.optional<number | undefined>(s("ebsGibMonthPrice"), positiveNumber, undefined),
        publicIpv4HourlyPrice: r.optional(s("publicIpv4HourlyPrice"), positiveNumber, 0.005),
        workerAllocatableCpu: r.optional(s("workerAllocatableCpu"), positiveNumber, 2),
        workerAllocatableMemoryGib: r.optional(s("workerAllocatableMemoryGib"), positiveNumber, 3.5),
        controllerInterval: r.optional(s("controllerInterval"), duration, "30s"),
        dryRun: r.optional(s("dryRun"), bool, false),
        k3sVersion,
        k3sDir: path.resolve(r.optional(s("k3sDir"), (raw: string) => raw, `.k3s/${k3sVersion}`)),
        amiId: r.optional<string | undefined>(s("amiId"), pattern(/^ami-[0-9a-f]{8,17}$/, "an AMI id like ami-0123456789abcdef0"), undefined),
        sshKeyName: r.optional<string | undefined>(s("sshKeyName"), pattern(/^[A-Za-z0-9._ -]{1,255}$/, "an EC2 key pair name"), undefined),
        grafanaNodePort: r.optional(s("grafanaNodePort"), int(30000, 32767), 30300),
        controllerMode: r.optional(s("controllerMode"), oneOf("daemon", "lambda"), "daemon"),
        lambdaSchedule: r.optional(s("lambdaSchedule"), rateExpression, "rate(1 minute)"),
        lambdaTimeout: r.optional(s("lambdaTimeout"), int(10, 900), 60),
        lambdaMemoryMb: r.optional(s("lambdaMemoryMb"), int(128, 10240), 256),
        lambdaLogRetentionDays: r.optional(s("lambdaLogRetentionDays"), logRetention, 14),
        notificationTopic: r.optional(s("notificationTopic"), bool, false),
        cloudwatchMetrics: r.optional(s("cloudwatchMetrics"), bool, false),
        warmPool: r.optional(s("warmPool"), parseWarmPool, WARM_POOL_DEFAULTS),
    };
    if (cfg.controllerMode !== "lambda") {
        // Keys that would do nothing in daemon mode are errors, not silently ignored settings.
        for (const k of ["lambdaSchedule", "lambdaTimeout", "lambdaMemoryMb", "lambdaLogRetentionDays", "notificationTopic", "cloudwatchMetrics"]) {
            if (pulumi.runtime.allConfig()[s(k)] !== undefined) {
                r.problems.add(`smartscale:${k} applies to smartscale:controllerMode lambda only\n      set the mode with: pulumi config set smartscale:controllerMode lambda`);
            }
        }
    }

    if (cfg.workerMinSize > cfg.workerMaxSize) {
        r.problems.add(`smartscale:workerMinSize (${cfg.workerMinSize}) is larger than smartscale:workerMaxSize (${cfg.workerMaxSize})`);
    }
    if (adminCidr && Number(adminCidr.split("/")[1]) < 16 && !cfg.allowWideAdminCidr) {
        r.problems.add(
            `smartscale:adminCidr ${adminCidr} is wider than a /16: the K3s API${cfg.sshKeyName ? " and SSH" : ""} would be open to ` +
                `${adminCidr === "0.0.0.0/0" ? "the whole internet" : "a large part of the internet"}\n` +
                "      use your own address (curl -s https://checkip.amazonaws.com)/32, or confirm with: pulumi config set smartscale:allowWideAdminCidr true",
        );
    }
    // A launch action lives at most min(48 h, 100 x HeartbeatTimeout), heartbeats or not: the wait
    // for the agent token and the join must end before that.
    const seconds = (d: string) => Number(d.slice(0, -1)) * { s: 1, m: 60, h: 3600 }[d.slice(-1) as "s" | "m" | "h"];
    const globalTimeout = Math.min(172800, 100 * cfg.lifecycleHeartbeatTimeout);
    if (AGENT_TOKEN_WAIT_SECONDS + seconds(cfg.workerJoinTimeout) >= globalTimeout) {
        r.problems.add(
            `smartscale:workerJoinTimeout (${cfg.workerJoinTimeout}) plus the ${AGENT_TOKEN_WAIT_SECONDS}s a worker may wait for the agent token ` +
                `does not fit in the launch action's global timeout (100 x smartscale:lifecycleHeartbeatTimeout = ${globalTimeout}s); ` +
                "raise the heartbeat timeout or lower the join timeout",
        );
    }
    if (cfg.onDemandBaseCapacity > cfg.workerMaxSize) {
        r.problems.add(`smartscale:onDemandBaseCapacity (${cfg.onDemandBaseCapacity}) is larger than smartscale:workerMaxSize (${cfg.workerMaxSize})`);
    }
    for (const p of warmPoolProblems(cfg.warmPool, cfg, (k) => pulumi.runtime.allConfig()[k] !== undefined)) {
        r.problems.add(p);
    }
    r.rejectUnknown(NAMESPACE);

    if (r.problems.items.length > 0) {
        throw new ConfigError(r.problems.items, stack);
    }
    return {
        ...cfg,
        region: region!,
        adminCidr: adminCidr!,
        agentBinaryPath: agentBinaryPath!,
        controllerBinaryPath: controllerBinaryPath!,
    };
}
