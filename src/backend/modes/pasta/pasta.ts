/**
 * `ferry pasta [OPTION]... [[--] COMMAND [ARG]...]`: ferry's stack for a
 * container instead of a VM. COMMAND runs in its own user and network
 * namespace whose only link is a tap device; ferry holds the tap's fd and
 * moves its frames through the same stack a VM gets over vhost-user, with
 * ferry's host sockets in ferry's own (the host's) namespace.
 *
 * Design. Node is multi-threaded, and a multi-threaded process can neither
 * unshare(CLONE_NEWUSER) nor setns() into a user namespace (EINVAL). So
 * ferry never changes its own namespaces:
 *
 *   1. The namespace is made by a child process: util-linux
 *      `unshare --user --map-root-user --net --fork --kill-child -- sh -c GATE`
 *      where GATE is a few lines of shell that write one byte on fd 3 (a
 *      socketpair to ferry: "the namespaces exist") and then block reading
 *      fd 3 until ferry answers "go", and only then exec COMMAND. The command
 *      therefore never runs before its network is ready, and its exit status
 *      is unshare's, which is ferry's.
 *   2. ferry opens the tap inside that namespace with native.nsOpen: the
 *      addon forks a single-threaded child that setns()es into
 *      /proc/PID/ns/user and /proc/PID/ns/net, opens /dev/net/tun with
 *      TUNSETIFF (IFF_TAP | IFF_NO_PI) and a NETLINK_ROUTE socket there,
 *      passes both fds back with SCM_RIGHTS and exits. An fd keeps the
 *      namespace it was opened in: the tap device stays in the container,
 *      the fd works from ferry.
 *   3. Over that netlink socket ferry brings the namespace's loopback and
 *      the tap up (with the stack's MTU) and, with --config-net, adds the
 *      host's addresses and default routes to the tap, as pasta does.
 *      Without --config-net the command can use DHCP, NDP and DHCPv6 from
 *      the stack, as a VM would.
 *   4. The tap is served on the main thread (FrontendLoop + TapPort + the
 *      stack); ferry writes "go" and waits for the command to exit.
 *
 * With --netns PATH|NAME|PID (or a bare PID) ferry joins an existing
 * namespace instead (plus --userns, or the PID's user namespace when it is
 * not ours): the tap is opened there the same way; a COMMAND then runs
 * through `nsenter`, and without one ferry serves the tap until SIGTERM,
 * until the PID exits or until the tap goes away with its namespace.
 *
 * The tap is named after the host's interface carrying the default route
 * (-I/--ns-ifname overrides), as in pasta.
 *
 * Forwarding: -t/-u are the stack's inbound listeners, exactly as for a VM
 * (connections and datagrams to the host's ports become frames on the tap),
 * except that a TCP connection from the host's loopback is joined with
 * splice() to a connection ferry makes to the namespace's loopback
 * (tcp-forward.ts HostLoopbackSplicer, off with --no-splice): local
 * traffic never becomes frames. -T/-U never become frames either:
 * listening sockets are opened inside the namespace with the same nsOpen
 * helper and bound to its loopback, and pasta-forward.ts's modules relay them to the
 * host's loopback (TCP with splice() unless --no-splice, UDP with
 * recvmmsg/sendmmsg). `auto` is rescanned every second, as in pasta:
 * -T/-U auto follow the ports bound on the host's loopback (/proc/self/net),
 * -t/-u auto the ports bound in the namespace (/proc/PID/net of a process
 * in it: unshare, the joined PID or nsenter's command; checked to be in the
 * namespace on every read), opening and closing host listeners tagged
 * AUTO_FORWARD_TAG through the stack's run-time listener API.
 *
 * --metrics serves the counters (the splice path's among them) as for the
 * daemon; --control serves the control API (pasta-control.ts): flows of
 * every kind listed and closed, forwards fixed.
 */
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import type { Duplex } from 'stream';
import { CounterBlock } from '../../../sys/counters';
import { log } from '../../../sys/log';
import { removeQuietly } from '../../../sys/close';
import { native } from '../../../sys/native';
import type { StackConfig } from '../../../stack/config';
import { FrontendLoop, maxFrameLengthFor, runStackPartsOnLoop } from '../frontend-loop';
import { FerryMetrics, type MetricsServer, startMetricsServer } from '../../control/metrics';
import { type ControlServer, startControlServer } from '../../control/control';
import { loadControlSchema } from '../../control/control-protocol';
import { PastaControlHandler } from './pasta-control';
import { type NamespaceNetwork, NetlinkConfigurator } from '../../host/netlink-config';
import { type DaemonOptions, readEphemeralRange } from '../../cli/options';
import { namespacePath, type PastaOptions } from '../../cli/pasta-options';
import { startPcap } from '../../frontends/middleware/pcap';
import { systemdNotify } from '../../cli/systemd';
import { resolveStack } from '../stack-setup';
import {
  AutoForwarder,
  expandForwards,
  HostLoopbackSplicer,
  InboundAutoListeners,
  namespaceIdentity,
  type NamespaceSocketOpener,
  readNamespaceTables,
  TcpNamespaceForwarder,
  UdpNamespaceForwarder,
} from './pasta-forward';
import type { StackParts } from '../../../stack/stack-factory';
import { TapPort, tapQueueLength } from '../../frontends/tap-port';
import { confineProcess, type Identity, planIsolation, processContext } from '../../cli/isolation';

/** Tap name when neither -I nor host discovery gives one. */
export const FALLBACK_TAP_NAME = 'tap0';
/** How long the namespace may take to appear, and the helper to open the tap. */
const SETUP_TIMEOUT_MS = 10000;
/** Grace between SIGTERM and SIGKILL for the command when ferry is told to stop. */
const STOP_GRACE_MS = 3000;
/** How often -T/-U auto look at the host's bound ports (pasta: every second). */
const AUTO_SCAN_INTERVAL_MS = 1000;
/** Exit status when the namespace could not be set up (what `env` uses for "could not run"). */
export const EXIT_SETUP_FAILED = 125;

/**
 * The shell between unshare and COMMAND: announce the namespace on fd 3,
 * wait for ferry's "go" (EOF or anything else: ferry failed, give up with
 * 125), close fd 3 so COMMAND does not inherit it, exec COMMAND.
 */
export const GATE_SCRIPT = 'printf R >&3 && read -r go <&3 && [ "$go" = go ] || exit 125; exec 3<&-; exec "$@"';

/** The unshare command line that runs `command` behind the gate in new user and network namespaces. */
export function unshareArgv(command: readonly string[]): string[] {
  return ['unshare', '--user', '--map-root-user', '--net', '--fork', '--kill-child', '--', '/bin/sh', '-c', GATE_SCRIPT, 'ferry-pasta', ...command];
}

/** The nsenter command line that runs `command` in joined namespaces. */
export function nsenterArgv(netPath: string, userPath: string | null, command: readonly string[]): string[] {
  return ['nsenter', `--net=${netPath}`, ...(userPath !== null ? [`--user=${userPath}`] : []), '--', ...command];
}

/** Addresses, gateways and MTU for --config-net, from the stack configuration. */
export function namespaceNetwork(config: StackConfig, ifname: string): NamespaceNetwork {
  const network: NamespaceNetwork = { ifname, mtu: config.mtu, addresses: [], gateways: [] };
  if (config.ipv4 !== null) {
    network.addresses.push({ address: config.ipv4.address, prefixLength: config.ipv4.prefixLength });
    network.gateways.push(config.ipv4.gateway);
  }
  if (config.ipv6 !== null) {
    network.addresses.push({ address: config.ipv6.address, prefixLength: config.ipv6.prefixLength });
    network.gateways.push(config.ipv6.gateway);
  }
  return network;
}

/** An exit status from how a child ended (128 + signal number for a signal, as shells report it). */
export function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  const number = signal !== null ? os.constants.signals[signal] : undefined;
  return number !== undefined ? 128 + number : 1;
}

/** Where the tap lives: paths of the namespaces to enter, and the process that made them (if ours). */
interface NamespaceTarget {
  netPath: string;
  userPath: string | null;
  /** The unshare child (created mode), or null when joining. */
  child: ChildProcess | null;
  /** fd 3 of the gate, to say "go" (created mode). */
  gate: Duplex | null;
  /** A process whose exit ends the session (joined by PID), or null. */
  watchPid: number | null;
}

/** Inode of a namespace file, to tell whether a target namespace is our own. */
function namespaceId(path: string): string {
  const stat = fs.statSync(path);
  return `${stat.dev}:${stat.ino}`;
}

/** True while `path` still names the namespace whose id was `id`. */
function sameNamespace(path: string, id: string): boolean {
  try {
    return namespaceId(path) === id;
  } catch {
    return false;
  }
}

/** Start unshare with the gate and resolve once the namespaces exist. */
async function createNamespaces(command: readonly string[], owner: Identity | null): Promise<NamespaceTarget> {
  const argv = unshareArgv(command);
  // The namespaces belong to the user ferry becomes, so that ferry can still signal the command once confined.
  const child = spawn(argv[0], argv.slice(1), { stdio: ['inherit', 'inherit', 'inherit', 'pipe'], ...(owner !== null ? { uid: owner.uid, gid: owner.gid } : {}) });
  const gate = child.stdio[3] as Duplex | null;
  if (gate === null || gate === undefined) throw new Error('pasta: no gate socket to the namespace');
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`the namespace did not come up within ${SETUP_TIMEOUT_MS} ms`)), SETUP_TIMEOUT_MS);
    const cleanup = (): void => {
      clearTimeout(timer);
      gate.removeListener('data', onData);
      child.removeListener('exit', onExit);
      child.removeListener('error', fail);
    };
    function fail(error: Error): void {
      cleanup();
      reject(error);
    }
    function onData(): void {
      cleanup();
      resolve();
    }
    function onExit(code: number | null, signal: NodeJS.Signals | null): void {
      fail(new Error(`unshare exited (${code ?? signal}) before the namespace was ready: are user namespaces allowed?`));
    }
    gate.once('data', onData);
    child.once('exit', onExit);
    child.once('error', fail);
  });
  return { netPath: `/proc/${child.pid}/ns/net`, userPath: `/proc/${child.pid}/ns/user`, child, gate, watchPid: null };
}

/** The namespaces named by --netns/--userns (or a bare PID). */
function joinNamespaces(pasta: PastaOptions): NamespaceTarget {
  const spec = pasta.netns as string;
  const netPath = namespacePath(spec, 'net');
  let userPath = pasta.userns !== null ? namespacePath(pasta.userns, 'user') : null;
  if (userPath === null && !pasta.netnsOnly && /^[0-9]+$/.test(spec)) {
    const candidate = namespacePath(spec, 'user');
    // Entering our own user namespace again is refused (EINVAL): only a foreign one is joined.
    if (namespaceId(candidate) !== namespaceId('/proc/self/ns/user')) userPath = candidate;
  }
  return { netPath, userPath, child: null, gate: null, watchPid: /^[0-9]+$/.test(spec) ? Number(spec) : null };
}

/**
 * The largest send buffer a host socket of ferry can have, which bounds the
 * window ferry advertises to the namespace (the buffer's free space): an
 * autotuned one grows to net.ipv4.tcp_wmem's maximum, one set with
 * SO_SNDBUF (the stack does, see tcp.ts) to twice net.core.wmem_max.
 */
export function largestSendBuffer(tcpWmemPath = '/proc/sys/net/ipv4/tcp_wmem', wmemMaxPath = '/proc/sys/net/core/wmem_max'): number {
  const autotuned = readNumber(tcpWmemPath, 2);
  const fixed = readNumber(wmemMaxPath, 0);
  const largest = Math.max(autotuned, fixed > 0 ? 2 * fixed : 0);
  return largest > 0 ? largest : FALLBACK_SEND_BUFFER;
}

/** Field `index` of a whitespace-separated sysctl file, or 0. */
function readNumber(path: string, index: number): number {
  try {
    const value = Number(fs.readFileSync(path, 'utf8').trim().split(/\s+/)[index]);
    return Number.isFinite(value) && value > 0 ? value : 0;
  } catch {
    return 0;
  }
}

/** Linux's default tcp_wmem maximum. */
const FALLBACK_SEND_BUFFER = 4 * 1024 * 1024;

/** Open the tap and a NETLINK_ROUTE socket inside the target namespaces. */
function openInNamespace(target: NamespaceTarget, ifname: string): { tapFd: number; tapName: string; netlinkFd: number } {
  const c = native.constants;
  const paths = target.userPath !== null ? [target.userPath, target.netPath] : [target.netPath];
  const nsFds = paths.map((p) => fs.openSync(p, 'r'));
  try {
    const opened = native.nsOpen(nsFds, ifname, c.IFF_TAP | c.IFF_NO_PI | c.IFF_VNET_HDR, [c.AF_NETLINK, c.SOCK_RAW, c.NETLINK_ROUTE ?? 0], SETUP_TIMEOUT_MS);
    try {
      // Partial checksums and TCP segments up to 64 KiB from the namespace (see tap-port.ts).
      native.tunSetOffload(opened.tunFd, c.TUN_F_CSUM | c.TUN_F_TSO4 | c.TUN_F_TSO6);
    } catch (error) {
      log.warn(`tap ${opened.tunName}: no checksum/segmentation offload: ${(error as Error).message}`);
    }
    return { tapFd: opened.tunFd, tapName: opened.tunName, netlinkFd: opened.sockets[0] };
  } finally {
    for (const fd of nsFds) fs.closeSync(fd);
  }
}

/** -T/-U auto: scan now (before the command starts) and every second after. */
function followHostPorts(loop: FrontendLoop, auto: AutoForwarder): void {
  auto.tick();
  loop.every(AUTO_SCAN_INTERVAL_MS, () => auto.tick());
}

/**
 * -t with splice: connections from the host's loopback go to the
 * namespace's loopback through splice() instead of the tap. Returns the
 * splicer (null with --no-splice, without TCP or without -t).
 */
function spliceHostLoopback(loop: FrontendLoop, counters: CounterBlock, open: NamespaceSocketOpener, parts: StackParts, splice: boolean, forwarding: boolean): HostLoopbackSplicer | null {
  const listeners = parts.tcpListeners;
  if (!splice || !forwarding || listeners === null) return null;
  const clock = parts.stack.ctx.clock;
  const splicer = new HostLoopbackSplicer(
    loop,
    counters,
    open,
    (fd, family, peer, peerPort, guestPort) => listeners.acceptHandedBack(fd, family, peer, peerPort, guestPort),
    parts.flows ?? undefined,
    () => clock.now(),
  );
  splicer.prime();
  listeners.loopbackHandoff = (fd, family, port, peer, peerPort) => splicer.take(fd, family, port, peer, peerPort);
  return splicer;
}

/** -t/-u auto: host listeners follow the ports bound in the namespace, rescanned every second. */
function followNamespacePorts(loop: FrontendLoop, parts: StackParts, forwards: DaemonOptions['forwards'], open: NamespaceSocketOpener, pid: () => number | null, netnsIdentity: string): void {
  const tables = (protocol: 'tcp' | 'udp') => (): string => {
    const scanned = pid();
    if (scanned === null) throw new Error('no process in the namespace to read its sockets from');
    return readNamespaceTables(protocol, scanned, netnsIdentity);
  };
  const followers: AutoForwarder[] = [];
  const tcp = parts.tcpListeners;
  if (forwards.tcp.some((spec) => spec.mode === 'auto') && tcp !== null) {
    const listeners = new InboundAutoListeners('tcp', { open: (spec, tag) => tcp.openTagged([spec], tag).errors, close: (match) => tcp.closeWhere(match) });
    followers.push(new AutoForwarder('tcp', listeners, open, readEphemeralRange(), tables('tcp'), 'any'));
  }
  const udp = parts.udp;
  if (forwards.udp.some((spec) => spec.mode === 'auto') && udp !== null) {
    const listeners = new InboundAutoListeners('udp', { open: (spec, tag) => udp.listenTagged([spec], tag).errors, close: (match) => udp.closeListeners(match) });
    followers.push(new AutoForwarder('udp', listeners, open, readEphemeralRange(), tables('udp'), 'any'));
  }
  for (const follower of followers) loop.every(AUTO_SCAN_INTERVAL_MS, () => follower.tick());
}

/** Opens sockets inside the target namespaces (a forked helper per call, see native.nsOpen). */
function socketOpener(target: NamespaceTarget): NamespaceSocketOpener {
  return (triples) => {
    const paths = target.userPath !== null ? [target.userPath, target.netPath] : [target.netPath];
    const nsFds = paths.map((p) => fs.openSync(p, 'r'));
    try {
      return native.nsOpen(nsFds, null, 0, triples, SETUP_TIMEOUT_MS).sockets;
    } finally {
      for (const fd of nsFds) fs.closeSync(fd);
    }
  };
}

/** The first child of process `pid` (from procfs), or null. */
export function firstChildPid(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/);
    const first = Number(children[0]);
    return Number.isInteger(first) && first > 0 ? first : null;
  } catch {
    return null;
  }
}

function signalPid(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Run `ferry pasta`; resolves with the command's exit status (0 when serving a joined namespace until told to stop). */
export async function runPasta(options: DaemonOptions, pasta: PastaOptions): Promise<number> {
  const { config, hostInterface: hostIfname } = resolveStack(options);
  const ifname = pasta.nsIfname ?? hostIfname ?? FALLBACK_TAP_NAME;
  const joining = pasta.netns !== null;
  const command = pasta.command.length > 0 ? pasta.command : joining ? [] : [process.env.SHELL ?? '/bin/sh'];
  const isolation = planIsolation('pasta', options, processContext(), pasta);

  let target: NamespaceTarget;
  try {
    target = joining ? joinNamespaces(pasta) : await createNamespaces(command, isolation.identity);
  } catch (error) {
    log.error(`cannot set up the namespace: ${(error as Error).message}`);
    return EXIT_SETUP_FAILED;
  }
  let tapFd = -1;
  let tapName = ifname;
  try {
    const opened = openInNamespace(target, ifname);
    tapFd = opened.tapFd;
    tapName = opened.tapName;
    try {
      const netlink = new NetlinkConfigurator(native, opened.netlinkFd);
      if (pasta.configNet) netlink.configure(namespaceNetwork(config, tapName));
      else {
        // Links up (so DHCP/NDP can run), no addresses or routes: the command configures itself.
        netlink.linkUp(netlink.linkIndex('lo'));
        // Without DAD on its link-local address: DHCPv6 clients started right after link up can bind to it.
        netlink.linkUpWithoutDad(netlink.linkIndex(tapName), config.mtu);
      }
      // A window of MTU-sized frames must fit in the tap's queue, or the namespace's kernel drops them there.
      const queueLength = tapQueueLength(config.mtu > 0 ? config.mtu : 65520, largestSendBuffer());
      try {
        netlink.setTxQueueLength(netlink.linkIndex(tapName), queueLength);
      } catch (error) {
        log.warn(`tap ${tapName}: cannot set txqueuelen ${queueLength}: ${(error as Error).message}`);
      }
    } finally {
      native.close(opened.netlinkFd);
    }
  } catch (error) {
    log.error(`cannot set up ${ifname} in the namespace: ${(error as Error).message}`);
    if (tapFd >= 0) native.close(tapFd);
    target.gate?.end('stop\n');
    target.child?.kill('SIGKILL');
    return EXIT_SETUP_FAILED;
  }
  log.info(`tap ${tapName} in ${target.netPath}${pasta.configNet ? ' configured with the host\'s addresses and routes' : ''}`);

  const counters = new CounterBlock();
  const capture = startPcap(options.pcapFile);
  const loop = new FrontendLoop();
  const port = new TapPort({
    fd: tapFd,
    counters,
    watcher: loop,
    maxFrameLength: maxFrameLengthFor(config.mtu),
    vnetHeader: true,
    onFrame: capture !== null ? (_direction, frame, length) => capture.write(frame, length) : null,
  });
  const parts = runStackPartsOnLoop(loop, config, port, counters, options.protocols);
  const stack = parts.stack;
  // A process in the namespace whose /proc/PID/net shows its sockets (-t/-u auto); nsenter's is known once it runs.
  let scanPid: number | null = target.child?.pid ?? target.watchPid;
  const netnsIdentity = namespaceIdentity(target.netPath);

  // -T/-U: the namespace's loopback to the host's, outside the stack (after lo is up in the namespace);
  // their relays and clients are flows of the stack's table, on its clock.
  const flowTable = parts.flows ?? undefined;
  const now = (): number => stack.ctx.clock.now();
  let tcpForwarder: TcpNamespaceForwarder | null = null;
  let udpForwarder: UdpNamespaceForwarder | null = null;
  try {
    const open = socketOpener(target);
    const tcpNs = expandForwards(options.forwards.tcpNs);
    const tcpAuto = options.forwards.tcpNs.some((spec) => spec.mode === 'auto');
    if (tcpNs.length > 0 || tcpAuto) {
      const tcp = new TcpNamespaceForwarder(loop, counters, pasta.splice, flowTable, now);
      tcpForwarder = tcp;
      tcp.listen(open, tcpNs);
      if (tcpAuto) followHostPorts(loop, new AutoForwarder('tcp', tcp, open, readEphemeralRange()));
    }
    const udpNs = expandForwards(options.forwards.udpNs);
    const udpAuto = options.forwards.udpNs.some((spec) => spec.mode === 'auto');
    if (udpNs.length > 0 || udpAuto) {
      const udp = new UdpNamespaceForwarder(loop, counters, options.udpTimeoutSeconds * 1000, now, flowTable);
      udpForwarder = udp;
      udp.listen(open, udpNs);
      loop.every(1000, () => udp.expire());
      if (udpAuto) followHostPorts(loop, new AutoForwarder('udp', udp, open, readEphemeralRange()));
    }
  } catch (error) {
    log.error(`cannot set up -T/-U forwarding: ${(error as Error).message}`);
  }
  // -t: the splice path for the host's loopback clients, and -t/-u auto.
  let splicer: HostLoopbackSplicer | null = null;
  try {
    const open = socketOpener(target);
    splicer = spliceHostLoopback(loop, counters, open, parts, pasta.splice, options.forwards.tcp.length > 0);
    followNamespacePorts(loop, parts, options.forwards, open, () => scanPid, netnsIdentity);
  } catch (error) {
    log.error(`cannot set up -t/-u forwarding: ${(error as Error).message}`);
  }
  const metrics = new FerryMetrics(() => [counters]);
  let metricsServer: MetricsServer | null = null;
  if (options.metrics !== null) {
    try {
      metricsServer = await startMetricsServer(options.metrics, metrics);
      log.info(`metrics on ${metricsServer.address}`);
    } catch (error) {
      log.error(`cannot serve metrics: ${(error as Error).message}`);
    }
  }
  let control: ControlServer | null = null;
  if (options.controlPath !== null) {
    try {
      control = await startControlServer(options.controlPath, new PastaControlHandler(parts.flows, () => stack.ctx.clock.now(), metrics));
      log.info(`control API on ${control.path}`);
    } catch (error) {
      log.error(`cannot serve the control API: ${(error as Error).message}`);
    }
  }
  if (options.pidFile !== null) fs.writeFileSync(options.pidFile, `${process.pid}\n`);
  // The tap and the forwards are served: a systemd unit, or the parent waiting as passt's callers do (cli/background.ts), may go on.
  systemdNotify(`READY=1\nSTATUS=Serving ${tapName} in ${target.netPath}`);

  // The command: released from the gate (created), or started through nsenter (joined with a command).
  let child = target.child;
  if (target.gate !== null) target.gate.end('go\n');
  else if (command.length > 0) {
    const argv = nsenterArgv(target.netPath, target.userPath, command);
    child = spawn(argv[0], argv.slice(1), { stdio: 'inherit' });
    scanPid ??= child.pid ?? null;
  }
  // The command's PID behind unshare, read from /proc while it is still in view (it stays: the gate execs the command).
  const commandPid = target.gate !== null ? firstChildPid(target.child?.pid) : null;
  // Everything is loaded and open: the control API's schema too, since no path is reachable from here on.
  if (control !== null) loadControlSchema();
  confineProcess(isolation, (line) => log.info(line), [options.pidFile, options.controlPath, options.metrics?.kind === 'unix' ? options.metrics.path : null]);

  return new Promise<number>((resolve) => {
    let finished = false;
    let watchTimer: NodeJS.Timeout | null = null;
    const finish = (code: number, reason: string): void => {
      if (finished) return;
      finished = true;
      log.info(reason);
      if (watchTimer !== null) clearInterval(watchTimer);
      process.removeListener('SIGTERM', onTerm);
      process.removeListener('SIGINT', onInt);
      port.onClosed = null;
      port.close();
      tcpForwarder?.close();
      udpForwarder?.close();
      splicer?.close();
      void metricsServer?.close();
      void control?.close();
      stack.close();
      loop.close();
      removeQuietly(options.pidFile);
      resolve(code);
    };
    const stop = (signal: NodeJS.Signals): void => {
      if (child !== null && child.exitCode === null && child.signalCode === null) {
        // Ctrl-C on a terminal already reached the command (same foreground process group);
        // an interactive shell ignores it and must not be killed for it.
        if (signal === 'SIGINT') return;
        // The command ends the session: pass the signal on and let its exit finish (SIGKILL after a grace).
        // unshare ignores SIGTERM/SIGINT while it waits, so the command itself (its child) is told.
        const pid = target.gate !== null ? commandPid ?? firstChildPid(child.pid) ?? child.pid : child.pid;
        signalPid(pid, signal);
        setTimeout(() => child?.kill('SIGKILL'), STOP_GRACE_MS).unref();
        return;
      }
      finish(0, `${signal}: stopping`);
    };
    const onTerm = (): void => stop('SIGTERM');
    const onInt = (): void => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
    if (child !== null) {
      child.once('exit', (code, signal) => finish(exitStatus(code, signal), `the command exited (${code ?? signal})`));
      child.once('error', (error) => finish(EXIT_SETUP_FAILED, `cannot run the command: ${error.message}`));
    }
    port.onClosed = (reason) => {
      // The tap went away with its namespace; a running command has lost its network.
      if (child === null) finish(0, `${reason}: the namespace is gone`);
      else log.warn(reason);
    };
    const watchPid = target.watchPid;
    if (child === null && !pasta.netnsQuit) {
      // --no-netns-quit: the namespace's end is noticed only when its tap goes (onClosed).
    } else if (child === null && watchPid !== null) {
      watchTimer = setInterval(() => {
        if (!fs.existsSync(`/proc/${watchPid}`)) finish(0, `process ${watchPid} exited`);
      }, 1000);
    } else if (child === null) {
      // Joined by path (podman's --netns): when the path goes (ip netns del, podman's cleanup), so does ferry, as pasta.
      const joined = namespaceId(target.netPath);
      watchTimer = setInterval(() => {
        if (!sameNamespace(target.netPath, joined)) finish(0, `${target.netPath} is gone`);
      }, 1000);
    }
  });
}
