/**
 * The worker's side of the control API: lists and closes the flows of its
 * stack, and (on the worker that owns the listeners) keeps the forwarding
 * rules in force, -t/-u ones and those added at run time, opening them on
 * every stack the worker builds (a new guest gets a new stack, and the
 * forwards must survive that). Runs on the worker thread; allocation is
 * fine here, none of it is on the packet path.
 */
import { log } from '../../../sys/log';
import { formatIp } from '../../../stack/address';
import type { StackConfig } from '../../../stack/config';
import type { ForwardSpec, PortMapping } from '../../../stack/flow/forward-spec';
import type { ListenError, ListenerInfo } from '../../../stack/tcp/listen';
import { descriptorLimitFailure } from '../../../stack/l4/fd-limit';
import type { FlowInfo, FlowProtocol, ForwardInfo, ForwardProtocol } from '../../control/control-protocol';
import { closeTableFlow, listTableFlows } from '../../control/flow-list';
import type { StackParts } from '../../../stack/stack-factory';
import type { AddForwardOutcome } from './worker-protocol';

/**
 * The flows of a worker's stack, of every kind (only `protocol`'s when not
 * null), each with id = its serial number and queuePair = `queuePair`.
 */
export function listWorkerFlows(parts: StackParts | null, queuePair: number, protocol: FlowProtocol | null): FlowInfo[] {
  const flows = parts?.flows ?? null;
  if (parts === null || flows === null) return [];
  return listTableFlows(flows, parts.stack.ctx.clock.now(), queuePair, protocol);
}

/** Close the flow with serial number `serial` through its kind's own closer; false when there is none. */
export function closeWorkerFlow(parts: StackParts | null, serial: number): boolean {
  const flows = parts?.flows ?? null;
  return flows !== null && closeTableFlow(flows, serial);
}

// ---------------------------------------------------------------------------
// Port ranges

/** Number of host ports in both `a` and `b`. */
function overlapCount(a: readonly PortMapping[], b: readonly PortMapping[]): number {
  let count = 0;
  for (const x of a) {
    for (const y of b) {
      const first = Math.max(x.hostPortFirst, y.hostPortFirst);
      const last = Math.min(x.hostPortLast, y.hostPortLast);
      if (first <= last) count += last - first + 1;
    }
  }
  return count;
}

/** The first host port in both `a` and `b`, or -1. */
function firstOverlap(a: readonly PortMapping[], b: readonly PortMapping[]): number {
  let found = -1;
  for (const x of a) {
    for (const y of b) {
      const first = Math.max(x.hostPortFirst, y.hostPortFirst);
      if (first <= Math.min(x.hostPortLast, y.hostPortLast) && (found < 0 || first < found)) found = first;
    }
  }
  return found;
}

/** True when host port `port` is in one of `ranges`. */
function inRanges(port: number, ranges: readonly PortMapping[]): boolean {
  for (const range of ranges) if (port >= range.hostPortFirst && port <= range.hostPortLast) return true;
  return false;
}

/**
 * `mappings` without the host ports of `remove`; each remaining piece keeps
 * its host-to-guest offset.
 */
export function subtractPorts(mappings: readonly PortMapping[], remove: readonly PortMapping[]): PortMapping[] {
  let pieces = mappings.map((m) => ({ ...m }));
  for (const cut of remove) {
    const next: PortMapping[] = [];
    for (const piece of pieces) {
      if (cut.hostPortLast < piece.hostPortFirst || cut.hostPortFirst > piece.hostPortLast) {
        next.push(piece);
        continue;
      }
      if (piece.hostPortFirst < cut.hostPortFirst) {
        next.push({ hostPortFirst: piece.hostPortFirst, hostPortLast: cut.hostPortFirst - 1, guestPortFirst: piece.guestPortFirst });
      }
      if (piece.hostPortLast > cut.hostPortLast) {
        const first = cut.hostPortLast + 1;
        next.push({ hostPortFirst: first, hostPortLast: piece.hostPortLast, guestPortFirst: piece.guestPortFirst + (first - piece.hostPortFirst) });
      }
    }
    pieces = next;
  }
  return pieces;
}

/** Same bind address (both any, or equal bytes). */
function sameAddress(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/**
 * True when listeners of `a` and `b` on one port could not both bind: an
 * any-address listener collides with every address of its family, two
 * listeners bound to different interfaces do not collide.
 */
function bindsCollide(a: ForwardSpec, b: ForwardSpec): boolean {
  if (a.interfaceName !== null && b.interfaceName !== null && a.interfaceName !== b.interfaceName) return false;
  if (a.bindAddress === null || b.bindAddress === null) return true;
  return sameAddress(a.bindAddress, b.bindAddress);
}

// ---------------------------------------------------------------------------
// Forwarding rules

/** One forwarding rule in force: its listeners carry `tag`. */
interface ForwardRecord {
  tag: number;
  protocol: ForwardProtocol;
  /** The rule as given, with `mappings` trimmed by later removals. */
  spec: ForwardSpec;
  runtime: boolean;
}

/** How one open attempt went. */
interface OpenResult {
  opened: number;
  errors: ListenError[];
}

/**
 * The forwarding rules of the worker that owns the listeners: the -t/-u
 * ones from the configuration, then those added and removed at run time.
 */
export class WorkerForwards {
  private readonly records: ForwardRecord[] = [];
  private nextTag = 1;

  /** Start with the configuration's -t/-u rules (opened by openAll). */
  constructor(config: StackConfig) {
    for (const [protocol, specs] of [
      ['tcp', config.tcpForwards ?? []],
      ['udp', config.udpForwards ?? []],
    ] as const) {
      for (const spec of specs) {
        if (spec.mode === 'none' || spec.mode === 'auto' || spec.mappings.length === 0) continue;
        this.records.push({ tag: this.nextTag++, protocol, spec, runtime: false });
      }
    }
  }

  /** Open every rule's listeners on a freshly built stack; ports that cannot be bound are logged. */
  openAll(parts: StackParts): void {
    for (const record of this.records) {
      const result = this.open(parts, record.protocol, record.spec, record.tag);
      // No descriptor left: startup fails (the worker's error ends the daemon).
      const fatal = result === null ? null : descriptorLimitFailure(record.protocol === 'tcp' ? '-t' : '-u', record.spec.text, result);
      if (fatal !== null) throw fatal;
      if (result === null || record.protocol === 'udp') continue; // UdpService logs its own failures
      for (const error of result.errors) log.warn(`-t: tcp port ${error.port} (IPv${error.family}, '${record.spec.text}'): ${error.code}`);
    }
  }

  /**
   * Add a rule at run time: CONFLICT when one of its ports is already
   * forwarded or cannot be bound (e.g. EADDRINUSE: nothing of the rule is
   * left open then), OK once its listeners are open.
   */
  add(parts: StackParts | null, protocol: ForwardProtocol, spec: ForwardSpec): AddForwardOutcome {
    const off = this.unavailable(parts, protocol);
    if (off !== null) return { status: 'CONFLICT', message: off };
    for (const record of this.records) {
      if (record.protocol !== protocol || !bindsCollide(record.spec, spec)) continue;
      const port = firstOverlap(record.spec.mappings, spec.mappings);
      if (port >= 0) return { status: 'CONFLICT', message: `${protocol} port ${port} is already forwarded ('${record.spec.text}')` };
    }
    const tag = this.nextTag++;
    const result = parts === null ? null : this.open(parts, protocol, spec, tag);
    if (parts === null || result === null) return { status: 'CONFLICT', message: `${protocol} forwarding is off in this ferry` };
    if (result.errors.length > 0 || result.opened === 0) {
      // All or nothing: a rule half in force would surprise whoever added it.
      this.closeTagged(parts, protocol, () => true, tag);
      const first = result.errors[0];
      if (first === undefined) return { status: 'CONFLICT', message: `no ${protocol} socket could be opened for '${spec.text}'` };
      const why = `${protocol} port ${first.port} (IPv${first.family}): ${first.code}`;
      return { status: first.code === 'EADDRINUSE' ? 'CONFLICT' : 'INTERNAL', message: first.code === 'EADDRINUSE' ? `${why}: the port is in use on the host` : why };
    }
    this.records.push({ tag, protocol, spec, runtime: true });
    log.info(`control: forwarding ${protocol} ${spec.text} (${result.opened} sockets)`);
    return { status: 'OK', message: `${result.opened} sockets listening` };
  }

  /**
   * Stop forwarding the host ports of `spec` (guest ports ignored; with a
   * bind address or interface, only rules bound to the same). Returns the
   * number of host ports no longer forwarded, 0 when none matched.
   */
  remove(parts: StackParts | null, protocol: ForwardProtocol, spec: ForwardSpec): number {
    let removed = 0;
    for (let i = 0; i < this.records.length; i++) {
      const record = this.records[i];
      if (record.protocol !== protocol) continue;
      if (spec.bindAddress !== null && !sameAddress(spec.bindAddress, record.spec.bindAddress)) continue;
      if (spec.interfaceName !== null && spec.interfaceName !== record.spec.interfaceName) continue;
      const count = overlapCount(record.spec.mappings, spec.mappings);
      if (count === 0) continue;
      removed += count;
      if (parts !== null) this.closeTagged(parts, protocol, (listener) => inRanges(listener.hostPort, spec.mappings), record.tag);
      const left = subtractPorts(record.spec.mappings, spec.mappings);
      if (left.length === 0) this.records.splice(i--, 1);
      else record.spec = { ...record.spec, mappings: left };
    }
    if (removed > 0) log.info(`control: no longer forwarding ${protocol} ${spec.text} (${removed} ports)`);
    return removed;
  }

  /** The rules in force, for ListForwards. */
  list(): ForwardInfo[] {
    return this.records.map((record) => ({
      protocol: record.protocol,
      spec: record.spec.text,
      bindAddress: record.spec.bindAddress === null ? '' : formatIp(record.spec.bindAddress),
      interface: record.spec.interfaceName ?? '',
      mappings: record.spec.mappings.map((m) => ({ hostPortFirst: m.hostPortFirst, hostPortLast: m.hostPortLast, guestPortFirst: m.guestPortFirst })),
      runtime: record.runtime,
    }));
  }

  /** Why `protocol` cannot be forwarded on this stack, or null when it can. */
  private unavailable(parts: StackParts | null, protocol: ForwardProtocol): string | null {
    if (parts === null) return 'this ferry runs without a network stack';
    if (protocol === 'tcp' && parts.tcpListeners === null) return 'TCP is off in this ferry (--no-tcp)';
    if (protocol === 'udp' && parts.udp === null) return 'UDP is off in this ferry (--no-udp)';
    return null;
  }

  /** Open one rule's listeners with `tag`; null when the protocol is off. */
  private open(parts: StackParts, protocol: ForwardProtocol, spec: ForwardSpec, tag: number): OpenResult | null {
    if (protocol === 'tcp') {
      if (parts.tcpListeners === null) return null;
      const result = parts.tcpListeners.openTagged([spec], tag);
      return { opened: result.opened, errors: result.errors };
    }
    if (parts.udp === null) return null;
    return parts.udp.listenTagged([spec], tag);
  }

  /** Close the listeners of rule `tag` that `match` selects. */
  private closeTagged(parts: StackParts, protocol: ForwardProtocol, match: (listener: ListenerInfo) => boolean, tag: number): void {
    const selected = (listener: ListenerInfo): boolean => listener.tag === tag && match(listener);
    if (protocol === 'tcp') parts.tcpListeners?.closeWhere(selected);
    else parts.udp?.closeListeners(selected);
  }
}
