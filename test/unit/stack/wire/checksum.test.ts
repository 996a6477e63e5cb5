import { expect } from 'chai';
import {
  be16,
  finishChecksum,
  foldSum,
  internetChecksum,
  pseudoHeaderSumIpv4,
  pseudoHeaderSumIpv6,
  setBe16,
  sumBytes,
  sumSegments,
  updateChecksum16,
} from '../../../../src/stack/wire/checksum';
import { CAPTURED, hex, segmentsOf } from '../../../support/fakes/stack-fakes';

describe('wire/checksum', () => {
  it('matches the RFC 1071 section 3 example', () => {
    const bytes = Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    expect(sumBytes(bytes, 0, 8)).to.equal(0x2ddf0);
    expect(foldSum(0x2ddf0)).to.equal(0xddf2);
    expect(internetChecksum(bytes, 0, 8)).to.equal(0x220d);
  });

  it('pads an odd trailing byte with zero', () => {
    const bytes = Uint8Array.from([0x12, 0x34, 0x56]);
    expect(sumBytes(bytes, 0, 3)).to.equal(0x1234 + 0x5600);
  });

  it('verifies captured IPv4 header checksums (sum over header is zero)', () => {
    for (const frame of [CAPTURED.udp4, CAPTURED.icmpEchoRequest, CAPTURED.tcpSyn]) {
      const f = hex(frame);
      expect(internetChecksum(f, 14, 20)).to.equal(0);
      const copy = f.slice(14, 34);
      setBe16(copy, 10, 0);
      expect(internetChecksum(copy, 0, 20)).to.equal(be16(f, 24));
    }
  });

  it('recomputes a captured UDP/IPv4 checksum with the pseudo-header', () => {
    const f = hex(CAPTURED.udp4);
    const udpLength = be16(f, 38);
    const pseudo = pseudoHeaderSumIpv4(f, 26, f, 30, 17, udpLength);
    expect(internetChecksum(f, 34, udpLength, pseudo)).to.equal(0);
    const copy = f.slice(34, 34 + udpLength);
    setBe16(copy, 6, 0);
    expect(internetChecksum(copy, 0, udpLength, pseudo)).to.equal(0x62e6);
  });

  it('recomputes a captured TCP SYN checksum', () => {
    const f = hex(CAPTURED.tcpSyn);
    const length = f.length - 34;
    expect(internetChecksum(f, 34, length, pseudoHeaderSumIpv4(f, 26, f, 30, 6, length))).to.equal(0);
  });

  it('verifies a captured ICMPv6 message and its odd-length inner UDP/IPv6 datagram', () => {
    const f = hex(CAPTURED.icmpv6PortUnreachable);
    const icmpLength = be16(f, 18);
    expect(icmpLength).to.equal(59);
    expect(internetChecksum(f, 54, icmpLength, pseudoHeaderSumIpv6(f, 22, f, 38, 58, icmpLength))).to.equal(0);
    // The quoted datagram: IPv6 header at 62, UDP at 102, 11 bytes ("odd").
    expect(internetChecksum(f, 102, 11, pseudoHeaderSumIpv6(f, 70, f, 86, 17, 11))).to.equal(0);
  });

  it('sums a SegmentList the same wherever the segments are cut (odd cuts included)', () => {
    const f = hex(CAPTURED.icmpv6PortUnreachable);
    const whole = foldSum(sumBytes(f, 5, f.length - 5));
    for (const cuts of [[], [6], [7, 8, 9], [13, 14, 50, 51, 52], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 111]]) {
      expect(foldSum(sumSegments(segmentsOf(f, cuts), 5, f.length - 5)), `cuts ${cuts}`).to.equal(whole);
    }
    expect(foldSum(sumSegments(segmentsOf(f, [30, 31]), 31, 10))).to.equal(foldSum(sumBytes(f, 31, 10)));
  });

  it('updates a checksum incrementally like a full recomputation (RFC 1624)', () => {
    const f = hex(CAPTURED.icmpEchoRequest);
    const icmp = f.slice(34);
    const old = be16(icmp, 4);
    for (const next of [0, 1, 0x1234, 0xffff, old]) {
      const updated = updateChecksum16(be16(icmp, 2), be16(icmp, 4), next);
      const copy = icmp.slice();
      setBe16(copy, 4, next);
      setBe16(copy, 2, 0);
      const full = internetChecksum(copy, 0, copy.length);
      // 0x0000 and 0xffff are the same one's-complement value.
      expect(updated === full || updated + full === 0xffff, `id ${next}`).to.equal(true);
    }
  });

  it('finishChecksum of an all-ones sum is zero', () => {
    expect(finishChecksum(0xffff)).to.equal(0);
    expect(finishChecksum(0)).to.equal(0xffff);
  });
});
