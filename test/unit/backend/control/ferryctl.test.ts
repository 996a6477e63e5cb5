/**
 * ferryctl: argument parsing, table/JSON rendering, and whole runs against
 * a control server with a fake handler on a real UNIX socket, including the
 * one-line errors for a missing, stale or forbidden socket and error
 * statuses. One run goes through bin/ferryctl.js as a separate process.
 */
import { expect } from 'chai';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { type ControlServer, startControlServer } from '../../../../src/backend/control/control';
import { describeConnectError, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseFerryctlArgs, runFerryctl, USAGE } from '../../../../src/backend/control/ferryctl';
import { formatAge, formatBytes, formatEndpoint, formatFlows, formatForwards, formatStats, renderTable } from '../../../../src/backend/control/ferryctl-format';
import { FakeHandler, SAMPLE_FLOW } from '../../../support/fakes/control-fake-handler';
import { REPO_ROOT } from '../../../support/paths';


interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run ferryctl in-process with captured output. */
async function ferryctl(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const code = await runFerryctl(argv, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), env });
  return { code, stdout, stderr };
}

/** Run bin/ferryctl.js as a child process (optionally as another uid). */
function ferryctlProcess(argv: string[], options: { uid?: number; gid?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'ferryctl.js'), ...argv], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

describe('ferryctl: arguments', () => {
  it('parses every command', () => {
    const env = { FERRY_CONTROL: '' };
    const command = (argv: string[]): unknown => parseFerryctlArgs(['--control', '/x', ...argv], env).command;
    expect(command(['flows'])).to.deep.equal({ kind: 'listFlows', protocol: null });
    expect(command(['flows', 'udp'])).to.deep.equal({ kind: 'listFlows', protocol: 'udp' });
    expect(command(['stats'])).to.deep.equal({ kind: 'getStats' });
    expect(command(['forward', 'add', 'tcp', '8080:80'])).to.deep.equal({ kind: 'addForward', protocol: 'tcp', spec: '8080:80' });
    expect(command(['forward', 'remove', 'udp', '53'])).to.deep.equal({ kind: 'removeForward', protocol: 'udp', spec: '53' });
    expect(command(['forward', 'list'])).to.deep.equal({ kind: 'listForwards' });
    expect(command(['close', '12'])).to.deep.equal({ kind: 'closeFlow', id: 12 });
    expect(command(['log-level', 'debug'])).to.deep.equal({ kind: 'setLogLevel', level: 'debug' });
  });

  it('finds the socket: --control, then $FERRY_CONTROL, then the default for --name', () => {
    expect(parseFerryctlArgs(['--control=/a', 'stats'], { FERRY_CONTROL: '/b' }).controlPath).to.equal('/a');
    expect(parseFerryctlArgs(['stats'], { FERRY_CONTROL: '/b' }).controlPath).to.equal('/b');
    const root = process.getuid?.() === 0;
    const expected = root ? '/run/ferry/vm1/control.sock' : path.join(process.env.XDG_RUNTIME_DIR ?? `/run/user/${process.getuid?.()}`, 'ferry', 'vm1', 'control.sock');
    expect(parseFerryctlArgs(['--name', 'vm1', 'stats'], { FERRY_CONTROL: '/b', XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR }).controlPath).to.equal(expected);
    expect(parseFerryctlArgs(['--json', '--timeout', '2.5', 'stats'], {}).timeoutMs).to.equal(2500);
  });

  it('rejects bad usage with one line and exit status 2', async () => {
    const cases: [string[], RegExp][] = [
      [[], /^ferryctl: missing command \(try --help\)\n$/],
      [['frobnicate'], /^ferryctl: unknown command 'frobnicate'/],
      [['--bogus', 'stats'], /^ferryctl: unknown option '--bogus'/],
      [['--control'], /^ferryctl: --control: missing value\n$/],
      [['forward', 'add', 'icmp', '80'], /^ferryctl: forward: 'icmp' is not tcp or udp\n$/],
      [['forward', 'add', 'tcp'], /^ferryctl: forward add: missing port specification/],
      [['forward'], /^ferryctl: forward: missing add, remove or list\n$/],
      [['close', 'abc'], /^ferryctl: close: 'abc' is not a flow id\n$/],
      [['log-level', 'loud'], /^ferryctl: log-level: 'loud' is not one of error, warn, info, debug\n$/],
      [['stats', 'extra'], /^ferryctl: stats: unexpected argument 'extra'\n$/],
      [['--timeout', '0', 'stats'], /^ferryctl: --timeout: '0' is not a number of seconds/],
    ];
    for (const [argv, expected] of cases) {
      const result = await ferryctl(argv);
      expect(result.code, argv.join(' ')).to.equal(EXIT_USAGE);
      expect(result.stderr, argv.join(' ')).to.match(expected);
      expect(result.stdout).to.equal('');
    }
    const help = await ferryctl(['--help']);
    expect(help).to.deep.equal({ code: EXIT_OK, stdout: USAGE, stderr: '' });
  });
});

describe('ferryctl: formatting', () => {
  it('aligns tables: numbers right, text left, no trailing spaces', () => {
    expect(renderTable(['A', 'NUMBER'], [['x', '1'], ['longer', '12345']], ['left', 'right'])).to.equal('A       NUMBER\nx            1\nlonger   12345\n');
    expect(renderTable(['A'], [], [], 'nothing\n')).to.equal('nothing\n');
  });

  it('formats bytes, ages and endpoints', () => {
    expect([0, 1023, 1024, 1536, 5 * 1024 ** 3].map(formatBytes)).to.deep.equal(['0 B', '1023 B', '1.0 KiB', '1.5 KiB', '5.0 GiB']);
    expect([850, 42_000, 185_000, 7_620_000, 277_200_000].map(formatAge)).to.deep.equal(['850ms', '42s', '3m05s', '2h07m', '3d05h']);
    expect(formatEndpoint('192.0.2.1', 80)).to.equal('192.0.2.1:80');
    expect(formatEndpoint('2001:db8::2', 443)).to.equal('[2001:db8::2]:443');
    expect(formatEndpoint('2001:db8::2', 0)).to.equal('[2001:db8::2]');
  });

  it('renders flows, stats and forwards', () => {
    expect(formatFlows([SAMPLE_FLOW, { ...SAMPLE_FLOW, id: 3, protocol: 'icmp', kind: 'icmpv6', state: 'ACTIVE', inbound: false, guestPort: 0, remoteAddress: '198.51.100.7', remotePort: 0, bytesFromGuest: 64, bytesToGuest: 64, ageMs: 900, queuePair: 0 }])).to.equal(
      [
        'ID  KIND    STATE        DIR  GUEST            REMOTE             FROM GUEST  TO GUEST    AGE  QP',
        ' 3  icmpv6  ACTIVE       out  192.0.2.1        198.51.100.7             64 B      64 B  900ms   0',
        ' 7  tcp     ESTABLISHED  out  192.0.2.1:40000  [2001:db8::2]:443     1.2 KiB   4.7 GiB  1m05s   1',
        '',
      ].join('\n'),
    );
    expect(formatFlows([])).to.equal('no flows\n');
    expect(formatStats([{ name: 'b_total', labels: { z: '1', a: 'x' }, value: 3 }, { name: 'a_gauge', labels: {}, value: 0.123456789 }])).to.equal(
      ['METRIC                   VALUE', 'a_gauge               0.123457', 'b_total{a="x",z="1"}         3', ''].join('\n'),
    );
    const mappings = [1, 3, 5, 7, 9].map((p) => ({ hostPortFirst: p, hostPortLast: p, guestPortFirst: p }));
    expect(formatForwards([
      { protocol: 'tcp', spec: '8080-8081:80-81', bindAddress: '', interface: '', mappings: [{ hostPortFirst: 8080, hostPortLast: 8081, guestPortFirst: 80 }], runtime: true },
      { protocol: 'udp', spec: '::1%lo/1,3,5,7,9', bindAddress: '::1', interface: 'lo', mappings, runtime: false },
    ])).to.equal(
      [
        'PROTO  BIND    PORTS (HOST->GUEST)  ADDED BY      SPEC',
        'tcp    *       8080-8081->80-81     ferryctl      8080-8081:80-81',
        'udp    ::1%lo  1,3,5,7,(+1 more)    command line  ::1%lo/1,3,5,7,9',
        '',
      ].join('\n'),
    );
  });
});

describe('ferryctl: against a control server', function () {
  this.timeout(15000);
  let dir: string;
  let socketPath: string;
  let server: ControlServer | null = null;
  let handler: FakeHandler;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferryctl-'));
    socketPath = path.join(dir, 'control.sock');
    handler = new FakeHandler();
    server = await startControlServer(socketPath, handler, { handlerTimeoutMs: 300 });
  });

  afterEach(async () => {
    if (server !== null) await server.close();
    server = null;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('flows: a table by default, JSON with --json', async () => {
    const table = await ferryctl(['--control', socketPath, 'flows']);
    expect(table).to.deep.equal({ code: EXIT_OK, stdout: formatFlows([SAMPLE_FLOW]), stderr: '' });
    expect(table.stdout.split('\n')[1]).to.match(/^ 7 +tcp +ESTABLISHED +out +192\.0\.2\.1:40000 +\[2001:db8::2\]:443 +1\.2 KiB +4\.7 GiB +1m05s +1$/);
    const json = await ferryctl(['--json', '--control', socketPath, 'flows', 'tcp']);
    expect(json.code).to.equal(EXIT_OK);
    expect(JSON.parse(json.stdout)).to.deep.equal({ status: 'OK', message: '', flows: [SAMPLE_FLOW] });
    const none = await ferryctl(['--control', socketPath, 'flows', 'udp']);
    expect(none.stdout).to.equal('no flows\n');
    expect(handler.calls).to.deep.equal(['listFlows null', 'listFlows tcp', 'listFlows udp']);
  });

  it('stats as a table and as JSON', async () => {
    const table = await ferryctl(['--control', socketPath, 'stats']);
    expect(table.stdout).to.equal(['METRIC                                           VALUE', 'ferry_flows{protocol="tcp",state="established"}    1.5', 'ferry_rx_frames_total{queue_pair="0"}               42', ''].join('\n'));
    const json = await ferryctl(['--control', socketPath, '--json', 'stats']);
    expect(JSON.parse(json.stdout).stats).to.deep.equal([
      { name: 'ferry_rx_frames_total', labels: { queue_pair: '0' }, value: 42 },
      { name: 'ferry_flows', labels: { protocol: 'tcp', state: 'established' }, value: 1.5 },
    ]);
  });

  it('forward add, list and remove; errors from the daemon are one line with exit status 1', async () => {
    const added = await ferryctl(['--control', socketPath, 'forward', 'add', 'tcp', '8080:80']);
    expect(added).to.deep.equal({
      code: EXIT_OK,
      stdout: ['forwarding tcp 8080:80', 'PROTO  BIND  PORTS (HOST->GUEST)  ADDED BY  SPEC', 'tcp    *     8080->80             ferryctl  8080:80', ''].join('\n'),
      stderr: '',
    });
    const again = await ferryctl(['--control', socketPath, 'forward', 'add', 'tcp', '8080:80']);
    expect(again).to.deep.equal({ code: EXIT_FAILED, stdout: '', stderr: 'ferryctl: conflict: tcp port 8080 is already forwarded\n' });
    const bad = await ferryctl(['--control', socketPath, 'forward', 'add', 'udp', '80:81-82']);
    expect(bad).to.deep.equal({ code: EXIT_FAILED, stdout: '', stderr: "ferryctl: bad request: ranges 80-80 and 81-82 differ in length in '80:81-82'\n" });
    const listed = await ferryctl(['--control', socketPath, '--json', 'forward', 'list']);
    expect(JSON.parse(listed.stdout).forwards).to.deep.equal([
      { protocol: 'tcp', spec: '8080:80', bindAddress: '', interface: '', mappings: [{ hostPortFirst: 8080, hostPortLast: 8080, guestPortFirst: 80 }], runtime: true },
    ]);
    const removed = await ferryctl(['--control', socketPath, 'forward', 'remove', 'tcp', '8080']);
    expect(removed).to.deep.equal({ code: EXIT_OK, stdout: 'no longer forwarding tcp 8080\nno forwards\n', stderr: '' });
    const gone = await ferryctl(['--control', socketPath, '--json', 'forward', 'remove', 'tcp', '8080']);
    expect(gone.code).to.equal(EXIT_FAILED);
    expect(JSON.parse(gone.stdout)).to.deep.equal({ status: 'NOT_FOUND', message: 'tcp port 8080 is not forwarded' });
    expect(gone.stderr).to.equal('ferryctl: not found: tcp port 8080 is not forwarded\n');
  });

  it('close and log-level', async () => {
    expect(await ferryctl(['--control', socketPath, 'close', '7'])).to.deep.equal({ code: EXIT_OK, stdout: 'flow 7 closed\n', stderr: '' });
    expect(await ferryctl(['--control', socketPath, 'close', '8'])).to.deep.equal({ code: EXIT_FAILED, stdout: '', stderr: 'ferryctl: not found: no flow 8\n' });
    expect(await ferryctl(['--control', socketPath, 'log-level', 'debug'])).to.deep.equal({ code: EXIT_OK, stdout: 'log level set to debug\n', stderr: '' });
    expect(handler.calls).to.deep.equal(['closeFlow 7', 'closeFlow 8', 'setLogLevel debug']);
  });

  it('reports a daemon-side failure and a hung daemon', async () => {
    handler.failNext = new Error('worker 1 did not answer');
    expect(await ferryctl(['--control', socketPath, 'stats'])).to.deep.equal({ code: EXIT_FAILED, stdout: '', stderr: 'ferryctl: internal: worker 1 did not answer\n' });
    // A server that accepts and never answers: ferryctl's own timeout.
    const silentPath = path.join(dir, 'silent.sock');
    const silent = net.createServer((socket) => {
      // Read and ignore, so the socket notices ferryctl hanging up.
      socket.resume();
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => silent.listen(silentPath, resolve));
    try {
      const result = await ferryctl(['--control', silentPath, '--timeout', '0.3', 'stats']);
      expect(result).to.deep.equal({ code: EXIT_FAILED, stdout: '', stderr: `ferryctl: no answer from ferry on ${silentPath} within 0.3 s\n` });
    } finally {
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it('one-line errors for a missing socket, a stale one and a non-socket', async () => {
    const missing = path.join(dir, 'missing.sock');
    expect(await ferryctl(['--control', missing, 'flows'])).to.deep.equal({
      code: EXIT_FAILED,
      stdout: '',
      stderr: `ferryctl: no ferry control socket at ${missing} (is ferry running with --control ${missing}?)\n`,
    });
    // A socket file nobody listens on any more (ferry was killed).
    const stalePath = path.join(dir, 'stale.sock');
    const stale = net.createServer();
    await new Promise<void>((resolve) => stale.listen(stalePath, resolve));
    fs.renameSync(stalePath, `${stalePath}.keep`);
    await new Promise<void>((resolve) => stale.close(() => resolve()));
    fs.renameSync(`${stalePath}.keep`, stalePath);
    expect(await ferryctl(['--control', stalePath, 'flows'])).to.deep.equal({
      code: EXIT_FAILED,
      stdout: '',
      stderr: `ferryctl: connection refused on ${stalePath} (ferry is not running; the socket file is stale)\n`,
    });
    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, '');
    const result = await ferryctl(['--control', plain, 'flows']);
    expect(result.code).to.equal(EXIT_FAILED);
    expect(result.stderr).to.equal(`ferryctl: connection refused on ${plain} (ferry is not running; the socket file is stale)\n`);
    expect(describeConnectError('/p', Object.assign(new Error('x'), { code: 'ENOTSOCK' }))).to.equal('/p is not a socket');
  });

  it('bin/ferryctl.js: real output and exit codes; another user gets "permission denied"', async function () {
    const ok = await ferryctlProcess(['--control', socketPath, 'flows']);
    expect(ok).to.deep.equal({ code: 0, stdout: formatFlows([SAMPLE_FLOW]), stderr: '' });
    const failed = await ferryctlProcess(['--control', socketPath, 'close', '99']);
    expect(failed).to.deep.equal({ code: 1, stdout: '', stderr: 'ferryctl: not found: no flow 99\n' });
    const usage = await ferryctlProcess(['nope']);
    expect(usage.code).to.equal(2);
    if (process.getuid?.() !== 0) return;
    // The directory is open to all; the 0600 socket itself keeps uid 65534 out.
    fs.chmodSync(dir, 0o755);
    const denied = await ferryctlProcess(['--control', socketPath, 'flows'], { uid: 65534, gid: 65534 });
    expect(denied).to.deep.equal({
      code: 1,
      stdout: '',
      stderr: `ferryctl: permission denied on ${socketPath} (the control socket is owner-only: run ferryctl as the user running ferry)\n`,
    });
  });
});
