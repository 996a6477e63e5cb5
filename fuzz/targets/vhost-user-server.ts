/**
 * Fuzz target: the vhost-user server's framing and state machine, over a
 * real socketpair. The input is a list of segments, each written to the
 * front-end end with 0..9 fds from a small pool of real eventfds and a memfd
 * (SCM_RIGHTS copies: the server must close every one it does not hand to
 * the device, and the fake device closes those it gets). After the input the
 * front-end end is shut down for writing; the server must then drop the
 * connection within a bounded time, with no fd left open and no exception.
 */
import * as fs from 'fs';
import { native } from '../../src/sys/native';
import { setLogSink } from '../../src/sys/log';
import { VhostUserServer } from '../../src/backend/modes/vhost-user/server';
import type { VhostUserDevice, VhostUserMemoryRegionWithFd } from '../../src/backend/modes/vhost-user/device';
import {
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_MTU,
  VHOST_USER_PROTOCOL_F_RARP,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
} from '../../src/backend/modes/vhost-user/protocol';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../src/virtqueue/features';
import { FuzzInput, InvariantError, check } from '../input';

const SHUT_WR = 1;
const MAX_SEGMENTS = 32;
/** The server must finish one input's messages well inside this. */
const DRAIN_DEADLINE_MS = 5000;

function closeOwned(fd: number | null): void {
  if (fd !== null && fd >= 0) native.close(fd);
}

/** A device that accepts everything and keeps no fd. */
class FuzzDevice implements VhostUserDevice {
  getFeatures(): bigint {
    return VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
  }
  setFeatures(): void {}
  getProtocolFeatures(): bigint {
    return VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_RARP | VHOST_USER_PROTOCOL_F_MTU | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS | VHOST_USER_PROTOCOL_F_REPLY_ACK;
  }
  setProtocolFeatures(): void {}
  maxQueuePairs(): number {
    return 2;
  }
  maxMemSlots(): number {
    return 8;
  }
  setOwner(): void {}
  resetOwner(): void {}
  setMemTable(regions: VhostUserMemoryRegionWithFd[]): void {
    for (const region of regions) closeOwned(region.fd);
  }
  addMemRegion(region: VhostUserMemoryRegionWithFd): void {
    closeOwned(region.fd);
  }
  removeMemRegion(): void {}
  setVringNum(): void {}
  setVringAddr(): void {}
  setVringBase(): void {}
  getVringBase(index: number): number {
    check(index >= 0 && index < 4, () => `getVringBase(${index}) passed the index check`);
    return 0;
  }
  setVringKick(_index: number, fd: number | null): void {
    closeOwned(fd);
  }
  setVringCall(_index: number, fd: number | null): void {
    closeOwned(fd);
  }
  setVringErr(_index: number, fd: number | null): void {
    closeOwned(fd);
  }
  setVringEnable(): void {}
  sendRarp(mac: Uint8Array): void {
    check(mac.length === 6, () => `RARP MAC of ${mac.length} bytes`);
  }
  setMtu(mtu: number): void {
    check(mtu >= 0 && mtu <= 0xffff, () => `MTU ${mtu}`);
  }
  disconnected(): void {}
}

let pool: number[] | null = null;
const device = new FuzzDevice();

function fdPool(): number[] {
  if (pool === null) {
    setLogSink(() => {});
    pool = [native.eventfd(0), native.eventfd(0), native.memfdCreate('ferry-fuzz', 1 << 16), native.eventfd(0)];
  }
  return pool;
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

export async function fuzz(data: Buffer): Promise<void> {
  const fds = fdPool();
  const before = openFdCount();
  const [daemonEnd, frontEnd] = native.socketpair();
  const server = VhostUserServer.listen({ device, listenFd: daemonEnd, connected: true, maxGuestMemory: 1 << 20 });
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new InvariantError(`connection not dropped ${DRAIN_DEADLINE_MS} ms after EOF`)), DRAIN_DEADLINE_MS);
    server.once('disconnected', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  try {
    const input = new FuzzInput(data);
    for (let i = 0; i < MAX_SEGMENTS && input.left > 0; i++) {
      const control = input.u8();
      const segment = input.take(input.u16() % 4200);
      const fdCount = Math.min(control & 0x0f, 9);
      const attached: number[] = [];
      for (let k = 0; k < fdCount; k++) attached.push(fds[((control >> 4) + k) % fds.length]);
      if (segment.length === 0 && attached.length === 0) continue;
      // An empty segment still carries its fds: SCM_RIGHTS needs one byte of data.
      const bytes = segment.length > 0 ? segment : Uint8Array.of(0);
      native.sendFds(frontEnd, bytes, 0, bytes.length, attached);
    }
  } catch (error) {
    // The server may close its end early (a framing error): then sending fails with EPIPE/ECONNRESET.
    const code = (error as { code?: unknown }).code;
    if (code !== 'EPIPE' && code !== 'ECONNRESET') throw error;
  }
  native.shutdown(frontEnd, SHUT_WR);
  try {
    await done;
  } finally {
    await server.close();
    native.close(frontEnd);
  }
  const after = openFdCount();
  check(after === before, () => `${after - before} fds left open after the connection ended`);
}
