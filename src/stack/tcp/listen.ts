/**
 * Inbound TCP forwarding (-t/--tcp-ports): one listening host socket per
 * forwarded port and family, bound to the spec's address and interface. An
 * accepted connection is handed to TcpService.acceptInbound, which shows it
 * to the guest as a SYN from the peer's real address (no NAT), or from the
 * gateway (--map-host-loopback) address when the peer is the host's loopback.
 *
 * Optional per worker: in a multi-worker setup one worker owns the listeners
 * (the lead decides sharding later). Configuration-time code may allocate;
 * the accept path does not, beyond what the addon returns.
 */
import { log, rateLimited } from '../../sys/log';
import type { ReadyHandler, StackContext } from '../context';
import type { ForwardSpec } from '../flow/forward-spec';
import { errorCode } from '../../sys/errno';
import { closeSocketQuietly } from '../../sys/close';
import { isLoopback } from '../address';
import { isDescriptorExhaustion } from '../l4/fd-limit';
import type { TcpService, TcpSockets } from './tcp';
import { AF_INET, AF_INET6, SOCKADDR_IN6_LENGTH, SOCKADDR_IN_LENGTH, sockaddrFamily, sockaddrPort, writeSockaddr } from '../../sys/sockaddr';
import { EPOLLIN, IPPROTO_IPV6, IPV6_V6ONLY, SOCK_STREAM, SOL_SOCKET, SO_BINDTODEVICE, SO_REUSEADDR } from '../../sys/linux';

const IPPROTO_IP = 0;
const IP_FREEBIND = 15;
const IPV6_FREEBIND = 78;
/** listen() backlog (the kernel caps it at net.core.somaxconn). */
const BACKLOG = 4096;
/** Connections accepted per readiness callback, so one busy port cannot starve the rest. */
const ACCEPTS_PER_WAKEUP = 64;

/** One listening socket that could not be opened: the host port, family and errno code (e.g. 'EADDRINUSE'). */
export interface ListenError {
  port: number;
  family: 4 | 6;
  code: string;
}

/** What open() did: sockets listening, and one line per port that could not be bound (non-best-effort specs only). */
export interface ListenResult {
  opened: number;
  failures: string[];
}

/** What openTagged() did: open()'s result plus the failures as data (non-best-effort specs only). */
export interface TaggedListenResult extends ListenResult {
  errors: ListenError[];
}

/** A listening socket as closeWhere() shows it to its predicate. */
export interface ListenerInfo {
  /** The tag given to open() (e.g. which forward rule opened it). */
  tag: number;
  hostPort: number;
  family: 4 | 6;
}

/**
 * Takes a connection accepted from the host's loopback (127.0.0.0/8, ::1)
 * away from the translator, e.g. pasta's splice path to the namespace's
 * loopback. `peer` (4 or 16 bytes) is only valid during the call. Returns
 * true when it took `fd` (it owns it from then on; it may give it back with
 * TcpListeners.acceptHandedBack), false to leave it to the translator.
 */
export type LoopbackHandoff = (fd: number, family: 4 | 6, guestPort: number, peer: Uint8Array, peerPort: number) => boolean;

/** The listening sockets of a worker and their accept loop. */
export class TcpListeners implements ReadyHandler {
  /** When set, connections from the host's loopback are offered here first (see LoopbackHandoff). */
  loopbackHandoff: LoopbackHandoff | null = null;
  private readonly family = new Map<number, 4 | 6>();
  private readonly guestPort = new Map<number, number>();
  /** Host port and open() tag of each listening fd (for closeWhere). */
  private readonly hostPort = new Map<number, number>();
  private readonly tagOf = new Map<number, number>();
  private readonly peer = new Uint8Array(128);
  private readonly peerLength = new Int32Array(1);
  private readonly peerAddress4 = new Uint8Array(4);
  private readonly peerAddress6 = new Uint8Array(16);

  constructor(private readonly ctx: StackContext, private readonly tcp: TcpService, private readonly sockets: TcpSockets = ctxSockets(tcp)) {}

  /** Listening sockets open. */
  get count(): number {
    return this.family.size;
  }

  /**
   * Open listeners for every port of every spec, for each enabled family
   * (only the bind address's family when the spec has one). Ports that
   * cannot be bound are skipped: silently for best-effort specs (`all`,
   * exclusion-only), reported in `failures` otherwise. Running out of
   * descriptors (EMFILE/ENFILE) stops the opening, reported last in any
   * spec (see l4/fd-limit.ts).
   */
  open(specs: readonly ForwardSpec[]): ListenResult {
    const { opened, failures } = this.openTagged(specs, 0);
    return { opened, failures };
  }

  /** open() with the sockets marked `tag` (for closeWhere), the failures also as data. */
  openTagged(specs: readonly ForwardSpec[], tag: number): TaggedListenResult {
    const result: TaggedListenResult = { opened: 0, failures: [], errors: [] };
    for (const spec of specs) {
      if (spec.mode === 'none' || spec.mode === 'auto') continue;
      for (const family of [4, 6] as const) {
        if ((family === 4 ? this.ctx.config.ipv4 : this.ctx.config.ipv6) === null) continue;
        if (spec.bindAddress !== null && spec.bindAddress.length !== (family === 4 ? 4 : 16)) continue;
        for (const mapping of spec.mappings) {
          for (let port = mapping.hostPortFirst; port <= mapping.hostPortLast; port++) {
            const guestPort = mapping.guestPortFirst + (port - mapping.hostPortFirst);
            const error = this.listenOne(family, spec, port, guestPort, tag);
            if (error === null) result.opened++;
            else if (!spec.bestEffort || isDescriptorExhaustion(error)) {
              result.failures.push(`tcp port ${port} (IPv${family}, '${spec.text}'): ${error}`);
              result.errors.push({ port, family, code: error });
              // Every further socket would fail alike: stop here, the error last.
              if (isDescriptorExhaustion(error)) return result;
            }
          }
        }
      }
    }
    if (result.opened > 0) log.info(`tcp: listening on ${result.opened} forwarded port sockets`);
    return result;
  }

  /** Open one listener; returns null or the reason it failed. */
  private listenOne(family: 4 | 6, spec: ForwardSpec, port: number, guestPort: number, tag: number): string | null {
    let fd: number;
    try {
      fd = this.sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);
    } catch (e) {
      return errorCode(e);
    }
    try {
      this.sockets.setsockoptInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      if (family === 6) this.sockets.setsockoptInt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
      if (spec.interfaceName !== null) this.sockets.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(spec.interfaceName + '\0', 'latin1'));
      if (spec.freebind === true) this.sockets.setsockoptInt(fd, family === 4 ? IPPROTO_IP : IPPROTO_IPV6, family === 4 ? IP_FREEBIND : IPV6_FREEBIND, 1);
      this.sockets.bind(fd, listenSockaddr(family, spec.bindAddress, port));
      this.sockets.listen(fd, BACKLOG);
    } catch (e) {
      closeSocketQuietly(this.sockets, fd);
      return errorCode(e);
    }
    this.family.set(fd, family);
    this.guestPort.set(fd, guestPort);
    this.hostPort.set(fd, port);
    this.tagOf.set(fd, tag);
    this.ctx.watcher?.watch(fd, EPOLLIN, this);
    return null;
  }

  /** ReadyHandler: accept what is pending and pass each connection to the translator. */
  onReady(fd: number, events: number): void {
    void events;
    const family = this.family.get(fd);
    const guestPort = this.guestPort.get(fd);
    if (family === undefined || guestPort === undefined) {
      this.ctx.watcher?.unwatch(fd);
      return;
    }
    for (let i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
      let conn: number;
      try {
        conn = this.sockets.acceptFrom(fd, this.peer, this.peerLength);
      } catch (e) {
        // ECONNABORTED, EMFILE...: log and try again on the next wake-up.
        rateLimited('warn', 'tcp accept', () => `tcp: accept failed: ${errorCode(e)}`);
        break;
      }
      if (conn < 0) break;
      const peerFamily = sockaddrFamily(this.peer);
      let address: Uint8Array;
      const peerPort = sockaddrPort(this.peer);
      if (peerFamily === 4 && family === 4) {
        address = this.peerAddress4;
        for (let j = 0; j < 4; j++) address[j] = this.peer[4 + j];
      } else if (peerFamily === 6 && family === 6) {
        address = this.peerAddress6;
        for (let j = 0; j < 16; j++) address[j] = this.peer[8 + j];
      } else {
        closeSocketQuietly(this.sockets, conn);
        continue;
      }
      if (this.loopbackHandoff !== null && isLoopback(address) && this.loopbackHandoff(conn, family, guestPort, address, peerPort)) continue;
      this.tcp.acceptInbound(conn, family, address, peerPort, guestPort);
    }
  }

  /**
   * A connection a LoopbackHandoff took and gives back untouched (nothing
   * read from it): the translator takes it as if just accepted. Returns
   * whether a flow was created (otherwise the socket is closed).
   */
  acceptHandedBack(fd: number, family: 4 | 6, peer: Uint8Array, peerPort: number, guestPort: number): boolean {
    return this.tcp.acceptInbound(fd, family, peer, peerPort, guestPort);
  }

  /**
   * Close the listening sockets `match` selects (connections already
   * accepted stay open). Returns how many were closed.
   */
  closeWhere(match: (listener: ListenerInfo) => boolean): number {
    let closed = 0;
    for (const [fd, family] of [...this.family]) {
      if (!match({ tag: this.tagOf.get(fd) ?? 0, hostPort: this.hostPort.get(fd) ?? 0, family })) continue;
      this.forget(fd);
      closed++;
    }
    return closed;
  }

  /** Stop watching and close one listening socket. */
  private forget(fd: number): void {
    this.ctx.watcher?.unwatch(fd);
    closeSocketQuietly(this.sockets, fd);
    this.family.delete(fd);
    this.guestPort.delete(fd);
    this.hostPort.delete(fd);
    this.tagOf.delete(fd);
  }

  /** Close every listening socket. */
  close(): void {
    for (const fd of this.family.keys()) {
      this.ctx.watcher?.unwatch(fd);
      closeSocketQuietly(this.sockets, fd);
    }
    this.family.clear();
    this.guestPort.clear();
    this.hostPort.clear();
    this.tagOf.clear();
  }
}

/** The socket calls of the translator (default for TcpListeners). */
function ctxSockets(tcp: TcpService): TcpSockets {
  return tcp.socketCalls;
}

/** The unspecified address, 0.0.0.0 or :: (its first 4 bytes). */
const ANY_ADDRESS = new Uint8Array(16);

/** sockaddr_in / sockaddr_in6 for a listener (any address when bindAddress is null). */
function listenSockaddr(family: 4 | 6, bindAddress: Uint8Array | null, port: number): Uint8Array {
  const sa = new Uint8Array(family === 4 ? SOCKADDR_IN_LENGTH : SOCKADDR_IN6_LENGTH);
  writeSockaddr(sa, family, bindAddress ?? ANY_ADDRESS, 0, port);
  return sa;
}
