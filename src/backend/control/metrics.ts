/**
 * Prometheus metrics: a prom-client Registry whose ferry_* metrics are read,
 * at scrape time, from the workers' shared-memory CounterBlocks (one per
 * queue pair, see src/counters.ts), plus Node's process metrics (CPU,
 * memory, file descriptors, event-loop lag) from prom-client's default
 * collectors. `startMetricsServer` serves GET /metrics over HTTP on a TCP
 * HOST:PORT or a UNIX socket path.
 *
 * Reading the blocks never waits for a worker: a scrape sees each slot's
 * latest store (aligned 8-byte stores are not torn), which is all a
 * monotonically increasing counter needs.
 */

import { createConnection } from 'net';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'http';
import { lstatSync, unlinkSync } from 'fs';
import { type AddressInfo } from 'net';
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { type CounterBlock, type CounterDefinition, counterDefinitions } from '../../sys/counters';
import { type MetricsEndpoint, parseMetricsEndpoint } from '../cli/options';

/** The label that tells queue pairs (workers) apart. */
export const QUEUE_PAIR_LABEL = 'queue_pair';

/** Where the registry finds the workers' counter blocks; index = queue pair, null = no worker (yet). */
export type CounterBlockSource = () => ReadonlyArray<CounterBlock | null>;

export interface MetricsOptions {
  /** Label each sample with its queue pair (true), or sum over queue pairs (false). Default true. */
  perQueuePair?: boolean;
  /** Register Node's process metrics, prefixed with `processPrefix`. Default true. */
  processMetrics?: boolean;
  /** Prefix of the process metrics. Default 'ferry_'. */
  processPrefix?: string;
  /** Constant labels on every metric (e.g. { instance_name: 'vm1' }). */
  defaultLabels?: Record<string, string>;
  /** Counter definitions to expose (default: counterDefinitions(), read at every scrape). */
  definitions?: () => readonly CounterDefinition[];
}

/** One exported metric built from all slots with the same metric name. */
interface SlotGroup {
  kind: 'counter' | 'gauge';
  labelNames: string[];
  slots: number[];
}

/** Group slots by metric name; the first definition of a name fixes its kind and help. */
function groupSlots(definitions: readonly CounterDefinition[], perQueuePair: boolean): Map<string, SlotGroup & { help: string }> {
  const groups = new Map<string, SlotGroup & { help: string }>();
  definitions.forEach((definition, slot) => {
    let group = groups.get(definition.metric);
    if (group === undefined) {
      group = { kind: definition.kind, help: definition.help, labelNames: perQueuePair ? [QUEUE_PAIR_LABEL] : [], slots: [] };
      groups.set(definition.metric, group);
    }
    if (definition.kind !== group.kind) return; // a conflicting redefinition is ignored rather than corrupting the metric
    for (const name of Object.keys(definition.labels)) if (!group.labelNames.includes(name)) group.labelNames.push(name);
    group.slots.push(slot);
  });
  return groups;
}

/**
 * The metrics of one daemon: a prom-client Registry kept in step with the
 * counter definitions, rendering the workers' blocks at each scrape.
 */
export class FerryMetrics {
  readonly registry = new Registry();
  private readonly perQueuePair: boolean;
  private readonly definitions: () => readonly CounterDefinition[];
  /** Metric name -> label names it was registered with, to notice new labels. */
  private readonly registered = new Map<string, string>();
  private definitionCount = -1;

  constructor(private readonly blocks: CounterBlockSource, options: MetricsOptions = {}) {
    this.perQueuePair = options.perQueuePair ?? true;
    this.definitions = options.definitions ?? counterDefinitions;
    if (options.defaultLabels !== undefined) this.registry.setDefaultLabels(options.defaultLabels);
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: options.processPrefix ?? 'ferry_' });
  }

  /** Content-Type of `render()`'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** The metrics in Prometheus text format, read from the blocks now. */
  async render(): Promise<string> {
    this.sync();
    return this.registry.metrics();
  }

  /** Register metrics for counter slots declared since the last scrape. */
  private sync(): void {
    const definitions = this.definitions();
    if (definitions.length === this.definitionCount) return;
    this.definitionCount = definitions.length;
    for (const [name, group] of groupSlots(definitions, this.perQueuePair)) {
      const signature = `${group.kind}:${group.labelNames.join(',')}:${group.slots.join(',')}`;
      if (this.registered.get(name) === signature) continue;
      if (this.registered.has(name)) this.registry.removeSingleMetric(name);
      this.register(name, group, definitions);
      this.registered.set(name, signature);
    }
  }

  private register(name: string, group: SlotGroup & { help: string }, definitions: readonly CounterDefinition[]): void {
    const samples = (): Array<[Record<string, string>, number]> => this.samples(group, definitions);
    if (group.kind === 'counter') {
      new Counter({
        name,
        help: group.help,
        labelNames: group.labelNames,
        registers: [this.registry],
        collect(this: Counter<string>) {
          this.reset();
          // A counter cannot go down; a negative or non-finite slot is a bug elsewhere and is left out.
          for (const [labels, value] of samples()) if (Number.isFinite(value) && value >= 0) this.inc(labels, value);
        },
      });
    } else {
      new Gauge({
        name,
        help: group.help,
        labelNames: group.labelNames,
        registers: [this.registry],
        collect(this: Gauge<string>) {
          this.reset();
          for (const [labels, value] of samples()) if (!Number.isNaN(value)) this.set(labels, value);
        },
      });
    }
  }

  /** (labels, value) pairs of a metric: per queue pair, or summed over them. */
  private samples(group: SlotGroup, definitions: readonly CounterDefinition[]): Array<[Record<string, string>, number]> {
    const blocks = this.blocks();
    const out: Array<[Record<string, string>, number]> = [];
    for (const slot of group.slots) {
      const labels = definitions[slot].labels;
      if (this.perQueuePair) {
        blocks.forEach((block, queuePair) => {
          if (block === null || slot >= block.values.length) return;
          out.push([{ [QUEUE_PAIR_LABEL]: String(queuePair), ...labels }, block.values[slot]]);
        });
      } else {
        let sum = 0;
        for (const block of blocks) if (block !== null && slot < block.values.length) sum += block.values[slot];
        out.push([{ ...labels }, sum]);
      }
    }
    return out;
  }
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** Where it listens: 'HOST:PORT' (with the real port when 0 was asked) or the socket path. */
  address: string;
  /** Stop listening, drop open connections, remove the socket file. */
  close(): Promise<void>;
}

function handle(metrics: FerryMetrics, request: IncomingMessage, response: ServerResponse): void {
  const path = (request.url ?? '/').split('?')[0];
  if (path !== '/metrics') {
    response.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: try /metrics\n');
    return;
  }
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('method not allowed\n');
    return;
  }
  metrics.render().then(
    (text) => {
      response.writeHead(200, { 'Content-Type': metrics.contentType });
      response.end(request.method === 'HEAD' ? undefined : text);
    },
    (error: unknown) => {
      response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`metrics failed: ${error instanceof Error ? error.message : String(error)}\n`);
    },
  );
}

function listen(server: Server, endpoint: MetricsEndpoint): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = (): void => {
      server.off('error', reject);
      resolve();
    };
    if (endpoint.kind === 'unix') server.listen(endpoint.path, done);
    else server.listen(endpoint.port, endpoint.host, done);
  });
}

/** True when something accepts connections on UNIX socket `path`. */
function unixSocketInUse(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Remove a stale socket file left by a previous run (never a regular file, never a live socket). */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket = false;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) throw new Error(`${path} exists and is not a socket`);
  if (await unixSocketInUse(path)) throw new Error(`${path} is in use by another process`);
  unlinkSync(path);
}

/**
 * Serve GET /metrics from `metrics` on `endpoint` ('HOST:PORT', 'unix:PATH'
 * or a parsed MetricsEndpoint). Resolves once listening.
 */
export async function startMetricsServer(endpoint: MetricsEndpoint | string, metrics: FerryMetrics): Promise<MetricsServer> {
  const where = typeof endpoint === 'string' ? parseMetricsEndpoint(endpoint) : endpoint;
  const server = createServer((request, response) => handle(metrics, request, response));
  // Scrapers are local and quick; don't let an idle connection hold resources.
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10000;
  server.requestTimeout = 10000;
  if (where.kind === 'unix') await removeStaleSocket(where.path);
  await listen(server, where);
  const bound = server.address();
  const address = where.kind === 'unix' ? where.path : `${where.host}:${(bound as AddressInfo).port}`;
  let closed: Promise<void> | null = null;
  return {
    address,
    close: () => {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }).then(() => {
        if (where.kind === 'unix') {
          try {
            if (lstatSync(where.path).isSocket()) unlinkSync(where.path);
          } catch {
            // already gone: Node removes the socket file it bound
          }
        }
      });
      return closed;
    },
  };
}
