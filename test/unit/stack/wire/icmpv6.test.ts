import { expect } from 'chai';
import { parseIpv6 } from '../../../../src/stack/address';
import { Icmpv6Error, Icmpv6View, icmpv6Checksum } from '../../../../src/stack/wire/icmpv6';

describe('wire/icmpv6', () => {
  const src = parseIpv6('fe80::1')!;
  const dst = parseIpv6('ff02::2')!;

  it('computes a checksum that verifies to zero, and catches corruption', () => {
    // Router Solicitation, no options.
    const msg = new Uint8Array([133, 0, 0, 0, 0, 0, 0, 0]);
    const view = new Icmpv6View().reset(msg, 0, msg.length);
    view.fillChecksum(src, 0, dst, 0);
    expect(view.checksum).to.not.equal(0);
    expect(icmpv6Checksum(src, 0, dst, 0, msg, 0, msg.length)).to.equal(0);
    const ip = new Uint8Array(32);
    ip.set(src, 0);
    ip.set(dst, 16);
    expect(view.validate(ip, 0, 16)).to.equal(Icmpv6Error.Ok);
    msg[5] ^= 1;
    expect(view.validate(ip, 0, 16)).to.equal(Icmpv6Error.BadChecksum);
  });

  it('matches a checksum computed by hand', () => {
    // Pseudo-header: fe80::1 + ff02::2 + length 8 + next header 58; message 0x8500 0 0 0.
    // Sum of words: fe80 + 0001 + ff02 + 0002 + 0008 + 003a + 8500 = 0x282c7 -> fold 0x82c9 -> ~ = 0x7d36.
    const msg = new Uint8Array([133, 0, 0, 0, 0, 0, 0, 0]);
    expect(icmpv6Checksum(src, 0, dst, 0, msg, 0, 8)).to.equal(0x7d36);
  });

  it('rejects truncated messages and clamps the view to the buffer', () => {
    const view = new Icmpv6View().reset(new Uint8Array(3), 0, 3);
    expect(view.validate(new Uint8Array(32), 0, 16)).to.equal(Icmpv6Error.Truncated);
    // A length beyond the buffer is clamped, not trusted.
    view.reset(new Uint8Array(10), 8, 100);
    expect(view.length).to.equal(2);
    expect(view.validate(new Uint8Array(32), 0, 16)).to.equal(Icmpv6Error.Truncated);
    view.reset(new Uint8Array(10), 20, 4);
    expect(view.length).to.equal(0);
  });
});
