/**
 * Socket activation with a real guest: systemd-socket-activate (as systemd
 * would for ferry@.socket) listens on the vhost-user socket, starts ferry
 * on QEMU's first connection with the listening socket as fd 3
 * (LISTEN_FDS/LISTEN_PID), and ferry serves the guest through it: the guest
 * gets its DHCP lease. ferry's sd_notify messages (READY=1 with STATUS=,
 * then STOPPING=1 on SIGTERM) arrive on a NOTIFY_SOCKET the test listens
 * on. Everything runs in a namespace the test creates.
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type IoVecList, native } from '../../../src/sys/native';
import { bootGuest, commandAvailable, type Guest, REPO_ROOT, requireGuestPrerequisites } from '../../support/guest';
import { createTestNetwork, destroyTestNetwork, spawnIn, stopChild, TEST_NET, type TestNetwork } from '../../support/netns';
import { allowedSyscalls, serviceSyscallFilter } from '../../support/systemd-units';

/** sockaddr_un for a filesystem path: sun_family (host order) then the NUL-terminated path. */
function sockaddrUn(socketPath: string): Uint8Array {
  const pathBytes = Buffer.from(socketPath);
  if (pathBytes.length > 107) throw new Error(`socket path too long: ${socketPath}`);
  const address = Buffer.alloc(2 + pathBytes.length + 1);
  address.writeUInt16LE(native.constants.AF_UNIX, 0);
  pathBytes.copy(address, 2);
  return address;
}

/**
 * A NOTIFY_SOCKET stand-in: an AF_UNIX datagram socket bound to a path,
 * read by polling (every datagram is one sd_notify message).
 */
class NotifyListener {
  readonly messages: string[] = [];
  private readonly fd: number;
  private readonly buffer = new Uint8Array(4096);
  private readonly iov: IoVecList = { buffers: [this.buffer], offsets: Float64Array.of(0), lengths: Float64Array.of(4096), count: 1 };
  private readonly meta = new Int32Array(3);

  constructor(readonly socketPath: string) {
    this.fd = native.socket(native.constants.AF_UNIX, native.constants.SOCK_DGRAM, 0);
    native.bind(this.fd, sockaddrUn(socketPath));
  }

  /** Read every queued datagram (bounded per call). */
  private drain(): void {
    for (let i = 0; i < 64; i++) {
      const length = native.recvmsg(this.fd, this.iov, 0, null, this.meta);
      if (length < 0) return;
      this.messages.push(Buffer.from(this.buffer.subarray(0, length)).toString('utf8'));
    }
  }

  /** Resolves with the first message containing `line` as one of its lines; rejects after timeoutMs. */
  async waitFor(line: string, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.drain();
      const found = this.messages.find((m) => m.split('\n').includes(line));
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`no sd_notify message with ${line} within ${timeoutMs} ms; got ${JSON.stringify(this.messages)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  close(): void {
    native.close(this.fd);
    fs.rmSync(this.socketPath, { force: true });
  }
}

/** Collects a child's output for diagnostics. */
function captureOutput(child: ChildProcess): { text: () => string } {
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  return { text: () => output };
}

/** ferry as ferry@.service runs it, with its socket from systemd-socket-activate (which binds it and waits for the first connection). */
function activationCommand(socketPath: string, notifySocketPath: string): string[] {
  return [
    'systemd-socket-activate',
    '--listen', socketPath,
    '--setenv', `NOTIFY_SOCKET=${notifySocketPath}`,
    // The unit's DynamicUser= picks ferry's user; this test runs as root, and --runas 0 keeps that user as the unit would.
    process.execPath, path.join(REPO_ROOT, 'bin', 'ferry.js'), '--name', 'vm1', '--foreground', '--runas', '0',
  ];
}

/** Resolves once `file` exists (bounded by timeoutMs). */
async function waitForFile(file: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(file) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return fs.existsSync(file);
}

/** System call names in an `strace -f` log, from the exec of node on. */
export function tracedSyscalls(trace: string): Set<string> {
  const lines = trace.split('\n');
  const exec = lines.findIndex((line) => /execve\("[^"]*\/node"/.test(line));
  const names = new Set<string>();
  for (const line of lines.slice(Math.max(0, exec))) {
    const match = /^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]/.exec(line);
    if (match !== null) names.add(match[1]);
  }
  return names;
}

describe('e2e: systemd socket activation with a real guest', function () {
  this.timeout(180000);
  let net: TestNetwork | null = null;
  let guest: Guest | null = null;
  let ferry: ChildProcess | null = null;
  let notify: NotifyListener | null = null;
  let workDir: string | null = null;

  before(function () {
    requireGuestPrerequisites(this, commandAvailable('systemd-socket-activate') ? [] : ['systemd-socket-activate (Debian package systemd)']);
  });

  afterEach(async function () {
    if (guest) await guest.destroy();
    guest = null;
    if (ferry) await stopChild(ferry, 3000);
    ferry = null;
    if (net) await destroyTestNetwork(net);
    net = null;
    notify?.close();
    notify = null;
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    workDir = null;
  });

  it('ferry takes the listening socket from LISTEN_FDS, notifies READY=1 and STOPPING=1, and the guest gets its lease', async function () {
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-activation-'));
    const socketPath = path.join(workDir, 'vm1.sock');
    notify = new NotifyListener(path.join(workDir, 'notify.sock'));
    ferry = spawnIn(net.ns, activationCommand(socketPath, notify.socketPath));
    const output = captureOutput(ferry);
    const diagnostics = (): string => `--- ferry output ---\n${output.text()}\n${guest?.vm.diagnostics() ?? ''}`;

    // systemd-socket-activate binds the socket and waits for the first connection before starting ferry.
    expect(await waitForFile(socketPath, 10000), diagnostics()).to.equal(true);
    expect(notify.messages).to.deep.equal([]);

    guest = bootGuest({ net, nic: { kind: 'vhost-user', socketPath }, append: ['ferry.ipv6_wait=0'], workDir: path.join(workDir, 'guest') });

    const ready = await notify.waitFor('READY=1', 30000).catch((error: Error) => {
      throw new Error(`${error.message}\n${diagnostics()}`);
    });
    expect(ready).to.match(/^STATUS=Listening on fd 3$/m);
    // The process that notified is node, started in place of systemd-socket-activate (same PID).
    expect(output.text()).to.match(/listening for vhost-user front-ends on fd 3/);

    await guest.waitForMarker('virtio_net probed eth0', 60000);
    await guest.waitForMarker('lease ', 90000).catch((error: Error) => {
      throw new Error(`${error.message}\n${diagnostics()}`);
    });
    const lease = guest.lease();
    expect(lease, diagnostics()).to.not.equal(null);
    expect(lease?.address, 'the guest gets the host address of the test namespace').to.equal(TEST_NET.hostV4);
    expect(lease?.routers).to.deep.equal([TEST_NET.routerV4]);

    // SIGTERM, as systemctl stop sends: ferry says STOPPING=1 and exits cleanly.
    const exited = new Promise<number | null>((resolve) => ferry?.once('exit', (code) => resolve(code)));
    ferry.kill('SIGTERM');
    await notify.waitFor('STOPPING=1', 10000);
    expect(await exited, diagnostics()).to.equal(0);
    ferry = null;
  });

  it("every system call ferry makes while serving a guest is allowed by ferry@.service's SystemCallFilter", async function () {
    if (!commandAvailable('strace') || !commandAvailable('systemd-analyze')) {
      if (process.env.CI === 'true') throw new Error('strace and systemd-analyze are needed (Debian packages strace, systemd)');
      this.skip();
    }
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-activation-'));
    const socketPath = path.join(workDir, 'vm1.sock');
    const traceFile = path.join(workDir, 'trace');
    notify = new NotifyListener(path.join(workDir, 'notify.sock'));
    ferry = spawnIn(net.ns, ['strace', '-f', '-qq', '-o', traceFile, '--', ...activationCommand(socketPath, notify.socketPath)]);
    const output = captureOutput(ferry);
    const diagnostics = (): string => `--- ferry output ---\n${output.text()}\n${guest?.vm.diagnostics() ?? ''}`;
    expect(await waitForFile(socketPath, 20000), diagnostics()).to.equal(true);

    guest = bootGuest({ net, nic: { kind: 'vhost-user', socketPath }, append: ['ferry.ipv6_wait=0'], workDir: path.join(workDir, 'guest') });
    await notify.waitFor('READY=1', 60000);
    await guest.waitForMarker('lease ', 120000).catch((error: Error) => {
      throw new Error(`${error.message}\n${diagnostics()}`);
    });

    // strace's one child is node (systemd-socket-activate exec'd it in place): stop it as systemd would.
    const stracePid = ferry.pid ?? -1;
    const children = fs.readFileSync(`/proc/${stracePid}/task/${stracePid}/children`, 'utf8').trim().split(/\s+/).map(Number);
    expect(children.length, `children of strace: ${children.join(' ')}`).to.equal(1);
    expect(fs.readFileSync(`/proc/${children[0]}/cmdline`, 'utf8')).to.contain('bin/ferry.js');
    const exited = new Promise<number | null>((resolve) => ferry?.once('exit', (code) => resolve(code)));
    process.kill(children[0], 'SIGTERM');
    await notify.waitFor('STOPPING=1', 20000);
    expect(await exited, diagnostics()).to.equal(0);
    ferry = null;

    const used = tracedSyscalls(fs.readFileSync(traceFile, 'utf8'));
    expect(used.size, 'syscalls traced').to.be.greaterThan(20);
    expect([...used], 'the data path was traced').to.include.members(['epoll_pwait', 'recvmsg', 'mmap', 'eventfd2']);
    const allowed = allowedSyscalls(serviceSyscallFilter());
    expect([...used].filter((name) => !allowed.has(name)).sort(), 'syscalls ferry made that SystemCallFilter refuses').to.deep.equal([]);
  });
});
