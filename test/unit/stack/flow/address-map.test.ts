import { expect } from 'chai';
import { guestVisibleSource, mapDestination } from '../../../../src/stack/flow/address-map';
import { parseIp } from '../../../../src/stack/address';
import type { StackConfig } from '../../../../src/stack/config';
import { sockaddrPort } from '../../../../src/sys/sockaddr';
import { testConfig } from '../../../support/fakes/stack-fakes';

const ip = (text: string): Uint8Array => parseIp(text)!;
const LOOPBACK6 = '00000000000000000000000000000001';

/** The address of an IPv6 sockaddr as hex, with its port; '' when unreachable. */
function destination(config: StackConfig, address: string, port: number): string {
  const out = new Uint8Array(28);
  const length = mapDestination(config, 6, ip(address), 0, port, out);
  return length === 0 ? '' : `${Buffer.from(out.subarray(8, 24)).toString('hex')}:${sockaddrPort(out)}`;
}

/** A configuration whose IPv6 gateway and router address are given. */
function config6(gateway: string, router: string, mapHostLoopback: string | null): StackConfig {
  const base = testConfig();
  return testConfig({
    ipv6: { ...base.ipv6!, gateway: ip(gateway), linkLocal: ip(router), mapHostLoopback: mapHostLoopback === null ? null : ip(mapHostLoopback) },
  });
}

describe('address-map: the IPv6 router', () => {
  it('a link-local gateway (the router the guest learnt) maps to the host\'s loopback like the IPv4 gateway', () => {
    const config = config6('fe80::1', 'fe80::1', 'fe80::1');
    expect(destination(config, 'fe80::1', 10003)).to.equal(`${LOOPBACK6}:10003`);
    // Another link-local address has no scope on the host.
    expect(destination(config, 'fe80::2', 10003)).to.equal('');
  });

  it('with a global gateway, ferry\'s own router address stands for the gateway', () => {
    const config = config6('2001:db8::fe', 'fe80::9855:9aff:fe55:9a55', '2001:db8::fe');
    expect(destination(config, 'fe80::9855:9aff:fe55:9a55', 22)).to.equal(`${LOOPBACK6}:22`);
    expect(destination(config, '2001:db8::fe', 22)).to.equal(`${LOOPBACK6}:22`);
  });

  it('--no-map-gw: the router is not the host; a link-local one is unreachable, a global one is itself', () => {
    expect(destination(config6('fe80::1', 'fe80::1', null), 'fe80::1', 80)).to.equal('');
    const global = config6('2001:db8::fe', 'fe80::9855:9aff:fe55:9a55', null);
    expect(destination(global, 'fe80::9855:9aff:fe55:9a55', 80)).to.equal(`${Buffer.from(ip('2001:db8::fe')).toString('hex')}:80`);
  });

  it('loopback peers are shown as the link-local gateway', () => {
    const config = config6('fe80::1', 'fe80::1', 'fe80::1');
    const peer = ip('::1');
    const shown = guestVisibleSource(config, 6, peer, 0, new Uint8Array(16));
    expect(shown === null ? null : Buffer.from(shown).toString('hex')).to.equal(Buffer.from(ip('fe80::1')).toString('hex'));
  });
});
