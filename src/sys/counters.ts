/**
 * Counters that workers write and the main thread reads without a round
 * trip: one Float64Array over a SharedArrayBuffer per worker, one slot per
 * (metric, label values) pair. A worker is the only writer of its block, so
 * plain stores suffice (aligned 8-byte stores are not torn on the platforms
 * Node supports); the main thread turns the slots into prom-client metrics.
 *
 * Slots are declared up front with `defineCounter` at module load time (so
 * every thread computes the same layout) and incremented by index on the hot
 * path: `counters.add(SLOT, n)` costs one array store.
 */

export interface CounterDefinition {
  /** Prometheus metric name, e.g. 'ferry_frames_total'. */
  metric: string;
  help: string;
  /** 'counter' only ever grows; 'gauge' is set. */
  kind: 'counter' | 'gauge';
  /** Label values for this slot, e.g. { direction: 'tx', reason: 'bad_checksum' }. */
  labels: Record<string, string>;
}

const definitions: CounterDefinition[] = [];
const bySignature = new Map<string, number>();

function signature(metric: string, labels: Record<string, string>): string {
  const keys = Object.keys(labels).sort();
  return metric + '{' + keys.map((k) => `${k}=${labels[k]}`).join(',') + '}';
}

/**
 * Declare a slot and return its index. Declaring the same metric and labels
 * twice returns the same index. Call at module load time only.
 */
export function defineCounter(metric: string, help: string, labels: Record<string, string> = {}, kind: 'counter' | 'gauge' = 'counter'): number {
  const sig = signature(metric, labels);
  const existing = bySignature.get(sig);
  if (existing !== undefined) return existing;
  const index = definitions.length;
  definitions.push({ metric, help, kind, labels: { ...labels } });
  bySignature.set(sig, index);
  return index;
}

/** All declared slots, in index order. */
export function counterDefinitions(): readonly CounterDefinition[] {
  return definitions;
}

/** Room for slots declared later (modules loaded after the block was made). */
const HEADROOM = 4096;

/** One worker's counters. */
export class CounterBlock {
  readonly values: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(8 * (definitions.length + HEADROOM))) {
    this.values = new Float64Array(buffer);
  }

  add(slot: number, n = 1): void {
    this.values[slot] += n;
  }

  set(slot: number, value: number): void {
    this.values[slot] = value;
  }

  get(slot: number): number {
    return this.values[slot];
  }
}
