/**
 * `npm run bench`: ferry beside its peers, in test namespaces only
 * (documentation addresses), printed as tables and written to
 * bench/results/latest.md and latest.json. Never part of `npm test`.
 *
 *   node dist/bench/run.js [--quick] [--only vm|pmd|ns|tcp|udp|pps|rr[,...]] [--runs N]
 *                          [--udp-rate RATE] [--out DIR] [--cpu-prof DIR [--cpu-prof-test NAME]]
 *
 * --quick: one run per test and shorter tests (a smoke run).
 * --only: sections (vm, pmd, ns) and/or kinds (tcp, udp, pps, rr), comma separated
 * (pmd, DPDK testpmd as the front-end, is a pps test).
 * --cpu-prof DIR: afterwards, one more run of one test (--cpu-prof-test, a
 * VM or namespace test's name; default "tcp guest->host MTU 65520") with
 * ferry under V8's CPU profiler (node --cpu-prof: one .cpuprofile per
 * thread, main and workers, written to DIR when ferry exits); its figures
 * are not in the tables (the profiler costs CPU).
 *
 * Peers: passt and pasta from FERRY_BENCH_PASST / FERRY_BENCH_PASTA or
 * PATH (see peers.ts); a peer not found is a "not measured: why" row.
 */
import * as fs from 'fs';
import * as path from 'path';
import { REPO_ROOT } from '../test/support/guest';
import { canCreateNamespaces } from '../test/support/netns';
import { cpuProfileFlags } from './support/ferry';
import { summarizeProfiles } from './support/profile';
import { type Measurement, type MemorySample, type TestKind } from './figures';
import { describeMachine } from './machine';
import { NS_BACKENDS, type NsBackend, type NsPlan, nsPrerequisitesMissing, nsTests, runNsBackend, VETH_BACKEND } from './ns';
import { reportMarkdown, type ReportNotes } from './report';
import { PMD_BACKENDS, runTestpmd, TESTPMD, TESTPMD_TEST, testpmdMissing } from './testpmd';
import { ferryVmBackend, FLOWS, MEMORY_STATES, runVmBackend, VM_BACKENDS, type VmPlan, vmPrerequisitesMissing, vmTests } from './vm';

/** Parsed command line. */
export interface BenchOptions {
  quick: boolean;
  sections: Set<Section>;
  kinds: Set<TestKind>;
  runs: number | null;
  udpRate: string | null;
  outDir: string;
  /** Where ferry's CPU profiles go (null: no profiling run), and of which test. */
  cpuProfDir: string | null;
  cpuProfTest: string;
}

const ALL_KINDS: TestKind[] = ['tcp', 'udp', 'pps', 'rr'];
/** vm: QEMU guest; ns: pasta mode; pmd: DPDK testpmd as a vhost-user front-end. */
type Section = 'vm' | 'ns' | 'pmd';
const ALL_SECTIONS: Section[] = ['vm', 'ns', 'pmd'];

/** Parses argv (after the script name); throws on an unknown flag or value. */
export function parseBenchArgs(argv: string[]): BenchOptions {
  const o: BenchOptions = {
    quick: false,
    sections: new Set(ALL_SECTIONS),
    kinds: new Set(ALL_KINDS),
    runs: null,
    udpRate: null,
    outDir: path.join(REPO_ROOT, 'bench', 'results'),
    cpuProfDir: null,
    cpuProfTest: 'tcp guest->host MTU 65520',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--only') {
      const words = value().split(',');
      const sections = words.filter((w) => (ALL_SECTIONS as string[]).includes(w)) as Section[];
      const kinds = words.filter((w) => (ALL_KINDS as string[]).includes(w)) as TestKind[];
      const unknown = words.filter((w) => !([...ALL_SECTIONS, ...ALL_KINDS] as string[]).includes(w));
      if (unknown.length > 0) throw new Error(`--only: unknown ${unknown.join(',')} (${[...ALL_SECTIONS, ...ALL_KINDS].join(', ')})`);
      if (sections.length > 0) o.sections = new Set(sections);
      if (kinds.length > 0) o.kinds = new Set(kinds);
    } else if (a === '--runs') {
      o.runs = Number(value());
      if (!Number.isInteger(o.runs) || o.runs < 1 || o.runs > 10) throw new Error('--runs: 1 to 10');
    } else if (a === '--udp-rate') {
      o.udpRate = value();
      if (!/^\d+[KMG]?$/.test(o.udpRate)) throw new Error('--udp-rate: e.g. 200M');
    } else if (a === '--out') o.outDir = path.resolve(value());
    else if (a === '--cpu-prof') o.cpuProfDir = path.resolve(value());
    else if (a === '--cpu-prof-test') o.cpuProfTest = value();
    else throw new Error(`unknown argument ${a} (--quick, --only, --runs N, --udp-rate RATE, --out DIR, --cpu-prof DIR, --cpu-prof-test NAME)`);
  }
  return o;
}

function say(line: string): void {
  process.stdout.write(line + '\n');
}

/** Rows saying why `backend` was not measured, one per test. */
function notMeasuredRows(section: Measurement['section'], tests: { test: string; kind: TestKind }[], backend: string, why: string): Measurement[] {
  return tests.map((t) => ({ section, test: t.test, kind: t.kind, backend, runs: [], notMeasured: why }));
}

/** Test durations of a full and a quick run. */
function plans(opts: BenchOptions, runs: number): { vm: VmPlan; nsPlan: NsPlan; pmdSeconds: number } {
  return {
    vm: {
      tcpSeconds: opts.quick ? 3 : 8,
      udpSeconds: opts.quick ? 2 : 4,
      runs,
      udpRate: opts.udpRate ?? '100M',
      smallRateDown: '20M',
      kinds: opts.kinds,
    },
    nsPlan: { seconds: opts.quick ? 2 : 5, runs, udpRate: opts.udpRate ? opts.udpRate : '1G', kinds: opts.kinds },
    pmdSeconds: opts.quick ? 2 : 5,
  };
}

/** One more run of the chosen test with ferry under the CPU profiler; profiles land in `dir`. */
async function profileRun(opts: BenchOptions, dir: string, plan: { vm: VmPlan; nsPlan: NsPlan }): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const before = new Set(fs.readdirSync(dir));
  const flags = cpuProfileFlags(dir);
  const vmTest = vmTests({ ...plan.vm, kinds: new Set(ALL_KINDS) }).find((t) => t.test === opts.cpuProfTest);
  const nsTest = nsTests({ ...plan.nsPlan, kinds: new Set(ALL_KINDS) }).find((t) => t.test === opts.cpuProfTest);
  if (vmTest) {
    await runVmBackend(ferryVmBackend(flags, 'ferry (profiled)'), [vmTest], 1, say, false);
  } else if (nsTest) {
    const ferryNs = NS_BACKENDS[0];
    const profiled: NsBackend = {
      name: 'ferry (profiled)',
      missing: ferryNs.missing,
      argv: (inner, mtu) => {
        const argv = ferryNs.argv?.(inner, mtu) ?? [];
        return [argv[0], ...flags, ...argv.slice(1)];
      },
    };
    await runNsBackend(profiled, [nsTest], 1, say);
  } else {
    return [`--cpu-prof-test: no test named "${opts.cpuProfTest}"`];
  }
  const written = fs.readdirSync(dir).filter((f) => !before.has(f) && f.endsWith('.cpuprofile')).sort();
  return [
    `CPU profiles of ferry during "${opts.cpuProfTest}" (one run, boot included; its figures are not in the tables): ${written.length} file(s) in ${dir}, one per thread (main first, then the workers); open them in Chrome DevTools' Performance panel or speedscope. Most self time:`,
    ...summarizeProfiles(dir, written, REPO_ROOT),
  ];
}

async function main(): Promise<number> {
  const opts = parseBenchArgs(process.argv.slice(2));
  const started = Date.now();
  if (!canCreateNamespaces()) {
    say('bench: needs root and iproute2 (every benchmark runs in namespaces it creates)');
    return 1;
  }
  const machine = describeMachine();
  say(`ferry bench on ${machine.cpuModel} (${machine.cores} cores), ${machine.kernel}, Node ${machine.node}, QEMU ${machine.qemu}`);
  say(`  ferry ${machine.ferryRevision}; passt: ${machine.passt}; pasta: ${machine.pasta}`);
  const measurements: Measurement[] = [];
  const memory: MemorySample[] = [];
  const notes: ReportNotes = { vm: [], pmd: [], ns: [], memory: [], profile: [], skipped: [] };
  const runs = opts.runs ?? (opts.quick ? 1 : 3);
  const { vm: plan, nsPlan, pmdSeconds } = plans(opts, runs);

  if (opts.sections.has('vm') && [...opts.kinds].some((k) => k !== 'rr')) {
    const missing = vmPrerequisitesMissing();
    if (missing.length > 0) {
      notes.skipped.push(`VM benchmarks: missing ${missing.join('; ')}`);
    } else {
      const tests = vmTests(plan);
      say(`VM: ${tests.length} tests x ${runs} runs per back-end, then ${FLOWS} flows for the memory test`);
      for (const b of VM_BACKENDS) {
        const why = b.missing();
        if (why) {
          say(`  not measuring ${b.name}: ${why}`);
          notes.skipped.push(`VM ${b.name}: ${why}`);
          measurements.push(...notMeasuredRows('vm', tests, b.name, why));
          if (b.name.startsWith('passt')) for (const state of MEMORY_STATES) memory.push({ backend: b.name, state, note: `not measured: ${why}` });
          continue;
        }
        const result = await runVmBackend(b, tests, runs, say);
        measurements.push(...result.measurements);
        memory.push(...result.memory);
      }
      notes.vm.push(
        `iperf3 against a server in the test network's peer namespace (192.0.2.2); TCP ${plan.tcpSeconds} s, UDP ${plan.udpSeconds} s per run, ${runs} run(s), medians; the rate is what the receiver got.`,
        'Under TCG the guest (one emulated vCPU) is the bottleneck, not the back-end: the rates mostly measure the guest, so the back-end CPU per GB (or per datagram) is the figure that compares back-ends.',
        "Back-end CPU: utime + stime of the back-end process from /proc/PID/stat around each run (ferry's node process with its worker threads; passt). For QEMU user the back-end is QEMU itself: its threads other than the vCPU (main loop, where libslirp and the virtio-net device run).",
        'QEMU I/O threads CPU: the same threads for every back-end. Over vhost-user (ferry and passt) QEMU is off the data path.',
        'ferry and passt both run as vhost-user back-ends (passt --vhost-user), the guest with shared memfd memory, and announce MTU 65520; the guest sets its link MTU to the test\'s (65520 or 1500) before it. QEMU user\'s libslirp has a 1500-byte interface MTU, so its guest stays at 1500 in every test.',
        '"stalled N of M s" (guest->host tests, where the server in the peer namespace reports each second): one-second intervals in which the receiver got nothing, summed over the runs.',
        `Host->guest small datagrams are sent at a fixed ${plan.smallRateDown}bit/s (an unlimited sender only measures drops); guest->host ones as fast as the guest can. CPU per datagram is over the datagrams delivered.`,
      );
      notes.memory.push(
        'VmRSS of the back-end process (/proc/PID/status): idle is one second after it started listening, before QEMU connects; guest attached is once the guest has its address, before the tests; the flows state is after the tests.',
        `${FLOWS} flows: the guest listens (iperf3 -s on port 5400, which takes one connection and leaves the rest established in its accept queue), the back-end forwards the port (-t 5400), a Node.js client in the peer namespace opens ${FLOWS} connections to 192.0.2.1:5400 and holds them; the guest counts its ESTABLISHED sockets on that port in /proc/net/tcp and tcp6 and RSS is read 2 s later.`,
        'QEMU user is not in this table: libslirp lives inside QEMU, whose RSS is mostly guest memory.',
      );
    }
  }

  if (opts.sections.has('pmd') && opts.kinds.has('pps')) {
    const why = testpmdMissing();
    if (why) {
      say(`  skipping testpmd: ${why}`);
      notes.skipped.push(`testpmd: ${why}`);
      for (const b of PMD_BACKENDS) measurements.push(...notMeasuredRows('pmd', [{ test: TESTPMD_TEST, kind: 'pps' }], b.name, why));
    } else {
      say(`testpmd: 64-byte datagrams, ${runs} run(s) of ${pmdSeconds} s per back-end`);
      for (const b of PMD_BACKENDS) {
        const whyNot = b.missing();
        if (whyNot) {
          say(`  not measuring ${b.name}: ${whyNot}`);
          notes.skipped.push(`testpmd ${b.name}: ${whyNot}`);
          measurements.push(...notMeasuredRows('pmd', [{ test: TESTPMD_TEST, kind: 'pps' }], b.name, whyNot));
          continue;
        }
        measurements.push(await runTestpmd(b, pmdSeconds, runs, say));
      }
      notes.pmd.push(
        `DPDK ${TESTPMD} (Debian's dpdk-dev) as a vhost-user front-end, --forward-mode=txonly, UDP 192.0.2.1:40000 -> 192.0.2.2:9 with 64 bytes of payload, as fast as it can (--no-huge -m 512, one forwarding lcore); delivered datagrams counted on the peer namespace's veth, ${pmdSeconds} s per run, ${runs} run(s), medians; a fresh back-end and testpmd per run.`,
        'ferry --queues 2: testpmd opens two queue pairs (queues=2, --rxq=2 --txq=2) and its one forwarding lcore sends on both; the TX count per queue (testpmd\'s per-stream statistics) shows both carried traffic (a queue the back-end did not serve would stall at its ring size). Its ratio is against passt with one queue pair; the machine has two cores, shared with testpmd\'s sender.',
      );
    }
  }

  if (opts.sections.has('ns')) {
    const missing = nsPrerequisitesMissing();
    if (missing.length > 0) {
      notes.skipped.push(`namespace benchmarks: missing ${missing.join('; ')}`);
    } else {
      const tests = nsTests(nsPlan);
      say(`namespace: ${tests.length} tests x ${runs} runs per back-end`);
      for (const b of NS_BACKENDS) {
        const why = b.missing();
        if (why) {
          say(`  not measuring ${b.name}: ${why}`);
          notes.skipped.push(`namespace ${b.name}: ${why}`);
          measurements.push(...notMeasuredRows('ns', tests, b.name, why));
          continue;
        }
        measurements.push(...(await runNsBackend(b, tests, runs, say)));
      }
      notes.ns.push(
        `Each back-end serves a fresh network namespace through a tap device (--config-net or slirp4netns --configure); iperf3 runs in that namespace against a server in the test network's peer namespace (192.0.2.2), -R for host->namespace; ${nsPlan.seconds} s per run, ${runs} run(s), medians.`,
        'Here the guest is the kernel itself, so the rates measure the back-ends. Back-end CPU: utime + stime of the back-end process (ferry pasta\'s node process, pasta, slirp4netns).',
        `${VETH_BACKEND}: the same namespaces joined by a veth pair at the test's MTU (198.51.100.0/24), the test namespace forwarding to the peer: no back-end process, the kernel's own path and the physical limit; its CPU (the kernel's softirq time) is not measured.`,
        'slirp4netns numbers its namespace from 203.0.113.0/24 (--cidr) and NATs; pasta and ferry give the namespace the host\'s address. pasta runs with --runas 0 (as root it would otherwise become nobody and could not join the namespace) and with its automatic port forwarding off (-t/-u/-T/-U none).',
        '"stalled N of M s": one-second intervals of iperf3\'s report (-i 1) in which the receiver got nothing, summed over the runs; the transfer stopped, and the rate is its average over the whole run.',
        'Request/response: one TCP connection, a 1-byte request answered by a 1-byte reply, the next request sent on the reply (Node.js client in the namespace, Node.js server in the peer namespace): round trips per second and back-end CPU per round trip.',
      );
    }
  }

  const commandLine = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  if (opts.cpuProfDir) {
    say(`profiling ferry during "${opts.cpuProfTest}"`);
    const lines = await profileRun(opts, opts.cpuProfDir, { vm: plan, nsPlan });
    for (const line of lines) say(`  ${line}`);
    notes.profile.push(...lines);
  }
  const md = reportMarkdown(machine, measurements, memory, notes, commandLine, { passt: 'passt (vhost-user)', veth: VETH_BACKEND });
  say('');
  say(md);
  fs.mkdirSync(opts.outDir, { recursive: true });
  fs.writeFileSync(path.join(opts.outDir, 'latest.md'), md);
  fs.writeFileSync(path.join(opts.outDir, 'latest.json'), JSON.stringify({ machine, commandLine, notes, measurements, memory }, null, 2) + '\n');
  say(`written ${path.join(opts.outDir, 'latest.md')} and latest.json (${((Date.now() - started) / 1000).toFixed(0)} s)`);
  return 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
      process.exit(1);
    },
  );
}
