/**
 * UDP through ferry with a real Linux guest, in one boot: ferry runs in the
 * test namespace (192.0.2.1/24, 2001:db8::1/64); the peer namespace holds a
 * tiny DNS responder (Node dgram, 192.0.2.2:53) and a UDP echo server on
 * 192.0.2.2 and 2001:db8::2 port 7007. The guest carries a static helper
 * (test/guest/udp-tool.c, built by scripts/build-guest-tools.sh) because its
 * busybox has no UDP client. Checked from that boot:
 *   - the guest resolves a name through --dns-forward 192.0.2.53 ->
 *     --dns-host 192.0.2.2 (busybox nslookup), the query leaving from the
 *     host's address;
 *   - sequence-numbered datagrams of 1..65000 bytes echo back intact over
 *     IPv4 and IPv6 (stop and wait, FERRY_UDP_E2E_COUNT per family);
 *   - a datagram to a closed port gives the guest ECONNREFUSED (ICMP and
 *     ICMPv6 port unreachable relayed from the error queue);
 *   - host clients in the peer namespace (IPv4 and IPv6) and one on the
 *     test namespace's loopback reach a UDP server in the guest through
 *     -u 5555 (the loopback one seen by the guest as the gateway; IPv6 ones
 *     reach the guest's SLAAC address once it has been seen).
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, spawnIn, stopChild, type TestNetwork } from '../../support/netns';
import { bootGuest, type Guest, REPO_ROOT, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from '../../support/e2e/ferry-process';
import type { ChildProcess } from 'child_process';

const DNS_FORWARD = '192.0.2.53';
const TEST_NAME = 'ferry-test.example';
const TEST_NAME_V4 = '203.0.113.7';
const ECHO_PORT = 7007;
const FORWARD_PORT = 5555;
/** Datagrams per family (the 10,000: about 5 s per family under TCG, stop and wait). */
const ECHO_COUNT = Number(process.env.FERRY_UDP_E2E_COUNT ?? 10000);

/** The servers of the outside world, run by node in the peer namespace. */
const PEER_SERVERS = `
const dgram = require('dgram');
const log = (line) => process.stdout.write(line + '\\n');
for (const [type, address] of [['udp4', '192.0.2.2'], ['udp6', '2001:db8::2']]) {
  const s = dgram.createSocket({ type, ipv6Only: type === 'udp6', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
  let count = 0;
  s.on('message', (m, r) => { count++; s.send(m, r.port, r.address); });
  s.bind(${ECHO_PORT}, address, () => log('READY echo ' + type));
  setInterval(() => log('ECHOED ' + type + ' ' + count), 1000).unref();
}
// A tiny DNS responder: one A / AAAA record, NXDOMAIN otherwise.
const dns = dgram.createSocket('udp4');
dns.on('message', (q, r) => {
  if (q.length < 12) return;
  let at = 12;
  const labels = [];
  for (let i = 0; i < 64 && at < q.length && q[at] !== 0; i++) { labels.push(q.subarray(at + 1, at + 1 + q[at]).toString()); at += 1 + q[at]; }
  const end = at + 5;
  if (end > q.length) return;
  const name = labels.join('.').toLowerCase();
  const type = q.readUInt16BE(at + 1);
  const known = name === '${TEST_NAME}';
  const rdata = !known ? null : type === 1 ? Buffer.from([203, 0, 113, 7]) : type === 28 ? Buffer.from('20010db8000000000000000000000007', 'hex') : null;
  const header = Buffer.alloc(12);
  q.copy(header, 0, 0, 2);
  header.writeUInt16BE(known ? 0x8180 : 0x8183, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(rdata ? 1 : 0, 6);
  const parts = [header, q.subarray(12, end)];
  if (rdata) {
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0); rr.writeUInt16BE(type, 2); rr.writeUInt16BE(1, 4); rr.writeUInt32BE(60, 6); rr.writeUInt16BE(rdata.length, 10);
    parts.push(rr, rdata);
  }
  log('DNS ' + name + ' type ' + type + ' from ' + r.address);
  dns.send(Buffer.concat(parts), r.port, r.address);
});
dns.bind(53, '192.0.2.2', () => log('READY dns'));
`;

/** A client bound to SOURCE that knocks on ADDR:PORT every 300 ms until a reply (at most 300 tries). */
const FORWARD_CLIENT = `
const dgram = require('dgram');
const [address, port, message, source] = process.argv.slice(2);
const s = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
let tries = 0;
s.on('message', (m, r) => { process.stdout.write('REPLY ' + m.toString() + ' FROM ' + r.address + ':' + r.port + '\\n'); process.exit(0); });
s.on('error', () => undefined);
const knock = () => { if (tries++ >= 300) { process.stdout.write('NO REPLY\\n'); process.exit(1); } s.send(message, Number(port), address); };
s.bind(0, source, () => { knock(); setInterval(knock, 300); });
`;

/** The guest's /test.sh around the helper (gzip + base64 inside the script). */
function guestScript(toolGzBase64: string): string {
  return `T=/tmp/udp-tool
base64 -d <<'B64' | gunzip > $T
${toolGzBase64}
B64
chmod +x $T
say() { echo "FERRY-GUEST: $*"; }
: > /tmp/serve.log
$T serve ${FORWARD_PORT} 50 200 > /tmp/serve.log 2>&1 &
SERVE=$!
i=0; while ! grep -q 'serve ready' /tmp/serve.log && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
say "udp-serve $(head -n 1 /tmp/serve.log)"
nslookup ${TEST_NAME} ${DNS_FORWARD} > /tmp/ns.log 2>&1
say "nslookup exit $?"
sed 's/^/FERRY-GUEST: ns| /' /tmp/ns.log
say "refused4 $($T refused 192.0.2.2 9 2>&1)"
say "refused6 $($T refused 2001:db8::2 9 2>&1)"
say "echo4 $($T echo 192.0.2.2 ${ECHO_PORT} ${ECHO_COUNT} 2>&1 | tail -n 3 | tr '\\n' ' ')"
say "echo6 $($T echo 2001:db8::2 ${ECHO_PORT} ${ECHO_COUNT} 2>&1 | tail -n 3 | tr '\\n' ' ')"
# The host clients knock every 300 ms: give them time to be answered twice.
i=0; while [ "$(grep -c 'serve got' /tmp/serve.log)" -lt 3 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
kill $SERVE 2>/dev/null
say "serve-log $(grep 'serve got' /tmp/serve.log | tr '\\n' ';')"
exit 0
`;
}

describe('e2e: UDP, DNS forwarding and ICMP errors through ferry (real guest)', function () {
  this.timeout(400000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let servers: ChildProcess | null = null;
  const clients: { child: ChildProcess; output: () => string }[] = [];
  let serverLog = '';
  let workDir = '';
  let exitCode: number | null = null;
  let bootError: Error | null = null;

  function capture(child: ChildProcess): () => string {
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
    return () => out;
  }

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    const built = spawnSync(path.join(REPO_ROOT, 'scripts', 'build-guest-tools.sh'), [], { encoding: 'utf8', timeout: 120000 });
    if (built.status !== 0) throw new Error(`scripts/build-guest-tools.sh failed:\n${built.stderr}`);
    const toolPath = built.stdout.trim().split('\n').pop() ?? '';
    const { gzipSync } = await import('zlib');
    const toolGz = gzipSync(fs.readFileSync(toolPath), { level: 9 }).toString('base64').replace(/(.{76})/g, '$1\n');

    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-udp-'));
    const serversJs = path.join(workDir, 'servers.js');
    const clientJs = path.join(workDir, 'client.js');
    fs.writeFileSync(serversJs, PEER_SERVERS);
    fs.writeFileSync(clientJs, FORWARD_CLIENT);
    servers = spawnIn(net.peerNs, [process.execPath, serversJs]);
    const serverOutput = capture(servers);
    const deadline = Date.now() + 10000;
    while ((serverOutput().match(/READY/g) ?? []).length < 3) {
      if (Date.now() > deadline || servers.exitCode !== null) throw new Error(`peer servers did not start:\n${serverOutput()}`);
      await new Promise((r) => setTimeout(r, 50));
    }

    const socketPath = path.join(workDir, 'ferry.sock');
    ferry = await startFerry(net.ns, socketPath, [
      '--dns', DNS_FORWARD,
      '--dns-forward', DNS_FORWARD,
      '--dns-host', '192.0.2.2',
      '-u', String(FORWARD_PORT),
    ]);
    // Knocking from before the boot: the server in the guest answers once it is up.
    // The peer namespace also holds the router address: bind the server address so the sender is unambiguous.
    for (const [ns, address, message, source] of [
      [net.peerNs, '192.0.2.1', 'from-peer', '192.0.2.2'],
      [net.peerNs, '2001:db8::1', 'from-peer6', '2001:db8::2'],
      [net.ns, '127.0.0.1', 'from-loopback', '127.0.0.1'],
    ] as const) {
      const child = spawnIn(ns, [process.execPath, clientJs, address, String(FORWARD_PORT), message, source]);
      clients.push({ child, output: capture(child) });
    }
    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath },
      testScript: guestScript(toolGz),
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=5', 'ferry.test_timeout=300'],
      timeoutMs: 360000,
    });
    try {
      exitCode = await guest.waitDone(350000);
    } catch (err) {
      bootError = err as Error;
    }
    serverLog = serverOutput();
  });

  after(async function () {
    for (const c of clients) await stopChild(c.child, 1000);
    if (servers) await stopChild(servers, 1000);
    if (guest) await guest.destroy();
    if (ferry) await ferry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  });

  function marker(name: string): string | null {
    const m = new RegExp(`FERRY-GUEST: ${name} (.*?)\\r?\\n`).exec(guest?.vm.serialLines ?? '');
    return m ? m[1] : null;
  }

  function diagnostics(): string {
    return (
      `${guest?.vm.diagnostics(60) ?? ''}\n--- peer servers ---\n${serverLog.split('\n').filter((l) => !l.startsWith('ECHOED')).slice(-20).join('\n')}` +
      `\n--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`
    );
  }

  it('the guest test script runs to the end', function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(exitCode, diagnostics()).to.equal(0);
  });

  it('the guest resolves a name through --dns-forward, answered by the test DNS server from the host address', function () {
    expect(marker('nslookup exit'), diagnostics()).to.equal('0');
    const lines = (guest?.vm.serialLines ?? '').split('\n').filter((l) => l.includes('FERRY-GUEST: ns| ')).join('\n');
    expect(lines, diagnostics()).to.include(TEST_NAME_V4);
    expect(lines).to.include(DNS_FORWARD);
    expect(serverLog, diagnostics()).to.match(new RegExp(`DNS ${TEST_NAME.replace(/\./g, '\\.')} type 1 from 192\\.0\\.2\\.1\\n`));
  });

  it('a datagram to a closed port gives the guest ECONNREFUSED over IPv4 and IPv6', function () {
    expect(marker('refused4'), diagnostics()).to.equal('refused');
    expect(marker('refused6'), diagnostics()).to.equal('refused');
  });

  for (const family of ['4', '6']) {
    it(`${ECHO_COUNT} sequence-numbered datagrams of 1..65000 bytes echo back intact over IPv${family}`, function () {
      const line = marker(`echo${family}`) ?? '';
      expect(line, diagnostics()).to.match(new RegExp(`echo ok ${ECHO_COUNT} lost 0 bad 0 bytes \\d+`));
    });
  }

  it('host clients reach a UDP server in the guest through -u over IPv4 and IPv6 (a loopback client appears as the gateway)', function () {
    const serve = marker('serve-log') ?? '';
    expect(serve, diagnostics()).to.match(/serve got 9 from ::ffff:192\.0\.2\.2:\d+/);
    expect(serve, diagnostics()).to.match(/serve got 10 from 2001:db8::2:\d+/);
    expect(serve, diagnostics()).to.match(/serve got 13 from ::ffff:192\.0\.2\.254:\d+/);
    const [peer, peer6, loopback] = clients.map((c) => c.output());
    expect(peer, diagnostics()).to.match(/^REPLY from-peer FROM 192\.0\.2\.1:5555$/m);
    expect(peer6, diagnostics()).to.match(/^REPLY from-peer6 FROM 2001:db8::1:5555$/m);
    expect(loopback, diagnostics()).to.match(/^REPLY from-loopback FROM 127\.0\.0\.1:5555$/m);
  });
});
