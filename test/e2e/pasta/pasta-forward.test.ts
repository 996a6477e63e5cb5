/**
 * pasta's -T/-U: a client inside `ferry pasta` connects to its own
 * loopback and reaches a server on the loopback of ferry's namespace (the
 * test namespace), through ferry's splice relay (or read/write with
 * --no-splice) for TCP and its recvmmsg/sendmmsg relay for UDP. Payloads are
 * checked by sha256 in both directions, with several connections at once.
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { canCreateNamespaces, type CommandResult, createTestNetwork, destroyTestNetwork, run, runIn, spawnIn, stopChild, type TestNetwork } from '../../support/netns';
import { REPO_ROOT } from '../../support/guest';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');

/** A TCP server on the test namespace's loopback: reads everything, answers with `replyBytes` pseudo-random bytes, prints digests. */
function tcpServerSource(address: string, port: number, replyBytes: number): string {
  return [
    "const net=require('net'),crypto=require('crypto');",
    `const reply=Buffer.alloc(${replyBytes});for(let i=0;i<reply.length;i++)reply[i]=(i*131+7)&255;`,
    "console.log('REPLY-SHA '+crypto.createHash('sha256').update(reply).digest('hex'));",
    "net.createServer(c=>{const h=crypto.createHash('sha256');let n=0;c.on('data',d=>{n+=d.length;h.update(d)});",
    "c.on('end',()=>{console.log('GOT '+n+' '+h.digest('hex'));c.end(reply)});c.on('error',()=>undefined)})",
    `.listen(${port},'${address}',()=>console.log('ready'));`,
  ].join('');
}

/** A client (run inside pasta): `count` connections at once, each sends `sendBytes` and prints what came back; then runs `then`. */
function tcpClientSource(address: string, port: number, sendBytes: number, count: number, then = 'process.exit(0)'): string {
  return [
    "const net=require('net'),crypto=require('crypto');",
    `const out=Buffer.alloc(${sendBytes});for(let i=0;i<out.length;i++)out[i]=(i*31+3)&255;`,
    "console.log('SENT-SHA '+crypto.createHash('sha256').update(out).digest('hex'));",
    `let left=${count};setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},30000).unref();`,
    `for(let k=0;k<${count};k++){const c=net.connect(${port},'${address}');const h=crypto.createHash('sha256');let n=0;`,
    "c.on('connect',()=>c.end(out));c.on('data',d=>{n+=d.length;h.update(d)});",
    `c.on('end',()=>{console.log('RECEIVED '+n+' '+h.digest('hex'));if(--left===0)${then}});`,
    `c.on('error',e=>{console.log('ERROR '+e.code);if(--left===0)${then}});}`,
  ].join('');
}

async function startServer(ns: string, source: string): Promise<{ child: ChildProcess; output: () => string }> {
  const child = spawnIn(ns, [process.execPath, '-e', source]);
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  for (let i = 0; i < 200 && !output.includes('ready'); i++) await new Promise((r) => setTimeout(r, 25));
  if (!output.includes('ready')) throw new Error(`server did not start: ${output}`);
  return { child, output: () => output };
}

function describeResult(r: CommandResult, server = ''): string {
  return `exit ${r.code ?? r.signal}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}\n--- server ---\n${server}`;
}

describe('e2e: ferry pasta -T/-U (namespace loopback to host loopback)', function () {
  this.timeout(90000);
  let net: TestNetwork | null = null;
  const servers: ChildProcess[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
  });

  afterEach(async () => {
    for (const s of servers.splice(0)) await stopChild(s, 1000);
  });

  after(async function () {
    if (net) await destroyTestNetwork(net);
    net = null;
  });

  const cases = [
    { name: 'splice, IPv4, 3 connections of 4 MiB up and 8 MiB down', args: [], address: '127.0.0.1', up: 4 << 20, down: 8 << 20, count: 3 },
    { name: '--no-splice, IPv4', args: ['--no-splice'], address: '127.0.0.1', up: 1 << 20, down: 4 << 20, count: 2 },
    { name: 'splice, IPv6 ::1', args: [], address: '::1', up: 1 << 20, down: 2 << 20, count: 1 },
  ];
  for (const t of cases) {
    it(`-T relays TCP with its payload intact both ways (${t.name})`, async function () {
      const n = net as TestNetwork;
      const server = await startServer(n.ns, tcpServerSource(t.address, 9300, t.down));
      servers.push(server.child);
      const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', ...t.args, '-T', '9300', '--', process.execPath, '-e', tcpClientSource(t.address, 9300, t.up, t.count)], { timeoutMs: 60000 });
      expect(r.code, describeResult(r, server.output())).to.equal(0);
      const sent = /SENT-SHA (\w+)/.exec(r.stdout)?.[1];
      const replySha = /REPLY-SHA (\w+)/.exec(server.output())?.[1];
      const received = [...r.stdout.matchAll(/RECEIVED (\d+) (\w+)/g)];
      expect(received, describeResult(r, server.output())).to.have.length(t.count);
      for (const m of received) expect([Number(m[1]), m[2]]).to.deep.equal([t.down, replySha]);
      const got = [...server.output().matchAll(/GOT (\d+) (\w+)/g)];
      expect(got, describeResult(r, server.output())).to.have.length(t.count);
      for (const m of got) expect([Number(m[1]), m[2]]).to.deep.equal([t.up, sent]);
    });
  }

  it('-T with a remapped port (namespace 9401 to host 9400); a port with no host listener resets the client, ferry carries on', async function () {
    const n = net as TestNetwork;
    const server = await startServer(n.ns, tcpServerSource('127.0.0.1', 9400, 1000));
    servers.push(server.child);
    // First the port without a host listener, then the remapped one.
    const script = `function next(){${tcpClientSource('127.0.0.1', 9401, 100, 1)}}\n${tcpClientSource('127.0.0.1', 9402, 10, 1, 'next()')}`;
    const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '-T', '9401:9400,9402', '--', process.execPath, '-e', script], { timeoutMs: 30000 });
    expect(r.code, describeResult(r, server.output())).to.equal(0);
    // 9402: ferry accepted in the namespace, the host refused: the client sees the connection end without data.
    expect(r.stdout, describeResult(r, server.output())).to.match(/(ERROR ECONNRESET|RECEIVED 0 )/);
    expect(r.stdout, describeResult(r, server.output())).to.match(/RECEIVED 1000 /);
  });

  it('-T auto follows a host server as it starts and stops (rescanned every second)', async function () {
    const n = net as TestNetwork;
    // Inside: connect to 9700 every 200 ms; report the first success, then the first refusal after it.
    const client = [
      "const net=require('net');let phase='waiting';",
      "function attempt(){const c=net.connect(9700,'127.0.0.1');let got='';c.on('data',d=>got+=d);",
      "c.on('end',()=>{if(phase==='waiting'){console.log('CONNECTED '+got);phase='connected'}setTimeout(attempt,200)});",
      "c.on('error',e=>{if(phase==='connected'){console.log('GONE '+e.code);process.exit(0)}setTimeout(attempt,200)})}",
      "attempt();setTimeout(()=>{console.log('TIMEOUT '+phase);process.exit(2)},20000);",
    ].join('');
    const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '-T', 'auto', '--', process.execPath, '-e', client]);
    servers.push(ferry);
    let out = '';
    ferry.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((resolve) => ferry.on('close', (code) => resolve(code)));
    // Nothing listens on the host yet: the client keeps failing.
    await new Promise((r) => setTimeout(r, 1500));
    expect(out).to.not.include('CONNECTED');
    const server = await startServer(n.ns, "require('net').createServer(c=>c.end('hello from the host')).listen(9700,'127.0.0.1',()=>console.log('ready'));");
    for (let i = 0; i < 100 && !out.includes('CONNECTED'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out, out).to.include('CONNECTED hello from the host');
    await stopChild(server.child, 1000);
    expect(await exited, out).to.equal(0);
    expect(out).to.match(/GONE (ECONNREFUSED|ECONNRESET)/);
  });

  it('-U relays UDP datagrams of 1 to 60000 bytes both ways, IPv4 and IPv6', async function () {
    const n = net as TestNetwork;
    for (const [family, address] of [['udp4', '127.0.0.1'], ['udp6', '::1']]) {
      const server = await startServer(
        n.ns,
        `const s=require('dgram').createSocket('${family}');s.on('message',(m,r)=>s.send(Buffer.concat([Buffer.from('echo:'),m]),r.port,r.address));s.bind(9500,'${address}',()=>console.log('ready'));`,
      );
      servers.push(server.child);
    }
    const client = [
      "let done=0;setTimeout(()=>{console.log('TIMEOUT');process.exit(2)},10000).unref();",
      "for(const [fam,addr] of [['udp4','127.0.0.1'],['udp6','::1']]){const s=require('dgram').createSocket(fam);",
      'const sizes=[1,1000,60000];let i=0;const send=()=>{const b=Buffer.alloc(sizes[i],i+65);s.cur=b;s.send(b,9500,addr)};',
      "s.on('message',m=>{const ok=m.length===s.cur.length+5&&m.subarray(5).equals(s.cur);console.log(fam+' '+sizes[i]+' '+(ok?'OK':'BAD'));",
      'if(++i<sizes.length)send();else{s.close();if(++done===2)process.exit(0)}});send();}',
    ].join('');
    const r = await runIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--config-net', '-U', '9500', '--', process.execPath, '-e', client], { timeoutMs: 30000 });
    expect(r.code, describeResult(r)).to.equal(0);
    for (const family of ['udp4', 'udp6']) for (const size of [1, 1000, 60000]) expect(r.stdout, describeResult(r)).to.include(`${family} ${size} OK`);
  });
});
