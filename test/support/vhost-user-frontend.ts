/**
 * A vhost-user front-end for tests: speaks the protocol the way QEMU 7.2's
 * vhost-user net client does (same message order, REPLY_ACK on
 * SET_MEM_TABLE), provides memfd "guest memory", builds split rings as a
 * virtio driver would, and sends/receives Ethernet frames through them.
 *
 * Everything is asynchronous and polls with short sleeps, so the back-end
 * may run in the same process (the server is driven by the same event loop).
 * Every wait is bounded by a timeout.
 *
 * Rings are built with the shared driver-side helper (split-ring-driver.ts).
 */
import { native } from '../../src/sys/native';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  FLAG_VERSION,
  HEADER_SIZE,
  type MemoryRegion,
  PayloadSize,
  Request,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_MTU,
  VHOST_USER_PROTOCOL_F_RARP,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
  type VringAddress,
  decodeHeader,
  encodeHeader,
  encodeMemoryTable,
  encodeSingleMemoryRegion,
  encodeU64,
  encodeVringAddress,
  encodeVringState,
  memoryTableSize,
  vringFdRequestValue,
} from '../../src/backend/modes/vhost-user/protocol';
import {
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_RING_F_EVENT_IDX,
} from '../../src/virtqueue/features';
import { GuestArena, SplitRingDriver, type UsedEntry } from './fakes/split-ring-driver';

const PAGE_SIZE = 4096;
/** virtio-net header with VERSION_1 (or MRG_RXBUF): 12 bytes, num_buffers last. */
export const VIRTIO_NET_HEADER_SIZE = 12;

/** Features the test driver knows how to drive; the offer is masked with these. */
export const TEST_DRIVER_FEATURES =
  VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MQ | VIRTIO_NET_F_MTU | VHOST_USER_F_PROTOCOL_FEATURES;

/** Protocol features the test front-end uses when offered (QEMU 7.2 net asks for these among others). */
export const TEST_FRONTEND_PROTOCOL_FEATURES =
  VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_REPLY_ACK | VHOST_USER_PROTOCOL_F_RARP | VHOST_USER_PROTOCOL_F_MTU | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function closeQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    // already closed
  }
}

/** A message read from the back-end. */
export interface BackendMessage {
  request: number;
  flags: number;
  size: number;
  payload: DataView;
  fds: number[];
}

/** Thrown when the back-end closed the connection while we waited for a reply. */
export class BackendClosedError extends Error {
  constructor() {
    super('vhost-user back-end closed the connection');
    this.name = 'BackendClosedError';
  }
}

/** A frame taken from an RX queue. */
export interface ReceivedFrame {
  /** The 12-byte virtio-net header. */
  header: Uint8Array;
  /** The Ethernet frame after the header. */
  frame: Uint8Array;
  /** Number of RX buffers the frame used. */
  buffers: number;
}

/**
 * Buffer slots of one queue: `count` slots of `slotSize` bytes from
 * `baseGpa`, handed to chains and returned when their head comes back used.
 */
class SlotPool {
  private readonly free: number[] = [];
  private readonly byHead = new Map<number, number[]>();

  constructor(readonly baseGpa: number, readonly slotSize: number, count: number) {
    for (let i = count - 1; i >= 0; i--) this.free.push(i);
  }

  get freeCount(): number {
    return this.free.length;
  }

  /** Take `count` slots; returns their guest addresses. */
  take(count: number): number[] {
    if (count > this.free.length) throw new Error('out of buffer slots');
    const slots: number[] = [];
    for (let i = 0; i < count; i++) slots.push(this.free.pop() as number);
    return slots.map((slot) => this.baseGpa + slot * this.slotSize);
  }

  /** Remember which slots the chain starting at `head` uses. */
  attach(head: number, gpas: number[]): void {
    this.byHead.set(head, gpas);
  }

  /** The chain at `head` came back: its slots are free again. Returns their addresses. */
  release(head: number): number[] {
    const gpas = this.byHead.get(head) ?? [];
    this.byHead.delete(head);
    for (const gpa of gpas) this.free.push((gpa - this.baseGpa) / this.slotSize);
    return gpas;
  }

  /** Give slots back that never made it into a chain. */
  giveBack(gpas: number[]): void {
    for (const gpa of gpas) this.free.push((gpa - this.baseGpa) / this.slotSize);
  }
}

// ---------------------------------------------------------------------------
// The front-end.
// ---------------------------------------------------------------------------

export interface FrontendOptions {
  /** Queue pairs to set up (RX = 2n, TX = 2n+1). */
  queuePairs?: number;
  /** Descriptors per ring (power of two). */
  queueSize?: number;
  /** Bytes per buffer slot (one slot per descriptor). */
  slotSize?: number;
  /** Guest physical address of the memory region. */
  guestBase?: bigint;
  /** The front-end's "user address" of the region (QEMU's mapping address); ring addresses use it. */
  userBase?: bigint;
  /** Virtio features wanted (masked with the offer). */
  features?: bigint;
  /** Protocol features wanted (masked with the offer). */
  protocolFeatures?: bigint;
  /** NET_SET_MTU value to send when the MTU protocol feature is negotiated; none when undefined. */
  mtu?: number;
  /** Bound on each wait for a reply. */
  replyTimeoutMs?: number;
  /**
   * How start() hands over guest memory. 'auto' does what QEMU 7.2 does:
   * ADD_MEM_REG per region when CONFIGURE_MEM_SLOTS was negotiated, else
   * SET_MEM_TABLE. 'table' forces SET_MEM_TABLE.
   */
  memoryMessages?: 'auto' | 'table';
}

interface QueueState {
  ring: SplitRingDriver;
  slots: SlotPool;
  kickFd: number;
  callFd: number;
}

/**
 * A test front-end connected to a vhost-user back-end. Low-level calls
 * (sendRaw, sendRequest, readMessage) for malformed-input tests, and the
 * QEMU-like sequence (negotiate, setupMemory, startQueues) plus frame I/O.
 */
export class VhostUserFrontend {
  readonly queuePairs: number;
  readonly queueSize: number;
  readonly slotSize: number;
  readonly guestBase: bigint;
  readonly userBase: bigint;
  private readonly options: FrontendOptions;
  private readonly replyTimeoutMs: number;
  private closed = false;
  /** Features offered by the back-end (GET_FEATURES). */
  offeredFeatures = 0n;
  /** Features acked (SET_FEATURES). */
  features = 0n;
  offeredProtocolFeatures = 0n;
  protocolFeatures = 0n;
  /** GET_QUEUE_NUM answer (0 when MQ was not negotiated). */
  maxQueues = 0;
  /** GET_MAX_MEM_SLOTS answer (0 when not asked). */
  maxMemSlots = 0;
  memoryFd = -1;
  memorySize = 0;
  memory: Uint8Array | null = null;
  /** The guest memory as the split-ring driver sees it (null before createMemory). */
  arena: GuestArena | null = null;
  private mapping: ArrayBuffer | null = null;
  private readonly queues: QueueState[] = [];

  private constructor(readonly fd: number, options: FrontendOptions) {
    this.options = options;
    this.queuePairs = options.queuePairs ?? 1;
    this.queueSize = options.queueSize ?? 256;
    this.slotSize = options.slotSize ?? 4096;
    this.guestBase = options.guestBase ?? 0x100000n;
    this.userBase = options.userBase ?? 0x7f1200000000n;
    this.replyTimeoutMs = options.replyTimeoutMs ?? 5000;
  }

  /** Connect to the back-end's socket (no message sent yet). */
  static connect(socketPath: string, options: FrontendOptions = {}): VhostUserFrontend {
    const fd = native.unixConnect(socketPath);
    native.setNonBlocking(fd, true);
    return new VhostUserFrontend(fd, options);
  }

  /** Use an already connected socket (e.g. one end of a socketpair); takes ownership of fd. */
  static attach(fd: number, options: FrontendOptions = {}): VhostUserFrontend {
    native.setNonBlocking(fd, true);
    return new VhostUserFrontend(fd, options);
  }

  // ---- raw messages ----

  /** Send raw bytes (e.g. half a header) with optional fds; retries briefly while the socket is full. */
  async sendBytes(bytes: Uint8Array, fds: number[] = []): Promise<void> {
    let offset = 0;
    let pendingFds = fds;
    const deadline = Date.now() + this.replyTimeoutMs;
    while (offset < bytes.length || (bytes.length === 0 && offset === 0)) {
      const sent = native.sendFds(this.fd, bytes, offset, bytes.length - offset, pendingFds);
      if (sent > 0) {
        offset += sent;
        pendingFds = [];
      } else if (Date.now() > deadline) {
        throw new Error('vhost-user front-end: socket stayed full');
      } else {
        await sleep(1);
      }
      if (bytes.length === 0) break;
    }
  }

  /**
   * Send a message with arbitrary header fields: `size` defaults to the
   * payload length and `flags` to version 1, so a test can lie about either.
   */
  async sendRaw(fields: { request: number; flags?: number; size?: number }, payload: Uint8Array = new Uint8Array(0), fds: number[] = []): Promise<void> {
    const message = new Uint8Array(HEADER_SIZE + payload.length);
    encodeHeader(new DataView(message.buffer), 0, fields.request, fields.flags ?? FLAG_VERSION, fields.size ?? payload.length);
    message.set(payload, HEADER_SIZE);
    await this.sendBytes(message, fds);
  }

  /** Send a well-formed request, with NEED_REPLY when asked. */
  async sendRequest(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], needReply = false): Promise<void> {
    await this.sendRaw({ request, flags: FLAG_VERSION | (needReply ? FLAG_NEED_REPLY : 0) }, payload, fds);
  }

  /**
   * Read one message from the back-end. Throws BackendClosedError on EOF and
   * a timeout error after `timeoutMs`.
   */
  async readMessage(timeoutMs = this.replyTimeoutMs): Promise<BackendMessage> {
    const header = new Uint8Array(HEADER_SIZE);
    const fds: number[] = [];
    const deadline = Date.now() + timeoutMs;
    await this.readExactly(header, fds, deadline);
    const { request, flags, size } = decodeHeader(new DataView(header.buffer));
    if (size > 4096) throw new Error(`vhost-user front-end: reply claims ${size} bytes`);
    const payload = new Uint8Array(size);
    await this.readExactly(payload, fds, deadline);
    return { request, flags, size, payload: new DataView(payload.buffer), fds };
  }

  private async readExactly(buffer: Uint8Array, fds: number[], deadline: number): Promise<void> {
    let filled = 0;
    while (filled < buffer.length) {
      let result;
      try {
        result = native.recvFds(this.fd, buffer, filled, buffer.length - filled, 8);
      } catch (error) {
        if ((error as { code?: string }).code === 'ECONNRESET') throw new BackendClosedError();
        throw error;
      }
      if (result === null) {
        if (Date.now() > deadline) throw new Error('vhost-user front-end: timed out waiting for the back-end');
        await sleep(1);
        continue;
      }
      fds.push(...result.fds);
      if (result.bytes === 0) throw new BackendClosedError();
      filled += result.bytes;
    }
  }

  /** Read a reply to `request` and check its header (reply flag, request, size). */
  async readReply(request: number, size: number): Promise<DataView> {
    const reply = await this.readMessage();
    for (const fd of reply.fds) closeQuietly(fd);
    if (reply.request !== request) throw new Error(`reply to request ${reply.request}, expected ${request}`);
    if (reply.flags !== (FLAG_VERSION | FLAG_REPLY)) throw new Error(`reply flags 0x${reply.flags.toString(16)}`);
    if (reply.size !== size) throw new Error(`reply of ${reply.size} bytes to request ${request}, expected ${size}`);
    return reply.payload;
  }

  /** Read a REPLY_ACK for `request`; returns its u64 (0 = success). */
  async readAck(request: number): Promise<bigint> {
    return (await this.readReply(request, PayloadSize.U64)).getBigUint64(0, true);
  }

  /**
   * Wait until the back-end closes the connection. Returns true on EOF within
   * the timeout; any bytes that arrive meanwhile are read and discarded.
   */
  async waitForClose(timeoutMs = 2000): Promise<boolean> {
    const buffer = new Uint8Array(256);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      let result;
      try {
        result = native.recvFds(this.fd, buffer, 0, buffer.length, 8);
      } catch (error) {
        if ((error as { code?: string }).code === 'ECONNRESET') return true;
        throw error;
      }
      if (result === null) {
        await sleep(2);
        continue;
      }
      for (const fd of result.fds) closeQuietly(fd);
      if (result.bytes === 0) return true;
    }
    return false;
  }

  private needReplyFlag(): boolean {
    return (this.protocolFeatures & VHOST_USER_PROTOCOL_F_REPLY_ACK) !== 0n;
  }

  /** Send a setter; with REPLY_ACK negotiated and `ack`, wait for the ack and throw on failure. */
  private async setter(request: number, payload: Uint8Array, fds: number[] = [], ack = this.needReplyFlag()): Promise<void> {
    await this.sendRequest(request, payload, fds, ack);
    if (ack) {
      const result = await this.readAck(request);
      if (result !== 0n) throw new Error(`back-end refused request ${request} (ack ${result})`);
    }
  }

  // ---- typed requests ----

  /** GET_FEATURES. */
  async getFeatures(): Promise<bigint> {
    await this.sendRequest(Request.GET_FEATURES);
    return (await this.readReply(Request.GET_FEATURES, 8)).getBigUint64(0, true);
  }

  /** SET_FEATURES. */
  async setFeatures(features: bigint, ack?: boolean): Promise<void> {
    await this.setter(Request.SET_FEATURES, u64Bytes(features), [], ack);
    this.features = features;
  }

  /** GET_PROTOCOL_FEATURES. */
  async getProtocolFeatures(): Promise<bigint> {
    await this.sendRequest(Request.GET_PROTOCOL_FEATURES);
    return (await this.readReply(Request.GET_PROTOCOL_FEATURES, 8)).getBigUint64(0, true);
  }

  /** SET_PROTOCOL_FEATURES (never acked: REPLY_ACK is being negotiated by it). */
  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.sendRequest(Request.SET_PROTOCOL_FEATURES, u64Bytes(features));
    this.protocolFeatures = features;
  }

  /** GET_QUEUE_NUM. */
  async getQueueNum(): Promise<number> {
    await this.sendRequest(Request.GET_QUEUE_NUM);
    return Number((await this.readReply(Request.GET_QUEUE_NUM, 8)).getBigUint64(0, true));
  }

  /** GET_MAX_MEM_SLOTS. */
  async getMaxMemSlots(): Promise<number> {
    await this.sendRequest(Request.GET_MAX_MEM_SLOTS);
    return Number((await this.readReply(Request.GET_MAX_MEM_SLOTS, 8)).getBigUint64(0, true));
  }

  /** SET_OWNER. */
  async setOwner(): Promise<void> {
    await this.setter(Request.SET_OWNER, new Uint8Array(0), [], false);
  }

  /** SET_MEM_TABLE with the given regions and fds (QEMU asks for an ack when REPLY_ACK is on). */
  async setMemTable(regions: MemoryRegion[], fds: number[], ack?: boolean): Promise<void> {
    const payload = new Uint8Array(memoryTableSize(regions.length));
    encodeMemoryTable(new DataView(payload.buffer), 0, regions);
    await this.setter(Request.SET_MEM_TABLE, payload, fds, ack);
  }

  /** ADD_MEM_REG. */
  async addMemRegion(region: MemoryRegion, fd: number, ack?: boolean): Promise<void> {
    const payload = new Uint8Array(PayloadSize.SINGLE_MEMORY_REGION);
    encodeSingleMemoryRegion(new DataView(payload.buffer), 0, region);
    await this.setter(Request.ADD_MEM_REG, payload, [fd], ack);
  }

  /** REM_MEM_REG. */
  async removeMemRegion(region: MemoryRegion, ack?: boolean): Promise<void> {
    const payload = new Uint8Array(PayloadSize.SINGLE_MEMORY_REGION);
    encodeSingleMemoryRegion(new DataView(payload.buffer), 0, region);
    await this.setter(Request.REM_MEM_REG, payload, [], ack);
  }

  /** SET_VRING_NUM / SET_VRING_BASE / SET_VRING_ENABLE (vring state payload). */
  async setVringState(request: number, index: number, num: number, ack?: boolean): Promise<void> {
    const payload = new Uint8Array(8);
    encodeVringState(new DataView(payload.buffer), 0, index, num);
    await this.setter(request, payload, [], ack);
  }

  /** SET_VRING_ADDR. */
  async setVringAddr(address: VringAddress, ack?: boolean): Promise<void> {
    const payload = new Uint8Array(PayloadSize.VRING_ADDRESS);
    encodeVringAddress(new DataView(payload.buffer), 0, address);
    await this.setter(Request.SET_VRING_ADDR, payload, [], ack);
  }

  /** SET_VRING_KICK / CALL / ERR with an fd, or the no-fd flag when fd is null. */
  async setVringFd(request: number, index: number, fd: number | null, ack?: boolean): Promise<void> {
    await this.setter(request, u64Bytes(vringFdRequestValue(index, fd === null)), fd === null ? [] : [fd], ack);
  }

  /** GET_VRING_BASE: stops the ring; returns the back-end's next avail index. */
  async getVringBase(index: number): Promise<number> {
    const payload = new Uint8Array(8);
    encodeVringState(new DataView(payload.buffer), 0, index, 0);
    await this.sendRequest(Request.GET_VRING_BASE, payload);
    const reply = await this.readReply(Request.GET_VRING_BASE, 8);
    if (reply.getUint32(0, true) !== index) throw new Error(`GET_VRING_BASE reply for vring ${reply.getUint32(0, true)}`);
    return reply.getUint32(4, true);
  }

  /** NET_SET_MTU. */
  async setMtu(mtu: number, ack?: boolean): Promise<void> {
    await this.setter(Request.NET_SET_MTU, u64Bytes(BigInt(mtu)), [], ack);
  }

  // ---- the QEMU-like sequence ----

  /**
   * The initialisation QEMU's vhost_user_backend_init + vhost_dev_init do:
   * GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (MQ),
   * GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS), SET_OWNER, GET_FEATURES.
   */
  async negotiate(): Promise<void> {
    this.offeredFeatures = await this.getFeatures();
    if ((this.offeredFeatures & VHOST_USER_F_PROTOCOL_FEATURES) !== 0n) {
      this.offeredProtocolFeatures = await this.getProtocolFeatures();
      const wanted = this.options.protocolFeatures ?? TEST_FRONTEND_PROTOCOL_FEATURES;
      await this.setProtocolFeatures(this.offeredProtocolFeatures & wanted);
    }
    if ((this.protocolFeatures & VHOST_USER_PROTOCOL_F_MQ) !== 0n) {
      this.maxQueues = await this.getQueueNum();
      if (this.queuePairs > this.maxQueues) throw new Error(`asking ${this.queuePairs} queue pairs, back-end supports ${this.maxQueues}`);
    } else if (this.queuePairs > 1) {
      throw new Error('back-end did not offer MQ');
    }
    if ((this.protocolFeatures & VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) !== 0n) this.maxMemSlots = await this.getMaxMemSlots();
    await this.setOwner();
    this.offeredFeatures = await this.getFeatures();
  }

  /** Create and map the memfd guest memory: the rings first, then each queue's buffer slots. */
  createMemory(): void {
    const rings = 2 * this.queuePairs;
    const ringBytes = rings * (16 * this.queueSize + 6 + 2 * this.queueSize + 6 + 8 * this.queueSize + 32);
    this.memorySize = alignUp(alignUp(ringBytes, PAGE_SIZE) + rings * this.queueSize * this.slotSize, 2 * 1024 * 1024);
    this.memoryFd = native.memfdCreate('ferry-test-guest', this.memorySize);
    [this.mapping] = native.mmap(this.memoryFd, 0, this.memorySize, this.memorySize);
    this.memory = new Uint8Array(this.mapping);
    const arena = new GuestArena(this.memory, Number(this.guestBase));
    this.arena = arena;
    const ringDrivers = Array.from({ length: rings }, () => new SplitRingDriver(arena, this.queueSize));
    for (let i = 0; i < rings; i++) {
      this.queues.push({
        ring: ringDrivers[i],
        slots: new SlotPool(arena.alloc(this.queueSize * this.slotSize, PAGE_SIZE), this.slotSize, this.queueSize),
        kickFd: -1,
        callFd: -1,
      });
    }
  }

  /** The single memory region this front-end offers. */
  memoryRegion(): MemoryRegion {
    return { guestAddress: this.guestBase, size: BigInt(this.memorySize), userAddress: this.userBase, mmapOffset: 0n };
  }

  /** Front-end user address of a guest address (what SET_VRING_ADDR carries). */
  userAddress(gpa: number): bigint {
    return this.userBase + (BigInt(gpa) - this.guestBase);
  }

  /**
   * What QEMU's vhost_dev_start does: SET_FEATURES, the memory (ADD_MEM_REG
   * with CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE; acked with REPLY_ACK),
   * then per ring SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR,
   * SET_VRING_KICK, SET_VRING_CALL, then NET_SET_MTU and SET_VRING_ENABLE.
   */
  async start(): Promise<void> {
    if (this.memory === null) this.createMemory();
    const wanted = this.options.features ?? TEST_DRIVER_FEATURES;
    await this.setFeatures(this.offeredFeatures & wanted);
    const slots = (this.protocolFeatures & VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) !== 0n;
    if (slots && (this.options.memoryMessages ?? 'auto') === 'auto') await this.addMemRegion(this.memoryRegion(), this.memoryFd);
    else await this.setMemTable([this.memoryRegion()], [this.memoryFd]);
    for (let i = 0; i < this.queues.length; i++) {
      const q = this.queues[i];
      q.kickFd = native.eventfd(0);
      q.callFd = native.eventfd(0);
      await this.setVringState(Request.SET_VRING_NUM, i, this.queueSize);
      await this.setVringState(Request.SET_VRING_BASE, i, 0);
      await this.setVringAddr({
        index: i,
        flags: 0,
        descriptorUserAddress: this.userAddress(q.ring.descGpa),
        usedUserAddress: this.userAddress(q.ring.usedGpa),
        availableUserAddress: this.userAddress(q.ring.availGpa),
        logGuestAddress: 0n,
      });
      await this.setVringFd(Request.SET_VRING_KICK, i, q.kickFd);
      await this.setVringFd(Request.SET_VRING_CALL, i, q.callFd);
    }
    if (this.options.mtu !== undefined && (this.protocolFeatures & VHOST_USER_PROTOCOL_F_MTU) !== 0n) await this.setMtu(this.options.mtu);
    if ((this.features & VHOST_USER_F_PROTOCOL_FEATURES) !== 0n) {
      for (let i = 0; i < this.queues.length; i++) await this.setVringState(Request.SET_VRING_ENABLE, i, 1);
    }
  }

  /** The driver ring of vring `index` (RX of pair p = 2p, TX = 2p+1). */
  ring(index: number): SplitRingDriver {
    return this.queues[index].ring;
  }

  /** Signal the kick eventfd of vring `index`. */
  kick(index: number): void {
    native.eventfdWrite(this.queues[index].kickFd, 1);
  }

  private get eventIdx(): boolean {
    return (this.features & VIRTIO_RING_F_EVENT_IDX) !== 0n;
  }

  /** Pop one used entry of vring `index`, freeing its slots; asks for the next call (used_event) with EVENT_IDX. */
  private takeUsed(index: number): { entry: UsedEntry; gpas: number[] } | null {
    const q = this.queues[index];
    const entry = q.ring.popUsed();
    if (entry === null) return null;
    if (this.eventIdx) q.ring.setUsedEvent(q.ring.usedIdx);
    return { entry, gpas: q.slots.release(entry.id) };
  }

  /**
   * Queue one frame on the TX ring of `queuePair` behind a zero 12-byte
   * virtio-net header (one descriptor per slot-sized piece) and kick.
   */
  sendFrame(queuePair: number, frame: Uint8Array): void {
    const index = 2 * queuePair + 1;
    const q = this.queues[index];
    const arena = this.arena as GuestArena;
    const data = new Uint8Array(VIRTIO_NET_HEADER_SIZE + frame.length);
    data.set(frame, VIRTIO_NET_HEADER_SIZE);
    this.reclaimTx(queuePair);
    const pieces = Math.ceil(data.length / this.slotSize);
    const gpas = q.slots.take(pieces);
    const buffers = gpas.map((gpa, i) => {
      const piece = data.subarray(i * this.slotSize, Math.min(data.length, (i + 1) * this.slotSize));
      arena.write(gpa, piece);
      return { gpa, length: piece.length, writable: false };
    });
    const head = q.ring.addChain(buffers);
    if (head < 0) {
      q.slots.giveBack(gpas);
      throw new Error('TX ring full');
    }
    q.slots.attach(head, gpas);
    q.ring.publish();
    this.kick(index);
  }

  /** Free TX chains of `queuePair` the back-end has used. Returns how many came back. */
  reclaimTx(queuePair = 0): number {
    let count = 0;
    while (this.takeUsed(2 * queuePair + 1) !== null) count++;
    return count;
  }

  /** Make `count` device-writable buffers of `size` bytes (<= slotSize) available on RX of `queuePair`, and kick. */
  provideRxBuffers(count: number, size = this.slotSize, queuePair = 0): void {
    const index = 2 * queuePair;
    const q = this.queues[index];
    for (let i = 0; i < count; i++) {
      const gpas = q.slots.take(1);
      const head = q.ring.addChain([{ gpa: gpas[0], length: Math.min(size, this.slotSize), writable: true }]);
      if (head < 0) {
        q.slots.giveBack(gpas);
        throw new Error('RX ring full');
      }
      q.slots.attach(head, gpas);
    }
    q.ring.publish();
    this.kick(index);
  }

  /**
   * Wait for the next frame on RX of `queuePair` (polling the used ring;
   * the call eventfd is drained as we go). With MRG_RXBUF a frame may span
   * num_buffers used entries. Returns null on timeout.
   */
  async waitForRxFrame(timeoutMs = 2000, queuePair = 0): Promise<ReceivedFrame | null> {
    const index = 2 * queuePair;
    const q = this.queues[index];
    const arena = this.arena as GuestArena;
    const deadline = Date.now() + timeoutMs;
    const parts: Uint8Array[] = [];
    let expected = 1;
    while (parts.length < expected) {
      const used = this.takeUsed(index);
      if (used === null) {
        if (Date.now() > deadline) return null;
        native.eventfdRead(q.callFd);
        await sleep(1);
        continue;
      }
      if (used.gpas.length === 0) throw new Error(`RX used entry with unknown id ${used.entry.id}`);
      parts.push(arena.read(used.gpas[0], Math.min(used.entry.length, this.slotSize)));
      if (parts.length === 1 && (this.features & VIRTIO_NET_F_MRG_RXBUF) !== 0n && parts[0].length >= VIRTIO_NET_HEADER_SIZE) {
        expected = Math.max(1, new DataView(parts[0].buffer, parts[0].byteOffset).getUint16(10, true));
      }
    }
    const total = parts.reduce((sum, p) => sum + p.length, 0);
    const all = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return { header: all.slice(0, VIRTIO_NET_HEADER_SIZE), frame: all.slice(VIRTIO_NET_HEADER_SIZE), buffers: parts.length };
  }

  /**
   * Release memory and eventfds but leave the socket open and unowned: for a
   * test that goes on over the same connection with a fresh front-end state
   * (after RESET_OWNER, through VhostUserFrontend.attach on `fd`). Afterwards
   * disconnect() closes nothing.
   */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    for (const q of this.queues) {
      if (q.kickFd >= 0) closeQuietly(q.kickFd);
      if (q.callFd >= 0) closeQuietly(q.callFd);
    }
    if (this.mapping !== null) native.munmap(this.mapping);
    this.mapping = null;
    this.memory = null;
    this.arena = null;
    if (this.memoryFd >= 0) closeQuietly(this.memoryFd);
  }

  /** Close the socket and release memory and eventfds (idempotent). */
  disconnect(): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.fd);
    for (const q of this.queues) {
      if (q.kickFd >= 0) closeQuietly(q.kickFd);
      if (q.callFd >= 0) closeQuietly(q.callFd);
    }
    if (this.mapping !== null) native.munmap(this.mapping);
    this.mapping = null;
    this.memory = null;
    this.arena = null;
    if (this.memoryFd >= 0) closeQuietly(this.memoryFd);
  }
}

/** A u64 payload. */
export function u64Bytes(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  encodeU64(new DataView(bytes.buffer), 0, value);
  return bytes;
}

/** A vring state payload. */
export function vringStateBytes(index: number, num: number): Uint8Array {
  const bytes = new Uint8Array(8);
  encodeVringState(new DataView(bytes.buffer), 0, index, num);
  return bytes;
}
