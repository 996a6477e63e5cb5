/**
 * The systemd units and the QEMU vhost-user descriptor in systemd/:
 * `systemd-analyze verify` accepts them without a warning, `systemd-analyze
 * security` rates the service well, the settings ferry depends on are there,
 * ExecStart's options parse with ferry's own parser, the system call filter
 * allows what node and ferry call, and the JSON descriptor follows QEMU's
 * vhost-user.json schema.
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultControlPath } from '../../../../src/backend/control/control-protocol';
import { parseOptions } from '../../../../src/backend/cli/options';
import { allowedSyscalls, readUnit, serviceSyscallFilter, setting, UNIT_DIR } from '../../../support/systemd-units';
import { REPO_ROOT } from '../../../support/paths';


/** Skip when a tool is missing locally; under CI a missing tool is a failure. */
function requireCommand(ctx: Mocha.Context, command: string, debianPackage: string): void {
  if (spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0) return;
  if (process.env.CI === 'true') throw new Error(`${command} is missing under CI (Debian package ${debianPackage})`);
  console.warn(`    (skipping: ${command} not installed; Debian package ${debianPackage})`);
  ctx.skip();
}

/** Copies of the units in a temp dir with ExecStart's /usr/bin/ferry pointing at this checkout's bin/ferry.js (verify checks it exists). */
function unitsForVerify(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-units-'));
  for (const name of ['ferry@.socket', 'ferry@.service']) {
    const text = fs.readFileSync(path.join(UNIT_DIR, name), 'utf8').replace(/\/usr\/bin\/ferry\b/g, path.join(REPO_ROOT, 'bin', 'ferry.js'));
    fs.writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

describe('systemd units', function () {
  this.timeout(30000);

  it('systemd-analyze verify accepts both units without a single warning', function () {
    requireCommand(this, 'systemd-analyze', 'systemd');
    const dir = unitsForVerify();
    try {
      const result = spawnSync('systemd-analyze', ['verify', '--man=no', path.join(dir, 'ferry@vm1.socket'), path.join(dir, 'ferry@vm1.service')], { encoding: 'utf8', timeout: 20000 });
      expect(result.stderr, result.stderr).to.equal('');
      expect(result.status).to.equal(0);

      // The check is real: a misspelt setting is reported.
      fs.appendFileSync(path.join(dir, 'ferry@.service'), '\n[Service]\nNoNewPrivilege=yes\n');
      const bad = spawnSync('systemd-analyze', ['verify', '--man=no', path.join(dir, 'ferry@vm1.service')], { encoding: 'utf8', timeout: 20000 });
      expect(bad.stderr).to.match(/Unknown key( name)? 'NoNewPrivilege'/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('systemd-analyze security rates the service exposure at most 2.0', function () {
    requireCommand(this, 'systemd-analyze', 'systemd');
    const dir = unitsForVerify();
    try {
      const result = spawnSync('systemd-analyze', ['security', '--offline=yes', path.join(dir, 'ferry@vm1.service')], { encoding: 'utf8', timeout: 20000 });
      if (/unrecognized option|Unknown option/i.test(result.stderr)) this.skip(); // systemd < 250 has no --offline
      const match = /Overall exposure level for ferry@vm1\.service: ([0-9.]+)/.exec(result.stdout);
      expect(match, result.stdout + result.stderr).to.not.equal(null);
      expect(Number(match?.[1])).to.be.at.most(2.0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the socket: /run/ferry/%i.sock, connectable by a QEMU in group kvm, nobody else', () => {
    const socket = readUnit('ferry@.socket');
    expect(setting(socket, 'Socket', 'ListenStream')).to.equal('/run/ferry/%i.sock');
    expect(setting(socket, 'Socket', 'SocketMode')).to.equal('0660');
    expect(setting(socket, 'Socket', 'SocketGroup')).to.equal('kvm');
    expect(setting(socket, 'Socket', 'Accept')).to.equal('no');
    expect(setting(socket, 'Install', 'WantedBy')).to.equal('sockets.target');
  });

  it('the service: notify from the main process, hardened, no capabilities, W+X allowed for V8', () => {
    const service = readUnit('ferry@.service');
    const expected: Record<string, string> = {
      Type: 'notify',
      NotifyAccess: 'main',
      DynamicUser: 'yes',
      NoNewPrivileges: 'yes',
      CapabilityBoundingSet: '',
      AmbientCapabilities: '',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      PrivateDevices: 'yes',
      ProtectKernelTunables: 'yes',
      ProtectKernelModules: 'yes',
      ProtectKernelLogs: 'yes',
      ProtectControlGroups: 'yes',
      ProtectClock: 'yes',
      ProtectHostname: 'yes',
      RestrictAddressFamilies: 'AF_UNIX AF_INET AF_INET6 AF_NETLINK',
      RestrictNamespaces: 'yes',
      LockPersonality: 'yes',
      MemoryDenyWriteExecute: 'no',
      RestrictRealtime: 'yes',
      RestrictSUIDSGID: 'yes',
      SystemCallArchitectures: 'native',
      SystemCallErrorNumber: 'EPERM',
      UMask: '0077',
      RuntimeDirectory: 'ferry/%i',
    };
    for (const [key, value] of Object.entries(expected)) expect(setting(service, 'Service', key), key).to.equal(value);
    // The hardening keeps /proc/sys readable: ferry reads the ephemeral port range there.
    expect(setting(service, 'Service', 'ProcSubset')).to.equal(undefined);
    expect(setting(service, 'Unit', 'Requires')).to.equal('ferry@%i.socket');
  });

  it("ExecStart's options parse with ferry's parser; its control socket is ferryctl's default for the instance", () => {
    const service = readUnit('ferry@.service');
    const execStart = setting(service, 'Service', 'ExecStart') ?? '';
    const words = execStart.replace(/%i/g, 'vm1').split(/\s+/).filter((w) => w !== '$FERRY_ARGS');
    expect(words[0]).to.equal('/usr/bin/ferry');
    const parsed = parseOptions(words.slice(1));
    expect(parsed.action).to.equal('run');
    expect(parsed.options.logging.name).to.equal('vm1');
    expect(parsed.options.socketPath, 'the vhost-user socket comes from LISTEN_FDS').to.equal(null);
    expect(parsed.options.controlPath).to.equal(defaultControlPath('vm1', {}, 0));
    expect(path.dirname(parsed.options.controlPath ?? '')).to.equal(`/run/${setting(service, 'Service', 'RuntimeDirectory')?.replace('%i', 'vm1')}`);
  });

  it('the system call filter allows what node and ferry call', function () {
    requireCommand(this, 'systemd-analyze', 'systemd');
    const allowed = allowedSyscalls(serviceSyscallFilter());
    const needed = [
      // memory: V8 heap and JIT, guest memory regions
      'mmap', 'munmap', 'mprotect', 'madvise', 'mremap', 'brk',
      // vhost-user: fds over UNIX sockets, eventfds, epoll
      'socket', 'bind', 'listen', 'accept4', 'connect', 'sendmsg', 'recvmsg', 'getsockopt', 'setsockopt', 'eventfd2', 'epoll_create1', 'epoll_ctl', 'epoll_pwait', 'epoll_wait',
      // the stack's data path
      'sendmmsg', 'recvmmsg', 'sendto', 'recvfrom', 'splice', 'pipe2', 'ioctl', 'getsockname', 'getpeername', 'shutdown',
      // node: threads, timers, files, randomness, fd limit
      'clone3', 'clone', 'futex', 'rt_sigaction', 'rt_sigprocmask', 'statx', 'openat', 'read', 'write', 'readv', 'writev', 'close', 'getrandom', 'prlimit64', 'sched_getaffinity', 'timerfd_create', 'timerfd_settime', 'fchmod', 'fstat', 'newfstatat', 'memfd_create', 'pkey_alloc',
    ];
    expect(needed.filter((name) => !allowed.has(name))).to.deep.equal([]);
    // ...and keeps out what ferry never needs.
    for (const name of ['mount', 'init_module', 'kexec_load', 'reboot', 'setuid', 'ptrace', 'bpf', 'swapon', 'settimeofday']) expect(allowed.has(name), name).to.equal(false);
  });
});

describe('QEMU vhost-user descriptor', () => {
  const file = path.join(UNIT_DIR, 'vhost-user', '50-ferry.json');

  it('follows docs/interop/vhost-user.json: description, type net, absolute binary', () => {
    const descriptor = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    for (const key of Object.keys(descriptor)) expect(['description', 'type', 'binary', 'tags'], key).to.include(key);
    expect(descriptor.description).to.be.a('string').and.not.equal('');
    expect(descriptor.type).to.equal('net');
    expect(descriptor.binary).to.equal('/usr/bin/ferry');
  });

  it("matches what ferry --print-capabilities says", () => {
    const descriptor = JSON.parse(fs.readFileSync(file, 'utf8')) as { type: string };
    const result = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'ferry.js'), '--print-capabilities'], { encoding: 'utf8', timeout: 10000 });
    expect(result.status, result.stderr).to.equal(0);
    expect((JSON.parse(result.stdout) as { type: string }).type).to.equal(descriptor.type);
  });
});
