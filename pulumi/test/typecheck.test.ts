// `tsc --noEmit` over the program, the tests and the scripts (strict mode).
import * as assert from "assert";
import { spawnSync } from "child_process";
import * as path from "path";

describe("TypeScript", () => {
    it("tsc --noEmit is clean", function () {
        this.timeout(120000);
        const root = path.resolve(__dirname, "..");
        const r = spawnSync(process.execPath, [require.resolve("typescript/bin/tsc"), "--noEmit", "-p", root], { encoding: "utf8" });
        assert.strictEqual(r.status, 0, `${r.stdout}${r.stderr}`);
    });
});
