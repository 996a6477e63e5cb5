/**
 * The virtio-net device behind the vhost-user server: owns the memory table
 * (and its fds), routes ring messages to the queue-pair workers, and keeps
 * the main thread free of packets.
 */
import { closeQuietly } from '../../../sys/close';
import { log } from '../../../sys/log';
import type {
  VhostUserDevice,
  VhostUserMemoryRegion,
  VhostUserMemoryRegionWithFd,
  VhostUserVringAddress,
} from './device';
import { type QueueWorker } from './queue-worker';
import type { RegionWithFd } from '../../../virtqueue/guest-memory';
import {
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from '../../../virtqueue/features';
import {
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_MTU,
  VHOST_USER_PROTOCOL_F_RARP,
} from './protocol';

/** Memory slots offered with CONFIGURE_MEM_SLOTS (QEMU uses at most its own limit, 509 for vhost-user). */
const MAX_MEM_SLOTS = 32;
const MIN_MTU = 68;
const MAX_MTU = 65535;

/** Largest guest address the worker can translate exactly (numbers, not bigints, on the hot path). */
const MAX_SAFE_ADDRESS = BigInt(Number.MAX_SAFE_INTEGER);

function toSafeNumber(value: bigint, what: string): number {
  if (value < 0n || value > MAX_SAFE_ADDRESS) throw new Error(`${what} 0x${value.toString(16)} is beyond 2^53`);
  return Number(value);
}

function sameRegion(a: VhostUserMemoryRegion, b: VhostUserMemoryRegion): boolean {
  return a.guestAddress === b.guestAddress && a.userAddress === b.userAddress && a.size === b.size;
}

export interface NetDeviceOptions {
  queuePairs: number;
  /** Offer VIRTIO_NET_F_MTU and accept NET_SET_MTU up to this value. */
  mtu: number;
}

export class NetDevice implements VhostUserDevice {
  private regions: VhostUserMemoryRegionWithFd[] = [];
  /**
   * How many times each region was added (parallel to `regions`). QEMU 7.2
   * sends every ADD_MEM_REG once per queue pair: an identical region adds a
   * reference, and REM_MEM_REG unmaps only when the last one goes.
   */
  private regionRefs: number[] = [];
  private readonly errFds = new Map<number, number>();
  /** The MTU QEMU set with NET_SET_MTU (informational: the stack's MTU is ferry's configuration). */
  frontendMtu: number | null = null;

  constructor(private readonly workers: QueueWorker[], private readonly options: NetDeviceOptions) {}

  /**
   * Offered virtio features: rings with indirect descriptors and event index,
   * merged RX buffers, MTU, checksum offload both ways, MQ when configured.
   * CSUM: the guest may send partial TCP/UDP checksums (NEEDS_CSUM), which
   * the stack does not verify (it terminates TCP/UDP, the checksum goes
   * nowhere). GUEST_CSUM: ferry sends its TCP/UDP frames NEEDS_CSUM with a
   * partial (pseudo-header) checksum (the port's checksumOffload): no
   * per-byte sum in ferry, and still correct if the guest forwards them.
   */
  getFeatures(): bigint {
    let features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_MTU
      | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;
    if (this.options.queuePairs > 1) features |= VIRTIO_NET_F_MQ;
    return features;
  }

  async setFeatures(features: bigint): Promise<void> {
    await this.all({ op: 'features', features });
  }

  getProtocolFeatures(): bigint {
    // MQ is offered even with one queue pair: the spec asks back-ends to always offer it (GET_QUEUE_NUM then says 1).
    return VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_RARP | VHOST_USER_PROTOCOL_F_MTU | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;
  }

  setProtocolFeatures(): void {
    // Nothing to do: the server applies the rules that depend on them.
  }

  maxQueuePairs(): number {
    return this.options.queuePairs;
  }

  maxMemSlots(): number {
    return MAX_MEM_SLOTS;
  }

  setOwner(): void {
    // One front-end at a time is the server's rule; nothing to claim here.
  }

  /**
   * RESET_OWNER: the front-end starts over on this connection, so the device
   * forgets it as on a disconnection: workers reset (fresh stacks), and the
   * memory table goes too. Kept, its regions would be taken as the same ones
   * when the front-end adds its new memory at the same addresses, and the
   * rings would be read from the old memory.
   */
  async resetOwner(): Promise<void> {
    await this.forgetFrontend();
  }

  async setMemTable(regions: VhostUserMemoryRegionWithFd[]): Promise<void> {
    const old = this.regions;
    this.regions = regions;
    this.regionRefs = regions.map(() => 1);
    try {
      await this.sendMemTable();
    } finally {
      for (const region of old) closeQuietly(region.fd);
    }
  }

  async addMemRegion(region: VhostUserMemoryRegionWithFd): Promise<void> {
    const same = this.regions.findIndex((r) => sameRegion(r, region) && r.mmapOffset === region.mmapOffset);
    if (same >= 0) {
      // Already mapped (QEMU 7.2 repeats ADD_MEM_REG per queue pair): keep the mapping, drop the new fd.
      closeQuietly(region.fd);
      this.regionRefs[same]++;
      return;
    }
    if (this.regions.length >= MAX_MEM_SLOTS) {
      closeQuietly(region.fd);
      throw new Error(`ADD_MEM_REG: all ${MAX_MEM_SLOTS} memory slots are in use`);
    }
    const overlap = this.regions.find(
      (r) => region.guestAddress < r.guestAddress + r.size && r.guestAddress < region.guestAddress + region.size,
    );
    if (overlap !== undefined) {
      closeQuietly(region.fd);
      throw new Error(`ADD_MEM_REG: region at 0x${region.guestAddress.toString(16)} overlaps an existing one`);
    }
    this.regions = [...this.regions, region];
    this.regionRefs = [...this.regionRefs, 1];
    await this.sendMemTable();
  }

  async removeMemRegion(region: VhostUserMemoryRegion): Promise<void> {
    const index = this.regions.findIndex((r) => sameRegion(r, region));
    if (index < 0) throw new Error(`REM_MEM_REG: no region at 0x${region.guestAddress.toString(16)}`);
    if (--this.regionRefs[index] > 0) return;
    const removed = this.regions[index];
    this.regions = this.regions.filter((_, i) => i !== index);
    this.regionRefs = this.regionRefs.filter((_, i) => i !== index);
    try {
      await this.sendMemTable();
    } finally {
      closeQuietly(removed.fd);
    }
  }

  async setVringNum(index: number, num: number): Promise<void> {
    await this.ring(index, (ring) => ({ op: 'vring-num', ring, num }));
  }

  async setVringAddr(address: VhostUserVringAddress): Promise<void> {
    const descriptorUserAddress = toSafeNumber(address.descriptorUserAddress, 'descriptor table address');
    const availableUserAddress = toSafeNumber(address.availableUserAddress, 'available ring address');
    const usedUserAddress = toSafeNumber(address.usedUserAddress, 'used ring address');
    await this.ring(address.index, (ring) => ({ op: 'vring-addr', ring, descriptorUserAddress, availableUserAddress, usedUserAddress }));
  }

  async setVringBase(index: number, base: number): Promise<void> {
    await this.ring(index, (ring) => ({ op: 'vring-base', ring, base }));
  }

  async getVringBase(index: number): Promise<number> {
    return this.ring(index, (ring) => ({ op: 'vring-stop', ring }));
  }

  async setVringKick(index: number, fd: number | null): Promise<void> {
    await this.ring(index, (ring) => ({ op: 'vring-kick', ring, fd }), fd);
  }

  async setVringCall(index: number, fd: number | null): Promise<void> {
    await this.ring(index, (ring) => ({ op: 'vring-call', ring, fd }), fd);
  }

  setVringErr(index: number, fd: number | null): void {
    // ferry reports no ring errors through this fd (the spec makes it optional); keep it so the front-end sees it open.
    closeQuietly(this.errFds.get(index) ?? null);
    if (fd === null) this.errFds.delete(index);
    else this.errFds.set(index, fd);
  }

  async setVringEnable(index: number, enabled: boolean): Promise<void> {
    await this.ring(index, (ring) => ({ op: 'vring-enable', ring, enabled }));
  }

  async sendRarp(mac: Uint8Array): Promise<void> {
    await this.workers[0].request({ op: 'send-rarp', mac: Uint8Array.from(mac) });
  }

  setMtu(mtu: number): void {
    if (mtu < MIN_MTU || mtu > MAX_MTU) throw new Error(`NET_SET_MTU: ${mtu} is out of range (${MIN_MTU}-${MAX_MTU})`);
    this.frontendMtu = mtu;
    log.info(`front-end set MTU ${mtu}`);
  }

  async disconnected(): Promise<void> {
    await this.forgetFrontend();
  }

  /** Reset the workers and release the memory table, err fds and MTU of the front-end. */
  private async forgetFrontend(): Promise<void> {
    try {
      await this.all({ op: 'reset' });
    } finally {
      for (const region of this.regions) closeQuietly(region.fd);
      this.regions = [];
      this.regionRefs = [];
      for (const fd of this.errFds.values()) closeQuietly(fd);
      this.errFds.clear();
      this.frontendMtu = null;
    }
  }

  /** Send the current table to every worker (each maps what is new and unmaps what is gone). */
  private async sendMemTable(): Promise<void> {
    const regions: RegionWithFd[] = this.regions.map((r) => ({
      guestPhysAddr: toSafeNumber(r.guestAddress, 'guest address'),
      size: toSafeNumber(r.size, 'region size'),
      userAddr: toSafeNumber(r.userAddress, 'user address'),
      mmapOffset: toSafeNumber(r.mmapOffset, 'mmap offset'),
      fd: r.fd,
    }));
    await this.all({ op: 'mem-table', regions });
  }

  /**
   * Route a ring request to the worker of ring `index`'s queue pair.
   * handedOver (a kick or call fd) is the worker's once it has the request;
   * it is closed here if the ring does not exist, and by QueueWorker if the
   * worker never answers, so it is never kept.
   */
  private ring(index: number, make: (ring: number) => Parameters<QueueWorker['request']>[0], handedOver: number | null = null): Promise<number> {
    const worker = this.workers[index >> 1];
    if (worker === undefined) {
      closeQuietly(handedOver);
      return Promise.reject(new Error(`vring ${index} does not exist (${this.workers.length} queue pairs)`));
    }
    return worker.request(make(index & 1), handedOver === null ? [] : [handedOver]);
  }

  private async all(request: Parameters<QueueWorker['request']>[0]): Promise<void> {
    const results = await Promise.allSettled(this.workers.map((w) => w.request(request)));
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure !== undefined) throw failure.reason instanceof Error ? failure.reason : new Error(String(failure.reason));
  }
}
