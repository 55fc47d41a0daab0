// The rules the kubelet (and the NodeRestriction admission plugin K3s enables) apply to the node
// labels and taints a node registers itself with (`--node-labels`, `--register-with-taints`).
// A label the kubelet refuses makes k3s-agent exit at start, so the worker never joins: refuse
// it in `pulumi preview` instead.
//
// Kubelet (cmd/kubelet/app/options, "--node-labels"): labels in the kubernetes.io and k8s.io
// namespaces (and their subdomains) must start with kubelet.kubernetes.io/ or node.kubernetes.io/
// (or a subdomain of those), or be one of KUBELET_LABELS. Keys are qualified names: an optional
// DNS-1123 subdomain prefix (at most 253) and a name of at most 63 of [A-Za-z0-9_.-], starting
// and ending alphanumeric; values are empty or a name of at most 63 of the same.

const KUBELET_LABELS = new Set([
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
]);

/** Labels the agent sets on every worker itself (docs/interfaces.md); config may not set them. */
export const AGENT_LABELS = [
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone",
    "smartscale.io/capacity-type",
    "smartscale.io/node-group",
];
export const DRAINING_TAINT = "smartscale.io/draining";

const NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

const inNamespace = (prefix: string, ns: string) => prefix === ns || prefix.endsWith(`.${ns}`);

/** Why `key` is not a valid label key, or undefined. */
export function labelKeyProblem(key: string): string | undefined {
    const slash = key.lastIndexOf("/");
    const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
    const name = slash >= 0 ? key.slice(slash + 1) : key;
    if (name.length === 0 || name.length > 63 || !NAME.test(name)) {
        return `"${key}": the name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric`;
    }
    if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) {
        return `"${key}": the prefix must be a lowercase DNS subdomain of at most 253 characters`;
    }
    return undefined;
}

function valueProblem(key: string, value: string): string | undefined {
    if (value !== "" && (value.length > 63 || !NAME.test(value))) {
        return `"${key}=${value}": a value must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric`;
    }
    return undefined;
}

/** Why the kubelet would refuse to register with `key` as a node label, or undefined. */
export function kubeletLabelProblem(key: string): string | undefined {
    const syntax = labelKeyProblem(key);
    if (syntax) return syntax;
    const prefix = key.includes("/") ? key.slice(0, key.lastIndexOf("/")) : "";
    const restricted = inNamespace(prefix, "kubernetes.io") || inNamespace(prefix, "k8s.io");
    const allowed =
        KUBELET_LABELS.has(key) || inNamespace(prefix, "kubelet.kubernetes.io") || inNamespace(prefix, "node.kubernetes.io");
    if (restricted && !allowed) {
        return `"${key}": the kubelet refuses node labels in the kubernetes.io and k8s.io namespaces unless they start with kubelet.kubernetes.io/ or node.kubernetes.io/ (node-role.kubernetes.io/* must be set by an administrator, not by the node)`;
    }
    return undefined;
}

/** "k=v,k2=v2" -> problems (empty when the kubelet would accept every label). */
export function nodeLabelProblems(list: string): string[] {
    const problems: string[] = [];
    for (const item of list.split(",").map((s) => s.trim())) {
        const eq = item.indexOf("=");
        if (eq <= 0) {
            problems.push(`"${item}" is not key=value`);
            continue;
        }
        const key = item.slice(0, eq);
        const p = kubeletLabelProblem(key) ?? valueProblem(key, item.slice(eq + 1));
        if (p) problems.push(p);
        if (AGENT_LABELS.includes(key)) problems.push(`"${key}" is set by the agent on every worker; choose another key`);
    }
    return problems;
}

/** "k=v:Effect,k2:Effect" -> problems. */
export function nodeTaintProblems(list: string): string[] {
    const problems: string[] = [];
    for (const item of list.split(",").map((s) => s.trim())) {
        const m = /^([^=:]+)(?:=([^:]*))?:(NoSchedule|PreferNoSchedule|NoExecute)$/.exec(item);
        if (!m) {
            problems.push(`"${item}" is not key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)`);
            continue;
        }
        const p = labelKeyProblem(m[1]) ?? valueProblem(m[1], m[2] ?? "");
        if (p) problems.push(p);
        if (m[1] === DRAINING_TAINT) problems.push(`"${m[1]}" is the agent's draining taint`);
    }
    return problems;
}
