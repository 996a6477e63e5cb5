/**
 * icmp-errors.ts: parsing sock_extended_err control messages (as the
 * kernel lays them out on 64-bit Linux, truncated or mixed with others),
 * deciding which error the guest gets, and the frames built for it (type,
 * code, MTU field, checksums, the quote rebuilt from the flow).
 */
import { expect } from 'chai';
import { endianness } from 'os';
import { CounterBlock } from '../../../../src/sys/counters';
import { StackContext } from '../../../../src/stack/context';
import { ExtendedError, IcmpErrorPlan, QUOTED_PAYLOAD_LIMIT, type QuotedDatagram, parseExtendedError, planIcmpError, sendIcmpError } from '../../../../src/stack/icmp/errors';
import { finishChecksum, internetChecksum, pseudoHeaderSumIpv6, sumBytes } from '../../../../src/stack/wire/checksum';
import { FakeFramePort, GUEST_MAC, GUEST_V4, GUEST_V6, testConfig } from '../../../support/fakes/stack-fakes';

const LE = endianness() === 'LE';

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(v >>> 0);
  else b.writeUInt32BE(v >>> 0);
  return b;
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(v);
  else b.writeUInt16BE(v);
  return b;
}

/** One cmsg: size_t len, int level, int type, data, padded to 8. */
function cmsg(level: number, type: number, data: Buffer): Buffer {
  const length = 16 + data.length;
  const len = Buffer.alloc(8);
  if (LE) len.writeUInt32LE(length, 0);
  else len.writeUInt32BE(length, 4);
  const padded = Buffer.alloc((length + 7) & ~7);
  Buffer.concat([len, u32(level), u32(type), data]).copy(padded);
  return padded;
}

/** struct sock_extended_err + offender sockaddr. */
function extendedErr(errno: number, origin: number, type: number, code: number, info: number, offender: Buffer | null): Buffer {
  const ee = Buffer.concat([u32(errno), Buffer.from([origin, type, code, 0]), u32(info), u32(0)]);
  return offender === null ? ee : Buffer.concat([ee, offender]);
}

function sockaddrIn(addr: number[]): Buffer {
  return Buffer.concat([u16(2), Buffer.from([0, 0]), Buffer.from(addr), Buffer.alloc(8)]);
}

function sockaddrIn6(addr: Buffer): Buffer {
  return Buffer.concat([u16(10), Buffer.alloc(6), addr, Buffer.alloc(4)]);
}

describe('icmp-errors: sock_extended_err parsing', () => {
  it('reads an IPv4 port unreachable with its offender', () => {
    const control = cmsg(0, 11, extendedErr(111, 2, 3, 3, 0, sockaddrIn([203, 0, 113, 9])));
    const e = new ExtendedError();
    expect(parseExtendedError(control, control.length, e)).to.equal(true);
    expect([e.errno, e.origin, e.type, e.code, e.info, e.offenderFamily]).to.deep.equal([111, 2, 3, 3, 0, 4]);
    expect([...e.offender.subarray(0, 4)]).to.deep.equal([203, 0, 113, 9]);
  });

  it('reads an IPv6 packet too big after another control message', () => {
    const offender = Buffer.from('20010db8000000000000000000000099', 'hex');
    const control = Buffer.concat([cmsg(41, 52, Buffer.alloc(20, 7)), cmsg(41, 25, extendedErr(90, 3, 2, 0, 1400, sockaddrIn6(offender)))]);
    const e = new ExtendedError();
    expect(parseExtendedError(control, control.length, e)).to.equal(true);
    expect([e.origin, e.type, e.info, e.offenderFamily]).to.deep.equal([3, 2, 1400, 6]);
    expect(Buffer.from(e.offender).equals(offender)).to.equal(true);
  });

  it('rejects truncated, overlong and foreign control messages without reading past the length', () => {
    const good = cmsg(0, 11, extendedErr(111, 2, 3, 3, 0, null));
    const e = new ExtendedError();
    expect(parseExtendedError(good, good.length - 8, e)).to.equal(false);
    const liar = Buffer.from(good);
    if (LE) liar.writeUInt32LE(4096, 0);
    else liar.writeUInt32BE(4096, 4);
    expect(parseExtendedError(liar, liar.length, e)).to.equal(false);
    const tiny = Buffer.from(good);
    if (LE) tiny.writeUInt32LE(3, 0);
    else tiny.writeUInt32BE(3, 4);
    expect(parseExtendedError(tiny, tiny.length, e)).to.equal(false);
    const other = cmsg(1, 29, Buffer.alloc(16));
    expect(parseExtendedError(other, other.length, e)).to.equal(false);
    // Without an offender address the error is still usable.
    expect(parseExtendedError(good, good.length, e)).to.equal(true);
    expect(e.offenderFamily).to.equal(0);
  });
});

describe('icmp-errors: which error the guest gets', () => {
  const e = new ExtendedError();
  const plan = new IcmpErrorPlan();
  const set = (origin: number, type: number, code: number, info = 0, errno = 0): ExtendedError => {
    Object.assign(e, { origin, type, code, info, errno });
    return e;
  };

  it('relays IPv4 unreachable and time exceeded, with the MTU for fragmentation needed', () => {
    expect(planIcmpError(4, set(2, 3, 3), plan)).to.equal(true);
    expect([plan.type, plan.code, plan.rest, plan.fromGateway]).to.deep.equal([3, 3, 0, false]);
    expect(planIcmpError(4, set(2, 3, 4, 1400), plan)).to.equal(true);
    expect(plan.rest).to.equal(1400);
    expect(planIcmpError(4, set(2, 11, 0), plan)).to.equal(true);
    expect(planIcmpError(4, set(2, 12, 0), plan)).to.equal(false); // parameter problem
    expect(planIcmpError(4, set(3, 1, 4), plan)).to.equal(false); // ICMPv6 origin on IPv4
  });

  it('relays ICMPv6 unreachable, packet too big (at least 1280) and time exceeded', () => {
    expect(planIcmpError(6, set(3, 1, 4), plan)).to.equal(true);
    expect([plan.type, plan.code]).to.deep.equal([1, 4]);
    expect(planIcmpError(6, set(3, 2, 0, 1000), plan)).to.equal(true);
    expect(plan.rest).to.equal(1280);
    expect(planIcmpError(6, set(3, 4, 0), plan)).to.equal(false);
  });

  it('turns a local EMSGSIZE into "too big" from the gateway, and ignores other local errors', () => {
    expect(planIcmpError(4, set(1, 0, 0, 1500, 90), plan)).to.equal(true);
    expect([plan.type, plan.code, plan.rest, plan.fromGateway]).to.deep.equal([3, 4, 1500, true]);
    expect(planIcmpError(6, set(1, 0, 0, 1500, 90), plan)).to.equal(true);
    expect([plan.type, plan.rest]).to.deep.equal([2, 1500]);
    expect(planIcmpError(4, set(1, 0, 0, 0, 111), plan)).to.equal(false);
  });
});

describe('icmp-errors: frames to the guest', () => {
  function context(): { ctx: StackContext; port: FakeFramePort } {
    const port = new FakeFramePort();
    const ctx = new StackContext({ config: testConfig({ guestMac: GUEST_MAC }), port, counters: new CounterBlock() });
    return { ctx, port };
  }
  const payload = Buffer.alloc(200, 0x61);

  it('IPv4 fragmentation needed: MTU in the low 16 bits, checksum, quote of IP + UDP + 64 payload bytes', () => {
    const { ctx, port } = context();
    const remote = Uint8Array.of(203, 0, 113, 9);
    const plan = Object.assign(new IcmpErrorPlan(), { type: 3, code: 4, rest: 1400 });
    const quoted: QuotedDatagram = { family: 4, guest: GUEST_V4, guestOffset: 0, guestPort: 40000, remote, remoteOffset: 0, remotePort: 53, payloadLength: 200, payload, payloadAvailable: 200 };
    expect(sendIcmpError(ctx, plan, Uint8Array.of(198, 51, 100, 1), quoted)).to.equal(true);
    const f = Buffer.from(port.frames[0]);
    expect(f.readUInt16BE(12)).to.equal(0x0800);
    expect(internetChecksum(f, 14, 20)).to.equal(0);
    expect([...f.subarray(26, 30)]).to.deep.equal([198, 51, 100, 1]);
    expect([...f.subarray(30, 34)]).to.deep.equal([...GUEST_V4]);
    const icmp = f.subarray(34);
    expect(icmp.length).to.equal(8 + 20 + 8 + QUOTED_PAYLOAD_LIMIT);
    expect(internetChecksum(icmp, 0, icmp.length)).to.equal(0);
    expect([icmp[0], icmp[1], icmp.readUInt16BE(4), icmp.readUInt16BE(6)]).to.deep.equal([3, 4, 0, 1400]);
    const inner = icmp.subarray(8);
    expect(inner.readUInt16BE(2)).to.equal(20 + 8 + 200); // the original datagram's length
    expect([...inner.subarray(12, 16)]).to.deep.equal([...GUEST_V4]);
    expect([...inner.subarray(16, 20)]).to.deep.equal([203, 0, 113, 9]);
    expect([inner.readUInt16BE(20), inner.readUInt16BE(22), inner.readUInt16BE(24)]).to.deep.equal([40000, 53, 208]);
    expect(inner.subarray(28).equals(payload.subarray(0, QUOTED_PAYLOAD_LIMIT))).to.equal(true);
  });

  it('IPv6 packet too big: 32-bit MTU, ICMPv6 checksum with the pseudo-header', () => {
    const { ctx, port } = context();
    const remote = Uint8Array.from(Buffer.from('20010db8000000000000000000000099', 'hex'));
    const plan = Object.assign(new IcmpErrorPlan(), { type: 2, code: 0, rest: 1400 });
    const quoted: QuotedDatagram = { family: 6, guest: GUEST_V6, guestOffset: 0, guestPort: 40000, remote, remoteOffset: 0, remotePort: 9, payloadLength: 5, payload, payloadAvailable: 5 };
    expect(sendIcmpError(ctx, plan, remote, quoted)).to.equal(true);
    const f = port.frames[0];
    const icmp = f.subarray(54);
    expect(icmp.length).to.equal(8 + 40 + 8 + 5);
    expect(finishChecksum(sumBytes(f, 54, icmp.length, pseudoHeaderSumIpv6(f, 22, f, 38, 58, icmp.length)))).to.equal(0);
    expect([icmp[0], icmp[1], Buffer.from(icmp).readUInt32BE(4)]).to.deep.equal([2, 0, 1400]);
    expect(Buffer.from(icmp.subarray(8 + 8, 8 + 24)).equals(Buffer.from(GUEST_V6))).to.equal(true);
  });

  it('returns false with nothing committed when the guest has no buffers', () => {
    const { ctx, port } = context();
    port.available = false;
    const plan = Object.assign(new IcmpErrorPlan(), { type: 3, code: 3 });
    const quoted: QuotedDatagram = { family: 4, guest: GUEST_V4, guestOffset: 0, guestPort: 1, remote: GUEST_V4, remoteOffset: 0, remotePort: 2, payloadLength: 0, payload, payloadAvailable: 0 };
    expect(sendIcmpError(ctx, plan, GUEST_V4, quoted)).to.equal(false);
    expect(port.frames).to.have.length(0);
  });
});
