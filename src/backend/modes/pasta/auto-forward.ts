/**
 * `auto` forwarding in pasta: -T/-U auto follow the ports bound on the
 * host's loopback, -t/-u auto the ports bound in the namespace, both read
 * from /proc/.../net tables and rescanned by the caller every second.
 */
import * as fs from 'fs';
import { log, rateLimited } from '../../../sys/log';
import type { ForwardSpec } from '../../../stack/flow/forward-spec';
import type { ListenError, ListenerInfo } from '../../../stack/tcp/listen';
import type { NamespaceSocketOpener, PortForward } from './loopback-forward';

/** TCP_LISTEN in /proc/net/tcp; an unconnected UDP socket shows TCP_CLOSE (07). */
const TCP_LISTEN = 0x0a;
const UDP_UNCONNECTED = 0x07;

/** Is a /proc/net local address (hex) reachable from the loopback: any, or loopback itself? */
function loopbackReachable(hex: string): boolean {
  if (hex.length === 8) {
    // IPv4 in host byte order: little-endian hosts print 127.0.0.1 as 0100007F.
    const value = Number.parseInt(hex, 16) >>> 0;
    const bytes = LITTLE_ENDIAN_HOST ? [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24] : [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff];
    return value === 0 || bytes[0] === 127;
  }
  if (hex.length === 32) {
    // Four 32-bit words, each in host byte order: :: is all zeros, ::1 ends in 01000000 (little-endian).
    if (/^0{32}$/.test(hex)) return true;
    return hex.slice(0, 24) === '0'.repeat(24) && hex.slice(24) === (LITTLE_ENDIAN_HOST ? '01000000' : '00000001');
  }
  return false;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Ports with a listening socket (TCP) or an unconnected bound socket (UDP)
 * reachable on the loopback, from /proc/net/{tcp,tcp6,udp,udp6} text,
 * leaving out sockets whose inode is in `exclude` (ferry's own). Pure.
 */
export function boundLoopbackPorts(table: string, protocol: 'tcp' | 'udp', exclude: ReadonlySet<number>): Set<number> {
  return boundPorts(table, protocol, exclude, 'loopback');
}

/** Which bound sockets count: those reachable on the loopback (-T/-U auto) or any (-t/-u auto). */
export type BoundScope = 'loopback' | 'any';

/**
 * Ports with a listening socket (TCP) or an unconnected bound socket (UDP)
 * on any local address (scope 'any') or one reachable from the loopback,
 * leaving out sockets whose inode is in `exclude`. Pure.
 */
export function boundPorts(table: string, protocol: 'tcp' | 'udp', exclude: ReadonlySet<number>, scope: BoundScope): Set<number> {
  const ports = new Set<number>();
  const wanted = protocol === 'tcp' ? TCP_LISTEN : UDP_UNCONNECTED;
  const lines = table.split('\n');
  // Bounded by the table itself; malformed lines are skipped.
  for (const line of lines) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || !/^\d+:$/.test(fields[0])) continue;
    const [localAddress, localPort] = fields[1].split(':');
    const remotePort = fields[2].split(':')[1];
    if (Number.parseInt(fields[3], 16) !== wanted || localPort === undefined) continue;
    if (protocol === 'udp' && remotePort !== '0000') continue;
    const inode = Number(fields[9]);
    if (exclude.has(inode) || (scope === 'loopback' && !loopbackReachable(localAddress))) continue;
    const port = Number.parseInt(localPort, 16);
    if (port > 0 && port <= 65535) ports.add(port);
  }
  return ports;
}

/** Inodes of the sockets this process holds (its own listeners must not be forwarded to themselves). */
export function ownSocketInodes(fdDirectory = '/proc/self/fd'): Set<number> {
  const inodes = new Set<number>();
  let names: string[];
  try {
    names = fs.readdirSync(fdDirectory);
  } catch {
    return inodes;
  }
  for (const name of names) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`${fdDirectory}/${name}`));
      if (m !== null) inodes.add(Number(m[1]));
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

/** What an AutoForwarder drives: a forwarder whose ports can come and go. */
export interface DynamicForwarder {
  listen(open: NamespaceSocketOpener, forwards: readonly PortForward[]): number;
  unlisten(port: number): void;
}

/**
 * `-T auto` / `-U auto`: every tick, the ports bound on the host's loopback
 * (ferry's own sockets left out; UDP ports in the ephemeral range too, those
 * are clients) are compared with the ports forwarded so far; new ones get
 * listeners in the namespace, vanished ones lose them. Ports whose listener
 * could not be made are not retried until they vanish and come back.
 */
export class AutoForwarder {
  private readonly current = new Set<number>();

  constructor(
    private readonly protocol: 'tcp' | 'udp',
    private readonly forwarder: DynamicForwarder,
    private readonly open: NamespaceSocketOpener,
    private readonly ephemeral: { first: number; last: number },
    private readonly readTables: () => string = () => readProcTables(protocol),
    /** 'loopback' for -T/-U auto (host ports reachable from the loopback), 'any' for -t/-u auto (every port bound in the namespace). */
    private readonly scope: BoundScope = 'loopback',
  ) {}

  /** Ports forwarded now. */
  get ports(): number[] {
    return [...this.current].sort((a, b) => a - b);
  }

  /** Rescan and apply the difference. */
  tick(): void {
    let found: Set<number>;
    try {
      found = boundPorts(this.readTables(), this.protocol, ownSocketInodes(), this.scope);
    } catch (e) {
      const side = this.scope === 'any' ? 'namespace' : 'host';
      rateLimited('warn', `pasta auto ${side} ${this.protocol}`, () => `pasta ${this.protocol} auto forwarding: cannot read the ${side}'s sockets: ${(e as Error).message}`);
      return;
    }
    if (this.protocol === 'udp') for (const port of found) if (port >= this.ephemeral.first && port <= this.ephemeral.last) found.delete(port);
    const added: PortForward[] = [];
    for (const port of found) if (!this.current.has(port)) added.push({ listenPort: port, targetPort: port });
    for (const port of [...this.current]) {
      if (found.has(port)) continue;
      this.current.delete(port);
      this.forwarder.unlisten(port);
    }
    if (added.length === 0) return;
    for (const forward of added) this.current.add(forward.listenPort);
    this.forwarder.listen(this.open, added);
    log.debug(`pasta ${this.protocol} auto (${this.scope === 'any' ? 'into the namespace' : 'to the host'}): now forwarding ${this.ports.join(',') || 'nothing'}`);
  }
}

/** The host's (ferry's namespace's) socket tables for a protocol, both families. */
function readProcTables(protocol: 'tcp' | 'udp'): string {
  let text = '';
  for (const name of [protocol, `${protocol}6`]) {
    try {
      text += fs.readFileSync(`/proc/self/net/${name}`, 'utf8');
    } catch {
      // IPv6 disabled: no table
    }
  }
  return text;
}

/** Identity (device:inode) of a namespace file, to check that a process is still in the namespace. */
export function namespaceIdentity(path: string): string {
  const stat = fs.statSync(path);
  return `${stat.dev}:${stat.ino}`;
}

/**
 * The namespace's socket tables for a protocol, both families, read as
 * /proc/PID/net/{tcp,tcp6} (or udp) of a process in it: procfs shows a
 * process's own network namespace there. Throws when `pid` is gone or (no
 * longer, or not yet: nsenter before its setns) in the namespace whose
 * identity is `netnsIdentity`, so a tick never reads another namespace.
 */
export function readNamespaceTables(protocol: 'tcp' | 'udp', pid: number, netnsIdentity: string): string {
  if (namespaceIdentity(`/proc/${pid}/ns/net`) !== netnsIdentity) throw new Error(`process ${pid} is not in the namespace`);
  let text = '';
  for (const name of [protocol, `${protocol}6`]) {
    try {
      text += fs.readFileSync(`/proc/${pid}/net/${name}`, 'utf8');
    } catch (e) {
      // No table for a disabled IPv6; a vanished process shows in the second check below.
      void e;
    }
  }
  if (namespaceIdentity(`/proc/${pid}/ns/net`) !== netnsIdentity) throw new Error(`process ${pid} left the namespace`);
  return text;
}

/** Host-side listeners of the stack that can be opened and closed by tag at run time (TcpListeners, UdpService). */
export interface TaggedInboundListeners {
  /** Open listeners for `spec` marked `tag`; returns errors as (port, family, errno code). */
  open(spec: ForwardSpec, tag: number): ListenError[];
  /** Close the listeners `match` selects. */
  close(match: (listener: ListenerInfo) => boolean): number;
}

/** The tag of listeners opened by -t/-u auto (the configured -t/-u ones have tag 0). */
export const AUTO_FORWARD_TAG = 0x70a57a;

/** A -t/-u spec for one port, same number on both sides (what -t/-u auto open). */
export function singlePortSpec(port: number, protocol: 'tcp' | 'udp'): ForwardSpec {
  return {
    text: `${protocol === 'tcp' ? '-t' : '-u'} auto: ${port}`,
    mode: 'ports',
    bindAddress: null,
    interfaceName: null,
    mappings: [{ hostPortFirst: port, hostPortLast: port, guestPortFirst: port }],
    bestEffort: false,
  };
}

/**
 * -t/-u auto: the stack's inbound listeners as a DynamicForwarder, so an
 * AutoForwarder scanning the namespace opens a host port (any address, both
 * families) for every port bound in the namespace and closes it when that
 * goes. A port the host cannot bind (taken there) is logged and skipped.
 */
export class InboundAutoListeners implements DynamicForwarder {
  constructor(private readonly protocol: 'tcp' | 'udp', private readonly listeners: TaggedInboundListeners) {}

  listen(_open: NamespaceSocketOpener, forwards: readonly PortForward[]): number {
    let opened = 0;
    for (const forward of forwards) {
      const errors = this.listeners.open(singlePortSpec(forward.listenPort, this.protocol), AUTO_FORWARD_TAG);
      for (const error of errors) {
        rateLimited('warn', `pasta ${this.protocol} auto bind`, () => `pasta ${this.protocol === 'tcp' ? '-t' : '-u'} auto: cannot listen on host port ${error.port} (IPv${error.family}): ${error.code}`);
      }
      opened++;
    }
    return opened;
  }

  unlisten(port: number): void {
    this.listeners.close((listener) => listener.tag === AUTO_FORWARD_TAG && listener.hostPort === port);
  }
}
