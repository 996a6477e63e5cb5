/**
 * Runs the ferry daemon (bin/ferry.js) inside a test namespace for e2e
 * tests: waits until its vhost-user socket exists, keeps its log, stops it by
 * PID.
 */
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawnIn, stopChild } from '../netns';
import { REPO_ROOT } from '../guest';

/** A ferry daemon started by startFerry(). */
export interface FerryProcess {
  child: ChildProcess;
  socketPath: string;
  /** Everything ferry wrote on stdout and stderr so far. */
  log(): string;
  /** SIGTERM (then SIGKILL after a grace period); resolves with its exit code (null if signalled). */
  stop(): Promise<number | null>;
  /** Resolves when ferry has exited: its exit code, null if a signal ended it. */
  exited: Promise<number | null>;
  /**
   * Resolves with the first match of `re` in ferry's output (searched from
   * character `from`); rejects after `timeoutMs` or when ferry exits first.
   */
  waitForLog(re: RegExp, timeoutMs: number, from?: number): Promise<RegExpExecArray>;
}

/** Path of ferry's entry point. */
export const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
/** The compiled module bin/ferry.js loads: absent until the daemon is built. */
export const FERRY_CLI_MODULE = path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js');

/**
 * Starts `node bin/ferry.js --socket-path SOCKET ...args` in `ns` and resolves
 * once the socket file exists; rejects (with ferry's log) if ferry exits
 * first or the socket does not appear within `timeoutMs`.
 */
export async function startFerry(ns: string, socketPath: string, args: string[], timeoutMs = 10000): Promise<FerryProcess> {
  const child = spawnIn(ns, [process.execPath, FERRY_BIN, '--socket-path', socketPath, ...args], { cwd: REPO_ROOT });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let closed = false;
  void exited.then(() => (closed = true));
  const ferry: FerryProcess = {
    child,
    socketPath,
    log: () => output,
    stop: async () => {
      await stopChild(child, 3000);
      return exited;
    },
    exited,
    waitForLog: async (re, timeoutMs, from = 0) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = re.exec(output.slice(from));
        if (m) return m;
        if (closed) throw new Error(`ferry exited before ${re} appeared in its log:\n${output}`);
        if (Date.now() > deadline) throw new Error(`${re} not in ferry's log after ${timeoutMs} ms:\n${output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(socketPath)) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`ferry exited (${child.exitCode ?? child.signalCode}) before listening:\n${output}`);
    }
    if (Date.now() > deadline) {
      await ferry.stop();
      throw new Error(`ferry did not create ${socketPath} within ${timeoutMs} ms:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return ferry;
}

/** One sample line of ferry's Prometheus text: metric name, labels, value. */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** GET /metrics from ferry's `--metrics unix:PATH` endpoint; resolves with the body. */
export function scrapeMetrics(socketPath: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: '/metrics', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET /metrics: ${res.statusCode}\n${body}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`GET /metrics on ${socketPath} timed out`)));
    req.on('error', reject);
  });
}

/** The samples of metric `name` in Prometheus text `body`. */
export function metricSamples(body: string, name: string): MetricSample[] {
  const out: MetricSample[] = [];
  for (const line of body.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name, labels, value: Number(m[3]) });
  }
  return out;
}

/** Sum of metric `name`'s samples whose labels include all of `match`. */
export function metricSum(body: string, name: string, match: Record<string, string> = {}): number {
  return metricSamples(body, name)
    .filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}
