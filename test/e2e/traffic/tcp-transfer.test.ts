/**
 * TCP through ferry with a real Linux guest, in one boot: ferry runs in the
 * test namespace (192.0.2.1/24, 2001:db8::1/64) with -t 8080:80; the peer
 * namespace holds Node servers on [::] (test/support/e2e/tcp-e2e.ts) and the
 * test namespace's loopback an upload sink on 127.0.0.1:5010. The guest
 * carries test/guest/tcp-tool.c. Checked from that boot:
 *   - FERRY_TCP_E2E_BYTES (100 MB) guest -> server and server -> guest,
 *     over IPv4 and IPv6, each sha256-verified on both ends;
 *   - clients in the peer namespace send as much to a server in the guest
 *     through -t 8080:80, over IPv4 then IPv6, verified the same way, the
 *     guest seeing each client's own address (no NAT);
 *   - 1000 concurrent echo connections from the guest, all echoed intact;
 *   - half-close: the guest shuts its write side and still receives the
 *     server's answer, sent after the server saw the FIN;
 *   - a reset by the server reaches the guest as ECONNRESET, a reset by the
 *     guest (SO_LINGER 0) reaches the server as ECONNRESET;
 *   - a connection to a closed port in the peer namespace is refused
 *     (ECONNREFUSED) quickly, over IPv4 and IPv6;
 *   - the gateway 192.0.2.254 reaches the test namespace's loopback, the
 *     server seeing the connection from 127.0.0.1.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, stopChild, type TestNetwork } from '../../support/netns';
import { bootGuest, type Guest, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, metricSum, scrapeMetrics, startFerry } from '../../support/e2e/ferry-process';
import {
  guestMarker, guestToolPrelude, type LoggedChild, spawnLogged, startTcpServers, tcpToolForGuest, TCP_PORTS, writeTcpScripts,
} from '../../support/e2e/tcp-e2e';

/** Bytes of each bulk transfer (the issue's 100 MB). */
const BULK_BYTES = Number(process.env.FERRY_TCP_E2E_BYTES ?? 100_000_000);
const ECHO_CONNECTIONS = 1000;
const FORWARD_HOST_PORT = 8080;
const FORWARD_GUEST_PORT = 80;

function guestScript(tool: string): string {
  const p = TCP_PORTS;
  return `${guestToolPrelude(tool)}
: > /tmp/serve.log
$T serve ${FORWARD_GUEST_PORT} 2 230 > /tmp/serve.log 2>&1 &
SERVE=$!
i=0; while ! grep -q 'serve ready' /tmp/serve.log && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
say "serve $(head -n 1 /tmp/serve.log)"
say "refused4 $($T connect 192.0.2.2 ${p.closed} 2>&1)"
# (refused6 is also the guest's first IPv6 TCP: from then on ferry sends -t connections to its SLAAC address.)
say "refused6 $($T connect 2001:db8::2 ${p.closed} 2>&1)"
say "halfclose4 $($T halfclose 192.0.2.2 ${p.halfClose} 2>&1)"
say "halfclose6 $($T halfclose 2001:db8::2 ${p.halfClose} 2>&1)"
say "reset-recv $($T reset-recv 192.0.2.2 ${p.reset} 2>&1)"
say "reset-send $($T reset-send 192.0.2.2 ${p.resetSeen} 2>&1)"
say "loopback $($T upload 192.0.2.254 ${p.loopback} 100000 2>&1)"
say "echo-many $($T echo-many 192.0.2.2 ${p.echo} ${ECHO_CONNECTIONS} 2>/tmp/echo.err)"
sed 's/^/FERRY-GUEST: echo-many-stderr /' /tmp/echo.err
say "upload4 $($T upload 192.0.2.2 ${p.upload} ${BULK_BYTES} 2>&1)"
say "upload6 $($T upload 2001:db8::2 ${p.upload} ${BULK_BYTES} 2>&1)"
say "download4 $($T download 192.0.2.2 ${p.download} ${BULK_BYTES} 2>&1)"
say "download6 $($T download 2001:db8::2 ${p.download} ${BULK_BYTES} 2>&1)"
# The inbound transfers run beside the others: wait for them (the server takes two connections).
i=0; while kill -0 $SERVE 2>/dev/null && [ $i -lt 1500 ]; do usleep 100000; i=$((i+1)); done
kill $SERVE 2>/dev/null
say "serve-log $(grep -v 'serve ready' /tmp/serve.log | tr '\\n' ';')"
exit 0
`;
}

describe('e2e: TCP through ferry (real guest): bulk transfers, -t, many connections, half-close, resets', function () {
  this.timeout(420000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let peer: LoggedChild | null = null;
  let loopback: LoggedChild | null = null;
  let inbound: LoggedChild | null = null;
  let inbound6: LoggedChild | null = null;
  let workDir = '';
  let exitCode: number | null = null;
  let bootError: Error | null = null;
  let metrics = '';
  let elapsedMs = 0;

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    const tool = tcpToolForGuest();
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-tcp-'));
    const scripts = writeTcpScripts(workDir);
    peer = await startTcpServers(net.peerNs, scripts.servers, 'peer');
    loopback = await startTcpServers(net.ns, scripts.servers, 'loopback');
    const socketPath = path.join(workDir, 'ferry.sock');
    const metricsPath = path.join(workDir, 'metrics.sock');
    ferry = await startFerry(net.ns, socketPath, ['-t', `${FORWARD_HOST_PORT}:${FORWARD_GUEST_PORT}`, '--metrics', `unix:${metricsPath}`]);
    const started = Date.now();
    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath },
      testScript: guestScript(tool),
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=5', 'ferry.test_timeout=330'],
      timeoutMs: 380000,
    });
    try {
      await guest.waitForMarker('serve serve ready', 120000);
      // The peer's client, bound to the server address so the guest's view of it is unambiguous.
      const peerNs = net.peerNs;
      inbound = spawnLogged(peerNs, [process.execPath, scripts.client, '192.0.2.1', String(FORWARD_HOST_PORT), String(BULK_BYTES), '192.0.2.2']);
      // Then the same over IPv6 (the guest's server takes one connection at a time).
      inbound.child.once('exit', () => {
        inbound6 = spawnLogged(peerNs, [process.execPath, scripts.client, '2001:db8::1', String(FORWARD_HOST_PORT), String(BULK_BYTES), '2001:db8::2']);
      });
      exitCode = await guest.waitDone(370000);
    } catch (err) {
      bootError = err as Error;
    }
    elapsedMs = Date.now() - started;
    metrics = await scrapeMetrics(metricsPath).catch((e: Error) => `scrape failed: ${e.message}`);
  });

  after(async function () {
    for (const c of [inbound, inbound6, peer, loopback]) if (c) await stopChild(c.child, 1000);
    if (guest) await guest.destroy();
    if (ferry) await ferry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  });

  const serial = (): string => guest?.vm.serialLines ?? '';
  const marker = (name: string): string | null => guestMarker(serial(), name);

  function diagnostics(): string {
    const quiet = (s: string): string => s.split('\n').filter((l) => !l.startsWith('ECHO-CLOSED')).slice(-20).join('\n');
    return (
      `${guest?.vm.diagnostics(60) ?? ''}\n--- peer servers ---\n${quiet(peer?.output() ?? '')}` +
      `\n--- loopback server ---\n${loopback?.output() ?? ''}\n--- inbound clients ---\n${inbound?.output() ?? ''}${inbound6?.output() ?? ''}` +
      `\n--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}` +
      `\n--- ferry counters ---\n${metrics.split('\n').filter((l) => /^ferry_/.test(l) && !/ 0$/.test(l)).slice(0, 80).join('\n')}`
    );
  }

  it('the guest test script runs to the end', function () {
    console.log(`      (boot and all transfers: ${(elapsedMs / 1000).toFixed(1)} s; ${['upload4', 'upload6', 'download4', 'download6'].map((n) => `${n} ${/ms (\d+)/.exec(marker(n) ?? '')?.[1] ?? '?'} ms`).join(', ')})`);
    expect(bootError, diagnostics()).to.equal(null);
    expect(exitCode, diagnostics()).to.equal(0);
  });

  for (const [family, address] of [['4', '::ffff:192\\.0\\.2\\.1'], ['6', '2001:db8::1']] as const) {
    it(`${BULK_BYTES} bytes guest -> server over IPv${family} arrive intact (sha256 on both ends)`, function () {
      const line = marker(`upload${family}`) ?? '';
      const m = /^upload sent (\d+) sha256 ([0-9a-f]{64}) ms \d+ reply sha256 ([0-9a-f]{64}) bytes (\d+)$/.exec(line);
      expect(m, `${line}\n${diagnostics()}`).to.not.equal(null);
      const [, sent, guestHash, serverHash, serverBytes] = m!;
      expect(Number(sent)).to.equal(BULK_BYTES);
      expect(Number(serverBytes)).to.equal(BULK_BYTES);
      expect(serverHash).to.equal(guestHash);
      expect(peer?.output()).to.match(new RegExp(`UPLOAD from ${address} bytes ${BULK_BYTES} sha256 ${guestHash}`));
    });
  }

  for (const [family, address] of [['4', '::ffff:192\\.0\\.2\\.1'], ['6', '2001:db8::1']] as const) {
    it(`${BULK_BYTES} bytes server -> guest over IPv${family} arrive intact (sha256 on both ends)`, function () {
      const line = marker(`download${family}`) ?? '';
      const m = /^download got (\d+) sha256 ([0-9a-f]{64}) ms \d+$/.exec(line);
      expect(m, `${line}\n${diagnostics()}`).to.not.equal(null);
      expect(Number(m![1])).to.equal(BULK_BYTES);
      const served = new RegExp(`DOWNLOAD to ${address} bytes ${BULK_BYTES} sha256 ${m![2]}`);
      expect(peer?.output(), diagnostics()).to.match(served);
    });
  }

  for (const family of ['4', '6'] as const) {
    it(`a peer client sends ${BULK_BYTES} bytes over IPv${family} to a server in the guest through -t ${FORWARD_HOST_PORT}:${FORWARD_GUEST_PORT}, intact, seen from its own address`, function () {
      const client = (family === '4' ? inbound : inbound6)?.output() ?? '';
      const m = /INBOUND sent (\d+) sha256 ([0-9a-f]{64}) ms \d+ reply got (\d+) sha256 ([0-9a-f]{64})/.exec(client);
      expect(m, diagnostics()).to.not.equal(null);
      expect(Number(m![1])).to.equal(BULK_BYTES);
      expect(Number(m![3])).to.equal(BULK_BYTES);
      expect(m![4]).to.equal(m![2]);
      const from = family === '4' ? '::ffff:192.0.2.2' : '2001:db8::2';
      expect(marker('serve-log') ?? '', diagnostics()).to.include(`serve got ${BULK_BYTES} sha256 ${m![2]} from ${from}`);
    });
  }

  it(`${ECHO_CONNECTIONS} concurrent connections from the guest all echo intact`, function () {
    expect(marker('echo-many') ?? '', diagnostics()).to.match(new RegExp(`echo-many ok ${ECHO_CONNECTIONS} bad 0 failed 0 ms \\d+`));
  });

  for (const family of ['4', '6']) {
    it(`half-close over IPv${family}: the guest shuts its write side and still gets the answer sent after its FIN`, function () {
      expect(marker(`halfclose${family}`), diagnostics()).to.equal('halfclose reply after-fin got 19 bytes');
    });
  }

  it('a reset by the server reaches the guest as ECONNRESET', function () {
    expect(marker('reset-recv'), diagnostics()).to.equal('reset-recv ECONNRESET');
    expect(peer?.output()).to.match(/RESETTING ::ffff:192\.0\.2\.1/);
  });

  it('a reset by the guest (SO_LINGER 0) reaches the server as ECONNRESET', function () {
    expect(marker('reset-send'), diagnostics()).to.equal('reset-send sent');
    expect(peer?.output(), diagnostics()).to.match(/RESET-SEEN ECONNRESET/);
  });

  for (const family of ['4', '6']) {
    it(`a connection to a closed port is refused quickly over IPv${family}`, function () {
      const m = /^connect ECONNREFUSED ms (\d+)$/.exec(marker(`refused${family}`) ?? '');
      expect(m, diagnostics()).to.not.equal(null);
      expect(Number(m![1])).to.be.below(2000);
    });
  }

  it('the gateway address reaches a server on the host loopback, which sees the connection from 127.0.0.1', function () {
    expect(marker('loopback') ?? '', diagnostics()).to.match(/^upload sent 100000 sha256 ([0-9a-f]{64}) ms \d+ reply sha256 \1 bytes 100000$/);
    expect(loopback?.output(), diagnostics()).to.match(/UPLOAD from 127\.0\.0\.1 bytes 100000 sha256/);
  });

  it("ferry's counters saw the bulk bytes both ways", function () {
    expect(metricSum(metrics, 'ferry_tcp_bytes_total', { direction: 'from_guest' }), metrics.slice(0, 2000)).to.be.at.least(2 * BULK_BYTES);
    // Two downloads and two inbound transfers.
    expect(metricSum(metrics, 'ferry_tcp_bytes_total', { direction: 'to_guest' })).to.be.at.least(4 * BULK_BYTES);
  });
});
