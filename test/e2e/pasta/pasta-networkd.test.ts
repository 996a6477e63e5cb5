/**
 * systemd-networkd as the network manager of a namespace ferry pasta
 * serves: the namespace (net + mount, held by a sleeping process) is
 * attached by PID, `ferry pasta -f --dns ADDR -P FILE PID`, and networkd
 * runs there directly as a binary, configured by a .network file the test
 * writes: DHCP=yes, IPv6AcceptRA=yes, DHCPv6Client=always. It must get the
 * host's IPv4 address, prefix, gateway and resolver by DHCPv4, the host's
 * IPv6 address by DHCPv6, a SLAAC address and the default route via the
 * host's link-local router from the RA, and report the link configured and
 * routable; then TCP over both families reaches the test network.
 *
 * What networkd needs outside systemd, set up in the namespace's own mount
 * namespace: a tmpfs on /run (its state under /run/systemd/netif, owned by
 * the systemd-network user it drops to; the .network file under
 * /run/systemd/network), and a read-only sysfs of this network namespace,
 * which tells networkd that no udev will announce the links (otherwise
 * they stay "pending"). No D-Bus: networkd logs that and goes on.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, run, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { REPO_ROOT } from '../../support/guest';
import { FERRY_BIN } from '../../support/e2e/ferry-process';
import { ECHO_TOOL_SOURCE, exchange, ROUTER_LINK_LOCAL, type Side, useLinkLocalIpv6Router, waitUntil } from '../callers/dropin-tools';

const NETWORKD = '/lib/systemd/systemd-networkd';
const TEST_DNS_V4 = '192.0.2.53';
const IFNAME = TEST_NET.uplinkName;

const NETWORK_FILE = `[Match]
Name=${IFNAME}

[Network]
DHCP=yes
IPv6AcceptRA=yes

[IPv6AcceptRA]
DHCPv6Client=always
`;

/** Runs in the held namespace (net + mount): networkd's runtime directories, then networkd itself. */
function networkdScript(networkFile: string): string {
  return `set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t sysfs -o ro sysfs /sys
mkdir -p /run/systemd/network /run/systemd/netif/links /run/systemd/netif/leases /run/systemd/netif/lldp
chown -R systemd-network:systemd-network /run/systemd/netif
cp ${networkFile} /run/systemd/network/10-ferry-test.network
exec ${NETWORKD}
`;
}

/** networkd's state file of a link: KEY=VALUE lines. */
function parseState(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0 && !line.startsWith('#')) out[line.slice(0, at)] = line.slice(at + 1);
  }
  return out;
}

describe('e2e: systemd-networkd configures a namespace served by ferry pasta (DHCPv4, DHCPv6, SLAAC)', function () {
  this.timeout(90000);
  let net: TestNetwork | null = null;
  let holder: ChildProcess | null = null;
  let holderPid = 0;
  let ferry: ChildProcess | null = null;
  let networkd: ChildProcess | null = null;
  let ferryLog = '';
  let networkdLog = '';
  let dir = '';
  let tool = '';

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js')) || !fs.existsSync(NETWORKD)) this.skip();
    if ((await run(['getent', 'passwd', 'systemd-network'])).code !== 0) this.skip();
    net = await createTestNetwork();
    await useLinkLocalIpv6Router(net);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-networkd-'));
    tool = path.join(dir, 'echo-tool.js');
    fs.writeFileSync(tool, ECHO_TOOL_SOURCE);
    fs.writeFileSync(path.join(dir, 'test.network'), NETWORK_FILE);
    holder = spawnIn(net.ns, ['unshare', '--net', '--mount', '--propagation', 'private', 'sleep', '300']);
    holderPid = holder.pid as number;
    // `ip netns exec` and unshare exec in place: the PID is the holder's once it runs sleep.
    await waitUntil(() => fs.readFileSync(`/proc/${holderPid}/comm`, 'utf8').trim() === 'sleep', 5000);
    const pidFile = path.join(dir, 'pasta.pid');
    ferry = spawnIn(net.ns, [process.execPath, FERRY_BIN, 'pasta', '-f', '--dns', TEST_DNS_V4, '-P', pidFile, String(holderPid)]);
    ferry.stdout?.setEncoding('utf8').on('data', (d: string) => (ferryLog += d));
    ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (ferryLog += d));
    if (!(await waitUntil(() => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim() !== '', 15000))) throw new Error(`ferry pasta wrote no PID file:\n${ferryLog}`);
    networkd = spawn('nsenter', ['-t', String(holderPid), '-n', '-m', '--', 'sh', '-c', networkdScript(path.join(dir, 'test.network'))], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SYSTEMD_LOG_LEVEL: 'debug' } });
    networkd.stdout?.setEncoding('utf8').on('data', (d: string) => (networkdLog += d));
    networkd.stderr?.setEncoding('utf8').on('data', (d: string) => (networkdLog += d));
  });

  after(async () => {
    if (networkd !== null) await stopChild(networkd, 2000);
    if (ferry !== null) await stopChild(ferry, 2000);
    if (holder !== null) await stopChild(holder, 1000);
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  const inNs = (argv: string[]) => run(['nsenter', '-t', String(holderPid), '-n', '-m', '--', ...argv], { timeoutMs: 10000 });
  const diagnostics = (): string => `\n--- networkd ---\n${networkdLog.split('\n').filter((l) => /DHCP|NDISC|state|rror|ail/i.test(l)).slice(-25).join('\n')}\n--- ferry ---\n${ferryLog.split('\n').slice(-10).join('\n')}`;

  it('networkd reports the link configured and routable, with the resolver ferry announced', async function () {
    let state: Record<string, string> = {};
    const done = await waitUntil(async () => {
      const index = (await inNs(['cat', `/sys/class/net/${IFNAME}/ifindex`])).stdout.trim();
      const file = await inNs(['cat', `/run/systemd/netif/links/${index}`]);
      state = parseState(file.stdout);
      return state.ADMIN_STATE === 'configured' && state.OPER_STATE === 'routable' && (state.DNS ?? '').includes(TEST_DNS_V4);
    }, 40000);
    expect(done, `${JSON.stringify(state)}${diagnostics()}`).to.equal(true);
  });

  it("DHCPv4: the host's address and prefix, the default route via the host's gateway", async function () {
    const addresses = (await inNs(['ip', '-4', '-o', 'addr', 'show', 'dev', IFNAME])).stdout;
    expect(addresses, diagnostics()).to.include(`inet ${TEST_NET.hostV4}/${TEST_NET.prefixV4}`);
    const routes = (await inNs(['ip', '-4', 'route', 'show', 'default'])).stdout;
    expect(routes, diagnostics()).to.match(new RegExp(`^default via ${TEST_NET.routerV4.replace(/\./g, '\\.')} dev ${IFNAME} proto dhcp`));
  });

  it("DHCPv6: the host's IPv6 address as a /128 lease", async function () {
    const found = await waitUntil(async () => (await inNs(['ip', '-6', '-o', 'addr', 'show', 'dev', IFNAME])).stdout.includes(`inet6 ${TEST_NET.hostV6}/128`), 10000);
    expect(found, `${(await inNs(['ip', '-6', '-o', 'addr', 'show', 'dev', IFNAME])).stdout}${diagnostics()}`).to.equal(true);
  });

  it("RA: a SLAAC address in the host's /64 and the default route via the host's link-local router", async function () {
    const addresses = (await inNs(['ip', '-6', '-o', 'addr', 'show', 'dev', IFNAME, 'scope', 'global'])).stdout;
    expect(addresses, diagnostics()).to.match(/inet6 2001:db8::(?!1\/)[0-9a-f:]+\/64 scope global/);
    const routes = (await inNs(['ip', '-6', 'route', 'show', 'default'])).stdout;
    expect(routes, diagnostics()).to.match(new RegExp(`^default via ${ROUTER_LINK_LOCAL} dev ${IFNAME} proto ra`));
  });

  for (const [family, server] of [['IPv4', TEST_NET.serverV4], ['IPv6', TEST_NET.serverV6]] as const) {
    it(`TCP over ${family} from the namespace reaches the test network, from the host's address`, async function () {
      const n = net as TestNetwork;
      const side: Side = { kind: 'net', pid: holderPid };
      const r = await exchange(tool, 'tcp', { side: { kind: 'host', ns: n.peerNs }, bind: server, port: 10013 }, { side, target: server }, `networkd-${family}`);
      expect(r.reply, r.details).to.equal(`echo:networkd-${family}`);
      expect(r.peer, r.details).to.equal(family === 'IPv4' ? TEST_NET.hostV4 : TEST_NET.hostV6);
    });
  }
});
