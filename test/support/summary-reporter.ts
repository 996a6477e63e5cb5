/**
 * mocha's spec reporter plus one closing line in the plain form CI tools
 * read in any language: "N passed, N failed, N skipped".
 *
 * Under CI=true a skipped test is a failure: tests skip themselves on a
 * developer's machine that lacks QEMU, namespaces or root, but in CI a
 * missing tool must not pass for a green run. The skipped tests are listed
 * and counted as failed, and the exit code is non-zero.
 */
import Mocha from 'mocha';

class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    const skipped: string[] = [];
    runner.on(Mocha.Runner.constants.EVENT_TEST_PENDING, (test: Mocha.Test) => skipped.push(test.fullTitle()));
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const stats = runner.stats;
      if (stats === undefined) return;
      let failed = stats.failures;
      let skippedCount = stats.pending;
      if (process.env.CI === 'true' && skipped.length > 0) {
        process.stdout.write(`\nCI=true: ${skipped.length} skipped test(s) count as failures (a missing tool or privilege):\n`);
        for (const title of skipped) process.stdout.write(`  - ${title}\n`);
        failed += skipped.length;
        skippedCount = 0;
        // Our handler runs before the one mocha's run() adds, which exits with runner.failures.
        runner.failures += skipped.length;
        process.exitCode = 1;
      }
      process.stdout.write(`\n${stats.passes} passed, ${failed} failed, ${skippedCount} skipped\n`);
    });
  }
}

export = SummaryReporter;
