// Reading repository files (templates, units, manifests, dashboards) and hashing artifacts.
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";

/** The repository root: pulumi/src/.. /.. */
export const REPO_ROOT = path.resolve(__dirname, "..", "..");

export function repoPath(...parts: string[]): string {
    return path.join(REPO_ROOT, ...parts);
}

export function readRepoFile(...parts: string[]): string {
    return fs.readFileSync(repoPath(...parts), "utf8");
}

export function sha256File(file: string): string {
    const h = crypto.createHash("sha256");
    const fd = fs.openSync(file, "r");
    try {
        const buf = Buffer.alloc(1 << 20);
        let n: number;
        while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) {
            h.update(buf.subarray(0, n));
        }
    } finally {
        fs.closeSync(fd);
    }
    return h.digest("hex");
}

export function sha256Text(text: string): string {
    return crypto.createHash("sha256").update(text, "utf8").digest("hex");
}

/** The dashboards shipped in dashboards/*.json, by file name, sorted. */
export function dashboardFiles(): { name: string; json: string }[] {
    const dir = repoPath("dashboards");
    return fs
        .readdirSync(dir)
        .filter((f) => f.endsWith(".json"))
        .sort()
        .map((name) => ({ name, json: fs.readFileSync(path.join(dir, name), "utf8") }));
}
