/**
 * The fuzz targets in CI: every committed corpus file (seeds and fixed
 * crashers) replayed through its target, then a brief Jazzer.js run per
 * target from that corpus. A crash fails the test with the fuzzer's report
 * and the crasher in base64 (save it to fuzz/corpus/<target>/ to replay it).
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FUZZ_TARGETS } from '../../fuzz/targets';
import { ensureJazzerLoads, runJazzer, targetCorpus } from '../../fuzz/jazzer';
import { DIST_ROOT } from '../support/paths';

/** Bound on one brief run (the input count normally ends it sooner). */
const BRIEF_SECONDS = 8;

describe('fuzz targets', function () {
  this.timeout(60_000);
  let scratch = '';

  before(function () {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-fuzz-'));
    ensureJazzerLoads();
  });

  after(function () {
    if (scratch !== '') fs.rmSync(scratch, { recursive: true, force: true });
  });

  for (const target of FUZZ_TARGETS) {
    it(`${target.name}: every committed corpus input passes`, function () {
      const dir = targetCorpus(target.name);
      const files = fs.readdirSync(dir).map((f) => path.join(dir, f));
      expect(files.length, `inputs in ${dir}`).to.be.greaterThan(0);
      const result = spawnSync(process.execPath, [path.join(DIST_ROOT, 'fuzz', 'replay.js'), target.name, ...files], { encoding: 'utf8', timeout: 50_000 });
      expect(result.status, `${result.stdout}${result.stderr}`).to.equal(0);
      expect(result.stdout).to.contain(`${files.length} inputs pass`);
    });

    it(`${target.name}: a brief fuzzing run finds no crash`, async function () {
      const artifacts = path.join(scratch, target.name, 'artifacts');
      const result = await runJazzer(target, { runs: target.ciRuns, maxSeconds: BRIEF_SECONDS, workCorpus: path.join(scratch, target.name, 'corpus'), artifactDir: artifacts });
      const crashers = result.crashers.map((f) => `${path.basename(f)} (base64 ${fs.readFileSync(f).toString('base64')})`);
      expect(crashers, `crashers found:\n${result.tail}`).to.deep.equal([]);
      expect(result.exitCode, result.tail).to.equal(0);
      expect(result.runs, 'inputs executed').to.be.greaterThan(0);
      expect(result.coverage, 'coverage reached').to.be.greaterThan(0);
    });
  }
});
