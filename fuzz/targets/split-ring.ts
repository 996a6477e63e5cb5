/**
 * Fuzz target: the split-ring descriptor-chain walker over real guest
 * memory (a memfd mapped once as two regions with a hole between them). The
 * input chooses the queue size and features, fills the descriptor table and
 * the available ring, and between pops rewrites ring bytes as a concurrent
 * guest could. Every chain the walker accepts must lie inside the mapping,
 * within the chain byte bound and the ring size; the walk must end.
 */
import { native } from '../../src/sys/native';
import { GuestMemory } from '../../src/virtqueue/guest-memory';
import { DescriptorChain, PopResult, SplitRing } from '../../src/virtqueue/split-ring';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../src/virtqueue/features';
import type { SegmentList } from '../../src/io/frame-io';
import { FuzzInput, check } from '../input';

const REGION_SIZE = 1 << 16;
/** Region B starts here: [REGION_SIZE, REGION_B) is a hole. */
const REGION_B = 2 * REGION_SIZE;
const DESC_GPA = 0x0;
const AVAIL_GPA = 0x1000;
const USED_GPA = 0x2000;
/** The bytes a guest may rewrite: the table and both rings of the largest queue here. */
const RING_BYTES = 0x3000;
const MAX_CHAIN_BYTES = 48 * 1024;

interface Fixture {
  memory: GuestMemory;
  /** The same memfd, mapped again: the guest's view. */
  guest: Uint8Array;
  ring: SplitRing;
  chain: DescriptorChain;
}

let fixture: Fixture | null = null;

function setup(): Fixture {
  if (fixture !== null) return fixture;
  const fd = native.memfdCreate('ferry-fuzz-ring', 2 * REGION_SIZE);
  const memory = GuestMemory.map([
    { guestPhysAddr: 0, size: REGION_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0, fd },
    { guestPhysAddr: REGION_B, size: REGION_SIZE, userAddr: 0x7f00_0001_0000, mmapOffset: REGION_SIZE, fd },
  ]);
  const guest = new Uint8Array(native.mmap(fd, 0, REGION_SIZE, REGION_SIZE)[0]);
  native.close(fd);
  const ring = new SplitRing(memory, { maxChainBytes: MAX_CHAIN_BYTES });
  fixture = { memory, guest, ring, chain: new DescriptorChain(256) };
  return fixture;
}

function checkSegments(list: SegmentList, what: string): number {
  let total = 0;
  for (let i = 0; i < list.count; i++) {
    const buffer = list.buffers[i];
    const offset = list.offsets[i];
    const length = list.lengths[i];
    check(buffer.buffer.byteLength === REGION_SIZE, () => `${what} segment ${i} is not over a guest mapping`);
    check(Number.isInteger(offset) && offset >= 0 && length >= 0 && offset + length <= buffer.length, () => `${what} segment ${i} [${offset}, +${length}) outside its mapping`);
    total += length;
  }
  check(total === list.totalLength, () => `${what} totalLength ${list.totalLength}, segments sum to ${total}`);
  return total;
}

export function fuzz(data: Buffer): void {
  const { ring, chain, guest } = setup();
  const input = new FuzzInput(data);
  const size = 1 << input.u8() % 9;
  const flags = input.u8();
  const features = (flags & 1 ? VIRTIO_RING_F_INDIRECT_DESC : 0n) | (flags & 2 ? VIRTIO_RING_F_EVENT_IDX : 0n);
  guest.fill(0, 0, RING_BYTES);
  // The guest's part: descriptor table, then the available ring, from the input.
  const table = input.take(size * 16);
  guest.set(table, DESC_GPA);
  guest.set(input.take(4 + 2 * size + 2), AVAIL_GPA);
  ring.reset();
  const problem = ring.configure(size, DESC_GPA, AVAIL_GPA, USED_GPA, features);
  check(problem === null, () => `a valid ring was refused: ${problem}`);
  const steps = 4 * size + 16;
  for (let step = 0; step < steps; step++) {
    const result = ring.popChain(chain);
    if (result === PopResult.Empty || result === PopResult.RingBroken) {
      if (input.left === 0) break;
    } else if (result === PopResult.Ok) {
      const bytes = checkSegments(chain.readable, 'readable') + checkSegments(chain.writable, 'writable');
      check(bytes <= MAX_CHAIN_BYTES, () => `chain of ${bytes} bytes, bound ${MAX_CHAIN_BYTES}`);
      check(chain.head < size, () => `head ${chain.head} of a ring of ${size}`);
      check(chain.descriptorCount <= size, () => `${chain.descriptorCount} descriptors in a ring of ${size}`);
      ring.pushUsed(chain.head, Math.min(bytes, 1500));
      if ((step & 3) === 3) ring.publishUsed();
    }
    // A concurrent guest: rewrite a u16 of the table or rings (or an indirect table in region B).
    const op = input.u8();
    if (op & 1) {
      const at = (input.u16() % (RING_BYTES / 2)) * 2;
      const value = input.u16();
      guest[at] = value & 0xff;
      guest[at + 1] = value >> 8;
    }
    if (op & 2) ring.needsNotify();
    if (op & 4) ring.enableNotifications();
  }
  ring.publishUsed();
}
