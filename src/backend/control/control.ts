/**
 * The control API server: a UNIX stream socket (--control PATH) created
 * with mode 0600 and served only to the user ferry runs as (and root),
 * speaking the length-framed protobuf messages of control-protocol.ts.
 * Every request gets exactly one response, in order; malformed input gets
 * a BAD_REQUEST response (and, for framing errors, the connection is then
 * closed), never an exception. The daemon supplies what the commands do
 * through a ControlHandler.
 */

import * as fs from 'fs';
import * as net from 'net';
import { dirname } from 'path';
import type { Registry } from 'prom-client';
import { log, rateLimited } from '../../sys/log';
import { native } from '../../sys/native';
import { type ForwardSpec, ForwardSpecError, parseForwardSpec } from '../../stack/flow/forward-spec';
import {
  type ControlCommand,
  type ControlLogLevel,
  type ControlPayload,
  ControlRequestError,
  type ControlResponse,
  type ControlStatus,
  decodeRequest,
  defaultControlPath,
  encodeResponse,
  type FlowInfo,
  type FlowProtocol,
  type ForwardInfo,
  type ForwardProtocol,
  FRAME_HEADER_BYTES,
  frame,
  FrameReader,
  MAX_REQUEST_BYTES,
  MAX_RESPONSE_BYTES,
  type StatSample,
} from './control-protocol';
import { readEphemeralRange } from '../cli/options';

export { defaultControlPath };

/**
 * What the daemon does for each command. Every method may be async; throw a
 * ControlError to answer with a specific status (e.g. NOT_FOUND), any other
 * exception becomes INTERNAL with its message.
 */
export interface ControlHandler {
  /** Flows of every worker, optionally only one protocol. */
  listFlows(protocol: FlowProtocol | null): Promise<FlowInfo[]>;
  /** Every counter/gauge sample (see statsFromRegistry). */
  stats(): Promise<StatSample[]>;
  /** Start forwarding `spec` (already parsed and checked, never 'none'/'auto'); CONFLICT when a port is taken. */
  addForward(protocol: ForwardProtocol, spec: ForwardSpec): Promise<void>;
  /** Stop forwarding the host ports of `spec` (guest ports ignored); NOT_FOUND when none was forwarded. */
  removeForward(protocol: ForwardProtocol, spec: ForwardSpec): Promise<void>;
  /** The forwarding rules in force (-t/-u and runtime ones). */
  listForwards(): Promise<ForwardInfo[]>;
  /** Close one flow by id; NOT_FOUND when there is none. */
  closeFlow(id: number): Promise<void>;
  /** Change the log level of the daemon and its workers. */
  setLogLevel(level: ControlLogLevel): Promise<void>;
}

/** A failure with a specific status, thrown by a ControlHandler. */
export class ControlError extends Error {
  constructor(
    readonly status: Exclude<ControlStatus, 'OK'>,
    message: string,
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

/**
 * A complete ControlHandler from the commands a daemon implements so far:
 * the missing ones answer UNIMPLEMENTED ("this ferry cannot <command> yet").
 */
export function partialControlHandler(parts: Partial<ControlHandler>): ControlHandler {
  const missing = (what: string) => async (): Promise<never> => {
    throw new ControlError('UNIMPLEMENTED', `this ferry cannot ${what} yet`);
  };
  return {
    listFlows: parts.listFlows?.bind(parts) ?? missing('list flows'),
    stats: parts.stats?.bind(parts) ?? missing('report stats'),
    addForward: parts.addForward?.bind(parts) ?? missing('add forwards at run time'),
    removeForward: parts.removeForward?.bind(parts) ?? missing('remove forwards at run time'),
    listForwards: parts.listForwards?.bind(parts) ?? missing('list forwards'),
    closeFlow: parts.closeFlow?.bind(parts) ?? missing('close flows'),
    setLogLevel: parts.setLogLevel?.bind(parts) ?? missing('change the log level'),
  };
}

export interface ControlServerOptions {
  /** Simultaneous client connections (default 16); more are closed at once. */
  maxConnections?: number;
  /** A handler call taking longer is answered INTERNAL "timed out" (default 10 s). */
  handlerTimeoutMs?: number;
  /** Peer uids allowed besides our own and root (default none). */
  extraUids?: readonly number[];
  /**
   * A client whose reply is still not taken by the socket after this long is
   * dropped (default 10 s): it stopped reading. Requests are not read while a
   * reply waits.
   */
  replyDrainTimeoutMs?: number;
  /** Reply bytes one client may have queued (default: one largest response); a reply beyond it drops the client. */
  maxQueuedReplyBytes?: number;
}

/** A running control server. */
export interface ControlServer {
  readonly path: string;
  /** Stop accepting, close every connection and remove the socket file. */
  close(): Promise<void>;
}

/**
 * The samples of a prom-client registry as StatSamples (histogram buckets
 * included, under their own metric names), for ControlHandler.stats().
 */
export async function statsFromRegistry(registry: Registry): Promise<StatSample[]> {
  const samples: StatSample[] = [];
  for (const metric of await registry.getMetricsAsJSON()) {
    for (const value of metric.values) {
      const labels: Record<string, string> = {};
      for (const [name, labelValue] of Object.entries(value.labels)) if (labelValue !== undefined) labels[name] = String(labelValue);
      const named = value as { metricName?: string };
      samples.push({ name: named.metricName ?? metric.name, labels, value: value.value });
    }
  }
  return samples;
}

/** A command's forward spec parsed with -t/-u rules; BAD_REQUEST for a malformed one or 'none'/'auto'. */
function parseCommandSpec(spec: string): ForwardSpec {
  let parsed: ForwardSpec;
  try {
    parsed = parseForwardSpec(spec, { allowBindAddress: true, allowAll: true, allowAuto: false, ephemeral: readEphemeralRange() });
  } catch (error) {
    if (error instanceof ForwardSpecError) throw new ControlError('BAD_REQUEST', error.message);
    throw error;
  }
  if (parsed.mode === 'none') throw new ControlError('BAD_REQUEST', `'${spec}' names no ports`);
  return parsed;
}

/** Run one decoded command against the handler; resolves with the response payload and message. */
async function execute(handler: ControlHandler, command: ControlCommand): Promise<{ payload: ControlPayload | null; message: string }> {
  switch (command.kind) {
    case 'listFlows':
      return { payload: { kind: 'flows', flows: await handler.listFlows(command.protocol) }, message: '' };
    case 'getStats':
      return { payload: { kind: 'stats', stats: await handler.stats() }, message: '' };
    case 'listForwards':
      return { payload: { kind: 'forwards', forwards: await handler.listForwards() }, message: '' };
    case 'addForward': {
      await handler.addForward(command.protocol, parseCommandSpec(command.spec));
      return { payload: { kind: 'forwards', forwards: await handler.listForwards() }, message: `forwarding ${command.protocol} ${command.spec}` };
    }
    case 'removeForward': {
      await handler.removeForward(command.protocol, parseCommandSpec(command.spec));
      return { payload: { kind: 'forwards', forwards: await handler.listForwards() }, message: `no longer forwarding ${command.protocol} ${command.spec}` };
    }
    case 'closeFlow':
      await handler.closeFlow(command.id);
      return { payload: null, message: `flow ${command.id} closed` };
    case 'setLogLevel':
      await handler.setLogLevel(command.level);
      return { payload: null, message: `log level set to ${command.level}` };
  }
}

/** Reject after `ms` unless `work` settles first. */
function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new ControlError('INTERNAL', `timed out after ${ms} ms`)), ms);
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/**
 * Answer one request body: decode, run, encode. Never throws: every
 * failure becomes a response with an error status.
 */
export async function answerRequest(handler: ControlHandler, body: Uint8Array, handlerTimeoutMs = 10_000): Promise<ControlResponse> {
  let id = 0;
  try {
    const request = decodeRequest(body);
    id = request.id;
    const { payload, message } = await withTimeout(execute(handler, request.command), handlerTimeoutMs);
    return { id, status: 'OK', message, payload };
  } catch (error) {
    if (error instanceof ControlRequestError) return { id: error.id, status: 'BAD_REQUEST', message: error.message, payload: null };
    if (error instanceof ControlError) return { id, status: error.status, message: error.message, payload: null };
    return { id, status: 'INTERNAL', message: error instanceof Error ? error.message : String(error), payload: null };
  }
}

/** The fd of a connected net.Socket on a UNIX path (libuv's pipe handle), or -1. */
function socketFd(socket: net.Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } })._handle;
  return typeof handle?.fd === 'number' ? handle.fd : -1;
}

/**
 * The peer's uid when it may use the control API (our own uid, root, or
 * one of `extraUids`), else null. The socket's mode already keeps others
 * out; this also holds when the file was made reachable by mistake.
 */
function allowedPeer(socket: net.Socket, extraUids: readonly number[]): { pid: number; uid: number } | null {
  const fd = socketFd(socket);
  if (fd < 0) return null;
  try {
    const [pid, uid] = native.peerCred(fd);
    const own = process.getuid?.() ?? 0;
    return uid === own || uid === 0 || extraUids.includes(uid) ? { pid, uid } : null;
  } catch {
    return null;
  }
}

/**
 * Remove a socket file left by a dead ferry so listen() succeeds. Refuses to
 * touch anything that is not a socket, or a socket someone still serves.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (!stat.isSocket()) throw new Error(`control: ${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`control: ${path} is in use by another ferry`);
  fs.rmSync(path, { force: true });
}

/** How a connection bounds its replies. */
interface ReplyLimits {
  drainTimeoutMs: number;
  maxQueuedBytes: number;
}

/**
 * One client connection: frames in, responses out, one request at a time.
 * Backpressure both ways: the socket is paused while a request is handled
 * and while its reply waits to be written, so a client that sends requests
 * without reading the replies stops being read; if its reply is still
 * queued after the drain timeout (or too many reply bytes would queue), it
 * is dropped.
 */
class ControlConnection {
  private readonly reader = new FrameReader(MAX_REQUEST_BYTES);
  private busy = false;
  private closed = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly handler: ControlHandler,
    private readonly handlerTimeoutMs: number,
    private readonly limits: ReplyLimits,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.reader.push(chunk);
      void this.drain();
    });
    socket.on('error', (error) => rateLimited('debug', 'control-socket-error', () => `control: client connection: ${error.message}`));
    socket.on('close', () => (this.closed = true));
  }

  /** Answer complete frames in order; pauses reading while a handler runs so a client cannot queue unbounded work. */
  private async drain(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    this.socket.pause();
    try {
      for (;;) {
        if (this.closed) return;
        const next = this.reader.next();
        if (next.kind === 'incomplete') break;
        if (next.kind === 'oversized') {
          rateLimited('warn', 'control-oversized', () => `control: a client announced a ${next.length}-byte request (limit ${MAX_REQUEST_BYTES}); closing it`);
          const reply: ControlResponse = { id: 0, status: 'BAD_REQUEST', message: `request of ${next.length} bytes exceeds the ${MAX_REQUEST_BYTES}-byte limit`, payload: null };
          this.socket.end(frame(encodeResponse(reply)));
          this.closed = true;
          return;
        }
        const response = await answerRequest(this.handler, next.body, this.handlerTimeoutMs);
        if (response.status === 'BAD_REQUEST') rateLimited('info', 'control-bad-request', () => `control: bad request: ${response.message}`);
        if (this.closed) return;
        if (!(await this.writeReply(frame(this.encodeBounded(response))))) return;
      }
    } finally {
      this.busy = false;
      if (!this.closed) this.socket.resume();
    }
  }

  /**
   * Queue one reply and wait until the socket has taken it (its 'drain').
   * False, with the client dropped, when the queued bytes would exceed the
   * bound or the client does not read within the drain timeout.
   */
  private async writeReply(bytes: Buffer): Promise<boolean> {
    if (this.socket.writableLength + bytes.length > this.limits.maxQueuedBytes) {
      rateLimited('warn', 'control-reply-queue', () => `control: a client has ${this.socket.writableLength} reply bytes queued and does not read; closing it`);
      this.destroy();
      return false;
    }
    if (this.socket.write(bytes)) return !this.closed;
    if (this.closed || this.socket.destroyed) return false;
    const drained = await new Promise<boolean>((resolve) => {
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        resolve(ok);
      };
      const onDrain = (): void => done(true);
      const onClose = (): void => done(false);
      const timer = setTimeout(() => done(false), this.limits.drainTimeoutMs);
      this.socket.on('drain', onDrain);
      this.socket.on('close', onClose);
    });
    if (!drained && !this.closed) {
      rateLimited('warn', 'control-reply-stalled', () => `control: a client did not read its reply within ${this.limits.drainTimeoutMs} ms; closing it`);
      this.destroy();
    }
    return drained && !this.closed;
  }

  /** Encode a response; one that fails to encode (a handler returning bad data) becomes an INTERNAL error. */
  private encodeBounded(response: ControlResponse): Uint8Array {
    try {
      return encodeResponse(response);
    } catch (error) {
      const message = `cannot encode the response: ${error instanceof Error ? error.message : String(error)}`;
      log.warn(`control: ${message}`);
      return encodeResponse({ id: response.id, status: 'INTERNAL', message, payload: null });
    }
  }

  /** Drop the connection at once. */
  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

/**
 * Serve the control API on UNIX socket `path` with `handler`. Missing
 * parent directories are created (mode 0700). The socket is created mode 0600 (umask 0177 while binding, then chmod), replacing a
 * stale socket file; peers with another uid than ours (or root) are
 * refused. Resolves once listening; rejects if the path is taken or
 * unusable. Call close() on shutdown.
 */
export async function startControlServer(path: string, handler: ControlHandler, options: ControlServerOptions = {}): Promise<ControlServer> {
  const maxConnections = options.maxConnections ?? 16;
  const handlerTimeoutMs = options.handlerTimeoutMs ?? 10_000;
  const extraUids = options.extraUids ?? [];
  const limits: ReplyLimits = {
    drainTimeoutMs: options.replyDrainTimeoutMs ?? 10_000,
    maxQueuedBytes: options.maxQueuedReplyBytes ?? FRAME_HEADER_BYTES + MAX_RESPONSE_BYTES,
  };
  // The default path's directory (e.g. $XDG_RUNTIME_DIR/ferry/NAME) may not exist yet.
  fs.mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  await removeStaleSocket(path);

  const connections = new Set<ControlConnection>();
  const server = net.createServer({ allowHalfOpen: false, pauseOnConnect: false }, (socket) => {
    const peer = allowedPeer(socket, extraUids);
    if (peer === null) {
      rateLimited('warn', 'control-refused', () => `control: refused a connection from another user on ${path}`);
      socket.destroy();
      return;
    }
    if (connections.size >= maxConnections) {
      rateLimited('warn', 'control-too-many', () => `control: more than ${maxConnections} clients at once; closing the newest`);
      socket.destroy();
      return;
    }
    const connection = new ControlConnection(socket, handler, handlerTimeoutMs, limits);
    connections.add(connection);
    socket.on('close', () => connections.delete(connection));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // bind() happens synchronously inside listen() for a path: the umask
    // makes the file 0600 from its first moment, with no window for others.
    const previousUmask = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.removeListener('error', reject);
        resolve();
      });
    } finally {
      process.umask(previousUmask);
    }
  });
  fs.chmodSync(path, 0o600);
  server.on('error', (error) => log.warn(`control: ${error.message}`));
  log.info(`control API listening on ${path}`);

  let closing: Promise<void> | null = null;
  return {
    path,
    close: () => {
      if (closing === null) {
        closing = new Promise<void>((resolve) => {
          for (const connection of connections) connection.destroy();
          connections.clear();
          server.close(() => resolve());
        }).then(() => {
          // net.Server removes its socket file on close; make sure in any case.
          fs.rmSync(path, { force: true });
        });
      }
      return closing;
    },
  };
}
