/**
 * A private libvirt for e2e tests: Debian's monolithic libvirtd (QEMU driver)
 * started by the test inside its network namespace and inside a private
 * mount namespace in which /etc/libvirt, /run, /var/lib, /var/log and
 * /var/cache are directories of a temporary work dir. The machine's own
 * libvirt state (if any) is never seen or touched, and QEMU, which libvirtd
 * spawns itself, runs in the test namespace next to ferry.
 *
 * Also: the tested domain XML read from docs/libvirt.md, a console log file
 * followed like QEMU's serial output, and bounded virsh calls.
 */
import { type ChildProcess, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { type CommandResult, killPid, run, spawnIn, stopChild } from './netns';
import { commandAvailable, REPO_ROOT } from './guest';

/** The user and group libvirt 9.0 runs QEMU as (and refuses to start without). */
export const LIBVIRT_QEMU_USER = 'libvirt-qemu';

/** The documentation file whose marked XML block the libvirt e2e test boots. */
export const LIBVIRT_DOC = path.join(REPO_ROOT, 'docs', 'libvirt.md');

/** The HTML comment that marks the tested domain's ```xml block in LIBVIRT_DOC. */
const TESTED_DOMAIN_MARKER = '<!-- tested-domain:';

/**
 * qemu.conf of the private instance: QEMU as libvirt-qemu (as on Debian),
 * its stderr written to a file by libvirtd (no virtlogd), and nothing that
 * needs a systemd host or would change files the test does not own: no
 * cgroups (the namespace's /sys has none), no per-domain mount namespace, no
 * security driver, no chown of the domain's files (so the ferry socket's own
 * group and mode are what let QEMU in).
 */
const QEMU_CONF = `user = "${LIBVIRT_QEMU_USER}"
group = "${LIBVIRT_QEMU_USER}"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
`;

/** libvirtd.conf: warnings and errors on stderr (kept for failure messages). */
const LIBVIRTD_CONF = 'log_outputs = "3:stderr"\n';

/**
 * Runs in the namespace before exec'ing libvirtd ($1 = work dir), whose mount
 * namespace unshare made private (nothing propagates to the machine): lays
 * the work dir's subdirectories over libvirt's fixed system paths, and hides
 * /dev/kvm behind an empty file. The domain runs under TCG anyway, and libvirt
 * must see KVM the same way when probing QEMU (as root) and when checking the
 * cache (can libvirt-qemu open /dev/kvm?): a root-only /dev/kvm made every
 * capability lookup invalidate the cache and reprobe QEMU (4 s each), and
 * `virsh create` took 50 s.
 */
const MOUNT_AND_EXEC = [
  'set -e',
  'mount --bind "$1/etc" /etc/libvirt',
  'mount --bind "$1/run" /run',
  'for d in lib log cache; do mount --bind "$1/var/$d" "/var/$d"; done',
  'if [ -e /dev/kvm ]; then : >"$1/no-kvm"; chmod 0 "$1/no-kvm"; mount --bind "$1/no-kvm" /dev/kvm; fi',
  'exec libvirtd --config "$1/libvirtd.conf"',
].join('\n');

/** True if a user and a group named `name` exist. */
function userAndGroupExist(name: string): boolean {
  const user = spawnSync('getent', ['passwd', name], { stdio: 'ignore' }).status === 0;
  const group = spawnSync('getent', ['group', name], { stdio: 'ignore' }).status === 0;
  return user && group;
}

/** What the libvirt e2e test needs beyond a real guest's prerequisites (empty when all is there). */
export function missingLibvirtPrerequisites(): string[] {
  const missing: string[] = [];
  for (const [cmd, pkg] of [['libvirtd', 'libvirt-daemon'], ['virsh', 'libvirt-clients'], ['unshare', 'util-linux']] as const) {
    if (!commandAvailable(cmd)) missing.push(`${cmd} (Debian package ${pkg})`);
  }
  if (!fs.existsSync('/etc/libvirt')) missing.push('/etc/libvirt (Debian package libvirt-daemon)');
  if (!userAndGroupExist(LIBVIRT_QEMU_USER)) missing.push(`the ${LIBVIRT_QEMU_USER} user and group (scripts/install-test-deps.sh)`);
  return missing;
}

/** Numeric uid and gid of `name` (from getent), or null. */
export function userIds(name: string): { uid: number; gid: number } | null {
  const out = spawnSync('getent', ['passwd', name], { encoding: 'utf8' });
  const fields = (out.stdout ?? '').trim().split(':');
  if (out.status !== 0 || fields.length < 4) return null;
  return { uid: Number(fields[2]), gid: Number(fields[3]) };
}

/** Numeric id of group `name` (from getent), or null. */
export function groupId(name: string): number | null {
  const out = spawnSync('getent', ['group', name], { encoding: 'utf8' });
  const fields = (out.stdout ?? '').trim().split(':');
  if (out.status !== 0 || fields.length < 3) return null;
  return Number(fields[2]);
}

/**
 * The tested domain XML from `markdown`: the first ```xml block after the
 * tested-domain marker, with every `from` of `substitutions` replaced by its
 * `to`. Throws if the block is missing or a `from` does not occur in it
 * (the documentation and the test must not drift apart silently).
 */
export function testedDomainXml(markdown: string, substitutions: [from: string, to: string][]): string {
  const marker = markdown.indexOf(TESTED_DOMAIN_MARKER);
  if (marker < 0) throw new Error(`no "${TESTED_DOMAIN_MARKER}" marker`);
  const block = /```xml\n([\s\S]*?)```/.exec(markdown.slice(marker));
  if (block === null) throw new Error('no ```xml block after the tested-domain marker');
  let xml = block[1];
  for (const [from, to] of substitutions) {
    if (!xml.includes(from)) throw new Error(`the tested domain has no ${from}`);
    xml = xml.split(from).join(to);
  }
  return xml;
}

/** Text escaped for an XML attribute value or element content. */
export function xmlEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/** A libvirtd started by startLibvirtd(). */
export class Libvirtd {
  private output = '';
  private readonly exited: Promise<void>;

  constructor(readonly child: ChildProcess, readonly workDir: string) {
    this.child.stdout?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
    this.exited = new Promise((resolve) => this.child.once('close', () => resolve()));
  }

  /** Path of libvirtd's read-write socket as seen from outside its mount namespace. */
  get socketPath(): string {
    return path.join(this.workDir, 'run', 'libvirt', 'libvirt-sock');
  }

  /** The connection URI virsh uses for this instance (and no other). */
  get uri(): string {
    return `qemu:///system?socket=${this.socketPath}`;
  }

  /** True while libvirtd runs. */
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** What libvirtd wrote on stdout and stderr so far. */
  log(): string {
    return this.output;
  }

  /** `virsh -c URI ...args`, killed after timeoutMs (a hanging back-end hangs virsh create). */
  virsh(args: string[], timeoutMs: number): Promise<CommandResult> {
    return run(['virsh', '-q', '-c', this.uri, ...args], { timeoutMs });
  }

  /**
   * PID of domain `name`'s QEMU from libvirt's pid file, or null. The PID is
   * remembered: QEMU is daemonized (not our child), so if the test process
   * exits without cleaning up, an exit hook kills it.
   */
  qemuPid(name: string): number | null {
    try {
      const pid = Number(fs.readFileSync(path.join(this.workDir, 'run', 'libvirt', 'qemu', `${name}.pid`), 'utf8').trim());
      if (!Number.isInteger(pid) || pid <= 0) return null;
      rememberQemu(pid);
      return pid;
    } catch {
      return null;
    }
  }

  /** libvirt's log of domain `name` (QEMU's command line and stderr), or ''. */
  qemuLog(name: string): string {
    try {
      return fs.readFileSync(path.join(this.workDir, 'var', 'log', 'libvirt', 'qemu', `${name}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /**
   * Waits until `virsh version` answers, which is once the QEMU driver has
   * probed QEMU's capabilities; rejects with libvirtd's log after timeoutMs or
   * if libvirtd exits.
   */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!fs.existsSync(this.socketPath)) {
      if (!this.alive) throw new Error(`libvirtd exited (${this.child.exitCode ?? this.child.signalCode}):\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`libvirtd made no socket within ${timeoutMs} ms:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await this.virsh(['version'], Math.max(1000, deadline - Date.now()));
    if (r.code !== 0 || !/QEMU/.test(r.stdout)) {
      throw new Error(`virsh version: ${r.code ?? r.signal} ${r.stdout.trim()} ${r.stderr.trim()}\n--- libvirtd ---\n${this.output}`);
    }
  }

  /**
   * Ends domain `name` for sure: `virsh destroy` (bounded), then SIGKILL to
   * its QEMU by PID if it is still alive. Never rejects.
   */
  async destroyDomain(name: string, qemuPid: number | null): Promise<void> {
    if (this.alive) await this.virsh(['destroy', name], 10000).catch(() => undefined);
    if (qemuPid !== null && processExists(qemuPid)) {
      killPid(qemuPid, 'SIGKILL');
      await waitUntil(() => !processExists(qemuPid), 3000);
    }
  }

  /** Stops libvirtd by PID (SIGTERM, then SIGKILL) and resolves once it has exited. */
  async stop(): Promise<void> {
    await stopChild(this.child, 5000);
    await this.exited;
  }
}

/** QEMU PIDs read from libvirt's pid files, killed at exit if still QEMU and alive. */
const knownQemuPids = new Set<number>();
let exitHookInstalled = false;

function rememberQemu(pid: number): void {
  knownQemuPids.add(pid);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const qemu of knownQemuPids) {
      // The PID may have been reused since: kill it only if it is still a QEMU.
      let cmdline = '';
      try {
        cmdline = fs.readFileSync(`/proc/${qemu}/cmdline`, 'utf8');
      } catch {
        continue;
      }
      if (cmdline.includes('qemu-system')) killPid(qemu, 'SIGKILL');
    }
  });
}

/** True if a process with this PID exists (and is not a zombie). */
export function processExists(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** Resolves true once `test()` holds, false after timeoutMs (polled every 50 ms). */
export async function waitUntil(test: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (test()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts a private libvirtd in namespace `ns` with its state under
 * `workDir` (which must be traversable by libvirt-qemu: QEMU reads nothing
 * there, but libvirt's per-domain directories live below it). Returns at
 * once; call waitReady() before using it.
 */
export function startLibvirtd(ns: string, workDir: string): Libvirtd {
  for (const dir of ['etc', 'run', 'var/lib', 'var/log', 'var/cache']) {
    fs.mkdirSync(path.join(workDir, dir), { recursive: true, mode: 0o755 });
  }
  fs.writeFileSync(path.join(workDir, 'etc', 'qemu.conf'), QEMU_CONF);
  fs.writeFileSync(path.join(workDir, 'libvirtd.conf'), LIBVIRTD_CONF);
  // unshare without --fork execs in place: the child's PID is libvirtd's.
  const child = spawnIn(ns, ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', MOUNT_AND_EXEC, 'sh', workDir]);
  return new Libvirtd(child, workDir);
}

/** A file a guest's serial console is written to, read as it grows. */
export class ConsoleFile {
  constructor(readonly file: string) {}

  /** Everything in the file so far ('' before it exists). */
  text(): string {
    try {
      return fs.readFileSync(this.file, 'utf8');
    } catch {
      return '';
    }
  }

  /** The text up to its last newline (a marker is matched only once its line is complete). */
  lines(): string {
    const text = this.text();
    return text.slice(0, text.lastIndexOf('\n') + 1);
  }

  /**
   * Resolves with the first match of `re` in the complete lines; rejects after
   * timeoutMs, or as soon as `gone()` says the writer has ended without a match.
   */
  async waitFor(re: RegExp, timeoutMs: number, gone: () => boolean = () => false): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ended = gone();
      const m = re.exec(this.lines());
      if (m) return m;
      if (ended) throw new Error(`the guest ended before ${re} appeared\n--- console ---\n${this.tail()}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${re}\n--- console ---\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The last `count` lines, for failure messages. */
  tail(count = 30): string {
    return this.text().split('\n').slice(-count).join('\n');
  }
}
