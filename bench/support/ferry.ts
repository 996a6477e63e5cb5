/**
 * Starts the ferry daemon for the bench in a test namespace, optionally with
 * node flags (V8's CPU profiler: --cpu-prof writes one .cpuprofile per
 * thread, main and workers, when ferry exits on SIGTERM). A small copy of
 * test/e2e/ferry-process.ts's startFerry, which takes no node flags.
 */
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import { spawnIn, stopChild } from '../../test/support/netns';
import { REPO_ROOT } from '../../test/support/guest';
import { FERRY_BIN } from '../../test/support/e2e/ferry-process';

/** A ferry daemon the bench started. */
export interface BenchFerry {
  child: ChildProcess;
  log(): string;
  /** SIGTERM, SIGKILL after the grace period (long enough for profiles to be written). */
  stop(): Promise<void>;
}

/** node flags that profile every thread of ferry into `dir`. */
export function cpuProfileFlags(dir: string): string[] {
  return ['--cpu-prof', `--cpu-prof-dir=${dir}`];
}

/** `node [nodeArgs] bin/ferry.js --socket-path SOCKET ...args` in `ns`; resolves once the socket exists (10 s bound). */
export async function startBenchFerry(ns: string, socketPath: string, args: string[], nodeArgs: string[] = []): Promise<BenchFerry> {
  const child = spawnIn(ns, [process.execPath, ...nodeArgs, FERRY_BIN, '--socket-path', socketPath, ...args], { cwd: REPO_ROOT });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  const ferry: BenchFerry = { child, log: () => output, stop: () => stopChild(child, nodeArgs.length > 0 ? 15000 : 3000) };
  const deadline = Date.now() + 10000;
  while (!fs.existsSync(socketPath)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`ferry exited (${child.exitCode ?? child.signalCode}) before listening:\n${output}`);
    if (Date.now() > deadline) {
      await ferry.stop();
      throw new Error(`ferry did not create ${socketPath} within 10 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return ferry;
}

/** Resident set size of process `pid` in bytes (VmRSS of /proc/PID/status), NaN once it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}
