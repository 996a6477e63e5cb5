/**
 * passt's own pasta test cases (its test/pasta suite) against `ferry pasta`,
 * started exactly as that suite starts pasta: attached by PID to a held,
 * unconfigured user+net namespace,
 *
 *   ferry pasta -f -t 10002 -T 10003 -u 10002 -U 10003 -P FILE PID
 *
 * (plus --dns with a documentation address, so the machine's resolvers are
 * never announced), on a host (the test namespace) whose IPv6 default route
 * goes via a link-local router address, as real hosts' do. The namespace
 * configures itself: ISC dhclient -6 right after ferry has brought the link
 * up, then dhclient -4, SLAAC from the router advertisement; then TCP and
 * UDP both ways, over the loopback splice (-t/-T, -u/-U) and through the
 * tap (the host's own address; the gateway addresses, IPv4 and link-local
 * IPv6 with a scope), both families; finally shutdown on SIGTERM.
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, killPid, run, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { commandAvailable, REPO_ROOT } from '../../support/guest';
import { FERRY_BIN } from '../../support/e2e/ferry-process';
import { dhclientEvent, dhclientScript, ECHO_TOOL_SOURCE, exchange, holdNamespace, inHeld, ROUTER_LINK_LOCAL, type Side, useLinkLocalIpv6Router, waitUntil } from '../callers/dropin-tools';

const TEST_DNS_V4 = '192.0.2.53';
const IFNAME = TEST_NET.uplinkName;

describe("e2e: passt's pasta cases against ferry pasta (attached by PID, link-local IPv6 router)", function () {
  this.timeout(60000);
  let net: TestNetwork | null = null;
  let holder: { child: ChildProcess; pid: number } | null = null;
  let ferry: ChildProcess | null = null;
  let ferryLog = '';
  let ferryExit: Promise<number | null> = Promise.resolve(null);
  let dir = '';
  let tool = '';
  let pidFile = '';

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js')) || !commandAvailable('dhclient')) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
    await useLinkLocalIpv6Router(net);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-cases-'));
    tool = path.join(dir, 'echo-tool.js');
    fs.writeFileSync(tool, ECHO_TOOL_SOURCE);
    fs.writeFileSync(path.join(dir, 'dhclient-script'), dhclientScript(dir), { mode: 0o755 });
    pidFile = path.join(dir, 'pasta.pid');
    holder = await holdNamespace(net);
    ferry = spawnIn(net.ns, [process.execPath, FERRY_BIN, 'pasta', '-f', '-t', '10002', '-T', '10003', '-u', '10002', '-U', '10003', '-P', pidFile, '--dns', TEST_DNS_V4, String(holder.pid)]);
    ferry.stdout?.setEncoding('utf8').on('data', (d: string) => (ferryLog += d));
    ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (ferryLog += d));
    const child = ferry;
    ferryExit = new Promise((resolve) => child.once('close', (code) => resolve(code)));
    // The suite waits for the PID file: ferry writes it once the tap and the forwards are served.
    const ready = await waitUntil(() => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim() !== '', 15000);
    if (!ready) throw new Error(`ferry pasta wrote no PID file:\n${ferryLog}`);
  });

  after(async () => {
    // dhclient -1 stays on in the background once bound (to renew): end it by the PID it wrote.
    for (const family of ['-4', '-6']) {
      const file = path.join(dir, `pid${family}`);
      if (dir !== '' && fs.existsSync(file)) killPid(Number(fs.readFileSync(file, 'utf8').trim()), 'SIGKILL');
    }
    if (ferry !== null) await stopChild(ferry, 2000);
    if (holder !== null) await stopChild(holder.child, 1000);
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  const held = (): Side => ({ kind: 'held', pid: holder!.pid });
  const host = (): Side => ({ kind: 'host', ns: net!.ns });
  const inNs = (argv: string[], timeoutMs = 20000) => run(inHeld(holder!.pid, argv), { timeoutMs });
  const dhclient = (family: '-4' | '-6') =>
    inNs(['dhclient', family, '-1', '-v', '-sf', path.join(dir, 'dhclient-script'), '-lf', path.join(dir, `lease${family}`), '-pf', path.join(dir, `pid${family}`), IFNAME], 30000);
  const diagnostics = (extra = ''): string => `${extra}\n--- ferry ---\n${ferryLog.split('\n').slice(-20).join('\n')}`;

  it('the PID file holds the pid of the ferry process serving the namespace', function () {
    expect(Number(fs.readFileSync(pidFile, 'utf8').trim())).to.equal(ferry?.pid);
  });

  it('DHCPv6: dhclient -6 started right after link up binds and is leased the host\'s address', async function () {
    const result = await dhclient('-6');
    const bound = dhclientEvent(dir, 'BOUND6');
    expect(result.code, diagnostics(result.stderr)).to.equal(0);
    expect(result.stderr).to.not.match(/Cannot assign requested address/);
    expect(bound?.new_ip6_address, diagnostics(result.stderr)).to.equal(TEST_NET.hostV6);
    const addresses = (await inNs(['ip', '-6', '-o', 'addr', 'show', 'dev', IFNAME])).stdout;
    expect(addresses).to.include(`inet6 ${TEST_NET.hostV6}/`);
  });

  it('DHCP: dhclient -4 is leased the host\'s address, prefix and gateway', async function () {
    const result = await dhclient('-4');
    const bound = dhclientEvent(dir, 'BOUND');
    expect(result.code, diagnostics(result.stderr)).to.equal(0);
    expect(bound?.new_ip_address).to.equal(TEST_NET.hostV4);
    expect(bound?.new_subnet_mask).to.equal('255.255.255.0');
    expect(bound?.new_routers).to.equal(TEST_NET.routerV4);
    expect(bound?.new_domain_name_servers).to.equal(TEST_DNS_V4);
    expect((await inNs(['ip', '-4', 'route', 'show', 'default'])).stdout).to.match(new RegExp(`^default via ${TEST_NET.routerV4.replace(/\./g, '\\.')} dev ${IFNAME}`));
  });

  it("SLAAC: an address in the host's /64 and the default route via the host's own link-local gateway", async function () {
    let routes = '';
    let addresses = '';
    await waitUntil(async () => {
      routes = (await inNs(['ip', '-6', 'route', 'show', 'default'])).stdout;
      addresses = (await inNs(['ip', '-6', '-o', 'addr', 'show', 'dev', IFNAME, 'scope', 'global'])).stdout;
      return routes.includes('via') && /inet6 2001:db8::[0-9a-f:]+\/64/.test(addresses) && !addresses.includes('tentative');
    }, 10000);
    expect(routes, diagnostics()).to.match(new RegExp(`^default via ${ROUTER_LINK_LOCAL} dev ${IFNAME} proto ra`));
    expect(addresses, diagnostics()).to.match(/inet6 2001:db8::[0-9a-f:]+\/64 scope global dynamic/);
  });

  /** The matrix: [name, protocol, server side+bind+port, client side+target, peer the server must see (null: any)]. */
  const cases: Array<[string, 'tcp' | 'udp', () => Side, string, number, () => Side, string, string | null]> = [];
  for (const protocol of ['tcp', 'udp'] as const) {
    cases.push(
      [`${protocol}/IPv4: host to ns over the loopback splice`, protocol, held, '0.0.0.0', 10002, host, '127.0.0.1', null],
      [`${protocol}/IPv4: host to ns through the tap (the host's address)`, protocol, held, '0.0.0.0', 10002, host, TEST_NET.hostV4, TEST_NET.routerV4],
      [`${protocol}/IPv4: ns to host over the loopback splice`, protocol, host, '127.0.0.1', 10003, held, '127.0.0.1', null],
      [`${protocol}/IPv4: ns to host via the gateway`, protocol, host, '127.0.0.1', 10003, held, TEST_NET.routerV4, '127.0.0.1'],
      [`${protocol}/IPv6: host to ns over the loopback splice`, protocol, held, '::', 10002, host, '::1', null],
      [`${protocol}/IPv6: host to ns through the tap (the host's address)`, protocol, held, '::', 10002, host, TEST_NET.hostV6, `${ROUTER_LINK_LOCAL}%${IFNAME}`],
      [`${protocol}/IPv6: ns to host over the loopback splice`, protocol, host, '::1', 10003, held, '::1', null],
      [`${protocol}/IPv6: ns to host via the link-local gateway with a scope`, protocol, host, '::1', 10003, held, `${ROUTER_LINK_LOCAL}%${IFNAME}`, '::1'],
    );
  }
  for (const [name, protocol, serverSide, bind, port, clientSide, target, peer] of cases) {
    it(name, async function () {
      const message = `${protocol}-${port}-${target}`;
      const result = await exchange(tool, protocol, { side: serverSide(), bind, port }, { side: clientSide(), target }, message);
      expect(result.reply, diagnostics(result.details)).to.equal(`echo:${message}`);
      if (peer !== null) expect(result.peer, diagnostics(result.details)).to.equal(peer);
    });
  }

  it('SIGTERM: ferry exits 0 and removes its PID file', async function () {
    expect(killPid(ferry?.pid, 'SIGTERM')).to.equal(true);
    const code = await Promise.race([ferryExit, new Promise<string>((resolve) => setTimeout(() => resolve('still running after 10 s'), 10000))]);
    expect(code, diagnostics()).to.equal(0);
    expect(fs.existsSync(pidFile)).to.equal(false);
  });
});
