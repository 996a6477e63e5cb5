/**
 * A stack's flow table as the control API shows it: every kind of flow
 * (the stack's TCP, UDP and ICMP echo, pasta's tcp-splice relays and
 * udp-forward clients) with its kind name, addresses, state and byte
 * counts, named by serial number; and closing one through its kind's own
 * closer. Allocates: control path only.
 */
import { formatIp } from '../../stack/address';
import { FlowKind, type FlowTable } from '../../stack/flow/flow-table';
import type { FlowInfo, FlowProtocol } from './control-protocol';

/** The control API's protocol of a flow kind, or null for a kind it does not list. */
export function protocolOfKind(kind: number): FlowProtocol | null {
  switch (kind) {
    case FlowKind.Tcp:
    case FlowKind.TcpSplice:
      return 'tcp';
    case FlowKind.Udp:
    case FlowKind.UdpForward:
      return 'udp';
    case FlowKind.Icmp:
    case FlowKind.Icmpv6:
      return 'icmp';
    default:
      return null;
  }
}

/**
 * The flows of `table` at time `now` (its clock), only `protocol`'s when
 * not null, each with id = its serial number and queuePair = `queuePair`.
 */
export function listTableFlows(table: FlowTable, now: number, queuePair: number, protocol: FlowProtocol | null): FlowInfo[] {
  const out: FlowInfo[] = [];
  for (const flow of table.flows(now)) {
    const name = protocolOfKind(flow.protocol);
    if (name === null || (protocol !== null && name !== protocol)) continue;
    out.push({
      id: flow.serial,
      protocol: name,
      kind: flow.kind,
      state: flow.state,
      inbound: flow.inbound,
      guestAddress: formatIp(flow.guestAddress),
      guestPort: flow.guestPort,
      remoteAddress: formatIp(flow.remoteAddress),
      remotePort: flow.remotePort,
      bytesFromGuest: flow.bytesFromGuest,
      bytesToGuest: flow.bytesToGuest,
      ageMs: Math.max(0, Math.round(flow.ageMs)),
      queuePair,
    });
  }
  return out;
}

/** Close the flow with serial number `serial` through its kind's closer; false when there is no such flow or closer. */
export function closeTableFlow(table: FlowTable, serial: number): boolean {
  return table.closeFlow(table.findSerial(serial));
}
