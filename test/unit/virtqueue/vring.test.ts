import { expect } from 'chai';
import { CounterBlock } from '../../../src/sys/counters';
import { GuestMemory } from '../../../src/virtqueue/guest-memory';
import { VIRTIO_F_VERSION_1 } from '../../../src/virtqueue/features';
import { VRING_FAULT_SLOTS, Vring, VringFault, type VringFds } from '../../../src/virtqueue/vring';
import { GuestArena, SplitRingDriver } from '../../support/fakes/split-ring-driver';

const BASE = 0x10000;
const USER_BASE = 0x7f0000000000;
const ARENA_SIZE = 64 * 1024;
const EPOLLIN = 1;
const EPOLLHUP = 0x10;

function errno(code: string): Error {
  return Object.assign(new Error(code), { code });
}

/** Fake fd calls: each fd has a queue of read results (a number, or an errno to throw) and an optional write error. */
class FakeFds implements VringFds {
  readonly reads = new Map<number, (number | string)[]>();
  readonly writeErrors = new Map<number, string>();
  readonly nonBlocking = new Set<number>();
  readonly refuseNonBlocking = new Set<number>();
  readonly closed: number[] = [];
  readonly writes: number[] = [];

  eventfdRead(fd: number): number {
    const next = this.reads.get(fd)?.shift() ?? -1;
    if (typeof next === 'string') throw errno(next);
    return next;
  }

  eventfdWrite(fd: number, value: number): void {
    const error = this.writeErrors.get(fd);
    if (error !== undefined) throw errno(error);
    this.writes.push(fd, value);
  }

  setNonBlocking(fd: number, on: boolean): void {
    if (this.refuseNonBlocking.has(fd)) throw errno('EBADF');
    if (on) this.nonBlocking.add(fd);
  }

  close(fd: number): void {
    this.closed.push(fd);
  }
}

class FakeWatcher {
  readonly handlers = new Map<number, { onReady(fd: number, events: number): void }>();
  refuse = false;

  watch(fd: number, _events: number, handler: { onReady(fd: number, events: number): void }): void {
    if (this.refuse) throw errno('EPERM');
    this.handlers.set(fd, handler);
  }

  unwatch(fd: number): void {
    this.handlers.delete(fd);
  }

  ready(fd: number, events = EPOLLIN): void {
    const handler = this.handlers.get(fd);
    if (handler === undefined) throw new Error(`fd ${fd} is not watched`);
    handler.onReady(fd, events);
  }
}

function microtasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function setup(): { vring: Vring; fds: FakeFds; watcher: FakeWatcher; counters: CounterBlock; kicks: { count: number }; stops: { count: number }; driver: SplitRingDriver; memory: GuestMemory } {
  const fds = new FakeFds();
  const watcher = new FakeWatcher();
  const counters = new CounterBlock();
  const kicks = { count: 0 };
  const stops = { count: 0 };
  const buffer = new ArrayBuffer(ARENA_SIZE);
  const memory = new GuestMemory([{ guestPhysAddr: BASE, size: ARENA_SIZE, userAddr: USER_BASE, mmapOffset: 0, chunks: [buffer], chunkSize: ARENA_SIZE }]);
  const driver = new SplitRingDriver(new GuestArena(new Uint8Array(buffer), BASE), 8);
  const vring = new Vring({
    name: '1 (tx)',
    counters,
    watcher,
    fds,
    epoll: { in: EPOLLIN, hangup: EPOLLHUP },
    onKick: () => kicks.count++,
    beforeStop: () => stops.count++,
  });
  return { vring, fds, watcher, counters, kicks, stops, driver, memory };
}

/** A ring configured the way the front-end's messages do it, enabled and with kick fd 10 and call fd 11. */
function configured(): ReturnType<typeof setup> {
  const f = setup();
  const uva = (gpa: number): number => USER_BASE + (gpa - BASE);
  f.vring.setFeatures(VIRTIO_F_VERSION_1);
  f.vring.setMemory(f.memory);
  f.vring.setNum(8);
  f.vring.setBase(0);
  f.vring.setAddresses(uva(f.driver.descGpa), uva(f.driver.availGpa), uva(f.driver.usedGpa));
  f.vring.setKick(10);
  f.vring.setCall(11);
  return f;
}

function faults(counters: CounterBlock, fault: VringFault): number {
  return counters.get(VRING_FAULT_SLOTS.get(fault) as number);
}

describe('Vring (one virtqueue\'s lifecycle and fd faults)', () => {
  it('starts on the first kick once enabled, and services every kick', () => {
    const { vring, watcher, fds, kicks } = configured();
    expect(fds.nonBlocking.has(10) && fds.nonBlocking.has(11), 'kick and call fds made non-blocking').to.equal(true);
    vring.setEnabled(true);
    expect(vring.running).to.equal(true);
    expect(kicks.count).to.equal(1);
    fds.reads.set(10, [1]);
    watcher.ready(10);
    expect(kicks.count).to.equal(2);
  });

  it('GET_VRING_BASE stops the ring, returns its index and stops watching kicks until a new kick fd', () => {
    const { vring, watcher, stops } = configured();
    vring.setBase(5);
    vring.setEnabled(true);
    expect(vring.handBack()).to.equal(5);
    expect(stops.count).to.equal(1, 'the data path published before the index was read');
    expect(vring.running).to.equal(false);
    expect(watcher.handlers.has(10)).to.equal(false);
    vring.setKick(12);
    expect(watcher.handlers.has(12)).to.equal(true);
  });

  it('a kick fd at end of file: counted, closed and unwatched; the ring stops until a new kick fd comes', async () => {
    const { vring, watcher, fds, kicks, counters } = configured();
    vring.setEnabled(true);
    fds.reads.set(10, ['EIO']);
    watcher.ready(10, EPOLLIN | EPOLLHUP);
    expect(faults(counters, VringFault.KickEof)).to.equal(1);
    expect(fds.closed).to.include(10);
    expect(watcher.handlers.has(10)).to.equal(false);
    expect(vring.fault).to.equal(VringFault.KickEof);
    await microtasks();
    expect(vring.running).to.equal(false);
    const before = kicks.count;
    vring.kicked();
    expect(kicks.count).to.equal(before, 'a broken ring is not serviced');
    vring.setKick(12);
    expect(vring.fault).to.equal(null);
    fds.reads.set(12, [1]);
    watcher.ready(12);
    expect(kicks.count).to.equal(before + 1);
  });

  it('a kick fd that hangs up with nothing to read, or fails to read, is a kick error', () => {
    const { vring, watcher, fds, counters } = configured();
    vring.setEnabled(true);
    watcher.ready(10, EPOLLHUP);
    expect(faults(counters, VringFault.KickError)).to.equal(1);
    vring.setKick(12);
    fds.reads.set(12, ['EBADF']);
    watcher.ready(12);
    expect(faults(counters, VringFault.KickError)).to.equal(2);
    expect(fds.closed).to.include.members([10, 12]);
  });

  it('a kick fd that cannot be watched is refused and closed', () => {
    const f = setup();
    f.watcher.refuse = true;
    f.vring.setKick(20);
    expect(f.fds.closed).to.deep.equal([20]);
    expect(f.vring.fault).to.equal(VringFault.KickRefused);
    expect(faults(f.counters, VringFault.KickRefused)).to.equal(1);
    expect(f.vring.heldFds).to.deep.equal([]);
  });

  it('a call fd whose write fails (EPIPE): counted, closed, the ring stops; later notifications write nothing', async () => {
    const { vring, fds, counters } = configured();
    vring.setEnabled(true);
    vring.notify();
    expect(fds.writes).to.deep.equal([11, 1]);
    fds.writeErrors.set(11, 'EPIPE');
    vring.notify();
    expect(faults(counters, VringFault.CallError)).to.equal(1);
    expect(fds.closed).to.include(11);
    vring.notify();
    expect(faults(counters, VringFault.CallError)).to.equal(1, 'counted once: the fd is gone');
    await microtasks();
    expect(vring.running).to.equal(false);
    expect(vring.heldFds).to.deep.equal([10]);
  });

  it('a call fd that cannot be made non-blocking is refused and closed (it could block the thread)', () => {
    const f = setup();
    f.fds.refuseNonBlocking.add(30);
    f.vring.setCall(30);
    expect(f.fds.closed).to.deep.equal([30]);
    expect(f.vring.fault).to.equal(VringFault.CallRefused);
    f.vring.setCall(31);
    expect(f.vring.fault).to.equal(null);
    expect(f.vring.heldFds).to.deep.equal([31]);
  });

  it('replacing a kick or call fd closes the old one; reset closes both and forgets the configuration', () => {
    const { vring, watcher, fds } = configured();
    vring.setKick(12);
    vring.setCall(13);
    expect(fds.closed).to.deep.equal([10, 11]);
    vring.setEnabled(true);
    vring.reset();
    expect(fds.closed).to.deep.equal([10, 11, 12, 13]);
    expect(watcher.handlers.size).to.equal(0);
    expect(vring.heldFds).to.deep.equal([]);
    expect(vring.running).to.equal(false);
    vring.setEnabled(true);
    expect(vring.running).to.equal(false, 'nothing to start after a reset');
  });
});
