/**
 * `npm run bench`: ferry beside its peers, in test namespaces only
 * (documentation addresses), printed as tables and written to
 * bench/results/latest.md and latest.json. Never part of `npm test`.
 *
 *   node dist/bench/run.js [--quick] [--only vm|ns|tcp|udp|pps|rr[,...]] [--runs N]
 *                          [--udp-rate RATE] [--out DIR]
 *
 * --quick: one run per test and shorter tests (a smoke run, a few minutes).
 * --only: sections (vm, ns, pmd) and/or kinds (tcp, udp, pps, rr), comma separated
 * (pmd, DPDK testpmd into ferry, is a pps test).
 */
import * as fs from 'fs';
import * as path from 'path';
import { REPO_ROOT } from '../test/support/guest';
import { canCreateNamespaces } from '../test/support/netns';
import { type Measurement, type TestKind } from './figures';
import { describeMachine } from './machine';
import { NS_BACKENDS, type NsPlan, nsPrerequisitesMissing, nsTests, runNsBackend } from './ns';
import { reportMarkdown, type ReportNotes } from './report';
import { runTestpmd, TESTPMD, testpmdMissing } from './testpmd';
import { runVmBackend, VM_BACKENDS, type VmPlan, vmPrerequisitesMissing, vmTests } from './vm';

/** Parsed command line. */
export interface BenchOptions {
  quick: boolean;
  sections: Set<Section>;
  kinds: Set<TestKind>;
  runs: number | null;
  udpRate: string | null;
  outDir: string;
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
    else throw new Error(`unknown argument ${a} (--quick, --only, --runs N, --udp-rate RATE, --out DIR)`);
  }
  return o;
}

function say(line: string): void {
  process.stdout.write(line + '\n');
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
  const measurements: Measurement[] = [];
  const notes: ReportNotes = { vm: [], ns: [], skipped: [] };
  const runs = opts.runs ?? (opts.quick ? 1 : 3);

  if (opts.sections.has('vm') && [...opts.kinds].some((k) => k !== 'rr')) {
    const missing = vmPrerequisitesMissing();
    if (missing.length > 0) {
      notes.skipped.push(`VM benchmarks: missing ${missing.join('; ')}`);
    } else {
      const plan: VmPlan = {
        tcpSeconds: opts.quick ? 4 : 10,
        udpSeconds: opts.quick ? 3 : 5,
        runs,
        udpRate: opts.udpRate ?? '100M',
        smallRateDown: '20M',
        kinds: opts.kinds,
      };
      const tests = vmTests(plan);
      say(`VM: ${tests.length} tests x ${runs} runs per back-end`);
      for (const b of VM_BACKENDS) {
        const why = b.missing();
        if (why) {
          say(`  skipping ${b.name}: ${why}`);
          notes.skipped.push(`VM ${b.name}: ${why}`);
          continue;
        }
        measurements.push(...(await runVmBackend(b, tests, runs, say)));
      }
      notes.vm.push(
        `iperf3 against a server in the test network's peer namespace (192.0.2.2); TCP ${plan.tcpSeconds} s, UDP ${plan.udpSeconds} s per run, ${runs} run(s), medians; the rate is what the receiver got.`,
        'Under TCG the guest (one emulated vCPU) is the bottleneck, not the back-end: the rates mostly measure the guest, so the back-end CPU per GB (or per datagram) is the figure that compares back-ends.',
        "Back-end CPU: utime + stime of the back-end process from /proc/PID/stat around each run (ferry's node process with its worker threads; passt). For QEMU user the back-end is QEMU itself: its threads other than the vCPU (main loop, where libslirp and the virtio-net device run).",
        "QEMU I/O threads CPU: the same threads for every back-end. Over vhost-user QEMU is off the data path; over -netdev stream (passt's classic mode) QEMU's main loop copies every frame to and from passt's socket, a cost to add to passt's.",
        "passt is Debian 12's package (0.0~git20230309), which has no vhost-user: it runs in its classic mode, QEMU connecting with -netdev stream. ferry and passt announce MTU 65520 to the guest; QEMU user's libslirp keeps 1500.",
        `Host->guest small datagrams are sent at a fixed ${plan.smallRateDown}bit/s (an unlimited sender only measures drops); guest->host ones as fast as the guest can. CPU per datagram is over the datagrams delivered.`,
      );
    }
  }

  if (opts.sections.has('pmd') && opts.kinds.has('pps')) {
    const why = testpmdMissing();
    if (why) {
      say(`  skipping testpmd: ${why}`);
      notes.skipped.push(`testpmd (DPDK virtio-user into ferry): ${why}`);
    } else {
      const seconds = opts.quick ? 3 : 5;
      say(`testpmd: 64-byte datagrams into ferry, ${runs} run(s) of ${seconds} s`);
      measurements.push(await runTestpmd(seconds, runs, say));
      notes.vm.push(
        `testpmd: DPDK ${TESTPMD} (Debian's dpdk-dev) as a vhost-user front-end, --forward-mode=txonly, UDP 192.0.2.1:40000 -> 192.0.2.2:9 with 64 bytes of payload, as fast as it can (--no-huge -m 512, one forwarding lcore); delivered datagrams counted on the peer namespace's veth, ${seconds} s per run. No peer: Debian 12's passt has no vhost-user.`,
      );
    }
  }

  if (opts.sections.has('ns')) {
    const missing = nsPrerequisitesMissing();
    if (missing.length > 0) {
      notes.skipped.push(`namespace benchmarks: missing ${missing.join('; ')}`);
    } else {
      const plan: NsPlan = { seconds: opts.quick ? 3 : 5, runs, udpRate: opts.udpRate ? opts.udpRate : '1G', kinds: opts.kinds };
      const tests = nsTests(plan);
      say(`namespace: ${tests.length} tests x ${runs} runs per back-end`);
      for (const b of NS_BACKENDS) {
        const why = b.missing();
        if (why) {
          say(`  skipping ${b.name}: ${why}`);
          notes.skipped.push(`namespace ${b.name}: ${why}`);
          continue;
        }
        measurements.push(...(await runNsBackend(b, tests, runs, say)));
      }
      notes.ns.push(
        `Each back-end serves a fresh network namespace through a tap device (--config-net or slirp4netns --configure); iperf3 runs in that namespace against a server in the test network's peer namespace (192.0.2.2), -R for host->namespace; ${plan.seconds} s per run, ${runs} run(s), medians.`,
        'Here the guest is the kernel itself, so the rates measure the back-ends. Back-end CPU: utime + stime of the back-end process (ferry pasta\'s node process, pasta, slirp4netns).',
        'slirp4netns numbers its namespace from 203.0.113.0/24 (--cidr) and NATs; pasta and ferry give the namespace the host\'s address. pasta runs with --runas 0 (as root it would otherwise become nobody and could not join the namespace) and with its automatic port forwarding off (-t/-u/-T/-U none).',
        'Request/response: one TCP connection, a 1-byte request answered by a 1-byte reply, the next request sent on the reply (Node.js client in the namespace, Node.js server in the peer namespace): round trips per second and back-end CPU per round trip.',
      );
    }
  }

  const commandLine = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  const md = reportMarkdown(machine, measurements, notes, commandLine);
  say('');
  say(md);
  fs.mkdirSync(opts.outDir, { recursive: true });
  fs.writeFileSync(path.join(opts.outDir, 'latest.md'), md);
  fs.writeFileSync(path.join(opts.outDir, 'latest.json'), JSON.stringify({ machine, commandLine, notes, measurements }, null, 2) + '\n');
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
