/**
 * Going to the background once ready, as passt and pasta do (passt(1) -f):
 * installed as `passt`, or as `pasta` attached to an existing namespace,
 * the process its caller started exits 0 only when the socket or the
 * namespace is served, or with the error's status when setup fails, and
 * a background process in a new session carries on. Callers such as
 * podman (pasta) and libvirt (passt) wait for that exit, and for their
 * stdout/stderr pipes to close, before they go on.
 *
 * Node cannot fork(), so the parent starts the same program again
 * (same argv[0], same arguments, setsid) with a readiness pipe, relays
 * the child's stderr until the child is ready, then exits. The child
 * learns it is ready the way a systemd service says so: each mode sends
 * READY=1 to $NOTIFY_SOCKET, which in the child is an abstract datagram
 * socket of its own; the first READY=1 there is passed to the parent as
 * one byte on the pipe. Nothing else in the modes changes.
 *
 * Stays in the foreground: -f, `pasta` running a command (pasta's own
 * rule), `ferry` under its own name, and a process systemd started
 * (NOTIFY_SOCKET or LISTEN_FDS: the service manager is the caller and
 * already has its readiness protocol).
 */
import { type ChildProcess, spawn, type StdioOptions } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import type { Readable } from 'stream';

/** Environment variable naming the readiness pipe's fd in the background process. */
export const READY_FD_ENV = 'FERRY_BACKGROUND_READY_FD';
/** The byte the background process writes when it is ready. */
const READY_BYTE = 'R';
/** Bound on the background process's setup (pasta's helpers have 10 s each). */
export const BACKGROUND_SETUP_TIMEOUT_MS = 60_000;
/** How often the background process looks for its own READY=1 (before and after). */
const POLL_MS = 20;
const DRAIN_MS = 1000;
/** How long the parent keeps relaying stderr after the ready byte. */
const STDERR_FLUSH_MS = 50;

/** What decides foreground or background. */
export interface BackgroundInputs {
  /** basename of argv[1]: 'passt', 'pasta', 'ferry', ... */
  invokedAs: string;
  /** -f/--foreground */
  foreground: boolean;
  /** pasta mode spawning a command (no --netns/PID): pasta stays in the foreground then. */
  spawnsCommand: boolean;
  env: NodeJS.ProcessEnv;
}

/** True when this process should hand over to a background copy of itself once that is ready. */
export function wantsBackground(inputs: BackgroundInputs): boolean {
  const { invokedAs, env } = inputs;
  if (invokedAs !== 'passt' && invokedAs !== 'pasta') return false;
  if (inputs.foreground || inputs.spawnsCommand) return false;
  if (env[READY_FD_ENV] !== undefined) return false; // already the background process
  if ((env.NOTIFY_SOCKET ?? '') !== '' || env.LISTEN_FDS !== undefined) return false;
  return true;
}

/** The stdio layout of the background process: stderr and the readiness pipe to us, `passFds` at their own numbers. */
export function backgroundStdio(passFds: readonly number[]): { stdio: StdioOptions; readyFd: number } {
  let readyFd = 3;
  while (passFds.includes(readyFd)) readyFd++;
  const size = Math.max(readyFd, ...passFds) + 1;
  const stdio: Array<'ignore' | 'pipe' | number> = new Array<'ignore' | 'pipe' | number>(size).fill('ignore');
  stdio[2] = 'pipe';
  stdio[readyFd] = 'pipe';
  for (const fd of passFds) if (fd > 2) stdio[fd] = fd;
  return { stdio, readyFd };
}

/** How the parent side is run; tests give their own program. */
export interface BackgroundLaunch {
  /** Executable and arguments of the background process (default: this node, its flags, argv[1] and `args`). */
  command: string;
  args: string[];
  /** Inherited fds that must keep their numbers (--fd). */
  passFds: number[];
  env: NodeJS.ProcessEnv;
  stderr: (text: string) => void;
  timeoutMs: number;
}

/** The command line that runs this program again with `args`, under the same name. */
export function relaunchCommand(args: readonly string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: [...process.execArgv, process.argv[1] ?? '', ...args] };
}

/**
 * Start the background process and wait until it is ready (resolves 0) or
 * has failed (resolves its exit status, at least 1). Its stderr is copied
 * to ours until then; afterwards it is on its own, in its own session.
 */
export function runInBackground(launch: BackgroundLaunch): Promise<number> {
  const { stdio, readyFd } = backgroundStdio(launch.passFds);
  let child: ChildProcess;
  try {
    child = spawn(launch.command, launch.args, { detached: true, stdio, env: { ...launch.env, [READY_FD_ENV]: String(readyFd) } });
  } catch (error) {
    launch.stderr(`ferry: cannot start the background process: ${(error as Error).message}\n`);
    return Promise.resolve(1);
  }
  const stderr = child.stdio[2] as Readable | null;
  const ready = child.stdio[readyFd] as Readable | null;
  return new Promise<number>((resolve) => {
    let settled = false;
    const settle = (code: number): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.removeAllListeners('exit');
      ready?.destroy();
      stderr?.destroy();
      child.unref();
      resolve(code);
    };
    const timer = setTimeout(() => {
      launch.stderr(`ferry: the background process was not ready within ${launch.timeoutMs} ms; stopping it\n`);
      if (child.pid !== undefined) {
        try {
          process.kill(child.pid, 'SIGTERM');
        } catch {
          // already gone
        }
      }
      settle(1);
    }, launch.timeoutMs);
    stderr?.on('data', (chunk: Buffer) => {
      if (!settled) launch.stderr(chunk.toString());
    });
    stderr?.on('error', () => undefined);
    ready?.on('error', () => undefined);
    ready?.on('data', (chunk: Buffer) => {
      // A moment for the last lines it logged before READY=1 to be relayed.
      if (chunk.includes(READY_BYTE)) setTimeout(() => settle(0), STDERR_FLUSH_MS);
    });
    child.once('error', (error) => {
      launch.stderr(`ferry: cannot start the background process: ${error.message}\n`);
      settle(1);
    });
    child.once('exit', (code, signal) => {
      // Let the last of its stderr arrive before reporting.
      const status = code !== null && code !== 0 ? code : 1;
      const report = (): void => {
        if (!settled && signal !== null) launch.stderr(`ferry: the background process was killed by ${signal}\n`);
        settle(status);
      };
      if (stderr === null || stderr.readableEnded) report();
      else {
        stderr.once('close', report);
        setTimeout(report, 500).unref();
      }
    });
  });
}

/** An abstract AF_UNIX address (sockaddr_un with a leading NUL), as bind() takes it. */
export function abstractUnixAddress(name: string, afUnix: number): Uint8Array {
  const bytes = Buffer.from(name, 'utf8');
  const out = new Uint8Array(2 + 1 + bytes.length);
  new DataView(out.buffer).setUint16(0, afUnix, true);
  out.set(bytes, 3);
  return out;
}

let backgroundCopy = false;

/** True in the background copy (its stderr goes away with the parent: logging.ts adds syslog then, as passt does). */
export function isBackgroundCopy(): boolean {
  return backgroundCopy;
}

/** True when a notification datagram says READY=1 (sd_notify's newline-separated assignments). */
export function saysReady(message: string): boolean {
  return message.split('\n').some((line) => line.trim() === 'READY=1');
}

/** The few socket calls the background side needs (the addon's). */
export interface DatagramSocketApi {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, sockaddr: Uint8Array): void;
  read(fd: number, buf: Uint8Array, offset: number, length: number): number;
  close(fd: number): void;
  constants: Record<string, number>;
}

/**
 * In the background process: make $NOTIFY_SOCKET a socket of our own and
 * tell the parent through the readiness pipe when the mode says READY=1.
 * Our stdio goes away with the parent: write errors on it are ignored.
 * Returns false when this process is not a background one.
 */
export function reportReadinessToParent(api: DatagramSocketApi, env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env[READY_FD_ENV];
  if (value === undefined) return false;
  delete env[READY_FD_ENV];
  const readyFd = Number(value);
  if (!Number.isInteger(readyFd) || readyFd < 3) return false;
  backgroundCopy = true;
  process.stdout.on('error', () => undefined);
  process.stderr.on('error', () => undefined);
  const name = `ferry-ready-${process.pid}-${randomBytes(8).toString('hex')}`;
  const fd = api.socket(api.constants.AF_UNIX, api.constants.SOCK_DGRAM, 0);
  api.bind(fd, abstractUnixAddress(name, api.constants.AF_UNIX));
  env.NOTIFY_SOCKET = `@${name}`;
  const buffer = new Uint8Array(4096);
  let told = false;
  const tell = (): void => {
    told = true;
    try {
      fs.writeSync(readyFd, READY_BYTE);
    } catch {
      // the parent gave up: nothing to tell
    }
    try {
      fs.closeSync(readyFd);
    } catch {
      // already closed
    }
  };
  let timer: NodeJS.Timeout;
  const poll = (): void => {
    // Bounded: at most 64 queued notifications per look.
    for (let i = 0; i < 64; i++) {
      const n = api.read(fd, buffer, 0, buffer.length);
      if (n < 0) break;
      if (!told && saysReady(Buffer.from(buffer.buffer, buffer.byteOffset, n).toString('utf8'))) {
        tell();
        // Later STATUS= messages are only drained, so their sender never sees a full queue.
        clearInterval(timer);
        timer = setInterval(poll, DRAIN_MS);
        timer.unref();
      }
    }
  };
  timer = setInterval(poll, POLL_MS);
  timer.unref();
  return true;
}
