/**
 * One ferry process serves two QEMU guests one after the other (a
 * new front-end is served after the old one exits, without restarting
 * ferry), and the guests' traffic is counted: ferry's `--metrics unix:PATH`
 * endpoint shows ferry_frames_total moving in both directions while each
 * guest pings (10 echo requests out, 10 replies in). The second guest has a
 * different MAC address, as a new VM would.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, type TestNetwork, TEST_NET } from '../../support/netns';
import { bootGuest, type Guest, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, metricSum, scrapeMetrics, startFerry } from '../../support/e2e/ferry-process';

const PINGS = 10;
/**
 * The second guest has another MAC: ferry learns the guest's MAC from its
 * frames, and must address the new guest, not the one that left.
 */
const GUEST_MACS = ['52:54:00:12:34:56', '52:54:00:ab:cd:02'];
/** Resolver given to ferry so the guest is never told about the machine's real one. */
const TEST_DNS = '192.0.2.53';

/**
 * Guest side: after the lease, announce the traffic, give the host a moment
 * to scrape, ping PINGS times, announce the end and stay up a moment so the
 * host scrapes while the front-end is still connected.
 */
const TEST_SCRIPT = `
say() { echo "FERRY-GUEST: $*"; }
say "traffic start"
sleep 2
ping -4 -c ${PINGS} -i 0.2 -W 2 -w 10 ${TEST_NET.serverV4} >/tmp/ping.log 2>&1
say "ping rc $? $(awk '/packets transmitted/ { print $1, $4 }' /tmp/ping.log)"
say "traffic end"
sleep 2
`;

/** Frames counted by ferry per direction (tx: guest to ferry, rx: ferry to guest). */
interface FrameCounts {
  tx: number;
  rx: number;
}

/** One guest's run on the shared ferry. */
interface GuestRun {
  guest: Guest | null;
  exitCode: number | null;
  error: Error | null;
  atStart: FrameCounts | null;
  atEnd: FrameCounts | null;
}

describe('e2e: one ferry serves two guests in sequence, and counts their traffic', function () {
  this.timeout(150000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let workDir = '';
  let metricsPath = '';
  const runs: GuestRun[] = [];
  let ferryPidAtStart: number | undefined;
  let ferryAliveAtEnd = false;

  async function frameCounts(): Promise<FrameCounts> {
    const body = await scrapeMetrics(metricsPath);
    return {
      tx: metricSum(body, 'ferry_frames_total', { direction: 'tx' }),
      rx: metricSum(body, 'ferry_frames_total', { direction: 'rx' }),
    };
  }

  async function runGuest(socketPath: string, mac: string): Promise<GuestRun> {
    const run: GuestRun = { guest: null, exitCode: null, error: null, atStart: null, atEnd: null };
    if (!net) throw new Error('no test network');
    run.guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath },
      mac,
      testScript: TEST_SCRIPT,
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6=0'],
      timeoutMs: 70000,
    });
    try {
      await run.guest.waitForMarker('traffic start', 60000);
      run.atStart = await frameCounts();
      await run.guest.waitForMarker('traffic end', 20000);
      run.atEnd = await frameCounts();
      run.exitCode = await run.guest.waitDone(20000);
      await run.guest.vm.exited;
    } catch (err) {
      run.error = err as Error;
      await run.guest.vm.kill();
    }
    return run;
  }

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-'));
    const socketPath = path.join(workDir, 'ferry.sock');
    metricsPath = path.join(workDir, 'metrics.sock');
    ferry = await startFerry(net.ns, socketPath, ['--metrics', `unix:${metricsPath}`, '--dns', TEST_DNS]);
    await ferry.waitForLog(/metrics on /, 10000);
    ferryPidAtStart = ferry.child.pid;
    for (const mac of GUEST_MACS) runs.push(await runGuest(socketPath, mac));
    ferryAliveAtEnd = ferry.child.exitCode === null && ferry.child.signalCode === null;
  });

  after(async function () {
    for (const r of runs) if (r.guest) await r.guest.destroy();
    if (ferry) await ferry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    runs.length = 0;
    ferry = null;
    net = null;
  });

  function diagnostics(i: number): string {
    const r = runs[i];
    return (
      `${r?.error?.message ?? ''}\n${r?.guest?.vm.diagnostics(40) ?? '(guest not run)'}\n` +
      `frames at traffic start ${JSON.stringify(r?.atStart)}, at end ${JSON.stringify(r?.atEnd)}\n` +
      `--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`
    );
  }

  for (const [i, which] of [[0, 'first'], [1, 'second']] as const) {
    it(`the ${which} guest (MAC ${GUEST_MACS[i]}) gets the host's address and its ${PINGS} pings are answered`, function () {
      expect(runs[i]?.error ?? null, diagnostics(i)).to.equal(null);
      expect(runs[i]?.guest?.lease()?.address, diagnostics(i)).to.equal(TEST_NET.hostV4);
      expect(runs[i]?.guest?.vm.serialLines ?? '', diagnostics(i)).to.match(new RegExp(`FERRY-GUEST: ping rc 0 ${PINGS} ${PINGS}\\r?\\n`));
      expect(runs[i]?.exitCode, diagnostics(i)).to.equal(0);
    });

    it(`ferry_frames_total counts the ${which} guest's echo: at least ${PINGS} more frames each way during its pings`, function () {
      const { atStart, atEnd } = runs[i] ?? {};
      expect(atStart, diagnostics(i)).to.not.equal(null);
      expect(atEnd, diagnostics(i)).to.not.equal(null);
      expect((atEnd?.tx ?? 0) - (atStart?.tx ?? 0), `tx frames moved\n${diagnostics(i)}`).to.be.at.least(PINGS);
      expect((atEnd?.rx ?? 0) - (atStart?.rx ?? 0), `rx frames moved\n${diagnostics(i)}`).to.be.at.least(PINGS);
    });
  }

  it('the same ferry process served both front-ends and is still running', function () {
    expect(ferryAliveAtEnd, diagnostics(1)).to.equal(true);
    expect(ferry?.child.pid).to.equal(ferryPidAtStart);
    const connections = (ferry?.log() ?? '').match(/front-end \S+ connected/g) ?? [];
    expect(connections.length, diagnostics(1)).to.be.at.least(2);
  });
});
