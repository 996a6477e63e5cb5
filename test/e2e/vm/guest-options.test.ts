/**
 * ferry's address options (passt's names and meanings) as a real guest sees
 * them, one boot per option set:
 *   - `-4 -a 192.0.2.77 -n 255.255.255.128 -g 192.0.2.100 -m 1400 -D -S`:
 *     the lease carries exactly those; the gateway, which exists nowhere in
 *     the test network, answers pings because ferry maps it to the host's
 *     loopback (passt's --map-host-loopback default); no IPv6 at all;
 *   - `-6 -a 2001:db8::77`: no IPv4 lease and IPv4 echo goes nowhere, while
 *     DHCPv6 hands out the -a address and IPv6 echo works.
 */
import { expect } from 'chai';
import { TEST_NET } from '../../support/netns';
import { pingScript } from '../../support/guest';
import { bootGuestOnFerry, GuestOnFerry } from '../../support/e2e/guest-on-ferry';

describe('e2e: ferry options seen by a real guest', function () {
  this.timeout(120000);

  describe('-4 -a 192.0.2.77 -n 255.255.255.128 -g 192.0.2.100 -m 1400 -D 192.0.2.99 -S "example.test lab.example.test"', function () {
    const run = new GuestOnFerry();
    /** The gateway given with -g: no namespace holds it, only ferry's loopback mapping can answer it. */
    const gateway = '192.0.2.100';
    const targets = [gateway, TEST_NET.serverV4];

    before(async function () {
      await bootGuestOnFerry(this, run, {
        ferryArgs: ['-4', '-a', '192.0.2.77', '-n', '255.255.255.128', '-g', gateway, '-m', '1400', '-D', '192.0.2.99', '-S', 'example.test lab.example.test'],
        testScript: [
          'echo "FERRY-GUEST: mtu $(cat /sys/class/net/eth0/mtu)"',
          'ip -4 route show default | while read -r line; do echo "FERRY-GUEST: route4 $line"; done',
          // With no router advertisement, give the guest the host's IPv6
          // address by hand: an echo that then gets no answer shows ferry
          // ignoring IPv6 (its neighbour solicitation goes unanswered).
          'ip -6 addr add 2001:db8::1/64 dev eth0 nodad',
          pingScript([...targets, TEST_NET.serverV6]),
        ].join('\n'),
        append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=3', 'ferry.dhcp6=1', 'ferry.dhcp6_tries=2'],
      });
    });
    after(() => run.cleanup());

    it('the guest boots, runs its checks and powers off', function () {
      expect(run.bootError, run.diagnostics()).to.equal(null);
      expect(run.exitCode, run.diagnostics()).to.equal(0);
    });

    it('the lease is 192.0.2.77/25 via 192.0.2.100 with MTU 1400, resolver 192.0.2.99 and both search domains', function () {
      expect(run.guest?.lease(), run.diagnostics()).to.deep.equal({
        address: '192.0.2.77',
        prefixLength: 25,
        routers: [gateway],
        mtu: 1400,
        dns: ['192.0.2.99'],
        search: ['example.test', 'lab.example.test'],
      });
    });

    it('the guest runs eth0 at MTU 1400 with its default route via 192.0.2.100', function () {
      expect(run.marker('mtu'), run.diagnostics()).to.equal('1400');
      expect(run.marker('route4'), run.diagnostics()).to.match(/^default via 192\.0\.2\.100 dev eth0/);
    });

    for (const target of targets) {
      it(`ping -c3 ${target} gets 3 replies`, function () {
        expect(run.guest?.pings().get(target), run.diagnostics()).to.deep.equal({ transmitted: 3, received: 3, exitCode: 0 });
      });
    }

    it('-4: no router advertisement (no SLAAC address, no IPv6 default route), no DHCPv6 lease', function () {
      const global6 = run.guest?.addresses().filter((a) => a.family === 'inet6' && a.scope === 'global') ?? [];
      expect(global6, run.diagnostics()).to.deep.equal([]);
      expect(run.guest?.routes6(), run.diagnostics()).to.deep.equal([]);
      expect(run.guest?.dhcp6Lease(), run.diagnostics()).to.equal(null);
      expect(run.guest?.vm.serialLines ?? '', run.diagnostics()).to.match(/FERRY-GUEST: dhcp6 failed/);
    });

    it('-4: IPv6 echo from a hand-set 2001:db8::1/64 gets no reply', function () {
      const result = run.guest?.pings().get(TEST_NET.serverV6);
      expect(result, run.diagnostics()).to.not.equal(undefined);
      expect(result?.received, run.diagnostics()).to.equal(0);
    });
  });

  describe('-6 -a 2001:db8::77', function () {
    const run = new GuestOnFerry();
    const v6Targets = [TEST_NET.routerV6, TEST_NET.serverV6];

    before(async function () {
      await bootGuestOnFerry(this, run, {
        ferryArgs: ['-6', '-a', '2001:db8::77', '-D', '2001:db8::53'],
        testScript: [
          // With no lease, give the guest the host's IPv4 address by hand:
          // an echo that then gets no answer shows ferry ignoring IPv4.
          'ip addr add 192.0.2.1/24 dev eth0',
          pingScript([...v6Targets, TEST_NET.serverV4]),
        ].join('\n'),
        append: ['ferry.dhcp_tries=2', 'ferry.ipv6_wait=5', 'ferry.dhcp6=1', 'ferry.dhcp6_tries=4'],
      });
    });
    after(() => run.cleanup());

    it('the guest boots, runs its checks and powers off', function () {
      expect(run.bootError, run.diagnostics()).to.equal(null);
      expect(run.exitCode, run.diagnostics()).to.equal(0);
    });

    it('DHCP gives no IPv4 lease', function () {
      expect(run.guest?.lease(), run.diagnostics()).to.equal(null);
      expect(run.guest?.vm.serialLines ?? '', run.diagnostics()).to.match(/FERRY-GUEST: dhcp (failed|leasefail)/);
      expect(run.guest?.addresses().filter((a) => a.family === 'inet'), run.diagnostics()).to.deep.equal([]);
    });

    it('DHCPv6 gives the -a address 2001:db8::77, and the router advertisement a default route', function () {
      expect(run.guest?.dhcp6Lease()?.address, run.diagnostics()).to.equal('2001:db8::77');
      expect(run.guest?.routes6().some((r) => /^default via fe80::\S+ dev eth0/.test(r)), run.diagnostics()).to.equal(true);
    });

    for (const target of v6Targets) {
      it(`ping -c3 ${target} gets 3 replies`, function () {
        expect(run.guest?.pings().get(target), run.diagnostics()).to.deep.equal({ transmitted: 3, received: 3, exitCode: 0 });
      });
    }

    it('IPv4 echo from a hand-set 192.0.2.1/24 gets no reply', function () {
      const result = run.guest?.pings().get(TEST_NET.serverV4);
      expect(result, run.diagnostics()).to.not.equal(undefined);
      expect(result?.received, run.diagnostics()).to.equal(0);
    });
  });
});
