// Mocha's spec reporter plus one plain closing line that CI and scripts/check-infra.sh read:
//   "N passed, N failed"
"use strict";
const Mocha = require("mocha");

class SummaryReporter extends Mocha.reporters.Spec {
    constructor(runner, options) {
        super(runner, options);
        runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
            const s = runner.stats;
            process.stdout.write(`${s.passes} passed, ${s.failures} failed\n`);
        });
    }
}

module.exports = SummaryReporter;
