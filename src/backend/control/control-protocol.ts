/**
 * The control API's wire format, shared by the daemon's control server
 * (control.ts) and ferryctl: protobuf messages from proto/ferry-control.proto
 * (loaded at run time by protobufjs), each framed by a 4-byte big-endian
 * length. This module turns bytes into plain typed objects and back and
 * validates everything a peer could get wrong; it does no I/O besides
 * reading the .proto file once.
 */

import { existsSync } from 'fs';
import { userInfo } from 'os';
import { dirname, join } from 'path';
import type * as protobuf from 'protobufjs';

/** Length prefix of every frame: 4 bytes, big-endian. */
export const FRAME_HEADER_BYTES = 4;
/** Largest request body the daemon accepts (a request is a few bytes; this only bounds buffering). */
export const MAX_REQUEST_BYTES = 1 << 20;
/** Largest response body a client accepts (a full flow table is a few MiB). */
export const MAX_RESPONSE_BYTES = 64 << 20;

/** The .proto file, relative to the package root. */
export const CONTROL_PROTO_RELATIVE_PATH = join('proto', 'ferry-control.proto');

const PACKAGE = 'ferry.control.v1';

export type FlowProtocol = 'tcp' | 'udp' | 'icmp';
export type ForwardProtocol = 'tcp' | 'udp';
export type ControlLogLevel = 'error' | 'warn' | 'info' | 'debug';
export const CONTROL_LOG_LEVELS: readonly ControlLogLevel[] = ['error', 'warn', 'info', 'debug'];

/** Response status codes (enum Status in the .proto). */
export type ControlStatus = 'OK' | 'BAD_REQUEST' | 'NOT_FOUND' | 'CONFLICT' | 'UNIMPLEMENTED' | 'INTERNAL';
const STATUSES: readonly ControlStatus[] = ['OK', 'BAD_REQUEST', 'NOT_FOUND', 'CONFLICT', 'UNIMPLEMENTED', 'INTERNAL'];

/** One command of a Request (the `command` oneof). */
export type ControlCommand =
  | { kind: 'listFlows'; protocol: FlowProtocol | null }
  | { kind: 'getStats' }
  | { kind: 'addForward'; protocol: ForwardProtocol; spec: string }
  | { kind: 'removeForward'; protocol: ForwardProtocol; spec: string }
  | { kind: 'listForwards' }
  | { kind: 'closeFlow'; id: number }
  | { kind: 'setLogLevel'; level: ControlLogLevel };

export interface ControlRequest {
  /** Chosen by the client, echoed in the response. */
  id: number;
  command: ControlCommand;
}

/** One flow as listed by ListFlows (message Flow). */
export interface FlowInfo {
  id: number;
  protocol: FlowProtocol;
  /**
   * The flow table's kind name: tcp, udp, icmp, icmpv6, tcp-splice,
   * udp-forward (every ferry sends it; absent means the protocol's name).
   */
  kind?: string;
  state: string;
  /** Opened from the host side through a forward (true) or by the guest (false). */
  inbound: boolean;
  guestAddress: string;
  guestPort: number;
  /** The other end as the guest addresses it. */
  remoteAddress: string;
  remotePort: number;
  bytesFromGuest: number;
  bytesToGuest: number;
  ageMs: number;
  queuePair: number;
}

/** One counter or gauge sample (message Stat). */
export interface StatSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** One port mapping of a forward: host ports first..last to guest ports from guestPortFirst on. */
export interface ForwardMappingInfo {
  hostPortFirst: number;
  hostPortLast: number;
  guestPortFirst: number;
}

/** One forwarding rule (message Forward). */
export interface ForwardInfo {
  protocol: ForwardProtocol;
  spec: string;
  /** '' = any address. */
  bindAddress: string;
  /** '' = no interface binding. */
  interface: string;
  mappings: ForwardMappingInfo[];
  /** Added through the control API (true) or given as -t/-u (false). */
  runtime: boolean;
}

export type ControlPayload =
  | { kind: 'flows'; flows: FlowInfo[] }
  | { kind: 'stats'; stats: StatSample[] }
  | { kind: 'forwards'; forwards: ForwardInfo[] };

export interface ControlResponse {
  id: number;
  status: ControlStatus;
  message: string;
  payload: ControlPayload | null;
}

/**
 * A request that decoded as protobuf but makes no sense (no command, bad
 * protocol, bad level...). `id` is the request's id when it was readable.
 */
export class ControlRequestError extends Error {
  constructor(
    message: string,
    readonly id: number,
  ) {
    super(message);
    this.name = 'ControlRequestError';
  }
}

/**
 * Default control socket for instance `name`: /run/ferry/NAME/control.sock
 * for root (ferry@.service's RuntimeDirectory=ferry/%i), else
 * $XDG_RUNTIME_DIR/ferry/NAME/control.sock (falling back to /run/user/UID).
 */
export function defaultControlPath(name = 'ferry', env: NodeJS.ProcessEnv = process.env, uid: number = userInfo().uid): string {
  const runtime = uid === 0 ? '/run' : env.XDG_RUNTIME_DIR !== undefined && env.XDG_RUNTIME_DIR !== '' ? env.XDG_RUNTIME_DIR : `/run/user/${uid}`;
  return join(runtime, 'ferry', name, 'control.sock');
}

// ---------------------------------------------------------------------------
// Loading the schema

interface ControlTypes {
  request: protobuf.Type;
  response: protobuf.Type;
}

let types: ControlTypes | null = null;

/**
 * Path of proto/ferry-control.proto: found by walking up from this module
 * (src/backend when run by ts-node, dist/src/backend when compiled) to the
 * directory that holds it.
 */
export function controlProtoPath(start: string = __dirname): string {
  let directory = start;
  for (let depth = 0; depth < 6; depth++) {
    const candidate = join(directory, CONTROL_PROTO_RELATIVE_PATH);
    if (existsSync(candidate)) return candidate;
    const parent = dirname(directory);
    if (parent === directory) break;
    directory = parent;
  }
  throw new Error(`control API schema ${CONTROL_PROTO_RELATIVE_PATH} not found above ${start}`);
}

/**
 * The Request and Response types, loaded from the .proto on first use.
 * protobufjs itself is loaded here too (about 9 MB of a thread's memory),
 * so that importing this module for its types and constants costs nothing.
 */
function controlTypes(): ControlTypes {
  if (types === null) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded with the schema, only where the control API is used
    const { loadSync } = require('protobufjs') as typeof protobuf;
    const root = loadSync(controlProtoPath());
    types = { request: root.lookupType(`${PACKAGE}.Request`), response: root.lookupType(`${PACKAGE}.Response`) };
  }
  return types;
}

/** Read the .proto now (before ferry confines itself, after which no file can be opened). */
export function loadControlSchema(): void {
  controlTypes();
}

/** Decoded messages as plain objects: 64-bit integers as decimal strings, enums as names. */
const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, oneofs: true, arrays: true, objects: true };

// ---------------------------------------------------------------------------
// Narrowing helpers for decoded objects (protobufjs hands back untyped objects).

type Fields = Record<string, unknown>;

function fieldsOf(value: unknown): Fields {
  return typeof value === 'object' && value !== null ? (value as Fields) : {};
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

function bool(value: unknown): boolean {
  return value === true;
}

/** A protobufjs number or 64-bit decimal string as a JS number; NaN when not a safe integer. */
function integer(value: unknown): number {
  const number = typeof value === 'number' ? value : typeof value === 'string' && /^[0-9]+$/.test(value) ? Number(value) : NaN;
  return Number.isSafeInteger(number) ? number : NaN;
}

function count(value: unknown): number {
  const number = integer(value);
  return Number.isNaN(number) ? 0 : number;
}

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

const FLOW_PROTOCOLS: Record<string, FlowProtocol | null> = { PROTOCOL_UNSPECIFIED: null, PROTOCOL_TCP: 'tcp', PROTOCOL_UDP: 'udp', PROTOCOL_ICMP: 'icmp' };

function protocolEnum(protocol: FlowProtocol | null): string {
  return protocol === null ? 'PROTOCOL_UNSPECIFIED' : `PROTOCOL_${protocol.toUpperCase()}`;
}

/** An enum name (or an unknown number protobufjs left as a number) as a flow protocol; undefined when unknown. */
function flowProtocolOf(value: unknown): FlowProtocol | null | undefined {
  return typeof value === 'string' && value in FLOW_PROTOCOLS ? FLOW_PROTOCOLS[value] : undefined;
}

// ---------------------------------------------------------------------------
// Requests

/** Encode a request (client side). Returns the message bytes without the frame header. */
export function encodeRequest(request: ControlRequest): Uint8Array {
  const { request: type } = controlTypes();
  const command = request.command;
  let body: Fields;
  switch (command.kind) {
    case 'listFlows':
      body = { listFlows: { protocol: protocolEnum(command.protocol) } };
      break;
    case 'getStats':
      body = { getStats: {} };
      break;
    case 'addForward':
      body = { addForward: { protocol: protocolEnum(command.protocol), spec: command.spec } };
      break;
    case 'removeForward':
      body = { removeForward: { protocol: protocolEnum(command.protocol), spec: command.spec } };
      break;
    case 'listForwards':
      body = { listForwards: {} };
      break;
    case 'closeFlow':
      body = { closeFlow: { id: String(command.id) } };
      break;
    case 'setLogLevel':
      body = { setLogLevel: { level: command.level } };
      break;
  }
  return type.encode(type.fromObject({ id: request.id >>> 0, ...body })).finish();
}

/** Protocol of an AddForward/RemoveForward: tcp or udp, else a ControlRequestError. */
function forwardProtocolOf(value: unknown, id: number): ForwardProtocol {
  const protocol = flowProtocolOf(value);
  if (protocol === 'tcp' || protocol === 'udp') return protocol;
  throw new ControlRequestError(`a forward's protocol must be tcp or udp, not ${String(value)}`, id);
}

/**
 * Decode and validate a request body (daemon side). Throws
 * ControlRequestError for anything malformed: undecodable bytes (id 0), no
 * or an unknown command, a bad protocol, level or flow id.
 */
export function decodeRequest(bytes: Uint8Array): ControlRequest {
  const { request: type } = controlTypes();
  let object: Fields;
  try {
    object = fieldsOf(type.toObject(type.decode(bytes), TO_OBJECT));
  } catch (error) {
    throw new ControlRequestError(`undecodable request: ${error instanceof Error ? error.message : String(error)}`, 0);
  }
  const id = count(object.id);
  const kind = object.command;
  if (typeof kind !== 'string') throw new ControlRequestError('the request names no command (missing, or unknown to this ferry)', id);
  const fields = fieldsOf(object[kind]);
  switch (kind) {
    case 'listFlows': {
      const protocol = flowProtocolOf(fields.protocol);
      if (protocol === undefined) throw new ControlRequestError(`unknown protocol ${String(fields.protocol)}`, id);
      return { id, command: { kind, protocol } };
    }
    case 'getStats':
    case 'listForwards':
      return { id, command: { kind } };
    case 'addForward':
    case 'removeForward': {
      const protocol = forwardProtocolOf(fields.protocol, id);
      const spec = text(fields.spec);
      if (spec === '') throw new ControlRequestError('empty port specification', id);
      return { id, command: { kind, protocol, spec } };
    }
    case 'closeFlow': {
      const flowId = integer(fields.id);
      if (Number.isNaN(flowId)) throw new ControlRequestError(`flow id ${String(fields.id)} is out of range`, id);
      return { id, command: { kind, id: flowId } };
    }
    case 'setLogLevel': {
      const level = text(fields.level);
      if (!(CONTROL_LOG_LEVELS as readonly string[]).includes(level)) {
        throw new ControlRequestError(`unknown log level '${level}' (use ${CONTROL_LOG_LEVELS.join(', ')})`, id);
      }
      return { id, command: { kind, level: level as ControlLogLevel } };
    }
    default:
      throw new ControlRequestError(`unknown command ${kind}`, id);
  }
}

// ---------------------------------------------------------------------------
// Responses

function payloadFields(payload: ControlPayload | null): Fields {
  if (payload === null) return {};
  switch (payload.kind) {
    case 'flows':
      return {
        flows: {
          flows: payload.flows.map((flow) => ({
            ...flow,
            id: String(flow.id),
            protocol: protocolEnum(flow.protocol),
            bytesFromGuest: String(flow.bytesFromGuest),
            bytesToGuest: String(flow.bytesToGuest),
            ageMs: String(Math.max(0, Math.floor(flow.ageMs))),
          })),
        },
      };
    case 'stats':
      return { stats: { stats: payload.stats } };
    case 'forwards':
      return { forwards: { forwards: payload.forwards.map((forward) => ({ ...forward, protocol: protocolEnum(forward.protocol) })) } };
  }
}

/** Encode a response (daemon side). Returns the message bytes without the frame header. */
export function encodeResponse(response: ControlResponse): Uint8Array {
  const { response: type } = controlTypes();
  return type.encode(type.fromObject({ id: response.id >>> 0, status: response.status, message: response.message, ...payloadFields(response.payload) })).finish();
}

function flowFrom(value: unknown): FlowInfo {
  const f = fieldsOf(value);
  return {
    id: count(f.id),
    protocol: flowProtocolOf(f.protocol) ?? 'tcp',
    // Left out when not sent (an older ferry: the protocol is the kind).
    ...(text(f.kind) !== '' ? { kind: text(f.kind) } : {}),
    state: text(f.state),
    inbound: bool(f.inbound),
    guestAddress: text(f.guestAddress),
    guestPort: count(f.guestPort),
    remoteAddress: text(f.remoteAddress),
    remotePort: count(f.remotePort),
    bytesFromGuest: count(f.bytesFromGuest),
    bytesToGuest: count(f.bytesToGuest),
    ageMs: count(f.ageMs),
    queuePair: count(f.queuePair),
  };
}

function statFrom(value: unknown): StatSample {
  const s = fieldsOf(value);
  const labels: Record<string, string> = {};
  for (const [name, labelValue] of Object.entries(fieldsOf(s.labels))) labels[name] = text(labelValue);
  return { name: text(s.name), labels, value: typeof s.value === 'number' ? s.value : 0 };
}

function forwardFrom(value: unknown): ForwardInfo {
  const f = fieldsOf(value);
  const protocol = flowProtocolOf(f.protocol);
  return {
    protocol: protocol === 'udp' ? 'udp' : 'tcp',
    spec: text(f.spec),
    bindAddress: text(f.bindAddress),
    interface: text(f.interface),
    mappings: list(f.mappings).map((m) => {
      const mapping = fieldsOf(m);
      return { hostPortFirst: count(mapping.hostPortFirst), hostPortLast: count(mapping.hostPortLast), guestPortFirst: count(mapping.guestPortFirst) };
    }),
    runtime: bool(f.runtime),
  };
}

/** Decode a response (client side); throws when the bytes are not a Response. Unknown statuses become INTERNAL. */
export function decodeResponse(bytes: Uint8Array): ControlResponse {
  const { response: type } = controlTypes();
  const object = fieldsOf(type.toObject(type.decode(bytes), TO_OBJECT));
  const status = STATUSES.find((s) => s === object.status) ?? 'INTERNAL';
  let payload: ControlPayload | null = null;
  if (object.payload === 'flows') payload = { kind: 'flows', flows: list(fieldsOf(object.flows).flows).map(flowFrom) };
  else if (object.payload === 'stats') payload = { kind: 'stats', stats: list(fieldsOf(object.stats).stats).map(statFrom) };
  else if (object.payload === 'forwards') payload = { kind: 'forwards', forwards: list(fieldsOf(object.forwards).forwards).map(forwardFrom) };
  return { id: count(object.id), status, message: text(object.message), payload };
}

// ---------------------------------------------------------------------------
// Framing

/** A message body with its 4-byte big-endian length prefix. */
export function frame(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  out.set(body, FRAME_HEADER_BYTES);
  return out;
}

/** What FrameReader.next() found. */
export type FrameResult = { kind: 'frame'; body: Buffer } | { kind: 'incomplete' } | { kind: 'oversized'; length: number };

/** The one 'incomplete' result (no allocation per call while bytes trickle in). */
const INCOMPLETE: FrameResult = Object.freeze({ kind: 'incomplete' });

/** Size of the first body buffer of a frame that arrives in pieces; it doubles as bytes come (never past the frame). */
const FIRST_BODY_BUFFER_BYTES = 64 << 10;

/**
 * Splits a byte stream into frames in linear time, however the stream is
 * cut: pushing is O(1), and a frame's body is assembled in a buffer that
 * grows by doubling up to the announced length (so each byte is copied at
 * most about three times, and a peer announcing a big frame and sending
 * little costs little). A frame that arrives whole in one chunk is not
 * copied at all. A header announcing more than
 * `maxBody` bytes is reported as 'oversized' and the reader stays in that
 * state (the stream cannot be resynchronised).
 */
export class FrameReader {
  /** Chunks pushed and not yet parsed: queue[queueHead..], the first one from queueOffset on. */
  private queue: Buffer[] = [];
  private queueHead = 0;
  private queueOffset = 0;
  private queued = 0;
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  /** Length of the frame being assembled, -1 while its header is incomplete. */
  private bodyLength = -1;
  private body: Buffer | null = null;
  private bodyFill = 0;
  private oversizedLength = -1;
  /** Bytes copied so far (header bytes split across chunks, bodies assembled from pieces). */
  copiedBytes = 0;

  constructor(private readonly maxBody: number) {}

  /** Append bytes received from the stream (kept by reference until parsed). */
  push(chunk: Buffer): void {
    if (this.oversizedLength >= 0 || chunk.length === 0) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
  }

  /** The next complete frame, 'incomplete' when more bytes are needed, or 'oversized'. */
  next(): FrameResult {
    if (this.oversizedLength >= 0) return { kind: 'oversized', length: this.oversizedLength };
    if (this.bodyLength < 0) {
      this.headerFill += this.take(this.header, this.headerFill, FRAME_HEADER_BYTES - this.headerFill);
      if (this.headerFill < FRAME_HEADER_BYTES) return INCOMPLETE;
      const length = this.header.readUInt32BE(0);
      if (length > this.maxBody) {
        this.oversizedLength = length;
        this.queue = [];
        this.queueHead = 0;
        this.queued = 0;
        return { kind: 'oversized', length };
      }
      this.bodyLength = length;
    }
    const length = this.bodyLength;
    if (this.body === null) {
      const first = this.queue[this.queueHead];
      if (length === 0 || (first !== undefined && first.length - this.queueOffset >= length)) {
        // The whole body in one chunk: hand out a view of it.
        const body = length === 0 ? Buffer.alloc(0) : first.subarray(this.queueOffset, this.queueOffset + length);
        if (length > 0) this.advance(length);
        return this.finishFrame(body);
      }
      if (this.queued === 0) return INCOMPLETE;
      this.body = Buffer.allocUnsafe(Math.min(length, FIRST_BODY_BUFFER_BYTES));
    }
    while (this.bodyFill < length && this.queued > 0) {
      if (this.bodyFill === this.body.length) {
        const grown = Buffer.allocUnsafe(Math.min(length, 2 * this.body.length));
        this.body.copy(grown, 0, 0, this.bodyFill);
        this.copiedBytes += this.bodyFill;
        this.body = grown;
      }
      this.bodyFill += this.take(this.body, this.bodyFill, Math.min(length, this.body.length) - this.bodyFill);
    }
    if (this.bodyFill < length) return INCOMPLETE;
    return this.finishFrame(this.body);
  }

  /** Bytes received but not yet returned as a frame. */
  get pending(): number {
    return this.headerFill + this.bodyFill + this.queued;
  }

  private finishFrame(body: Buffer): FrameResult {
    this.headerFill = 0;
    this.bodyLength = -1;
    this.body = null;
    this.bodyFill = 0;
    return { kind: 'frame', body };
  }

  /** Copy up to `wanted` queued bytes into target[offset..]; returns how many. */
  private take(target: Buffer, offset: number, wanted: number): number {
    let copied = 0;
    while (copied < wanted && this.queued > 0) {
      const chunk = this.queue[this.queueHead];
      const n = Math.min(wanted - copied, chunk.length - this.queueOffset);
      chunk.copy(target, offset + copied, this.queueOffset, this.queueOffset + n);
      copied += n;
      this.advance(n);
    }
    this.copiedBytes += copied;
    return copied;
  }

  /** Drop `n` bytes from the front of the queue (n <= queued). */
  private advance(n: number): void {
    this.queued -= n;
    this.queueOffset += n;
    while (this.queueHead < this.queue.length && this.queueOffset >= this.queue[this.queueHead].length) {
      this.queueOffset -= this.queue[this.queueHead].length;
      this.queueHead++;
    }
    // Compact now and then so the array does not grow with the stream.
    if (this.queueHead === this.queue.length) {
      this.queue = [];
      this.queueHead = 0;
    } else if (this.queueHead >= 1024 && this.queueHead * 2 >= this.queue.length) {
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
  }
}
