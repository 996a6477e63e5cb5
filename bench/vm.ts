/**
 * VM benchmarks: the same guest (test/guest, one vCPU
 * under TCG) booted once per back-end in its own test network, running
 * iperf3 against a server in the peer namespace (192.0.2.2): TCP and UDP
 * both ways (-R for host to guest), and small datagrams. The guest prints
 * "bench begin/end NAME" around each run; the host samples the back-end's
 * CPU time (and QEMU's I/O threads') at those markers, and reads the
 * receiver's figures from iperf3's JSON (the server's for guest->host, the
 * guest's own, printed on the console, for host->guest).
 *
 * Back-ends: ferry (vhost-user), passt in vhost-user mode (the build
 * FERRY_BENCH_PASST or PATH names, see peers.ts), QEMU's -netdev user
 * (libslirp inside QEMU: its back-end CPU is QEMU's threads other than the
 * vCPU). The guest sets its MTU before each test (65520 or 1500).
 *
 * Memory: the back-end's RSS idle (started, no guest), with the guest
 * attached (booted, before the tests), and with the guest holding 1000 open
 * TCP flows: after the tests the guest listens (iperf3 -s, which accepts one
 * connection and leaves the rest established in its backlog) on a port the
 * back-end forwards (-t), a client in the peer namespace opens the
 * connections, the guest counts them in /proc/net/tcp and tcp6.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type ChildProcess } from 'child_process';
import { createTestNetwork, destroyTestNetwork, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../test/support/netns';
import { bootGuest, commandAvailable, type Guest, missingGuestPrerequisites } from '../test/support/guest';
import { DEFAULT_GUEST_MAC, type GuestNic } from '../test/support/qemu';
import { FERRY_CLI_MODULE } from '../test/support/e2e/ferry-process';
import { processCpuSeconds, qemuIoCpuSeconds } from './support/cpu';
import { rssBytes, startBenchFerry } from './support/ferry';
import { type Measurement, type MemorySample, type Run, type TestKind } from './figures';
import { IperfServer, iperfCookie, parseIperf, receivedFigures } from './support/iperf';
import { openFlows } from './support/flows';
import { passtBinary, passtHasVhostUser } from './support/peers';

/** One iperf3 test the guest runs. */
export interface VmTest {
  test: string;
  kind: TestKind;
  /** iperf3 client arguments after -c/-p/-J. */
  args: string[];
  /** -R: the server (host side) sends, the guest receives. */
  reverse: boolean;
  udp: boolean;
  seconds: number;
  /** The guest's link MTU during the test (capped by the back-end's, see VmBackend.maxMtu). */
  mtu: number;
}

/** Durations, runs and rates of the VM benchmarks. */
export interface VmPlan {
  tcpSeconds: number;
  udpSeconds: number;
  runs: number;
  /** iperf3 -b for the fixed-rate UDP tests (e.g. "200M"). */
  udpRate: string;
  /** iperf3 -b for host->guest small datagrams (guest->host is unlimited). */
  smallRateDown: string;
  /** Which kinds to run. */
  kinds: Set<TestKind>;
}

/** The tests of a plan, in the order the guest runs them. */
export function vmTests(plan: VmPlan): VmTest[] {
  const t: VmTest[] = [];
  const S = (s: number): string[] => ['-t', String(s)];
  if (plan.kinds.has('tcp')) {
    for (const mtu of [65520, 1500]) {
      t.push({ test: `tcp guest->host MTU ${mtu}`, kind: 'tcp', args: S(plan.tcpSeconds), reverse: false, udp: false, seconds: plan.tcpSeconds, mtu });
      t.push({ test: `tcp host->guest MTU ${mtu}`, kind: 'tcp', args: [...S(plan.tcpSeconds), '-R'], reverse: true, udp: false, seconds: plan.tcpSeconds, mtu });
    }
  }
  if (plan.kinds.has('udp')) {
    const udp = ['-u', '-b', plan.udpRate, '-l', '1400', ...S(plan.udpSeconds)];
    t.push({ test: `udp ${plan.udpRate}bit/s 1400 B guest->host`, kind: 'udp', args: udp, reverse: false, udp: true, seconds: plan.udpSeconds, mtu: 65520 });
    t.push({ test: `udp ${plan.udpRate}bit/s 1400 B host->guest`, kind: 'udp', args: [...udp, '-R'], reverse: true, udp: true, seconds: plan.udpSeconds, mtu: 65520 });
  }
  if (plan.kinds.has('pps')) {
    t.push({ test: 'udp 64 B unlimited guest->host', kind: 'pps', args: ['-u', '-b', '0', '-l', '64', ...S(plan.udpSeconds)], reverse: false, udp: true, seconds: plan.udpSeconds, mtu: 65520 });
    t.push({
      test: `udp 64 B ${plan.smallRateDown}bit/s host->guest`,
      kind: 'pps',
      args: ['-u', '-b', plan.smallRateDown, '-l', '64', ...S(plan.udpSeconds), '-R'],
      reverse: true,
      udp: true,
      seconds: plan.udpSeconds,
      mtu: 65520,
    });
  }
  return t;
}

const IPERF_PORT = 5201;
/** The guest port the back-ends forward from the host (-t) for the 1000-flow memory test. */
export const FLOWS_PORT = 5400;
/** Flows the guest holds open for the memory test. */
export const FLOWS = 1000;

/** A back-end under test, started for one boot. */
interface StartedBackend {
  nic: GuestNic;
  extraArgs: string[];
  /** PID whose CPU is the back-end's; null: QEMU itself (its I/O threads). */
  pid: number | null;
  /** Forwards FLOWS_PORT from the test namespace to the guest (for the 1000-flow memory test). */
  forwardsFlowsPort: boolean;
  stop(): Promise<void>;
  log(): string;
}

/** A VM back-end: why it cannot run here (null if it can), and how to start it in a test network. */
export interface VmBackend {
  name: string;
  missing(): string | null;
  /** Largest MTU the guest may use on it. */
  maxMtu: number;
  start(net: TestNetwork, workDir: string): Promise<StartedBackend>;
}

async function waitForFile(file: string, child: ChildProcess, output: () => string, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited before creating ${file}:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`${file} not created within ${timeoutMs} ms:\n${output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** ferry over vhost-user, with node flags (e.g. the CPU profiler) when given. */
export function ferryVmBackend(nodeArgs: string[] = [], name = 'ferry'): VmBackend {
  return {
    name,
    maxMtu: 65520,
    missing: () => (fs.existsSync(FERRY_CLI_MODULE) ? null : `ferry is not built (${FERRY_CLI_MODULE})`),
    start: async (net, workDir) => {
      const socketPath = path.join(workDir, 'ferry.sock');
      const ferry = await startBenchFerry(net.ns, socketPath, ['-q', '--mtu', '65520', '-t', String(FLOWS_PORT)], nodeArgs);
      return {
        nic: { kind: 'vhost-user', socketPath },
        extraArgs: [],
        pid: ferry.child.pid ?? null,
        forwardsFlowsPort: true,
        stop: () => ferry.stop(),
        log: () => ferry.log(),
      };
    },
  };
}

/** The VM back-ends in table order: ferry first. */
export const VM_BACKENDS: VmBackend[] = [
  ferryVmBackend(),
  {
    name: 'passt (vhost-user)',
    maxMtu: 65520,
    missing: () => {
      const passt = passtBinary();
      if (passt.missing || !passt.path) return passt.missing ?? 'passt not found';
      return passtHasVhostUser(passt.path) ? null : `${passt.path} (${passt.version}) has no --vhost-user`;
    },
    start: async (net, workDir) => {
      const socketPath = path.join(workDir, 'passt.sock');
      const passt = passtBinary().path ?? 'passt';
      // -f: stay our child (its PID is the back-end's); -1: exit with the guest;
      // --runas 0: as root it would become nobody and lose the socket's directory.
      const child = spawnIn(net.ns, [
        passt, '--vhost-user', '-f', '-q', '-1', '--runas', '0', '-s', socketPath, '-m', '65520', '-t', String(FLOWS_PORT), '-u', 'none',
      ]);
      let output = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
      child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
      await waitForFile(socketPath, child, () => output);
      return {
        nic: { kind: 'vhost-user', socketPath },
        extraArgs: [],
        pid: child.pid ?? null,
        forwardsFlowsPort: true,
        stop: () => stopChild(child, 1000),
        log: () => output,
      };
    },
  },
  {
    name: 'QEMU user (libslirp)',
    // libslirp's interface MTU is 1500 (QEMU 7.2 has no mtu= for -netdev user).
    maxMtu: 1500,
    missing: () => null,
    start: async () => ({
      nic: { kind: 'none' },
      // Outbound allowed (restrict=off) but numbered from a documentation
      // range; the guest reaches 192.0.2.2 through slirp's host sockets in
      // the test namespace.
      extraArgs: [
        '-netdev', 'user,id=net0,net=203.0.113.0/24,host=203.0.113.2,dns=203.0.113.3,dhcpstart=203.0.113.15,ipv6=off',
        '-device', `virtio-net-pci,netdev=net0,mac=${DEFAULT_GUEST_MAC},romfile=,vectors=0`,
      ],
      pid: null,
      forwardsFlowsPort: false,
      stop: async () => undefined,
      log: () => '',
    }),
  },
];

/** FLOWS_PORT as /proc/net/tcp writes it (hex, upper case). */
const FLOWS_PORT_HEX = FLOWS_PORT.toString(16).toUpperCase().padStart(4, '0');

/**
 * The guest's /test.sh: every run of every test, bracketed by markers, its
 * iperf3 JSON echoed on the console, the link MTU set before each test
 * (capped at `maxMtu`); then, with `flows`, the listener of the memory test
 * and its count of established connections (bounded: 60 s to reach FLOWS,
 * then 30 s held while the host samples the back-end's RSS).
 */
export function vmGuestScript(tests: VmTest[], runs: number, maxMtu: number, flows: boolean): string {
  const lines = ['say() { echo "FERRY-GUEST: $*"; }', `say "bench mtu $(cat /sys/class/net/eth0/mtu)"`];
  let mtu = 0;
  tests.forEach((t, i) => {
    const want = Math.min(t.mtu, maxMtu);
    if (want !== mtu) {
      lines.push(`ip link set dev eth0 mtu ${want}`, `say "bench link mtu $(cat /sys/class/net/eth0/mtu)"`);
      mtu = want;
    }
    for (let r = 0; r < runs; r++) {
      const name = `t${i}r${r}`;
      lines.push(
        // The server needs a moment between tests.
        'sleep 1',
        `say "bench begin ${name}"`,
        `iperf3 -c ${TEST_NET.serverV4} -p ${IPERF_PORT} -J -i 0 ${t.args.join(' ')} > /tmp/r.json 2>&1`,
        `say "bench end ${name} rc $?"`,
        `sed 's/^/FERRY-GUEST: j ${name}| /' /tmp/r.json`,
        `say "bench printed ${name}"`,
      );
    }
  });
  if (flows) {
    lines.push(
      `iperf3 -s -p ${FLOWS_PORT} > /dev/null 2>&1 &`,
      'sleep 1',
      'say "bench flows listening"',
      // State 01 is ESTABLISHED; the local address is field 2 (ADDR:PORT in hex).
      // iperf3 listens dual-stack, so its IPv4 connections are in tcp6 as mapped addresses.
      `count() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$2 ~ /:${FLOWS_PORT_HEX}$/ && $4 == "01"' | wc -l; }`,
      'i=0; n=0',
      `while [ $i -lt 60 ]; do n=$(count); [ "$n" -ge ${FLOWS} ] && break; sleep 1; i=$((i+1)); done`,
      'say "bench flows established $n"',
      'i=0; while [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done',
    );
  }
  return lines.join('\n') + '\nexit 0\n';
}

/** The JSON the guest echoed for run `name`. */
function guestJson(guest: Guest, name: string): string {
  const prefix = `FERRY-GUEST: j ${name}| `;
  return guest.vm.serialLines
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => l.slice(prefix.length).replace(/\r$/, ''))
    .join('\n');
}

/** What one boot measured: a Measurement per test, and the back-end's memory. */
export interface VmBackendResult {
  measurements: Measurement[];
  memory: MemorySample[];
}

/** The three memory states, in table order. */
export const MEMORY_STATES = ['idle (no guest)', 'guest attached', `guest holding ${FLOWS} TCP flows`] as const;

/** Boots the guest on one back-end and runs every test, then (with `withFlows`) the 1000-flow memory test. */
export async function runVmBackend(backend: VmBackend, tests: VmTest[], runs: number, say: (line: string) => void, withFlows = true): Promise<VmBackendResult> {
  const out: Measurement[] = tests.map((t) => ({ section: 'vm', test: t.test, kind: t.kind, backend: backend.name, runs: [] }));
  const memory: MemorySample[] = [];
  const failAll = (why: string): VmBackendResult => {
    for (const m of out) if (m.runs.length < runs && !m.error) m.error = why;
    return { measurements: out, memory };
  };
  let net: TestNetwork | null = null;
  let server: IperfServer | null = null;
  let started: StartedBackend | null = null;
  let guest: Guest | null = null;
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-vm-'));
  try {
    net = await createTestNetwork();
    server = await IperfServer.start(net.peerNs, TEST_NET.serverV4, IPERF_PORT);
    started = await backend.start(net, workDir);
    const rss = (state: string): void => {
      if (started?.pid) memory.push({ backend: backend.name, state, rssBytes: rssBytes(started.pid) });
    };
    const flows = withFlows && started.forwardsFlowsPort;
    // Idle: listening, nothing connected, settled for a second.
    await new Promise((r) => setTimeout(r, 1000));
    rss(MEMORY_STATES[0]);
    const budgetS = tests.reduce((s, t) => s + (t.seconds + 8) * runs, 0) + 60 + (flows ? 100 : 0);
    guest = bootGuest({
      net,
      nic: started.nic,
      testScript: vmGuestScript(tests, runs, backend.maxMtu, flows),
      append: ['ferry.ipv6=0', 'ferry.dhcp_tries=5', `ferry.test_timeout=${budgetS}`],
      // Named threads: QEMU's vCPU thread is told apart from its I/O threads.
      extraArgs: [...started.extraArgs, '-name', 'bench,debug-threads=on'],
      timeoutMs: (budgetS + 60) * 1000,
      workDir,
    });
    const mtu = await guest.waitForMarker('bench mtu (\\d+)', 60000);
    say(`  ${backend.name}: guest up, MTU ${mtu[1]}`);
    rss(MEMORY_STATES[1]);
    const qemuPid = guest.vm.pid;
    if (qemuPid === undefined) throw new Error('QEMU has no PID');
    const backendCpu = (): number => (started?.pid ? processCpuSeconds(started.pid) : qemuIoCpuSeconds(qemuPid));
    let from = 0;
    for (let i = 0; i < tests.length; i++) {
      const t = tests[i];
      for (let r = 0; r < runs; r++) {
        const name = `t${i}r${r}`;
        const begin = await guest.vm.waitFor(new RegExp(`FERRY-GUEST: bench begin ${name}\\r?\\n`), 60000, from);
        const cpu0 = backendCpu();
        const io0 = qemuIoCpuSeconds(qemuPid);
        const end = await guest.vm.waitFor(new RegExp(`FERRY-GUEST: bench end ${name} rc (\\d+)`), (t.seconds + 60) * 1000, from);
        const cpu1 = backendCpu();
        const io1 = qemuIoCpuSeconds(qemuPid);
        await guest.vm.waitFor(new RegExp(`FERRY-GUEST: bench printed ${name}\\r?\\n`), 30000, from);
        from += begin.index;
        try {
          const clientDoc = parseIperf(guestJson(guest, name));
          const receiver = t.reverse ? clientDoc : await server.documentFor(iperfCookie(clientDoc));
          const got = receivedFigures(receiver, t.udp);
          const run: Run = { bytes: got.bytes, seconds: got.seconds, cpuSeconds: cpu1 - cpu0, qemuIoCpuSeconds: io1 - io0 };
          if (got.stalledSeconds !== undefined) run.stalledSeconds = got.stalledSeconds;
          if (t.udp) Object.assign(run, { packets: got.packets, lostPackets: got.lostPackets, lostPercent: got.lostPercent });
          out[i].runs.push(run);
          say(`  ${backend.name} ${t.test} run ${r + 1}: ${((got.bytes * 8) / got.seconds / 1e9).toFixed(3)} Gbit/s, back-end CPU ${(cpu1 - cpu0).toFixed(2)} s`);
        } catch (err) {
          out[i].error = `${(err as Error).message} (iperf3 rc ${end[1]})`;
          say(`  ${backend.name} ${t.test} run ${r + 1}: ${out[i].error}`);
        }
      }
    }
    if (flows) await holdFlows(guest, net, backend.name, memory, from, started.pid, say);
  } catch (err) {
    const tail = guest ? `\n${guest.vm.diagnostics(15)}` : '';
    say(`  ${backend.name}: ${(err as Error).message.split('\n')[0]}${tail}\n${started?.log().split('\n').slice(-10).join('\n') ?? ''}`);
    return failAll((err as Error).message.split('\n')[0]);
  } finally {
    if (guest) await guest.destroy();
    if (started) await started.stop();
    if (server) await server.stop();
    if (net) await destroyTestNetwork(net);
    fs.rmSync(workDir, { recursive: true, force: true });
  }
  return { measurements: out, memory };
}

/** The 1000-flow memory state: the peer opens FLOWS connections to the forwarded port, the guest counts them, RSS is sampled. */
async function holdFlows(
  guest: Guest, net: TestNetwork, name: string, memory: MemorySample[], from: number, pid: number | null, say: (line: string) => void,
): Promise<void> {
  const state = MEMORY_STATES[2];
  try {
    await guest.vm.waitFor(/FERRY-GUEST: bench flows listening/, 60000, from);
    const client = await openFlows(net.peerNs, TEST_NET.hostV4, FLOWS_PORT, FLOWS);
    try {
      const seen = await guest.vm.waitFor(/FERRY-GUEST: bench flows established (\d+)/, 90000, from);
      // A moment for the back-end's buffers to settle after the last handshake.
      await new Promise((r) => setTimeout(r, 2000));
      const rss = pid ? rssBytes(pid) : NaN;
      const note = `${client.open} connected from the peer, ${seen[1]} established in the guest${client.failed > 0 ? `, ${client.failed} failed` : ''}`;
      memory.push({ backend: name, state, rssBytes: rss, note });
      say(`  ${name} ${state}: RSS ${(rss / 1048576).toFixed(1)} MiB (${note})`);
    } finally {
      await client.close();
    }
  } catch (err) {
    memory.push({ backend: name, state, note: `failed: ${(err as Error).message.split('\n')[0]}` });
    say(`  ${name} ${state}: ${(err as Error).message}`);
  }
}

/** Why the VM benchmarks cannot run at all here (empty when they can). */
export function vmPrerequisitesMissing(): string[] {
  return [...missingGuestPrerequisites(), ...(commandAvailable('iperf3') ? [] : ['iperf3'])];
}
