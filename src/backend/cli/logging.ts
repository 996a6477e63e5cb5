/**
 * The main thread's logger: four levels (error, warn, info, debug), one
 * line per event, the instance name in every line. Installed as
 * the sink of src/log.ts, so every layer's `log.*` and `rateLimited` calls
 * end up here; worker threads post their lines to the main thread, which
 * passes them to `logFromWorker`.
 *
 * Output: stderr by default, or a file with -l/--log-file, both written
 * directly, one write per line. The file is opened at startup, before
 * ferry confines itself, and bounded by --log-size in place (its older half
 * dropped: at most twice that on disk, one file, no rename), so it keeps
 * working as another user in an empty root. On stderr, colours only on a
 * TTY, and when stderr is the journal
 * (systemd sets JOURNAL_STREAM to its device:inode) each line starts with a
 * `<N>` syslog priority so journald records the right level.
 *
 * In the background copy (passt/pasta once ready, background.ts) and
 * without --log-file, lines also go to syslog, as passt's do once it has
 * forked: RFC 3164 datagrams to /dev/log (FERRY_SYSLOG_SOCKET names
 * another socket, for a chroot or a test's receiver). A missing or full
 * syslog loses lines, counted, never blocking or failing the daemon.
 */

import { closeSync, fstatSync, ftruncateSync, openSync, readSync, writeSync } from 'fs';
import { type Writable } from 'stream';
import { isBackgroundCopy } from './background';
import { type LogLevel, setLogSink } from '../../sys/log';
import { type LoggingOptions } from './options';

/** Levels, most severe first (an ordering, not syslog's numbers). */
const LEVELS: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** syslog priorities (sd-daemon(3) prefixes) for each level. */
const SYSLOG_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

const COLOURS: Record<LogLevel, string> = { error: '\x1b[31m', warn: '\x1b[33m', info: '\x1b[32m', debug: '\x1b[90m' };
const RESET = '\x1b[0m';

/** How lines are decorated; decided once from where they go. */
export interface LineStyle {
  /** Instance name at the start of every line. */
  name: string;
  /** ANSI colour on the level word (TTY only). */
  colour: boolean;
  /** `<N>` syslog priority prefix (stderr connected to journald). */
  journal: boolean;
  /** ISO timestamp (files; journald and terminals have their own). */
  timestamp: boolean;
}

/** True for a string that is one of our four levels. */
export function isLogLevel(level: unknown): level is LogLevel {
  return level === 'error' || level === 'warn' || level === 'info' || level === 'debug';
}

/**
 * Make a message safe for a one-line log: newlines and other control
 * characters (which could also forge log lines or terminal escapes from
 * guest-controlled text) become visible escapes.
 */
export function oneLine(message: string): string {
  // eslint-disable-next-line no-control-regex -- matching control characters is the point: they are escaped
  return message.replace(/[\x00-\x1f\x7f]/g, (c) => (c === '\n' ? '\\n' : c === '\t' ? '\\t' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** The text of one log line (without the trailing newline). */
export function formatLine(style: LineStyle, level: LogLevel, message: string, time: Date = new Date()): string {
  const prefix = style.journal ? `<${SYSLOG_PRIORITY[level]}>` : '';
  const stamp = style.timestamp ? `${time.toISOString()} ` : '';
  const levelText = style.colour ? `${COLOURS[level]}${level}${RESET}` : level;
  return `${prefix}${stamp}${style.name}: ${levelText}: ${oneLine(message)}`;
}

/**
 * True when file descriptor `fd` is the journal stream systemd announced in
 * JOURNAL_STREAM ("device:inode"), i.e. our lines go straight to journald.
 */
export function isJournalStream(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const announced = env.JOURNAL_STREAM;
  if (announced === undefined) return false;
  const match = /^([0-9]+):([0-9]+)$/.exec(announced);
  if (match === null) return false;
  try {
    const stat = fstatSync(fd, { bigint: true });
    return stat.dev === BigInt(match[1]) && stat.ino === BigInt(match[2]);
  } catch {
    return false;
  }
}


/** Environment variable naming the syslog socket instead of /dev/log. */
export const SYSLOG_SOCKET_ENV = 'FERRY_SYSLOG_SOCKET';
export const DEFAULT_SYSLOG_SOCKET = '/dev/log';
/** syslog facility LOG_DAEMON (3 << 3), as passt's messages carry. */
const LOG_DAEMON = 3 << 3;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** One syslog datagram's text as glibc's syslog(3) sends it to /dev/log: `<PRI>Mmm dd hh:mm:ss ident[pid]: message`. */
export function syslogLine(ident: string, pid: number, level: LogLevel, message: string, time: Date = new Date()): string {
  const two = (n: number): string => String(n).padStart(2, '0');
  const stamp = `${MONTHS[time.getMonth()]} ${String(time.getDate()).padStart(2, ' ')} ${two(time.getHours())}:${two(time.getMinutes())}:${two(time.getSeconds())}`;
  return `<${LOG_DAEMON + SYSLOG_PRIORITY[level]}>${stamp} ${ident}[${pid}]: ${oneLine(message)}`;
}

/** Sends one datagram to a UNIX socket path; throws when it cannot (the addon's unixSendDatagram). */
export type DatagramSender = (path: string, bytes: Uint8Array) => void;

/** Largest line sent: syslog daemons take at least 1024 bytes, rsyslog and journald 8 KiB by default. */
const SYSLOG_MAX_BYTES = 8192;

/** Lines to a syslog socket, at or above a level; a line that cannot be sent is counted and dropped. */
export class SyslogTransport {
  /** Lines syslog did not take (no socket, not listening, queue full). */
  lost = 0;

  constructor(
    private readonly path: string,
    private readonly ident: string,
    private readonly send: DatagramSender,
    public level: LogLevel,
  ) {}

  log(info: { level: string; message: unknown }, next: () => void): void {
    const level = isLogLevel(info.level) ? info.level : 'info';
    if (LEVELS[level] > LEVELS[this.level]) return next();
    const bytes = Buffer.from(syslogLine(this.ident, process.pid, level, String(info.message)), 'utf8');
    try {
      this.send(this.path, bytes.length > SYSLOG_MAX_BYTES ? bytes.subarray(0, SYSLOG_MAX_BYTES) : bytes);
    } catch {
      this.lost++;
    }
    next();
  }
}

/**
 * The addon's datagram sender, loaded only when syslog is used. It connects
 * to the syslog socket now, while logging is set up: ferry confines itself
 * into an empty root later, where the path no longer resolves. Without a
 * listener yet, lines are sent by path (as long as the path resolves).
 */
function addonSender(path: string): DatagramSender {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on demand: foreground runs and tests of the formatting need no addon
  const { native } = require('../../sys/native') as typeof import('../../sys/native');
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- with the addon, for the same reason
  const { connectUnixDatagram } = require('../../sys/unix-socket') as typeof import('../../sys/unix-socket');
  let fd: number;
  try {
    fd = connectUnixDatagram(path);
  } catch {
    return (to, bytes) => native.unixSendDatagram(to, bytes);
  }
  return (_to, bytes) => {
    if (native.write(fd, bytes, 0, bytes.length) < 0) throw new Error('syslog socket full (EAGAIN)');
  };
}

/** Where the logger writes; tests inject a stream. */
export interface LogDestination {
  /** Stream for non-file logging (default process.stderr). */
  stream?: Writable;
  /** Whether that stream is a terminal (default: process.stderr.isTTY). */
  isTty?: boolean;
  /** Whether that stream is the journal (default: isJournalStream()). */
  journal?: boolean;
  /** Also log to syslog (default: in the background copy without --log-file). */
  syslog?: boolean;
  /** The syslog socket (default: $FERRY_SYSLOG_SOCKET or /dev/log) and how datagrams are sent (default: the addon). */
  syslogPath?: string;
  syslogSend?: DatagramSender;
}

export interface Logging {
  /** Write one line at `level` (dropped when below the current level). */
  write(level: LogLevel, message: string): void;
  /** Change the level at run time (control API). */
  setLevel(level: LogLevel): void;
  /** Flush and close the destination (a stream given or stderr stays open). */
  close(): Promise<void>;
}

let current: Logging | null = null;
let currentName = 'ferry';

/** Lines written straight to a stream: one write per line, nothing queued here. */
function streamLogging(stream: Writable, style: LineStyle, initialLevel: LogLevel): Logging {
  let threshold = LEVELS[initialLevel];
  return {
    write: (level, message) => {
      if (LEVELS[level] <= threshold) stream.write(`${formatLine(style, level, message)}\n`);
    },
    setLevel: (level) => {
      threshold = LEVELS[level];
    },
    close: () =>
      new Promise<void>((resolve) => {
        if (!stream.writableNeedDrain) resolve();
        else stream.once('drain', () => resolve());
      }),
  };
}

/** The newest part of an over-long log file that is kept: half of --log-size, from a line start. */
export function keptTail(text: Buffer, limit: number): Buffer {
  const start = Math.max(0, text.length - Math.floor(limit / 2));
  const newline = text.indexOf(0x0a, start > 0 ? start - 1 : 0);
  return start === 0 || newline < 0 ? text.subarray(start) : text.subarray(newline + 1);
}

/**
 * Lines appended to --log-file through an fd opened now, before ferry
 * confines itself (as passt does): from then on the file's directory may be
 * out of reach and ferry another user. When a line would take the file past
 * --log-size, its older half is dropped in place (read, truncate, write
 * back), so the file stays one file under twice that size and no path is
 * needed. One synchronous write per line: nothing is queued.
 */
function fileLogging(options: LoggingOptions): Logging {
  const style: LineStyle = { name: options.name, colour: false, journal: false, timestamp: true };
  const fd = openSync(options.file ?? '', 'a+', 0o644);
  let size = fstatSync(fd).size;
  let threshold = LEVELS[options.level];
  const limit = options.fileSize;
  const shrink = (): void => {
    const text = Buffer.alloc(size);
    const read = readSync(fd, text, 0, size, 0);
    const tail = keptTail(text.subarray(0, read), limit);
    ftruncateSync(fd, 0);
    writeSync(fd, tail);
    size = tail.length;
  };
  return {
    write: (level, message) => {
      if (LEVELS[level] > threshold) return;
      const line = Buffer.from(`${formatLine(style, level, message)}\n`, 'utf8');
      try {
        if (limit > 0 && size + line.length > limit) shrink();
        writeSync(fd, line);
        size += line.length;
      } catch {
        // A full disk or a vanished file must not stop the daemon; the line is lost.
      }
    },
    setLevel: (level) => {
      threshold = LEVELS[level];
    },
    close: () => {
      try {
        closeSync(fd);
      } catch {
        // closed already
      }
      return Promise.resolve();
    },
  };
}

/** Every line also to syslog (the background copy without a log file, as passt). */
function withSyslog(inner: Logging, syslog: SyslogTransport): Logging {
  const done = (): void => undefined;
  return {
    write: (level, message) => {
      inner.write(level, message);
      syslog.log({ level, message }, done);
    },
    setLevel: (level) => {
      inner.setLevel(level);
      syslog.level = level;
    },
    close: () => inner.close(),
  };
}

/**
 * Create the process logger from the options, install it as src/log.ts's
 * sink and return it. Calling it again replaces the previous one.
 */
export function setupLogging(options: LoggingOptions, destination: LogDestination = {}): Logging {
  let logging: Logging;
  if (options.file !== null) logging = fileLogging(options);
  else {
    const stream = destination.stream ?? process.stderr;
    const isTty = destination.isTty ?? (stream === process.stderr && process.stderr.isTTY === true);
    const journal = destination.journal ?? (stream === process.stderr && isJournalStream());
    logging = streamLogging(stream, { name: options.name, colour: isTty && !journal, journal, timestamp: false }, options.level);
    if (destination.syslog ?? isBackgroundCopy()) {
      const path = destination.syslogPath ?? (process.env[SYSLOG_SOCKET_ENV] || DEFAULT_SYSLOG_SOCKET);
      logging = withSyslog(logging, new SyslogTransport(path, options.name, destination.syslogSend ?? addonSender(path), options.level));
    }
  }
  const previous = current;
  current = logging;
  currentName = options.name;
  setLogSink((level, message) => {
    logging.write(level, message);
  });
  if (previous !== null) void previous.close();
  return logging;
}

/**
 * Log a line a worker thread posted to the main thread. The level comes
 * from another thread, so it is checked; the worker id goes in the line.
 */
export function logFromWorker(level: unknown, message: unknown, workerId: number): void {
  const safeLevel: LogLevel = isLogLevel(level) ? level : 'warn';
  const text = `[worker ${workerId}] ${typeof message === 'string' ? message : String(message)}`;
  if (current !== null) current.write(safeLevel, text);
  else process.stderr.write(`${currentName}: ${safeLevel}: ${oneLine(text)}\n`);
}

/** Change the level of the installed logger and its transports at run time (control API). */
export function setLogLevel(level: LogLevel): void {
  current?.setLevel(level);
}

/** Flush and close the installed logger (before exit); later lines go straight to stderr. */
export async function closeLogging(): Promise<void> {
  const closing = current;
  current = null;
  setLogSink((level, message) => {
    if (level !== 'debug') process.stderr.write(`${currentName}: ${level}: ${oneLine(message)}\n`);
  });
  if (closing !== null) await closing.close();
}
