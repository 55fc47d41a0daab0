// Reads docs/interfaces.md so tests hold the program to the names documented there.
import { readRepoFile } from "../src/files";

/** Dotted key paths of a simple YAML document ("node_groups.asg_name", "api.listen", ...). */
export function yamlKeyPaths(yaml: string): Set<string> {
    const paths = new Set<string>();
    const stack: { indent: number; key: string }[] = [];
    for (const raw of yaml.split("\n")) {
        if (/^\s*(#|$)/.test(raw)) continue;
        const m = /^(\s*)(- )?([a-z_][a-z0-9_]*):/.exec(raw);
        if (!m) continue;
        const indent = m[1].length + (m[2] ? 2 : 0);
        while (stack.length > 0 && stack[stack.length - 1].indent >= indent) stack.pop();
        const p = [...stack.map((s) => s.key), m[3]].join(".");
        paths.add(p);
        stack.push({ indent, key: m[3] });
    }
    return paths;
}

function section(title: string): string {
    const doc = readRepoFile("docs", "interfaces.md");
    const start = doc.indexOf(`## ${title}`);
    if (start < 0) throw new Error(`docs/interfaces.md has no section "${title}"`);
    const next = doc.indexOf("\n## ", start + 3);
    return doc.slice(start, next < 0 ? undefined : next);
}

function firstYamlBlock(text: string): string {
    const m = /```yaml\n([\s\S]*?)```/.exec(text);
    if (!m) throw new Error("no yaml block");
    return m[1];
}

export const documentedControllerKeys = () => yamlKeyPaths(firstYamlBlock(section("Controller config")));
export const documentedAgentKeys = () => yamlKeyPaths(firstYamlBlock(section("Agent config")));
export const agentSection = () => section("Agent config");
export const metricsSection = () => section("Metrics");
