/**
 * A single-threaded event loop driver: one epoll Poller on the calling
 * thread's libuv loop serving a frontend's fds and the stack's host sockets
 * (FdWatcher), a flush hook after every batch of ready fds, and periodic
 * timers. The vhost-user workers (worker-main.ts: kick fds, one loop per
 * queue-pair thread) and the plain-fd frontends (tap for `ferry pasta`, the
 * length-prefixed stream socket for `ferry stream`, run on the main thread:
 * one fd, one queue, so no frame crosses a thread) all use it.
 */
import { native, type Poller } from '../../sys/native';
import type { CounterBlock } from '../../sys/counters';
import type { StackConfig } from '../../stack/config';
import type { FdWatcher, ReadyHandler } from '../../stack/context';
import type { FramePort, FrameSink } from '../../io/frame-io';
import { type Stack, STACK_TIMER_INTERVAL_MS } from '../../stack/stack';
import { createStackParts, type StackParts } from '../../stack/stack-factory';

/** Ready fds taken per wake-up (the Poller's batch). */
const POLL_BATCH = 256;

/** Owns a Poller and dispatches readiness to registered handlers (FdWatcher for the stack). */
export class FrontendLoop implements FdWatcher {
  private readonly events = new Int32Array(POLL_BATCH * 2);
  private readonly poller: Poller;
  private readonly handlers = new Map<number, ReadyHandler>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly batchStartHooks: (() => void)[] = [];
  private readonly batchEndHooks: (() => void)[] = [];
  private closed = false;

  constructor() {
    this.poller = new native.Poller(this.events, (count) => this.onPoll(count));
  }

  /** Watch fd for epoll `events`; `handler.onReady(fd, bits)` runs when it is ready. */
  watch(fd: number, events: number, handler: ReadyHandler): void {
    if (this.closed) return;
    if (this.handlers.has(fd)) this.poller.modify(fd, events);
    else this.poller.add(fd, events);
    this.handlers.set(fd, handler);
  }

  /** Change the events watched on fd. */
  modify(fd: number, events: number): void {
    if (this.handlers.has(fd)) this.poller.modify(fd, events);
  }

  /** Stop watching fd (before it is closed). */
  unwatch(fd: number): void {
    if (this.handlers.delete(fd)) this.poller.remove(fd);
  }

  /** The handler watching fd, if any (lets a stack's dispose unwatch only what is still its own). */
  handlerOf(fd: number): ReadyHandler | undefined {
    return this.handlers.get(fd);
  }

  /** How many fds are watched. */
  get watchedCount(): number {
    return this.handlers.size;
  }

  /** Run `hook` before every batch of ready fds (e.g. hold the port's flushes until the batch ends). */
  onBatchStart(hook: () => void): void {
    this.batchStartHooks.push(hook);
  }

  /** Run `hook` after every batch of ready fds (e.g. flush the port once per batch). */
  onBatchEnd(hook: () => void): void {
    this.batchEndHooks.push(hook);
  }

  /** Call `tick` every `intervalMs` until close(); the timer does not keep the process alive on its own. */
  every(intervalMs: number, tick: () => void): void {
    if (this.closed) return;
    const timer = setInterval(tick, intervalMs);
    timer.unref();
    this.timers.push(timer);
  }

  /** Let the loop keep the process alive (true, the default) or not. */
  keepAlive(on: boolean): void {
    if (on) this.poller.ref();
    else this.poller.unref();
  }

  /**
   * Stop timers and the Poller and drop every handler and hook, so nothing
   * the loop was given stays reachable from it; no callbacks after this.
   * Idempotent. Does not close the watched fds (their owners do).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    this.timers.length = 0;
    this.handlers.clear();
    this.batchStartHooks.length = 0;
    this.batchEndHooks.length = 0;
    this.poller.close();
  }

  /** close(): the loop's dispose step. */
  dispose(): void {
    this.close();
  }

  private onPoll(count: number): void {
    const events = this.events;
    for (let i = 0; i < this.batchStartHooks.length; i++) this.batchStartHooks[i]();
    try {
      for (let i = 0; i < count && !this.closed; i++) {
        const fd = events[2 * i];
        const handler = this.handlers.get(fd);
        if (handler !== undefined) handler.onReady(fd, events[2 * i + 1]);
      }
    } finally {
      // Even after a handler threw: a batch start without its end would hold the port's flushes forever.
      for (let i = 0; i < this.batchEndHooks.length; i++) this.batchEndHooks[i]();
    }
  }
}

/** A FramePort that also takes frames from its fd and hands them to a sink. */
export interface FrontendPort extends FramePort {
  sink: FrameSink | null;
}

/**
 * Build the stack over `port` on this loop: the stack's host sockets are
 * watched by the loop, its timer runs every STACK_TIMER_INTERVAL_MS, and
 * after every batch of ready fds committed frames are flushed once.
 * Returns the stack (close it with the loop).
 */
export function runStackOnLoop(loop: FrontendLoop, config: StackConfig, port: FrontendPort, counters: CounterBlock, protocols: { tcp: boolean; udp: boolean; icmp?: boolean } = { tcp: true, udp: true }): Stack {
  return runStackPartsOnLoop(loop, config, port, counters, protocols).stack;
}

/** runStackOnLoop, also returning the stack's parts (its -t listeners and UDP service, for pasta's auto forwarding and splice path). */
export function runStackPartsOnLoop(loop: FrontendLoop, config: StackConfig, port: FrontendPort, counters: CounterBlock, protocols: { tcp: boolean; udp: boolean; icmp?: boolean } = { tcp: true, udp: true }): StackParts {
  // One stack, one thread: it owns the -t/-u listeners; --no-tcp/--no-udp as for the daemon's workers.
  const worker = { ownsListeners: true, tcp: protocols.tcp, udp: protocols.udp, icmp: protocols.icmp };
  const parts = createStackParts({ config, port, counters, watcher: loop, sockets: native }, worker);
  const stack = parts.stack;
  port.sink = stack;
  loop.every(STACK_TIMER_INTERVAL_MS, () => stack.onTimer());
  loop.onBatchEnd(() => {
    stack.flush();
    port.flush();
  });
  return parts;
}

/** Largest frame for an MTU (0 = "announce none": the default MTU then applies to frames). */
export function maxFrameLengthFor(mtu: number): number {
  return (mtu > 0 ? mtu : DEFAULT_FRAME_MTU) + ETHERNET_HEADER_LENGTH;
}

const DEFAULT_FRAME_MTU = 65520;
const ETHERNET_HEADER_LENGTH = 14;
