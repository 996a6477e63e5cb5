/**
 * The guest address TCP and UDP send inbound flows to
 * (src/stack/l4/host-socket.ts SeenGuestAddress): the configured one until
 * the guest sends from another usable address.
 */
import { expect } from 'chai';
import { SeenGuestAddress, outboundAddress, outboundInterface } from '../../../../src/stack/l4/host-socket';
import { testConfig } from '../../../support/fakes/stack-fakes';

describe('l4 host-socket: SeenGuestAddress', () => {
  it('starts from the configured addresses and follows the guest\'s sources', () => {
    const config = testConfig();
    const seen = new SeenGuestAddress(config);
    expect(Array.from(seen.of(4))).to.deep.equal(Array.from(config.ipv4!.address));
    expect(Array.from(seen.of(6))).to.deep.equal(Array.from(config.ipv6!.address));
    const packet = Uint8Array.from([9, 9, 192, 0, 2, 77]);
    seen.note(4, packet, 2);
    expect(Array.from(seen.of(4))).to.deep.equal([192, 0, 2, 77]);
    const v6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34]);
    seen.note(6, v6, 0);
    expect(Array.from(seen.of(6))).to.deep.equal(Array.from(v6));
  });

  it('ignores unspecified, IPv6 link-local and multicast sources', () => {
    const seen = new SeenGuestAddress(testConfig());
    const before4 = Array.from(seen.of(4));
    const before6 = Array.from(seen.of(6));
    seen.note(4, new Uint8Array(4), 0);
    seen.note(6, Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 0);
    seen.note(6, Uint8Array.from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 0);
    seen.note(6, new Uint8Array(16), 0);
    expect(Array.from(seen.of(4))).to.deep.equal(before4);
    expect(Array.from(seen.of(6))).to.deep.equal(before6);
  });
});

describe('l4 host-socket: outbound interface and address per family', () => {
  it('--outbound-if4/6 apply to their family only; without them the shared interface applies to both', () => {
    expect([outboundInterface(testConfig({ interfaceName: 'eth1' }), 4), outboundInterface(testConfig({ interfaceName: 'eth1' }), 6)]).to.deep.equal(['eth1', 'eth1']);
    const split = testConfig({ interfaceName: 'eth1', outboundIf4: 'eth1', outboundIf6: null });
    expect([outboundInterface(split, 4), outboundInterface(split, 6)]).to.deep.equal(['eth1', null]);
    const both = testConfig({ interfaceName: 'eth1', outboundIf4: 'eth1', outboundIf6: 'eth2' });
    expect([outboundInterface(both, 4), outboundInterface(both, 6)]).to.deep.equal(['eth1', 'eth2']);
  });

  it('-o gives one source address per family, none when absent', () => {
    const v4 = Uint8Array.of(192, 0, 2, 9);
    const config = testConfig({ outbound4: v4 });
    expect(outboundAddress(config, 4)).to.equal(v4);
    expect(outboundAddress(config, 6)).to.equal(null);
    expect(outboundAddress(testConfig(), 4)).to.equal(null);
  });
});
