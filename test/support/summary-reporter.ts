/**
 * mocha's spec reporter plus one closing line in the plain form CI tools
 * read in any language: "N passed, N failed, N skipped".
 */
import Mocha = require('mocha');

class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const stats = runner.stats;
      if (stats === undefined) return;
      // After the spec reporter's own epilogue.
      process.stdout.write(`\n${stats.passes} passed, ${stats.failures} failed, ${stats.pending} skipped\n`);
    });
  }
}

export = SummaryReporter;
