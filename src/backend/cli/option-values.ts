/**
 * The value checks behind the option table (options.ts): each takes the
 * option as the user typed it and its value, and returns the value parsed
 * or throws OptionError with one line that names the option and says why.
 */
import { basename, extname } from 'path';
import { readFileSync } from 'fs';
import { isLoopback, isUnspecified, isIpv6Multicast, parseIp, parseIpv4, prefixFromNetmask } from '../../stack/address';
import { DEFAULT_EPHEMERAL_RANGE, parseEphemeralRange, type PortRange } from '../../stack/flow/forward-spec';

/** A bad option or value; `message` is one line, e.g. "--mtu: 70000 is out of range (68-65520)". */
export class OptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OptionError';
  }
}

/** Where --metrics serves GET /metrics: TCP HOST:PORT or a UNIX socket path. */
export type MetricsEndpoint = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

// ---------------------------------------------------------------------------
// Value validators. Each throws OptionError("<option as typed>: <reason>").

export function fail(shown: string, reason: string): never {
  throw new OptionError(`${shown}: ${reason}`);
}

/** --runas: USER or USER:GROUP, each a login/group name or a number (resolved when ferry confines itself). */
export function runasValue(shown: string, text: string): string {
  const name = /^(?:[0-9]+|[A-Za-z_][A-Za-z0-9_.-]*\$?)$/;
  const parts = text.split(':');
  if (parts.length > 2 || !parts.every((part) => name.test(part))) fail(shown, `'${text}' is not USER or USER:GROUP`);
  for (const part of parts) if (/^[0-9]+$/.test(part) && Number(part) > 0xfffffffe) fail(shown, `${part} is out of range (0-4294967294)`);
  return text;
}

/** Strict decimal integer in [min, max]. */
export function integerValue(shown: string, text: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(text)) fail(shown, `'${text}' is not a number`);
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min || value > max) fail(shown, `${text} is out of range (${min}-${max})`);
  return value;
}

export function nonEmpty(shown: string, text: string, what: string): string {
  if (text === '') fail(shown, `empty ${what}`);
  if (text.includes('\0')) fail(shown, `${what} contains a NUL byte`);
  return text;
}

/** A filesystem path for a UNIX socket: sun_path holds 107 bytes plus NUL. */
export function socketPathValue(shown: string, text: string): string {
  nonEmpty(shown, text, 'path');
  if (Buffer.byteLength(text) > 107) fail(shown, `path is longer than 107 bytes (the UNIX socket limit)`);
  return text;
}

/** Linux interface name: 1-15 bytes, no '/', ':' or whitespace. */
export function interfaceNameValue(shown: string, text: string): string {
  nonEmpty(shown, text, 'interface name');
  if (Buffer.byteLength(text) > 15 || /[\s/:%]/.test(text) || text === '.' || text === '..') fail(shown, `'${text}' is not a valid interface name`);
  return text;
}

export interface AddressRestrictions {
  unspecified?: boolean;
  loopback?: boolean;
  multicast?: boolean;
  /** IPv4 limited broadcast 255.255.255.255 */
  broadcast?: boolean;
  /** ::ffff:a.b.c.d */
  v4mapped?: boolean;
}

export function isIpv4Broadcast(address: Uint8Array): boolean {
  return address.length === 4 && address[0] === 255 && address[1] === 255 && address[2] === 255 && address[3] === 255;
}

export function isIpv4Multicast(address: Uint8Array): boolean {
  return address.length === 4 && address[0] >= 224 && address[0] <= 239;
}

export function isV4Mapped(address: Uint8Array): boolean {
  if (address.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (address[i] !== 0) return false;
  return address[10] === 0xff && address[11] === 0xff;
}

/**
 * An IPv4 or IPv6 literal as bytes; `refuse` lists the kinds of address the
 * option cannot sensibly take (mirroring passt's checks for the same option).
 */
export function addressValue(shown: string, text: string, refuse: AddressRestrictions = {}): Uint8Array {
  const address = parseIp(text);
  if (address === null) fail(shown, `'${text}' is not an IPv4 or IPv6 address`);
  const kind = (refuse.unspecified && isUnspecified(address) && 'the unspecified') ||
    (refuse.loopback && isLoopback(address) && 'a loopback') ||
    (refuse.multicast && (isIpv4Multicast(address) || (address.length === 16 && isIpv6Multicast(address))) && 'a multicast') ||
    (refuse.broadcast && isIpv4Broadcast(address) && 'the broadcast') ||
    (refuse.v4mapped && isV4Mapped(address) && 'an IPv4-mapped');
  if (kind) fail(shown, `${text} is ${kind} address`);
  return address;
}

/** -n: prefix length 0-32 or a contiguous dotted netmask. */
export function netmaskValue(shown: string, text: string): number {
  if (/^[0-9]+$/.test(text)) return integerValue(shown, text, 0, 32);
  const mask = parseIpv4(text);
  if (mask === null) fail(shown, `'${text}' is neither a prefix length nor a dotted netmask`);
  const length = prefixFromNetmask(mask);
  if (length < 0) fail(shown, `${text} is not a contiguous netmask`);
  return length;
}

/** --socket-mode: octal permission bits ('660', '0660', '0o660'). */
export function fileModeValue(shown: string, text: string): number {
  const digits = text.startsWith('0o') ? text.slice(2) : text;
  if (!/^[0-7]{1,4}$/.test(digits)) fail(shown, `'${text}' is not an octal file mode`);
  const mode = parseInt(digits, 8);
  if (mode > 0o777) fail(shown, `${text} has bits beyond 0777`);
  return mode;
}

/** --socket-group: a group name or a numeric id. */
export function groupValue(shown: string, text: string): string {
  nonEmpty(shown, text, 'group');
  if (/^[0-9]+$/.test(text)) {
    integerValue(shown, text, 0, 0xfffffffe);
    return text;
  }
  if (!/^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(text) || text.length > 32) fail(shown, `'${text}' is not a valid group name`);
  return text;
}

/**
 * --metrics: 'unix:PATH', 'HOST:PORT' or '[IPv6]:PORT'. HOST is an IP
 * literal or a host name; PORT 0 lets the kernel pick (useful in tests).
 */
export function parseMetricsEndpoint(text: string, shown = '--metrics'): MetricsEndpoint {
  if (text.startsWith('unix:')) return { kind: 'unix', path: socketPathValue(shown, text.slice(5)) };
  let host: string;
  let portText: string;
  const bracketed = /^\[([^\]]+)\]:([^:]*)$/.exec(text);
  if (bracketed !== null) {
    host = bracketed[1];
    portText = bracketed[2];
    if (parseIp(host)?.length !== 16) fail(shown, `'${host}' is not an IPv6 address`);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon === -1) fail(shown, `'${text}' is neither HOST:PORT nor unix:PATH`);
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) fail(shown, `put an IPv6 address in brackets: '[${host}]:${portText}'`);
    if (host === '') fail(shown, `missing host in '${text}'`);
    if (parseIp(host) === null && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/.test(host)) fail(shown, `'${host}' is not a host name or address`);
  }
  if (portText === '') fail(shown, `missing port in '${text}'`);
  return { kind: 'tcp', host, port: integerValue(shown, portText, 0, 65535) };
}

/** Default instance name: the socket file's name without extension, 'fd<N>' with --fd, else 'ferry'. */
export function defaultInstanceName(socketPath: string | null, fd: number | null): string {
  if (socketPath !== null) {
    const base = basename(socketPath);
    const stem = base.slice(0, base.length - extname(base).length);
    return stem !== '' ? stem : base;
  }
  if (fd !== null) return `fd${fd}`;
  return 'ferry';
}

/** The kernel's ephemeral port range from procfs, or RFC 6335's when unreadable. */
export function readEphemeralRange(path = '/proc/sys/net/ipv4/ip_local_port_range'): PortRange {
  try {
    return parseEphemeralRange(readFileSync(path, 'utf8')) ?? DEFAULT_EPHEMERAL_RANGE;
  } catch {
    return DEFAULT_EPHEMERAL_RANGE;
  }
}

/** A DNS name of at most `max` characters: labels of letters, digits and hyphens (1-63 each), dot separated. */
export function dnsName(shown: string, value: string, max: number): string {
  const name = value.endsWith('.') ? value.slice(0, -1) : value;
  if (name.length === 0 || name.length > max || !name.split('.').every((label) => /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(label))) {
    fail(shown, `'${value}' is not a host name (letters, digits, hyphens; at most ${max} characters)`);
  }
  return name;
}
