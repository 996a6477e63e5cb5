/**
 * The seed corpus: valid inputs for each target, generated from the
 * product's own encoders (written to fuzz/corpus/<target>/seed-* by
 * `npm run fuzz -- --write-seeds`).
 */
import {
  HEADER_SIZE,
  Request,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
  encodeHeader,
  encodeMemoryTable,
  encodeSingleMemoryRegion,
  encodeU64,
  encodeVringAddress,
  encodeVringState,
  vringFdRequestValue,
  type MemoryRegion,
} from '../src/backend/modes/vhost-user/protocol';
import { encodeRequest, frame, type ControlRequest } from '../src/backend/control/control-protocol';
import { setBe16 } from '../src/stack/wire/checksum';
import { GATEWAY_V4, GUEST_MAC, GUEST_V4, OUR_MAC, arpPacket, concat, icmpEcho } from '../test/support/fakes/stack-fakes';

export type Seeds = Record<string, Uint8Array>;

const REGION: MemoryRegion = { guestAddress: 0n, size: 0x10000n, userAddress: 0x7f0000000000n, mmapOffset: 0n };

/** One vhost-user message: header (version 1, `flags` extra) + payload written by `fill`. */
function message(request: number, size: number, fill: (view: DataView) => void = () => {}, flags = 0): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE + size);
  const view = new DataView(bytes.buffer);
  encodeHeader(view, 0, request, 1 | flags, size);
  fill(view);
  return bytes;
}

function u64Message(request: number, value: bigint, flags = 0): Uint8Array {
  return message(request, 8, (v) => encodeU64(v, HEADER_SIZE, value), flags);
}

function stateMessage(request: number, index: number, num: number): Uint8Array {
  return message(request, 8, (v) => encodeVringState(v, HEADER_SIZE, index, num));
}

const vhostMessages: Seeds = {
  'get-features': message(Request.GET_FEATURES, 0),
  'set-features': u64Message(Request.SET_FEATURES, (1n << 32n) | (1n << 30n)),
  'set-protocol-features': u64Message(Request.SET_PROTOCOL_FEATURES, VHOST_USER_PROTOCOL_F_REPLY_ACK | VHOST_USER_PROTOCOL_F_MQ),
  'set-mem-table': message(Request.SET_MEM_TABLE, 40, (v) => encodeMemoryTable(v, HEADER_SIZE, [REGION])),
  'add-mem-reg': message(Request.ADD_MEM_REG, 40, (v) => encodeSingleMemoryRegion(v, HEADER_SIZE, REGION)),
  'set-vring-num': stateMessage(Request.SET_VRING_NUM, 0, 256),
  'set-vring-addr': message(Request.SET_VRING_ADDR, 40, (v) =>
    encodeVringAddress(v, HEADER_SIZE, { index: 0, flags: 0, descriptorUserAddress: 0x7f0000000000n, usedUserAddress: 0x7f0000002000n, availableUserAddress: 0x7f0000001000n, logGuestAddress: 0n }),
  ),
  'set-vring-kick': u64Message(Request.SET_VRING_KICK, vringFdRequestValue(0, false)),
  'set-vring-call-nofd': u64Message(Request.SET_VRING_CALL, vringFdRequestValue(1, true)),
  'net-set-mtu': u64Message(Request.NET_SET_MTU, 1500n),
  'send-rarp': u64Message(Request.SEND_RARP, 0x563412005452n),
};

/** A server-target segment: control byte (fd count low nibble, first pool fd high nibble), u16 length, bytes. */
function segment(bytes: Uint8Array, fdCount = 0, firstFd = 0): Uint8Array {
  const out = new Uint8Array(3 + bytes.length);
  out[0] = (firstFd << 4) | fdCount;
  out[1] = bytes.length & 0xff;
  out[2] = bytes.length >> 8;
  out.set(bytes, 3);
  return out;
}

const MEMFD = 2;
const NEED_REPLY = 0x8;

const handshake = concat(
  segment(message(Request.GET_FEATURES, 0)),
  segment(message(Request.GET_PROTOCOL_FEATURES, 0)),
  segment(u64Message(Request.SET_PROTOCOL_FEATURES, VHOST_USER_PROTOCOL_F_REPLY_ACK | VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS)),
  segment(u64Message(Request.SET_FEATURES, (1n << 32n) | (1n << 30n))),
  segment(message(Request.SET_OWNER, 0)),
  segment(message(Request.SET_MEM_TABLE, 40, (v) => encodeMemoryTable(v, HEADER_SIZE, [REGION]), NEED_REPLY), 1, MEMFD),
  segment(stateMessage(Request.SET_VRING_NUM, 0, 256)),
  segment(vhostMessages['set-vring-addr']),
  segment(stateMessage(Request.SET_VRING_BASE, 0, 0)),
  segment(u64Message(Request.SET_VRING_KICK, vringFdRequestValue(0, false)), 1, 0),
  segment(u64Message(Request.SET_VRING_CALL, vringFdRequestValue(0, false)), 1, 1),
  segment(stateMessage(Request.SET_VRING_ENABLE, 0, 1)),
  segment(message(Request.ADD_MEM_REG, 40, (v) => encodeSingleMemoryRegion(v, HEADER_SIZE, { ...REGION, guestAddress: 0x100000n }), NEED_REPLY), 1, MEMFD),
  segment(stateMessage(Request.GET_VRING_BASE, 0, 0)),
);

/** Split-ring input: size exponent, feature flags, descriptor table, available ring. */
function ringSeed(indirect: boolean): Uint8Array {
  const size = 8;
  const table = new Uint8Array(size * 16);
  const t = new DataView(table.buffer);
  const desc = (i: number, addr: number, length: number, flags: number, next: number): void => {
    t.setUint32(i * 16, addr, true);
    t.setUint32(i * 16 + 8, length, true);
    t.setUint16(i * 16 + 12, flags, true);
    t.setUint16(i * 16 + 14, next, true);
  };
  desc(0, 0x4000, 12, 1, 1); // readable, NEXT
  desc(1, 0x5000, 1514, 2, 0); // writable
  desc(2, indirect ? 0x3000 : 0x6000, indirect ? 32 : 64, indirect ? 4 : 0, 0);
  const avail = new Uint8Array(4 + 2 * size + 2);
  const a = new DataView(avail.buffer);
  a.setUint16(2, 2, true); // idx: two chains
  a.setUint16(4, 0, true);
  a.setUint16(6, 2, true);
  return concat(Uint8Array.of(3, indirect ? 1 : 0), table, avail, Uint8Array.of(1, 2, 0x10, 3, 0));
}

/** A frame-target input: mode byte, u16 body length, body, then no cuts, no time step. */
function frameInput(mode: number, body: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(mode, body.length & 0xff, body.length >> 8), body, Uint8Array.of(0, 0, 0));
}

function tcpSyn(): Uint8Array {
  const t = new Uint8Array(20);
  setBe16(t, 0, 40000);
  setBe16(t, 2, 80);
  t[4] = 0x12;
  t[12] = 0x50;
  t[13] = 0x02;
  setBe16(t, 14, 65535);
  return t;
}

function udpBody(srcPort: number, dstPort: number, data: Uint8Array): Uint8Array {
  const d = new Uint8Array(8 + data.length);
  setBe16(d, 0, srcPort);
  setBe16(d, 2, dstPort);
  d.set(data, 8);
  return d;
}

function dhcpDiscover(): Uint8Array {
  const m = new Uint8Array(240 + 8);
  m[0] = 1; // BOOTREQUEST
  m[1] = 1;
  m[2] = 6;
  m[4] = 0x12;
  m.set(GUEST_MAC, 28);
  m.set([0x63, 0x82, 0x53, 0x63], 236);
  m.set([53, 1, 1, 55, 2, 1, 3, 255], 240);
  return m;
}

function dhcpv6Solicit(): Uint8Array {
  const duid = [0, 3, 0, 1, ...GUEST_MAC];
  return Uint8Array.from([1, 0x12, 0x34, 0x56, 0, 1, 0, duid.length, ...duid, 0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 2, 0, 23]);
}

/** NDP bodies after type and code (checksum + message), with a source link-layer option. */
const ndpRs = Uint8Array.from([0, 0, 0, 0, 0, 0, 1, 1, ...GUEST_MAC]);
const ndpNs = Uint8Array.from([0, 0, 0, 0, 0, 0, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, ...GUEST_MAC]);

const controlRequests: ControlRequest[] = [
  { id: 1, command: { kind: 'listFlows', protocol: null } },
  { id: 2, command: { kind: 'listFlows', protocol: 'tcp' } },
  { id: 3, command: { kind: 'getStats' } },
  { id: 4, command: { kind: 'addForward', protocol: 'tcp', spec: '8080:80' } },
  { id: 5, command: { kind: 'removeForward', protocol: 'udp', spec: '5353' } },
  { id: 6, command: { kind: 'listForwards' } },
  { id: 7, command: { kind: 'closeFlow', id: 42 } },
  { id: 8, command: { kind: 'setLogLevel', level: 'debug' } },
];

/** A control-api input: the framed request as one chunk of 1 + 64*n bytes (n from the first byte, the second 0). */
function controlInput(request: ControlRequest): Uint8Array {
  const framed = frame(encodeRequest(request));
  return concat(Uint8Array.of(Math.ceil((framed.length - 1) / 64), 0), framed);
}

export function seedInputs(): Record<string, Seeds> {
  const v6Echo = icmpEcho(128, 7, 1, Uint8Array.of(1, 2, 3));
  return {
    'vhost-user-protocol': vhostMessages,
    'vhost-user-server': { handshake, 'one-message': segment(message(Request.GET_FEATURES, 0)) },
    'split-ring': { direct: ringSeed(false), indirect: ringSeed(true) },
    'stack-frame': {
      'tcp4-syn': frameInput(1 | (0 << 2), tcpSyn()),
      'udp4-datagram': frameInput(1 | (1 << 2), udpBody(40000, 53, Uint8Array.of(1, 2, 3, 4))),
      'icmp4-echo-gateway': frameInput(1 | (2 << 2) | 0x20, icmpEcho(8, 7, 1, Uint8Array.of(1, 2, 3))),
      'tcp6-syn': frameInput(2 | (0 << 2), tcpSyn()),
      'udp6-datagram': frameInput(2 | (1 << 2), udpBody(40000, 53, Uint8Array.of(1, 2, 3, 4))),
      'icmp6-echo': frameInput(2 | (3 << 2), v6Echo),
      'arp-raw': frameInput(0, concat(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), GUEST_MAC, Uint8Array.of(0x08, 0x06),
        arpPacket(1, GUEST_MAC, GUEST_V4, new Uint8Array(6), GATEWAY_V4))),
      'raw-to-us': frameInput(0, concat(OUR_MAC, GUEST_MAC, Uint8Array.of(0x08, 0x00), new Uint8Array(20))),
    },
    'l2-control': {
      'dhcp-discover': frameInput(0, dhcpDiscover()),
      'dhcpv6-solicit': frameInput(1, dhcpv6Solicit()),
      'ndp-rs': frameInput(2 | 0x80, ndpRs),
      'ndp-ns': frameInput(2 | (2 << 2), ndpNs),
      'arp-request': frameInput(3, arpPacket(1, GUEST_MAC, GUEST_V4, new Uint8Array(6), GATEWAY_V4)),
    },
    'control-api': Object.fromEntries(controlRequests.map((r) => [r.command.kind + '-' + r.id, controlInput(r)])),
  };
}
