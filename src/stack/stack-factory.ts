/**
 * Builds the stack a worker hands its frames to, with every protocol
 * handler that exists installed.
 */
import { Stack, type StackOptions } from './stack';
import { Ipv6ControlPlane } from './l2/ndp';
import { FlowTable } from './flow/flow-table';
import { UdpService } from './udp/udp';
import { TcpService } from './tcp/tcp';
import { TcpListeners } from './tcp/listen';
import { descriptorLimitFailure } from './l4/fd-limit';
import { log, rateLimited } from '../sys/log';
import type { FramePort, OffloadInfo, SegmentList } from '../io/frame-io';
import type { FdWatcher, ReadyHandler } from './context';

/** What a worker adds to the stack's own options. */
export interface WorkerStackOptions {
  /**
   * Inbound forwards (-t/-u listening sockets) live on one worker: a port can
   * be bound once. Guest-initiated flows live on the worker whose queue
   * carried them.
   */
  ownsListeners: boolean;
  /** --no-tcp: guest TCP is dropped and no -t listeners are opened. */
  tcp: boolean;
  /** --no-udp: guest UDP is dropped and no -u listeners are opened. */
  udp: boolean;
  /** --no-icmp: guest echo requests are dropped (default true). */
  icmp?: boolean;
  /**
   * Open the configured -t/-u forwards (default true). false: the listeners
   * exist empty and the caller opens forwards itself (the daemon's workers,
   * whose forwards change at run time).
   */
  openConfiguredForwards?: boolean;
}

/** A stack and the parts of it the control API reaches into (null: not installed). */
export interface StackParts {
  stack: Stack;
  /** The worker's flow table (null without host sockets). */
  flows: FlowTable | null;
  tcp: TcpService | null;
  udp: UdpService | null;
  /** The -t listeners (on the worker that owns listeners, with TCP on). */
  tcpListeners: TcpListeners | null;
  /**
   * Release everything this stack holds: its flows (peers see resets), host
   * sockets and listeners, its watch on the loop and its hold on the port
   * (the port's onWritable no longer leads here, and a reservation the
   * stack still makes gets nothing). Afterwards nothing the port or the loop
   * keeps reaches this stack, and it can write into no ring. Idempotent.
   */
  dispose(): void;
}

/** An fd watcher that can tell which handler watches an fd (FrontendLoop does). */
export interface InspectableWatcher extends FdWatcher {
  handlerOf?(fd: number): ReadyHandler | undefined;
}

/**
 * The port as one stack sees it, for that stack's lifetime only. The
 * services hook onWritable here (each wrapping the one before), so the chain
 * lives and dies with this stack instead of growing on the port, which
 * outlives stacks (a worker rebuilds its stack for every front-end).
 */
export class PortLease implements FramePort {
  onWritable: (() => void) | null;
  readonly maxFrameLength: number;
  private inner: FramePort | null;
  private readonly previous: (() => void) | null;
  private readonly forward = (): void => {
    if (this.onWritable !== null) this.onWritable();
  };

  constructor(inner: FramePort) {
    this.inner = inner;
    this.maxFrameLength = inner.maxFrameLength;
    // A listener installed before the stack keeps being called, and gets its place back on revoke.
    this.previous = inner.onWritable;
    this.onWritable = inner.onWritable;
    inner.onWritable = this.forward;
  }

  get checksumOffload(): boolean {
    return this.inner?.checksumOffload === true;
  }

  reserve(maxLength: number): SegmentList | null {
    return this.inner === null ? null : this.inner.reserve(maxLength);
  }

  reserveAnother(maxLength: number): SegmentList | null {
    return this.inner?.reserveAnother?.(maxLength) ?? null;
  }

  commit(length: number, offload?: OffloadInfo): void {
    if (this.inner !== null) this.inner.commit(length, offload);
  }

  cancel(): void {
    if (this.inner !== null) this.inner.cancel();
  }

  flush(): void {
    if (this.inner !== null) this.inner.flush();
  }

  /** From here on nothing reaches the port through this lease, and the port's onWritable no longer leads here. */
  revoke(): void {
    const inner = this.inner;
    if (inner === null) return;
    inner.cancel();
    this.inner = null;
    this.onWritable = null;
    if (inner.onWritable === this.forward) inner.onWritable = this.previous;
  }
}

/**
 * The loop as one stack sees it: remembers what the stack watches, so that
 * disposing the stack leaves no handler of it on the loop even where a
 * service's close() forgot one (counted in the log line: that is a leak to fix).
 */
export class WatcherLease implements FdWatcher {
  private inner: InspectableWatcher | null;
  private readonly watched = new Map<number, ReadyHandler>();

  constructor(inner: InspectableWatcher) {
    this.inner = inner;
  }

  watch(fd: number, events: number, handler: ReadyHandler): void {
    if (this.inner === null) return;
    this.inner.watch(fd, events, handler);
    this.watched.set(fd, handler);
  }

  modify(fd: number, events: number): void {
    if (this.inner !== null && this.watched.has(fd)) this.inner.modify(fd, events);
  }

  unwatch(fd: number): void {
    this.watched.delete(fd);
    if (this.inner !== null) this.inner.unwatch(fd);
  }

  /** How many fds this stack still watches. */
  get size(): number {
    return this.watched.size;
  }

  /** Unwatch whatever the stack left watched (only where its own handler is still the one registered); returns how many. */
  revoke(): number {
    const inner = this.inner;
    if (inner === null) return 0;
    this.inner = null;
    let left = 0;
    for (const [fd, handler] of this.watched) {
      if (inner.handlerOf !== undefined && inner.handlerOf(fd) !== handler) continue;
      inner.unwatch(fd);
      left++;
    }
    this.watched.clear();
    return left;
  }
}

/** Create the stack over a worker's port, counters, fd watcher and sockets. */
export function createStack(options: StackOptions, worker: WorkerStackOptions = { ownsListeners: true, tcp: true, udp: true }): Stack {
  return createStackParts(options, worker).stack;
}

/** createStack, also returning its flow table, transport services and listeners. */
export function createStackParts(options: StackOptions, worker: WorkerStackOptions = { ownsListeners: true, tcp: true, udp: true }): StackParts {
  const ipv6Control = options.config.ipv6 !== null ? new Ipv6ControlPlane(options.config, options.counters) : null;
  const port = new PortLease(options.port);
  const watcher = options.watcher !== null && options.watcher !== undefined ? new WatcherLease(options.watcher) : null;
  const stack = new Stack({ ...options, port, watcher, ipv6Control });
  stack.echoEnabled = worker.icmp !== false;
  let disposed = false;
  const dispose = (): void => {
    if (disposed) return;
    disposed = true;
    try {
      stack.dispose();
    } finally {
      port.revoke();
      const left = watcher?.revoke() ?? 0;
      if (left > 0) rateLimited('warn', 'stack dispose left watches', () => `stack: ${left} host socket(s) still watched after the stack closed; unwatched`, 1, 60_000);
    }
  };
  const parts: StackParts = { stack, flows: null, tcp: null, udp: null, tcpListeners: null, dispose };
  const openConfigured = worker.openConfiguredForwards ?? true;
  if (options.sockets !== null && options.sockets !== undefined && watcher !== null) {
    // One flow table per worker, shared by the transport handlers (TcpService takes it as TcpServiceOptions.flows).
    const flows = new FlowTable(Math.max(1, options.config.maxFlows), options.counters);
    parts.flows = flows;
    stack.echo.useFlowTable(flows);
    if (worker.tcp) {
      const tcp = new TcpService(stack.ctx, { flows });
      stack.tcpHandler = tcp;
      parts.tcp = tcp;
      if (worker.ownsListeners) {
        const listeners = new TcpListeners(stack.ctx, tcp);
        tcp.adoptListeners(listeners);
        parts.tcpListeners = listeners;
        if (openConfigured) {
          for (const spec of options.config.tcpForwards ?? []) {
            const result = listeners.openTagged([spec], 0);
            const fatal = descriptorLimitFailure('-t', spec.text, result);
            if (fatal !== null) throw fatal;
            for (const failure of result.failures) log.warn(`-t: ${failure}`);
          }
        }
      }
    }
    if (worker.udp) {
      const udp = new UdpService(stack.ctx, { flows });
      stack.udpHandler = udp;
      parts.udp = udp;
      if (worker.ownsListeners && openConfigured) {
        for (const spec of options.config.udpForwards ?? []) {
          const fatal = descriptorLimitFailure('-u', spec.text, udp.listenTagged([spec], 0));
          if (fatal !== null) throw fatal;
        }
      }
    }
  }
  return parts;
}
