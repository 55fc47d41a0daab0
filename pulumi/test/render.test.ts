// The template renderer: values cannot escape their quotes and templates cannot drift from callers.
import * as assert from "assert";
import { renderTemplate } from "../src/render";

describe("template renderer", () => {
    it("fills values and blocks", () => {
        const out = renderTemplate("A='@@X@@'\n@@BLOCK:B@@\n", { shell: true, values: { X: "1" }, blocks: { B: "echo hi\n" } });
        assert.strictEqual(out, "A='1'\necho hi\n");
    });

    it("rejects a value that could leave its single quotes", () => {
        assert.throws(() => renderTemplate("A='@@X@@'\n", { shell: true, values: { X: "x'; rm -rf / #" } }), /without a single quote/);
        assert.throws(() => renderTemplate("A='@@X@@'\n", { shell: true, values: { X: "a\nb" } }), /one line/);
    });

    it("requires values in shell templates to be single-quoted", () => {
        assert.throws(() => renderTemplate("A=@@X@@\n", { shell: true, values: { X: "1" } }), /must be written as '@@X@@'/);
    });

    it("reports missing and unused values and blocks", () => {
        assert.throws(() => renderTemplate("A='@@X@@'\n", { shell: true }), /no value given for @@X@@/);
        assert.throws(() => renderTemplate("A=1\n", { shell: true, values: { X: "1" } }), /value X is not used/);
        assert.throws(() => renderTemplate("x @@BLOCK:B@@\n", { shell: true, blocks: { B: "y" } }), /must be alone on its line/);
    });

    it("refuses a block containing the heredoc terminator", () => {
        assert.throws(
            () => renderTemplate("@@BLOCK:B@@\n", { shell: true, blocks: { B: "a\nSMARTSCALE_EOF\nb" } }),
            /heredoc terminator/,
        );
    });

    it("indents every line of a block by the whitespace before its placeholder", () => {
        const out = renderTemplate("a:\n  b:\n    @@BLOCK:B@@\nc: 1\n", { shell: false, blocks: { B: "x: 1\n\ny:\n  - 2\n" } });
        assert.strictEqual(out, "a:\n  b:\n    x: 1\n\n    y:\n      - 2\nc: 1\n");
    });
});
