/**
 * Many idle TCP connections for the memory test: a Node.js client in a
 * namespace opens COUNT connections to ADDRESS:PORT (at most 50 connecting
 * at a time, each bounded by 10 s), prints "FLOWS open N failed F", then
 * holds them until its stdin closes or 120 s pass.
 */
import { type ChildProcess } from 'child_process';
import { spawnIn, stopChild } from '../../test/support/netns';

const FLOWS_CLIENT = `
const net = require('net');
const [address, port, count] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const sockets = [];
let started = 0, open = 0, failed = 0, settled = 0;
function next() {
  if (started >= count) return;
  started++;
  const s = net.connect(port, address);
  let done = false;
  const finish = (ok) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    if (ok) open++; else failed++;
    if (++settled === count) console.log('FLOWS open ' + open + ' failed ' + failed);
    next();
  };
  const timer = setTimeout(() => { s.destroy(); finish(false); }, 10000);
  s.on('connect', () => finish(true));
  s.on('error', () => finish(false));
  sockets.push(s);
}
for (let i = 0; i < 50; i++) next();
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
setTimeout(() => process.exit(0), 120000).unref();
`;

/** The client holding the flows. */
export interface FlowClient {
  /** Connections established and refused or timed out. */
  open: number;
  failed: number;
  /** Closes every connection (the client exits). */
  close(): Promise<void>;
}

/** Opens `count` connections from `ns` to `address`:`port`; resolves once all have settled (rejects after `timeoutMs`). */
export async function openFlows(ns: string, address: string, port: number, count: number, timeoutMs = 60000): Promise<FlowClient> {
  const child: ChildProcess = spawnIn(ns, [process.execPath, '-e', FLOWS_CLIENT, address, String(port), String(count)]);
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
  const close = async (): Promise<void> => {
    child.stdin?.end();
    await stopChild(child, 3000);
  };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = /FLOWS open (\d+) failed (\d+)/.exec(out);
    if (m) return { open: Number(m[1]), failed: Number(m[2]), close };
    if (child.exitCode !== null || Date.now() > deadline) {
      await close();
      throw new Error(`flow client: ${out.trim().slice(0, 300) || 'no result'}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
