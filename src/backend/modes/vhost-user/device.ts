/**
 * The device interface that the vhost-user protocol server drives.
 *
 * The server (server.ts) knows the socket, the message framing, the feature
 * negotiation rules and the validation of what the front-end sends; it knows
 * nothing of what a ring carries. A device knows rings, guest memory and
 * workers; it knows nothing of the socket. (The split follows rust-vmm's
 * vhost-user-backend: VhostUserDaemon/handler vs. VhostUserBackend.)
 *
 * Contract between the two:
 * - The server calls one method at a time per connection, in message order,
 *   and awaits a returned Promise before reading the next message. Any method
 *   may therefore be async (e.g. when it must talk to worker threads).
 * - A method signals failure by throwing (or rejecting). The server turns the
 *   failure into a REPLY_ACK failure when the front-end asked for one, logs
 *   it (rate-limited) and keeps serving the connection.
 * - The server has already checked the shape of every message: payload size,
 *   fd count, vring index < 2 * maxQueuePairs(), the no-fd flag, features
 *   being a subset of what was offered. It has also checked the fds: every
 *   region fd is a regular file (memfd, /dev/shm, hugetlbfs) at least
 *   mmap offset + size bytes long (shrinking sealed where the file allows),
 *   the table stays under the server's guest-memory bound, and kick, call
 *   and err fds are eventfds. The device checks the meaning: ring sizes,
 *   addresses that must fall inside guest memory, region overlap. A region
 *   fd can still be truncated later; the addon's SIGBUS guard turns the
 *   vanished pages into zeros and GuestMemory.faulted reports it.
 * - File descriptors passed to a method belong to the device from then on
 *   (it must close them when replaced, removed, or on disconnected()), even
 *   when the method throws.
 * - Rings start stopped and disabled. A ring starts on its first kick (the
 *   device watches the kick fd) and stops on getVringBase(). When
 *   VHOST_USER_F_PROTOCOL_FEATURES is not negotiated the server itself calls
 *   setVringEnable(i, true) for every ring right after setFeatures(), so the
 *   device does not need to know that rule.
 */

import type { MemoryRegion, VringAddress } from './protocol';

/** A value or a promise of it: device methods may be sync or async. */
export type MaybePromise<T> = T | Promise<T>;

/** One guest memory region as the front-end describes it (declared with its decoder in protocol.ts). */
export type VhostUserMemoryRegion = MemoryRegion;

/** A memory region together with the fd to map it from (owned by the device once passed). */
export interface VhostUserMemoryRegionWithFd extends VhostUserMemoryRegion {
  fd: number;
}

/** SET_VRING_ADDR payload: ring parts as front-end user addresses (declared with its decoder in protocol.ts). */
export type VhostUserVringAddress = VringAddress;

/**
 * What the vhost-user server drives. One instance serves one front-end at a
 * time and is reused for the next one after disconnected().
 */
export interface VhostUserDevice {
  /**
   * Virtio feature bits the device offers (VIRTIO_NET_F_*, VIRTIO_F_VERSION_1,
   * VIRTIO_RING_F_*...). The server adds VHOST_USER_F_PROTOCOL_FEATURES (bit
   * 30) itself; the device must not set bit 30 nor VHOST_F_LOG_ALL (bit 26).
   */
  getFeatures(): bigint;

  /**
   * The features the driver accepted (a subset of getFeatures() plus possibly
   * bit 30, already checked by the server). May arrive more than once (QEMU
   * sends it again on every start of the device).
   */
  setFeatures(features: bigint): MaybePromise<void>;

  /**
   * Protocol feature bits the device can honour among those that concern it:
   * MQ, RARP, MTU, CONFIGURE_MEM_SLOTS (see protocol.ts). The server masks
   * this with what it can handle and adds REPLY_ACK itself.
   */
  getProtocolFeatures(): bigint;

  /** The protocol features negotiated (subset of what the server offered). */
  setProtocolFeatures(features: bigint): MaybePromise<void>;

  /**
   * Number of queue pairs (RX+TX) the device supports, >= 1. The server
   * answers GET_QUEUE_NUM with this value: QEMU's net client compares it with
   * the netdev's queues= (a count of queue pairs), and rejects vring indices
   * >= 2 * maxQueuePairs().
   */
  maxQueuePairs(): number;

  /** Maximum memory regions for GET_MAX_MEM_SLOTS (only asked with CONFIGURE_MEM_SLOTS). */
  maxMemSlots(): number;

  /** SET_OWNER: a front-end starts its session. */
  setOwner(): MaybePromise<void>;

  /** RESET_OWNER (deprecated): stop and disable all rings, keep the session. */
  resetOwner(): MaybePromise<void>;

  /**
   * SET_MEM_TABLE: replace the whole memory table (1..8 regions, fds in the
   * same order). The device unmaps the old table and closes its fds.
   */
  setMemTable(regions: VhostUserMemoryRegionWithFd[]): MaybePromise<void>;

  /** ADD_MEM_REG: map one more region (the fd is the device's from now on). */
  addMemRegion(region: VhostUserMemoryRegionWithFd): MaybePromise<void>;

  /** REM_MEM_REG: unmap the region matching guest address, user address and size (mmap offset ignored). */
  removeMemRegion(region: VhostUserMemoryRegion): MaybePromise<void>;

  /** SET_VRING_NUM: ring size (the device checks it: power of two, <= 32768). */
  setVringNum(index: number, num: number): MaybePromise<void>;

  /** SET_VRING_ADDR: ring part addresses (user addresses; translate via the memory table). */
  setVringAddr(address: VhostUserVringAddress): MaybePromise<void>;

  /** SET_VRING_BASE: the next available index to read (last_avail_idx). */
  setVringBase(index: number, base: number): MaybePromise<void>;

  /**
   * GET_VRING_BASE: stop the ring (no more processing, kick fd no longer
   * watched) and return its next available index (last_avail_idx, 0..65535).
   */
  getVringBase(index: number): MaybePromise<number>;

  /** SET_VRING_KICK: the eventfd the driver signals; null = no fd (poll the ring). */
  setVringKick(index: number, fd: number | null): MaybePromise<void>;

  /** SET_VRING_CALL: the eventfd to signal used buffers; null = no fd (the front-end polls). */
  setVringCall(index: number, fd: number | null): MaybePromise<void>;

  /** SET_VRING_ERR: the eventfd to signal ring errors; null = none. */
  setVringErr(index: number, fd: number | null): MaybePromise<void>;

  /** SET_VRING_ENABLE (and implicit enable without protocol features). */
  setVringEnable(index: number, enabled: boolean): MaybePromise<void>;

  /** SEND_RARP (protocol feature RARP): announce this guest MAC (6 bytes) after migration. */
  sendRarp(mac: Uint8Array): MaybePromise<void>;

  /** NET_SET_MTU (protocol feature MTU): throw when the MTU is not acceptable. */
  setMtu(mtu: number): MaybePromise<void>;

  /**
   * The front-end is gone (socket closed, or the server dropped it for a
   * protocol error): stop all rings, unmap memory, close every fd the device
   * owns, and return to the initial state for the next front-end.
   */
  disconnected(): MaybePromise<void>;
}
