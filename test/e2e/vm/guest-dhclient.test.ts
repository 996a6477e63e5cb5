/**
 * ISC dhclient, -4 and -6, as the QEMU guest's DHCP clients (the guest's
 * ferry.dhclient=1 mode, udhcpc off): one boot on ferry over vhost-user
 * in the test network, with documentation resolvers given to ferry. dhclient
 * -4 must be bound to the host's address, prefix, gateway, resolver and
 * MTU, from ferry's server identifier; dhclient -6 to the host's IPv6
 * address and resolver; then the guest pings through the applied
 * configuration over both families.
 */
import { expect } from 'chai';
import { TEST_NET } from '../../support/netns';
import { pingScript } from '../../support/guest';
import { bootGuestOnFerry, GuestOnFerry } from '../../support/e2e/guest-on-ferry';

const TEST_DNS = ['192.0.2.53', '2001:db8::53'];
const PING_TARGETS = [TEST_NET.serverV4, TEST_NET.serverV6];

describe('e2e: ISC dhclient -4 and -6 in the guest, served by ferry', function () {
  this.timeout(120000);
  const run = new GuestOnFerry();

  before(async function () {
    await bootGuestOnFerry(this, run, {
      ferryArgs: TEST_DNS.flatMap((d) => ['--dns', d]),
      testScript: [
        'ip -4 route show default | while read -r line; do echo "FERRY-GUEST: route4 $line"; done',
        pingScript(PING_TARGETS),
      ].join('\n'),
      append: ['ferry.dhcp=0', 'ferry.dhclient=1', 'ferry.ipv6_wait=5'],
    });
  });
  after(() => run.cleanup());

  const diagnostics = (): string => run.diagnostics();
  /** The words after "FERRY-GUEST: <name> " as key/value pairs after the first word (the dhclient reason). */
  const fields = (name: string): { reason: string; values: Record<string, string> } | null => {
    const text = run.marker(name);
    if (text === null) return null;
    const [reason, ...rest] = text.trim().split(/\s+/);
    const values: Record<string, string> = { address: rest[0] ?? '' };
    for (let i = 1; i + 1 < rest.length; i += 2) values[rest[i]] = rest[i + 1];
    return { reason, values };
  };

  it('the guest boots, runs its checks and powers off', function () {
    expect(run.bootError, diagnostics()).to.equal(null);
    expect(run.exitCode, diagnostics()).to.equal(0);
    expect(run.guest?.vm.serialLines ?? '', diagnostics()).to.not.match(/FERRY-GUEST: dhclient[46] failed/);
  });

  it("dhclient -4 is bound to the host's address, prefix, gateway, resolver and MTU", function () {
    const bound = fields('dhclient4');
    expect(bound, diagnostics()).to.not.equal(null);
    expect(bound?.reason).to.equal('BOUND');
    expect(bound?.values.address).to.equal(TEST_NET.hostV4);
    expect(bound?.values.mask).to.equal('255.255.255.0');
    expect(bound?.values.routers).to.equal(TEST_NET.routerV4);
    expect(bound?.values.dns).to.equal(TEST_DNS[0]);
    expect(bound?.values.mtu).to.equal('65520');
    expect(bound?.values.server).to.equal(TEST_NET.routerV4);
    expect(run.marker('route4'), diagnostics()).to.match(new RegExp(`^default via ${TEST_NET.routerV4.replace(/\./g, '\\.')} dev eth0`));
  });

  it("dhclient -6 is bound to the host's IPv6 address and resolver", function () {
    const bound = fields('dhclient6');
    expect(bound, diagnostics()).to.not.equal(null);
    expect(bound?.reason).to.equal('BOUND6');
    expect(bound?.values.address).to.equal(TEST_NET.hostV6);
    expect(bound?.values.dns).to.equal(TEST_DNS[1]);
    const global6 = run.guest?.addresses().filter((a) => a.family === 'inet6' && a.scope === 'global') ?? [];
    expect(global6.map((a) => a.address), diagnostics()).to.include(TEST_NET.hostV6);
  });

  it('the guest pings the test network over both families through that configuration', function () {
    for (const target of PING_TARGETS) {
      const ping = run.guest?.pings().get(target);
      expect(ping, `${target}\n${diagnostics()}`).to.not.equal(undefined);
      expect(ping?.received, `${target}\n${diagnostics()}`).to.equal(ping?.transmitted);
      expect(ping?.received ?? 0).to.be.greaterThan(0);
    }
  });
});
