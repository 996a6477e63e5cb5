/**
 * Port forwarding specifications with passt's syntax (the argument of
 * -t/-u/-T/-U), parsed into a compact, sorted list of port mappings.
 *
 * Grammar (passt(1), "-t, --tcp-ports spec"):
 *
 *   spec     := 'none' | 'auto' | 'all' | [bind '/'] item (',' item)*
 *   bind     := ADDR | '[' ADDR ']' | ADDR '%' IFNAME | '%' IFNAME
 *   item     := range [':' range]      host ports, optionally remapped
 *             | '~' range              excluded ports
 *   range    := PORT ['-' PORT]
 *
 * Semantics mirrored from passt:
 * - `all` forwards every port from 1 to 65535 except ephemeral ones (the
 *   kernel's ip_local_port_range, which the caller passes in).
 * - A spec made only of exclusions (`~25`) forwards every non-ephemeral port
 *   except the excluded ones; exclusions otherwise only punch holes in the
 *   ranges given alongside them, in any order.
 * - A remapped range must have the same length on both sides.
 * - Overlapping exclusions are an error; overlapping forwarded ranges are
 *   accepted and the later one wins (passt warns).
 * Deliberate difference: port 0 is rejected (binding it means "any port").
 *
 * Pure: no I/O. Runs at configuration time, never per packet.
 */

import { parseIp } from '../address';

/** Linux IFNAMSIZ minus the terminating NUL. */
const MAX_INTERFACE_NAME = 15;

/** RFC 6335 dynamic ports, passt's fallback when the sysctl cannot be read. */
export const DEFAULT_EPHEMERAL_RANGE: PortRange = { first: 49152, last: 65535 };

/** An inclusive range of port numbers (first <= last). */
export interface PortRange {
  first: number;
  last: number;
}

/** Host ports hostPortFirst..hostPortLast go to guest ports from guestPortFirst on. */
export interface PortMapping {
  hostPortFirst: number;
  hostPortLast: number;
  guestPortFirst: number;
}

export type ForwardMode = 'none' | 'auto' | 'all' | 'ports';

/** One parsed -t/-u/-T/-U argument. */
export interface ForwardSpec {
  /** The argument as given (for log lines and error messages). */
  text: string;
  mode: ForwardMode;
  /** Address to bind listening sockets to: 4 or 16 bytes, or null for any. */
  bindAddress: Uint8Array | null;
  /** Interface to bind listening sockets to (SO_BINDTODEVICE), or null. */
  interfaceName: string | null;
  /** Sorted by hostPortFirst, disjoint; empty for 'none' and 'auto'. */
  mappings: PortMapping[];
  /** True when ports may be unavailable without failing (passt: `all` and exclusion-only specs). */
  bestEffort: boolean;
  /** --freebind: the bind address need not be on the host yet (IP_FREEBIND / IPV6_FREEBIND). */
  freebind?: boolean;
}

/** What the caller's option allows (passt: bind addresses and `all` for -t/-u only, `auto` for pasta's namespace side). */
export interface ForwardSpecRules {
  allowBindAddress: boolean;
  allowAll: boolean;
  allowAuto: boolean;
  /** Ports the kernel hands out as local ports; skipped by `all` and exclusion-only specs. */
  ephemeral: PortRange;
}

const DEFAULT_RULES: ForwardSpecRules = { allowBindAddress: true, allowAll: true, allowAuto: true, ephemeral: DEFAULT_EPHEMERAL_RANGE };

/** Thrown for a malformed spec; the message says what is wrong and quotes the spec. */
export class ForwardSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ForwardSpecError';
  }
}

/** Parse a decimal port number 1-65535 (strict: digits only). */
function parsePort(text: string, spec: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) {
    throw new ForwardSpecError(text === '' ? `missing port number in '${spec}'` : `'${text}' is not a port number in '${spec}'`);
  }
  const port = Number(text);
  if (port === 0) throw new ForwardSpecError(`port 0 cannot be forwarded in '${spec}'`);
  if (port > 65535) throw new ForwardSpecError(`port ${port} is out of range (1-65535) in '${spec}'`);
  return port;
}

/** Parse 'PORT' or 'PORT-PORT' into an inclusive range. */
function parseRange(text: string, spec: string): PortRange {
  const dash = text.indexOf('-');
  if (dash === -1) {
    const port = parsePort(text, spec);
    return { first: port, last: port };
  }
  const first = parsePort(text.slice(0, dash), spec);
  const last = parsePort(text.slice(dash + 1), spec);
  if (last < first) throw new ForwardSpecError(`range ${first}-${last} runs backwards in '${spec}'`);
  return { first, last };
}

/** Split the optional 'ADDR%IF/' prefix; returns the port list part. */
function parseBindPrefix(spec: string, rules: ForwardSpecRules): { bindAddress: Uint8Array | null; interfaceName: string | null; ports: string } {
  const slash = spec.indexOf('/');
  if (slash === -1) return { bindAddress: null, interfaceName: null, ports: spec };
  if (!rules.allowBindAddress) throw new ForwardSpecError(`a bind address or interface is not allowed here: '${spec}'`);
  let addressText = spec.slice(0, slash);
  let interfaceName: string | null = null;
  const percent = addressText.indexOf('%');
  if (percent !== -1) {
    interfaceName = addressText.slice(percent + 1);
    addressText = addressText.slice(0, percent);
    if (interfaceName === '') throw new ForwardSpecError(`empty interface name after '%' in '${spec}'`);
    if (interfaceName.length > MAX_INTERFACE_NAME) throw new ForwardSpecError(`interface name '${interfaceName}' is longer than ${MAX_INTERFACE_NAME} characters in '${spec}'`);
    if (/[\s/:%]/.test(interfaceName)) throw new ForwardSpecError(`'${interfaceName}' is not a valid interface name in '${spec}'`);
  }
  let bindAddress: Uint8Array | null = null;
  if (addressText !== '') {
    // Square brackets are allowed around either family, as in passt.
    const bare = addressText.startsWith('[') && addressText.endsWith(']') ? addressText.slice(1, -1) : addressText;
    bindAddress = parseIp(bare);
    if (bindAddress === null) throw new ForwardSpecError(`'${addressText}' is not an IPv4 or IPv6 address in '${spec}'`);
  } else if (interfaceName === null) {
    throw new ForwardSpecError(`missing address or interface before '/' in '${spec}'`);
  }
  return { bindAddress, interfaceName, ports: spec.slice(slash + 1) };
}

/** Per-port guest port table (-1 = not forwarded) compressed into sorted runs of equal offset. */
function compress(guestPortOf: Int32Array): PortMapping[] {
  const mappings: PortMapping[] = [];
  let port = 1;
  while (port <= 65535) {
    if (guestPortOf[port] < 0) {
      port++;
      continue;
    }
    const first = port;
    const delta = guestPortOf[port] - port;
    while (port + 1 <= 65535 && guestPortOf[port + 1] >= 0 && guestPortOf[port + 1] - (port + 1) === delta) port++;
    mappings.push({ hostPortFirst: first, hostPortLast: port, guestPortFirst: first + delta });
    port++;
  }
  return mappings;
}

/** Identity mappings for every port 1-65535 outside `ephemeral` and `excluded`. */
function everyPortExcept(ephemeral: PortRange, excluded: Uint8Array): Int32Array {
  const guestPortOf = new Int32Array(65536).fill(-1);
  for (let port = 1; port <= 65535; port++) {
    if (port >= ephemeral.first && port <= ephemeral.last) continue;
    if (excluded[port] === 1) continue;
    guestPortOf[port] = port;
  }
  return guestPortOf;
}

/**
 * Parse one port forwarding spec (one -t/-u/-T/-U argument). Returns the
 * mode, the optional bind address/interface and the resulting mappings;
 * throws ForwardSpecError with a one-line reason when malformed.
 */
export function parseForwardSpec(spec: string, rules: Partial<ForwardSpecRules> = {}): ForwardSpec {
  const effective: ForwardSpecRules = { ...DEFAULT_RULES, ...rules };
  const base = { text: spec, bindAddress: null, interfaceName: null };
  if (spec === '') throw new ForwardSpecError('empty port specification');
  if (spec === 'none') return { ...base, mode: 'none', mappings: [], bestEffort: false };
  if (spec === 'auto') {
    if (!effective.allowAuto) throw new ForwardSpecError(`'auto' is only allowed for namespace forwarding (-T/-U)`);
    return { ...base, mode: 'auto', mappings: [], bestEffort: true };
  }
  if (spec === 'all') {
    if (!effective.allowAll) throw new ForwardSpecError(`'all' is only allowed for host-to-guest forwarding (-t/-u)`);
    return { ...base, mode: 'all', mappings: compress(everyPortExcept(effective.ephemeral, new Uint8Array(65536))), bestEffort: true };
  }

  const { bindAddress, interfaceName, ports } = parseBindPrefix(spec, effective);
  const items = ports.split(',');
  // Exclusions first: they apply to ranges given before or after them.
  const excluded = new Uint8Array(65536);
  let excludeOnly = true;
  for (const item of items) {
    if (!item.startsWith('~')) {
      excludeOnly = false;
      continue;
    }
    if (item.includes(':')) throw new ForwardSpecError(`an excluded range cannot be remapped: '${item}' in '${spec}'`);
    const range = parseRange(item.slice(1), spec);
    for (let port = range.first; port <= range.last; port++) {
      if (excluded[port] === 1) throw new ForwardSpecError(`excluded ranges overlap at port ${port} in '${spec}'`);
      excluded[port] = 1;
    }
  }
  if (excludeOnly) {
    return { text: spec, mode: 'ports', bindAddress, interfaceName, mappings: compress(everyPortExcept(effective.ephemeral, excluded)), bestEffort: true };
  }

  const guestPortOf = new Int32Array(65536).fill(-1);
  for (const item of items) {
    if (item.startsWith('~')) continue;
    const colon = item.indexOf(':');
    const host = parseRange(colon === -1 ? item : item.slice(0, colon), spec);
    const guest = colon === -1 ? host : parseRange(item.slice(colon + 1), spec);
    if (guest.last - guest.first !== host.last - host.first) {
      throw new ForwardSpecError(`ranges ${host.first}-${host.last} and ${guest.first}-${guest.last} differ in length in '${spec}'`);
    }
    for (let port = host.first; port <= host.last; port++) {
      if (excluded[port] === 1) continue;
      guestPortOf[port] = guest.first + (port - host.first);
    }
  }
  const mappings = compress(guestPortOf);
  if (mappings.length === 0) throw new ForwardSpecError(`every port is excluded in '${spec}'`);
  return { text: spec, mode: 'ports', bindAddress, interfaceName, mappings, bestEffort: false };
}

/**
 * Check that `next` may follow the specs already given for the same option:
 * passt allows any number of port lists, but none/auto/all only on their own.
 * Throws ForwardSpecError on a conflict.
 */
export function checkForwardSpecCombination(previous: readonly ForwardSpec[], next: ForwardSpec): void {
  if (previous.length === 0) return;
  if (next.mode !== 'ports') throw new ForwardSpecError(`'${next.text}' conflicts with the earlier '${previous[0].text}'`);
  const special = previous.find((spec) => spec.mode !== 'ports');
  if (special !== undefined) throw new ForwardSpecError(`'${next.text}' conflicts with the earlier '${special.text}'`);
}

/**
 * The guest port that host port `hostPort` forwards to under `mappings`
 * (sorted, disjoint, as produced by parseForwardSpec), or -1 when the port
 * is not forwarded. Binary search: O(log n).
 */
export function guestPortFor(mappings: readonly PortMapping[], hostPort: number): number {
  let low = 0;
  let high = mappings.length - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const mapping = mappings[middle];
    if (hostPort < mapping.hostPortFirst) high = middle - 1;
    else if (hostPort > mapping.hostPortLast) low = middle + 1;
    else return mapping.guestPortFirst + (hostPort - mapping.hostPortFirst);
  }
  return -1;
}

/** Number of host ports `mappings` forward (how many listening sockets they need). */
export function forwardedPortCount(mappings: readonly PortMapping[]): number {
  let count = 0;
  for (const mapping of mappings) count += mapping.hostPortLast - mapping.hostPortFirst + 1;
  return count;
}

/** Parse the text of /proc/sys/net/ipv4/ip_local_port_range ("32768\t60999"); null when malformed. */
export function parseEphemeralRange(text: string): PortRange | null {
  const match = /^\s*([0-9]{1,5})\s+([0-9]{1,5})\s*$/.exec(text);
  if (match === null) return null;
  const first = Number(match[1]);
  const last = Number(match[2]);
  if (first < 1 || last > 65535 || last < first) return null;
  return { first, last };
}
