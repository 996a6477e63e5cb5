/**
 * The life of one virtqueue as a vhost-user front-end drives it (as
 * rust-vmm's vhost-user-backend keeps a VringState per queue): size, ring
 * addresses and base index from the ring messages, the kick fd watched for
 * guest notifications, the call fd written to notify the guest, start on the
 * first kick, stop at GET_VRING_BASE, and a reset that releases every fd.
 * It knows rings and fds, nothing of IP or of what the queue carries.
 *
 * The kick and call fds come from the front-end, which is untrusted: a kick
 * fd at end of file or in error, a call fd whose reader is gone, or any fd
 * that would block breaks this ring only (counted, logged rate-limited), and
 * the fd is closed at once. Kick and call fds are switched to non-blocking
 * on arrival, so a full pipe handed over as a call fd can never stop the
 * thread; an fd that cannot be made non-blocking is refused.
 */
import { type CounterBlock, defineCounter } from '../sys/counters';
import { errorCode } from '../sys/errno';
import { log, rateLimited } from '../sys/log';
import type { GuestMemory } from './guest-memory';
import { SplitRing } from './split-ring';

/** What can go wrong with a ring's fds; each is a label of ferry_vring_faults_total. */
export enum VringFault {
  /** The kick fd read 0 bytes (a pipe or socket whose writer is gone) or a short count. */
  KickEof = 'kick_eof',
  /** Reading the kick fd failed (or it hung up with nothing to read). */
  KickError = 'kick_error',
  /** The kick fd could not be made non-blocking or watched (not a pollable fd). */
  KickRefused = 'kick_refused',
  /** Writing the call fd failed (EPIPE: no reader, EBADF, ...). */
  CallError = 'call_error',
  /** The call fd could not be made non-blocking. */
  CallRefused = 'call_refused',
  /** Guest memory faulted under the ring (its file was truncated): the addon's guard mapped zeros over it. */
  MemoryFault = 'memory_fault',
}

const FAULTS_HELP = 'Rings stopped because the front-end\'s kick or call fd failed, by fault';

/** Counter slot per fault, declared at module load (counter-layout.ts imports this module). */
export const VRING_FAULT_SLOTS: ReadonlyMap<VringFault, number> = new Map(
  Object.values(VringFault).map((fault) => [fault, defineCounter('ferry_vring_faults_total', FAULTS_HELP, { fault })]),
);

/** The few fd calls a ring makes (the addon's; a unit test may pass fakes). */
export interface VringFds {
  /** Read and reset an eventfd counter; -1 when there was nothing (EAGAIN); throws on EOF or error. */
  eventfdRead(fd: number): number;
  /** Add to an eventfd counter; throws on error (EAGAIN is not one). */
  eventfdWrite(fd: number, value: number): void;
  setNonBlocking(fd: number, on: boolean): void;
  close(fd: number): void;
}

/** Readiness registration for the kick fd (the worker's epoll loop). */
export interface KickWatcher {
  watch(fd: number, events: number, handler: { onReady(fd: number, events: number): void }): void;
  unwatch(fd: number): void;
}

export interface VringOptions {
  /** For log lines, e.g. "0 (rx)". */
  name: string;
  counters: CounterBlock;
  watcher: KickWatcher;
  fds: VringFds;
  /** epoll bits: EPOLLIN to watch, EPOLLHUP | EPOLLERR to recognise a hang-up. */
  epoll: { in: number; hangup: number };
  /** The guest kicked (or the ring became enabled) and the ring runs: do its work. */
  onKick: () => void;
  /** Before the ring stops: publish what was committed or consumed, so the base index counts it. */
  beforeStop: () => void;
}

/** One virtqueue's state between the front-end's messages and the data path. */
export class Vring {
  readonly ring = new SplitRing(null);
  private memory: GuestMemory | null = null;
  private features = 0n;
  private num = 0;
  private descriptorUserAddress = -1;
  private availableUserAddress = -1;
  private usedUserAddress = -1;
  private base = 0;
  private kickFd: number | null = null;
  private callFd: number | null = null;
  private enabled = false;
  /** Started by a kick; stopped by GET_VRING_BASE, a fault or a reset. */
  private started = false;
  /** The last configure attempt failed: not retried on every kick. */
  private configureError: string | null = null;
  /**
   * Stopped by GET_VRING_BASE: the front-end owns the ring again, so its kicks
   * are not watched until it hands over a kick fd anew (as libvhost-user does).
   */
  private handedBack = false;
  /** The kick fd failed: the ring is not serviced until a new kick fd comes. */
  private kickFault: VringFault | null = null;
  /** The call fd failed: the ring is not serviced until a new call fd comes. */
  private callFault: VringFault | null = null;
  /** Set when the memory table this ring reads faulted; cleared by a new table. */
  private memoryFault: VringFault | null = null;
  private stopQueued = false;
  private readonly kickHandler = { onReady: (fd: number, events: number): void => this.onKickReady(fd, events) };

  constructor(private readonly options: VringOptions) {}

  /** True while the ring is started and may be used by the data path. */
  get running(): boolean {
    return this.started;
  }

  /** The fault that stopped the ring, or null. */
  get fault(): VringFault | null {
    return this.kickFault ?? this.callFault ?? this.memoryFault;
  }

  /** The fds this ring holds (for leak checks). */
  get heldFds(): number[] {
    return [this.kickFd, this.callFd].filter((fd): fd is number => fd !== null);
  }

  setFeatures(features: bigint): void {
    this.features = features;
  }

  /** A new memory table: the ring areas are looked up again. Returns an error when a running ring had to stop. */
  setMemory(memory: GuestMemory | null): string | null {
    this.memory = memory;
    this.memoryFault = null;
    const error = this.ring.setMemory(memory);
    if (error === null || !this.started) return null;
    this.stop();
    return error;
  }

  setNum(num: number): void {
    this.num = num;
  }

  /** SET_VRING_ADDR: user addresses, checked against the current table (throws when outside it). */
  setAddresses(descriptorUserAddress: number, availableUserAddress: number, usedUserAddress: number): void {
    const memory = this.memory;
    if (memory !== null) {
      for (const uva of [descriptorUserAddress, availableUserAddress, usedUserAddress]) {
        if (memory.uvaToGpa(uva) < 0) throw new Error(`ring address 0x${uva.toString(16)} is outside guest memory`);
      }
    }
    this.descriptorUserAddress = descriptorUserAddress;
    this.availableUserAddress = availableUserAddress;
    this.usedUserAddress = usedUserAddress;
    this.configureError = null;
  }

  setBase(base: number): void {
    this.base = base & 0xffff;
    this.ring.lastAvailIdx = this.base;
  }

  /** GET_VRING_BASE: stop the ring, stop watching its kicks, return the next available index. */
  handBack(): number {
    const index = this.started ? this.ring.lastAvailIdx : this.base;
    this.stop();
    this.base = index;
    if (this.kickFd !== null && !this.handedBack) this.options.watcher.unwatch(this.kickFd);
    this.handedBack = true;
    return index;
  }

  /**
   * SET_VRING_KICK: this ring owns fd from here on (closed when replaced, on
   * a fault and on reset). null: the front-end polls, so the ring counts as kicked now.
   */
  setKick(fd: number | null): void {
    this.dropKick();
    this.handedBack = false;
    this.kickFault = null;
    if (fd === null) {
      this.kicked();
      return;
    }
    this.kickFd = fd;
    try {
      this.options.fds.setNonBlocking(fd, true);
      this.options.watcher.watch(fd, this.options.epoll.in, this.kickHandler);
    } catch (error) {
      this.kickFd = null;
      this.closeFd(fd);
      this.fail(VringFault.KickRefused, `kick fd: ${errorCode(error)}`);
    }
  }

  /** SET_VRING_CALL: this ring owns fd from here on; it is made non-blocking or refused (closed). */
  setCall(fd: number | null): void {
    if (this.callFd !== null) this.closeFd(this.callFd);
    this.callFd = null;
    this.callFault = null;
    if (fd === null) return;
    try {
      this.options.fds.setNonBlocking(fd, true);
      this.callFd = fd;
    } catch (error) {
      this.closeFd(fd);
      this.fail(VringFault.CallRefused, `call fd: ${errorCode(error)}`);
    }
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    if (enabled) this.kicked();
    else this.stop();
  }

  /** Tell the guest there are used buffers. A failing call fd breaks this ring and is closed. */
  notify(): void {
    const fd = this.callFd;
    if (fd === null) return;
    try {
      this.options.fds.eventfdWrite(fd, 1);
    } catch (error) {
      this.callFd = null;
      this.closeFd(fd);
      this.callFault = VringFault.CallError;
      this.fail(VringFault.CallError, `call fd: ${errorCode(error)}`);
    }
  }

  /** The guest kicked (or the ring became enabled): start the ring if it can run, and let the owner service it. */
  kicked(): void {
    if (!this.enabled || this.handedBack || this.fault !== null || !this.start()) return;
    this.options.onKick();
  }

  /**
   * The memory table faulted (a region's file shrank under its mapping): the
   * ring reads zeros from then on, so it is stopped, counted and logged once,
   * until the front-end sends a new table.
   */
  memoryFaulted(): void {
    if (!this.started || this.memoryFault !== null) return;
    this.memoryFault = VringFault.MemoryFault;
    this.fail(VringFault.MemoryFault, 'guest memory faulted under the ring (a region file was truncated)');
  }

  /** Stop the ring (publishing what was done first) and keep its index as the base. */
  stop(): void {
    if (this.started) {
      this.options.beforeStop();
      this.base = this.ring.lastAvailIdx;
    }
    this.started = false;
    // Not ready any more: the data path sees an empty ring until it starts again.
    this.ring.reset();
  }

  /** The front-end is gone (or RESET_OWNER): stop, close the kick and call fds, forget everything. */
  reset(): void {
    this.stop();
    this.dropKick();
    if (this.callFd !== null) this.closeFd(this.callFd);
    this.callFd = null;
    this.handedBack = false;
    this.kickFault = null;
    this.callFault = null;
    this.memoryFault = null;
    this.enabled = false;
    this.num = 0;
    this.base = 0;
    this.descriptorUserAddress = this.availableUserAddress = this.usedUserAddress = -1;
    this.configureError = null;
    this.features = 0n;
    this.memory = null;
    this.ring.setMemory(null);
  }

  /** Configure and start the ring if it is not running yet; true when it runs. */
  private start(): boolean {
    if (this.started) return true;
    if (!this.enabled || this.memory === null || this.num === 0 || this.configureError !== null) return false;
    this.ring.setMemory(this.memory);
    this.ring.lastAvailIdx = this.base;
    // User addresses, so that a later SET_MEM_TABLE re-translates them (as libvhost-user does).
    const error = this.ring.configureUserAddresses(this.num, this.descriptorUserAddress, this.availableUserAddress, this.usedUserAddress, this.features);
    if (error !== null) {
      this.configureError = error;
      log.warn(`ring ${this.options.name}: ${error}; not started`);
      return false;
    }
    this.started = true;
    log.debug(`ring ${this.options.name} started: size ${this.num}, base ${this.base}`);
    return true;
  }

  private onKickReady(fd: number, events: number): void {
    let fault: VringFault | null = null;
    let detail = '';
    try {
      const value = this.options.fds.eventfdRead(fd);
      // Nothing to read yet the fd hung up: it will report the same for ever.
      if (value < 0 && (events & this.options.epoll.hangup) !== 0) {
        fault = VringFault.KickError;
        detail = 'hang-up';
      }
    } catch (error) {
      const code = errorCode(error);
      // The addon reports a read of 0 bytes (end of file) or of a partial counter as EIO.
      fault = code === 'EIO' ? VringFault.KickEof : VringFault.KickError;
      detail = code;
    }
    if (fault === null) {
      this.kicked();
      return;
    }
    this.dropKick();
    this.kickFault = fault;
    this.fail(fault, `kick fd: ${detail}`);
  }

  /** Close an fd this ring owns; a failure (already closed) changes nothing on these paths. */
  private closeFd(fd: number): void {
    try {
      this.options.fds.close(fd);
    } catch {
      // The fd is gone either way.
    }
  }

  /** Stop watching and close the kick fd. */
  private dropKick(): void {
    const fd = this.kickFd;
    if (fd === null) return;
    this.kickFd = null;
    if (!this.handedBack) this.options.watcher.unwatch(fd);
    this.closeFd(fd);
  }

  /**
   * Count the fault, log it (rate-limited) and stop the ring. The stop is
   * queued: a call fault is found inside the data path's flush, which must
   * finish before the ring is reset under it.
   */
  private fail(fault: VringFault, detail: string): void {
    if (fault === VringFault.KickRefused) this.kickFault = fault;
    if (fault === VringFault.CallRefused) this.callFault = fault;
    const slot = VRING_FAULT_SLOTS.get(fault);
    if (slot !== undefined) this.options.counters.add(slot, 1);
    const until = fault === VringFault.MemoryFault ? 'a new memory table' : 'a new fd';
    rateLimited('warn', `vring ${this.options.name} ${fault}`, () => `ring ${this.options.name}: ${detail} (${fault}); ring stopped until the front-end hands over ${until}`, 1, 60_000);
    if (this.stopQueued) return;
    this.stopQueued = true;
    queueMicrotask(() => {
      this.stopQueued = false;
      if (this.fault !== null) this.stop();
    });
  }
}
