/**
 * The benchmark's tables: one markdown table per section (VM, testpmd,
 * namespace), one row per test and back-end, ferry's row first and each
 * peer's figures followed by ferry's figure divided by the peer's; the
 * memory table side by side; and the targets, each with its measured ratio.
 */
import { type Figures, figuresOf, type Measurement, medianFigures, type MemorySample, type TestKind } from './figures';
import { type MachineInfo, machineMarkdown } from './machine';

/** The back-end whose figures are divided by each peer's. */
export const FERRY = 'ferry';

function fmt(x: number | undefined, digits = 2): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(digits);
}

/** The rate figure of a test kind with its unit. */
function rateOf(kind: TestKind, f: Figures): { value: number | undefined; text: string } {
  switch (kind) {
    case 'tcp':
    case 'udp':
      return { value: f.gbitPerSecond, text: `${fmt(f.gbitPerSecond, 3)} Gbit/s` };
    case 'pps':
      return { value: f.packetsPerSecond, text: `${fmt((f.packetsPerSecond ?? NaN) / 1000)} kpps` };
    case 'rr':
      return { value: f.roundTripsPerSecond, text: `${fmt(f.roundTripsPerSecond)} /s` };
  }
}

/** The back-end CPU figure of a test kind with its unit. */
function cpuOf(kind: TestKind, f: Figures): { value: number | undefined; text: string } {
  switch (kind) {
    case 'tcp':
    case 'udp':
      return { value: f.cpuSecondsPerGB, text: `${fmt(f.cpuSecondsPerGB)} s/GB` };
    case 'pps':
      return { value: f.cpuMicrosPerPacket, text: `${fmt(f.cpuMicrosPerPacket)} µs/dgram` };
    case 'rr':
      return { value: f.cpuMicrosPerRoundTrip, text: `${fmt(f.cpuMicrosPerRoundTrip)} µs/rt` };
  }
}

/** " (min-max)" of the rate over the runs, " (1 run)" for a single run: runs here vary, and a median hides by how much. */
function spreadText(m: Measurement): string {
  if (m.runs.length === 1) return ' (1 run)';
  const values = m.runs.map((r) => rateOf(m.kind, figuresOf(r)).value ?? NaN).filter((v) => Number.isFinite(v));
  if (values.length < 2) return '';
  const scale = m.kind === 'pps' ? 1000 : 1;
  return ` (${fmt(Math.min(...values) / scale, 3)}-${fmt(Math.max(...values) / scale, 3)})`;
}

/** "ferry --queues 2" and the like: ferry run another way, compared with the peer rather than with ferry. */
function isFerryVariant(backend: string): boolean {
  return backend !== FERRY && backend.startsWith(`${FERRY} `);
}

function ratio(ferry: number | undefined, peer: number | undefined): string {
  if (ferry === undefined || peer === undefined || !Number.isFinite(ferry) || !Number.isFinite(peer) || peer === 0) return '-';
  return `×${fmt(ferry / peer)}`;
}

/** One markdown table for the measurements of one section, in the order given. */
export function sectionTable(measurements: Measurement[], withQemuIo: boolean): string {
  const header = ['test', 'back-end', 'rate: median (min-max)', 'ferry ÷ it', 'loss', 'back-end CPU', 'ferry ÷ it'];
  if (withQemuIo) header.push('QEMU I/O threads CPU');
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  const tests = [...new Set(measurements.map((m) => m.test))];
  for (const test of tests) {
    const rows = measurements.filter((m) => m.test === test);
    const ferryRow = rows.find((m) => m.backend === FERRY);
    const ferryFig = ferryRow ? medianFigures(ferryRow.runs) : null;
    const firstPeer = rows.find((m) => m.backend !== FERRY && !isFerryVariant(m.backend) && !m.notMeasured) ?? null;
    for (const m of rows) {
      const f = medianFigures(m.runs);
      if (m.notMeasured) {
        const cells = [test, m.backend, `not measured: ${m.notMeasured.replace(/\|/g, '/').split('\n')[0].slice(0, 120)}`, '', '', '', ''];
        if (withQemuIo) cells.push('');
        lines.push(`| ${cells.join(' | ')} |`);
        continue;
      }
      if (!f) {
        const cells = [test, m.backend, `failed: ${(m.error ?? 'no runs').replace(/\|/g, '/').split('\n')[0].slice(0, 80)}`, '', '', '', ''];
        if (withQemuIo) cells.push('');
        lines.push(`| ${cells.join(' | ')} |`);
        continue;
      }
      const rate = rateOf(m.kind, f);
      const cpu = cpuOf(m.kind, f);
      const isFerry = m.backend === FERRY;
      // A ferry variant (e.g. "ferry --queues 2") is divided by the first peer instead.
      const variantOf = isFerryVariant(m.backend) ? firstPeer : null;
      const variantFig = variantOf ? medianFigures(variantOf.runs) : null;
      const ratioCell = (pick: (k: TestKind, x: Figures) => { value: number | undefined }): string => {
        if (isFerry) return '';
        if (variantOf) return variantFig ? `${ratio(pick(m.kind, f).value, pick(m.kind, variantFig).value)} (it ÷ ${variantOf.backend})` : '';
        return ferryFig ? ratio(pick(m.kind, ferryFig).value, pick(m.kind, f).value) : '';
      };
      const cells = [
        test,
        m.backend,
        rate.text + spreadText(m),
        ratioCell(rateOf),
        f.lostPercent !== undefined ? `${fmt(f.lostPercent)} %` : '',
        cpu.text,
        ratioCell(cpuOf),
      ];
      if (withQemuIo) cells.push(m.kind === 'tcp' || m.kind === 'udp' ? `${fmt(f.qemuIoCpuSecondsPerGB)} s/GB` : '');
      if (m.detail) cells[2] += `; ${m.detail}`;
      const stalled = m.runs.reduce((sum, r) => sum + (r.stalledSeconds ?? 0), 0);
      if (stalled > 0) cells[2] += `; stalled ${stalled} of ${Math.round(m.runs.reduce((sum, r) => sum + r.seconds, 0))} s`;
      lines.push(`| ${cells.join(' | ')} |`);
    }
  }
  return lines.join('\n');
}

/** RSS in MiB with one decimal, or the reason it is missing. */
function mib(sample: MemorySample | undefined): string {
  if (!sample) return '-';
  if (sample.rssBytes === undefined || !Number.isFinite(sample.rssBytes)) return sample.note ?? '-';
  return `${(sample.rssBytes / 1048576).toFixed(1)} MiB`;
}

/** The memory table: one row per state, one column per back-end, then ferry ÷ each peer. */
export function memoryTable(samples: MemorySample[]): string {
  const backends = [...new Set(samples.map((s) => s.backend))];
  const peers = backends.filter((b) => b !== FERRY);
  const header = ['state', ...backends.map((b) => `${b} RSS`), ...peers.map((p) => `ferry ÷ ${p}`), 'notes'];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const state of [...new Set(samples.map((s) => s.state))]) {
    const at = (b: string): MemorySample | undefined => samples.find((s) => s.state === state && s.backend === b);
    const ferry = at(FERRY);
    const notes = backends.map((b) => (at(b)?.rssBytes !== undefined && at(b)?.note ? `${b}: ${at(b)?.note}` : '')).filter((n) => n).join('; ');
    lines.push(`| ${[state, ...backends.map((b) => mib(at(b))), ...peers.map((p) => ratio(ferry?.rssBytes, at(p)?.rssBytes)), notes].join(' | ')} |`);
  }
  return lines.join('\n');
}

/** One target: what it asks, the ratio or figure measured, and whether it is met. */
export interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | null;
}

function medianOf(measurements: Measurement[], section: Measurement['section'], test: string, backend: string): Figures | null {
  const m = measurements.find((x) => x.section === section && x.test === test && x.backend === backend && !x.notMeasured);
  return m ? medianFigures(m.runs) : null;
}

/** The figure-of-merit targets against the measurements of this run. */
export function targetChecks(measurements: Measurement[], memory: MemorySample[], passt: string, veth: string): TargetCheck[] {
  const out: TargetCheck[] = [];
  const ratioCheck = (target: string, f: number | undefined, p: number | undefined, ok: (r: number) => boolean): void => {
    const r = f !== undefined && p !== undefined && Number.isFinite(f) && Number.isFinite(p) && p !== 0 ? f / p : NaN;
    out.push({ target, measured: Number.isFinite(r) ? `×${fmt(r)}` : 'not measured', met: Number.isFinite(r) ? ok(r) : null });
  };
  for (const dir of ['guest->host', 'host->guest']) {
    const test = `tcp ${dir} MTU 65520`;
    const f = medianOf(measurements, 'vm', test, FERRY);
    const p = medianOf(measurements, 'vm', test, passt);
    ratioCheck(`VM ${test}: back-end CPU per GB <= 0.8 × ${passt}`, f?.cpuSecondsPerGB, p?.cpuSecondsPerGB, (r) => r <= 0.8);
  }
  for (const [section, test] of [['pmd', 'testpmd 64 B guest->host'], ['vm', 'udp 64 B unlimited guest->host']] as const) {
    const f = medianOf(measurements, section, test, FERRY);
    const p = medianOf(measurements, section, test, passt);
    ratioCheck(`${test}: CPU per datagram <= 1.0 × ${passt}`, f?.cpuMicrosPerPacket, p?.cpuMicrosPerPacket, (r) => r <= 1.0);
  }
  for (const test of [...new Set(measurements.filter((m) => m.section === 'ns' && m.kind === 'tcp').map((m) => m.test))]) {
    const f = medianOf(measurements, 'ns', test, FERRY);
    const v = medianOf(measurements, 'ns', test, veth);
    ratioCheck(`namespace ${test}: rate >= 0.8 × ${veth}`, f?.gbitPerSecond, v?.gbitPerSecond, (r) => r >= 0.8);
  }
  const idle = memory.find((s) => s.backend === FERRY && s.state.startsWith('idle'));
  const rss = idle?.rssBytes;
  out.push({
    target: 'ferry RSS idle <= 50 MB',
    measured: rss !== undefined && Number.isFinite(rss) ? `${(rss / 1e6).toFixed(1)} MB` : 'not measured',
    met: rss !== undefined && Number.isFinite(rss) ? rss <= 50e6 : null,
  });
  return out;
}

/** The targets as a markdown table. */
export function targetsTable(checks: TargetCheck[]): string {
  const lines = ['| target | measured | met |', '|---|---|---|'];
  for (const c of checks) lines.push(`| ${c.target} | ${c.measured} | ${c.met === null ? '-' : c.met ? 'yes' : 'no'} |`);
  return lines.join('\n');
}

/** Notes printed under the tables, and skipped peers. */
export interface ReportNotes {
  vm: string[];
  pmd: string[];
  ns: string[];
  memory: string[];
  /** The --cpu-prof run: where the profiles are and their busiest functions. */
  profile: string[];
  skipped: string[];
}

/** The names the targets compare against. */
export interface ReportPeers {
  passt: string;
  veth: string;
}

/** The whole report as markdown: machine, then each section's table and notes, memory, targets, skipped peers. */
export function reportMarkdown(
  machine: MachineInfo, measurements: Measurement[], memory: MemorySample[], notes: ReportNotes, commandLine: string, peers: ReportPeers,
): string {
  const of = (section: Measurement['section']): Measurement[] => measurements.filter((m) => m.section === section);
  const out = ['# ferry benchmarks', '', `\`${commandLine}\``, '', machineMarkdown(machine), ''];
  out.push(
    'Ratios are ferry\'s figure divided by the peer\'s, all from this one run: above 1 in "rate" means ferry moved more, below 1 in "CPU" (or RSS) means ferry spent less.',
    '',
  );
  const section = (title: string, rows: Measurement[], withQemuIo: boolean, sectionNotes: string[]): void => {
    if (rows.length > 0) out.push(`## ${title}`, '', sectionTable(rows, withQemuIo), '', ...sectionNotes.map((n) => `- ${n}`), '');
  };
  section('VM (QEMU guest, one vCPU under TCG)', of('vm'), true, notes.vm);
  section('testpmd (DPDK virtio-user as the vhost-user front-end)', of('pmd'), false, notes.pmd);
  section('Namespace (pasta mode: the kernel in a network namespace is the guest)', of('ns'), false, notes.ns);
  if (memory.length > 0) out.push('## Memory (back-end RSS)', '', memoryTable(memory), '', ...notes.memory.map((n) => `- ${n}`), '');
  if (notes.profile.length > 0) out.push('## CPU profile (--cpu-prof)', '', ...notes.profile.map((n) => `- ${n}`), '');
  const checks = targetChecks(measurements, memory, peers.passt, peers.veth);
  out.push('## Targets (printed, not enforced)', '', targetsTable(checks), '');
  if (notes.skipped.length > 0) out.push('## Not measured', '', ...notes.skipped.map((n) => `- ${n}`), '');
  return out.join('\n');
}
