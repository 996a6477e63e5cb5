import { expect } from 'chai';
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { formatIp, parseIp } from '../../../../src/stack/address';
import { chooseFamily, describeFamily } from '../../../../src/backend/host/host-discovery';
import {
  AF_INET,
  AF_INET6,
  type AddressInfo,
  IFA_F_DEPRECATED,
  IFA_F_TEMPORARY,
  IFA_F_TENTATIVE,
  type LinkInfo,
  type RouteInfo,
  type RtnetlinkSnapshot,
} from '../../../../src/backend/host/netlink';
import { REPO_ROOT } from '../../../support/paths';

const link = (index: number, name: string, flags = 0x41, mtu = 1500): LinkInfo => ({ index, name, flags, mtu, mac: null });
const addr = (index: number, text: string, prefixLength: number, flags = 0, scope = 0): AddressInfo => {
  const address = parseIp(text)!;
  return { family: address.length === 4 ? AF_INET : AF_INET6, index, prefixLength, scope, flags, address };
};
const defaultRoute = (oif: number, gateway: string, priority = 0, table = 254): RouteInfo => {
  const g = parseIp(gateway)!;
  return { family: g.length === 4 ? AF_INET : AF_INET6, dstLength: 0, table, type: 1, scope: 0, dst: null, gateway: g, oif, priority };
};

describe('host discovery (synthetic snapshots)', () => {
  const base: RtnetlinkSnapshot = {
    links: [link(1, 'lo', 0x49, 65536), link(2, 'eth0', 0x41, 1500), link(3, 'wlan0', 0x41, 9000)],
    addresses: [
      addr(1, '127.0.0.1', 8, 0, 254),
      addr(1, '::1', 128, 0, 254),
      addr(2, '192.0.2.1', 24),
      addr(3, '198.51.100.7', 25),
      addr(2, 'fe80::1', 64, 0, 253),
      addr(2, '2001:db8::99', 64, IFA_F_TEMPORARY),
      addr(2, '2001:db8::5', 64, IFA_F_TENTATIVE),
      addr(2, '2001:db8::7', 64, IFA_F_DEPRECATED),
      addr(2, '2001:db8::1', 64),
    ],
    routes: [defaultRoute(3, '198.51.100.1', 600), defaultRoute(2, '192.0.2.254', 100), defaultRoute(2, 'fe80::fe'), defaultRoute(2, '203.0.113.1', 0, 100)],
  };

  it('follows the default route with the lowest metric in the main table', () => {
    const v4 = chooseFamily(base, AF_INET)!;
    expect(v4.interfaceName).to.equal('eth0');
    expect(formatIp(v4.address)).to.equal('192.0.2.1');
    expect(v4.prefixLength).to.equal(24);
    expect(formatIp(v4.gateway!)).to.equal('192.0.2.254');
    expect(v4.mtu).to.equal(1500);
    expect(describeFamily('IPv4', v4)).to.equal('IPv4: eth0 192.0.2.1/24, gateway 192.0.2.254, mtu 1500');
  });

  it('picks a stable, settled global IPv6 address and keeps a link-local gateway', () => {
    const v6 = chooseFamily(base, AF_INET6)!;
    expect(formatIp(v6.address)).to.equal('2001:db8::1');
    expect(formatIp(v6.gateway!)).to.equal('fe80::fe');
  });

  it('honours -i, and falls back to the first interface with a global address without a default route', () => {
    const forced = chooseFamily(base, AF_INET, 'wlan0')!;
    expect(formatIp(forced.address)).to.equal('198.51.100.7');
    expect(formatIp(forced.gateway!)).to.equal('198.51.100.1');
    expect(chooseFamily(base, AF_INET, 'nonexistent0')).to.equal(null);
    const noRoutes = { ...base, routes: [] };
    const v4 = chooseFamily(noRoutes, AF_INET)!;
    expect(v4.interfaceName).to.equal('eth0');
    expect(v4.gateway).to.equal(null);
    expect(describeFamily('IPv4', v4)).to.contain('no default route');
  });

  it('returns null when a family has no usable address', () => {
    const onlyLoopback: RtnetlinkSnapshot = { links: [link(1, 'lo', 0x49)], addresses: [addr(1, '127.0.0.1', 8, 0, 254), addr(1, '::1', 128, 0, 254)], routes: [] };
    expect(chooseFamily(onlyLoopback, AF_INET)).to.equal(null);
    expect(chooseFamily(onlyLoopback, AF_INET6)).to.equal(null);
    expect(describeFamily('IPv6', null)).to.equal('IPv6: no usable address on the host');
    // Only tentative IPv6: nothing usable yet.
    const tentative: RtnetlinkSnapshot = { links: [link(2, 'eth0')], addresses: [addr(2, '2001:db8::1', 64, IFA_F_TENTATIVE)], routes: [defaultRoute(2, 'fe80::1')] };
    expect(chooseFamily(tentative, AF_INET6)).to.equal(null);
    // A down interface is not chosen by the fallback.
    const down: RtnetlinkSnapshot = { links: [link(2, 'eth0', 0)], addresses: [addr(2, '192.0.2.1', 24)], routes: [] };
    expect(chooseFamily(down, AF_INET)).to.equal(null);
  });
});

/** Namespaces need root; CI must run this (CI=true) rather than skip it. */
const mayCreateNamespaces = typeof process.getuid === 'function' && process.getuid() === 0 && spawnSync('ip', ['-V'], { stdio: 'ignore' }).status === 0;

describe('host discovery (real rtnetlink in a test namespace)', function () {
  this.timeout(30000);
  const ns = `ferry-hd-${process.pid}`;
  const root = REPO_ROOT;
  let scriptDir = '';

  before(function () {
    if (!mayCreateNamespaces) {
      if (process.env.CI === 'true') throw new Error('CI=true but namespaces cannot be created (need root and iproute2)');
      this.skip();
    }
    const ip = (...args: string[]): void => {
      execFileSync('ip', args, { stdio: 'pipe', timeout: 10000 });
    };
    spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10000 });
    ip('netns', 'add', ns);
    // Both veth ends live in the test namespace: nothing touches the machine's own network.
    ip('-n', ns, 'link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'peer0');
    ip('-n', ns, 'link', 'set', 'uplink0', 'mtu', '1400');
    ip('-n', ns, 'link', 'set', 'uplink0', 'up');
    ip('-n', ns, 'link', 'set', 'peer0', 'up');
    ip('-n', ns, 'addr', 'add', '192.0.2.1/24', 'dev', 'uplink0');
    ip('-n', ns, '-6', 'addr', 'add', '2001:db8::1/64', 'dev', 'uplink0', 'nodad');
    ip('-n', ns, 'route', 'add', 'default', 'via', '192.0.2.254', 'dev', 'uplink0');
    ip('-n', ns, '-6', 'route', 'add', 'default', 'via', '2001:db8::fe', 'dev', 'uplink0');
    scriptDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-hd-'));
  });

  after(() => {
    if (!mayCreateNamespaces) return;
    spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10000 });
    if (scriptDir !== '') fs.rmSync(scriptDir, { recursive: true, force: true });
  });

  it('finds the interface, addresses, gateways and MTU of both families', () => {
    const resolvConf = path.join(scriptDir, 'resolv.conf');
    fs.writeFileSync(resolvConf, 'nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example.test\n');
    const script = path.join(scriptDir, 'discover.js');
    fs.writeFileSync(
      script,
      `const { native } = require(${JSON.stringify(path.join(root, 'dist/src/sys/native'))});
const { discoverHost } = require(${JSON.stringify(path.join(root, 'dist/src/backend/host/host-discovery'))});
const { formatIp } = require(${JSON.stringify(path.join(root, 'dist/src/stack/address'))});
const host = discoverHost(native, { resolvConfPath: ${JSON.stringify(resolvConf)}, timeoutMs: 3000 });
const family = (f) => f && { ...f, address: formatIp(f.address), gateway: f.gateway && formatIp(f.gateway) };
process.stdout.write(JSON.stringify({ ipv4: family(host.ipv4), ipv6: family(host.ipv6), nameservers: host.nameservers.map(formatIp), searchDomains: host.searchDomains }));
`,
    );
    const output = execFileSync('ip', ['netns', 'exec', ns, process.execPath, script], { timeout: 15000, encoding: 'utf8' });
    const result = JSON.parse(output);
    expect(result.ipv4).to.deep.include({ interfaceName: 'uplink0', address: '192.0.2.1', prefixLength: 24, gateway: '192.0.2.254', mtu: 1400 });
    expect(result.ipv6).to.deep.include({ interfaceName: 'uplink0', address: '2001:db8::1', prefixLength: 64, gateway: '2001:db8::fe', mtu: 1400 });
    expect(result.nameservers).to.deep.equal(['192.0.2.53', '2001:db8::53']);
    expect(result.searchDomains).to.deep.equal(['example.test']);
  });

  it('disables a family the namespace lacks', () => {
    execFileSync('ip', ['-n', ns, '-6', 'addr', 'del', '2001:db8::1/64', 'dev', 'uplink0'], { stdio: 'pipe', timeout: 10000 });
    const script = path.join(scriptDir, 'discover6.js');
    fs.writeFileSync(
      script,
      `const { native } = require(${JSON.stringify(path.join(root, 'dist/src/sys/native'))});
const { discoverHost } = require(${JSON.stringify(path.join(root, 'dist/src/backend/host/host-discovery'))});
const host = discoverHost(native, { resolvConfPath: '/nonexistent/resolv.conf', timeoutMs: 3000 });
process.stdout.write(JSON.stringify({ v4: host.ipv4 !== null, v6: host.ipv6 !== null }));
`,
    );
    const output = execFileSync('ip', ['netns', 'exec', ns, process.execPath, script], { timeout: 15000, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(JSON.parse(output)).to.deep.equal({ v4: true, v6: false });
  });
});
