/**
 * The logging seam used by every layer. The backend installs the real sink
 * (the main thread's logger, src/backend/cli/logging.ts; in a worker, a forwarder that posts lines to
 * the main thread) with `setLogSink`; until then lines go to stderr.
 *
 * `rateLimited` keeps a bad guest or frontend from flooding the log: at most
 * `burst` lines per key per interval, then one summary of what was suppressed.
 */

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export type LogSink = (level: LogLevel, message: string) => void;

let sink: LogSink = (level, message) => {
  if (level === 'debug') return;
  process.stderr.write(`${level}: ${message}\n`);
};

/** Install the process-wide (per thread) log sink. */
export function setLogSink(next: LogSink): void {
  sink = next;
}

export const log = {
  error: (message: string): void => sink('error', message),
  warn: (message: string): void => sink('warn', message),
  info: (message: string): void => sink('info', message),
  debug: (message: string): void => sink('debug', message),
};

interface RateState {
  windowStart: number;
  count: number;
  suppressed: number;
}

const rateStates = new Map<string, RateState>();

/**
 * Log `message` under `key` unless more than `burst` lines with that key were
 * logged in the last `intervalMs`. Returns true when the line was written.
 * The message is built by the caller only when needed: pass a function.
 */
export function rateLimited(level: LogLevel, key: string, message: () => string, burst = 5, intervalMs = 10_000, now = Date.now()): boolean {
  let state = rateStates.get(key);
  if (state === undefined) {
    state = { windowStart: now, count: 0, suppressed: 0 };
    rateStates.set(key, state);
  }
  if (now - state.windowStart >= intervalMs) {
    if (state.suppressed > 0) sink(level, `${key}: ${state.suppressed} similar messages suppressed`);
    state.windowStart = now;
    state.count = 0;
    state.suppressed = 0;
  }
  if (state.count >= burst) {
    state.suppressed++;
    return false;
  }
  state.count++;
  sink(level, message());
  return true;
}
