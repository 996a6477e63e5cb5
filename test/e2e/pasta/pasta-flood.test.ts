/**
 * A UDP flood from the network through a -u forward cannot take the flow
 * table: with --max-flows 256, a peer in the peer namespace sends from
 * thousands of source ports to ferry's -u port (a sink in the namespace
 * reads and never answers: every flood flow is half-open) while the command
 * in the namespace keeps opening new UDP and TCP flows to the peer. Every
 * new flow of the namespace gets through (the table evicts flood flows for
 * it), the table never lists more than its bound, and the evictions are
 * counted. And pasta's own kinds give way too: -U clients the host never
 * answers are evicted for the namespace's new TCP connections.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { FlowInfo, StatSample } from '../../../src/backend/control/control-protocol';
import { REPO_ROOT } from '../../support/guest';
import { TEST_NET, canCreateNamespaces, createTestNetwork, destroyTestNetwork, run, spawnIn, stopChild, type TestNetwork } from '../../support/netns';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
const MAX_FLOWS = 256;
const FLOODED_PORT = 9700; // -u: host port -> the namespace's sink
const ECHO_PORT = 9701; // the peer's UDP and TCP echo servers
const ATTEMPTS = 20;

/** The peer's echo servers (UDP and TCP on ECHO_PORT). */
const PEER_SERVERS = [
  "const net=require('net'),dgram=require('dgram');let up=0;const ready=()=>{if(++up===2)console.log('ready')};",
  `const s=dgram.createSocket('udp4');s.on('message',(m,r)=>s.send(m,r.port,r.address));s.bind(${ECHO_PORT},'${TEST_NET.serverV4}',ready);`,
  `net.createServer(c=>{c.on('data',d=>c.end(d));c.on('error',()=>undefined)}).listen(${ECHO_PORT},'${TEST_NET.serverV4}',ready);`,
  'setTimeout(()=>process.exit(0),90000).unref();',
].join('');

/** The flood: rounds of 100 fresh source ports each sending one datagram to ferry's -u port; bounded in rounds. */
const FLOOD = [
  "const dgram=require('dgram');let round=0;const payload=Buffer.alloc(64,7);",
  'function next(){if(++round>80){console.log("FLOOD-DONE");return}const open=[];',
  `for(let i=0;i<100;i++){const s=dgram.createSocket('udp4');open.push(s);s.send(payload,${FLOODED_PORT},'${TEST_NET.hostV4}',()=>undefined);s.on('error',()=>undefined)}`,
  'setTimeout(()=>{for(const s of open)s.close();next()},50)}',
  "console.log('FLOOD-START');next();",
].join('');

/**
 * Inside pasta: a sink on the flooded port (reads, never answers), then
 * ATTEMPTS new UDP flows and TCP connections to the peer, 200 ms apart while
 * the flood runs; a UDP flow retries its datagram (same socket: the same
 * flow) every 300 ms, up to 2 s. Prints the count that got their echo.
 */
const INSIDE = [
  "const net=require('net'),dgram=require('dgram');",
  `const sink=dgram.createSocket('udp4');let sunk=0;sink.on('message',()=>sunk++);sink.bind(${FLOODED_PORT},'0.0.0.0',()=>console.log('SINK'));`,
  'let udpOk=0,tcpOk=0,finished=0;',
  `const end=()=>{if(++finished===${2 * ATTEMPTS})console.log('RESULT udp='+udpOk+' tcp='+tcpOk+' sunk='+sunk)};`,
  'function udpAttempt(){const s=dgram.createSocket("udp4");let tries=0,got=false;',
  `const send=()=>{if(got)return;if(++tries>7){s.close();end();return}s.send('ping',${ECHO_PORT},'${TEST_NET.serverV4}');setTimeout(send,300)};`,
  "s.on('message',()=>{if(got)return;got=true;udpOk++;s.close();end()});s.on('error',()=>undefined);send()}",
  `function tcpAttempt(){const c=net.connect(${ECHO_PORT},'${TEST_NET.serverV4}',()=>c.write('ping'));let ok=false;`,
  "c.setTimeout(5000,()=>c.destroy());c.on('data',()=>{ok=true});c.on('close',()=>{if(ok)tcpOk++;end()});c.on('error',()=>undefined)}",
  "process.stdin.once('data',()=>{let k=0;const t=setInterval(()=>{udpAttempt();tcpAttempt();if(++k===" + ATTEMPTS + ')clearInterval(t)},200)});',
  'setTimeout(()=>process.exit(0),90000).unref();',
].join('');

function ferryctl(controlPath: string, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'ferryctl.js'), '--control', controlPath, '--json', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
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

function statSum(stats: StatSample[], name: string, labels: Record<string, string> = {}): number {
  return stats.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((sum, s) => sum + s.value, 0);
}

describe('e2e: ferry pasta under a UDP flood through -u', function () {
  this.timeout(120000);
  let net: TestNetwork | null = null;
  let dir = '';
  const children: ChildProcess[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-flood-'));
  });

  after(async function () {
    for (const child of children.splice(0).reverse()) await stopChild(child, 3000);
    if (net) await destroyTestNetwork(net);
    net = null;
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps opening the namespace\'s new flows while the table stays within --max-flows', async function () {
    const n = net as TestNetwork;
    const controlPath = path.join(dir, 'control.sock');
    const peer = spawnIn(n.peerNs, [process.execPath, '-e', PEER_SERVERS]);
    children.push(peer);
    await watchOutput(peer).waitFor(/ready/, 10000);
    const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '--max-flows', String(MAX_FLOWS), '--control', controlPath, '-u', String(FLOODED_PORT), '--', process.execPath, '-e', INSIDE]);
    children.push(ferry);
    const inside = watchOutput(ferry);
    await inside.waitFor(/SINK/, 30000);

    const flood = spawnIn(n.peerNs, [process.execPath, '-e', FLOOD]);
    children.push(flood);
    const floodOut = watchOutput(flood);
    await floodOut.waitFor(/FLOOD-START/, 10000);
    // Let the flood fill the table before the namespace starts opening flows.
    await new Promise((r) => setTimeout(r, 700));
    const during = JSON.parse((await ferryctl(controlPath, ['flows'])).stdout) as { flows?: FlowInfo[] };
    ferry.stdin?.write('go\n');

    let largest = (during.flows ?? []).length;
    for (let i = 0; i < 40 && !/RESULT/.test(inside.text()); i++) {
      const listed = await ferryctl(controlPath, ['flows']);
      largest = Math.max(largest, ((JSON.parse(listed.stdout) as { flows?: FlowInfo[] }).flows ?? []).length);
      await new Promise((r) => setTimeout(r, 250));
    }
    await inside.waitFor(/RESULT/, 30000);
    const result = /RESULT udp=(\d+) tcp=(\d+) sunk=(\d+)/.exec(inside.text());
    expect(result, inside.text()).to.not.equal(null);
    const [udpOk, tcpOk, sunk] = (result as RegExpExecArray).slice(1).map(Number);
    const stats = (JSON.parse((await ferryctl(controlPath, ['stats'])).stdout) as { stats: StatSample[] }).stats;
    const evicted = statSum(stats, 'ferry_flows_evicted_total', { protocol: 'udp' });
    const sample = JSON.stringify((during.flows ?? []).slice(0, 3));
    const evictionStats = JSON.stringify(stats.filter((s) => s.name.includes('evict') || s.name.includes('refused')));
    const detail = `udp=${udpOk} tcp=${tcpOk} sunk=${sunk} evicted=${evicted} largest=${largest}\n${sample}\n${evictionStats}\n${inside.text()}`;

    expect((during.flows ?? []).filter((f) => f.kind === 'udp' && f.inbound).length, 'the flood had filled the table').to.be.at.least(MAX_FLOWS / 2);
    expect(sunk, detail).to.be.above(MAX_FLOWS); // the flood did reach the namespace
    expect(largest, detail).to.be.at.most(MAX_FLOWS);
    expect(evicted, detail).to.be.above(0);
    expect(udpOk, detail).to.equal(ATTEMPTS);
    expect(tcpOk, detail).to.equal(ATTEMPTS);
  });

  it('gives -U clients the host never answers up for the namespace\'s new flows (udp-forward evictor)', async function () {
    const n = net as TestNetwork;
    const controlPath = path.join(dir, 'control-u.sock');
    const tableSize = 16;
    const sinkPort = 9710;
    // On the host's loopback: a sink that never answers, so every -U client flow stays half-open.
    const sink = spawnIn(n.ns, [process.execPath, '-e', `const s=require('dgram').createSocket('udp4');s.on('message',()=>undefined);s.bind(${sinkPort},'127.0.0.1',()=>console.log('ready'));setTimeout(()=>process.exit(0),60000).unref();`]);
    children.push(sink);
    await watchOutput(sink).waitFor(/ready/, 10000);
    const peer = spawnIn(n.peerNs, [process.execPath, '-e', PEER_SERVERS]);
    children.push(peer);
    await watchOutput(peer).waitFor(/ready/, 10000);
    const clients = [
      "const dgram=require('dgram'),net=require('net');const keep=[];",
      `for(let i=0;i<${tableSize};i++){const s=dgram.createSocket('udp4');keep.push(s);s.send('x',${sinkPort},'127.0.0.1')}`,
      "console.log('FILLED');",
      "process.stdin.once('data',()=>{let ok=0,done=0;for(let k=0;k<4;k++){",
      `const c=net.connect(${ECHO_PORT},'${TEST_NET.serverV4}',()=>c.write('ping'));let got=false;c.setTimeout(5000,()=>c.destroy());`,
      "c.on('data',()=>{got=true});c.on('close',()=>{if(got)ok++;if(++done===4)console.log('TCP '+ok)});c.on('error',()=>undefined)}});",
      'setTimeout(()=>process.exit(0),60000).unref();',
    ].join('');
    const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '--max-flows', String(tableSize), '--control', controlPath, '-U', String(sinkPort), '--', process.execPath, '-e', clients]);
    children.push(ferry);
    const inside = watchOutput(ferry);
    await inside.waitFor(/FILLED/, 30000);
    let forwards: FlowInfo[] = [];
    for (let i = 0; i < 40 && forwards.length < tableSize; i++) {
      await new Promise((r) => setTimeout(r, 100));
      forwards = ((JSON.parse((await ferryctl(controlPath, ['flows'])).stdout) as { flows?: FlowInfo[] }).flows ?? []).filter((f) => f.kind === 'udp-forward');
    }
    expect(forwards.length, inside.text()).to.equal(tableSize); // the table is full of unanswered -U clients
    ferry.stdin?.write('go\n');
    await inside.waitFor(/TCP \d+/, 20000);
    const stats = (JSON.parse((await ferryctl(controlPath, ['stats'])).stdout) as { stats: StatSample[] }).stats;
    expect(/TCP (\d+)/.exec(inside.text())?.[1], inside.text()).to.equal('4');
    expect(statSum(stats, 'ferry_flows_evicted_total', { protocol: 'udp-forward' })).to.be.at.least(4);
    const listed = (JSON.parse((await ferryctl(controlPath, ['flows'])).stdout) as { flows?: FlowInfo[] }).flows ?? [];
    expect(listed.length).to.be.at.most(tableSize);
  });
});
