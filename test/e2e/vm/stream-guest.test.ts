/**
 * A real Linux guest on `ferry stream`: QEMU's `-netdev stream` connects to
 * ferry's UNIX socket and exchanges 4-byte length-prefixed frames; the
 * guest boots once in a test namespace (uplink 192.0.2.1/24) and must get
 * the same DHCP lease as over vhost-user (the host's own address, its
 * gateway, the configured resolver), then ping the server in the test
 * network through ferry's ICMP echo sockets.
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { bootGuest, type Guest, pingScript, REPO_ROOT, requireGuestPrerequisites } from '../../support/guest';
import { DEFAULT_GUEST_MAC, type QemuExit } from '../../support/qemu';
import { isDhcpDiscover, type PcapFile, readPcapFile, sourceMac } from '../../support/pcap-reader';
import { FERRY_BIN, FERRY_CLI_MODULE } from '../../support/e2e/ferry-process';

const TEST_DNS_V4 = '192.0.2.53';

/** `ferry stream` in `ns`; resolves once its socket exists. */
async function startFerryStream(ns: string, socketPath: string, args: string[]): Promise<{ child: ChildProcess; log: () => string; stop: () => Promise<number | null> }> {
  const child = spawnIn(ns, [process.execPath, FERRY_BIN, 'stream', '--socket', socketPath, ...args], { cwd: REPO_ROOT });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const stop = async (): Promise<number | null> => {
    await stopChild(child, 3000);
    return exited;
  };
  const deadline = Date.now() + 10000;
  while (!fs.existsSync(socketPath)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`ferry stream exited before listening:\n${output}`);
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`ferry stream did not create ${socketPath}:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, log: () => output, stop };
}

describe('e2e: guest over ferry stream (QEMU -netdev stream)', function () {
  this.timeout(120000);

  let net: TestNetwork | null = null;
  let ferry: Awaited<ReturnType<typeof startFerryStream>> | null = null;
  let guest: Guest | null = null;
  let workDir = '';
  let pcapPath = '';
  let socketPath = '';
  let bootError: Error | null = null;
  let guestExitCode: number | null = null;
  let qemuExit: QemuExit | null = null;
  let ferryAliveAtEnd = false;
  let ferryExitCode: number | null = null;
  let capture: PcapFile | null = null;

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-stream-'));
    socketPath = path.join(workDir, 'ferry-stream.sock');
    pcapPath = path.join(workDir, 'ferry.pcap');
    ferry = await startFerryStream(net.ns, socketPath, ['--pcap', pcapPath, '--dns', TEST_DNS_V4]);
    guest = bootGuest({
      net,
      nic: { kind: 'stream', socketPath, server: false },
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=0'],
      testScript: pingScript([TEST_NET.serverV4]),
      timeoutMs: 90000,
    });
    try {
      guestExitCode = await guest.waitDone(80000);
    } catch (err) {
      bootError = err as Error;
    }
    qemuExit = guestExitCode !== null ? await guest.vm.exited : await guest.vm.kill();
    // QEMU is gone: ferry must be back to listening, not dead.
    await new Promise((r) => setTimeout(r, 300));
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
      `${guest?.vm.diagnostics() ?? ''}\n--- ferry pcap: ${frames.length} frames, ${fromGuest} from the guest ---\n` +
      `--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`
    );
  }

  it('the guest boots, runs its script and powers off', function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(qemuExit?.code, diagnostics()).to.equal(0);
  });

  it("the guest's DHCP DISCOVER reaches ferry through the stream socket", function () {
    const fromGuest = (capture?.frames ?? []).filter((f) => sourceMac(f.data) === DEFAULT_GUEST_MAC);
    expect(fromGuest.some((f) => isDhcpDiscover(f.data)), diagnostics()).to.equal(true);
  });

  it("the guest is leased the host's address, gateway and the configured resolver", function () {
    const lease = guest?.lease() ?? null;
    expect(lease, diagnostics()).to.not.equal(null);
    expect(lease?.address).to.equal(TEST_NET.hostV4);
    expect(lease?.prefixLength).to.equal(TEST_NET.prefixV4);
    expect(lease?.routers).to.deep.equal([TEST_NET.routerV4]);
    expect(lease?.dns).to.deep.equal([TEST_DNS_V4]);
  });

  it('the guest pings the server in the test network through ferry', function () {
    const ping = guest?.pings().get(TEST_NET.serverV4);
    expect(ping, diagnostics()).to.not.equal(undefined);
    expect(ping?.received, diagnostics()).to.equal(ping?.transmitted);
    expect(ping?.exitCode, diagnostics()).to.equal(0);
    expect(guestExitCode, diagnostics()).to.equal(0);
  });

  it('ferry outlives the peer (back to listening) and exits 0 on SIGTERM, removing its socket', function () {
    expect(ferryAliveAtEnd, diagnostics()).to.equal(true);
    expect(ferry?.log() ?? '', diagnostics()).to.match(/stream peer disconnected/);
    expect(ferryExitCode, diagnostics()).to.equal(0);
    expect(fs.existsSync(socketPath)).to.equal(false);
  });
});
