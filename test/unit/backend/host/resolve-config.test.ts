import { expect } from 'chai';
import { formatIp, formatMac, parseIp, parseMac } from '../../../../src/stack/address';
import type { DiscoveredHost } from '../../../../src/backend/host/host-discovery';
import { type AddressOverrides, DEFAULT_MTU, defaultAddressOverrides, describeStackConfig, resolveStackConfig } from '../../../../src/backend/host/resolve-config';

const ip = (t: string): Uint8Array => parseIp(t)!;
const texts = (list: Uint8Array[]): string[] => list.map(formatIp);
const fmt = (a: Uint8Array | null): string | null => (a === null ? null : formatIp(a));

function host(nameservers: string[] = ['192.0.2.53', '2001:db8::53'], search: string[] = ['example.com']): DiscoveredHost {
  return {
    ipv4: { interfaceName: 'eth0', interfaceIndex: 2, address: ip('192.0.2.1'), prefixLength: 24, gateway: ip('192.0.2.254'), mtu: 1500 },
    ipv6: { interfaceName: 'eth0', interfaceIndex: 2, address: ip('2001:db8::1'), prefixLength: 64, gateway: ip('fe80::fe'), mtu: 1500 },
    nameservers: nameservers.map(ip),
    searchDomains: search,
  };
}

function resolve(overrides: Partial<AddressOverrides>, discovered: DiscoveredHost = host()) {
  const lines: string[] = [];
  const config = resolveStackConfig({ ...defaultAddressOverrides(), ...overrides }, discovered, (_level, line) => lines.push(line));
  return { config, lines };
}

describe('resolve-config', () => {
  it('gives the guest the host\'s addresses with passt\'s defaults', () => {
    const { config, lines } = resolve({});
    expect(lines).to.deep.equal([]);
    expect(formatMac(config.ourMac)).to.equal('9a:55:9a:55:9a:55');
    expect(config.mtu).to.equal(DEFAULT_MTU);
    expect(fmt(config.ipv4!.address)).to.equal('192.0.2.1');
    expect(config.ipv4!.prefixLength).to.equal(24);
    expect(fmt(config.ipv4!.gateway)).to.equal('192.0.2.254');
    expect(texts(config.ipv4!.dns)).to.deep.equal(['192.0.2.53']);
    expect(fmt(config.ipv4!.mapHostLoopback)).to.equal('192.0.2.254');
    expect(config.ipv4!.dnsForward).to.equal(null);
    expect(fmt(config.ipv4!.dnsHost)).to.equal('192.0.2.53');
    expect(fmt(config.ipv6!.address)).to.equal('2001:db8::1');
    expect(fmt(config.ipv6!.gateway)).to.equal('fe80::fe');
    // The host's gateway is link-local: ferry answers as that router (RA source, DHCPv6 server), as passt does.
    expect(fmt(config.ipv6!.linkLocal)).to.equal('fe80::fe');
    expect(texts(config.ipv6!.dns)).to.deep.equal(['2001:db8::53']);
    expect(config.searchDomains).to.deep.equal(['example.com']);
    expect([config.dhcp, config.dhcpv6, config.ndp, config.ra]).to.deep.equal([true, true, true, true]);
    expect(describeStackConfig(config).length).to.equal(2);
  });

  it('the router the guest learns: a link-local gateway itself, else ferry\'s own EUI-64 link-local', () => {
    const global = host();
    global.ipv6 = { ...global.ipv6!, gateway: ip('2001:db8::fe') };
    const fallback = resolve({}, global).config.ipv6!;
    expect(fmt(fallback.gateway)).to.equal('2001:db8::fe');
    expect(fmt(fallback.linkLocal)).to.equal('fe80::9855:9aff:fe55:9a55');
    expect(fmt(fallback.mapHostLoopback)).to.equal('2001:db8::fe');
    // -g with a link-local router is used the same way; --no-map-gw leaves the router unmapped.
    const given = resolve({ gateway6: ip('fe80::1'), noMapGw: true }).config.ipv6!;
    expect(fmt(given.linkLocal)).to.equal('fe80::1');
    expect(given.mapHostLoopback).to.equal(null);
    // A copy: the router address is not the gateway's array.
    expect(given.linkLocal).to.not.equal(given.gateway);
  });

  it('-H and --fqdn are passed on to the stack as given; absent, none', () => {
    expect(resolve({ hostname: 'vm1', fqdn: 'vm1.example.org' }).config).to.include({ hostname: 'vm1', fqdn: 'vm1.example.org' });
    expect(resolve({}).config).to.include({ hostname: null, fqdn: null });
  });

  it('applies -a, -n, -g, -M, -m and the service switches', () => {
    const { config } = resolve({
      address4: ip('198.51.100.7'),
      prefixLength4: 25,
      gateway4: ip('198.51.100.1'),
      address6: ip('2001:db8:1::7'),
      gateway6: ip('2001:db8:1::1'),
      macAddr: parseMac('02:00:00:00:00:01')!,
      mtu: 1500,
      dhcp: false,
      ndp: false,
      dhcpv6: false,
      ra: false,
      maxFlows: 100,
      outboundIf4: 'eth1',
    });
    expect(fmt(config.ipv4!.address)).to.equal('198.51.100.7');
    expect(config.ipv4!.prefixLength).to.equal(25);
    expect(fmt(config.ipv4!.gateway)).to.equal('198.51.100.1');
    expect(fmt(config.ipv4!.mapHostLoopback)).to.equal('198.51.100.1');
    expect(fmt(config.ipv6!.address)).to.equal('2001:db8:1::7');
    expect(fmt(config.ipv6!.linkLocal)).to.equal('fe80::ff:fe00:1');
    expect(formatMac(config.ourMac)).to.equal('02:00:00:00:00:01');
    expect(config.mtu).to.equal(1500);
    expect([config.dhcp, config.dhcpv6, config.ndp, config.ra]).to.deep.equal([false, false, false, false]);
    expect(config.maxFlows).to.equal(100);
    expect(config.interfaceName).to.equal('eth1');
    // --outbound-if4 binds IPv4 sockets only; -o carries one address per family.
    expect([config.outboundIf4, config.outboundIf6]).to.deep.equal(['eth1', null]);
    const outbound = resolve({ outbound4: ip('192.0.2.9'), outbound6: ip('2001:db8::9'), outboundIf6: 'eth2' }).config;
    expect([fmt(outbound.outbound4!), fmt(outbound.outbound6!), outbound.outboundIf4, outbound.outboundIf6]).to.deep.equal(['192.0.2.9', '2001:db8::9', null, 'eth2']);
    // -a for a different address does not inherit the host's prefix; classful then.
    expect(resolve({ address4: ip('10.1.2.3') }).config.ipv4!.prefixLength).to.equal(8);
    expect(resolve({ mtu: 0 }).config.mtu).to.equal(0);
  });

  it('-4 and -6 disable the other family with one line each', () => {
    const v4only = resolve({ ipv4Only: true });
    expect(v4only.config.ipv6).to.equal(null);
    expect(v4only.config.ipv4).to.not.equal(null);
    expect(v4only.lines).to.deep.equal(['IPv6: disabled (-4/--ipv4-only)']);
    const v6only = resolve({ ipv6Only: true });
    expect(v6only.config.ipv4).to.equal(null);
    expect(v6only.lines.length).to.equal(1);
  });

  it('disables a family the host lacks, unless the command line supplies it', () => {
    const noV6 = { ...host(), ipv6: null };
    let r = resolve({}, noV6);
    expect(r.config.ipv6).to.equal(null);
    expect(r.lines).to.have.length(1);
    expect(r.lines[0]).to.match(/^IPv6: no address/);
    r = resolve({ address6: ip('2001:db8::9'), gateway6: ip('2001:db8::fe') }, noV6);
    expect(fmt(r.config.ipv6!.address)).to.equal('2001:db8::9');
    expect(r.config.ipv6!.prefixLength).to.equal(64);
    const noGateway = { ...host(), ipv4: { ...host().ipv4!, gateway: null } };
    r = resolve({}, noGateway);
    expect(r.config.ipv4).to.equal(null);
    expect(r.lines[0]).to.match(/^IPv4: no default route/);
    const nothing: DiscoveredHost = { ipv4: null, ipv6: null, nameservers: [], searchDomains: [] };
    r = resolve({}, nothing);
    expect(r.config.ipv4).to.equal(null);
    expect(r.config.ipv6).to.equal(null);
    expect(r.lines).to.have.length(3);
  });

  it('points the guest at the gateway when the host resolver is on loopback, and forwards to it', () => {
    const { config } = resolve({}, host(['127.0.0.53', '::1']));
    expect(texts(config.ipv4!.dns)).to.deep.equal(['192.0.2.254']);
    expect(fmt(config.ipv4!.dnsForward)).to.equal('192.0.2.254');
    expect(fmt(config.ipv4!.dnsHost)).to.equal('127.0.0.53');
    expect(texts(config.ipv6!.dns)).to.deep.equal(['fe80::fe']);
    expect(fmt(config.ipv6!.dnsForward)).to.equal('fe80::fe');
    expect(fmt(config.ipv6!.dnsHost)).to.equal('::1');
  });

  it('uses --dns-forward for loopback resolvers and --dns-host as the target', () => {
    const { config } = resolve({ dnsForward4: ip('192.0.2.99'), dnsHost4: ip('127.0.0.1') }, host(['127.0.0.53', '198.51.100.53']));
    expect(texts(config.ipv4!.dns)).to.deep.equal(['192.0.2.99', '198.51.100.53']);
    expect(fmt(config.ipv4!.dnsForward)).to.equal('192.0.2.99');
    expect(fmt(config.ipv4!.dnsHost)).to.equal('127.0.0.1');
  });

  it('skips a loopback resolver that nothing can map (--no-map-gw, no --dns-forward)', () => {
    const { config, lines } = resolve({ noMapGw: true }, host(['127.0.0.53']));
    expect(config.ipv4!.dns).to.deep.equal([]);
    expect(config.ipv4!.mapHostLoopback).to.equal(null);
    expect(config.ipv4!.dnsForward).to.equal(null);
    expect(lines.some((l) => l.startsWith('DNS: no usable resolver'))).to.equal(true);
  });

  it('treats a resolver equal to the mapped address like a loopback one', () => {
    const { config } = resolve({}, host(['192.0.2.254']));
    expect(texts(config.ipv4!.dns)).to.deep.equal(['192.0.2.254']);
    expect(fmt(config.ipv4!.dnsForward)).to.equal('192.0.2.254');
  });

  it('honours -D, -D none, -S, --no-dhcp-dns and --no-dhcp-search', () => {
    let r = resolve({ dns: [ip('198.51.100.1'), ip('2001:db8::aa')], search: ['a.example', 'b.example'] }, host(['127.0.0.53']));
    expect(texts(r.config.ipv4!.dns)).to.deep.equal(['198.51.100.1']);
    expect(texts(r.config.ipv6!.dns)).to.deep.equal(['2001:db8::aa']);
    expect(r.config.ipv4!.dnsForward).to.equal(null);
    expect(r.config.searchDomains).to.deep.equal(['a.example', 'b.example']);
    r = resolve({ dns: 'none', search: 'none' });
    expect(r.config.ipv4!.dns).to.deep.equal([]);
    expect(r.config.ipv6!.dns).to.deep.equal([]);
    expect(r.config.searchDomains).to.deep.equal([]);
    expect(r.lines).to.deep.equal([]);
    r = resolve({ dhcpDns: false, dhcpSearch: false }, host(['127.0.0.53']));
    expect(r.config.ipv4!.dns).to.deep.equal([]);
    // Forwarding still works; only the announcement is gone.
    expect(fmt(r.config.ipv4!.dnsForward)).to.equal('192.0.2.254');
    expect(r.config.searchDomains).to.deep.equal([]);
  });

  it('applies --map-host-loopback, its none, and --map-guest-addr', () => {
    let r = resolve({ mapHostLoopback4: ip('192.0.2.2'), mapGuestAddr4: ip('192.0.2.3'), mapGuestAddr6: ip('2001:db8::3') });
    expect(fmt(r.config.ipv4!.mapHostLoopback)).to.equal('192.0.2.2');
    expect(fmt(r.config.ipv4!.mapGuestAddr)).to.equal('192.0.2.3');
    expect(fmt(r.config.ipv6!.mapGuestAddr)).to.equal('2001:db8::3');
    expect(fmt(r.config.ipv6!.mapHostLoopback)).to.equal('fe80::fe');
    r = resolve({ mapHostLoopback4: 'none', mapGuestAddr4: 'none' });
    expect(r.config.ipv4!.mapHostLoopback).to.equal(null);
    expect(r.config.ipv4!.mapGuestAddr).to.equal(null);
    r = resolve({ noMapGw: true });
    expect(r.config.ipv4!.mapHostLoopback).to.equal(null);
    expect(r.config.ipv6!.mapHostLoopback).to.equal(null);
  });

  it('caps announced resolvers and drops duplicates', () => {
    const { config } = resolve({}, host(['127.0.0.53', '127.0.0.1', '192.0.2.53', '192.0.2.54', '192.0.2.55']));
    expect(texts(config.ipv4!.dns)).to.deep.equal(['192.0.2.254', '192.0.2.53', '192.0.2.54']);
  });
});
