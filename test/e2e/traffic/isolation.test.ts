/**
 * ferry confines itself once set up: read from outside, through
 * /proc/PID, while it serves. A daemon started as root serving a real guest
 * under QEMU, a `ferry pasta` serving a command and a `ferry stream`, each
 * run as nobody with no capability, no_new_privs, a seccomp filter and an
 * empty root; the guest still gets its lease and pings through the confined
 * daemon, the command reaches a server through pasta; every system
 * call ferry makes after confining itself (under strace, with the filter in
 * log mode) is on the allow-list; and the filter itself kills a process
 * that makes a call outside the list, or has the kernel log it in log mode.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../../../src/sys/native';
import { bootGuest, commandAvailable, type Guest, pingScript, REPO_ROOT, requireGuestPrerequisites } from '../../support/guest';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, run, spawnIn, stopChild, TEST_NET, type TestNetwork } from '../../support/netns';
import { FERRY_BIN, FERRY_CLI_MODULE, type FerryProcess, startFerry } from '../../support/e2e/ferry-process';

const TEST_DNS_V4 = '192.0.2.53';
/** The guest pings a server behind the uplink and the router, through ferry's ICMP sockets. */
const GUEST_SCRIPT = pingScript([TEST_NET.serverV4, TEST_NET.routerV4]);

/** The /proc/PID/status fields the confinement sets. */
interface Confinement {
  uid: number[];
  gid: number[];
  capEff: bigint;
  capPrm: bigint;
  capInh: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs: number;
  seccomp: number;
}

/** Parses /proc/PID/status. */
export function confinementOf(status: string): Confinement {
  const field = (name: string): string => {
    const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status);
    if (m === null) throw new Error(`no ${name} in /proc/PID/status`);
    return m[1].trim();
  };
  const ids = (name: string): number[] => field(name).split(/\s+/).map(Number);
  const caps = (name: string): bigint => BigInt(`0x${field(name)}`);
  return {
    uid: ids('Uid'),
    gid: ids('Gid'),
    capEff: caps('CapEff'),
    capPrm: caps('CapPrm'),
    capInh: caps('CapInh'),
    capBnd: caps('CapBnd'),
    capAmb: caps('CapAmb'),
    noNewPrivs: Number(field('NoNewPrivs')),
    seccomp: Number(field('Seccomp')),
  };
}

/** Asserts what passt's isolation gives: no root, no capability, no_new_privs, a seccomp filter. */
function expectConfined(pid: number, what: string): void {
  const c = confinementOf(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  expect(c.uid.every((id) => id !== 0), `${what}: uids ${c.uid.join(' ')}`).to.equal(true);
  expect(c.gid.every((id) => id !== 0), `${what}: gids ${c.gid.join(' ')}`).to.equal(true);
  expect({ eff: c.capEff, prm: c.capPrm, inh: c.capInh, bnd: c.capBnd, amb: c.capAmb }, `${what}: capabilities`).to.deep.equal({
    eff: 0n,
    prm: 0n,
    inh: 0n,
    bnd: 0n,
    amb: 0n,
  });
  expect(c.noNewPrivs, `${what}: NoNewPrivs`).to.equal(1);
  expect(c.seccomp, `${what}: Seccomp (2 = filter)`).to.equal(2);
  // Its root directory, as the kernel shows it to us: empty.
  expect(fs.readdirSync(`/proc/${pid}/root`), `${what}: entries of /proc/PID/root`).to.deep.equal([]);
  expect(() => fs.statSync(`/proc/${pid}/root/etc/passwd`), `${what}: /etc/passwd through its root`).to.throw(/ENOENT/);
}

/** Resolves once `predicate` holds (polled, bounded by timeoutMs); rejects with `what` otherwise. */
async function waitUntil(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * System call names in an `strace -f` log after the line installing ferry's
 * filter on every thread (TSYNC; the cleanup helper installs its own, without).
 */
export function syscallsAfterSeccomp(trace: string): Set<string> {
  const lines = trace.split('\n');
  const installed = lines.findIndex((line) => /seccomp\(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC/.test(line));
  const names = new Set<string>();
  if (installed === -1) return names;
  for (const line of lines.slice(installed + 1)) {
    const match = /^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]/.exec(line);
    if (match !== null) names.add(match[1]);
  }
  return names;
}

describe('e2e: ferry confines itself (isolation)', function () {
  this.timeout(240000);
  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let traced: ChildProcess | null = null;
  let server: ChildProcess | null = null;
  let workDir = '';

  before(function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    if (process.getuid?.() !== 0) {
      if (process.env.CI === 'true') throw new Error('the isolation tests start ferry as root');
      this.skip();
    }
  });

  beforeEach(function () {
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-isolation-'));
  });

  afterEach(async function () {
    if (guest) await guest.destroy();
    if (ferry) await ferry.stop();
    if (traced) await stopChild(traced, 3000);
    if (server) await stopChild(server, 3000);
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    guest = null;
    ferry = null;
    traced = null;
    server = null;
    net = null;
  });

  it('the daemon serving a guest runs as nobody, without capabilities, with seccomp and an empty root; the guest gets its lease and pings through it', async function () {
    net = await createTestNetwork();
    const socketPath = path.join(workDir, 'ferry.sock');
    ferry = await startFerry(net.ns, socketPath, ['--dns', TEST_DNS_V4]);
    const pid = ferry.child.pid ?? -1;
    await ferry.waitForLog(/isolation: seccomp: allow-list, calls outside it kill the process/, 10000);
    expectConfined(pid, 'ferry');

    guest = bootGuest({ net, nic: { kind: 'vhost-user', socketPath }, testScript: GUEST_SCRIPT, append: ['ferry.ipv6_wait=0'], timeoutMs: 100000 });
    const diagnostics = (): string => `${guest?.vm.diagnostics(60) ?? ''}\n--- ferry log ---\n${ferry?.log() ?? ''}`;
    const exitCode = await guest.waitDone(90000).catch((error: Error) => {
      throw new Error(`${error.message}\n${diagnostics()}`);
    });
    expect(exitCode, diagnostics()).to.equal(0);
    expect(guest.lease()?.address, diagnostics()).to.equal(TEST_NET.hostV4);
    for (const target of [TEST_NET.serverV4, TEST_NET.routerV4]) {
      expect(guest.pings().get(target)?.received ?? 0, `${target}\n${diagnostics()}`).to.be.greaterThan(0);
    }
    // Still confined, still alive after serving; SIGTERM ends it cleanly.
    expectConfined(pid, 'ferry after serving');
    expect(await ferry.stop(), diagnostics()).to.equal(0);
    ferry = null;
  });

  it('every system call the confined daemon makes while serving a guest is on the seccomp allow-list (strace, --seccomp-log)', async function () {
    if (!commandAvailable('strace')) {
      if (process.env.CI === 'true') throw new Error('strace is needed (Debian package strace)');
      this.skip();
    }
    net = await createTestNetwork();
    const socketPath = path.join(workDir, 'ferry.sock');
    const traceFile = path.join(workDir, 'trace');
    traced = spawnIn(net.ns, ['strace', '-f', '-qq', '-o', traceFile, '--', process.execPath, FERRY_BIN, '--socket-path', socketPath, '--dns', TEST_DNS_V4, '--seccomp-log'], { cwd: REPO_ROOT });
    let output = '';
    traced.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
    traced.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
    const diagnostics = (): string => `${guest?.vm.diagnostics(60) ?? ''}\n--- ferry log ---\n${output}`;
    await waitUntil(() => /listening for vhost-user front-ends/.test(output), 60000, `ferry did not listen:\n${output}`);
    expect(output).to.match(/isolation: seccomp: allow-list, calls outside it logged/);

    guest = bootGuest({ net, nic: { kind: 'vhost-user', socketPath }, testScript: GUEST_SCRIPT, append: ['ferry.ipv6_wait=0'], timeoutMs: 150000 });
    const exitCode = await guest.waitDone(140000).catch((error: Error) => {
      throw new Error(`${error.message}\n${diagnostics()}`);
    });
    expect(exitCode, diagnostics()).to.equal(0);
    await guest.destroy();
    guest = null;

    // strace's one child is node: stop it as a user would, then read the trace.
    const stracePid = traced.pid ?? -1;
    const children = fs.readFileSync(`/proc/${stracePid}/task/${stracePid}/children`, 'utf8').trim().split(/\s+/).map(Number);
    expect(children.length, `children of strace: ${children.join(' ')}`).to.equal(1);
    const exited = new Promise<number | null>((resolve) => traced?.once('exit', (code) => resolve(code)));
    process.kill(children[0], 'SIGTERM');
    expect(await exited, diagnostics()).to.equal(0);
    traced = null;

    const used = syscallsAfterSeccomp(fs.readFileSync(traceFile, 'utf8'));
    expect([...used], 'the data path was traced after confinement').to.include.members(['epoll_pwait', 'recvmsg', 'sendmsg', 'mmap', 'socket']);
    const allowed = new Set(native.isolationSyscalls(false));
    expect([...used].filter((name) => !allowed.has(name)).sort(), 'calls made after confinement that the allow-list lacks').to.deep.equal([]);
  });

  it('ferry pasta serving a command runs as nobody, without capabilities, with seccomp and an empty root; the command reaches a server through it', async function () {
    if (!canCreateNamespaces() || !commandAvailable('unshare')) {
      if (process.env.CI === 'true') throw new Error('namespaces and unshare are needed');
      this.skip();
    }
    net = await createTestNetwork();
    const port = 40007;
    server = spawnIn(net.peerNs, [process.execPath, '-e', `require('net').createServer((s) => s.pipe(s)).listen(${port}, '${TEST_NET.serverV4}', () => console.log('ready'))`]);
    let serverOutput = '';
    server.stdout?.setEncoding('utf8').on('data', (d: string) => (serverOutput += d));
    await waitUntil(() => serverOutput.includes('ready'), 10000, 'the echo server did not start');

    // The command runs as root of a user namespace nobody owns: it must be able to look into the scratch directory.
    fs.chmodSync(workDir, 0o755);
    const marker = path.join(workDir, 'go');
    const client = `const c = require('net').connect(${port}, '${TEST_NET.serverV4}', () => c.end('through ferry')); let d = ''; c.on('data', (x) => (d += x)); c.on('close', () => console.log('REPLY ' + d)); setTimeout(() => process.exit(3), 8000).unref();`;
    // The command waits (bounded) until the test has looked at ferry, then talks through it.
    const command = `i=0; while [ ! -e ${marker} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; exec "$0" -e "$1"`;
    const pasta = spawnIn(net.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '--dns', TEST_DNS_V4, '-d', '--', '/bin/sh', '-c', command, process.execPath, client], { cwd: REPO_ROOT });
    traced = pasta;
    let output = '';
    pasta.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
    pasta.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
    const exited = new Promise<number | null>((resolve) => pasta.once('exit', (code) => resolve(code)));
    await waitUntil(() => /isolation: seccomp: allow-list, calls outside it kill the process/.test(output), 20000, `ferry pasta did not confine itself:\n${output}`);
    expectConfined(pasta.pid ?? -1, 'ferry pasta');
    fs.writeFileSync(marker, '');
    expect(await exited, output).to.equal(0);
    traced = null;
    expect(output).to.include('REPLY through ferry');
  });

  it('ferry stream runs confined too, and its socket file is still removed when it stops', async function () {
    net = await createTestNetwork();
    const socketPath = path.join(workDir, 'stream.sock');
    const stream = spawnIn(net.ns, [process.execPath, FERRY_BIN, 'stream', '--socket', socketPath, '--dns', TEST_DNS_V4], { cwd: REPO_ROOT });
    traced = stream;
    let output = '';
    stream.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
    stream.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
    const exited = new Promise<number | null>((resolve) => stream.once('exit', (code) => resolve(code)));
    await waitUntil(() => /listening for a stream peer/.test(output), 20000, `ferry stream did not listen:\n${output}`);
    expectConfined(stream.pid ?? -1, 'ferry stream');
    expect(fs.existsSync(socketPath)).to.equal(true);
    stream.kill('SIGTERM');
    expect(await exited, output).to.equal(0);
    traced = null;
    // Removed by the helper forked before confinement (ferry itself no longer sees the path).
    await waitUntil(() => !fs.existsSync(socketPath), 5000, 'the socket file was not removed');
  });

  it('the allow-list is enforced: a call outside it kills the process, and in log mode the kernel logs it and the call goes through', async function () {
    const probe = (logOnly: boolean): string =>
      [
        `const native = require(${JSON.stringify(path.join(REPO_ROOT, 'build', 'Release', 'ferry_native.node'))});`,
        `native.isolationSeccomp(false, ${logOnly});`,
        // chdir is not on the list: ferry never changes directory once set up.
        "process.chdir('/');",
        "console.log('chdir went through');",
      ].join('\n');
    expect(native.isolationSyscalls(false)).to.not.include('chdir');

    const killed = await run([process.execPath, '-e', probe(false)], { timeoutMs: 20000 });
    expect(killed.signal, `${killed.stdout}${killed.stderr}`).to.equal('SIGSYS');
    expect(killed.stdout).to.not.include('chdir went through');

    const child = spawn(process.execPath, ['-e', probe(true)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(code).to.equal(0);
    expect(stdout).to.include('chdir went through');
    // The kernel's audit record for it (SECCOMP_RET_LOG: code=0x7ffc0000), x86_64's chdir is 80, aarch64's 49.
    const chdirNumber = process.arch === 'arm64' ? 49 : 80;
    const logged = new RegExp(`type=1326 .*pid=${child.pid} .*syscall=${chdirNumber} .*code=0x7ffc0000`);
    let kernelLog = '';
    for (let attempt = 0; attempt < 20 && !logged.test(kernelLog); attempt++) {
      kernelLog = (await run(['dmesg'], { timeoutMs: 10000 })).stdout;
      if (!logged.test(kernelLog)) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(kernelLog, 'the kernel log has the seccomp record of the probe').to.match(logged);
  });
});
