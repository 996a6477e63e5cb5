/**
 * The benchmark's results: one Measurement per (test, back-end) with its
 * raw runs, the figures derived from a run (throughput, CPU per GB or per
 * datagram or per round trip), and medians over runs.
 */

/** What a test measures, which decides the figures shown for it. */
export type TestKind = 'tcp' | 'udp' | 'pps' | 'rr';

/** One run of one test through one back-end, as measured. */
export interface Run {
  /** Bytes the receiving end got. */
  bytes: number;
  /** Seconds the receiving end measured over. */
  seconds: number;
  /** Back-end CPU seconds (utime + stime) spent during the run. */
  cpuSeconds: number;
  /** VM runs: CPU seconds of QEMU's threads other than its vCPUs during the run. */
  qemuIoCpuSeconds?: number;
  /** UDP: datagrams received and lost (receiver's count). */
  packets?: number;
  lostPackets?: number;
  lostPercent?: number;
  /** Request/response: round trips completed. */
  roundTrips?: number;
  /** One-second intervals in which the receiver got nothing (iperf3's interval report; namespace tests). */
  stalledSeconds?: number;
}

/** All runs of one test through one back-end. */
export interface Measurement {
  section: 'vm' | 'pmd' | 'ns';
  /** Short test id, e.g. "tcp guest->host". */
  test: string;
  kind: TestKind;
  backend: string;
  runs: Run[];
  /** Why the test produced no (or fewer) runs, if it failed. */
  error?: string;
  /** Why this back-end was not measured at all (a peer missing here). */
  notMeasured?: string;
  /** Free text shown beside the figures (e.g. the traffic each queue carried). */
  detail?: string;
}

/** Resident memory of one back-end in one state (idle, guest attached, 1000 flows). */
export interface MemorySample {
  backend: string;
  state: string;
  /** VmRSS in bytes; absent when not measured. */
  rssBytes?: number;
  /** Why it was not measured, or what it covers. */
  note?: string;
}

/** The figures derived from one run; absent where they do not apply. */
export interface Figures {
  gbitPerSecond: number;
  cpuSecondsPerGB: number;
  qemuIoCpuSecondsPerGB?: number;
  lostPercent?: number;
  /** Datagrams delivered per second, and back-end CPU microseconds per delivered datagram. */
  packetsPerSecond?: number;
  cpuMicrosPerPacket?: number;
  roundTripsPerSecond?: number;
  cpuMicrosPerRoundTrip?: number;
}

/** Figures of one run. */
export function figuresOf(run: Run): Figures {
  const gb = run.bytes / 1e9;
  const f: Figures = {
    gbitPerSecond: run.seconds > 0 ? (run.bytes * 8) / run.seconds / 1e9 : NaN,
    cpuSecondsPerGB: gb > 0 ? run.cpuSeconds / gb : NaN,
  };
  if (run.qemuIoCpuSeconds !== undefined) f.qemuIoCpuSecondsPerGB = gb > 0 ? run.qemuIoCpuSeconds / gb : NaN;
  if (run.packets !== undefined) {
    const delivered = run.packets - (run.lostPackets ?? 0);
    f.lostPercent = run.lostPercent;
    f.packetsPerSecond = run.seconds > 0 ? delivered / run.seconds : NaN;
    f.cpuMicrosPerPacket = delivered > 0 ? (run.cpuSeconds / delivered) * 1e6 : NaN;
  }
  if (run.roundTrips !== undefined) {
    f.roundTripsPerSecond = run.seconds > 0 ? run.roundTrips / run.seconds : NaN;
    f.cpuMicrosPerRoundTrip = run.roundTrips > 0 ? (run.cpuSeconds / run.roundTrips) * 1e6 : NaN;
  }
  return f;
}

/** Median of the finite values (NaN when there are none). */
export function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Each figure's median over the runs (each figure taken separately); null without runs. */
export function medianFigures(runs: Run[]): Figures | null {
  if (runs.length === 0) return null;
  const all = runs.map(figuresOf);
  const pick = (key: keyof Figures): number | undefined =>
    all.some((f) => f[key] !== undefined) ? median(all.map((f) => f[key] ?? NaN)) : undefined;
  const out: Figures = { gbitPerSecond: pick('gbitPerSecond') ?? NaN, cpuSecondsPerGB: pick('cpuSecondsPerGB') ?? NaN };
  for (const key of ['qemuIoCpuSecondsPerGB', 'lostPercent', 'packetsPerSecond', 'cpuMicrosPerPacket', 'roundTripsPerSecond', 'cpuMicrosPerRoundTrip'] as const) {
    const v = pick(key);
    if (v !== undefined) out[key] = v;
  }
  return out;
}
