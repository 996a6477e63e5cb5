/**
 * TCP through ferry over an unruly link: ferry runs with test fault
 * injection (FERRY_TEST_FAULTS, src/backend/fault-injection.ts), which drops,
 * duplicates and reorders frames between the virtqueues and the stack in
 * both directions. A real guest moves FERRY_TCP_FAULTS_BYTES (20 MB) each
 * way over IPv4 and IPv6 to the peer namespace's servers
 * (test/support/e2e/tcp-e2e.ts); every transfer must arrive intact (sha256 on
 * both ends), and ferry's own counts must show that faults were injected in
 * both directions and that its TCP recovered by retransmitting.
 *
 * FERRY_TCP_FAULTS_SPEC overrides the faults, FERRY_TCP_FAULTS_PCAP captures
 * the guest-side frames. Much harsher specs (8% drop) make guest uploads
 * crawl: ferry offers neither SACK nor timestamps, so with few segments in
 * flight the guest recovers by retransmission timeouts whose backoff is
 * never reset (no RTT sample from retransmitted data, Karn's rule).
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, stopChild, type TestNetwork } from '../../support/netns';
import { bootGuest, type Guest, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, metricSum, scrapeMetrics, startFerry } from '../../support/e2e/ferry-process';
import { guestMarker, guestToolPrelude, type LoggedChild, startTcpServers, tcpToolForGuest, TCP_PORTS, writeTcpScripts } from '../../support/e2e/tcp-e2e';
import { FAULTS_ENV } from '../../../src/backend/frontends/middleware/fault-injection';

const BYTES = Number(process.env.FERRY_TCP_FAULTS_BYTES ?? 20_000_000);
const FAULTS = process.env.FERRY_TCP_FAULTS_SPEC ?? 'drop=0.02,dup=0.01,reorder=0.02,seed=4242';
/** For diagnosis: capture the guest-side frames (as the guest sent and received them) into this pcap file. */
const PCAP = process.env.FERRY_TCP_FAULTS_PCAP;

function guestScript(tool: string): string {
  const p = TCP_PORTS;
  return `${guestToolPrelude(tool)}
say "upload4 $($T upload 192.0.2.2 ${p.upload} ${BYTES} 2>&1)"
say "download4 $($T download 192.0.2.2 ${p.download} ${BYTES} 2>&1)"
say "upload6 $($T upload 2001:db8::2 ${p.upload} ${BYTES} 2>&1)"
say "download6 $($T download 2001:db8::2 ${p.download} ${BYTES} 2>&1)"
exit 0
`;
}

interface FaultLine {
  frames: number;
  dropped: number;
  duplicated: number;
  reordered: number;
}

/** The two directions of the last "test-faults:" line in ferry's log. */
function lastFaultCounts(log: string): { toStack: FaultLine; toGuest: FaultLine } | null {
  const lines = log.split('\n').filter((l) => l.includes('test-faults: to-stack'));
  const last = lines[lines.length - 1];
  if (last === undefined) return null;
  const parse = (label: string): FaultLine => {
    const m = new RegExp(`${label} frames (\\d+) dropped (\\d+) duplicated (\\d+) reordered (\\d+)`).exec(last);
    if (m === null) throw new Error(`no ${label} counts in: ${last}`);
    return { frames: Number(m[1]), dropped: Number(m[2]), duplicated: Number(m[3]), reordered: Number(m[4]) };
  };
  return { toStack: parse('to-stack'), toGuest: parse('to-guest') };
}

describe(`e2e: TCP through ferry with injected faults (${FAULTS}), real guest`, function () {
  this.timeout(400000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let peer: LoggedChild | null = null;
  let workDir = '';
  let exitCode: number | null = null;
  let bootError: Error | null = null;
  let metrics = '';

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    const tool = tcpToolForGuest();
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-tcp-faults-'));
    const scripts = writeTcpScripts(workDir);
    peer = await startTcpServers(net.peerNs, scripts.servers, 'peer');
    const socketPath = path.join(workDir, 'ferry.sock');
    const metricsPath = path.join(workDir, 'metrics.sock');
    // ferry inherits the variable (only ferry: it is removed again at once).
    process.env[FAULTS_ENV] = FAULTS;
    try {
      ferry = await startFerry(net.ns, socketPath, ['--metrics', `unix:${metricsPath}`, ...(PCAP !== undefined ? ['--pcap', PCAP] : [])]);
    } finally {
      delete process.env[FAULTS_ENV];
    }
    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath },
      testScript: guestScript(tool),
      append: ['ferry.dhcp_tries=8', 'ferry.ipv6_wait=15', 'ferry.test_timeout=300'],
      timeoutMs: 360000,
    });
    try {
      exitCode = await guest.waitDone(350000);
    } catch (err) {
      bootError = err as Error;
    }
    // The counts are logged at most once a second.
    await new Promise((r) => setTimeout(r, 1500));
    metrics = await scrapeMetrics(metricsPath).catch((e: Error) => `scrape failed: ${e.message}`);
  });

  after(async function () {
    if (peer) await stopChild(peer.child, 1000);
    if (guest) await guest.destroy();
    if (ferry) await ferry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  });

  const marker = (name: string): string | null => guestMarker(guest?.vm.serialLines ?? '', name);

  function diagnostics(): string {
    return (
      `${guest?.vm.diagnostics(40) ?? ''}\n--- peer servers ---\n${(peer?.output() ?? '').split('\n').filter((l) => !l.startsWith('ECHO-CLOSED')).slice(-20).join('\n')}` +
      `\n--- ferry log ---\n${ferry?.log().split('\n').slice(-20).join('\n') ?? ''}`
    );
  }

  it('the guest test script runs to the end', function () {
    console.log(`      (${['upload4', 'download4', 'upload6', 'download6'].map((n) => `${n} ${/ms (\d+)/.exec(marker(n) ?? '')?.[1] ?? '?'} ms`).join(', ')})`);
    expect(bootError, diagnostics()).to.equal(null);
    expect(exitCode, diagnostics()).to.equal(0);
  });

  for (const [family, seenAs] of [['4', '::ffff:192\\.0\\.2\\.1'], ['6', '2001:db8::1']] as const) {
    it(`${BYTES} bytes guest -> server over IPv${family} arrive intact despite the faults`, function () {
      const line = marker(`upload${family}`) ?? '';
      const m = /^upload sent (\d+) sha256 ([0-9a-f]{64}) ms \d+ reply sha256 ([0-9a-f]{64}) bytes (\d+)$/.exec(line);
      expect(m, `${line}\n${diagnostics()}`).to.not.equal(null);
      expect(Number(m![1])).to.equal(BYTES);
      expect(Number(m![4])).to.equal(BYTES);
      expect(m![3]).to.equal(m![2]);
      expect(peer?.output()).to.match(new RegExp(`UPLOAD from ${seenAs} bytes ${BYTES} sha256 ${m![2]}`));
    });

    it(`${BYTES} bytes server -> guest over IPv${family} arrive intact despite the faults`, function () {
      const line = marker(`download${family}`) ?? '';
      const m = /^download got (\d+) sha256 ([0-9a-f]{64}) ms \d+$/.exec(line);
      expect(m, `${line}\n${diagnostics()}`).to.not.equal(null);
      expect(Number(m![1])).to.equal(BYTES);
      expect(peer?.output(), diagnostics()).to.match(new RegExp(`DOWNLOAD to ${seenAs} bytes ${BYTES} sha256 ${m![2]}`));
    });
  }

  it('faults were injected in both directions (drops, duplicates and reorderings counted by ferry)', function () {
    const counts = lastFaultCounts(ferry?.log() ?? '');
    expect(counts, diagnostics()).to.not.equal(null);
    console.log(`      (to the stack: ${JSON.stringify(counts!.toStack)}; to the guest: ${JSON.stringify(counts!.toGuest)})`);
    for (const direction of [counts!.toStack, counts!.toGuest]) {
      // Bulk frames are ~64 KB (GSO one way, ferry's MSS the other).
      expect(direction.frames).to.be.above(BYTES / 100_000);
      expect(direction.dropped).to.be.above(0);
      expect(direction.duplicated).to.be.above(0);
      expect(direction.reordered).to.be.above(0);
    }
  });

  it("ferry's TCP recovered from frames lost on the way to the guest by retransmitting", function () {
    const retransmits =
      metricSum(metrics, 'ferry_tcp_events_total', { event: 'retransmit_timeout' }) + metricSum(metrics, 'ferry_tcp_events_total', { event: 'fast_retransmit' });
    console.log(`      (ferry retransmissions: ${retransmits})`);
    expect(retransmits, metrics.split('\n').filter((l) => l.startsWith('ferry_tcp')).join('\n')).to.be.above(0);
  });
});
