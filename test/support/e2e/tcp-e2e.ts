/**
 * Shared pieces of the real-guest TCP suites (test/e2e/tcp-*.test.ts):
 *   - the peer namespace's servers (Node `net`, one script, started with
 *     startTcpServers), listening dual-stack on [::]:
 *       5001 upload sink: reads to EOF, answers "sha256 HEX bytes N", logs
 *            "UPLOAD from ADDR bytes N sha256 HEX";
 *       5002 download source: reads "N\n", sends N random bytes, closes, logs
 *            "DOWNLOAD to ADDR bytes N sha256 HEX";
 *       5003 echo; 5004 half-close (answers after the client's FIN,
 *            "after-fin got N bytes"); 5005 resets on the first data;
 *       5006 answers "ok" and logs "RESET-SEEN CODE" when the client resets;
 *     or, with mode "loopback", only the upload sink on 127.0.0.1:5010;
 *   - an inbound client (runInboundClient) that sends N random bytes to a
 *     server in the guest reached through ferry's -t and checks the hash the
 *     guest answers with;
 *   - the guest tool (test/guest/tcp-tool.c) as gzip+base64 for /test.sh.
 */
import { spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { gzipSync } from 'zlib';
import { spawnIn } from '../netns';
import { REPO_ROOT } from '../guest';

export const TCP_PORTS = { upload: 5001, download: 5002, echo: 5003, halfClose: 5004, reset: 5005, resetSeen: 5006, closed: 5999, loopback: 5010 } as const;

const SERVERS = `
const net = require('net');
const crypto = require('crypto');
const log = (line) => process.stdout.write(line + '\\n');
const mode = process.argv[2];
const guard = (c, what) => c.on('error', (e) => log('ERROR ' + what + ' ' + e.code));
function sink(c) {
  guard(c, 'upload');
  const h = crypto.createHash('sha256');
  let n = 0;
  c.on('data', (d) => { n += d.length; h.update(d); });
  c.on('end', () => {
    const x = h.digest('hex');
    log('UPLOAD from ' + c.remoteAddress + ' bytes ' + n + ' sha256 ' + x);
    c.end('sha256 ' + x + ' bytes ' + n + '\\n');
  });
}
function source(c) {
  guard(c, 'download');
  let text = '';
  let started = false;
  c.on('data', (d) => {
    if (started) return;
    text += d.toString('latin1');
    const nl = text.indexOf('\\n');
    if (nl < 0) return;
    started = true;
    const total = Number(text.slice(0, nl));
    const h = crypto.createHash('sha256');
    let left = total;
    const pump = () => {
      while (left > 0) {
        const chunk = crypto.randomBytes(Math.min(left, 1 << 20));
        h.update(chunk);
        left -= chunk.length;
        if (!c.write(chunk)) { c.once('drain', pump); return; }
      }
      log('DOWNLOAD to ' + c.remoteAddress + ' bytes ' + total + ' sha256 ' + h.digest('hex'));
      c.end();
    };
    pump();
  });
}
const servers = [];
function listen(port, host, options, handler) {
  const s = net.createServer(options, handler);
  s.listen({ port, host, ipv6Only: false, backlog: 4096 }, () => log('LISTENING ' + port));
  servers.push(s);
}
if (mode === 'loopback') {
  listen(${TCP_PORTS.loopback}, '127.0.0.1', { allowHalfOpen: true }, sink);
} else {
  listen(${TCP_PORTS.upload}, '::', { allowHalfOpen: true }, sink);
  listen(${TCP_PORTS.download}, '::', {}, source);
  let echoed = 0;
  listen(${TCP_PORTS.echo}, '::', {}, (c) => { guard(c, 'echo'); c.on('data', (d) => c.write(d)); c.on('end', () => echoed++); });
  setInterval(() => log('ECHO-CLOSED ' + echoed), 2000).unref();
  listen(${TCP_PORTS.halfClose}, '::', { allowHalfOpen: true }, (c) => {
    guard(c, 'halfclose');
    let n = 0;
    c.on('data', (d) => (n += d.length));
    c.on('end', () => { log('HALFCLOSE end after ' + n + ' bytes from ' + c.remoteAddress); c.end('after-fin got ' + n + ' bytes\\n'); });
  });
  listen(${TCP_PORTS.reset}, '::', {}, (c) => { guard(c, 'reset'); c.once('data', () => { log('RESETTING ' + c.remoteAddress); c.resetAndDestroy(); }); });
  listen(${TCP_PORTS.resetSeen}, '::', {}, (c) => {
    c.on('data', () => c.write('ok\\n'));
    c.on('error', (e) => log('RESET-SEEN ' + e.code));
    c.on('end', () => log('RESET-SEEN none (FIN)'));
  });
}
let ready = 0;
for (const s of servers) s.on('listening', () => { if (++ready === servers.length) log('READY'); });
`;

const INBOUND_CLIENT = `
const net = require('net');
const crypto = require('crypto');
const [host, port, bytes, localAddress] = process.argv.slice(2);
const total = Number(bytes);
let tries = 0;
function attempt() {
  tries++;
  const h = crypto.createHash('sha256');
  const c = net.connect({ host, port: Number(port), localAddress, allowHalfOpen: true });
  let reply = '';
  let left = total;
  let failed = false;
  const start = Date.now();
  c.on('error', (e) => {
    failed = true;
    process.stdout.write('TRY ' + tries + ' ' + e.code + '\\n');
    if (tries < 20) setTimeout(attempt, 500); else process.exit(1);
  });
  c.on('connect', () => {
    const pump = () => {
      while (left > 0) {
        const chunk = crypto.randomBytes(Math.min(left, 1 << 20));
        h.update(chunk);
        left -= chunk.length;
        if (!c.write(chunk)) { c.once('drain', pump); return; }
      }
      c.end();
    };
    pump();
  });
  c.on('data', (d) => (reply += d.toString()));
  c.on('end', () => {
    if (failed) return;
    process.stdout.write('INBOUND sent ' + total + ' sha256 ' + h.digest('hex') + ' ms ' + (Date.now() - start) + ' reply ' + reply.trim() + '\\n');
    process.exit(0);
  });
}
attempt();
`;

/** Writes the servers and the inbound client into dir; returns their paths. */
export function writeTcpScripts(dir: string): { servers: string; client: string } {
  const servers = path.join(dir, 'tcp-servers.js');
  const client = path.join(dir, 'tcp-inbound-client.js');
  fs.writeFileSync(servers, SERVERS);
  fs.writeFileSync(client, INBOUND_CLIENT);
  return { servers, client };
}

/** A server process and everything it printed so far. */
export interface LoggedChild {
  child: ChildProcess;
  output(): string;
}

/** Starts `node script ...args` in `ns`, collecting its output. */
export function spawnLogged(ns: string, argv: string[]): LoggedChild {
  const child = spawnIn(ns, argv);
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
  return { child, output: () => out };
}

/** Starts the servers script in `ns` ('peer' or 'loopback' mode) and resolves once all listen. */
export async function startTcpServers(ns: string, script: string, mode: 'peer' | 'loopback', timeoutMs = 10000): Promise<LoggedChild> {
  const servers = spawnLogged(ns, [process.execPath, script, mode]);
  const deadline = Date.now() + timeoutMs;
  while (!/^READY$/m.test(servers.output())) {
    if (Date.now() > deadline || servers.child.exitCode !== null) throw new Error(`TCP servers (${mode}) did not start:\n${servers.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return servers;
}

/**
 * Builds the guest tools (scripts/build-guest-tools.sh) and returns
 * tcp-tool, gzipped and base64-encoded in 76-column lines for a here-doc.
 */
export function tcpToolForGuest(): string {
  const built = spawnSync(path.join(REPO_ROOT, 'scripts', 'build-guest-tools.sh'), [], { encoding: 'utf8', timeout: 120000 });
  if (built.status !== 0) throw new Error(`scripts/build-guest-tools.sh failed:\n${built.stderr}`);
  const toolPath = built.stdout.split('\n').find((l) => l.endsWith('/tcp-tool'));
  if (toolPath === undefined) throw new Error(`build-guest-tools.sh printed no tcp-tool path:\n${built.stdout}`);
  return gzipSync(fs.readFileSync(toolPath), { level: 9 }).toString('base64').replace(/(.{76})/g, '$1\n');
}

/** /test.sh lines that unpack the tool to $T and define say(). */
export function guestToolPrelude(toolGzBase64: string): string {
  return `T=/tmp/tcp-tool
base64 -d <<'B64' | gunzip > $T
${toolGzBase64}
B64
chmod +x $T
say() { echo "FERRY-GUEST: $*"; }
`;
}

/** The text after "FERRY-GUEST: name " on the guest's console, or null. */
export function guestMarker(serial: string, name: string): string | null {
  const m = new RegExp(`FERRY-GUEST: ${name} (.*?)\\r?\\n`).exec(serial);
  return m ? m[1] : null;
}
