/**
 * Network namespaces for tests that move packets: every e2e test runs its
 * daemon, QEMU and servers inside a namespace created here, never in the
 * machine's own network.
 *
 * A test network is two namespaces joined by a veth pair:
 *   - the test namespace (where ferry runs): loopback, and an uplink "uplink0"
 *     with 192.0.2.1/24 (default via 192.0.2.254) and 2001:db8::1/64
 *     (default via 2001:db8::fe);
 *   - the peer namespace (the "outside world"): "peer0" with the router
 *     addresses 192.0.2.254 / 2001:db8::fe and a server address
 *     192.0.2.2 / 2001:db8::2.
 * Only documentation ranges are used. Namespaces and the processes started
 * in them are torn down by destroyTestNetwork() and, as a last resort, when
 * the Node.js process exits.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'child_process';
import * as fs from 'fs';

/** Addresses of the test network, as text (for command lines and asserts). */
export const TEST_NET = {
  uplinkName: 'uplink0',
  peerLinkName: 'peer0',
  hostV4: '192.0.2.1',
  routerV4: '192.0.2.254',
  serverV4: '192.0.2.2',
  prefixV4: 24,
  hostV6: '2001:db8::1',
  routerV6: '2001:db8::fe',
  serverV6: '2001:db8::2',
  prefixV6: 64,
} as const;

/** A pair of namespaces created for one test. */
export interface TestNetwork {
  /** Namespace where the system under test runs. */
  ns: string;
  /** Namespace on the other side of the uplink (router and servers). */
  peerNs: string;
}

/** Outcome of a command run to completion. */
export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

const NAME_PREFIX = 'ferry-e2e-';
let nameCounter = 0;
const liveNamespaces = new Set<string>();
const liveChildren = new Set<ChildProcess>();

/** True when this process can create network namespaces (root and `ip` present). */
export function canCreateNamespaces(): boolean {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return false;
  return spawnSync('ip', ['-V'], { stdio: 'ignore' }).status === 0;
}

/** Runs a command (no namespace) to completion; resolves with its output, never rejects on exit status. */
export function run(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20000);
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    if (child.stdin) {
      // A command may exit without reading its input: that is its business.
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.input);
    }
  });
}

/** Runs a command and rejects with its stderr unless it exits 0; resolves with stdout. */
export async function runChecked(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    throw new Error(`${argv.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/** Runs a command inside namespace `ns` to completion (see run()). */
export function runIn(ns: string, argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<CommandResult> {
  return run(['ip', 'netns', 'exec', ns, ...argv], opts);
}

/** Runs a command inside namespace `ns`; rejects unless it exits 0; resolves with stdout. */
export function runInChecked(ns: string, argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  return runChecked(['ip', 'netns', 'exec', ns, ...argv], opts);
}

/**
 * Starts a long-lived process inside namespace `ns` and returns it. `ip netns
 * exec` execs the command in place, so the child's PID is the command's own.
 * The child is remembered and killed by killTracked()/cleanup if still alive.
 */
export function spawnIn(ns: string, argv: string[], opts: SpawnOptions = {}): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
  liveChildren.add(child);
  child.on('exit', () => liveChildren.delete(child));
  child.on('error', () => liveChildren.delete(child));
  return child;
}

/** Sends `signal` to one process by PID; returns false if it no longer exists. */
export function killPid(pid: number | undefined, signal: NodeJS.Signals = 'SIGTERM'): boolean {
  if (pid === undefined || pid <= 0) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * Stops a child started here: SIGTERM, then SIGKILL after `graceMs`.
 * Resolves once it has exited (immediately if it already had).
 */
export function stopChild(child: ChildProcess, graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const killTimer = setTimeout(() => killPid(child.pid, 'SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(killTimer);
      resolve();
    });
    if (!killPid(child.pid, 'SIGTERM')) {
      clearTimeout(killTimer);
      resolve();
    }
  });
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Deletes namespaces left by earlier test runs that died before cleaning up:
 * only names of our own pattern whose creating process no longer exists.
 */
function removeStaleNamespaces(): void {
  let names: string[];
  try {
    names = fs.readdirSync('/run/netns');
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^ferry-e2e-(\d+)-\d+(-peer)?$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && !processAlive(pid)) {
      spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    }
  }
}

let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when a test forgot (or crashed before) destroyTestNetwork.
  process.on('exit', () => {
    for (const child of liveChildren) killPid(child.pid, 'SIGKILL');
    for (const ns of liveNamespaces) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => process.exit(130));
  }
}

async function addNamespace(name: string): Promise<void> {
  await runChecked(['ip', 'netns', 'add', name]);
  liveNamespaces.add(name);
  await runChecked(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
  // Ping sockets (SOCK_DGRAM ICMP) are forbidden in a fresh namespace.
  await runInChecked(name, ['sysctl', '-qw', 'net.ipv4.ping_group_range=0 2147483647']);
  // No duplicate address detection on the test links: addresses (link-local
  // included) are usable at once instead of after a second of tentativeness.
  await runInChecked(name, ['sysctl', '-qw', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
}

/** Resolves once link `dev` in `ns` reports operational state UP; rejects after `timeoutMs`. */
export async function waitForOperUp(ns: string, dev: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const out = await runChecked(['ip', '-n', ns, '-o', 'link', 'show', 'dev', dev]);
    if (/ state UP /.test(out)) return;
    if (Date.now() > deadline) throw new Error(`link ${dev} in ${ns} not up after ${timeoutMs} ms: ${out.trim()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Creates a test namespace and its peer namespace joined by a veth uplink
 * (addresses in TEST_NET). Resolves with their names; on failure removes
 * whatever was created and rejects.
 */
export async function createTestNetwork(): Promise<TestNetwork> {
  installExitHook();
  removeStaleNamespaces();
  const ns = `${NAME_PREFIX}${process.pid}-${nameCounter++}`;
  const net: TestNetwork = { ns, peerNs: `${ns}-peer` };
  try {
    await addNamespace(net.ns);
    await addNamespace(net.peerNs);
    const up = TEST_NET.uplinkName;
    const peer = TEST_NET.peerLinkName;
    await runChecked(['ip', '-n', net.ns, 'link', 'add', up, 'type', 'veth', 'peer', 'name', peer, 'netns', net.peerNs]);
    await runChecked(['ip', '-n', net.ns, 'addr', 'add', `${TEST_NET.hostV4}/${TEST_NET.prefixV4}`, 'dev', up]);
    await runChecked(['ip', '-n', net.ns, '-6', 'addr', 'add', `${TEST_NET.hostV6}/${TEST_NET.prefixV6}`, 'dev', up, 'nodad']);
    await runChecked(['ip', '-n', net.ns, 'link', 'set', up, 'up']);
    await runChecked(['ip', '-n', net.ns, 'route', 'add', 'default', 'via', TEST_NET.routerV4]);
    await runChecked(['ip', '-n', net.ns, '-6', 'route', 'add', 'default', 'via', TEST_NET.routerV6, 'dev', up]);

    for (const a of [TEST_NET.routerV4, TEST_NET.serverV4]) {
      await runChecked(['ip', '-n', net.peerNs, 'addr', 'add', `${a}/${TEST_NET.prefixV4}`, 'dev', peer]);
    }
    for (const a of [TEST_NET.routerV6, TEST_NET.serverV6]) {
      await runChecked(['ip', '-n', net.peerNs, '-6', 'addr', 'add', `${a}/${TEST_NET.prefixV6}`, 'dev', peer, 'nodad']);
    }
    await runChecked(['ip', '-n', net.peerNs, 'link', 'set', peer, 'up']);
    // The kernel turns the carrier on asynchronously (linkwatch, up to a
    // second): until then the veth drops what is sent on it.
    await waitForOperUp(net.ns, up);
    await waitForOperUp(net.peerNs, peer);
  } catch (err) {
    await destroyTestNetwork(net);
    throw err;
  }
  return net;
}

/**
 * Kills the processes spawned with spawnIn() into either namespace of `net`
 * that are still alive, then deletes both namespaces. Never rejects.
 */
export async function destroyTestNetwork(net: TestNetwork): Promise<void> {
  const mine = [...liveChildren].filter((c) => {
    const args = c.spawnargs;
    return args[3] === net.ns || args[3] === net.peerNs;
  });
  await Promise.all(mine.map((c) => stopChild(c, 1000)));
  for (const name of [net.ns, net.peerNs]) {
    if (!liveNamespaces.has(name) && !fs.existsSync(`/run/netns/${name}`)) continue;
    await run(['ip', 'netns', 'del', name]).catch(() => undefined);
    liveNamespaces.delete(name);
  }
}

/** Names of namespaces this process has created and not yet deleted (for leak checks). */
export function liveNamespaceNames(): string[] {
  return [...liveNamespaces];
}

/** A running tcpdump started by startCapture(). */
export interface Capture {
  file: string;
  /** Stops tcpdump (after 200 ms, so frames just sent are written) and resolves once it has exited. */
  stop(): Promise<void>;
}

/**
 * Captures every frame on link `dev` of namespace `ns` into pcap `file` with
 * tcpdump (packet-buffered, no name lookups); resolves once tcpdump is
 * listening. Rejects with tcpdump's stderr if it does not start in `timeoutMs`.
 */
export async function startCapture(ns: string, dev: string, file: string, timeoutMs = 5000): Promise<Capture> {
  // -Z root: keep the privileges needed to write into a root-owned temp dir.
  // --immediate-mode: hand each frame to tcpdump at once instead of in
  // blocks, which it would drop on exit.
  const child = spawnIn(ns, ['tcpdump', '-i', dev, '-n', '-U', '--immediate-mode', '-s', '0', '-Z', 'root', '-w', file]);
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      void stopChild(child, 500);
      reject(new Error(`tcpdump on ${dev} in ${ns} did not start: ${stderr.trim()}`));
    }, timeoutMs);
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      if (/listening on/.test(stderr)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', () => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${dev} in ${ns} exited: ${stderr.trim()}`));
    });
  });
  return {
    file,
    // A short grace so frames just sent are read before tcpdump is told to stop.
    stop: () => new Promise<void>((r) => setTimeout(r, 200)).then(() => stopChild(child, 2000)),
  };
}
