/**
 * Data through `ferry pasta`: a command inside the pasta namespace talks to
 * servers in the test network's peer namespace (192.0.2.2), every byte
 * crossing the tap, ferry's stack and ferry's host sockets.
 *
 *   - UDP: datagrams of 1 to 60000 bytes echoed intact; -u into the namespace.
 *   - TCP: a 4 MiB file fetched over HTTP, its sha256 checked; -t into the namespace.
 *
 * The TCP cases need the stack's TCP translation: when stack-factory.ts
 * installs no TCP handler they are skipped (pending, not faked).
 */
import { expect } from 'chai';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type ChildProcess } from 'child_process';
import { canCreateNamespaces, type CommandResult, createTestNetwork, destroyTestNetwork, run, runIn, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { REPO_ROOT } from '../../support/guest';
import { createStack } from '../../../src/stack/stack-factory';
import { CounterBlock } from '../../../src/sys/counters';
import { native } from '../../../src/sys/native';
import { FakeFramePort, testConfig } from '../../support/fakes/stack-fakes';
import { readPcapFile, sourceMac } from '../../support/pcap-reader';
import { tapQueueLength } from '../../../src/backend/frontends/tap-port';
import { largestSendBuffer } from '../../../src/backend/modes/pasta/pasta';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
const UDP_PORT = 7007;
const HTTP_PORT = 8080;
const FILE_BYTES = 4 << 20;

/** Does the stack built for frontends translate TCP yet? */
function stackHasTcp(): boolean {
  const watcher = { watch: () => undefined, modify: () => undefined, unwatch: () => undefined };
  const stack = createStack({ config: testConfig(), port: new FakeFramePort(), counters: new CounterBlock(), watcher, sockets: native });
  const has = stack.tcpHandler !== null;
  stack.close();
  return has;
}

/** A node one-liner server in the peer namespace; resolves once it prints "ready". */
async function startServer(net: TestNetwork, source: string): Promise<ChildProcess> {
  const child = spawnIn(net.peerNs, [process.execPath, '-e', source]);
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${output}`)), 10000);
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      output += d;
      if (output.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.on('exit', () => reject(new Error(`server exited: ${output}`)));
  });
  return child;
}

function describeResult(r: CommandResult): string {
  return `exit ${r.code ?? r.signal}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

describe('e2e: data through ferry pasta', function () {
  this.timeout(90000);
  let net: TestNetwork | null = null;
  let workDir = '';
  const servers: ChildProcess[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-data-'));
  });

  after(async function () {
    for (const s of servers) await stopChild(s, 1000);
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    net = null;
  });

  it('UDP datagrams of 1 to 60000 bytes are echoed intact by a server in the test network', async function () {
    const n = net as TestNetwork;
    servers.push(
      await startServer(
        n,
        `const s=require('dgram').createSocket('udp4');s.on('message',(m,r)=>s.send(m,r.port,r.address));s.bind(${UDP_PORT},'${TEST_NET.serverV4}',()=>console.log('ready'));`,
      ),
    );
    const client = [
      "const s=require('dgram').createSocket('udp4');",
      'const sizes=[1,100,1472,1473,9000,60000];let i=0,ok=0;',
      "const t=setTimeout(()=>{console.log('TIMEOUT ok='+ok);process.exit(2)},8000);",
      "const next=()=>{if(i===sizes.length){console.log('ECHOED '+ok);clearTimeout(t);s.close();return;}",
      'const b=Buffer.alloc(sizes[i]);for(let k=0;k<b.length;k++)b[k]=(k*7+i)&255;s.cur=b;',
      `s.send(b,${UDP_PORT},'${TEST_NET.serverV4}');};`,
      "s.on('message',m=>{if(m.equals(s.cur)){ok++;}else console.log('MISMATCH '+m.length);i++;next();});next();",
    ].join('');
    const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '--dns', '192.0.2.53', '--', process.execPath, '-e', client], { timeoutMs: 30000 });
    expect(r.code, describeResult(r)).to.equal(0);
    expect(r.stdout, describeResult(r)).to.include('ECHOED 6');
  });

  it('-u forwards host UDP ports into the namespace: a server inside answers clients on the host\'s loopback and in the test network', async function () {
    const n = net as TestNetwork;
    const server = `const s=require('dgram').createSocket('udp4');s.on('message',(m,r)=>s.send(Buffer.concat([Buffer.from('echo:'),m]),r.port,r.address));s.bind(${UDP_PORT + 1},()=>console.log('ready'));setTimeout(()=>process.exit(0),20000);`;
    const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '-q', '--config-net', '-u', String(UDP_PORT + 1), '--', process.execPath, '-e', server]);
    servers.push(ferry);
    let out = '';
    ferry.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
    for (let i = 0; i < 200 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).to.include('ready');
    const client = (address: string, text: string): string =>
      `const s=require('dgram').createSocket('udp4');s.on('message',m=>{console.log('REPLY '+m);process.exit(0)});s.send('${text}',${UDP_PORT + 1},'${address}');setTimeout(()=>{console.log('NO REPLY');process.exit(1)},3000);`;
    const local = await runIn(n.ns, [process.execPath, '-e', client('127.0.0.1', 'from-loopback')]);
    expect(local.stdout, `${describeResult(local)}\n--- pasta ---\n${out}`).to.include('REPLY echo:from-loopback');
    const remote = await runIn(n.peerNs, [process.execPath, '-e', client(TEST_NET.hostV4, 'from-peer')]);
    expect(remote.stdout, `${describeResult(remote)}\n--- pasta ---\n${out}`).to.include('REPLY echo:from-peer');
    await stopChild(ferry, 3000);
  });

  it('-t forwards host TCP ports into the namespace: 3 MB up and a digest back, from the host\'s loopback and from the test network', async function () {
    if (!stackHasTcp()) this.skip();
    const n = net as TestNetwork;
    const port = HTTP_PORT + 1;
    const server = `require('net').createServer(c=>{const h=require('crypto').createHash('sha256');c.on('data',d=>h.update(d));c.on('end',()=>c.end('sha '+h.digest('hex')))}).listen(${port},()=>console.log('ready'));setTimeout(()=>process.exit(0),20000);`;
    const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '-q', '--config-net', '-t', String(port), '--', process.execPath, '-e', server]);
    servers.push(ferry);
    let out = '';
    ferry.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
    for (let i = 0; i < 200 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).to.include('ready');
    const payload = Buffer.alloc(3000000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 13 + 5) & 255;
    const expected = crypto.createHash('sha256').update(payload).digest('hex');
    const client = (address: string): string =>
      `const b=Buffer.alloc(3000000);for(let i=0;i<b.length;i++)b[i]=(i*13+5)&255;let r='';const c=require('net').connect(${port},'${address}');` +
      "c.on('connect',()=>c.end(b));c.on('data',d=>r+=d);c.on('end',()=>console.log('REPLY '+r));c.on('error',e=>console.log('ERROR '+e.message));setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},15000).unref();";
    const local = await runIn(n.ns, [process.execPath, '-e', client('127.0.0.1')], { timeoutMs: 20000 });
    expect(local.stdout, `${describeResult(local)}\n--- pasta ---\n${out}`).to.include(`REPLY sha ${expected}`);
    const remote = await runIn(n.peerNs, [process.execPath, '-e', client(TEST_NET.hostV4)], { timeoutMs: 20000 });
    expect(remote.stdout, `${describeResult(remote)}\n--- pasta ---\n${out}`).to.include(`REPLY sha ${expected}`);
    await stopChild(ferry, 3000);
  });

  it('at MTU 1500 the namespace hands ferry TCP segments larger than the MTU (tap offloads) and 4 MiB arrive intact', async function () {
    if (!stackHasTcp()) this.skip();
    const n = net as TestNetwork;
    const port = HTTP_PORT + 2;
    const server = await startServer(
      n,
      `require('net').createServer(c=>{const h=require('crypto').createHash('sha256');let k=0;c.on('data',d=>{k+=d.length;h.update(d)});c.on('end',()=>{console.log('GOT '+k+' '+h.digest('hex'));c.end()})}).listen(${port},'${TEST_NET.serverV4}',()=>console.log('ready'));`,
    );
    servers.push(server);
    let serverOut = '';
    server.stdout?.setEncoding('utf8').on('data', (d: string) => (serverOut += d));
    const payload = crypto.randomBytes(FILE_BYTES);
    const file = path.join(workDir, 'upload');
    fs.writeFileSync(file, payload);
    const expected = crypto.createHash('sha256').update(payload).digest('hex');
    const pcapPath = path.join(workDir, 'mtu1500.pcap');
    const client = `const c=require('net').connect(${port},'${TEST_NET.serverV4}');c.on('connect',()=>c.end(require('fs').readFileSync(${JSON.stringify(file)})));c.on('close',()=>console.log('SENT'));c.on('error',e=>{console.log('ERROR '+e.message);process.exit(3)});`;
    // --runas 0: the command reads the upload from the test's root-only scratch directory (as root, pasta would otherwise make it nobody's).
    const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--runas', '0', '--config-net', '-m', '1500', '--pcap', pcapPath, '--', process.execPath, '-e', client], { timeoutMs: 60000 });
    expect(r.code, describeResult(r)).to.equal(0);
    for (let i = 0; i < 100 && !serverOut.includes('GOT'); i++) await new Promise((res) => setTimeout(res, 50));
    expect(serverOut, describeResult(r)).to.include(`GOT ${FILE_BYTES} ${expected}`);
    const fromNamespace = readPcapFile(pcapPath).frames.filter((f) => f.data.length >= 34 && f.data[12] === 0x08 && f.data[13] === 0x00 && f.data[23] === 6 && sourceMac(f.data) !== '9a:55:9a:55:9a:55');
    const largest = Math.max(...fromNamespace.map((f) => f.data.length));
    expect(largest, `${fromNamespace.length} TCP frames from the namespace`).to.be.greaterThan(1514);
  });

  it('at MTU 1500 the tap\'s queue holds a window of MTU-sized frames (txqueuelen sized from tcp_wmem) and segments to the namespace are coalesced into GSO frames: 16 MiB each way intact, (almost) no frame dropped in the queue', async function () {
    if (!stackHasTcp()) this.skip();
    const n = net as TestNetwork;
    const port = HTTP_PORT + 3;
    const bytes = 16 << 20;
    const metricsPath = path.join(workDir, 'metrics.sock');
    // Both ways on one connection: the server takes the upload, then sends as much back.
    const server = await startServer(
      n,
      `const crypto=require('crypto');const out=crypto.randomBytes(${bytes});const downSha=crypto.createHash('sha256').update(out).digest('hex');` +
        `require('net').createServer(c=>{const h=crypto.createHash('sha256');let k=0;c.on('data',d=>{k+=d.length;h.update(d)});c.on('end',()=>{console.log('GOT '+k+' '+h.digest('hex')+' DOWN '+downSha);c.end(out)})}).listen(${port},'${TEST_NET.serverV4}',()=>console.log('ready'));`,
    );
    servers.push(server);
    let serverOut = '';
    server.stdout?.setEncoding('utf8').on('data', (d: string) => (serverOut += d));
    const client = [
      "const crypto=require('crypto');const up=crypto.randomBytes(" + bytes + ");console.log('UP '+crypto.createHash('sha256').update(up).digest('hex'));",
      `const c=require('net').connect(${port},'${TEST_NET.serverV4}');const h=crypto.createHash('sha256');let k=0;`,
      "c.on('connect',()=>c.end(up));c.on('data',d=>{k+=d.length;h.update(d)});",
      `c.on('end',()=>{console.log('RECEIVED '+k+' '+h.digest('hex'));console.log(require('child_process').execSync('ip -s -s -o link show ${TEST_NET.uplinkName}').toString());`,
      // ferry's counters, through its --metrics socket (a file both namespaces see).
      `require('http').get({socketPath:${JSON.stringify(metricsPath)},path:'/metrics'},res=>{let b='';res.on('data',d=>b+=d);res.on('end',()=>{console.log(b);process.exit(0)})}).on('error',e=>{console.log('METRICS '+e.message);process.exit(4)})});`,
      "c.on('error',e=>{console.log('ERROR '+e.message);process.exit(3)});setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},50000).unref();",
    ].join('');
    // --runas 0: the command connects to the metrics socket root created in the test's scratch directory.
    const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--runas', '0', '--config-net', '-m', '1500', '--metrics', `unix:${metricsPath}`, '--', process.execPath, '-e', client], { timeoutMs: 70000 });
    expect(r.code, describeResult(r)).to.equal(0);
    for (let i = 0; i < 100 && !serverOut.includes('GOT'); i++) await new Promise((res) => setTimeout(res, 50));
    expect(serverOut, describeResult(r)).to.include(`GOT ${bytes} ${/UP (\w+)/.exec(r.stdout)?.[1]} `);
    expect(r.stdout, serverOut).to.include(`RECEIVED ${bytes} ${/DOWN (\w+)/.exec(serverOut)?.[1]}`);
    const qlen = Number(/ qlen (\d+)/.exec(r.stdout)?.[1]);
    expect(qlen, r.stdout).to.equal(tapQueueLength(1500, largestSendBuffer())).and.to.be.greaterThan(1000);
    // `ip -s -o`: "TX: bytes packets errors dropped ..." then its values, on one line.
    const tx = /TX:[^\\]*\\\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(r.stdout);
    expect(tx, r.stdout).to.not.equal(null);
    const [packets, dropped] = [Number(tx?.[2]), Number(tx?.[4])];
    expect(packets, r.stdout).to.be.greaterThan(100);
    expect(dropped, `${dropped} of ${packets} frames from the namespace dropped in the tap's queue\n${r.stdout}`).to.be.below(Math.max(1, packets / 100));
    // The download's segments reached the namespace coalesced into GSO frames of several segments each.
    const coalesced = (event: string): number => Number(new RegExp(`^ferry_tap_coalesced_total\\{[^}]*event="${event}"[^}]*\\} (\\d+)`, 'm').exec(r.stdout)?.[1] ?? 0);
    expect(coalesced('frames'), r.stdout).to.be.greaterThan(0);
    expect(coalesced('segments'), r.stdout).to.be.greaterThan(4 * coalesced('frames'));
  });

  it('a command inside ferry pasta fetches a 4 MiB file over TCP from the test network and its sha256 matches', async function () {
    if (!stackHasTcp()) {
      // Pending on purpose, not faked: the stack has no TCP translator installed yet (src/backend/stack-factory.ts).
      this.skip();
    }
    const n = net as TestNetwork;
    const file = path.join(workDir, 'blob');
    fs.writeFileSync(file, crypto.randomBytes(FILE_BYTES));
    const expected = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    servers.push(
      await startServer(
        n,
        `require('http').createServer((q,s)=>{const b=require('fs').readFileSync(${JSON.stringify(file)});s.writeHead(200,{'content-length':b.length});s.end(b);}).listen(${HTTP_PORT},'${TEST_NET.serverV4}',()=>console.log('ready'));`,
      ),
    );
    const client = [
      `require('http').get('http://${TEST_NET.serverV4}:${HTTP_PORT}/blob',r=>{`,
      "const h=require('crypto').createHash('sha256');let n=0;",
      "r.on('data',d=>{h.update(d);n+=d.length});r.on('end',()=>console.log('SHA256 '+h.digest('hex')+' BYTES '+n));",
      "}).on('error',e=>{console.log('ERROR '+e.message);process.exit(3)});",
      "setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},30000).unref();",
    ].join('');
    const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '--dns', '192.0.2.53', '--', process.execPath, '-e', client], { timeoutMs: 60000 });
    expect(r.code, describeResult(r)).to.equal(0);
    expect(r.stdout, describeResult(r)).to.include(`SHA256 ${expected} BYTES ${FILE_BYTES}`);
  });
});
