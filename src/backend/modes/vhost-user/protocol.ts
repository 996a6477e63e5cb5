/**
 * The vhost-user wire format (QEMU docs/interop/vhost-user.rst): message
 * type numbers, header flags, feature bits, and codecs for the header and
 * every payload shape ferry reads or writes.
 *
 * Pure functions over DataView, no I/O. Numbers are in the machine's byte
 * order per the spec; ferry runs on little-endian hosts only, so all codecs
 * are little-endian. Decoders check the payload size exactly and throw a
 * VhostUserProtocolError carrying a reason code that the server counts.
 */

/** Size of the message header: request u32, flags u32, size u32. */
export const HEADER_SIZE = 12;

/** Lower two flag bits: protocol version, always 1. */
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_VERSION = 0x1;
/** Set on every reply from the back-end. */
export const FLAG_REPLY = 0x4;
/** The front-end asks for a REPLY_ACK (honoured only when REPLY_ACK was negotiated). */
export const FLAG_NEED_REPLY = 0x8;
/** Flag bits a front-end may set in a request; the rest must be zero. */
export const FLAG_KNOWN_MASK = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;

/**
 * Largest payload ferry accepts. The largest message it handles is
 * SET_MEM_TABLE with 8 regions (264 bytes); the largest defined one is
 * GET/SET_CONFIG (12 + 256). A bigger size means a broken or hostile peer.
 */
export const MAX_PAYLOAD_SIZE = 4096;

/** Most fds one message carries (SET_MEM_TABLE with 8 regions). */
export const MAX_FDS_PER_MESSAGE = 8;

/** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_MEM_TABLE_REGIONS = 8;

/** Messages sent by the front-end (QEMU) to the back-end. */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_SLAVE_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** Messages sent by the back-end on the back-end channel (SET_SLAVE_REQ_FD); ferry sends none. */
export const BackEndRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
} as const;

const requestNames = new Map<number, string>(Object.entries(Request).map(([name, value]) => [value, name]));

/** True when the spec defines front-end request `request` (whether or not ferry handles it). */
export function isKnownRequest(request: number): boolean {
  return requestNames.has(request);
}

/** Name of a front-end request number for logs, e.g. 'SET_MEM_TABLE' or 'UNKNOWN(99)'. */
export function requestName(request: number): string {
  return requestNames.get(request) ?? `UNKNOWN(${request})`;
}

/** Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  SLAVE_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  SLAVE_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** The mask of one protocol feature bit, e.g. protocolFeatureMask(ProtocolFeature.MQ) === 1n. */
export function protocolFeatureMask(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Protocol feature masks (bigint), as GET/SET_PROTOCOL_FEATURES carry them. */
export const VHOST_USER_PROTOCOL_F_MQ = 1n << 0n;
export const VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1n << 1n;
export const VHOST_USER_PROTOCOL_F_RARP = 1n << 2n;
export const VHOST_USER_PROTOCOL_F_REPLY_ACK = 1n << 3n;
export const VHOST_USER_PROTOCOL_F_MTU = 1n << 4n;
export const VHOST_USER_PROTOCOL_F_SLAVE_REQ = 1n << 5n;
export const VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 1n << 6n;
export const VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 1n << 7n;
export const VHOST_USER_PROTOCOL_F_PAGEFAULT = 1n << 8n;
export const VHOST_USER_PROTOCOL_F_CONFIG = 1n << 9n;
export const VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD = 1n << 10n;
export const VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 1n << 11n;
export const VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 1n << 12n;
export const VHOST_USER_PROTOCOL_F_RESET_DEVICE = 1n << 13n;
export const VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 1n << 14n;
export const VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 1n << 15n;
export const VHOST_USER_PROTOCOL_F_STATUS = 1n << 16n;

/** Virtio feature bit 30, reused by vhost-user: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES_BIT = 30;
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;
/** Virtio feature bit 26: dirty page logging for live migration (not offered by ferry). */
export const VHOST_F_LOG_ALL = 1n << 26n;

/** SET_VRING_KICK/CALL/ERR u64: bits 0-7 are the vring index. */
export const VRING_INDEX_MASK = 0xffn;
/** SET_VRING_KICK/CALL/ERR u64: bit 8 set = no fd in the ancillary data. */
export const VRING_NO_FD_FLAG = 0x100n;

/** Sizes of the fixed payload shapes. */
export const PayloadSize = {
  NONE: 0,
  U64: 8,
  VRING_STATE: 8,
  VRING_ADDRESS: 40,
  MEMORY_REGION: 32,
  /** num_regions u32 + padding u32 before the region entries. */
  MEMORY_TABLE_HEADER: 8,
  /** 8 bytes of padding + one region. */
  SINGLE_MEMORY_REGION: 40,
} as const;

/** Reason codes for malformed input; the server counts them by these names. */
export const PROTOCOL_ERROR_REASONS = [
  'short_header',
  'bad_version',
  'bad_flags',
  'oversized',
  'bad_size',
  'bad_value',
  'too_many_regions',
  'bad_region',
] as const;

/** One of PROTOCOL_ERROR_REASONS. */
export type ProtocolErrorReason = (typeof PROTOCOL_ERROR_REASONS)[number];

/** A malformed header or payload, with a reason code for counting. */
export class VhostUserProtocolError extends Error {
  constructor(readonly reason: ProtocolErrorReason, message: string) {
    super(message);
    this.name = 'VhostUserProtocolError';
  }
}

/** A decoded message header. */
export interface VhostUserHeader {
  request: number;
  flags: number;
  size: number;
}

/** A vring state description (index + number). */
export interface VringState {
  index: number;
  num: number;
}

/** SET_VRING_ADDR payload: ring parts as front-end user addresses. */
export interface VringAddress {
  index: number;
  /** Bit 0 (VHOST_VRING_F_LOG): log used ring writes; only with dirty logging, which ferry does not offer. */
  flags: number;
  descriptorUserAddress: bigint;
  usedUserAddress: bigint;
  availableUserAddress: bigint;
  /** Guest physical address for logging used ring writes (unused without LOG_SHMFD). */
  logGuestAddress: bigint;
}

/** One guest memory region as the front-end describes it (all u64 fields; no fd: fds travel in the ancillary data). */
export interface MemoryRegion {
  /** Guest physical address of the region's first byte. */
  guestAddress: bigint;
  /** Size of the region in bytes. */
  size: bigint;
  /** The front-end's (QEMU's) virtual address of the first byte; ring addresses are given in this space. */
  userAddress: bigint;
  /** Offset of the region's first byte within the fd to map. */
  mmapOffset: bigint;
}

/** The u64 of SET_VRING_KICK/CALL/ERR split into its parts. */
export interface VringFdRequest {
  index: number;
  /** True when bit 8 says no fd accompanies the message. */
  noFd: boolean;
}

function expectSize(view: DataView, size: number, what: string): void {
  if (view.byteLength !== size) {
    throw new VhostUserProtocolError('bad_size', `${what}: payload is ${view.byteLength} bytes, expected ${size}`);
  }
}

/**
 * Decode a 12-byte header at `offset` of `view`. Throws 'short_header' when
 * fewer than 12 bytes are there. Does not judge the flags or size: see
 * validateRequestHeader.
 */
export function decodeHeader(view: DataView, offset = 0): VhostUserHeader {
  if (view.byteLength - offset < HEADER_SIZE) {
    throw new VhostUserProtocolError('short_header', `header needs ${HEADER_SIZE} bytes, have ${view.byteLength - offset}`);
  }
  return {
    request: view.getUint32(offset, true),
    flags: view.getUint32(offset + 4, true),
    size: view.getUint32(offset + 8, true),
  };
}

/** Write a header at `offset` of `view`. */
export function encodeHeader(view: DataView, offset: number, request: number, flags: number, size: number): void {
  view.setUint32(offset, request >>> 0, true);
  view.setUint32(offset + 4, flags >>> 0, true);
  view.setUint32(offset + 8, size >>> 0, true);
}

/**
 * Check a request header from a front-end: version 1, no reply flag, no
 * unknown flag bits, size within MAX_PAYLOAD_SIZE. Throws on violation
 * (the connection can no longer be trusted: the caller closes it).
 */
export function validateRequestHeader(header: VhostUserHeader): void {
  if ((header.flags & FLAG_VERSION_MASK) !== FLAG_VERSION) {
    throw new VhostUserProtocolError('bad_version', `version ${header.flags & FLAG_VERSION_MASK}, expected ${FLAG_VERSION}`);
  }
  if ((header.flags & ~FLAG_KNOWN_MASK) !== 0 || (header.flags & FLAG_REPLY) !== 0) {
    throw new VhostUserProtocolError('bad_flags', `flags 0x${(header.flags >>> 0).toString(16)} not valid in a request`);
  }
  if (header.size > MAX_PAYLOAD_SIZE) {
    throw new VhostUserProtocolError('oversized', `payload size ${header.size} exceeds ${MAX_PAYLOAD_SIZE}`);
  }
}

/** Decode a u64 payload. */
export function decodeU64(view: DataView): bigint {
  expectSize(view, PayloadSize.U64, 'u64');
  return view.getBigUint64(0, true);
}

/** Write a u64 payload at `offset`. */
export function encodeU64(view: DataView, offset: number, value: bigint): void {
  view.setBigUint64(offset, BigInt.asUintN(64, value), true);
}

/** Decode a vring state payload (index u32, num u32). */
export function decodeVringState(view: DataView): VringState {
  expectSize(view, PayloadSize.VRING_STATE, 'vring state');
  return { index: view.getUint32(0, true), num: view.getUint32(4, true) };
}

/** Write a vring state payload at `offset`. */
export function encodeVringState(view: DataView, offset: number, index: number, num: number): void {
  view.setUint32(offset, index >>> 0, true);
  view.setUint32(offset + 4, num >>> 0, true);
}

/** Decode a vring address payload (40 bytes). */
export function decodeVringAddress(view: DataView): VringAddress {
  expectSize(view, PayloadSize.VRING_ADDRESS, 'vring address');
  return {
    index: view.getUint32(0, true),
    flags: view.getUint32(4, true),
    descriptorUserAddress: view.getBigUint64(8, true),
    usedUserAddress: view.getBigUint64(16, true),
    availableUserAddress: view.getBigUint64(24, true),
    logGuestAddress: view.getBigUint64(32, true),
  };
}

/** Write a vring address payload at `offset`. */
export function encodeVringAddress(view: DataView, offset: number, address: VringAddress): void {
  view.setUint32(offset, address.index >>> 0, true);
  view.setUint32(offset + 4, address.flags >>> 0, true);
  view.setBigUint64(offset + 8, address.descriptorUserAddress, true);
  view.setBigUint64(offset + 16, address.usedUserAddress, true);
  view.setBigUint64(offset + 24, address.availableUserAddress, true);
  view.setBigUint64(offset + 32, address.logGuestAddress, true);
}

const U64_LIMIT = 1n << 64n;

/**
 * Structural sanity of a region: non-zero size and no u64 wrap-around of
 * guest, user or mmap ranges. Returns null when sane, else a description.
 * (Whether regions overlap or fit the fd is the device's business.)
 */
export function regionProblem(region: MemoryRegion): string | null {
  if (region.size === 0n) return 'zero size';
  if (region.guestAddress + region.size > U64_LIMIT) return 'guest range wraps';
  if (region.userAddress + region.size > U64_LIMIT) return 'user range wraps';
  if (region.mmapOffset + region.size > U64_LIMIT) return 'mmap range wraps';
  return null;
}

function readRegion(view: DataView, offset: number): MemoryRegion {
  return {
    guestAddress: view.getBigUint64(offset, true),
    size: view.getBigUint64(offset + 8, true),
    userAddress: view.getBigUint64(offset + 16, true),
    mmapOffset: view.getBigUint64(offset + 24, true),
  };
}

function writeRegion(view: DataView, offset: number, region: MemoryRegion): void {
  view.setBigUint64(offset, region.guestAddress, true);
  view.setBigUint64(offset + 8, region.size, true);
  view.setBigUint64(offset + 16, region.userAddress, true);
  view.setBigUint64(offset + 24, region.mmapOffset, true);
}

function checkedRegion(region: MemoryRegion, what: string): MemoryRegion {
  const problem = regionProblem(region);
  if (problem !== null) throw new VhostUserProtocolError('bad_region', `${what}: ${problem}`);
  return region;
}

/**
 * Decode a SET_MEM_TABLE payload: num_regions u32, padding u32, then exactly
 * num_regions 32-byte entries (0..8). The size must match num_regions.
 */
export function decodeMemoryTable(view: DataView): MemoryRegion[] {
  if (view.byteLength < PayloadSize.MEMORY_TABLE_HEADER) {
    throw new VhostUserProtocolError('bad_size', `memory table: payload is ${view.byteLength} bytes, needs at least ${PayloadSize.MEMORY_TABLE_HEADER}`);
  }
  const count = view.getUint32(0, true);
  if (count > MAX_MEM_TABLE_REGIONS) {
    throw new VhostUserProtocolError('too_many_regions', `memory table: ${count} regions, at most ${MAX_MEM_TABLE_REGIONS}`);
  }
  expectSize(view, memoryTableSize(count), `memory table of ${count} regions`);
  const regions: MemoryRegion[] = [];
  for (let i = 0; i < count; i++) {
    regions.push(checkedRegion(readRegion(view, PayloadSize.MEMORY_TABLE_HEADER + i * PayloadSize.MEMORY_REGION), `region ${i}`));
  }
  return regions;
}

/** Payload size of a memory table with `count` regions. */
export function memoryTableSize(count: number): number {
  return PayloadSize.MEMORY_TABLE_HEADER + count * PayloadSize.MEMORY_REGION;
}

/** Write a memory table payload at `offset`; returns its size. */
export function encodeMemoryTable(view: DataView, offset: number, regions: readonly MemoryRegion[]): number {
  view.setUint32(offset, regions.length, true);
  view.setUint32(offset + 4, 0, true);
  for (let i = 0; i < regions.length; i++) {
    writeRegion(view, offset + PayloadSize.MEMORY_TABLE_HEADER + i * PayloadSize.MEMORY_REGION, regions[i]);
  }
  return memoryTableSize(regions.length);
}

/** Decode an ADD_MEM_REG / REM_MEM_REG payload: 8 bytes padding + one region. */
export function decodeSingleMemoryRegion(view: DataView): MemoryRegion {
  expectSize(view, PayloadSize.SINGLE_MEMORY_REGION, 'single memory region');
  return checkedRegion(readRegion(view, 8), 'region');
}

/** Write a single-region payload (padding + region) at `offset`. */
export function encodeSingleMemoryRegion(view: DataView, offset: number, region: MemoryRegion): void {
  view.setBigUint64(offset, 0n, true);
  writeRegion(view, offset + 8, region);
}

/**
 * Decode the u64 of SET_VRING_KICK/CALL/ERR: index in bits 0-7, no-fd flag
 * in bit 8; any other bit set is 'bad_value'.
 */
export function decodeVringFdRequest(view: DataView): VringFdRequest {
  const value = decodeU64(view);
  if ((value & ~(VRING_INDEX_MASK | VRING_NO_FD_FLAG)) !== 0n) {
    throw new VhostUserProtocolError('bad_value', `vring fd request 0x${value.toString(16)} has unknown bits`);
  }
  return { index: Number(value & VRING_INDEX_MASK), noFd: (value & VRING_NO_FD_FLAG) !== 0n };
}

/** The u64 of SET_VRING_KICK/CALL/ERR for `index`, with the no-fd flag when fd is absent. */
export function vringFdRequestValue(index: number, noFd: boolean): bigint {
  return (BigInt(index) & VRING_INDEX_MASK) | (noFd ? VRING_NO_FD_FLAG : 0n);
}

/** Decode NET_SET_MTU: a u64 that must fit in 16 bits (an Ethernet MTU). */
export function decodeMtu(view: DataView): number {
  const value = decodeU64(view);
  if (value > 0xffffn) throw new VhostUserProtocolError('bad_value', `MTU ${value} out of range`);
  return Number(value);
}

/** Decode SEND_RARP: the first 6 of 8 payload bytes are the guest MAC. Returns a copy. */
export function decodeRarpMac(view: DataView): Uint8Array {
  expectSize(view, PayloadSize.U64, 'rarp');
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + 6));
}

/** Write a SEND_RARP payload (MAC + 2 zero bytes) at `offset`. */
export function encodeRarpMac(view: DataView, offset: number, mac: Uint8Array): void {
  for (let i = 0; i < 8; i++) view.setUint8(offset + i, i < 6 ? mac[i] : 0);
}

/**
 * The payload size a request must carry: a fixed number, 'memory_table'
 * (checked by decodeMemoryTable) or undefined for a request ferry does not
 * know the shape of.
 */
export function expectedPayloadSize(request: number): number | 'memory_table' | undefined {
  switch (request) {
    case Request.GET_FEATURES:
    case Request.SET_OWNER:
    case Request.RESET_OWNER:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.GET_QUEUE_NUM:
    case Request.GET_MAX_MEM_SLOTS:
    case Request.RESET_DEVICE:
    case Request.SET_LOG_FD:
    case Request.SET_SLAVE_REQ_FD:
    case Request.POSTCOPY_ADVISE:
    case Request.POSTCOPY_LISTEN:
    case Request.POSTCOPY_END:
    case Request.GET_STATUS:
      return PayloadSize.NONE;
    case Request.SET_FEATURES:
    case Request.SET_PROTOCOL_FEATURES:
    case Request.SET_VRING_KICK:
    case Request.SET_VRING_CALL:
    case Request.SET_VRING_ERR:
    case Request.SEND_RARP:
    case Request.NET_SET_MTU:
    case Request.SET_STATUS:
    case Request.CLOSE_CRYPTO_SESSION:
      return PayloadSize.U64;
    case Request.SET_VRING_NUM:
    case Request.SET_VRING_BASE:
    case Request.GET_VRING_BASE:
    case Request.SET_VRING_ENABLE:
    case Request.SET_VRING_ENDIAN:
    case Request.VRING_KICK:
      return PayloadSize.VRING_STATE;
    case Request.SET_VRING_ADDR:
      return PayloadSize.VRING_ADDRESS;
    case Request.SET_MEM_TABLE:
      return 'memory_table';
    case Request.SET_LOG_BASE:
      // A log description (mmap size u64, mmap offset u64), as QEMU sends it with LOG_SHMFD.
      return 16;
    case Request.ADD_MEM_REG:
    case Request.REM_MEM_REG:
      return PayloadSize.SINGLE_MEMORY_REGION;
    default:
      return undefined;
  }
}

/**
 * True for requests the back-end must answer with a typed reply whatever the
 * flags say (the spec's "Communication" list plus the other GET_* and
 * postcopy/IOTLB messages with a reply payload). A front-end sending one waits
 * for the reply, so a request of this kind that cannot be answered must end
 * the connection rather than be dropped.
 */
export function hasMandatoryReply(request: number): boolean {
  switch (request) {
    case Request.GET_FEATURES:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.GET_VRING_BASE:
    case Request.GET_QUEUE_NUM:
    case Request.GET_MAX_MEM_SLOTS:
    case Request.GET_CONFIG:
    case Request.GET_INFLIGHT_FD:
    case Request.GET_STATUS:
    case Request.IOTLB_MSG:
    case Request.CREATE_CRYPTO_SESSION:
    case Request.POSTCOPY_ADVISE:
    case Request.POSTCOPY_END:
      return true;
    default:
      return false;
  }
}
