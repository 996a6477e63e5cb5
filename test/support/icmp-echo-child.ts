/**
 * Child process for the ICMP echo test: runs inside a network namespace the
 * test created (loopback, a veth interface with 203.0.113.1 and
 * 2001:db8:1::1), drives a Stack with real ping sockets and a real Poller,
 * and prints "RESULT <json>" with the echo replies the guest would see.
 */
import { native } from '../../src/sys/native';
import { CounterBlock } from '../../src/sys/counters';
import { Stack } from '../../src/stack/stack';
import type { FdWatcher, ReadyHandler } from '../../src/stack/context';
import { DROP_SLOTS, DropReason } from '../../src/stack/drops';
import { be16, internetChecksum, pseudoHeaderSumIpv6 } from '../../src/stack/wire/checksum';
import { formatIp } from '../../src/stack/address';
import { FakeFramePort, GUEST_MAC, GUEST_V4, GUEST_V6, GATEWAY_V4, GATEWAY_V6, NO_OFFLOAD, OUR_MAC, ethernetFrame, icmpEcho, ipv4Packet, ipv6Packet, segmentsOf, testConfig } from './fakes/stack-fakes';

const events = new Int32Array(64);
const handlers = new Map<number, ReadyHandler>();
const port = new FakeFramePort();
const counters = new CounterBlock();
const poller = new native.Poller(events, (count) => {
  for (let i = 0; i < count; i++) handlers.get(events[2 * i])?.onReady(events[2 * i], events[2 * i + 1]);
  check();
});
const watcher: FdWatcher = {
  watch: (fd, ev, h) => {
    handlers.set(fd, h);
    poller.add(fd, ev);
  },
  modify: (fd, ev) => poller.modify(fd, ev),
  unwatch: (fd) => {
    handlers.delete(fd);
    poller.remove(fd);
  },
};
const stack = new Stack({ config: testConfig(), port, counters, watcher, sockets: native });

const data = Uint8Array.from(Buffer.from('ferry-ping'));
const v4Targets = [Uint8Array.from([203, 0, 113, 1]), GATEWAY_V4];
const v6Targets = [Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), GATEWAY_V6];
let seq = 1;
for (const dst of v4Targets) {
  stack.receiveFrame(segmentsOf(ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(GUEST_V4, dst, 1, icmpEcho(8, 0x4242, seq++, data)))), NO_OFFLOAD);
}
for (const dst of v6Targets) {
  stack.receiveFrame(segmentsOf(ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, ipv6Packet(GUEST_V6, dst, 58, icmpEcho(128, 0x4242, seq++, data, { src: GUEST_V6, dst })))), NO_OFFLOAD);
}

function decode(f: Uint8Array) {
  if (be16(f, 12) === 0x0800) {
    return { family: 4, src: formatIp(f.subarray(26, 30)), id: be16(f, 38), seq: be16(f, 40), data: Buffer.from(f.subarray(42)).toString(), checksumOk: internetChecksum(f, 34, f.length - 34) === 0 };
  }
  const n = f.length - 54;
  return {
    family: 6,
    src: formatIp(f.subarray(22, 38)),
    id: be16(f, 58),
    seq: be16(f, 60),
    data: Buffer.from(f.subarray(62)).toString(),
    checksumOk: internetChecksum(f, 54, n, pseudoHeaderSumIpv6(f, 22, f, 38, 58, n)) === 0,
  };
}

let done = false;
function finish(): void {
  if (done) return;
  done = true;
  const result = { replies: port.frames.map(decode), unavailable: counters.get(DROP_SLOTS[DropReason.EchoSocketUnavailable]), drops: DROP_SLOTS.reduce((n, s) => n + counters.get(s), 0) };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  stack.close();
  poller.close();
  process.exit(0);
}

function check(): void {
  if (port.frames.length >= 4) finish();
}

check();
if (counters.get(DROP_SLOTS[DropReason.EchoSocketUnavailable]) === 4) finish();
setTimeout(finish, 3000);
