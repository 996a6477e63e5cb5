/**
 * A real Linux guest on ferry: ferry runs in a test namespace whose uplink
 * holds 192.0.2.1/24 and 2001:db8::1/64, QEMU connects to ferry's vhost-user
 * socket, the guest boots once and everything below is read from that boot:
 * the virtio-net driver probes and the link comes up, the guest's first
 * frames (DHCP DISCOVER, router solicitation) reach ferry's pcap, and the
 * guest is given the host's own address (passt's model).
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, type TestNetwork, TEST_NET } from '../../support/netns';
import { bootGuest, type Guest, requireGuestPrerequisites } from '../../support/guest';
import { DEFAULT_GUEST_MAC, type QemuExit } from '../../support/qemu';
import { isDhcpDiscover, isRouterSolicitation, type PcapFile, readPcapFile, sourceMac } from '../../support/pcap-reader';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from '../../support/e2e/ferry-process';

/** Resolvers given to ferry so the guest is never told about the machine's real one. */
const TEST_DNS_V4 = '192.0.2.53';

describe('e2e: guest link over ferry (vhost-user)', function () {
  this.timeout(120000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let workDir = '';
  let pcapPath = '';
  let bootError: Error | null = null;
  let guestExitCode: number | null = null;
  let qemuExit: QemuExit | null = null;
  let ferryAliveAtEnd = false;
  let ferryExitCode: number | null = null;
  let capture: PcapFile | null = null;

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-'));
    const socketPath = path.join(workDir, 'ferry.sock');
    pcapPath = path.join(workDir, 'ferry.pcap');
    ferry = await startFerry(net.ns, socketPath, ['--pcap', pcapPath, '--dns', TEST_DNS_V4]);

    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath },
      // Few DHCP tries: a broken DHCP server fails in ~3 s rather than 5;
      // ipv6_wait lets the router solicitation (sent ~1-2 s after link up)
      // go out even when no router advertisement answers it.
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=4'],
      timeoutMs: 90000,
    });
    try {
      guestExitCode = await guest.waitDone(80000);
    } catch (err) {
      bootError = err as Error;
    }
    qemuExit = guestExitCode !== null ? await guest.vm.exited : await guest.vm.kill();
    ferryAliveAtEnd = ferry.child.exitCode === null && ferry.child.signalCode === null;
    ferryExitCode = await ferry.stop();
    if (fs.existsSync(pcapPath)) capture = readPcapFile(pcapPath);
  });

  after(async function () {
    if (guest) await guest.destroy();
    if (ferry) await ferry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    guest = null;
    ferry = null;
    net = null;
  });

  function diagnostics(): string {
    const frames = capture?.frames ?? [];
    const fromGuest = frames.filter((f) => sourceMac(f.data) === DEFAULT_GUEST_MAC).length;
    return (
      `${guest?.vm.diagnostics() ?? ''}\n--- ferry pcap: ${frames.length} frames, ${fromGuest} from the guest, ` +
      `${frames.length - fromGuest} to it ---\n--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`
    );
  }

  it('the virtio-net driver probes eth0 with the configured MAC', function () {
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(
      new RegExp(`FERRY-GUEST: virtio_net probed eth0 mac ${DEFAULT_GUEST_MAC}\\r?\\n`),
    );
  });

  it('the link comes up', function () {
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(/FERRY-GUEST: link up /);
  });

  it('the guest boot completes and QEMU exits on its poweroff', function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(guestExitCode, diagnostics()).to.equal(0);
    expect(qemuExit?.code, diagnostics()).to.equal(0);
  });

  it("the guest's DHCP DISCOVER and router solicitation reach ferry's pcap", function () {
    expect(capture, `no pcap at ${pcapPath}\n${diagnostics()}`).to.not.equal(null);
    const fromGuest = (capture?.frames ?? []).filter((f) => sourceMac(f.data) === DEFAULT_GUEST_MAC);
    const summary = `${capture?.frames.length ?? 0} frames, ${fromGuest.length} from ${DEFAULT_GUEST_MAC}`;
    expect(fromGuest.some((f) => isDhcpDiscover(f.data)), `DHCP DISCOVER in pcap (${summary})`).to.equal(true);
    expect(fromGuest.some((f) => isRouterSolicitation(f.data)), `router solicitation in pcap (${summary})`).to.equal(true);
  });

  it("the guest is leased the host's address, gateway and the configured resolver", function () {
    const lease = guest?.lease() ?? null;
    expect(lease, diagnostics()).to.not.equal(null);
    expect(lease?.address).to.equal(TEST_NET.hostV4);
    expect(lease?.prefixLength).to.equal(TEST_NET.prefixV4);
    expect(lease?.routers).to.deep.equal([TEST_NET.routerV4]);
    expect(lease?.dns).to.deep.equal([TEST_DNS_V4]);
  });

  it('ferry keeps running while the guest boots and powers off, and exits cleanly on SIGTERM', function () {
    expect(ferryAliveAtEnd, diagnostics()).to.equal(true);
    expect(ferryExitCode, diagnostics()).to.equal(0);
  });
});
