/**
 * --freebind, as passt's: a -t/-u bind address the host does not have (yet)
 * is bound anyway. ferry as passt (backgrounded, in the test namespace)
 * with `-t 192.0.2.99/10020 -u 192.0.2.99/10021` listens on that address
 * only with --freebind; without it those ports are not bound (a warning).
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, killPid, run, type TestNetwork } from '../../support/netns';
import { REPO_ROOT } from '../../support/guest';
import { FERRY_BIN } from '../../support/e2e/ferry-process';

const ABSENT_ADDRESS = '192.0.2.99';

describe('e2e: --freebind binds forwards to an address the host lacks', function () {
  this.timeout(60000);
  let net: TestNetwork | null = null;
  let dir = '';
  const pids: number[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-freebind-'));
    fs.symlinkSync(FERRY_BIN, path.join(dir, 'passt'));
  });

  after(async () => {
    for (const pid of pids) killPid(pid, 'SIGKILL');
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  const passt = (name: string, extra: string[]) =>
    run(['ip', 'netns', 'exec', (net as TestNetwork).ns, path.join(dir, 'passt'), '--socket', path.join(dir, `${name}.socket`), '--pid', path.join(dir, `${name}.pid`), '-t', `${ABSENT_ADDRESS}/10020`, '-u', `${ABSENT_ADDRESS}/10021`, '--dns', '192.0.2.53', ...extra], { timeoutMs: 30000 });

  const listeningOnAbsent = async (): Promise<string> => (await run(['ip', 'netns', 'exec', (net as TestNetwork).ns, 'ss', '-Hltun', `src ${ABSENT_ADDRESS}`])).stdout;

  it('without --freebind the forward to an absent address is not bound (EADDRNOTAVAIL, a warning)', async () => {
    const result = await passt('plain', []);
    const pidFile = path.join(dir, 'plain.pid');
    if (fs.existsSync(pidFile)) pids.push(Number(fs.readFileSync(pidFile, 'utf8').trim()));
    expect(result.stderr).to.match(/tcp port 10020 .*EADDRNOTAVAIL/);
    expect(result.stderr).to.match(/-u 192\.0\.2\.99\/10021: .*EADDRNOTAVAIL/);
    expect(await listeningOnAbsent()).to.equal('');
    for (const pid of pids) killPid(pid, 'SIGTERM');
  });

  it('with --freebind passt listens on it, TCP and UDP', async () => {
    const result = await passt('freebind', ['--freebind']);
    expect(result.code, result.stderr).to.equal(0);
    pids.push(Number(fs.readFileSync(path.join(dir, 'freebind.pid'), 'utf8').trim()));
    const sockets = await listeningOnAbsent();
    expect(sockets).to.match(new RegExp(`tcp .*${ABSENT_ADDRESS.replace(/\./g, '\\.')}:10020 `));
    expect(sockets).to.match(new RegExp(`udp .*${ABSENT_ADDRESS.replace(/\./g, '\\.')}:10021 `));
  });
});
