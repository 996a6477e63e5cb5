/**
 * ferryctl: the command line client of ferry's control API.
 *
 *   ferryctl [--control PATH | --name NAME] [--json] [--timeout SECONDS] COMMAND
 *
 * Commands: flows [tcp|udp|icmp], stats, forward add|remove tcp|udp SPEC,
 * forward list, close FLOW_ID, log-level error|warn|info|debug.
 *
 * The socket is --control PATH, else $FERRY_CONTROL, else the default for
 * instance --name (default "ferry"): /run/ferry/NAME/control.sock as root
 * (as ferry@.service sets up), $XDG_RUNTIME_DIR/ferry/NAME/control.sock
 * otherwise.
 * Output is aligned tables, or JSON with --json. Failures are one line on
 * stderr starting "ferryctl: "; exit status 0 on success, 1 when the
 * request failed or ferry could not be reached, 2 for a usage error.
 */

import * as net from 'net';
import {
  CONTROL_LOG_LEVELS,
  type ControlCommand,
  type ControlLogLevel,
  type ControlResponse,
  decodeResponse,
  defaultControlPath,
  encodeRequest,
  type FlowProtocol,
  type ForwardProtocol,
  frame,
  FrameReader,
  MAX_RESPONSE_BYTES,
} from './control-protocol';
import { formatFlows, formatForwards, formatJson, formatStats } from './ferryctl-format';

/** Exit statuses. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

const DEFAULT_TIMEOUT_SECONDS = 10;

/** A usage mistake; the message is one line. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Failing to reach ferry or to get an answer; the message is the whole line after "ferryctl: ". */
export class ConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionError';
  }
}

/** A parsed ferryctl command line. */
export interface FerryctlInvocation {
  action: 'run' | 'help';
  controlPath: string;
  json: boolean;
  timeoutMs: number;
  command: ControlCommand | null;
}

export const USAGE = `Usage: ferryctl [OPTION]... COMMAND
Talk to a running ferry through its control socket (ferry --control PATH).

Commands:
  flows [tcp|udp|icmp]           list flows of every kind with byte counts and ages
  stats                          show every counter and gauge
  forward list                   list port forwards
  forward add tcp|udp SPEC       forward host ports to the guest (-t/-u syntax, e.g. 8080:80)
  forward remove tcp|udp SPEC    stop forwarding host ports (e.g. 8080, 5000-5010)
  close FLOW_ID                  close a flow
  log-level LEVEL                set ferry's log level (error, warn, info, debug)

Options:
  --control PATH      control socket (default: $FERRY_CONTROL, else per --name:
                      /run/ferry/NAME/control.sock as root,
                      $XDG_RUNTIME_DIR/ferry/NAME/control.sock otherwise)
  --name NAME         instance name for the default socket path (default: ferry)
  --json              print JSON for scripts instead of tables
  --timeout SECONDS   give up waiting for an answer after SECONDS (default ${DEFAULT_TIMEOUT_SECONDS})
  -h, --help          show this help
`;

function forwardProtocol(word: string | undefined): ForwardProtocol {
  if (word === 'tcp' || word === 'udp') return word;
  throw new UsageError(word === undefined ? 'forward: missing protocol (tcp or udp)' : `forward: '${word}' is not tcp or udp`);
}

/** The words after the options as a control command. */
function parseCommand(words: readonly string[]): ControlCommand {
  const [verb, ...rest] = words;
  const noMore = (expected: number): void => {
    if (rest.length > expected) throw new UsageError(`${verb}: unexpected argument '${rest[expected]}'`);
  };
  switch (verb) {
    case undefined:
      throw new UsageError('missing command (try --help)');
    case 'flows': {
      noMore(1);
      const filter = rest[0];
      if (filter !== undefined && filter !== 'tcp' && filter !== 'udp' && filter !== 'icmp') throw new UsageError(`flows: '${filter}' is not tcp, udp or icmp`);
      return { kind: 'listFlows', protocol: (filter as FlowProtocol | undefined) ?? null };
    }
    case 'stats':
      noMore(0);
      return { kind: 'getStats' };
    case 'forwards':
      noMore(0);
      return { kind: 'listForwards' };
    case 'forward': {
      const [sub, protocolWord, spec, extra] = rest;
      if (sub === 'list' || sub === 'ls') {
        if (protocolWord !== undefined) throw new UsageError(`forward list: unexpected argument '${protocolWord}'`);
        return { kind: 'listForwards' };
      }
      if (sub !== 'add' && sub !== 'remove' && sub !== 'rm') throw new UsageError(sub === undefined ? 'forward: missing add, remove or list' : `forward: unknown subcommand '${sub}'`);
      const protocol = forwardProtocol(protocolWord);
      if (spec === undefined || spec === '') throw new UsageError(`forward ${sub}: missing port specification (e.g. 8080:80)`);
      if (extra !== undefined) throw new UsageError(`forward ${sub}: unexpected argument '${extra}'`);
      return { kind: sub === 'add' ? 'addForward' : 'removeForward', protocol, spec };
    }
    case 'close': {
      noMore(1);
      const idText = rest[0];
      if (idText === undefined) throw new UsageError('close: missing flow id (see ferryctl flows)');
      const id = /^[0-9]{1,15}$/.test(idText) ? Number(idText) : NaN;
      if (Number.isNaN(id)) throw new UsageError(`close: '${idText}' is not a flow id`);
      return { kind: 'closeFlow', id };
    }
    case 'log-level': {
      noMore(1);
      const level = rest[0];
      if (level === undefined) throw new UsageError(`log-level: missing level (${CONTROL_LOG_LEVELS.join(', ')})`);
      if (!(CONTROL_LOG_LEVELS as readonly string[]).includes(level)) throw new UsageError(`log-level: '${level}' is not one of ${CONTROL_LOG_LEVELS.join(', ')}`);
      return { kind: 'setLogLevel', level: level as ControlLogLevel };
    }
    default:
      throw new UsageError(`unknown command '${verb}' (try --help)`);
  }
}

/**
 * Parse ferryctl's arguments: options (anywhere before the command, `--opt
 * VALUE` or `--opt=VALUE`), then the command words. Throws UsageError.
 */
export function parseFerryctlArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): FerryctlInvocation {
  let controlPath: string | null = null;
  let name: string | null = null;
  let json = false;
  let timeoutMs = DEFAULT_TIMEOUT_SECONDS * 1000;
  const words: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (words.length > 0 || !arg.startsWith('-') || arg === '-') {
      words.push(arg);
      continue;
    }
    if (arg === '--') {
      words.push(...argv.slice(i + 1));
      break;
    }
    const equals = arg.indexOf('=');
    const option = equals === -1 ? arg : arg.slice(0, equals);
    const takeValue = (): string => {
      if (equals !== -1) return arg.slice(equals + 1);
      const value = argv[++i];
      if (value === undefined) throw new UsageError(`${option}: missing value`);
      return value;
    };
    switch (option) {
      case '-h':
      case '--help':
        return { action: 'help', controlPath: '', json, timeoutMs, command: null };
      case '--json':
        json = true;
        break;
      case '--control':
        controlPath = takeValue();
        if (controlPath === '') throw new UsageError('--control: empty path');
        break;
      case '--name':
        name = takeValue();
        if (!/^[A-Za-z0-9_.@:-]{1,100}$/.test(name)) throw new UsageError(`--name: '${name}' is not an instance name`);
        break;
      case '--timeout': {
        const text = takeValue();
        const seconds = /^[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : NaN;
        if (!(seconds > 0 && seconds <= 3600)) throw new UsageError(`--timeout: '${text}' is not a number of seconds (0-3600)`);
        timeoutMs = Math.round(seconds * 1000);
        break;
      }
      default:
        throw new UsageError(`unknown option '${option}' (try --help)`);
    }
  }
  const command = parseCommand(words);
  const fromEnv = env.FERRY_CONTROL !== undefined && env.FERRY_CONTROL !== '' ? env.FERRY_CONTROL : null;
  const path = controlPath ?? (name === null ? fromEnv : null) ?? defaultControlPath(name ?? 'ferry', env);
  return { action: 'run', controlPath: path, json, timeoutMs, command };
}

/** The one-line explanation of a connect() failure on `path`. */
export function describeConnectError(path: string, error: NodeJS.ErrnoException): string {
  switch (error.code) {
    case 'ENOENT':
      return `no ferry control socket at ${path} (is ferry running with --control ${path}?)`;
    case 'ECONNREFUSED':
      return `connection refused on ${path} (ferry is not running; the socket file is stale)`;
    case 'EACCES':
    case 'EPERM':
      return `permission denied on ${path} (the control socket is owner-only: run ferryctl as the user running ferry)`;
    case 'ENOTSOCK':
      return `${path} is not a socket`;
    default:
      return `cannot connect to ${path}: ${error.message}`;
  }
}

/**
 * Send one command to the control socket at `path` and resolve with the
 * response (whatever its status). Rejects with a ConnectionError when
 * ferry cannot be reached, closes without answering, answers garbage, or
 * takes longer than `timeoutMs`.
 */
export function requestControl(path: string, command: ControlCommand, timeoutMs = DEFAULT_TIMEOUT_SECONDS * 1000): Promise<ControlResponse> {
  const id = 1 + Math.floor(Math.random() * 0x7fffffff);
  const request = frame(encodeRequest({ id, command }));
  return new Promise<ControlResponse>((resolve, reject) => {
    const reader = new FrameReader(MAX_RESPONSE_BYTES);
    let connected = false;
    let settled = false;
    const socket = net.createConnection(path);
    const finish = (error: Error | null, response?: ControlResponse): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error !== null) reject(error);
      else resolve(response as ControlResponse);
    };
    const timer = setTimeout(() => finish(new ConnectionError(`no answer from ferry on ${path} within ${timeoutMs / 1000} s`)), timeoutMs);
    socket.once('connect', () => {
      connected = true;
      socket.write(request);
    });
    socket.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      const next = reader.next();
      if (next.kind === 'incomplete') return;
      if (next.kind === 'oversized') {
        finish(new ConnectionError(`ferry's answer of ${next.length} bytes exceeds the ${MAX_RESPONSE_BYTES}-byte limit`));
        return;
      }
      try {
        const response = decodeResponse(next.body);
        if (response.id !== id && response.id !== 0) finish(new ConnectionError(`ferry answered request ${response.id}, not ${id}`));
        else finish(null, response);
      } catch (error) {
        finish(new ConnectionError(`undecodable answer from ferry: ${error instanceof Error ? error.message : String(error)}`));
      }
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      finish(new ConnectionError(connected ? `connection to ${path} failed: ${error.message}` : describeConnectError(path, error)));
    });
    socket.on('close', () => finish(new ConnectionError(`ferry closed the connection on ${path} without answering (are you the user running ferry?)`)));
  });
}

/** Where ferryctl writes; tests capture it. */
export interface FerryctlIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
}

/** The human-readable output of a successful response. */
function formatResponse(command: ControlCommand, response: ControlResponse): string {
  const payload = response.payload;
  if (command.kind === 'addForward' || command.kind === 'removeForward') {
    return `${response.message}\n${payload?.kind === 'forwards' ? formatForwards(payload.forwards) : ''}`;
  }
  if (payload === null) return response.message === '' ? '' : `${response.message}\n`;
  switch (payload.kind) {
    case 'flows':
      return formatFlows(payload.flows);
    case 'stats':
      return formatStats(payload.stats);
    case 'forwards':
      return formatForwards(payload.forwards);
  }
}

/** The JSON document for a response: status, message and the payload under its own name. */
function jsonResponse(response: ControlResponse): Record<string, unknown> {
  const document: Record<string, unknown> = { status: response.status, message: response.message };
  const payload = response.payload;
  if (payload !== null) {
    if (payload.kind === 'flows') document.flows = payload.flows;
    else if (payload.kind === 'stats') document.stats = payload.stats;
    else document.forwards = payload.forwards;
  }
  return document;
}

/** Status words as people read them: NOT_FOUND -> "not found". */
function statusWords(status: string): string {
  return status.toLowerCase().replace(/_/g, ' ');
}

/** Run ferryctl with `argv` (without node and script); resolves with the exit status. */
export async function runFerryctl(argv: readonly string[], io: FerryctlIo): Promise<number> {
  let invocation: FerryctlInvocation;
  try {
    invocation = parseFerryctlArgs(argv, io.env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.stderr(`ferryctl: ${error.message}\n`);
    return EXIT_USAGE;
  }
  if (invocation.action === 'help' || invocation.command === null) {
    io.stdout(USAGE);
    return EXIT_OK;
  }
  let response: ControlResponse;
  try {
    response = await requestControl(invocation.controlPath, invocation.command, invocation.timeoutMs);
  } catch (error) {
    io.stderr(`ferryctl: ${error instanceof Error ? error.message : String(error)}\n`);
    return EXIT_FAILED;
  }
  if (invocation.json) io.stdout(formatJson(jsonResponse(response)));
  if (response.status !== 'OK') {
    io.stderr(`ferryctl: ${statusWords(response.status)}: ${response.message}\n`);
    return EXIT_FAILED;
  }
  if (!invocation.json) io.stdout(formatResponse(invocation.command, response));
  return EXIT_OK;
}

/** bin/ferryctl.js entry point: runs and sets process.exitCode (output is flushed before exit). */
export function main(argv: readonly string[]): void {
  const io: FerryctlIo = {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    env: process.env,
  };
  runFerryctl(argv, io).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`ferryctl: internal error: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = EXIT_FAILED;
    },
  );
}
