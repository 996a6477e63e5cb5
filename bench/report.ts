/**
 * The benchmark's tables: one markdown table per section (VM, namespace),
 * one row per test and back-end, ferry's row first and each peer's figures
 * followed by ferry's figure divided by the peer's.
 */
import { type Figures, figuresOf, type Measurement, medianFigures, type TestKind } from './figures';
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
    for (const m of rows) {
      const f = medianFigures(m.runs);
      if (!f) {
        const cells = [test, m.backend, `failed: ${(m.error ?? 'no runs').replace(/\|/g, '/').split('\n')[0].slice(0, 80)}`, '', '', '', ''];
        if (withQemuIo) cells.push('');
        lines.push(`| ${cells.join(' | ')} |`);
        continue;
      }
      const rate = rateOf(m.kind, f);
      const cpu = cpuOf(m.kind, f);
      const isFerry = m.backend === FERRY;
      const cells = [
        test,
        m.backend,
        rate.text + spreadText(m),
        isFerry || !ferryFig ? '' : ratio(rateOf(m.kind, ferryFig).value, rate.value),
        f.lostPercent !== undefined ? `${fmt(f.lostPercent)} %` : '',
        cpu.text,
        isFerry || !ferryFig ? '' : ratio(cpuOf(m.kind, ferryFig).value, cpu.value),
      ];
      if (withQemuIo) cells.push(m.kind === 'tcp' || m.kind === 'udp' ? `${fmt(f.qemuIoCpuSecondsPerGB)} s/GB` : '');
      lines.push(`| ${cells.join(' | ')} |`);
    }
  }
  return lines.join('\n');
}

/** Notes printed under the tables, and skipped peers. */
export interface ReportNotes {
  vm: string[];
  ns: string[];
  skipped: string[];
}

/** The whole report as markdown: machine, VM table and notes, namespace table and notes. */
export function reportMarkdown(machine: MachineInfo, measurements: Measurement[], notes: ReportNotes, commandLine: string): string {
  const vm = measurements.filter((m) => m.section === 'vm');
  const ns = measurements.filter((m) => m.section === 'ns');
  const out = ['# ferry benchmarks', '', `\`${commandLine}\``, '', machineMarkdown(machine), ''];
  out.push(
    'Ratios are ferry\'s figure divided by the peer\'s: above 1 in "rate" means ferry moved more, below 1 in "CPU" means ferry spent less.',
    '',
  );
  if (vm.length > 0) {
    out.push('## VM (QEMU guest, one vCPU under TCG)', '', sectionTable(vm, true), '', ...notes.vm.map((n) => `- ${n}`), '');
  }
  if (ns.length > 0) {
    out.push('## Namespace (pasta mode: the kernel in a network namespace is the guest)', '', sectionTable(ns, false), '', ...notes.ns.map((n) => `- ${n}`), '');
  }
  if (notes.skipped.length > 0) out.push('## Skipped', '', ...notes.skipped.map((n) => `- ${n}`), '');
  return out.join('\n');
}
