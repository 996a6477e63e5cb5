/**
 * pasta's control API (--control): one flow table for every kind of flow.
 * A command inside `ferry pasta` opens one flow of each kind at once: a -T
 * relay (tcp-splice), a -U client (udp-forward), an ICMP echo (icmp), a TCP
 * connection and a UDP exchange through the tap to the peer namespace (tcp,
 * udp); a client in the test namespace connects to the host's loopback -t
 * port, spliced into the namespace (tcp-splice, inbound). `ferryctl flows`
 * lists each with its kind, addresses, state and bytes; `ferryctl close`
 * ends each through its own kind, which its peers see.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { FlowInfo } from '../../../src/backend/control/control-protocol';
import { REPO_ROOT } from '../../support/guest';
import { TEST_NET, canCreateNamespaces, createTestNetwork, destroyTestNetwork, run, spawnIn, stopChild, type TestNetwork } from '../../support/netns';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
const T_PORT = 9600; // -T: namespace loopback -> host loopback
const U_PORT = 9601; // -U
const SPLICE_PORT = 9602; // -t, reached from the host's loopback: spliced
const TAP_TCP_PORT = 9603; // through the tap to the peer namespace
const TAP_UDP_PORT = 9604;

/** TCP servers that echo and keep the connection, and UDP echo servers; each line printed on a close. */
function serversSource(tcp: Array<[string, number]>, udp: Array<[string, number]>): string {
  return [
    "const net=require('net'),dgram=require('dgram');let up=0;const want=" + (tcp.length + udp.length) + ';',
    "const ready=()=>{if(++up===want)console.log('ready')};",
    `for(const [a,p] of ${JSON.stringify(tcp)})net.createServer(c=>{c.on('data',d=>c.write(d));c.on('close',()=>console.log('SERVER-CLOSED '+p));c.on('error',()=>undefined)}).listen(p,a,ready);`,
    `for(const [a,p] of ${JSON.stringify(udp)}){const s=dgram.createSocket(a.includes(':')?'udp6':'udp4');s.on('message',(m,r)=>s.send(m,r.port,r.address));s.bind(p,a,ready)}`,
    'setTimeout(()=>process.exit(0),80000).unref();',
  ].join('');
}

/** The command inside pasta: one flow of each kind, READY once every answer came back, then it waits. */
const INSIDE = [
  "const net=require('net'),dgram=require('dgram'),cp=require('child_process');",
  "let left=5;const done=(what)=>{console.log('OK '+what);if(--left===0)console.log('READY')};",
  `net.createServer(c=>{c.on('data',d=>c.write(d));c.on('close',()=>console.log('NS-SERVER-CLOSED'));c.on('error',()=>undefined)}).listen(${SPLICE_PORT},'127.0.0.1',()=>done('listen'));`,
  `const t=net.connect(${T_PORT},'127.0.0.1',()=>t.write('hello-T'));t.once('data',()=>done('T'));t.on('close',()=>console.log('T-CLOSED'));t.on('error',e=>console.log('T-ERROR '+e.code));`,
  `const u=dgram.createSocket('udp4');u.on('message',()=>done('U'));u.send('hello-U',${U_PORT},'127.0.0.1');`,
  `const tap=net.connect(${TAP_TCP_PORT},'${TEST_NET.serverV4}',()=>tap.write('hello-tap'));tap.once('data',()=>done('tap'));tap.on('close',()=>console.log('TAP-CLOSED'));tap.on('error',e=>console.log('TAP-ERROR '+e.code));`,
  `const v=dgram.createSocket('udp4');v.on('message',()=>{});v.send('hello-udp',${TAP_UDP_PORT},'${TEST_NET.serverV4}');`,
  `cp.exec('busybox ping -c 1 -W 2 ${TEST_NET.serverV4}',(e)=>done(e?'ping failed':'ping'));`,
  'setTimeout(()=>process.exit(0),80000).unref();',
].join('');

/** Run bin/ferryctl.js against `controlPath` to completion (bounded). */
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

async function listFlows(controlPath: string): Promise<FlowInfo[]> {
  const result = await ferryctl(controlPath, ['--json', 'flows']);
  expect(result.code, result.stderr).to.equal(0);
  return (JSON.parse(result.stdout) as { flows?: FlowInfo[] }).flows ?? [];
}

/** A child's output so far, and a bounded wait for a pattern in it. */
function watchOutput(child: ChildProcess): { text: () => string; waitFor: (pattern: RegExp, timeoutMs: number) => Promise<void> } {
  let text = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (text += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (text += d));
  return {
    text: () => text,
    waitFor: async (pattern, timeoutMs) => {
      for (let waited = 0; !pattern.test(text); waited += 25) {
        if (waited >= timeoutMs) throw new Error(`timed out waiting for ${pattern}:\n${text}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
  };
}

describe('e2e: ferry pasta --control (every kind of flow listed and closed)', function () {
  this.timeout(120000);
  let net: TestNetwork | null = null;
  let dir = '';
  const children: ChildProcess[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-control-'));
  });

  after(async function () {
    for (const child of children.splice(0).reverse()) await stopChild(child, 3000);
    if (net) await destroyTestNetwork(net);
    net = null;
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  it('lists a flow of each kind with its kind, addresses, state and bytes, and closes each through its kind', async function () {
    const n = net as TestNetwork;
    const controlPath = path.join(dir, 'control.sock');
    const hostServers = spawnIn(n.ns, [process.execPath, '-e', serversSource([['127.0.0.1', T_PORT]], [['127.0.0.1', U_PORT]])]);
    children.push(hostServers);
    const hostOut = watchOutput(hostServers);
    const peerServers = spawnIn(n.peerNs, [process.execPath, '-e', serversSource([[TEST_NET.serverV4, TAP_TCP_PORT]], [[TEST_NET.serverV4, TAP_UDP_PORT]])]);
    children.push(peerServers);
    const peerOut = watchOutput(peerServers);
    await hostOut.waitFor(/ready/, 10000);
    await peerOut.waitFor(/ready/, 10000);

    const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '--control', controlPath, '-T', String(T_PORT), '-U', String(U_PORT), '-t', String(SPLICE_PORT), '--', process.execPath, '-e', INSIDE]);
    children.push(ferry);
    const inside = watchOutput(ferry);
    await inside.waitFor(/READY/, 30000);
    expect(inside.text()).to.not.include('ping failed');

    // A client on the test namespace's loopback: its -t connection is spliced into the namespace.
    const hostClient = spawnIn(n.ns, [
      process.execPath,
      '-e',
      `const c=require('net').connect(${SPLICE_PORT},'127.0.0.1',()=>c.write('hello-t'));c.once('data',()=>console.log('SPLICED'));c.on('close',()=>console.log('HOST-CLIENT-CLOSED'));c.on('error',()=>undefined);setTimeout(()=>process.exit(0),60000).unref();`,
    ]);
    children.push(hostClient);
    const clientOut = watchOutput(hostClient);
    await clientOut.waitFor(/SPLICED/, 10000);

    const flows = await listFlows(controlPath);
    const describe = JSON.stringify(flows, null, 1);
    const find = (kind: string, match: (flow: FlowInfo) => boolean): FlowInfo => {
      const flow = flows.find((f) => f.kind === kind && match(f));
      expect(flow, `${kind} in ${describe}`).to.not.equal(undefined);
      return flow as FlowInfo;
    };
    const relayT = find('tcp-splice', (f) => !f.inbound && f.remotePort === T_PORT);
    expect(relayT).to.deep.include({ protocol: 'tcp', state: 'spliced', guestAddress: '127.0.0.1', remoteAddress: '127.0.0.1' });
    expect(relayT.bytesFromGuest).to.equal('hello-T'.length);
    expect(relayT.bytesToGuest).to.equal('hello-T'.length);
    const splice = find('tcp-splice', (f) => f.inbound && f.guestPort === SPLICE_PORT);
    expect(splice).to.deep.include({ protocol: 'tcp', state: 'spliced', remoteAddress: '127.0.0.1' });
    expect(splice.bytesToGuest).to.equal('hello-t'.length);
    expect(splice.bytesFromGuest).to.equal('hello-t'.length);
    const forwardU = find('udp-forward', (f) => f.remotePort === U_PORT);
    expect(forwardU).to.deep.include({ protocol: 'udp', state: 'active', guestAddress: '127.0.0.1', inbound: false });
    expect([forwardU.bytesFromGuest, forwardU.bytesToGuest]).to.deep.equal(['hello-U'.length, 'hello-U'.length]);
    const echo = find('icmp', (f) => f.remoteAddress === TEST_NET.serverV4);
    expect(echo).to.deep.include({ protocol: 'icmp', state: 'active', guestAddress: TEST_NET.hostV4 });
    expect(echo.bytesToGuest).to.be.above(0);
    const tap = find('tcp', (f) => f.remotePort === TAP_TCP_PORT);
    expect(tap).to.deep.include({ state: 'established', remoteAddress: TEST_NET.serverV4 });
    const udp = find('udp', (f) => f.remotePort === TAP_UDP_PORT);
    expect(udp.bytesFromGuest).to.equal('hello-udp'.length);

    const table = await ferryctl(controlPath, ['flows']);
    expect(table.stdout).to.match(/^ID\s+KIND\s+STATE/);
    for (const kind of ['tcp-splice', 'udp-forward', 'icmp', 'tcp', 'udp']) expect(table.stdout, table.stdout).to.match(new RegExp(`\\s${kind}\\s`));

    // Each closed through its own kind: the peers see it, the table forgets it.
    for (const flow of [relayT, splice, forwardU, echo, tap, udp]) {
      const closed = await ferryctl(controlPath, ['close', String(flow.id)]);
      expect(closed.code, `close ${flow.kind}: ${closed.stderr}`).to.equal(0);
    }
    await inside.waitFor(/T-CLOSED/, 10000); // the -T relay's namespace end
    await hostOut.waitFor(new RegExp(`SERVER-CLOSED ${T_PORT}`), 10000); // and its host end
    await clientOut.waitFor(/HOST-CLIENT-CLOSED/, 10000); // the -t splice's host client
    await inside.waitFor(/NS-SERVER-CLOSED/, 10000); // and its namespace server
    await inside.waitFor(/TAP-ERROR ECONNRESET|TAP-CLOSED/, 10000); // the stack's TCP: reset
    const left = await listFlows(controlPath);
    const closedIds = new Set([relayT, splice, forwardU, echo, tap, udp].map((f) => f.id));
    expect(left.filter((f) => closedIds.has(f.id)), JSON.stringify(left)).to.deep.equal([]);

    const missing = await ferryctl(controlPath, ['close', '987654321']);
    expect(missing.code).to.not.equal(0);
    expect(missing.stderr).to.match(/no flow/i);
    const forwards = await ferryctl(controlPath, ['forward', 'list']);
    expect(forwards.code).to.not.equal(0);
    expect(forwards.stderr).to.match(/command line/);
  });
});
