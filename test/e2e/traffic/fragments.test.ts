/**
 * Fragments from a real Linux guest, in one boot: the guest lowers its
 * eth0 MTU to 1500 (ferry keeps announcing 65520, so what comes back
 * arrives in one frame), then sends what its kernel must fragment:
 *   - ping -s 3000 to the peer server over IPv4 and IPv6 (ferry's echo
 *     socket sends the whole request, the peer answers);
 *   - UDP datagrams of 4000 bytes and more (the udp-tool echo sequence,
 *     up to 65000 bytes) to a UDP echo server in the peer namespace,
 *     which must see them whole and echo them back intact.
 */
import { expect } from 'chai';
import { spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { TEST_NET, createTestNetwork, destroyTestNetwork, spawnIn, stopChild, type TestNetwork } from '../../support/netns';
import { bootGuest, type Guest, REPO_ROOT, pingScript, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from '../../support/e2e/ferry-process';

const ECHO_PORT = 7007;
const PING_BYTES = 3000;
const UDP_BYTES = 4000;
/** The udp-tool echo sequence: datagram 1 is 65000 bytes, every 10th a random size up to it. */
const ECHO_COUNT = 30;
const GUEST_MTU = 1500;

/** A UDP echo server on the peer's addresses that logs every size it receives. */
const PEER_ECHO = `
const dgram = require('dgram');
for (const [type, address] of [['udp4', '${TEST_NET.serverV4}'], ['udp6', '${TEST_NET.serverV6}']]) {
  const s = dgram.createSocket({ type, ipv6Only: type === 'udp6', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
  s.on('message', (m, r) => { process.stdout.write('GOT ' + type + ' ' + m.length + '\\n'); s.send(m, r.port, r.address); });
  s.bind(${ECHO_PORT}, address, () => process.stdout.write('READY ' + type + '\\n'));
}
`;

function guestScript(toolGzBase64: string): string {
  return `T=/tmp/udp-tool
base64 -d <<'B64' | gunzip > $T
${toolGzBase64}
B64
chmod +x $T
say() { echo "FERRY-GUEST: $*"; }
ip link set dev eth0 mtu ${GUEST_MTU}
say "mtu $(cat /sys/class/net/eth0/mtu)"
${pingScript([TEST_NET.serverV4, TEST_NET.serverV6], 3, 0.5, PING_BYTES)}
say "echo4 $($T echo ${TEST_NET.serverV4} ${ECHO_PORT} ${ECHO_COUNT} 2>&1 | tail -n 3 | tr '\\n' ' ')"
say "echo6 $($T echo ${TEST_NET.serverV6} ${ECHO_PORT} ${ECHO_COUNT} 2>&1 | tail -n 3 | tr '\\n' ' ')"
exit 0
`;
}

describe(`e2e: fragments from a guest at MTU ${GUEST_MTU} are reassembled (real guest)`, function () {
  this.timeout(300000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let server: ChildProcess | null = null;
  let serverOutput: () => string = () => '';
  let workDir = '';
  let exitCode: number | null = null;
  let bootError: Error | null = null;

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    const built = spawnSync(path.join(REPO_ROOT, 'scripts', 'build-guest-tools.sh'), [], { encoding: 'utf8', timeout: 120000 });
    if (built.status !== 0) throw new Error(`scripts/build-guest-tools.sh failed:\n${built.stderr}`);
    const toolPath = built.stdout.trim().split('\n').pop() ?? '';
    const { gzipSync } = await import('zlib');
    const toolGz = gzipSync(fs.readFileSync(toolPath), { level: 9 }).toString('base64').replace(/(.{76})/g, '$1\n');

    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-frag-'));
    const serverJs = path.join(workDir, 'echo.js');
    fs.writeFileSync(serverJs, PEER_ECHO);
    server = spawnIn(net.peerNs, [process.execPath, serverJs]);
    let out = '';
    server.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    server.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
    serverOutput = () => out;
    const deadline = Date.now() + 10000;
    while ((out.match(/READY/g) ?? []).length < 2) {
      if (Date.now() > deadline || server.exitCode !== null) throw new Error(`peer echo server did not start:\n${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const socketPath = path.join(workDir, 'ferry.sock');
    ferry = await startFerry(net.ns, socketPath, []);
    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath },
      testScript: guestScript(toolGz),
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=5', 'ferry.test_timeout=200'],
      timeoutMs: 250000,
    });
    try {
      exitCode = await guest.waitDone(240000);
    } catch (err) {
      bootError = err as Error;
    }
  });

  after(async function () {
    if (server) await stopChild(server, 1000);
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
    const sizes = serverOutput().split('\n').filter((l) => l.startsWith('GOT')).slice(-10).join('\n');
    return `${guest?.vm.diagnostics(60) ?? ''}\n--- peer echo ---\n${sizes}\n--- ferry log ---\n${ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`;
  }

  it(`the guest runs its script to the end with eth0 at MTU ${GUEST_MTU}`, function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(exitCode, diagnostics()).to.equal(0);
    expect(marker('mtu'), diagnostics()).to.equal(String(GUEST_MTU));
  });

  for (const target of [TEST_NET.serverV4, TEST_NET.serverV6]) {
    it(`ping -c3 -s ${PING_BYTES} ${target} (fragmented by the guest) gets 3 replies`, function () {
      const result = guest?.pings().get(`${target}@${PING_BYTES}`);
      expect(result, diagnostics()).to.deep.equal({ transmitted: 3, received: 3, exitCode: 0 });
    });
  }

  for (const [family, type] of [['4', 'udp4'], ['6', 'udp6']] as const) {
    it(`IPv${family}: UDP datagrams from ${UDP_BYTES} to 65000 bytes reach the server whole and echo back intact`, function () {
      expect(marker(`echo${family}`) ?? '', diagnostics()).to.match(new RegExp(`echo ok ${ECHO_COUNT} lost 0 bad 0 bytes \\d+`));
      const sizes = [...serverOutput().matchAll(new RegExp(`^GOT ${type} (\\d+)$`, 'gm'))].map((m) => Number(m[1]));
      expect(sizes, diagnostics()).to.include(65000);
      expect(sizes.filter((s) => s >= UDP_BYTES).length, diagnostics()).to.be.at.least(2);
    });
  }
});
