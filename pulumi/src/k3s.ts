// The K3s release the instances install, pinned by SHA-256 in pulumi/k3s-releases.json:
//   { "v1.33.4+k3s1": { "k3s": "<sha256 of the amd64 binary>", "install.sh": "<sha256 of install.sh at that tag>" } }
// pulumi/scripts/fetch-k3s.sh downloads a release into pulumi/.k3s/<version>/ and checks it against
// these pins (`--pin` adds a new version's entry, after checking the binary against the release's
// own sha256sum-amd64.txt; commit it after review). The program uploads both files to the stack's
// bucket only if they match the pins, and instances check them again before installing: nothing
// is downloaded from GitHub at boot.
import * as fs from "fs";
import * as path from "path";
import { sha256File } from "./files";

export interface K3sPins {
    k3s: string;
    "install.sh": string;
}

/** Loaded once; tests may add a pin for a fake release. */
export const K3S_RELEASES: Record<string, K3sPins> = JSON.parse(
    fs.readFileSync(path.join(__dirname, "..", "k3s-releases.json"), "utf8"),
);

export interface K3sFiles {
    version: string;
    binary: { path: string; sha256: string };
    installScript: { path: string; sha256: string };
}

/** The release's files in `dir`, checked against the pins; every problem in one message. */
export function k3sFiles(version: string, dir: string): K3sFiles {
    const pins = K3S_RELEASES[version];
    const fetch = `run: pulumi/scripts/fetch-k3s.sh ${version}`;
    if (!pins) {
        throw new Error(
            `k3s ${version} has no pinned SHA-256 in pulumi/k3s-releases.json. On a machine with internet access ` +
                `run pulumi/scripts/fetch-k3s.sh --pin ${version}, review the entry it adds and commit it.`,
        );
    }
    const problems: string[] = [];
    const check = (file: string, want: string) => {
        const p = path.join(dir, file);
        if (!fs.existsSync(p)) {
            problems.push(`${p} is missing (${fetch})`);
            return { path: p, sha256: want };
        }
        const got = sha256File(p);
        if (got !== want) {
            problems.push(`${p} has SHA-256 ${got}, but k3s-releases.json pins ${want} for ${version}`);
        }
        return { path: p, sha256: got };
    };
    const binary = check("k3s", pins.k3s);
    const installScript = check("install.sh", pins["install.sh"]);
    if (problems.length > 0) {
        throw new Error(`k3s ${version} cannot be deployed:\n  - ${problems.join("\n  - ")}`);
    }
    return { version, binary, installScript };
}
