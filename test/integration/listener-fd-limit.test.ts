/**
 * The real daemon (vhost-user) and pasta mode under a small open-file limit
 * (prlimit --nofile=256) asked to forward every port (-t all / -u all):
 * both stop at the first EMFILE, print one line naming the option and the
 * limit, and exit non-zero at once instead of running on half-forwarded.
 *
 * Everything runs inside a network namespace pair this test creates
 * (documentation addresses only).
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type TestNetwork, canCreateNamespaces, createTestNetwork, destroyTestNetwork, spawnIn } from '../support/netns';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const FERRY = path.join(REPO_ROOT, 'bin', 'ferry.js');
/** A bound on each run, far above what failing fast takes: a run on its way to 61 s ends here as a failure. */
const RUN_BOUND_MS = 20_000;

interface Outcome {
  /** null when killed at RUN_BOUND_MS. */
  code: number | null;
  output: string;
}

/** Run ferry with `args` in `ns` under RLIMIT_NOFILE 256; resolves when it exits (killed after RUN_BOUND_MS). */
function runLimited(ns: string, args: string[]): Promise<Outcome> {
  const child = spawnIn(ns, ['prlimit', '--nofile=256', process.execPath, FERRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), RUN_BOUND_MS);
  return new Promise((resolve) => {
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

function hasPrlimit(): boolean {
  return spawnSync('prlimit', ['--version'], { stdio: 'ignore' }).status === 0;
}

describe('opening the -t/-u listeners under a small open-file limit', function () {
  this.timeout(90_000);
  let net: TestNetwork | undefined;
  let dir = '';

  before(async function () {
    if (!canCreateNamespaces() || !hasPrlimit()) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-fdlimit-'));
  });

  after(async () => {
    if (net !== undefined) await destroyTestNetwork(net);
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  const cases: { name: string; args: () => string[]; option: RegExp }[] = [
    { name: 'the daemon with -t all', args: () => ['--socket-path', path.join(dir, 'a.sock'), '-t', 'all'], option: /-t all: / },
    { name: 'the daemon with -u all', args: () => ['--socket-path', path.join(dir, 'b.sock'), '-u', 'all'], option: /-u all: / },
    { name: 'the daemon with a large -t range', args: () => ['--socket-path', path.join(dir, 'c.sock'), '-t', '1-3000'], option: /-t 1-3000: / },
    { name: 'pasta with -t all', args: () => ['pasta', '-t', 'all', '--', 'true'], option: /-t all: / },
    { name: 'pasta with -u all', args: () => ['pasta', '-u', 'all', '--', 'true'], option: /-u all: / },
  ];
  for (const c of cases) {
    it(`${c.name}: exits non-zero with one line naming the option and the limit`, async () => {
      const outcome = await runLimited(net!.ns, c.args());
      expect(outcome.code, outcome.output).to.be.a('number').and.not.equal(0);
      const fatal = outcome.output.split('\n').filter((line) => /error: fatal: /.test(line));
      expect(fatal, outcome.output).to.have.length(1);
      expect(fatal[0]).to.match(c.option);
      expect(fatal[0]).to.match(/EMFILE/);
      expect(fatal[0]).to.match(/RLIMIT_NOFILE\) is 256/);
    });
  }
});
