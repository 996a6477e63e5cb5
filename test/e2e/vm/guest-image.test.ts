/**
 * Validates the e2e guest image and harness without ferry: the guest boots
 * under QEMU in a test namespace with QEMU's own restricted user-mode network
 * (documentation addresses, no outside access), the virtio-net driver
 * probes, udhcpc applies a lease, SLAAC configures IPv6, /test.sh runs and
 * its exit code comes back; QEMU's filter-dump capture of the guest's first
 * frames is read with pcap-reader.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  createTestNetwork,
  destroyTestNetwork,
  type TestNetwork,
  liveNamespaceNames,
  runIn,
  startCapture,
  TEST_NET,
} from '../../support/netns';
import { bootGuest, type Guest, requireGuestPrerequisites } from '../../support/guest';
import { readPcapFile, isDhcpDiscover, isRouterSolicitation, sourceMac, etherType, ETHERTYPE_IPV4, ETHERTYPE_IPV6 } from '../../support/pcap-reader';
import { DEFAULT_GUEST_MAC } from '../../support/qemu';

describe('e2e: test guest image (QEMU user network, no ferry)', function () {
  this.timeout(120000);
  let net: TestNetwork | null = null;
  let guest: Guest | null = null;

  before(function () {
    requireGuestPrerequisites(this);
  });

  afterEach(async function () {
    if (guest) await guest.destroy();
    guest = null;
    if (net) await destroyTestNetwork(net);
    net = null;
  });

  it('boots, probes virtio-net, gets a DHCP lease and SLAAC address, runs /test.sh and reports its exit code', async function () {
    net = await createTestNetwork();
    const testScript = [
      'set -ex',
      // iperf3 and its libraries made it into the image.
      'iperf3 --version >/dev/null',
      // The lease was applied to eth0.
      'ip -4 addr show dev eth0 | grep -q "inet 203.0.113.15/24"',
      'exit 42',
    ].join('\n');
    // QEMU's filter-dump records the frames the guest sends to the user network.
    const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-'));
    const pcapPath = path.join(workDir, 'user.pcap');
    guest = bootGuest({
      net,
      nic: { kind: 'user' },
      testScript,
      append: ['ferry.ipv6_wait=5'],
      workDir,
      extraArgs: ['-object', `filter-dump,id=dump0,netdev=net0,file=${pcapPath}`],
    });

    await guest.waitForMarker('virtio_net probed eth0', 30000);
    await guest.waitForMarker('link up', 10000);
    const code = await guest.waitDone(60000);
    expect(code, guest.vm.diagnostics()).to.equal(42);

    const lease = guest.lease();
    expect(lease, guest.vm.diagnostics()).to.not.equal(null);
    expect(lease?.address).to.equal('203.0.113.15');
    expect(lease?.prefixLength).to.equal(24);
    const v6 = guest.addresses().filter((a) => a.family === 'inet6' && a.scope === 'global');
    expect(v6.map((a) => a.address), guest.vm.diagnostics()).to.include('2001:db8:1:0:5054:ff:fe12:3456');

    const exit = await guest.vm.exited;
    expect(exit.code, 'QEMU exits cleanly on the guest poweroff').to.equal(0);

    const capture = readPcapFile(pcapPath);
    const fromGuest = capture.frames.filter((f) => sourceMac(f.data) === DEFAULT_GUEST_MAC);
    expect(fromGuest.some((f) => isDhcpDiscover(f.data)), 'DHCP DISCOVER captured').to.equal(true);
    expect(fromGuest.some((f) => isRouterSolicitation(f.data)), 'router solicitation captured').to.equal(true);
  });

  it('joins the test namespace to its peer over both address families, seen by a capture on the uplink', async function () {
    net = await createTestNetwork();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-capture-'));
    try {
      const capture = await startCapture(net.peerNs, TEST_NET.peerLinkName, path.join(dir, 'uplink.pcap'));
      const v4 = await runIn(net.ns, ['busybox', 'ping', '-c', '1', '-W', '2', TEST_NET.serverV4]);
      const v6 = await runIn(net.ns, ['busybox', 'ping', '-c', '1', '-W', '2', TEST_NET.serverV6]);
      await capture.stop();
      expect(v4.code, v4.stdout + v4.stderr).to.equal(0);
      expect(v6.code, v6.stdout + v6.stderr).to.equal(0);
      const frames = readPcapFile(capture.file).frames;
      expect(frames.some((f) => etherType(f.data) === ETHERTYPE_IPV4)).to.equal(true);
      expect(frames.some((f) => etherType(f.data) === ETHERTYPE_IPV6)).to.equal(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('leaves no namespace behind', async function () {
    net = await createTestNetwork();
    const made = net;
    expect(fs.existsSync(`/run/netns/${made.ns}`)).to.equal(true);
    await destroyTestNetwork(made);
    net = null;
    expect(fs.existsSync(`/run/netns/${made.ns}`)).to.equal(false);
    expect(fs.existsSync(`/run/netns/${made.peerNs}`)).to.equal(false);
    expect(liveNamespaceNames()).to.not.include(made.ns);
  });
});
