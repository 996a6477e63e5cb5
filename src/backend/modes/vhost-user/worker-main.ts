/**
 * Entry point of a queue-pair worker thread: maps guest memory itself, owns
 * its rings' kick and call eventfds, runs one epoll loop (FrontendLoop) for those and for
 * the stack's host sockets, and moves frames between the virtqueues and the
 * stack. The main thread talks to it only through worker-protocol messages.
 */
import { SHARED_LAYOUT } from './counter-layout'; // first: fixes the counter slot layout (see counter-layout.ts)
import { parentPort, workerData } from 'worker_threads';
import { native } from '../../../sys/native';
import { closeQuietly } from '../../../sys/close';
import { CounterBlock } from '../../../sys/counters';
import { setLogSink, log, type LogLevel } from '../../../sys/log';
import { GuestMemory } from '../../../virtqueue/guest-memory';
import { defaultFence, SplitRing } from '../../../virtqueue/split-ring';
import { VirtioNetPort } from '../../../virtqueue/virtio-net-port';
import { PcapWriter } from '../../frontends/middleware/pcap';
import { RX_RING, TX_RING, type WorkerControlRequest, type WorkerInit, type WorkerMessage, type WorkerReplyValue, type WorkerRequestWithId } from './worker-protocol';
import type { FrameSink, OffloadInfo, SegmentList } from '../../../io/frame-io';
import type { ReadyHandler } from '../../../stack/context';
import { FrontendLoop } from '../frontend-loop';
import { createStackParts, type StackParts } from '../../../stack/stack-factory';
import { FaultInjector } from '../../frontends/middleware/fault-injection';
import type { Stack } from '../../../stack/stack';
import { closeWorkerFlow, listWorkerFlows, WorkerForwards } from './worker-control';

/** Frames taken from the TX ring per wake-up before yielding to other fds (fairness). */
const TX_BUDGET = 256;
/** Ethernet header + RARP (ARP layout, opcode 3) padded to the 60-byte minimum. */
const RARP_FRAME_LENGTH = 60;
const ETHERNET_HEADER_LENGTH = 14;
/**
 * How often the stack's timers run. Finer than the stack's 1 s minimum so
 * that TCP's 1 s retransmission timeout fires close to when it is due.
 */
const WORKER_TIMER_INTERVAL_MS = 100;

/** Per-ring state as configured by the front-end. */
class RingSlot {
  readonly ring: SplitRing;
  num = 0;
  descriptorUserAddress = -1;
  availableUserAddress = -1;
  usedUserAddress = -1;
  base = 0;
  kickFd: number | null = null;
  callFd: number | null = null;
  enabled = false;
  /** Started by a kick; stopped by vring-stop (GET_VRING_BASE). */
  started = false;
  /** The last configure attempt failed: don't retry on every kick. */
  configureError: string | null = null;
  /**
   * Stopped by GET_VRING_BASE: the front-end owns the ring again, so its kicks
   * are not watched until it hands over a kick fd anew (as libvhost-user does).
   */
  handedBack = false;
  /** Watches the kick fd: drains the eventfd and lets the owner service the ring. */
  readonly kickHandler: ReadyHandler;

  constructor(readonly index: number, onKick: (slot: RingSlot) => void) {
    this.ring = new SplitRing(null);
    this.kickHandler = {
      onReady: (fd: number): void => {
        native.eventfdRead(fd);
        onKick(this);
      },
    };
  }
}

/** A sink that only counts (used when ferry runs without a stack). */
class CountingSink implements FrameSink {
  receiveFrame(_frame: SegmentList, _offload: OffloadInfo): void {
    // The port already counts frames and bytes.
  }
}

class QueuePairWorker {
  private readonly counters: CounterBlock;
  private memory: GuestMemory | null = null;
  private features = 0n;
  private readonly slots = [new RingSlot(RX_RING, (slot) => this.serviceRing(slot)), new RingSlot(TX_RING, (slot) => this.serviceRing(slot))];
  /** The worker's epoll loop: kick fds and the stack's host sockets (FdWatcher for the stack). */
  private readonly loop = new FrontendLoop();
  private readonly port: VirtioNetPort;
  private readonly pcap: PcapWriter | null;
  private txRescheduled = false;
  private stack: Stack | null = null;
  /** The current stack's flow table, services and listeners (control API). */
  private parts: StackParts | null = null;
  /** The forwarding rules, on the worker that owns the listeners (queue pair 0). */
  private readonly forwards: WorkerForwards | null;
  /** Tests only: FERRY_TEST_FAULTS puts fault-injection.ts between the rings and the stack (null otherwise). */
  private readonly faults: FaultInjector | null;

  constructor(private readonly init: WorkerInit) {
    this.counters = new CounterBlock(init.counters);
    this.forwards = init.stack !== null && init.queuePair === 0 ? new WorkerForwards(init.stack) : null;
    this.pcap = init.pcapPath !== null ? new PcapWriter(init.pcapPath) : null;
    const pcap = this.pcap;
    this.port = new VirtioNetPort({
      rx: this.slots[RX_RING].ring,
      tx: this.slots[TX_RING].ring,
      features: 0n,
      counters: this.counters,
      notifyRx: () => this.notify(RX_RING),
      notifyTx: () => this.notify(TX_RING),
      maxFrameLength: (init.stack?.mtu ?? 65520) + ETHERNET_HEADER_LENGTH,
      onFrame: pcap !== null ? (_direction, frame, length) => pcap.write(frame, length) : null,
    });
    this.faults = init.stack !== null ? FaultInjector.fromEnvironment(this.port) : null;
    this.port.sink = this.buildStack();
    // One guest notification per batch of ready fds.
    this.loop.onBatchEnd(() => this.port.flush());
    // Periodic stack work (timers, idle flow expiry, router advertisements); never keeps the thread alive.
    this.loop.every(WORKER_TIMER_INTERVAL_MS, () => {
      this.stack?.onTimer();
      this.faults?.tick(); // tests only: frames held back by fault injection go out
    });
  }

  /**
   * A fresh stack (no flows, the forwarding rules in force opened), or a
   * counting sink when ferry runs without one.
   */
  private buildStack(): FrameSink {
    const init = this.init;
    if (init.stack === null) return new CountingSink();
    this.parts = createStackParts(
      // With test fault injection the stack writes through its port and receives through its sink.
      { config: init.stack, port: this.faults?.port ?? this.port, counters: this.counters, watcher: this.loop, sockets: native },
      { ownsListeners: init.queuePair === 0, tcp: init.protocols.tcp, udp: init.protocols.udp, icmp: init.protocols.icmp, openConfiguredForwards: false },
    );
    this.stack = this.parts.stack;
    this.forwards?.openAll(this.parts);
    return this.faults?.sink(this.stack) ?? this.stack;
  }

  /** Answer a control API request (see WorkerControlReplies for each op's value). */
  private handleControl(request: WorkerControlRequest): WorkerReplyValue {
    switch (request.op) {
      case 'list-flows':
        return listWorkerFlows(this.parts, this.init.queuePair, request.protocol);
      case 'close-flow': {
        const closed = closeWorkerFlow(this.parts, request.serial);
        // A UDP close releases at once; send what it produced without waiting for the next wake-up.
        this.port.flush();
        return closed;
      }
      case 'add-forward':
        return this.ownForwards().add(this.parts, request.protocol, request.spec);
      case 'remove-forward':
        return this.ownForwards().remove(this.parts, request.protocol, request.spec);
      case 'list-forwards':
        return this.ownForwards().list();
    }
  }

  /** The forwarding rules; throws on a worker that does not own the listeners. */
  private ownForwards(): WorkerForwards {
    if (this.forwards === null) throw new Error(`queue pair ${this.init.queuePair} does not own the forwarding listeners`);
    return this.forwards;
  }

  // ---- requests from main ----

  handle(request: WorkerRequestWithId): WorkerReplyValue {
    switch (request.op) {
      case 'list-flows':
      case 'close-flow':
      case 'add-forward':
      case 'remove-forward':
      case 'list-forwards':
        return this.handleControl(request);
      case 'features':
        this.features = request.features;
        this.port.setFeatures(this.features);
        return 0;
      case 'mem-table': {
        const next = GuestMemory.map(request.regions);
        const old = this.memory;
        this.memory = next;
        for (const slot of this.slots) {
          const error = slot.ring.setMemory(next);
          if (error !== null && slot.started) {
            log.warn(`ring ${this.ringName(slot)}: ${error}; stopped`);
            this.stopRing(slot);
          }
        }
        old?.unmap();
        return 0;
      }
      case 'vring-num':
        this.slot(request.ring).num = request.num;
        return 0;
      case 'vring-addr': {
        const slot = this.slot(request.ring);
        const memory = this.memory;
        if (memory !== null) {
          for (const uva of [request.descriptorUserAddress, request.availableUserAddress, request.usedUserAddress]) {
            if (memory.uvaToGpa(uva) < 0) throw new Error(`ring address 0x${uva.toString(16)} is outside guest memory`);
          }
        }
        slot.descriptorUserAddress = request.descriptorUserAddress;
        slot.availableUserAddress = request.availableUserAddress;
        slot.usedUserAddress = request.usedUserAddress;
        slot.configureError = null;
        return 0;
      }
      case 'vring-base': {
        const slot = this.slot(request.ring);
        slot.base = request.base & 0xffff;
        slot.ring.lastAvailIdx = slot.base;
        return 0;
      }
      case 'vring-stop': {
        const slot = this.slot(request.ring);
        const index = slot.started ? slot.ring.lastAvailIdx : slot.base;
        this.stopRing(slot);
        slot.base = index;
        slot.handedBack = true;
        if (slot.kickFd !== null) this.loop.unwatch(slot.kickFd);
        return index;
      }
      case 'vring-kick': {
        const slot = this.slot(request.ring);
        this.replaceKick(slot, request.fd);
        return 0;
      }
      case 'vring-call': {
        const slot = this.slot(request.ring);
        if (slot.callFd !== null) closeQuietly(slot.callFd);
        slot.callFd = request.fd;
        return 0;
      }
      case 'vring-enable': {
        const slot = this.slot(request.ring);
        slot.enabled = request.enabled;
        if (request.enabled) this.serviceRing(slot);
        else this.stopRing(slot);
        return 0;
      }
      case 'send-rarp':
        this.sendRarp(request.mac);
        return 0;
      case 'reset':
        this.reset();
        return 0;
    }
  }

  private slot(ring: number): RingSlot {
    const slot = this.slots[ring];
    if (slot === undefined) throw new Error(`no ring ${ring}`);
    return slot;
  }

  private ringName(slot: RingSlot): string {
    return `${this.init.queuePair * 2 + slot.index} (${slot.index === RX_RING ? 'rx' : 'tx'})`;
  }

  private replaceKick(slot: RingSlot, fd: number | null): void {
    if (slot.kickFd !== null) {
      if (!slot.handedBack) this.loop.unwatch(slot.kickFd);
      closeQuietly(slot.kickFd);
    }
    slot.handedBack = false;
    slot.kickFd = fd;
    if (fd !== null) this.loop.watch(fd, native.constants.EPOLLIN, slot.kickHandler);
    // vhost-user: a ring starts on its first kick. With no kick fd the front-end
    // polls: treat the ring as kicked now.
    else this.serviceRing(slot);
  }

  /** Configure and start the ring if it is not running yet; returns true when it runs. */
  private startRing(slot: RingSlot): boolean {
    if (slot.started) return true;
    if (!slot.enabled || this.memory === null || slot.num === 0 || slot.configureError !== null) return false;
    slot.ring.setMemory(this.memory);
    slot.ring.lastAvailIdx = slot.base;
    // User addresses, so that a later SET_MEM_TABLE re-translates them (as libvhost-user does).
    const error = slot.ring.configureUserAddresses(slot.num, slot.descriptorUserAddress, slot.availableUserAddress, slot.usedUserAddress, this.features);
    if (error !== null) {
      slot.configureError = error;
      log.warn(`ring ${this.ringName(slot)}: ${error}; not started`);
      return false;
    }
    slot.started = true;
    log.debug(`ring ${this.ringName(slot)} started: size ${slot.num}, base ${slot.base}`);
    return true;
  }

  private stopRing(slot: RingSlot): void {
    if (slot.started) {
      // Publish what was committed (RX) or consumed (TX) before the index is read: the guest must get those buffers back.
      this.port.quiesce();
      slot.base = slot.ring.lastAvailIdx;
    }
    slot.started = false;
    // Not ready any more: the port and the stack see an empty ring until it is started again.
    slot.ring.reset();
  }

  /**
   * Broadcast a RARP for the guest's MAC (SEND_RARP after migration), so
   * switches learn where it now is. ferry owns the segment, so this only
   * matters to tools watching the guest side; sent as QEMU's announce is.
   */
  private sendRarp(mac: Uint8Array): void {
    const frame = this.port.reserve(RARP_FRAME_LENGTH);
    if (frame === null || frame.totalLength < RARP_FRAME_LENGTH) {
      this.port.cancel();
      return;
    }
    const bytes = new Uint8Array(RARP_FRAME_LENGTH);
    bytes.fill(0xff, 0, 6);
    bytes.set(mac.subarray(0, 6), 6);
    bytes.set([0x80, 0x35, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03], 12);
    bytes.set(mac.subarray(0, 6), 22);
    bytes.set(mac.subarray(0, 6), 32);
    frame.copyIn(0, bytes, 0, RARP_FRAME_LENGTH);
    this.port.commit(RARP_FRAME_LENGTH);
    this.port.flush();
  }

  /** The guest kicked (or a ring became enabled): do that ring's work. */
  private serviceRing(slot: RingSlot): void {
    if (!slot.enabled || slot.handedBack || !this.startRing(slot)) return;
    if (slot.index === TX_RING) this.drainTx();
    else this.port.rxKicked();
  }

  private drainTx(): void {
    const slot = this.slots[TX_RING];
    if (!slot.started) return;
    const more = this.port.processTx(TX_BUDGET);
    if (more && !this.txRescheduled) {
      // Let host sockets and RX run before the next batch.
      this.txRescheduled = true;
      setImmediate(() => {
        this.txRescheduled = false;
        this.drainTx();
      });
    }
  }

  private notify(ring: number): void {
    const fd = this.slots[ring].callFd;
    if (fd !== null) native.eventfdWrite(fd, 1);
  }

  private reset(): void {
    for (const slot of this.slots) {
      this.stopRing(slot);
      if (slot.kickFd !== null) {
        if (!slot.handedBack) this.loop.unwatch(slot.kickFd);
        closeQuietly(slot.kickFd);
      }
      slot.handedBack = false;
      if (slot.callFd !== null) closeQuietly(slot.callFd);
      slot.kickFd = null;
      slot.callFd = null;
      slot.enabled = false;
      slot.num = 0;
      slot.base = 0;
      slot.descriptorUserAddress = slot.availableUserAddress = slot.usedUserAddress = -1;
      slot.configureError = null;
      slot.ring.reset();
      slot.ring.setMemory(null);
    }
    this.memory?.unmap();
    this.memory = null;
    this.features = 0n;
    this.port.setFeatures(0n);
    // The guest is gone: its flows go with it (peers see resets), and the next guest starts clean.
    if (this.stack !== null) {
      this.stack.close();
      this.parts = null;
      this.port.sink = this.buildStack();
    }
  }
}

function post(message: WorkerMessage): void {
  parentPort?.postMessage(message);
}

function main(): void {
  const init = workerData as WorkerInit;
  setLogSink((level: LogLevel, message: string) => post({ type: 'log', level, message }));
  const worker = new QueuePairWorker(init);
  parentPort?.on('message', (request: WorkerRequestWithId) => {
    try {
      const value = worker.handle(request);
      post({ type: 'reply', id: request.id, ok: true, value });
    } catch (error) {
      post({ type: 'reply', id: request.id, ok: false, error: error instanceof Error ? error.message : String(error) });
    }
  });
  // Main confines the process once every worker is ready and no module file can be opened after that: load the lazily loaded ones now.
  closeQuietly(-1);
  defaultFence();
  GuestMemory.map([]);
  post({ type: 'ready', counterLayout: SHARED_LAYOUT });
}

main();
