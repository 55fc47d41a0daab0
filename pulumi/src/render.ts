// A deliberately small template renderer for userdata/*.tpl and the server manifest.
//
//   @@NAME@@        a single-line value. In shell templates it must sit inside single quotes
//                   ('@@NAME@@') and may not contain a quote, so no value can break out of it.
//   @@BLOCK:NAME@@  a multi-line block (a file: systemd unit, config, shared functions), alone on
//                   its line; blocks are placed inside quoted heredocs (<<'SMARTSCALE_EOF') or are
//                   shell code we ship, and may not contain the heredoc terminator. Whitespace
//                   before the placeholder indents every line of the block (YAML in YAML).
//
// Missing values, unused values and leftover placeholders are errors, so a template and its caller
// cannot drift apart silently.

export const HEREDOC_TERMINATOR = "SMARTSCALE_EOF";

export interface RenderInput {
    values?: Record<string, string>;
    blocks?: Record<string, string>;
    /** Enforce the single-quote rule for values (shell templates). */
    shell: boolean;
}

const PLACEHOLDER = /@@(BLOCK:)?([A-Z0-9_]+)@@/g;
const SAFE_VALUE = /^[\x20-\x26\x28-\x7e]*$/; // printable ASCII without the single quote

export function renderTemplate(template: string, input: RenderInput): string {
    const values = input.values ?? {};
    const blocks = input.blocks ?? {};
    const used = new Set<string>();
    const errors: string[] = [];

    for (const [name, value] of Object.entries(values)) {
        if (!SAFE_VALUE.test(value)) {
            errors.push(`value ${name} must be one line of printable ASCII without a single quote: ${JSON.stringify(value)}`);
        }
    }
    for (const [name, block] of Object.entries(blocks)) {
        if (block.split("\n").some((l) => l.trim() === HEREDOC_TERMINATOR)) {
            errors.push(`block ${name} contains the heredoc terminator line ${HEREDOC_TERMINATOR}`);
        }
        if (block.includes("@@")) {
            errors.push(`block ${name} contains "@@"`);
        }
    }

    const out = template.replace(PLACEHOLDER, (match, isBlock: string | undefined, name: string, offset: number) => {
        if (isBlock) {
            const lineStart = template.lastIndexOf("\n", offset - 1) + 1;
            const lineEnd = template.indexOf("\n", offset);
            const line = template.slice(lineStart, lineEnd === -1 ? undefined : lineEnd);
            const indent = line.slice(0, line.length - line.trimStart().length);
            if (line !== indent + match) {
                errors.push(`${match} must be alone on its line`);
            }
            if (!(name in blocks)) {
                errors.push(`no block given for ${match}`);
                return match;
            }
            used.add(`BLOCK:${name}`);
            return blocks[name]
                .replace(/\n+$/, "")
                .split("\n")
                .map((l, i) => (i === 0 || l === "" ? l : indent + l))
                .join("\n");
        }
        if (input.shell && (template[offset - 1] !== "'" || template[offset + match.length] !== "'")) {
            errors.push(`${match} must be written as '${match}' in a shell template`);
        }
        if (!(name in values)) {
            errors.push(`no value given for ${match}`);
            return match;
        }
        used.add(name);
        return values[name];
    });

    for (const name of Object.keys(values)) {
        if (!used.has(name)) errors.push(`value ${name} is not used by the template`);
    }
    for (const name of Object.keys(blocks)) {
        if (!used.has(`BLOCK:${name}`)) errors.push(`block ${name} is not used by the template`);
    }
    if (errors.length > 0) {
        throw new Error(`template rendering failed:\n  ${errors.join("\n  ")}`);
    }
    return out;
}
