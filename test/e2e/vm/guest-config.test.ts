/**
 * The guest configures itself from ferry alone (passt's model): in
 * the test network (uplink 192.0.2.1/24 via 192.0.2.254, 2001:db8::1/64 via
 * 2001:db8::fe; the peer namespace holds the routers and 192.0.2.2 /
 * 2001:db8::2), one guest boot with default ferry options shows
 *   - DHCP: exactly 192.0.2.1/24, default route via 192.0.2.254, MTU 65520;
 *   - IPv6: the host's own 2001:db8::1 by DHCPv6, a SLAAC address in the
 *     host's /64, a default route from the router advertisement;
 *   - ICMP/ICMPv6 echo to the gateway and to a second address of the test
 *     network, 3 of 3 answered, over both families, also to the router the
 *     guest actually routes through (ferry's link-local), and 60 kB echoes
 *     (one frame each way at that MTU);
 *   - ARP answers for other addresses only, DHCPv6 without rapid commit,
 *     DHCP renewal (unicast) and release.
 */
import { expect } from 'chai';
import { TEST_NET } from '../../support/netns';
import { pingScript } from '../../support/guest';
import { bootGuestOnFerry, GuestOnFerry } from '../../support/e2e/guest-on-ferry';

/** Resolvers given to ferry so the guest is never told about the machine's real ones. */
const TEST_DNS = ['192.0.2.53', '2001:db8::53'];
/** ferry's IPv6 link-local address (from its default MAC 9a:55:9a:55:9a:55): the router in its advertisements. */
const FERRY_LINK_LOCAL = 'fe80::9855:9aff:fe55:9a55';
/** The guest's own view of its IPv6 gateway: ferry's link-local, scoped to eth0. */
const ROUTER_LINK_LOCAL_TARGET = `${FERRY_LINK_LOCAL}%eth0`;
const PING_TARGETS = [TEST_NET.routerV4, TEST_NET.serverV4, TEST_NET.routerV6, TEST_NET.serverV6, ROUTER_LINK_LOCAL_TARGET];
const BIG_PING_TARGETS = [TEST_NET.serverV4, TEST_NET.serverV6];
/** Echo payload close to the MTU of 65520: the request and the reply each travel as one frame. */
const BIG_PING_BYTES = 60000;

/**
 * A second udhcpc run by the guest: bound (1st lease line), renewed on
 * SIGUSR1 (2nd), released on SIGUSR2; each step awaited for at most 5 s.
 */
const DHCP_RENEW_RELEASE_SCRIPT = `
: >/tmp/udhcpc-renew.log
udhcpc -i eth0 -s /etc/udhcpc.script -f -t 3 -T 1 -A 1 -p /tmp/udhcpc.pid >>/tmp/udhcpc-renew.log 2>&1 &
wait_udhcpc() {
  i=0
  while n=$(grep -c "$1" /tmp/udhcpc-renew.log); [ "\${n:-0}" -lt "$2" ] && [ "$i" -lt 50 ]; do usleep 100000; i=$((i + 1)); done
}
wait_udhcpc 'lease of .* obtained' 1
i=0
while [ ! -s /tmp/udhcpc.pid ] && [ "$i" -lt 20 ]; do usleep 100000; i=$((i + 1)); done
kill -USR1 "$(cat /tmp/udhcpc.pid)"
wait_udhcpc 'lease of .* obtained' 2
kill -USR2 "$(cat /tmp/udhcpc.pid)"
wait_udhcpc 'entering released state' 1
kill "$(cat /tmp/udhcpc.pid)"
sed 's/^/FERRY-GUEST: udhcpc: /' /tmp/udhcpc-renew.log
`;

/** Guest-side report of what it ended up with, after DHCP, SLAAC and DHCPv6. */
const REPORT_SCRIPT = [
  'echo "FERRY-GUEST: mtu $(cat /sys/class/net/eth0/mtu)"',
  'ip -4 route show default | while read -r line; do echo "FERRY-GUEST: route4 $line"; done',
  'ip -4 -o addr show dev eth0 | wc -l | sed "s/^/FERRY-GUEST: inet count /"',
  pingScript(PING_TARGETS),
  // One 60 kB frame each way: big TX descriptors chains and mergeable RX buffers.
  pingScript(BIG_PING_TARGETS, 3, 0.5, BIG_PING_BYTES),
  // ARP: a duplicate-address probe for the guest's own address must go
  // unanswered (arping -D exits 0), any other address is ferry's.
  'arping -D -c 2 -w 3 -I eth0 192.0.2.1 >/dev/null 2>&1; echo "FERRY-GUEST: arp dad rc $?"',
  'arping -c 1 -w 2 -I eth0 192.0.2.77 2>&1 | sed -n "s/^Unicast reply from \\(\\S*\\) \\[\\(.*\\)\\].*/FERRY-GUEST: arp reply \\1 \\2/p"',
  // DHCPv6 the long way: SOLICIT without rapid commit, ADVERTISE, REQUEST, REPLY.
  'echo "FERRY-GUEST: dhcp6 no-rapid-commit $(dhcp6-client eth0 3 no-rapid-commit 2>&1)"',
  // DHCP renewal (unicast REQUEST to the server identifier) and release,
  // last: the release takes the address away.
  DHCP_RENEW_RELEASE_SCRIPT,
].join('\n');

describe('e2e: the guest configures itself from ferry (DHCP, NDP, DHCPv6, echo)', function () {
  this.timeout(120000);

  const run = new GuestOnFerry();

  before(async function () {
    await bootGuestOnFerry(this, run, {
      // --debug: ferry's log then says when the guest releases its lease.
      ferryArgs: ['--debug', ...TEST_DNS.flatMap((d) => ['--dns', d])],
      testScript: REPORT_SCRIPT,
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=5', 'ferry.dhcp6=1', 'ferry.dhcp6_tries=4'],
    });
  });
  after(() => run.cleanup());

  const diagnostics = (): string => run.diagnostics();
  const marker = (name: string): string | null => run.marker(name);

  it('the guest boots, runs its checks and powers off', function () {
    expect(run.bootError, diagnostics()).to.equal(null);
    expect(run.exitCode, diagnostics()).to.equal(0);
  });

  it('DHCP gives exactly the host address 192.0.2.1/24, the gateway 192.0.2.254 and MTU 65520', function () {
    const lease = run.guest?.lease() ?? null;
    expect(lease, diagnostics()).to.not.equal(null);
    expect(lease?.address).to.equal(TEST_NET.hostV4);
    expect(lease?.prefixLength).to.equal(TEST_NET.prefixV4);
    expect(lease?.routers).to.deep.equal([TEST_NET.routerV4]);
    expect(lease?.mtu).to.equal(65520);
    expect(lease?.dns).to.deep.equal([TEST_DNS[0]]);
    const v4 = run.guest?.addresses().filter((a) => a.family === 'inet') ?? [];
    expect(v4.map((a) => `${a.address}/${a.prefixLength}`), diagnostics()).to.deep.equal([`${TEST_NET.hostV4}/${TEST_NET.prefixV4}`]);
    expect(marker('inet count'), diagnostics()).to.equal('1');
  });

  it('the guest applies the lease: eth0 has MTU 65520 and one IPv4 default route via 192.0.2.254', function () {
    expect(marker('mtu'), diagnostics()).to.equal('65520');
    const routes = [...(run.guest?.vm.serialLines ?? '').matchAll(/FERRY-GUEST: route4 (.*?)\r?\n/g)].map((m) => m[1]);
    expect(routes, diagnostics()).to.have.length(1);
    expect(routes[0]).to.match(new RegExp(`^default via ${TEST_NET.routerV4.replace(/\./g, '\\.')} dev eth0`));
  });

  it("DHCPv6 gives the host's global address 2001:db8::1 and the configured resolver", function () {
    const lease = run.guest?.dhcp6Lease() ?? null;
    expect(lease, diagnostics()).to.not.equal(null);
    expect(lease?.address).to.equal(TEST_NET.hostV6);
    expect(lease?.dns).to.deep.equal([TEST_DNS[1]]);
    const global6 = run.guest?.addresses().filter((a) => a.family === 'inet6' && a.scope === 'global') ?? [];
    expect(global6.map((a) => a.address), diagnostics()).to.include(TEST_NET.hostV6);
    expect(run.guest?.vm.serialLines ?? '').to.not.match(/FERRY-GUEST: dhcp6 dadfailed/);
  });

  it("SLAAC configures an address in the host's /64 from the router advertisement", function () {
    const global6 = run.guest?.addresses().filter((a) => a.family === 'inet6' && a.scope === 'global' && a.prefixLength === 64) ?? [];
    expect(global6, diagnostics()).to.have.length(1);
    expect(global6[0].address.startsWith('2001:db8::')).to.equal(true);
  });

  it("the router advertisement gives an IPv6 default route via ferry's link-local address", function () {
    const routes = run.guest?.routes6() ?? [];
    expect(routes.some((r) => r.startsWith(`default via ${FERRY_LINK_LOCAL} dev eth0`)), diagnostics()).to.equal(true);
  });

  for (const target of PING_TARGETS) {
    it(`ping -c3 ${target} from the guest gets 3 replies`, function () {
      const result = run.guest?.pings().get(target);
      expect(result, diagnostics()).to.not.equal(undefined);
      expect(result, diagnostics()).to.deep.equal({ transmitted: 3, received: 3, exitCode: 0 });
    });
  }

  for (const target of BIG_PING_TARGETS) {
    it(`ping -c3 -s ${BIG_PING_BYTES} ${target} (one frame each way at MTU 65520) gets 3 replies`, function () {
      const result = run.guest?.pings().get(`${target}@${BIG_PING_BYTES}`);
      expect(result, diagnostics()).to.deep.equal({ transmitted: 3, received: 3, exitCode: 0 });
    });
  }

  it("ARP: ferry answers for another address with its own MAC, never for the guest's own address", function () {
    expect(marker('arp reply'), diagnostics()).to.equal('192.0.2.77 9a:55:9a:55:9a:55');
    expect(marker('arp dad rc'), diagnostics()).to.equal('0');
  });

  it('DHCPv6 without rapid commit (SOLICIT, ADVERTISE, REQUEST, REPLY) gives the same address', function () {
    expect(marker('dhcp6 no-rapid-commit'), diagnostics()).to.equal(`address ${TEST_NET.hostV6} after-request dns ${TEST_DNS[1]}`);
  });

  it('DHCP: a renewal unicast to the server identifier is acknowledged, and a release reaches ferry', function () {
    const lines = [...(run.guest?.vm.serialLines ?? '').matchAll(/FERRY-GUEST: udhcpc: (?:udhcpc: )?(.*?)\r?\n/g)].map((m) => m[1]);
    const renewAt = lines.findIndex((l) => l.startsWith(`sending renew to server ${TEST_NET.routerV4}`));
    expect(renewAt, diagnostics()).to.be.at.least(0);
    expect(lines.slice(renewAt + 1).some((l) => l.startsWith(`lease of ${TEST_NET.hostV4} obtained`)), diagnostics()).to.equal(true);
    expect(lines.some((l) => /entering released state/.test(l)), diagnostics()).to.equal(true);
    expect(run.ferry?.log() ?? '', diagnostics()).to.match(/dhcp: guest released its address/);
  });
});
