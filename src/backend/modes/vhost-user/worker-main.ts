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
import { Vring } from '../../../virtqueue/vring';
import { defaultFence } from '../../../virtqueue/split-ring';
import { VirtioNetPort } from '../../../virtqueue/virtio-net-port';
import type { PcapWriter } from '../../frontends/middleware/pcap';
import { RX_RING, TX_RING, type WorkerControlRequest, type WorkerInit, type WorkerMessage, type WorkerReplyValue, type WorkerRequestWithId } from './worker-protocol';
import type { FrameSink, OffloadInfo, SegmentList } from '../../../io/frame-io';
import { FrontendLoop } from '../frontend-loop';
import { createStackParts, type StackParts } from '../../../stack/stack-factory';
import type { FaultInjector } from '../../frontends/middleware/fault-injection';
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
  /** The worker's epoll loop: kick fds and the stack's host sockets (FdWatcher for the stack). */
  private readonly loop = new FrontendLoop();
  /** RX and TX, indexed by RX_RING / TX_RING. */
  private readonly vrings: readonly [Vring, Vring];
  private readonly port: VirtioNetPort;
  private readonly pcap: PcapWriter | null;
  private txRescheduled = false;
  private disposed = false;
  private stack: Stack | null = null;
  /** The current stack's flow table, services and listeners (control API). */
  private parts: StackParts | null = null;
  /** The forwarding rules, on the worker that owns the listeners (queue pair 0). */
  private readonly forwards: WorkerForwards | null;
  /** Tests only: FERRY_TEST_FAULTS puts fault-injection.ts between the rings and the stack (null otherwise). */
  private readonly faults: FaultInjector | null;

  constructor(private readonly init: WorkerInit) {
    this.counters = new CounterBlock(init.counters);
    this.vrings = [this.makeVring(RX_RING), this.makeVring(TX_RING)];
    this.forwards = init.stack !== null && init.queuePair === 0 ? new WorkerForwards(init.stack) : null;
    // pcap and fault injection are loaded only when on, here at startup (before the process is confined).
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only with --pcap
    this.pcap = init.pcapPath !== null ? new (require('../../frontends/middleware/pcap') as typeof import('../../frontends/middleware/pcap')).PcapWriter(init.pcapPath) : null;
    const pcap = this.pcap;
    this.port = new VirtioNetPort({
      rx: this.vrings[RX_RING].ring,
      tx: this.vrings[TX_RING].ring,
      features: 0n,
      counters: this.counters,
      notifyRx: () => this.vrings[RX_RING].notify(),
      notifyTx: () => this.vrings[TX_RING].notify(),
      maxFrameLength: (init.stack?.mtu ?? 65520) + ETHERNET_HEADER_LENGTH,
      onFrame: pcap !== null ? (_direction, frame, length) => pcap.write(frame, length) : null,
    });
    this.faults =
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only when FERRY_TEST_FAULTS is set (tests)
      init.stack !== null && (process.env.FERRY_TEST_FAULTS ?? '') !== '' ? (require('../../frontends/middleware/fault-injection') as typeof import('../../frontends/middleware/fault-injection')).FaultInjector.fromEnvironment(this.port) : null;
    this.port.sink = this.buildStack();
    // One guest notification per batch of ready fds; then a look at whether guest memory faulted under the rings.
    this.loop.onBatchStart(() => this.port.beginBatch());
    this.loop.onBatchEnd(() => {
      this.port.endBatch();
      if (this.memory !== null && this.memory.faulted) for (const vring of this.vrings) vring.memoryFaulted();
    });
    // Periodic stack work (timers, idle flow expiry, router advertisements); never keeps the thread alive.
    this.loop.every(WORKER_TIMER_INTERVAL_MS, () => {
      this.stack?.onTimer();
      this.faults?.tick(); // tests only: frames held back by fault injection go out
    });
  }

  /** One ring's state; kicks are serviced here, and the port publishes before the ring stops. */
  private makeVring(index: number): Vring {
    const constants = native.constants;
    return new Vring({
      name: `${this.init.queuePair * 2 + index} (${index === RX_RING ? 'rx' : 'tx'})`,
      counters: this.counters,
      watcher: this.loop,
      fds: native,
      epoll: { in: constants.EPOLLIN, hangup: constants.EPOLLHUP | constants.EPOLLERR },
      onKick: index === TX_RING ? () => this.drainTx() : () => this.port.rxKicked(),
      // Publish what was committed (RX) or consumed (TX) before the index is read: the guest must get those buffers back.
      beforeStop: () => this.port.quiesce(),
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
    if (this.disposed && request.op !== 'dispose') {
      if ((request.op === 'vring-kick' || request.op === 'vring-call') && request.fd !== null) closeFdQuietly(request.fd);
      throw new Error(`queue pair ${this.init.queuePair} is disposed`);
    }
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
        for (const vring of this.vrings) vring.setFeatures(this.features);
        return 0;
      case 'mem-table': {
        const next = GuestMemory.map(request.regions);
        const old = this.memory;
        this.memory = next;
        for (const vring of this.vrings) {
          const error = vring.setMemory(next);
          if (error !== null) log.warn(`ring ${this.ringName(vring)}: ${error}; stopped`);
        }
        old?.unmap();
        return 0;
      }
      case 'vring-num':
        this.vring(request.ring).setNum(request.num);
        return 0;
      case 'vring-addr':
        this.vring(request.ring).setAddresses(request.descriptorUserAddress, request.availableUserAddress, request.usedUserAddress);
        return 0;
      case 'vring-base':
        this.vring(request.ring).setBase(request.base);
        return 0;
      case 'vring-stop':
        return this.vring(request.ring).handBack();
      case 'vring-kick':
        this.vringTakingFd(request.ring, request.fd).setKick(request.fd);
        return 0;
      case 'vring-call':
        this.vringTakingFd(request.ring, request.fd).setCall(request.fd);
        return 0;
      case 'vring-enable':
        this.vring(request.ring).setEnabled(request.enabled);
        return 0;
      case 'send-rarp':
        this.sendRarp(request.mac);
        return 0;
      case 'reset':
        this.reset();
        return 0;
      case 'dispose':
        this.dispose();
        return 0;
    }
  }

  private vring(ring: number): Vring {
    const vring = this.vrings[ring];
    if (vring === undefined) throw new Error(`no ring ${ring}`);
    return vring;
  }

  /** The ring an fd is handed to; the fd is closed here when there is no such ring (nobody else would). */
  private vringTakingFd(ring: number, fd: number | null): Vring {
    const vring = this.vrings[ring];
    if (vring === undefined) {
      if (fd !== null) closeFdQuietly(fd);
      throw new Error(`no ring ${ring}`);
    }
    return vring;
  }

  private ringName(vring: Vring): string {
    return `${this.init.queuePair * 2 + this.vrings.indexOf(vring)} (${vring === this.vrings[RX_RING] ? 'rx' : 'tx'})`;
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

  private drainTx(): void {
    if (!this.vrings[TX_RING].running) return;
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

  /**
   * The front-end is gone (or RESET_OWNER): rings stopped and their fds
   * closed, memory unmapped, and the stack disposed with everything it held
   * (flows, sockets, pending resets, its hold on the port). The next guest
   * gets a fresh stack; nothing of the old one is reachable from the port,
   * the loop or this worker.
   */
  private reset(): void {
    for (const vring of this.vrings) vring.reset();
    this.memory?.unmap();
    this.memory = null;
    this.features = 0n;
    this.port.setFeatures(0n);
    this.faults?.dropHeld();
    this.port.forgetGuest();
    if (this.parts !== null) {
      const parts = this.parts;
      this.parts = null;
      this.stack = null;
      try {
        parts.dispose();
      } finally {
        this.port.sink = this.buildStack();
      }
    }
  }

  /**
   * The worker's end (the daemon stops): everything reset() releases, and the
   * stack, the port, the loop (timers, Poller) and the capture file as well;
   * the thread then has nothing left to run. Idempotent.
   */
  private dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const vring of this.vrings) vring.reset();
    this.memory?.unmap();
    this.memory = null;
    this.faults?.dropHeld();
    const parts = this.parts;
    this.parts = null;
    this.stack = null;
    try {
      parts?.dispose();
    } finally {
      this.port.dispose();
      this.loop.dispose();
      this.pcap?.close();
    }
  }
}

/** Close an fd nobody else will close; it may already be gone. */
function closeFdQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    // Already closed: nothing held.
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
