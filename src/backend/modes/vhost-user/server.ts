/**
 * The vhost-user protocol server: listens on a UNIX socket (or an inherited
 * listening fd), serves one front-end at a time, frames and validates its
 * messages and drives a VhostUserDevice. It knows nothing of rings or frames.
 *
 * Error policy (the spec leaves most of it to the back-end):
 * - Framing errors (wrong version or flag bits, payload larger than
 *   MAX_PAYLOAD_SIZE, more fds than one message may carry, the peer closing
 *   mid-message, a socket error): the byte stream can no longer be trusted,
 *   so the connection is closed.
 * - A well-framed message that is refused (unknown or not offered request,
 *   payload size wrong for its type, missing or extra fds, bad vring index,
 *   features not offered, a protocol-feature-gated request without that
 *   feature, or the device throwing): counted, logged (rate-limited), every
 *   fd it carried that the device did not take is closed, and then
 *     - if the request has a mandatory typed reply (GET_*), the connection is
 *       closed: the front-end waits for a reply that cannot be given sanely;
 *     - else if NEED_REPLY is set and REPLY_ACK negotiated, a failure ack
 *       (u64 1) is sent and the connection stays;
 *     - else if the request is unknown, the connection is closed (we cannot
 *       tell whether the front-end waits for an answer);
 *     - else the message is dropped and the connection stays.
 * When a connection ends the device gets disconnected() and only then is the
 * next front-end accepted from the listen backlog.
 */
import { EventEmitter } from 'events';
import * as fs from 'fs';
import { errorCode } from '../../../sys/errno';
import { native } from '../../../sys/native';
import { closeQuietly } from '../../../sys/close';
import { atFdLimit, eventFdProblem } from './fd-checks';
import { peerDescription, removeStaleSocket } from '../../../sys/unix-socket';
import { log, rateLimited } from '../../../sys/log';
import { type CounterBlock, defineCounter } from '../../../sys/counters';
import type { VhostUserDevice, VhostUserMemoryRegion, VhostUserMemoryRegionWithFd } from './device';
import {
  DEFAULT_MAX_GUEST_MEMORY,
  type RegionFdInspector,
  checkRegionFd,
  nativeRegionFdInspector,
  totalSizeProblem,
} from '../../../virtqueue/guest-memory';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  FLAG_VERSION,
  HEADER_SIZE,
  MAX_FDS_PER_MESSAGE,
  MAX_PAYLOAD_SIZE,
  PROTOCOL_ERROR_REASONS,
  PayloadSize,
  type ProtocolErrorReason,
  Request,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_MTU,
  VHOST_USER_PROTOCOL_F_RARP,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
  VhostUserProtocolError,
  decodeHeader,
  decodeMemoryTable,
  decodeMtu,
  decodeRarpMac,
  decodeSingleMemoryRegion,
  decodeU64,
  decodeVringAddress,
  decodeVringFdRequest,
  decodeVringState,
  encodeHeader,
  encodeU64,
  encodeVringState,
  hasMandatoryReply,
  isKnownRequest,
  requestName,
  validateRequestHeader,
} from './protocol';

/** Refusals the server finds itself, beyond protocol.ts's malformed-message reasons. */
const SERVER_REFUSAL_REASONS = [
  'truncated', 'fd_overflow', 'missing_fds', 'extra_fds', 'unknown_request', 'not_offered', 'not_negotiated',
  'bad_vring_index', 'features_not_offered', 'device_refused', 'reply_failed', 'bad_fd', 'memory_limit', 'fd_limit',
] as const;

/** Why a message or a connection was refused; the label of the malformed counter. */
export type VhostUserRefusalReason = ProtocolErrorReason | (typeof SERVER_REFUSAL_REASONS)[number];

/** Every refusal reason, in counter order. */
const REFUSAL_REASONS: readonly VhostUserRefusalReason[] = [...PROTOCOL_ERROR_REASONS, ...SERVER_REFUSAL_REASONS];

/**
 * Counter slots of this server: one per refusal reason
 * (ferry_vhost_user_malformed_total{reason}) and one for accepted front-ends.
 *
 * Declared on first use (when a server starts), not at module load: this
 * module lives on the main thread only, and slots declared at load time
 * would shift the indices of every slot declared after them relative to the
 * worker threads, which must compute the same layout for the shared
 * counters. Declared last, main-only slots leave the shared layout alone.
 */
export interface VhostUserCounterSlots {
  refusals: Readonly<Record<VhostUserRefusalReason, number>>;
  connections: number;
}

let counterSlots: VhostUserCounterSlots | null = null;

/** The server's counter slots (declared on the first call). */
export function vhostUserCounterSlots(): VhostUserCounterSlots {
  if (counterSlots === null) {
    const refusals = {} as Record<VhostUserRefusalReason, number>;
    for (const reason of REFUSAL_REASONS) {
      refusals[reason] = defineCounter('ferry_vhost_user_malformed_total', 'vhost-user messages refused or connections dropped, by reason', { reason });
    }
    counterSlots = {
      refusals,
      connections: defineCounter('ferry_vhost_user_connections_total', 'vhost-user front-end connections accepted'),
    };
  }
  return counterSlots;
}

/** Protocol features whose messages this server handles (the device's offer is masked with these). */
const SERVER_HANDLED_PROTOCOL_FEATURES =
  VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_RARP | VHOST_USER_PROTOCOL_F_MTU | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;

/** Linux epoll bits (fixed ABI values; the addon's constants win when present). */
const EPOLLIN = native.constants?.EPOLLIN ?? 0x001;
const EPOLLRDHUP = native.constants?.EPOLLRDHUP ?? 0x2000;

/** Largest split ring index value (last_avail_idx is a u16). */
const MAX_VRING_BASE = 0xffff;

export interface VhostUserServerOptions {
  device: VhostUserDevice;
  /** Path of the UNIX socket to create. A stale socket there is removed; a live one is an error. */
  socketPath?: string;
  /** An inherited listening socket (--fd, systemd activation) instead of socketPath. */
  listenFd?: number;
  /**
   * listenFd is an already connected socket (--fd given a socketpair end):
   * serve that one front-end, accept nothing; after it leaves the server
   * stays idle ('disconnected' tells the owner to stop).
   */
  connected?: boolean;
  /** chmod the socket file to this mode (--socket-mode). */
  socketMode?: number;
  /** chown the socket file to this group id (--socket-group). */
  socketGroup?: number;
  /** listen(2) backlog: front-ends waiting while one is served. */
  backlog?: number;
  /** Main-thread counter block for the refusal and connection counters. */
  counters?: CounterBlock;
  /**
   * Bound on the guest memory one front-end may share, in bytes (default
   * DEFAULT_MAX_GUEST_MEMORY, 1 TiB): a table above it is refused before
   * anything is mapped.
   */
  maxGuestMemory?: number;
}

/** How long accept() waits before retrying after EMFILE/ENFILE (the listen socket stays readable meanwhile). */
const ACCEPT_RETRY_MS = 200;

/** A refused, well-framed request. */
class Refusal extends Error {
  constructor(readonly reason: VhostUserRefusalReason, message: string) {
    super(message);
  }
}

/** What a handled request answers with (besides a REPLY_ACK). */
type Reply = { kind: 'none' } | { kind: 'u64'; value: bigint } | { kind: 'vring_state'; index: number; num: number };

const NO_REPLY: Reply = { kind: 'none' };

/** Per-connection state: the message being assembled and what was negotiated. */
class Connection {
  readonly header = new Uint8Array(HEADER_SIZE);
  readonly headerView = new DataView(this.header.buffer);
  readonly payload = new Uint8Array(MAX_PAYLOAD_SIZE);
  headerFill = 0;
  payloadFill = 0;
  request = 0;
  flags = 0;
  size = 0;
  /** Fds received with the message being assembled (ours until handed to the device). */
  fds: number[] = [];
  /** Virtio features acked with SET_FEATURES. */
  features = 0n;
  /** Protocol features acked with SET_PROTOCOL_FEATURES. */
  protocolFeatures = 0n;
  /**
   * The memory regions the device accepted, keyed by guest address, user
   * address and size, with the reference count the device keeps for
   * repeated ADD_MEM_REG: the sum the guest-memory bound applies to.
   */
  readonly regions = new Map<string, { size: bigint; refs: number }>();
  /** A message is with the device; the socket is not watched meanwhile. */
  busy = false;
  closed = false;

  constructor(readonly fd: number, readonly id: number) {}

  resetMessage(): void {
    this.headerFill = 0;
    this.payloadFill = 0;
    this.fds = [];
  }
}

function regionKey(region: VhostUserMemoryRegion): string {
  return `${region.guestAddress}:${region.userAddress}:${region.size}`;
}

function closeFds(fds: number[]): void {
  for (const fd of fds.splice(0)) closeQuietly(fd);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Serves vhost-user front-ends one at a time on a UNIX socket and drives a
 * VhostUserDevice. Emits 'connected' (connection id) and 'disconnected'
 * (connection id, reason) after the device has processed the disconnection.
 * Create with VhostUserServer.listen(); stop with close().
 */
export class VhostUserServer extends EventEmitter {
  private readonly device: VhostUserDevice;
  private readonly counters: CounterBlock | undefined;
  private readonly slots = vhostUserCounterSlots();
  private readonly refusals = new Map<VhostUserRefusalReason, number>();
  private readonly pollEvents = new Int32Array(16);
  private readonly poller;
  private readonly replyBuffer = new Uint8Array(HEADER_SIZE + PayloadSize.VRING_STATE);
  private readonly replyView = new DataView(this.replyBuffer.buffer);
  private connection: Connection | null = null;
  private nextConnectionId = 1;
  private listening = false;
  /** False when serving a single pre-connected fd. */
  private acceptsMore = true;
  private closing = false;
  private pendingWork: Promise<void> = Promise.resolve();
  private readonly maxGuestMemory: number;
  private readonly regionFdInspector: RegionFdInspector = nativeRegionFdInspector();
  private acceptRetry: NodeJS.Timeout | null = null;

  private constructor(options: VhostUserServerOptions, private readonly listenFd: number, private readonly socketPath: string | null) {
    super();
    this.device = options.device;
    this.counters = options.counters;
    this.maxGuestMemory = options.maxGuestMemory ?? DEFAULT_MAX_GUEST_MEMORY;
    this.poller = new native.Poller(this.pollEvents, (count) => this.onPoll(count));
    if (options.connected === true) {
      // Nothing to accept: the fd is the front-end. 'connected' is emitted on
      // the next tick so that the owner can attach its listeners first.
      this.acceptsMore = false;
      setImmediate(() => {
        if (!this.closing) this.adoptConnection(listenFd);
      });
    } else {
      this.watchListenSocket();
    }
  }

  /**
   * Create the listening socket (or adopt options.listenFd) and start
   * accepting. Throws when the path holds a live socket or something that is
   * not a socket, or when neither/both of socketPath and listenFd are given.
   */
  static listen(options: VhostUserServerOptions): VhostUserServer {
    if ((options.socketPath === undefined) === (options.listenFd === undefined)) {
      throw new Error('vhost-user: give exactly one of socketPath and listenFd');
    }
    if (options.listenFd !== undefined) {
      native.setNonBlocking(options.listenFd, true);
      native.setCloexec(options.listenFd, true);
      // Systemd and --fd sockets arrive without CLOEXEC; they must not leak into children.
      return new VhostUserServer(options, options.listenFd, null);
    }
    const socketPath = options.socketPath as string;
    removeStaleSocket(socketPath, 'vhost-user: ');
    const fd = listenWithMode(socketPath, options.backlog ?? 8, options.socketMode);
    try {
      if (options.socketMode !== undefined) fs.chmodSync(socketPath, options.socketMode);
      if (options.socketGroup !== undefined) fs.chownSync(socketPath, -1, options.socketGroup);
    } catch (error) {
      native.close(fd);
      fs.rmSync(socketPath, { force: true });
      throw error;
    }
    return new VhostUserServer(options, fd, socketPath);
  }

  /** True while a front-end is connected. */
  get connected(): boolean {
    return this.connection !== null;
  }

  /** How many times a refusal reason was seen (also counted in the CounterBlock when given). */
  refusalCount(reason: VhostUserRefusalReason): number {
    return this.refusals.get(reason) ?? 0;
  }

  /**
   * Stop listening, drop the current front-end (the device gets
   * disconnected()), remove the socket file if this server created it.
   * Resolves when all of that is done.
   */
  async close(): Promise<void> {
    if (this.closing) return this.pendingWork;
    this.closing = true;
    if (this.acceptRetry !== null) clearTimeout(this.acceptRetry);
    this.acceptRetry = null;
    this.unwatchListenSocket();
    // Quietly: the listen fd may have been closed by its owner already.
    if (this.acceptsMore) closeQuietly(this.listenFd);
    if (this.socketPath !== null) fs.rmSync(this.socketPath, { force: true });
    const connection = this.connection;
    if (connection !== null) this.schedule(() => this.dropConnection(connection, 'server closing'));
    await this.pendingWork;
    this.poller.close();
  }

  // ---- event loop plumbing ----

  /** Run `work` after everything already scheduled: device calls never overlap. */
  private schedule(work: () => Promise<void>): void {
    this.pendingWork = this.pendingWork.then(work).catch((error: unknown) => {
      log.error(`vhost-user: internal error: ${errorText(error)}`);
    });
  }

  private watchListenSocket(): void {
    if (this.listening || this.closing || !this.acceptsMore) return;
    this.poller.add(this.listenFd, EPOLLIN);
    this.listening = true;
  }

  private unwatchListenSocket(): void {
    if (!this.listening) return;
    this.poller.remove(this.listenFd);
    this.listening = false;
  }

  private onPoll(count: number): void {
    for (let i = 0; i < count; i++) {
      const fd = this.pollEvents[2 * i];
      if (fd === this.listenFd && this.listening) {
        this.acceptOne();
      } else if (this.connection !== null && fd === this.connection.fd && !this.connection.busy) {
        this.readConnection(this.connection);
      }
    }
  }

  private acceptOne(): void {
    let fd: number;
    try {
      fd = native.accept(this.listenFd);
    } catch (error) {
      const code = errorCode(error);
      if (code === 'EMFILE' || code === 'ENFILE') {
        // The pending connection keeps the socket readable: back off instead of spinning on it.
        this.countRefusal('fd_limit', `cannot accept a front-end: the daemon is at its fd limit (${code}); retrying in ${ACCEPT_RETRY_MS} ms`);
        this.unwatchListenSocket();
        this.acceptRetry = setTimeout(() => {
          this.acceptRetry = null;
          if (this.connection === null) this.watchListenSocket();
        }, ACCEPT_RETRY_MS);
        this.acceptRetry.unref();
        return;
      }
      rateLimited('warn', 'vhost-user:accept', () => `vhost-user: accept failed: ${errorText(error)}`);
      return;
    }
    if (fd < 0) return;
    // One front-end at a time: the others wait in the backlog until this one leaves.
    this.unwatchListenSocket();
    this.adoptConnection(fd);
  }

  private adoptConnection(fd: number): void {
    const connection = new Connection(fd, this.nextConnectionId++);
    this.connection = connection;
    this.counters?.add(this.slots.connections);
    log.info(`vhost-user: front-end #${connection.id} connected${peerDescription(fd)}`);
    this.poller.add(fd, EPOLLIN | EPOLLRDHUP);
    this.emit('connected', connection.id);
  }

  /**
   * Read what is available of the current message. When a whole message is
   * in, stop watching the socket and hand the message to the device; the
   * socket is watched again once it is handled (level-triggered epoll then
   * reports any bytes already waiting).
   */
  private readConnection(c: Connection): void {
    let outcome: 'again' | 'message' | 'eof';
    try {
      outcome = this.readMessage(c);
    } catch (error) {
      if (error instanceof Refusal || error instanceof VhostUserProtocolError) {
        this.countRefusal(error.reason, `front-end #${c.id}: ${error.message}; closing the connection`);
      } else {
        rateLimited('warn', 'vhost-user:socket', () => `vhost-user: front-end #${c.id}: socket error: ${errorText(error)}`);
      }
      this.beginDrop(c, error instanceof Error ? error.message : 'socket error');
      return;
    }
    if (outcome === 'again') return;
    if (outcome === 'eof') {
      const midMessage = c.headerFill > 0;
      if (midMessage) this.countRefusal('truncated', `front-end #${c.id} closed the socket in the middle of a message`);
      this.beginDrop(c, midMessage ? 'closed mid-message' : 'closed by front-end');
      return;
    }
    c.busy = true;
    this.poller.remove(c.fd);
    this.schedule(async () => {
      const closeReason = await this.processMessage(c);
      c.busy = false;
      c.resetMessage();
      if (c.closed) return;
      if (closeReason !== null) {
        await this.dropConnection(c, closeReason);
        return;
      }
      this.poller.add(c.fd, EPOLLIN | EPOLLRDHUP);
    });
  }

  /**
   * Assemble header then payload with recvmsg, reading no further than the
   * current message so fds of the next one stay in the socket. Bounded: at
   * most a few reads per call. Throws on framing errors.
   */
  private readMessage(c: Connection): 'again' | 'message' | 'eof' {
    for (let attempt = 0; attempt < 8; attempt++) {
      const inHeader = c.headerFill < HEADER_SIZE;
      const buffer = inHeader ? c.header : c.payload;
      const offset = inHeader ? c.headerFill : c.payloadFill;
      const wanted = inHeader ? HEADER_SIZE - c.headerFill : c.size - c.payloadFill;
      if (!inHeader && wanted === 0) return 'message';
      const result = native.recvFds(c.fd, buffer, offset, wanted, MAX_FDS_PER_MESSAGE);
      if (result === null) return 'again';
      for (const fd of result.fds) c.fds.push(fd);
      if (result.ctrunc) {
        // The kernel also truncates (and closes) the fds when we cannot take them: tell the two apart.
        if (atFdLimit(c.fd)) throw new Refusal('fd_limit', 'the daemon is at its fd limit (EMFILE): the fds sent with a message were lost');
        throw new Refusal('fd_overflow', `more than ${MAX_FDS_PER_MESSAGE} fds with one message`);
      }
      if (c.fds.length > MAX_FDS_PER_MESSAGE) throw new Refusal('fd_overflow', `${c.fds.length} fds with one message`);
      if (result.bytes === 0) return 'eof';
      if (inHeader) {
        c.headerFill += result.bytes;
        if (c.headerFill < HEADER_SIZE) continue;
        const header = decodeHeader(c.headerView);
        c.request = header.request;
        c.flags = header.flags;
        c.size = header.size;
        validateRequestHeader(header);
        if (c.size === 0) return 'message';
      } else {
        c.payloadFill += result.bytes;
        if (c.payloadFill === c.size) return 'message';
      }
    }
    return 'again';
  }

  /** Start dropping a connection (after any work in flight). */
  private beginDrop(c: Connection, why: string): void {
    this.poller.remove(c.fd);
    c.busy = true;
    this.schedule(() => this.dropConnection(c, why));
  }

  /** Close the connection, let the device forget it, then accept the next front-end. */
  private async dropConnection(c: Connection, why: string): Promise<void> {
    if (c.closed) return;
    c.closed = true;
    this.poller.remove(c.fd);
    closeFds(c.fds);
    closeQuietly(c.fd);
    if (this.connection === c) this.connection = null;
    log.info(`vhost-user: front-end #${c.id} disconnected (${why})`);
    try {
      await this.device.disconnected();
    } catch (error) {
      log.error(`vhost-user: device failed to process the disconnection: ${errorText(error)}`);
    }
    this.emit('disconnected', c.id, why);
    this.watchListenSocket();
  }

  // ---- message handling ----

  /** Handle one assembled message; returns null to keep serving, or why the connection must be closed. */
  private async processMessage(c: Connection): Promise<string | null> {
    const payload = new DataView(c.payload.buffer, 0, c.size);
    const fds = c.fds;
    const request = c.request;
    const name = requestName(request);
    const needReply = (c.flags & FLAG_NEED_REPLY) !== 0;
    try {
      const reply = await this.handle(c, request, payload, fds);
      let sent = true;
      if (reply.kind === 'u64') {
        sent = this.sendReply(c, request, PayloadSize.U64, (view) => encodeU64(view, HEADER_SIZE, reply.value));
      } else if (reply.kind === 'vring_state') {
        sent = this.sendReply(c, request, PayloadSize.VRING_STATE, (view) => encodeVringState(view, HEADER_SIZE, reply.index, reply.num));
      } else if (needReply && this.replyAckNegotiated(c)) {
        sent = this.sendAck(c, request, 0n);
      }
      return sent ? null : `reply to ${name} failed`;
    } catch (error) {
      const reason: VhostUserRefusalReason =
        error instanceof Refusal || error instanceof VhostUserProtocolError ? error.reason : 'device_refused';
      this.countRefusal(reason, `front-end #${c.id}: ${name} refused: ${errorText(error)}`);
      if (hasMandatoryReply(request)) return `refused ${name}, which needs a reply`;
      if (needReply && this.replyAckNegotiated(c)) return this.sendAck(c, request, 1n) ? null : `reply to ${name} failed`;
      return isKnownRequest(request) ? null : `refused ${name} without NEED_REPLY`;
    } finally {
      closeFds(fds);
    }
  }

  private replyAckNegotiated(c: Connection): boolean {
    return (c.protocolFeatures & VHOST_USER_PROTOCOL_F_REPLY_ACK) !== 0n;
  }

  /** Features the front-end sees in GET_FEATURES. */
  private offeredFeatures(): bigint {
    return (this.device.getFeatures() & ~(VHOST_USER_F_PROTOCOL_FEATURES | VHOST_F_LOG_ALL)) | VHOST_USER_F_PROTOCOL_FEATURES;
  }

  /** Protocol features the front-end sees in GET_PROTOCOL_FEATURES. */
  private offeredProtocolFeatures(): bigint {
    return (this.device.getProtocolFeatures() & SERVER_HANDLED_PROTOCOL_FEATURES) | VHOST_USER_PROTOCOL_F_REPLY_ACK;
  }

  private vringCount(): number {
    return 2 * this.device.maxQueuePairs();
  }

  /** Dispatch one request to the device; throws Refusal/VhostUserProtocolError/device errors. */
  private async handle(c: Connection, request: number, payload: DataView, fds: number[]): Promise<Reply> {
    if (!isKnownRequest(request)) throw new Refusal('unknown_request', `unknown request ${request}`);
    switch (request) {
      case Request.GET_FEATURES:
        expectNoPayload(payload);
        expectFds(fds, 0);
        return { kind: 'u64', value: this.offeredFeatures() };
      case Request.SET_FEATURES: {
        const features = decodeU64(payload);
        expectFds(fds, 0);
        const unknown = features & ~this.offeredFeatures();
        if (unknown !== 0n) throw new Refusal('features_not_offered', `features 0x${unknown.toString(16)} were not offered`);
        await this.device.setFeatures(features);
        c.features = features;
        // Without protocol features rings start enabled (spec, "Ring states").
        if ((features & VHOST_USER_F_PROTOCOL_FEATURES) === 0n) {
          for (let i = 0; i < this.vringCount(); i++) await this.device.setVringEnable(i, true);
        }
        return NO_REPLY;
      }
      case Request.GET_PROTOCOL_FEATURES:
        expectNoPayload(payload);
        expectFds(fds, 0);
        return { kind: 'u64', value: this.offeredProtocolFeatures() };
      case Request.SET_PROTOCOL_FEATURES: {
        const features = decodeU64(payload);
        expectFds(fds, 0);
        const unknown = features & ~this.offeredProtocolFeatures();
        if (unknown !== 0n) throw new Refusal('features_not_offered', `protocol features 0x${unknown.toString(16)} were not offered`);
        c.protocolFeatures = features;
        await this.device.setProtocolFeatures(features);
        return NO_REPLY;
      }
      case Request.SET_OWNER:
        expectNoPayload(payload);
        expectFds(fds, 0);
        await this.device.setOwner();
        return NO_REPLY;
      case Request.RESET_OWNER:
        expectNoPayload(payload);
        expectFds(fds, 0);
        await this.device.resetOwner();
        return NO_REPLY;
      case Request.GET_QUEUE_NUM:
        expectNoPayload(payload);
        expectFds(fds, 0);
        return { kind: 'u64', value: BigInt(this.device.maxQueuePairs()) };
      case Request.GET_MAX_MEM_SLOTS:
        expectNoPayload(payload);
        expectFds(fds, 0);
        this.requireProtocolFeature(c, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, 'CONFIGURE_MEM_SLOTS');
        return { kind: 'u64', value: BigInt(this.device.maxMemSlots()) };
      case Request.SET_MEM_TABLE: {
        const regions = decodeMemoryTable(payload);
        expectFds(fds, regions.length);
        const withFds: VhostUserMemoryRegionWithFd[] = regions.map((region, i) => ({ ...region, fd: fds[i] }));
        this.checkMemory(withFds, regions.map((r) => r.size));
        // A refused or failed table leaves no region behind: the device drops the old one either way.
        c.regions.clear();
        fds.length = 0; // the device owns them now
        await this.device.setMemTable(withFds);
        for (const region of regions) c.regions.set(regionKey(region), { size: region.size, refs: 1 });
        return NO_REPLY;
      }
      case Request.ADD_MEM_REG: {
        this.requireProtocolFeature(c, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, 'CONFIGURE_MEM_SLOTS');
        const region = decodeSingleMemoryRegion(payload);
        expectFds(fds, 1);
        const fd = fds[0];
        const key = regionKey(region);
        const known = c.regions.get(key);
        const sizes = [...c.regions.values()].map((r) => r.size);
        this.checkMemory([{ ...region, fd }], known === undefined ? [...sizes, region.size] : sizes);
        fds.length = 0;
        await this.device.addMemRegion({ ...region, fd });
        if (known !== undefined) known.refs++;
        else c.regions.set(key, { size: region.size, refs: 1 });
        return NO_REPLY;
      }
      case Request.REM_MEM_REG: {
        this.requireProtocolFeature(c, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, 'CONFIGURE_MEM_SLOTS');
        const region = decodeSingleMemoryRegion(payload);
        // The spec allows one (ignored) fd for old front-ends; processMessage closes it.
        if (fds.length > 1) throw new Refusal('extra_fds', `${fds.length} fds, at most 1`);
        await this.device.removeMemRegion(region);
        const known = c.regions.get(regionKey(region));
        if (known !== undefined && --known.refs <= 0) c.regions.delete(regionKey(region));
        return NO_REPLY;
      }
      case Request.SET_VRING_NUM: {
        const state = decodeVringState(payload);
        expectFds(fds, 0);
        this.checkVringIndex(state.index);
        await this.device.setVringNum(state.index, state.num);
        return NO_REPLY;
      }
      case Request.SET_VRING_ADDR: {
        const address = decodeVringAddress(payload);
        expectFds(fds, 0);
        this.checkVringIndex(address.index);
        await this.device.setVringAddr(address);
        return NO_REPLY;
      }
      case Request.SET_VRING_BASE: {
        const state = decodeVringState(payload);
        expectFds(fds, 0);
        this.checkVringIndex(state.index);
        if (state.num > MAX_VRING_BASE) throw new Refusal('bad_value', `vring base ${state.num} > ${MAX_VRING_BASE}`);
        await this.device.setVringBase(state.index, state.num);
        return NO_REPLY;
      }
      case Request.GET_VRING_BASE: {
        const state = decodeVringState(payload);
        expectFds(fds, 0);
        this.checkVringIndex(state.index);
        const base = await this.device.getVringBase(state.index);
        return { kind: 'vring_state', index: state.index, num: base };
      }
      case Request.SET_VRING_KICK:
      case Request.SET_VRING_CALL:
      case Request.SET_VRING_ERR: {
        const target = decodeVringFdRequest(payload);
        this.checkVringIndex(target.index);
        expectFds(fds, target.noFd ? 0 : 1);
        const fd = target.noFd ? null : fds[0];
        const problem = fd === null ? null : eventFdProblem(fd);
        if (problem !== null) throw new Refusal('bad_fd', `${requestName(request)}: ${problem}`);
        fds.length = 0;
        if (request === Request.SET_VRING_KICK) await this.device.setVringKick(target.index, fd);
        else if (request === Request.SET_VRING_CALL) await this.device.setVringCall(target.index, fd);
        else await this.device.setVringErr(target.index, fd);
        return NO_REPLY;
      }
      case Request.SET_VRING_ENABLE: {
        const state = decodeVringState(payload);
        expectFds(fds, 0);
        this.checkVringIndex(state.index);
        if (state.num > 1) throw new Refusal('bad_value', `SET_VRING_ENABLE with ${state.num}`);
        await this.device.setVringEnable(state.index, state.num === 1);
        return NO_REPLY;
      }
      case Request.SEND_RARP: {
        this.requireProtocolFeature(c, VHOST_USER_PROTOCOL_F_RARP, 'RARP');
        const mac = decodeRarpMac(payload);
        expectFds(fds, 0);
        await this.device.sendRarp(mac);
        return NO_REPLY;
      }
      case Request.NET_SET_MTU: {
        this.requireProtocolFeature(c, VHOST_USER_PROTOCOL_F_MTU, 'MTU');
        const mtu = decodeMtu(payload);
        expectFds(fds, 0);
        await this.device.setMtu(mtu);
        return NO_REPLY;
      }
      default:
        // Known to the spec but gated on a feature ferry never offers
        // (LOG_SHMFD, SLAVE_REQ, CONFIG, INFLIGHT_SHMFD, STATUS, ...).
        throw new Refusal('not_offered', `${requestName(request)} needs a feature ferry does not offer`);
    }
  }

  /**
   * Refuse memory that could not be mapped safely: a region fd that is not a
   * regular file, a region reaching past its file's end, or a total (the
   * `totalSizes` of the table as it would be) above the bound. Shrinking is
   * sealed where the file allows. Throws Refusal; the fds stay the caller's.
   */
  private checkMemory(regions: VhostUserMemoryRegionWithFd[], totalSizes: bigint[]): void {
    const tooLarge = totalSizeProblem(totalSizes, this.maxGuestMemory);
    if (tooLarge !== null) throw new Refusal('memory_limit', tooLarge);
    for (const region of regions) {
      const check = checkRegionFd(region.fd, region.mmapOffset, region.size, this.regionFdInspector);
      if (!check.ok) throw new Refusal('bad_fd', `region at guest 0x${region.guestAddress.toString(16)}: ${check.problem}`);
    }
  }

  private checkVringIndex(index: number): void {
    if (index >= this.vringCount()) throw new Refusal('bad_vring_index', `vring ${index}, the device has ${this.vringCount()}`);
  }

  private requireProtocolFeature(c: Connection, mask: bigint, name: string): void {
    if ((c.protocolFeatures & mask) === 0n) throw new Refusal('not_negotiated', `protocol feature ${name} was not negotiated`);
  }

  private sendAck(c: Connection, request: number, value: bigint): boolean {
    return this.sendReply(c, request, PayloadSize.U64, (view) => encodeU64(view, HEADER_SIZE, value));
  }

  /** Write a reply (header with the REPLY flag + payload); false when the socket would not take it whole. */
  private sendReply(c: Connection, request: number, size: number, writePayload: (view: DataView) => void): boolean {
    encodeHeader(this.replyView, 0, request, FLAG_VERSION | FLAG_REPLY, size);
    writePayload(this.replyView);
    const length = HEADER_SIZE + size;
    let sent: number;
    try {
      sent = native.sendFds(c.fd, this.replyBuffer, 0, length, []);
    } catch (error) {
      this.countRefusal('reply_failed', `front-end #${c.id}: reply to ${requestName(request)} failed: ${errorText(error)}`);
      return false;
    }
    if (sent !== length) {
      // A front-end that does not read its replies gets no partial ones.
      this.countRefusal('reply_failed', `front-end #${c.id}: socket full, reply to ${requestName(request)} not sent`);
      return false;
    }
    return true;
  }

  private countRefusal(reason: VhostUserRefusalReason, message: string): void {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
    this.counters?.add(this.slots.refusals[reason]);
    rateLimited('warn', `vhost-user:${reason}`, () => `vhost-user: ${message}`);
  }
}

function expectNoPayload(payload: DataView): void {
  if (payload.byteLength !== 0) throw new Refusal('bad_size', `payload of ${payload.byteLength} bytes where none is defined`);
}

function expectFds(fds: number[], count: number): void {
  if (fds.length < count) throw new Refusal('missing_fds', `${fds.length} fds, expected ${count}`);
  if (fds.length > count) throw new Refusal('extra_fds', `${fds.length} fds, expected ${count}`);
}

/**
 * bind+listen on a UNIX path. With a mode, the umask is narrowed around
 * bind() so the socket is never, even briefly, more open than asked (the
 * chmod afterwards then only widens it to exactly `mode`).
 */
function listenWithMode(socketPath: string, backlog: number, mode: number | undefined): number {
  if (mode === undefined) return native.unixListen(socketPath, backlog);
  const previous = process.umask(0o777 & ~mode);
  try {
    return native.unixListen(socketPath, backlog);
  } finally {
    process.umask(previous);
  }
}
