/**
 * Runs the ferry daemon (bin/ferry.js) inside a test namespace for e2e
 * tests: waits until its vhost-user socket exists, keeps its log, stops it by
 * PID.
 */
import { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { spawnIn, stopChild } from '../support/netns';
import { REPO_ROOT } from '../support/guest';

/** A ferry daemon started by startFerry(). */
export interface FerryProcess {
  child: ChildProcess;
  socketPath: string;
  /** Everything ferry wrote on stdout and stderr so far. */
  log(): string;
  /** SIGTERM (then SIGKILL after a grace period); resolves with its exit code (null if signalled). */
  stop(): Promise<number | null>;
}

/** Path of ferry's entry point. */
export const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
/** The compiled module bin/ferry.js loads: absent until the daemon is built. */
export const FERRY_CLI_MODULE = path.join(REPO_ROOT, 'dist', 'src', 'backend', 'cli.js');

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
  const ferry: FerryProcess = {
    child,
    socketPath,
    log: () => output,
    stop: async () => {
      await stopChild(child, 3000);
      return exited;
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
