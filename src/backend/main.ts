/**
 * The `ferry` command: parse the command line, answer --help, --version and
 * --print-capabilities, otherwise set up logging and run the daemon until
 * it returns its exit code. A bad option is one line on stderr
 * ("ferry: --mtu: 70000 is out of range (...)") and exit code 1.
 */

import { existsSync, readFileSync } from 'fs';
import { basename, dirname, join } from 'path';
import { log } from '../sys/log';
import { BACKGROUND_SETUP_TIMEOUT_MS, READY_FD_ENV, relaunchCommand, reportReadinessToParent, runInBackground, wantsBackground } from './cli/background';
import { closeLogging, setupLogging } from './cli/logging';
import { type DaemonOptions, OptionError, optionHelp, type ParsedCommandLine, parseOptions, readEphemeralRange } from './cli/options';
import { parsePastaCommandLine, pastaOptionHelp, type PastaOptions } from './cli/pasta-options';

/** The daemon entry point as cli.ts sees it (src/backend/daemon.ts). */
export type RunDaemon = (options: DaemonOptions) => Promise<number>;

/** Front-ends other than vhost-user, run as `ferry stream ...` and `ferry pasta ...` (or as `pasta`). */
export type Subcommand = 'stream' | 'pasta';

/** A subcommand's entry point: src/backend/stream.ts runStream, src/backend/pasta.ts runPasta. */
export type RunSubcommand = (options: DaemonOptions, pasta: PastaOptions | null) => Promise<number>;

/** What `run` talks to; tests replace parts of it. */
export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Loads the daemon lazily, so the CLI builds and answers --help without it. */
  loadDaemon: () => RunDaemon;
  /** Set up logging for a daemon run (default: setupLogging). */
  setupLogging: (options: DaemonOptions) => void;
  /** Loads a subcommand's entry point lazily (default: require its module). */
  loadSubcommand: (name: Subcommand) => RunSubcommand;
  /** The program's name (basename of argv[1]): as `passt` or `pasta`, ferry goes to the background once ready (see cli/background.ts). */
  invokedAs: string;
  /** Start the background copy of this process and wait until it is ready; resolves the exit status for the caller. */
  goBackground: (options: DaemonOptions) => Promise<number>;
  /** In the background copy: arrange for readiness to reach the waiting parent (default: reportReadinessToParent). */
  attachToParent: () => void;
}

/** The vhost-user back-end capabilities (vhost-user.rst, "Backend program conventions"): a net device. */
export const CAPABILITIES = { type: 'net' } as const;

/** ferry's version from the package.json above this file (works from src/ and dist/src/). */
export function packageVersion(start: string = __dirname): string {
  let directory = start;
  for (let depth = 0; depth < 6; depth++) {
    const candidate = join(directory, 'package.json');
    if (existsSync(candidate)) {
      try {
        const manifest = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: unknown; version?: unknown };
        if (manifest.name === 'ferry' && typeof manifest.version === 'string') return manifest.version;
      } catch {
        // not ours or unreadable: keep looking upwards
      }
    }
    const parent = dirname(directory);
    if (parent === directory) break;
    directory = parent;
  }
  return 'unknown';
}

/** Option help lines aligned in two columns. */
function formatHelp(lines: Array<[string, string]>): string[] {
  const width = Math.min(40, Math.max(...lines.map(([names]) => names.length)));
  return lines.map(([names, help]) => (names.length > width ? `  ${names}\n  ${' '.repeat(width)}  ${help}` : `  ${names.padEnd(width)}  ${help}`));
}

/** The --help text of a subcommand. */
export function subcommandUsageText(name: Subcommand): string {
  if (name === 'stream') {
    return [
      'Usage: ferry stream [OPTION]...',
      'ferry\'s stack behind a UNIX stream socket with 4-byte length-prefixed frames (QEMU -netdev stream/socket, passt without --vhost-user).',
      '',
      ...formatHelp(optionHelp()),
      '',
      'Example: ferry stream --socket /tmp/vm1.sock  (QEMU: -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/vm1.sock)',
      '',
    ].join('\n');
  }
  return [
    'Usage: ferry pasta [OPTION]... [[--] COMMAND [ARG]...]',
    '       ferry pasta [OPTION]... PID | --netns PATH|NAME',
    'Run COMMAND (default: $SHELL) in a new user and network namespace whose tap device is served by ferry\'s stack.',
    '',
    ...formatHelp([...pastaOptionHelp(), ...optionHelp()]),
    '',
    'Example: ferry pasta --config-net -- curl http://example.org/',
    '',
  ].join('\n');
}

/** The --help text: synopsis plus every option, aligned. */
export function usageText(): string {
  const body = formatHelp(optionHelp());
  return [
    'Usage: ferry [OPTION]...',
    'Rootless userspace network back-end for VMs: vhost-user virtio-net in, host sockets out.',
    'Option names and meanings follow passt(1) where passt has the same option.',
    '',
    ...body,
    '',
    'Example: ferry --socket /run/user/1000/vm1.sock -t 2222:22 -u 53 --metrics unix:/run/user/1000/vm1.metrics',
    '',
  ].join('\n');
}

function defaultLoadDaemon(): RunDaemon {
  // Required lazily: daemon.ts pulls in the addon and workers, which --help does not need.
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on demand: --help and option errors need no addon or workers
  const daemon = require('./modes/vhost-user/daemon') as { runDaemon?: unknown };
  if (typeof daemon.runDaemon !== 'function') throw new Error('daemon module has no runDaemon');
  return daemon.runDaemon as RunDaemon;
}

function defaultLoadSubcommand(name: Subcommand): RunSubcommand {
  if (name === 'stream') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on demand: --help and option errors need no addon or workers
    const stream = require('./modes/stream/stream') as typeof import('./modes/stream/stream');
    return (options) => stream.runStream(options);
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on demand: --help and option errors need no addon or workers
  const pasta = require('./modes/pasta/pasta') as typeof import('./modes/pasta/pasta');
  return (options, extra) => pasta.runPasta(options, extra as PastaOptions);
}

const defaultIo: CliIo = {
  loadSubcommand: defaultLoadSubcommand,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  loadDaemon: defaultLoadDaemon,
  setupLogging: (options) => {
    setupLogging(options.logging);
  },
  invokedAs: '',
  goBackground: (options) => {
    const { command, args } = relaunchCommand(process.argv.slice(2));
    return runInBackground({
      command,
      args,
      passFds: options.fd !== null ? [options.fd] : [],
      env: process.env,
      stderr: (text) => process.stderr.write(text),
      timeoutMs: BACKGROUND_SETUP_TIMEOUT_MS,
    });
  },
  attachToParent: () => {
    if (process.env[READY_FD_ENV] === undefined) return;
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on demand: --help and option errors need no addon
    const { native } = require('../sys/native') as typeof import('../sys/native');
    reportReadinessToParent(native);
  },
};

/** One line for an unexpected error: its message, never a stack (those go to the debug log). */
function describe(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split('\n')[0];
}

/**
 * Run the command line and return the process exit code (0 success, 1
 * bad usage or failure, or whatever the daemon returns). Does not exit.
 */
export async function run(argv: readonly string[], io: Partial<CliIo> = {}): Promise<number> {
  const { stdout, stderr, loadDaemon, loadSubcommand, setupLogging: startLogging, invokedAs, goBackground, attachToParent } = { ...defaultIo, ...io };
  const subcommand: Subcommand | null = argv[0] === 'stream' || argv[0] === 'pasta' ? argv[0] : null;
  let parsed: ParsedCommandLine;
  let pasta: PastaOptions | null = null;
  try {
    if (subcommand === 'pasta') ({ parsed, pasta } = parsePastaCommandLine(argv.slice(1), { ephemeral: readEphemeralRange() }));
    else parsed = parseOptions(subcommand === null ? argv : argv.slice(1), { ephemeral: readEphemeralRange() });
  } catch (error) {
    if (error instanceof OptionError) {
      stderr(`ferry: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
  switch (parsed.action) {
    case 'help':
      stdout(subcommand === null ? usageText() : subcommandUsageText(subcommand));
      return 0;
    case 'version':
      stdout(`ferry ${packageVersion()}\n`);
      return 0;
    case 'print-capabilities':
      stdout(JSON.stringify(CAPABILITIES, null, 2) + '\n');
      return 0;
    case 'run':
      break;
  }
  // pasta running a command (in a namespace of its own, or joined with one) keeps it on the caller's terminal.
  const spawnsCommand = subcommand === 'pasta' && pasta !== null && (pasta.netns === null || pasta.command.length > 0);
  if (wantsBackground({ invokedAs, foreground: parsed.options.foreground, spawnsCommand, env: process.env })) return goBackground(parsed.options);
  try {
    attachToParent();
  } catch (error) {
    stderr(`ferry: cannot report readiness to the parent: ${describe(error)}\n`);
    return 1;
  }
  let runDaemon: RunDaemon;
  try {
    if (subcommand === null) runDaemon = loadDaemon();
    else {
      const runSubcommand = loadSubcommand(subcommand);
      runDaemon = (options) => runSubcommand(options, pasta);
    }
  } catch (error) {
    stderr(`ferry: cannot load the daemon: ${describe(error)}\n`);
    return 1;
  }
  try {
    startLogging(parsed.options);
  } catch (error) {
    stderr(`ferry: cannot set up logging: ${describe(error)}\n`);
    return 1;
  }
  for (const note of parsed.notes) log.warn(note);
  try {
    const code = await runDaemon(parsed.options);
    return Number.isInteger(code) && code >= 0 && code <= 255 ? code : 1;
  } catch (error) {
    log.error(`fatal: ${describe(error)}`);
    if (error instanceof Error && error.stack !== undefined) log.debug(error.stack);
    return 1;
  }
}

/**
 * The arguments `run` gets for a program name: installed as `pasta`, ferry
 * behaves as `ferry pasta`; installed as `passt`, it speaks passt's classic
 * stream protocol (`ferry stream`) unless --vhost-user (or the vhost-user
 * probe --print-capabilities) asks for vhost-user, as passt does.
 */
export function argumentsForProgram(invokedAs: string, argv: readonly string[]): string[] {
  if (invokedAs === 'pasta') return ['pasta', ...argv];
  if (invokedAs === 'passt' && !argv.includes('--vhost-user') && !argv.includes('--print-capabilities')) return ['stream', ...argv];
  return [...argv];
}

/** bin/ferry.js entry point: run, flush the log, exit with the code. */
export function main(argv: readonly string[]): void {
  const invokedAs = basename(process.argv[1] ?? '');
  run(argumentsForProgram(invokedAs, argv), { invokedAs }).then(
    async (code) => {
      // Bounded: a stuck log destination must not keep the process alive.
      await Promise.race([closeLogging().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
      process.exit(code);
    },
    (error: unknown) => {
      process.stderr.write(`ferry: ${describe(error)}\n`);
      process.exit(1);
    },
  );
}
