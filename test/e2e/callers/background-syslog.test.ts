/**
 * ferry as passt, gone to the background once ready, logs to syslog as
 * passt does after it forks: a syslog socket the test binds (named to
 * ferry by FERRY_SYSLOG_SOCKET instead of /dev/log) receives the startup
 * line from the background process, whose PID is in the -P file; with
 * -l/--log-file the lines go to the file and none to syslog.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, killPid, run, type TestNetwork } from '../../support/netns';
import { REPO_ROOT } from '../../support/guest';
import { native } from '../../../src/sys/native';
import { FERRY_BIN } from '../../support/e2e/ferry-process';
import { waitUntil } from './dropin-tools';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;

function pathAddress(file: string): Uint8Array {
  const bytes = Buffer.from(file, 'utf8');
  const out = new Uint8Array(2 + bytes.length + 1);
  new DataView(out.buffer).setUint16(0, AF_UNIX, true);
  out.set(bytes, 2);
  return out;
}

describe('e2e: passt in the background logs to syslog', function () {
  this.timeout(60000);
  let net: TestNetwork | null = null;
  let dir = '';
  let receiver = -1;
  const received: string[] = [];
  const pids: number[] = [];

  const drain = (): void => {
    const buffer = new Uint8Array(16384);
    for (let i = 0; i < 256; i++) {
      const n = native.read(receiver, buffer, 0, buffer.length);
      if (n < 0) break;
      received.push(Buffer.from(buffer.subarray(0, n)).toString('utf8'));
    }
  };

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-syslog-'));
    fs.symlinkSync(FERRY_BIN, path.join(dir, 'passt'));
    receiver = native.socket(AF_UNIX, SOCK_DGRAM, 0);
    native.bind(receiver, pathAddress(path.join(dir, 'log')));
  });

  after(async () => {
    for (const pid of pids) killPid(pid, 'SIGKILL');
    if (receiver >= 0) native.close(receiver);
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  async function startPasst(name: string, extra: string[]): Promise<number> {
    const n = net as TestNetwork;
    const socketPath = path.join(dir, `${name}.socket`);
    const pidFile = path.join(dir, `${name}.pid`);
    const argv = ['ip', 'netns', 'exec', n.ns, 'env', `FERRY_SYSLOG_SOCKET=${path.join(dir, 'log')}`, path.join(dir, 'passt'), '--socket', socketPath, '--pid', pidFile, ...extra];
    const result = await run(argv, { timeoutMs: 30000 });
    expect(result.code, `${result.stdout}${result.stderr}`).to.equal(0);
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    pids.push(pid);
    expect(pid).to.not.equal(0);
    return pid;
  }

  it('the background passt\'s startup line reaches the syslog socket, tagged with its name and PID', async () => {
    const pid = await startPasst('vm1-net0', []);
    const tag = `vm1-net0[${pid}]: `;
    const found = await waitUntil(() => {
      drain();
      return received.some((line) => line.includes(tag) && line.includes('listening for a stream peer'));
    }, 10000);
    expect(found, received.join('\n')).to.equal(true);
    const line = received.find((l) => l.includes(tag) && l.includes('listening')) as string;
    // LOG_DAEMON | LOG_INFO
    expect(line.startsWith('<30>'), line).to.equal(true);
    killPid(pid, 'SIGTERM');
    expect(await waitUntil(() => !fs.existsSync(`/proc/${pid}`), 10000)).to.equal(true);
  });

  it('with --log-file the lines go to the file, none to syslog', async () => {
    const logFile = path.join(dir, 'vm2.log');
    received.length = 0;
    const pid = await startPasst('vm2-net0', ['--log-file', logFile]);
    expect(await waitUntil(() => fs.existsSync(logFile) && fs.readFileSync(logFile, 'utf8').includes('listening for a stream peer'), 10000)).to.equal(true);
    drain();
    expect(received.filter((line) => line.includes(`[${pid}]: `))).to.deep.equal([]);
    killPid(pid, 'SIGTERM');
  });
});
