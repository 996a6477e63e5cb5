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
 * Back-ends: ferry (vhost-user), passt (Debian's package, classic mode over
 * QEMU's -netdev stream: that passt has no vhost-user), QEMU's -netdev user
 * (libslirp inside QEMU: its back-end CPU is QEMU's threads other than the
 * vCPU).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type ChildProcess } from 'child_process';
import { createTestNetwork, destroyTestNetwork, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../test/support/netns';
import { bootGuest, commandAvailable, type Guest, missingGuestPrerequisites } from '../test/support/guest';
import { DEFAULT_GUEST_MAC, type GuestNic } from '../test/support/qemu';
import { FERRY_CLI_MODULE, startFerry } from '../test/e2e/ferry-process';
import { processCpuSeconds, qemuIoCpuSeconds } from './cpu';
import { type Measurement, type Run, type TestKind } from './figures';
import { IperfServer, iperfCookie, parseIperf, receivedFigures } from './iperf';

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
    t.push({ test: 'tcp guest->host', kind: 'tcp', args: S(plan.tcpSeconds), reverse: false, udp: false, seconds: plan.tcpSeconds });
    t.push({ test: 'tcp host->guest', kind: 'tcp', args: [...S(plan.tcpSeconds), '-R'], reverse: true, udp: false, seconds: plan.tcpSeconds });
  }
  if (plan.kinds.has('udp')) {
    const udp = ['-u', '-b', plan.udpRate, '-l', '1400', ...S(plan.udpSeconds)];
    t.push({ test: `udp ${plan.udpRate}bit/s 1400 B guest->host`, kind: 'udp', args: udp, reverse: false, udp: true, seconds: plan.udpSeconds });
    t.push({ test: `udp ${plan.udpRate}bit/s 1400 B host->guest`, kind: 'udp', args: [...udp, '-R'], reverse: true, udp: true, seconds: plan.udpSeconds });
  }
  if (plan.kinds.has('pps')) {
    t.push({ test: 'udp 64 B unlimited guest->host', kind: 'pps', args: ['-u', '-b', '0', '-l', '64', ...S(plan.udpSeconds)], reverse: false, udp: true, seconds: plan.udpSeconds });
    t.push({
      test: `udp 64 B ${plan.smallRateDown}bit/s host->guest`,
      kind: 'pps',
      args: ['-u', '-b', plan.smallRateDown, '-l', '64', ...S(plan.udpSeconds), '-R'],
      reverse: true,
      udp: true,
      seconds: plan.udpSeconds,
    });
  }
  return t;
}

const IPERF_PORT = 5201;

/** A back-end under test, started for one boot. */
interface StartedBackend {
  nic: GuestNic;
  extraArgs: string[];
  /** PID whose CPU is the back-end's; null: QEMU itself (its I/O threads). */
  pid: number | null;
  stop(): Promise<void>;
  log(): string;
}

/** A VM back-end: why it cannot run here (null if it can), and how to start it in a test network. */
export interface VmBackend {
  name: string;
  missing(): string | null;
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

/** The VM back-ends in table order: ferry first. */
export const VM_BACKENDS: VmBackend[] = [
  {
    name: 'ferry',
    missing: () => (fs.existsSync(FERRY_CLI_MODULE) ? null : `ferry is not built (${FERRY_CLI_MODULE})`),
    start: async (net, workDir) => {
      const socketPath = path.join(workDir, 'ferry.sock');
      const ferry = await startFerry(net.ns, socketPath, ['-q', '--mtu', '65520']);
      return { nic: { kind: 'vhost-user', socketPath }, extraArgs: [], pid: ferry.child.pid ?? null, stop: async () => void (await ferry.stop()), log: () => ferry.log() };
    },
  },
  {
    name: 'passt (stream)',
    missing: () => (commandAvailable('passt') ? null : 'passt is not installed (apt-get install passt)'),
    start: async (net, workDir) => {
      const socketPath = path.join(workDir, 'passt.sock');
      // -f: stay our child (its PID is the back-end's); -1: exit with the guest;
      // --runas 0: as root it would become nobody and lose the socket's directory.
      const child = spawnIn(net.ns, ['passt', '-f', '-q', '-1', '--runas', '0', '-s', socketPath, '-m', '65520', '-t', 'none', '-u', 'none']);
      let output = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
      child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
      await waitForFile(socketPath, child, () => output);
      return { nic: { kind: 'stream', socketPath, server: false }, extraArgs: [], pid: child.pid ?? null, stop: () => stopChild(child, 1000), log: () => output };
    },
  },
  {
    name: 'QEMU user (libslirp)',
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
      stop: async () => undefined,
      log: () => '',
    }),
  },
];

/** The guest's /test.sh: every run of every test, bracketed by markers, its iperf3 JSON echoed on the console. */
export function vmGuestScript(tests: VmTest[], runs: number): string {
  const lines = ['say() { echo "FERRY-GUEST: $*"; }', `say "bench mtu $(cat /sys/class/net/eth0/mtu)"`];
  tests.forEach((t, i) => {
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

/** Boots the guest on one back-end and runs every test; one Measurement per test. */
export async function runVmBackend(backend: VmBackend, tests: VmTest[], runs: number, say: (line: string) => void): Promise<Measurement[]> {
  const out: Measurement[] = tests.map((t) => ({ section: 'vm', test: t.test, kind: t.kind, backend: backend.name, runs: [] }));
  const failAll = (why: string): Measurement[] => {
    for (const m of out) if (m.runs.length < runs && !m.error) m.error = why;
    return out;
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
    const budgetS = tests.reduce((s, t) => s + (t.seconds + 8) * runs, 0) + 60;
    guest = bootGuest({
      net,
      nic: started.nic,
      testScript: vmGuestScript(tests, runs),
      append: ['ferry.ipv6=0', 'ferry.dhcp_tries=5', `ferry.test_timeout=${budgetS}`],
      // Named threads: QEMU's vCPU thread is told apart from its I/O threads.
      extraArgs: [...started.extraArgs, '-name', 'bench,debug-threads=on'],
      timeoutMs: (budgetS + 60) * 1000,
      workDir,
    });
    const mtu = await guest.waitForMarker('bench mtu (\\d+)', 60000);
    say(`  ${backend.name}: guest up, MTU ${mtu[1]}`);
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
          if (t.udp) Object.assign(run, { packets: got.packets, lostPackets: got.lostPackets, lostPercent: got.lostPercent });
          out[i].runs.push(run);
          say(`  ${backend.name} ${t.test} run ${r + 1}: ${((got.bytes * 8) / got.seconds / 1e9).toFixed(3)} Gbit/s, back-end CPU ${(cpu1 - cpu0).toFixed(2)} s`);
        } catch (err) {
          out[i].error = `${(err as Error).message} (iperf3 rc ${end[1]})`;
          say(`  ${backend.name} ${t.test} run ${r + 1}: ${out[i].error}`);
        }
      }
    }
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
  return out;
}

/** Why the VM benchmarks cannot run at all here (empty when they can). */
export function vmPrerequisitesMissing(): string[] {
  return [...missingGuestPrerequisites(), ...(commandAvailable('iperf3') ? [] : ['iperf3'])];
}
