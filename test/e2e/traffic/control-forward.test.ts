/**
 * The control API with a real guest, driven by the real ferryctl: ferry
 * runs in a test namespace with --control and --metrics unix:PATH, a guest
 * boots once and runs echo servers on TCP port 80 (busybox nc) and UDP
 * port 53 (udp-tool from scripts/build-guest-tools.sh), and then,
 * from the peer namespace (the outside world):
 *   - `ferryctl forward add tcp 8080:80` makes 192.0.2.1:8080 reach the
 *     guest's port 80; 200 kB go there and come back intact; a second add
 *     of the same port is a conflict, as is a port something on the host
 *     already listens on; `forward list` shows the rule;
 *   - `ferryctl flows` lists the connection (inbound, established, with
 *     the bytes each way), `--json flows` gives its id, and
 *     `ferryctl close ID` resets it: the peer sees ECONNRESET, the flow is
 *     gone from the list;
 *   - the metrics endpoint shows ferry_frames_total and
 *     ferry_flows{protocol="tcp",state="established"} moving with it;
 *   - `ferryctl forward remove tcp 8080` makes the port refuse connections,
 *     and a second remove is "not found";
 *   - a UDP forward carries a datagram to the guest's echo server and back,
 *     its flow is listed (inbound, bytes both ways) and closed, and the
 *     port is unbound on remove; a range is removed a port at a time;
 *   - malformed requests (garbage frames, bad specs, unknown flow ids) get
 *     error replies and ferry keeps serving.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { gzipSync } from 'zlib';
import { decodeResponse, frame, FrameReader } from '../../../src/backend/control/control-protocol';
import type { FlowInfo, ForwardInfo } from '../../../src/backend/control/control-protocol';
import { bootGuest, type Guest, REPO_ROOT, requireGuestPrerequisites } from '../../support/guest';
import { createTestNetwork, destroyTestNetwork, runInChecked, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from '../../support/e2e/ferry-process';

/** Resolver given to ferry so the guest is never told about the machine's real one. */
const TEST_DNS_V4 = '192.0.2.53';
const HOST_PORT = 8080;
const GUEST_PORT = 80;
/** The guest's UDP echo server (test/guest/udp-tool.c serve: busybox nc has no UDP). */
const UDP_HOST_PORT = 5353;
const UDP_GUEST_PORT = 53;
/** Bytes sent through the forward and echoed back. */
const ECHO_BYTES = 200_000;

/** Run bin/ferryctl.js against `controlPath` to completion. */
function ferryctl(controlPath: string, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'ferryctl.js'), '--control', controlPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

/** ferryctl --json COMMAND, expecting success; the parsed document. */
async function ferryctlJson<T>(controlPath: string, argv: string[]): Promise<T> {
  const result = await ferryctl(controlPath, ['--json', ...argv]);
  expect(result.code, `ferryctl ${argv.join(' ')}: ${result.stderr}`).to.equal(0);
  return JSON.parse(result.stdout) as T;
}

/** Send raw bytes on a new connection to the control socket; the first framed response. */
function rawExchange(socketPath: string, bytes: Buffer): Promise<ReturnType<typeof decodeResponse>> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath, () => socket.write(bytes));
    const reader = new FrameReader(1 << 20);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no response within 5 s'));
    }, 5000);
    socket.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      const next = reader.next();
      if (next.kind !== 'frame') return;
      clearTimeout(timer);
      socket.destroy();
      resolve(decodeResponse(next.body));
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** GET /metrics over the UNIX socket. */
function scrape(metricsPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = http.get({ socketPath: metricsPath, path: '/metrics', timeout: 5000 }, (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (d: string) => (body += d));
      response.on('end', () => resolve(body));
    });
    request.on('timeout', () => request.destroy(new Error('metrics scrape timed out')));
    request.on('error', reject);
  });
}

/** Sum of the samples of `metric` whose labels include every `labels` pair. */
function metricSum(text: string, metric: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== metric) continue;
    const set = m[2] ?? '';
    if (Object.entries(labels).every(([name, value]) => set.includes(`${name}="${value}"`))) sum += Number(m[3]);
  }
  return sum;
}

/**
 * A Node.js script run in a namespace: connects to HOST PORT from LOCAL, sends SIZE
 * random bytes, says "echoed N" when they came back intact, then holds the
 * connection until it ends; says "connected LOCALPORT", "error CODE",
 * "closed" or "timeout" (60 s bound) as things happen.
 */
const ECHO_CLIENT = `
const net = require('net');
const crypto = require('crypto');
const [host, port, size] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const say = (s) => process.stdout.write(s + '\\n');
const data = crypto.randomBytes(size);
const chunks = [];
let received = 0;
const timer = setTimeout(() => { say('timeout'); process.exit(3); }, 60000);
// From the server address (the peer's first address is the router's).
const socket = net.createConnection({ host, port, localAddress: process.argv[4] });
socket.on('connect', () => { say('connected ' + socket.localPort); if (size > 0) socket.write(data); });
socket.on('data', (d) => {
  chunks.push(d);
  received += d.length;
  if (received === size) say(Buffer.concat(chunks).equals(data) ? 'echoed ' + received : 'mismatch');
  else if (received > size) say('mismatch');
});
socket.on('error', (e) => { say('error ' + e.code); clearTimeout(timer); process.exit(0); });
socket.on('close', () => { say('closed'); clearTimeout(timer); process.exit(0); });
`;

/**
 * A UDP client bound to LOCAL: sends MESSAGE to HOST PORT every 300 ms
 * until a reply (at most 100 tries); says "reply TEXT" or "no reply".
 */
const UDP_CLIENT = `
const dgram = require('dgram');
const [host, port, message, local] = process.argv.slice(1);
const socket = dgram.createSocket('udp4');
let tries = 0;
socket.on('message', (m) => { process.stdout.write('reply ' + m.toString() + '\\n'); process.exit(0); });
socket.on('error', () => undefined);
const knock = () => { if (tries++ >= 100) { process.stdout.write('no reply\\n'); process.exit(1); } socket.send(message, Number(port), host); };
socket.bind(0, local, () => { knock(); setInterval(knock, 300); });
`;

/** A TCP listener on 0.0.0.0:PORT, to hold a host port; says "listening". */
const PORT_HOLDER = `
const server = require('net').createServer(() => undefined);
server.listen(Number(process.argv[1]), '0.0.0.0', () => process.stdout.write('listening\\n'));
setTimeout(() => process.exit(0), 60000);
`;

/** A node script running in a namespace, with its output lines. */
class NodeInNamespace {
  readonly child: ChildProcess;
  private output = '';

  constructor(ns: string, script: string, args: string[]) {
    this.child = spawnIn(ns, [process.execPath, '-e', script, ...args]);
    this.child.stdout?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
  }

  /** Everything it printed so far. */
  get text(): string {
    return this.output;
  }

  /** The first match of `re` in its output; rejects after timeoutMs. */
  async waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.output);
      if (m !== null) return m;
      if (Date.now() > deadline) throw new Error(`${re} not seen within ${timeoutMs} ms; output: ${JSON.stringify(this.output)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  stop(): Promise<void> {
    return stopChild(this.child, 1000);
  }
}

describe('e2e: the control API and ferryctl with a real guest', function () {
  this.timeout(180000);

  let testNet: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let workDir = '';
  let controlPath = '';
  let metricsPath = '';
  const helpers: NodeInNamespace[] = [];

  /** Start a helper script in the peer (outside world) or ferry's namespace. */
  function node(where: 'peer' | 'ferry', script: string, args: string[]): NodeInNamespace {
    if (testNet === null) throw new Error('no test network');
    const helper = new NodeInNamespace(where === 'peer' ? testNet.peerNs : testNet.ns, script, args);
    helpers.push(helper);
    return helper;
  }

  function diagnostics(): string {
    return `--- guest ---\n${guest?.vm.diagnostics() ?? ''}\n--- ferry log ---\n${ferry?.log().split('\n').slice(-40).join('\n') ?? ''}`;
  }

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    const built = spawnSync(path.join(REPO_ROOT, 'scripts', 'build-guest-tools.sh'), [], { encoding: 'utf8', timeout: 120000 });
    if (built.status !== 0) throw new Error(`scripts/build-guest-tools.sh failed:\n${built.stderr}`);
    // The last line is udp-tool's path.
    const udpTool = gzipSync(fs.readFileSync(built.stdout.trim().split('\n').pop() ?? ''), { level: 9 }).toString('base64').replace(/(.{76})/g, '$1\n');
    testNet = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-control-e2e-'));
    controlPath = path.join(workDir, 'control.sock');
    metricsPath = path.join(workDir, 'metrics.sock');
    const socketPath = path.join(workDir, 'ferry.sock');
    ferry = await startFerry(testNet.ns, socketPath, ['--control', controlPath, '--metrics', `unix:${metricsPath}`, '--dns', TEST_DNS_V4]);
    guest = bootGuest({
      net: testNet,
      nic: { kind: 'vhost-user', socketPath },
      // An echo server on port 80 (a process per connection), kept up while the test runs; the test kills QEMU at the end.
      testScript: [
        `base64 -d <<'B64' | gunzip > /tmp/udp-tool`,
        udpTool,
        'B64',
        'chmod +x /tmp/udp-tool',
        `nc -ll -p ${GUEST_PORT} -e cat &`,
        `/tmp/udp-tool serve ${UDP_GUEST_PORT} 1000 150 > /tmp/udp.log 2>&1 &`,
        'sleep 1',
        'echo "FERRY-GUEST: echo server up"',
        'sleep 150',
        '',
      ].join('\n'),
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=0', 'ferry.test_timeout=160'],
      timeoutMs: 175000,
    });
    try {
      await guest.waitForMarker('echo server up', 90000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${diagnostics()}`);
    }
  });

  after(async function () {
    for (const helper of helpers) await helper.stop();
    if (guest) await guest.destroy();
    if (ferry) await ferry.stop();
    if (testNet) await destroyTestNetwork(testNet);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    guest = null;
    ferry = null;
    testNet = null;
  });

  it('forwards added at run time carry traffic, list, close and remove as ferryctl says', async function () {
    // No rule yet: nothing listens on the port.
    const before = await ferryctlJson<{ forwards: ForwardInfo[] }>(controlPath, ['forward', 'list']);
    expect(before.forwards ?? []).to.deep.equal([]);

    const added = await ferryctl(controlPath, ['forward', 'add', 'tcp', `${HOST_PORT}:${GUEST_PORT}`]);
    expect(added.code, added.stderr + diagnostics()).to.equal(0);
    const listed = await ferryctlJson<{ forwards: ForwardInfo[] }>(controlPath, ['forward', 'list']);
    expect(listed.forwards).to.have.length(1);
    expect(listed.forwards[0]).to.deep.include({ protocol: 'tcp', spec: `${HOST_PORT}:${GUEST_PORT}`, runtime: true });
    expect(listed.forwards[0].mappings).to.deep.equal([{ hostPortFirst: HOST_PORT, hostPortLast: HOST_PORT, guestPortFirst: GUEST_PORT }]);
    const table = await ferryctl(controlPath, ['forward', 'list']);
    expect(table.stdout).to.include(`${HOST_PORT}:${GUEST_PORT}`);

    const again = await ferryctl(controlPath, ['forward', 'add', 'tcp', `${HOST_PORT}`]);
    expect(again.code).to.equal(1);
    expect(again.stderr).to.match(/conflict: .*already forwarded/);

    const metricsBefore = await scrape(metricsPath);

    // Traffic from the outside world through the forward to the guest's echo server.
    const client = node('peer', ECHO_CLIENT, [TEST_NET.hostV4, String(HOST_PORT), String(ECHO_BYTES), TEST_NET.serverV4]);
    const connected = await client.waitFor(/connected (\d+)/, 20000);
    const clientPort = Number(connected[1]);
    try {
      await client.waitFor(/echoed \d+|mismatch|error|closed|timeout/, 60000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${diagnostics()}`);
    }
    expect(client.text, diagnostics()).to.include(`echoed ${ECHO_BYTES}`);

    // The connection as ferryctl shows it, held open by the client.
    const flows = await ferryctlJson<{ flows: FlowInfo[] }>(controlPath, ['flows', 'tcp']);
    const flow = (flows.flows ?? []).find((f) => f.remotePort === clientPort && f.guestPort === GUEST_PORT);
    expect(flow, JSON.stringify(flows)).to.not.equal(undefined);
    if (flow === undefined) return;
    expect(flow).to.deep.include({ protocol: 'tcp', inbound: true, state: 'established', guestAddress: TEST_NET.hostV4, remoteAddress: TEST_NET.serverV4, queuePair: 0 });
    expect(flow.bytesFromGuest).to.equal(ECHO_BYTES);
    expect(flow.bytesToGuest).to.equal(ECHO_BYTES);
    expect(flow.ageMs).to.be.a('number').and.to.be.at.least(0);
    const flowTable = await ferryctl(controlPath, ['flows']);
    expect(flowTable.code).to.equal(0);
    const row = flowTable.stdout.split('\n').find((line) => line.trim().startsWith(`${flow.id} `));
    expect(row, flowTable.stdout).to.match(/tcp\s+established\s+in\s+192\.0\.2\.1:80\s+192\.0\.2\.2:\d+/);

    // The metrics moved with the traffic.
    const metricsDuring = await scrape(metricsPath);
    expect(metricSum(metricsDuring, 'ferry_frames_total') - metricSum(metricsBefore, 'ferry_frames_total')).to.be.at.least(10);
    expect(metricSum(metricsBefore, 'ferry_flows', { protocol: 'tcp', state: 'established' })).to.equal(0);
    expect(metricSum(metricsDuring, 'ferry_flows', { protocol: 'tcp', state: 'established' })).to.equal(1);

    // Closing the flow resets the peer's connection and removes it.
    const closed = await ferryctl(controlPath, ['close', String(flow.id)]);
    expect(closed.code, closed.stderr).to.equal(0);
    await client.waitFor(/error ECONNRESET/, 10000);
    const deadline = Date.now() + 5000;
    let left: FlowInfo[] = [];
    do {
      left = (await ferryctlJson<{ flows: FlowInfo[] }>(controlPath, ['flows'])).flows ?? [];
    } while (left.some((f) => f.id === flow.id) && Date.now() < deadline && (await new Promise((r) => setTimeout(r, 100))) === undefined);
    expect(left.map((f) => f.id)).to.not.include(flow.id);
    expect(metricSum(await scrape(metricsPath), 'ferry_flows', { protocol: 'tcp', state: 'established' })).to.equal(0);
    const closedAgain = await ferryctl(controlPath, ['close', String(flow.id)]);
    expect(closedAgain.code).to.equal(1);
    expect(closedAgain.stderr).to.match(/not found/);

    // Removed: the port refuses.
    const removed = await ferryctl(controlPath, ['forward', 'remove', 'tcp', String(HOST_PORT)]);
    expect(removed.code, removed.stderr).to.equal(0);
    const refused = node('peer', ECHO_CLIENT, [TEST_NET.hostV4, String(HOST_PORT), '0', TEST_NET.serverV4]);
    await refused.waitFor(/error ECONNREFUSED/, 10000);
    const removedAgain = await ferryctl(controlPath, ['forward', 'remove', 'tcp', String(HOST_PORT)]);
    expect(removedAgain.code).to.equal(1);
    expect(removedAgain.stderr).to.match(/not found/);
    expect((await ferryctlJson<{ forwards?: ForwardInfo[] }>(controlPath, ['forward', 'list'])).forwards ?? []).to.deep.equal([]);
  });

  it('refuses a port the host already listens on, and leaves nothing of that rule behind', async function () {
    const holder = node('ferry', PORT_HOLDER, ['9090']);
    await holder.waitFor(/listening/, 10000);
    const result = await ferryctl(controlPath, ['forward', 'add', 'tcp', '9090:80']);
    expect(result.code).to.equal(1);
    expect(result.stderr).to.match(/conflict: .*EADDRINUSE/);
    expect((await ferryctlJson<{ forwards?: ForwardInfo[] }>(controlPath, ['forward', 'list'])).forwards ?? []).to.deep.equal([]);
    await holder.stop();
    // Once the host lets go of it, the same rule goes in.
    expect((await ferryctl(controlPath, ['forward', 'add', 'tcp', '9090:80'])).code).to.equal(0);
    expect((await ferryctl(controlPath, ['forward', 'remove', 'tcp', '9090'])).code).to.equal(0);
  });

  /** UDP ports bound in ferry's namespace (ss, no packets). */
  async function boundUdpPorts(): Promise<number[]> {
    if (testNet === null) return [];
    const out = await runInChecked(testNet.ns, ['ss', '-Hlun']);
    return [...out.matchAll(/:(\d+)\s/g)].map((m) => Number(m[1]));
  }

  it('carries UDP through a forward added at run time, lists and closes its flow, and unbinds on remove', async function () {
    expect((await ferryctl(controlPath, ['forward', 'add', 'udp', `${UDP_HOST_PORT}:${UDP_GUEST_PORT}`])).code).to.equal(0);
    expect(await boundUdpPorts()).to.include(UDP_HOST_PORT);
    const client = node('peer', UDP_CLIENT, [TEST_NET.hostV4, String(UDP_HOST_PORT), 'hello-ferry', TEST_NET.serverV4]);
    try {
      await client.waitFor(/reply hello-ferry|no reply/, 40000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${diagnostics()}`);
    }
    expect(client.text, diagnostics()).to.include('reply hello-ferry');
    const flows = (await ferryctlJson<{ flows?: FlowInfo[] }>(controlPath, ['flows', 'udp'])).flows ?? [];
    const flow = flows.find((f) => f.guestPort === UDP_GUEST_PORT && f.remoteAddress === TEST_NET.serverV4);
    expect(flow, JSON.stringify(flows)).to.not.equal(undefined);
    if (flow === undefined) return;
    expect(flow).to.deep.include({ protocol: 'udp', inbound: true, state: 'inbound', guestAddress: TEST_NET.hostV4 });
    expect(flow.bytesToGuest).to.be.at.least('hello-ferry'.length);
    expect(flow.bytesFromGuest).to.be.at.least('hello-ferry'.length);
    expect((await ferryctl(controlPath, ['close', String(flow.id)])).code).to.equal(0);
    const after = (await ferryctlJson<{ flows?: FlowInfo[] }>(controlPath, ['flows', 'udp'])).flows ?? [];
    expect(after.map((f) => f.id)).to.not.include(flow.id);
    expect((await ferryctl(controlPath, ['forward', 'remove', 'udp', String(UDP_HOST_PORT)])).code).to.equal(0);
    expect(await boundUdpPorts()).to.not.include(UDP_HOST_PORT);
  });

  it('adds, lists and removes UDP forwards, part of a range at a time', async function () {
    expect((await ferryctl(controlPath, ['forward', 'add', 'udp', '5300-5303:53-56'])).code).to.equal(0);
    expect((await ferryctl(controlPath, ['forward', 'remove', 'udp', '5301'])).code).to.equal(0);
    const listed = await ferryctlJson<{ forwards: ForwardInfo[] }>(controlPath, ['forward', 'list']);
    expect(listed.forwards).to.have.length(1);
    expect(listed.forwards[0]).to.deep.include({ protocol: 'udp', spec: '5300-5303:53-56', runtime: true });
    expect(listed.forwards[0].mappings).to.deep.equal([
      { hostPortFirst: 5300, hostPortLast: 5300, guestPortFirst: 53 },
      { hostPortFirst: 5302, hostPortLast: 5303, guestPortFirst: 55 },
    ]);
    const bound = await boundUdpPorts();
    expect(bound).to.include.members([5300, 5302, 5303]);
    expect(bound).to.not.include(5301);
    expect((await ferryctl(controlPath, ['forward', 'remove', 'udp', '5300-5303'])).code).to.equal(0);
    expect((await ferryctl(controlPath, ['forward', 'remove', 'udp', '5300'])).code).to.equal(1);
    expect((await boundUdpPorts()).filter((port) => port >= 5300 && port <= 5303)).to.deep.equal([]);
  });

  it('answers malformed requests with errors and keeps serving', async function () {
    const garbage = await rawExchange(controlPath, frame(Buffer.from([0x52, 0x05, 0x01])));
    expect(garbage.status).to.equal('BAD_REQUEST');
    const badSpec = await ferryctl(controlPath, ['forward', 'add', 'tcp', '99999:80']);
    expect(badSpec.code).to.equal(1);
    expect(badSpec.stderr).to.match(/bad request/);
    const unknownFlow = await ferryctl(controlPath, ['close', '987654321']);
    expect(unknownFlow.code).to.equal(1);
    expect(unknownFlow.stderr).to.match(/not found/);
    const oversized = Buffer.alloc(4);
    oversized.writeUInt32BE(0xffffffff, 0);
    expect((await rawExchange(controlPath, oversized)).status).to.equal('BAD_REQUEST');
    expect((await ferryctl(controlPath, ['stats'])).code).to.equal(0);
    expect(ferry?.child.exitCode ?? null, diagnostics()).to.equal(null);
  });
});
