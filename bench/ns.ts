/**
 * Namespace benchmarks: `ferry pasta` beside `pasta` (the build
 * FERRY_BENCH_PASTA or PATH names, see peers.ts) and `slirp4netns`, each
 * serving a fresh network namespace through a tap device, from the test
 * namespace (where its host sockets live), and the direct path: a veth
 * pair between the same two namespaces, the test namespace routing (the
 * kernel alone, the physical limit). iperf3
 * runs inside that namespace against a server in the peer namespace
 * (192.0.2.2): TCP both ways at MTU 65520 and 1500, UDP at a fixed rate,
 * and TCP request/response round trips over one connection. The back-end's
 * CPU time is read from /proc around each run.
 */
import { type ChildProcess, spawnSync } from 'child_process';
import * as fs from 'fs';
import { createTestNetwork, destroyTestNetwork, run, runChecked, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../test/support/netns';
import { commandAvailable, REPO_ROOT } from '../test/support/guest';
import { FERRY_BIN, FERRY_CLI_MODULE } from '../test/support/e2e/ferry-process';
import { processCpuSeconds } from './support/cpu';
import { pastaBinary } from './support/peers';
import { type Measurement, type Run, type TestKind } from './figures';
import { IperfServer, iperfCookie, parseIperf, receivedFigures } from './support/iperf';

/** One test run inside the served namespace. */
export interface NsTest {
  test: string;
  kind: TestKind;
  mtu: number;
  /** iperf3 client arguments after -c/-p/-J (unused for rr). */
  args: string[];
  reverse: boolean;
  udp: boolean;
  seconds: number;
}

/** Durations, runs and rates of the namespace benchmarks. */
export interface NsPlan {
  seconds: number;
  runs: number;
  udpRate: string;
  kinds: Set<TestKind>;
}

/** The tests of a plan, grouped by MTU in the order they run. */
export function nsTests(plan: NsPlan): NsTest[] {
  const t: NsTest[] = [];
  const S = ['-t', String(plan.seconds)];
  for (const mtu of [65520, 1500]) {
    if (plan.kinds.has('tcp')) {
      t.push({ test: `tcp ns->host MTU ${mtu}`, kind: 'tcp', mtu, args: S, reverse: false, udp: false, seconds: plan.seconds });
      t.push({ test: `tcp host->ns MTU ${mtu}`, kind: 'tcp', mtu, args: [...S, '-R'], reverse: true, udp: false, seconds: plan.seconds });
    }
  }
  if (plan.kinds.has('udp')) {
    const udp = ['-u', '-b', plan.udpRate, '-l', '1400', ...S];
    t.push({ test: `udp ${plan.udpRate}bit/s 1400 B ns->host`, kind: 'udp', mtu: 65520, args: udp, reverse: false, udp: true, seconds: plan.seconds });
    t.push({ test: `udp ${plan.udpRate}bit/s 1400 B host->ns`, kind: 'udp', mtu: 65520, args: [...udp, '-R'], reverse: true, udp: true, seconds: plan.seconds });
  }
  if (plan.kinds.has('pps')) {
    t.push({ test: 'udp 64 B unlimited ns->host', kind: 'pps', mtu: 65520, args: ['-u', '-b', '0', '-l', '64', ...S], reverse: false, udp: true, seconds: plan.seconds });
  }
  if (plan.kinds.has('rr')) {
    t.push({ test: 'tcp 1-byte request/response', kind: 'rr', mtu: 65520, args: [], reverse: false, udp: false, seconds: plan.seconds });
  }
  return t;
}

const IPERF_PORT = 5201;
const RR_PORT = 5301;

/** A namespace back-end: why it cannot run (null if it can) and its command line for a namespace and MTU. */
export interface NsBackend {
  name: string;
  missing(): string | null;
  /** The back-end process; absent for the direct veth path, which `setup` builds instead. */
  argv?(innerNs: string, mtu: number): string[];
  setup?(net: TestNetwork, innerNs: string, mtu: number): Promise<void>;
}

/** The direct path's subnet between the test namespace (.1) and the served one (.2). */
const VETH_NET = { host: '198.51.100.1', inner: '198.51.100.2', prefix: 24, subnet: '198.51.100.0/24' } as const;

/**
 * A veth pair test namespace <-> served namespace at `mtu`, the test
 * namespace forwarding, the peer routing the subnet back to it.
 */
async function setupVethPath(net: TestNetwork, inner: string, mtu: number): Promise<void> {
  const hostEnd = 'bench-veth0';
  await runChecked(['ip', '-n', net.ns, 'link', 'add', hostEnd, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', inner, 'mtu', String(mtu)]);
  await runChecked(['ip', '-n', net.ns, 'addr', 'add', `${VETH_NET.host}/${VETH_NET.prefix}`, 'dev', hostEnd]);
  await runChecked(['ip', '-n', net.ns, 'link', 'set', hostEnd, 'up']);
  await runChecked(['ip', 'netns', 'exec', net.ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  await runChecked(['ip', '-n', inner, 'addr', 'add', `${VETH_NET.inner}/${VETH_NET.prefix}`, 'dev', 'eth0']);
  await runChecked(['ip', '-n', inner, 'link', 'set', 'lo', 'up']);
  await runChecked(['ip', '-n', inner, 'link', 'set', 'eth0', 'up']);
  await runChecked(['ip', '-n', inner, 'route', 'add', 'default', 'via', VETH_NET.host]);
  await run(['ip', '-n', net.peerNs, 'route', 'del', VETH_NET.subnet]);
  await runChecked(['ip', '-n', net.peerNs, 'route', 'add', VETH_NET.subnet, 'via', TEST_NET.hostV4]);
}

/** Removes the veth pair (deleting one end deletes both). */
async function teardownVethPath(net: TestNetwork): Promise<void> {
  await run(['ip', '-n', net.ns, 'link', 'del', 'bench-veth0']);
}

/** The direct path's name in the tables. */
export const VETH_BACKEND = 'veth (direct, no back-end)';

/** The namespace back-ends in table order: ferry first. */
export const NS_BACKENDS: NsBackend[] = [
  {
    name: 'ferry',
    missing: () => (fs.existsSync(FERRY_CLI_MODULE) ? null : `ferry is not built (${FERRY_CLI_MODULE})`),
    argv: (inner, mtu) => [process.execPath, FERRY_BIN, 'pasta', '-q', '--config-net', '--mtu', String(mtu), '--netns', inner],
  },
  {
    name: 'pasta',
    missing: () => pastaBinary().missing,
    argv: (inner, mtu) => [pastaBinary().path ?? 'pasta', '-f', '-q', '--runas', '0', '--config-net', '-m', String(mtu), '-t', 'none', '-u', 'none', '-T', 'none', '-U', 'none', '--netns', inner],
  },
  {
    name: 'slirp4netns',
    missing: () => (commandAvailable('slirp4netns') ? null : 'slirp4netns is not installed (scripts/install-bench-deps.sh)'),
    argv: (inner, mtu) => [
      'slirp4netns', '--configure', `--mtu=${Math.min(mtu, 65521)}`, '--cidr=203.0.113.0/24', '--disable-host-loopback', '--disable-dns',
      '--netns-type=path', `/run/netns/${inner}`, 'tap0',
    ],
  },
  {
    name: VETH_BACKEND,
    missing: () => null,
    setup: setupVethPath,
  },
];

/** The request/response server (peer namespace): answers every byte with one byte. */
const RR_SERVER = `
const net = require('net');
net.createServer((c) => { c.setNoDelay(true); c.on('data', (d) => c.write(d.subarray(d.length - 1))); c.on('error', () => undefined); })
  .listen(Number(process.argv[2]), process.argv[1], () => console.log('ready'));
`;

/** The request/response client (served namespace): one request in flight, for N seconds; prints "RR count seconds". */
const RR_CLIENT = `
const net = require('net');
const [address, port, seconds] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const c = net.connect(port, address);
const one = Buffer.from([1]);
let count = 0, t0 = 0, done = false;
c.setNoDelay(true);
c.on('connect', () => { t0 = process.hrtime.bigint(); c.write(one); });
c.on('data', () => {
  count++;
  const el = Number(process.hrtime.bigint() - t0) / 1e9;
  if (el >= seconds) { if (!done) { done = true; console.log('RR ' + count + ' ' + el); c.destroy(); } return; }
  c.write(one);
});
c.on('error', (e) => { console.log('ERROR ' + e.message); process.exit(1); });
setTimeout(() => { console.log('TIMEOUT ' + count); process.exit(2); }, (seconds + 20) * 1000).unref();
`;

let innerCounter = 0;
const liveInner = new Set<string>();
process.on('exit', () => {
  for (const n of liveInner) spawnSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
});

async function createInnerNamespace(): Promise<string> {
  const name = `ferry-bench-${process.pid}-${innerCounter++}-inner`;
  await runChecked(['ip', 'netns', 'add', name]);
  liveInner.add(name);
  return name;
}

async function deleteInnerNamespace(name: string): Promise<void> {
  await run(['ip', 'netns', 'del', name]).catch(() => undefined);
  liveInner.delete(name);
}

/** Resolves once the served namespace has a default route over an up link; rejects if the back-end exits or after 15 s. */
async function waitForNamespaceNetwork(inner: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 15000;
  for (;;) {
    const route = await run(['ip', '-n', inner, '-4', 'route', 'show', 'default']);
    if (route.stdout.trim() !== '') return;
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`back-end exited before configuring the namespace:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`no default route in the namespace after 15 s:\n${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs one iperf3 client in `inner`; the receiver's figures. */
async function iperfRun(inner: string, server: IperfServer, t: NsTest): Promise<Omit<Run, 'cpuSeconds'>> {
  const r = await run(['ip', 'netns', 'exec', inner, 'iperf3', '-c', TEST_NET.serverV4, '-p', String(IPERF_PORT), '-J', '-i', '1', ...t.args], {
    timeoutMs: (t.seconds + 30) * 1000,
  });
  const client = parseIperf(r.stdout);
  const receiver = t.reverse ? client : await server.documentFor(iperfCookie(client));
  const got = receivedFigures(receiver, t.udp);
  const out: Omit<Run, 'cpuSeconds'> = { bytes: got.bytes, seconds: got.seconds };
  if (got.stalledSeconds !== undefined) out.stalledSeconds = got.stalledSeconds;
  if (t.udp) Object.assign(out, { packets: got.packets, lostPackets: got.lostPackets, lostPercent: got.lostPercent });
  return out;
}

/** Runs the request/response client in `inner` against the peer's RR server. */
async function rrRun(inner: string, t: NsTest): Promise<Omit<Run, 'cpuSeconds'>> {
  const r = await run(['ip', 'netns', 'exec', inner, process.execPath, '-e', RR_CLIENT, TEST_NET.serverV4, String(RR_PORT), String(t.seconds)], {
    timeoutMs: (t.seconds + 30) * 1000,
  });
  const m = /^RR (\d+) ([\d.]+)$/m.exec(r.stdout);
  if (!m) throw new Error(`request/response client: ${r.stdout.trim()} ${r.stderr.trim()}`.slice(0, 300));
  return { bytes: Number(m[1]), seconds: Number(m[2]), roundTrips: Number(m[1]) };
}

/** Runs every test through one back-end (a fresh served namespace per MTU); one Measurement per test. */
export async function runNsBackend(backend: NsBackend, tests: NsTest[], runs: number, say: (line: string) => void): Promise<Measurement[]> {
  const out: Measurement[] = tests.map((t) => ({ section: 'ns', test: t.test, kind: t.kind, backend: backend.name, runs: [] }));
  let net: TestNetwork | null = null;
  let server: IperfServer | null = null;
  let rrServer: ChildProcess | null = null;
  try {
    net = await createTestNetwork();
    server = await IperfServer.start(net.peerNs, TEST_NET.serverV4, IPERF_PORT);
    rrServer = spawnIn(net.peerNs, [process.execPath, '-e', RR_SERVER, TEST_NET.serverV4, String(RR_PORT)]);
    let rrOut = '';
    rrServer.stdout?.setEncoding('utf8').on('data', (d: string) => (rrOut += d));
    for (let i = 0; i < 100 && !rrOut.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
    if (!rrOut.includes('ready')) throw new Error('request/response server did not start');
    for (const mtu of [...new Set(tests.map((t) => t.mtu))]) {
      const inner = await createInnerNamespace();
      const child = backend.argv ? spawnIn(net.ns, backend.argv(inner, mtu), { cwd: REPO_ROOT }) : null;
      let output = '';
      child?.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
      child?.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
      try {
        if (child) await waitForNamespaceNetwork(inner, child, () => output);
        else if (backend.setup) await backend.setup(net, inner, mtu);
        const link = await run(['ip', '-n', inner, '-o', 'link', 'show']);
        say(`  ${backend.name} MTU ${mtu}: ${link.stdout.split('\n').filter((l) => !/ lo:/.test(l) && l.trim()).map((l) => l.replace(/^\d+: (\S+):.* mtu (\d+).*/, '$1 mtu $2')).join(', ')}`);
        // The direct path has no back-end process: its CPU is the kernel's, not measured.
        const pid = child ? child.pid : -1;
        if (pid === undefined) throw new Error('back-end has no PID');
        const cpu = (): number => (pid > 0 ? processCpuSeconds(pid) : NaN);
        for (let i = 0; i < tests.length; i++) {
          const t = tests[i];
          if (t.mtu !== mtu) continue;
          for (let r = 0; r < runs; r++) {
            try {
              const cpu0 = cpu();
              const got = t.kind === 'rr' ? await rrRun(inner, t) : await iperfRun(inner, server, t);
              const cpu1 = cpu();
              out[i].runs.push({ ...got, cpuSeconds: cpu1 - cpu0 });
              const rate = t.kind === 'rr' ? `${((got.roundTrips ?? 0) / got.seconds).toFixed(0)} round trips/s` : `${((got.bytes * 8) / got.seconds / 1e9).toFixed(3)} Gbit/s`;
              const stall = got.stalledSeconds ? ` (stalled ${got.stalledSeconds} s)` : '';
              say(`  ${backend.name} ${t.test} run ${r + 1}: ${rate}${stall}${pid > 0 ? `, back-end CPU ${(cpu1 - cpu0).toFixed(2)} s` : ''}`);
            } catch (err) {
              out[i].error = (err as Error).message.split('\n')[0];
              say(`  ${backend.name} ${t.test} run ${r + 1}: ${out[i].error}`);
            }
            await new Promise((res) => setTimeout(res, 500));
          }
        }
      } catch (err) {
        say(`  ${backend.name} MTU ${mtu}: ${(err as Error).message}`);
        for (let i = 0; i < tests.length; i++) if (tests[i].mtu === mtu && !out[i].error) out[i].error = (err as Error).message.split('\n')[0];
      } finally {
        if (child) await stopChild(child, 3000);
        else await teardownVethPath(net);
        await deleteInnerNamespace(inner);
      }
    }
  } catch (err) {
    say(`  ${backend.name}: ${(err as Error).message}`);
    for (const m of out) if (!m.error && m.runs.length === 0) m.error = (err as Error).message.split('\n')[0];
  } finally {
    if (rrServer) await stopChild(rrServer, 1000);
    if (server) await server.stop();
    if (net) await destroyTestNetwork(net);
  }
  return out;
}

/** Why the namespace benchmarks cannot run at all here (empty when they can). */
export function nsPrerequisitesMissing(): string[] {
  return commandAvailable('iperf3') ? [] : ['iperf3'];
}

/** Where the served namespaces' names come from (for a leak check). */
export function liveInnerNamespaces(): string[] {
  return [...liveInner];
}
