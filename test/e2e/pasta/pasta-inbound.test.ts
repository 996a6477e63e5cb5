/**
 * pasta's -t side beyond plain listeners: ferry runs `ferry pasta` in the
 * test namespace (its "host"), the command inside the pasta namespace.
 *
 *   - -t/-u auto: a server started inside the namespace after ferry is up
 *     becomes reachable from the host side (its loopback, and the peer
 *     namespace through the uplink) within ~2 s, and refuses again once it
 *     is gone.
 *   - the splice path: a client on the host's loopback moves a few MB each
 *     way through -t, sha256-checked; with splice ferry's splice counter
 *     (scraped from --metrics) carries those bytes, with --no-splice it
 *     does not move.
 *
 * The command inside and the test talk through files in a private
 * temporary directory: "start" and "stop" tell it what to do next.
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, run, runIn, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { REPO_ROOT } from '../../support/guest';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');

/** Wait (bounded) until `check` is true; false on timeout. */
async function waitFor(check: () => boolean, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return check();
}

/** A script that waits for file `start`, serves TCP `port` (greeting) and UDP `port` (echo) on any address, closes both on file `stop`, exits on file `exit`. */
function followedServerSource(dir: string, port: number): string {
  return [
    "const net=require('net'),dgram=require('dgram'),fs=require('fs');",
    `const dir=${JSON.stringify(dir)};let tcp=null,udp=null,phase='idle';`,
    "setTimeout(()=>{console.log('TIMEOUT '+phase);process.exit(2)},40000).unref();",
    'const step=setInterval(()=>{',
    "if(phase==='idle'&&fs.existsSync(dir+'/start')){phase='starting';",
    `tcp=net.createServer(c=>c.end('hello from the namespace')).listen(${port},()=>{`,
    `udp=dgram.createSocket('udp4');udp.on('message',(m,r)=>udp.send(Buffer.concat([Buffer.from('echo:'),m]),r.port,r.address));udp.bind(${port},()=>{phase='serving';console.log('SERVING')})})}`,
    "if(phase==='serving'&&fs.existsSync(dir+'/stop')){phase='stopped';tcp.close();udp.close();console.log('STOPPED')}",
    "if(fs.existsSync(dir+'/exit')){clearInterval(step);process.exit(0)}},50);",
  ].join('');
}

/** A TCP probe: one connection attempt, prints OK <greeting> or ERR <code>. */
function tcpProbeSource(address: string, port: number): string {
  return [
    `const c=require('net').connect(${port},'${address}');let got='';`,
    "setTimeout(()=>{console.log('ERR TIMEOUT');process.exit(0)},3000).unref();",
    "c.on('data',d=>got+=d);c.on('end',()=>{console.log(got.length>0?'OK '+got:'ERR EMPTY');process.exit(0)});",
    "c.on('error',e=>{console.log('ERR '+e.code);process.exit(0)});",
  ].join('');
}

/** A UDP probe: one datagram, prints OK <reply> or ERR. */
function udpProbeSource(address: string, port: number): string {
  return [
    "const s=require('dgram').createSocket('udp4');",
    "setTimeout(()=>{console.log('ERR TIMEOUT');process.exit(0)},1000).unref();",
    "s.on('message',m=>{console.log('OK '+m);process.exit(0)});s.on('error',e=>{console.log('ERR '+e.code);process.exit(0)});",
    // Connected, so an ICMP port unreachable comes back as ECONNREFUSED.
    `s.connect(${port},'${address}',()=>s.send(Buffer.from('ping')));`,
  ].join('');
}

async function probe(ns: string, source: string): Promise<string> {
  const r = await runIn(ns, [process.execPath, '-e', source], { timeoutMs: 10000 });
  return r.stdout.trim();
}

/** Probe until the answer matches `want` or the time is up; returns the last answer and how long it took. */
async function probeUntil(ns: string, source: string, want: RegExp, timeoutMs: number): Promise<{ answer: string; ms: number }> {
  const started = Date.now();
  let answer = '';
  for (let i = 0; i < 200 && Date.now() - started < timeoutMs; i++) {
    answer = await probe(ns, source);
    if (want.test(answer)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return { answer, ms: Date.now() - started };
}

/** The namespace's side of the splice test: receives everything, answers with `replyBytes` bytes, prints digests; exits on file `exit`. */
function bulkServerSource(dir: string, port: number, replyBytes: number, address: string | null = null): string {
  return [
    "const net=require('net'),crypto=require('crypto'),fs=require('fs');",
    `const reply=Buffer.alloc(${replyBytes});for(let i=0;i<reply.length;i++)reply[i]=(i*131+7)&255;`,
    "console.log('REPLY-SHA '+crypto.createHash('sha256').update(reply).digest('hex'));",
    "setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},60000).unref();",
    "net.createServer(c=>{const h=crypto.createHash('sha256');let n=0;c.on('data',d=>{n+=d.length;h.update(d)});",
    "c.on('end',()=>{console.log('GOT '+n+' '+h.digest('hex'));c.end(reply)});c.on('error',()=>undefined)})",
    `.listen(${port},${address === null ? '' : `'${address}',`}()=>console.log('SERVING'));`,
    `setInterval(()=>{if(fs.existsSync(${JSON.stringify(dir)}+'/exit'))process.exit(0)},50);`,
  ].join('');
}

/** The host's client: sends `sendBytes`, prints what came back. */
function bulkClientSource(address: string, port: number, sendBytes: number): string {
  return [
    "const net=require('net'),crypto=require('crypto');",
    `const out=Buffer.alloc(${sendBytes});for(let i=0;i<out.length;i++)out[i]=(i*31+3)&255;`,
    "console.log('SENT-SHA '+crypto.createHash('sha256').update(out).digest('hex'));",
    "setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},30000).unref();",
    `const c=net.connect(${port},'${address}');const h=crypto.createHash('sha256');let n=0;`,
    "c.on('connect',()=>c.end(out));c.on('data',d=>{n+=d.length;h.update(d)});",
    "c.on('end',()=>{console.log('RECEIVED '+n+' '+h.digest('hex'));process.exit(0)});",
    "c.on('error',e=>{console.log('ERROR '+e.code);process.exit(1)});",
  ].join('');
}

/** GET /metrics over a UNIX socket. */
function scrape(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = http.get({ socketPath, path: '/metrics', timeout: 5000 }, (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (d: string) => (body += d));
      response.on('end', () => resolve(body));
    });
    request.on('timeout', () => request.destroy(new Error('metrics timed out')));
    request.on('error', reject);
  });
}

/** Value of one sample (metric name and label text as printed), 0 when absent. */
function sample(metrics: string, name: string, labels: string): number {
  for (const line of metrics.split('\n')) {
    if (!line.startsWith(name + '{')) continue;
    const close = line.indexOf('}');
    const text = line.slice(name.length + 1, close);
    if (labels.split(',').every((label) => text.includes(label))) return Number(line.slice(close + 1).trim());
  }
  return 0;
}

describe('e2e: ferry pasta -t/-u auto and the -t splice path', function () {
  this.timeout(120000);
  let net: TestNetwork | null = null;
  let dir = '';
  const children: ChildProcess[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
  });

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-inbound-'));
  });

  afterEach(async () => {
    if (dir !== '') fs.writeFileSync(path.join(dir, 'exit'), '');
    for (const child of children.splice(0)) await stopChild(child, 3000);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  after(async function () {
    if (net) await destroyTestNetwork(net);
    net = null;
  });

  /** Start ferry pasta with `args` and the command `source`; collects its output. */
  function startPasta(args: string[], source: string): { child: ChildProcess; output: () => string } {
    const n = net as TestNetwork;
    // --runas 0: the commands wait on files in the test's root-only scratch directory (as root, pasta would otherwise make them nobody's).
    const child = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--runas', '0', '--config-net', ...args, '--', process.execPath, '-e', source]);
    children.push(child);
    let output = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
    return { child, output: () => output };
  }

  it('-t auto and -u auto follow a server that starts inside the namespace after ferry and then stops', async function () {
    const n = net as TestNetwork;
    const port = 9510;
    const pasta = startPasta(['-t', 'auto', '-u', 'auto'], followedServerSource(dir, port));
    // ferry is up and its namespace idle: nothing answers on the host side.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await probe(n.ns, tcpProbeSource('127.0.0.1', port)), pasta.output()).to.equal('ERR ECONNREFUSED');

    fs.writeFileSync(path.join(dir, 'start'), '');
    expect(await waitFor(() => pasta.output().includes('SERVING'), 10000), pasta.output()).to.equal(true);
    const serving = Date.now();
    // From the host's loopback (splice path) and from the peer namespace over the uplink (through the tap).
    const loopback = await probeUntil(n.ns, tcpProbeSource('127.0.0.1', port), /^OK/, 5000);
    expect(loopback.answer, pasta.output()).to.equal('OK hello from the namespace');
    expect(Date.now() - serving, 'reachable within ~2 s of the server starting').to.be.below(3000);
    expect(await probe(n.peerNs, tcpProbeSource(TEST_NET.hostV4, port)), pasta.output()).to.equal('OK hello from the namespace');
    const udp = await probeUntil(n.peerNs, udpProbeSource(TEST_NET.hostV4, port), /^OK/, 3000);
    expect(udp.answer, pasta.output()).to.equal('OK echo:ping');

    fs.writeFileSync(path.join(dir, 'stop'), '');
    expect(await waitFor(() => pasta.output().includes('STOPPED'), 5000), pasta.output()).to.equal(true);
    const stopped = Date.now();
    const gone = await probeUntil(n.ns, tcpProbeSource('127.0.0.1', port), /^ERR ECONNREFUSED/, 5000);
    expect(gone.answer, pasta.output()).to.equal('ERR ECONNREFUSED');
    expect(Date.now() - stopped, 'host listener closed within ~2 s').to.be.below(3000);
    expect(await probe(n.peerNs, tcpProbeSource(TEST_NET.hostV4, port)), pasta.output()).to.equal('ERR ECONNREFUSED');
    // The UDP listener is gone too: the host answers with port unreachable.
    const udpGone = await probeUntil(n.ns, udpProbeSource('127.0.0.1', port), /^ERR ECONNREFUSED/, 3000);
    expect(udpGone.answer, pasta.output()).to.equal('ERR ECONNREFUSED');
  });

  it('-t with splice: a namespace server bound to the tap\'s address only (nothing on its loopback) is still reached from the host\'s loopback, through the tap', async function () {
    const n = net as TestNetwork;
    const port = 9530;
    const metricsPath = path.join(dir, 'metrics.sock');
    const pasta = startPasta(['--metrics', `unix:${metricsPath}`, '-t', String(port)], bulkServerSource(dir, port, 100000, TEST_NET.hostV4));
    expect(await waitFor(() => pasta.output().includes('SERVING') && fs.existsSync(metricsPath), 10000), pasta.output()).to.equal(true);
    const r = await runIn(n.ns, [process.execPath, '-e', bulkClientSource('127.0.0.1', port, 200000)], { timeoutMs: 40000 });
    expect(r.code, `${r.stdout}\n${r.stderr}\n${pasta.output()}`).to.equal(0);
    expect(/RECEIVED (\d+) (\w+)/.exec(r.stdout)?.slice(1), r.stdout).to.deep.equal(['100000', /REPLY-SHA (\w+)/.exec(pasta.output())?.[1]]);
    expect(await waitFor(() => pasta.output().includes('GOT '), 5000), pasta.output()).to.equal(true);
    expect(/GOT (\d+) (\w+)/.exec(pasta.output())?.slice(1), pasta.output()).to.deep.equal(['200000', /SENT-SHA (\w+)/.exec(r.stdout)?.[1]]);
    const metrics = await scrape(metricsPath);
    expect(sample(metrics, 'ferry_pasta_splice_total', 'from="host",event="fallbacks"'), metrics).to.equal(1);
    expect(sample(metrics, 'ferry_pasta_splice_total', 'from="host",event="bytes"'), metrics).to.equal(0);
  });

  for (const splice of [true, false]) {
    it(`-t moves 6 MiB up and 4 MiB down from the host's loopback intact ${splice ? 'through splice (counter moves)' : 'through the stack with --no-splice (counter still)'}`, async function () {
      const n = net as TestNetwork;
      const port = 9520;
      const metricsPath = path.join(dir, 'metrics.sock');
      const up = 6 << 20;
      const down = 4 << 20;
      const pasta = startPasta(['--metrics', `unix:${metricsPath}`, '-t', String(port), ...(splice ? [] : ['--no-splice'])], bulkServerSource(dir, port, down));
      expect(await waitFor(() => pasta.output().includes('SERVING') && fs.existsSync(metricsPath), 10000), pasta.output()).to.equal(true);
      const before = await scrape(metricsPath);
      const r = await runIn(n.ns, [process.execPath, '-e', bulkClientSource('127.0.0.1', port, up)], { timeoutMs: 40000 });
      expect(r.code, `${r.stdout}\n${r.stderr}\n${pasta.output()}`).to.equal(0);
      expect(await waitFor(() => pasta.output().includes('GOT '), 5000), pasta.output()).to.equal(true);
      const sent = /SENT-SHA (\w+)/.exec(r.stdout)?.[1];
      const replySha = /REPLY-SHA (\w+)/.exec(pasta.output())?.[1];
      expect(/GOT (\d+) (\w+)/.exec(pasta.output())?.slice(1), pasta.output()).to.deep.equal([String(up), sent]);
      expect(/RECEIVED (\d+) (\w+)/.exec(r.stdout)?.slice(1), r.stdout).to.deep.equal([String(down), replySha]);

      const after = await scrape(metricsPath);
      const moved = (labels: string): number => sample(after, 'ferry_pasta_splice_total', labels) - sample(before, 'ferry_pasta_splice_total', labels);
      if (splice) {
        expect(moved('from="host",event="connections"'), after).to.equal(1);
        expect(moved('from="host",event="bytes"'), after).to.equal(up + down);
      } else {
        expect(moved('from="host",event="connections"'), after).to.equal(0);
        expect(moved('from="host",event="bytes"'), after).to.equal(0);
      }
    });
  }
});
