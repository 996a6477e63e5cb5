/**
 * A whole stack for the frame fuzz targets, built as a worker builds it
 * (createStackParts: flow table, TCP and UDP services, the IPv6 control
 * plane) over a FakeFramePort and fake host sockets, so nothing leaves the
 * process. Fake socket fds are numbers far above the process's fd limit: an
 * addon call that reaches the kernel with one gets EBADF, never a real fd.
 */
import { CounterBlock } from '../src/sys/counters';
import { setLogSink } from '../src/sys/log';
import type { FdWatcher, StackSockets } from '../src/stack/context';
import { createStackParts } from '../src/stack/stack-factory';
import type { Stack } from '../src/stack/stack';
import { DROP_SLOTS, DropReason } from '../src/stack/drops';
import { FakeFramePort, NO_OFFLOAD, segmentsOf, testConfig } from '../test/support/fakes/stack-fakes';
import { type FuzzInput, check } from './input';

const FAKE_FD_BASE = 1 << 24;

/** Host sockets that accept every call and carry nothing. */
function fakeSockets(): StackSockets {
  let next = FAKE_FD_BASE;
  return {
    socket: () => next++,
    bind: () => {},
    connect: () => -1, // EINPROGRESS: the connection never completes
    read: () => -1, // EAGAIN
    write: (_fd, _buf, _offset, length) => length,
    close: () => {},
    getsockname: (_fd, out) => {
      out.fill(0);
      out[0] = 2; // AF_INET, port 0, 0.0.0.0
      return 16;
    },
    setsockoptInt: () => {},
    setsockoptBytes: () => {},
  };
}

const fakeWatcher: FdWatcher = { watch: () => {}, modify: () => {}, unwatch: () => {} };

export interface FrameHarness {
  stack: Stack;
  port: FakeFramePort;
  counters: CounterBlock;
  now: number;
}

let harness: FrameHarness | null = null;

export function frameHarness(): FrameHarness {
  if (harness !== null) return harness;
  setLogSink(() => {});
  const port = new FakeFramePort([2048, 65536]);
  const counters = new CounterBlock();
  const h: FrameHarness = { stack: null as unknown as Stack, port, counters, now: 0 };
  const clock = { now: () => h.now };
  h.stack = createStackParts({ config: testConfig({ maxFlows: 64 }), port, counters, clock, watcher: fakeWatcher, sockets: fakeSockets() }).stack;
  harness = h;
  return h;
}

/**
 * Feed one frame, cut into segments at the offsets `input` chooses, and
 * check what must hold for any frame: the stack counts no internal error
 * (receiveFrame turns an escaped exception into one) and every reply fits a
 * frame. The port's frame list is emptied so memory stays bounded.
 */
export function feedFrame(h: FrameHarness, frame: Uint8Array, input: FuzzInput): void {
  const cuts: number[] = [];
  for (let n = input.u8() % 4, at = 0; n > 0 && frame.length > 1; n--) {
    at += 1 + (input.u16() % frame.length);
    if (at >= frame.length) break;
    cuts.push(at);
  }
  const internal = DROP_SLOTS[DropReason.InternalError];
  const before = h.counters.get(internal);
  h.stack.receiveFrame(segmentsOf(frame, cuts), NO_OFFLOAD);
  h.now += input.u8() * 50;
  if (input.u8() === 0xff) h.stack.onTimer(h.now);
  check(h.counters.get(internal) === before, () => 'the stack counted an internal error (an exception escaped a handler)');
  check(h.port.frames.length <= 64, () => `${h.port.frames.length} replies to one frame`);
  for (const reply of h.port.frames) check(reply.length <= h.port.maxFrameLength, () => `reply of ${reply.length} bytes`);
  h.port.frames.length = 0;
}
