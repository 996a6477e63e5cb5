/**
 * Helpers for the drop-in tests (ferry as passt's pasta test suite, podman
 * and libvirt run passt/pasta): a held, unconfigured user+net namespace,
 * one-exchange TCP/UDP echo tools run on either side, an ISC dhclient
 * script that only configures the namespace's own link (never the
 * machine's resolv.conf), and the host's IPv6 default route moved to a
 * link-local router, as real hosts have it. Every process is bounded in
 * time and ended by its PID.
 */
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { run, runChecked, spawnIn, stopChild, type CommandResult, type TestNetwork, TEST_NET } from '../../support/netns';

/** The router's link-local address in the test network (on the peer's uplink end). */
export const ROUTER_LINK_LOCAL = 'fe80::fe';

/** One-exchange echo tools (node): print 'listening', then the peer and payload; the client prints the reply. */
export const ECHO_TOOL_SOURCE = `'use strict';
const net = require('net');
const dgram = require('dgram');
const [mode, host, portText, message] = process.argv.slice(2);
const port = Number(portText);
const bail = setTimeout(() => { process.stderr.write(mode + ': timed out\\n'); process.exit(2); }, 15000);
const v6 = host.includes(':');
if (mode === 'tcp-server') {
  const server = net.createServer((socket) => {
    let data = '';
    socket.on('data', (d) => (data += d));
    socket.on('end', () => { socket.end('echo:' + data); process.stdout.write(socket.remoteAddress + ' ' + data + '\\n'); server.close(); clearTimeout(bail); });
  });
  server.listen({ host, port, ipv6Only: v6 }, () => process.stdout.write('listening\\n'));
} else if (mode === 'tcp-client') {
  const socket = net.connect({ host, port }, () => socket.end(message));
  let reply = '';
  socket.on('data', (d) => (reply += d));
  socket.on('end', () => { process.stdout.write(reply + '\\n'); clearTimeout(bail); });
  socket.on('error', (e) => { process.stderr.write(e.message + '\\n'); process.exit(1); });
} else if (mode === 'udp-server') {
  const socket = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4', ipv6Only: v6 });
  socket.on('message', (m, from) => socket.send('echo:' + m, from.port, from.address, () => { process.stdout.write(from.address + ' ' + m + '\\n'); socket.close(); clearTimeout(bail); }));
  socket.bind(port, host, () => process.stdout.write('listening\\n'));
} else if (mode === 'udp-client') {
  const socket = dgram.createSocket(v6 ? 'udp6' : 'udp4');
  let tries = 0;
  const send = () => { if (tries++ < 20) socket.send(message, port, host); };
  const timer = setInterval(send, 500);
  socket.on('message', (m) => { process.stdout.write(m + '\\n'); clearInterval(timer); socket.close(); clearTimeout(bail); });
  socket.on('error', (e) => { process.stderr.write(e.message + '\\n'); process.exit(1); });
  send();
}
`;

/**
 * dhclient's script: records each event's variables in DIR/REASON.env and
 * configures only the interface it was given (address, default route),
 * never /etc/resolv.conf.
 */
export function dhclientScript(dir: string): string {
  return `#!/bin/sh
env | grep -E '^(reason|interface|new_|old_)' | sort > "${dir}/$reason.env"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" 2>/dev/null
    [ -n "$new_routers" ] && ip route replace default via "\${new_routers%% *}" dev "$interface" ;;
  BOUND6|RENEW6|REBIND6)
    ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad 2>/dev/null ;;
esac
exit 0
`;
}

/** Variables of one dhclient event (e.g. BOUND, BOUND6) as recorded by dhclientScript, or null. */
export function dhclientEvent(dir: string, reason: string): Record<string, string> | null {
  const file = path.join(dir, `${reason}.env`);
  if (!fs.existsSync(file)) return null;
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) out[line.slice(0, at)] = line.slice(at + 1);
  }
  return out;
}

/** The host (test namespace) routes IPv6 via the router's link-local address, as real hosts do. */
export async function useLinkLocalIpv6Router(net: TestNetwork): Promise<void> {
  await runChecked(['ip', '-n', net.peerNs, '-6', 'addr', 'add', `${ROUTER_LINK_LOCAL}/64`, 'dev', TEST_NET.peerLinkName, 'nodad']);
  await runChecked(['ip', '-n', net.ns, '-6', 'route', 'replace', 'default', 'via', ROUTER_LINK_LOCAL, 'dev', TEST_NET.uplinkName]);
}

/** A process holding an unconfigured user+net namespace (as passt's tests hold one), started in the test namespace. */
export async function holdNamespace(net: TestNetwork): Promise<{ child: ChildProcess; pid: number }> {
  const child = spawnIn(net.ns, ['unshare', '--user', '--map-root-user', '--net', 'sleep', '300']);
  const pid = child.pid as number;
  // `ip netns exec` and unshare exec in place: the PID is the holder's once it has unshared.
  for (let i = 0; i < 200 && fs.readlinkSync(`/proc/${pid}/ns/user`) === fs.readlinkSync('/proc/self/ns/user'); i++) await sleep(10);
  return { child, pid };
}

/** argv that runs a command in the held namespace of `pid`. */
export function inHeld(pid: number, argv: string[]): string[] {
  return ['nsenter', '-t', String(pid), '-U', '-n', '--', ...argv];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Wait until `probe` is true (polled every 100 ms) or `timeoutMs` passed; returns the last result. */
export async function waitUntil(probe: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
}

/**
 * Where a tool runs: the test namespace ("the host"), the held user+net
 * namespace of a PID, or only the network namespace of a PID (no user
 * namespace of its own).
 */
export type Side = { kind: 'host'; ns: string } | { kind: 'held'; pid: number } | { kind: 'net'; pid: number };

function argvOn(side: Side, argv: string[]): string[] {
  if (side.kind === 'host') return ['ip', 'netns', 'exec', side.ns, ...argv];
  if (side.kind === 'net') return ['nsenter', '-t', String(side.pid), '-n', '--', ...argv];
  return inHeld(side.pid, argv);
}

/** Outcome of one echo exchange. */
export interface Exchange {
  /** What the client printed (the reply), trimmed. */
  reply: string;
  /** The peer address the server saw. */
  peer: string;
  /** Output of both, for assertion messages. */
  details: string;
}

/**
 * One exchange: a server (`tcp-server`/`udp-server` on bind:port) on one
 * side, a client to target:port on the other; bounded at 20 s.
 */
export async function exchange(tool: string, protocol: 'tcp' | 'udp', server: { side: Side; bind: string; port: number }, client: { side: Side; target: string }, message: string): Promise<Exchange> {
  const argv = argvOn(server.side, [process.execPath, tool, `${protocol}-server`, server.bind, String(server.port)]);
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let serverOut = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (serverOut += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (serverOut += d));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  try {
    await waitUntil(() => serverOut.includes('listening') || child.exitCode !== null, 5000);
    const result: CommandResult = await run(argvOn(client.side, [process.execPath, tool, `${protocol}-client`, client.target, String(server.port), message]), { timeoutMs: 20000 });
    await Promise.race([exited, sleep(3000)]);
    const seen = serverOut.split('\n').find((line) => line.endsWith(` ${message}`)) ?? '';
    return {
      reply: result.stdout.trim(),
      peer: seen.slice(0, seen.length - message.length - 1),
      details: `client (${result.code}): ${result.stdout}${result.stderr}\nserver: ${serverOut}`,
    };
  } finally {
    await stopChild(child, 1000);
  }
}
