/**
 * Why the stack dropped a frame from the guest, as counter slots
 * (ferry_stack_drops_total{reason=...}) and a rate-limited log line.
 *
 * Reasons are small integers so the hot path indexes an array; the label
 * text is only used for the metric and for log lines.
 */
import { type CounterBlock, defineCounter } from '../sys/counters';
import { rateLimited } from '../sys/log';

/** Reasons the stack drops guest frames. */
export enum DropReason {
  /** Shorter than an Ethernet header, or the scatter list is inconsistent. */
  EthernetTruncated,
  /** An EtherType the stack does not handle (VLAN tags, IPX, ...). */
  UnsupportedEtherType,
  /** Headers split across segments need more bytes than the scratch buffer holds. */
  SplitHeadersTooLong,
  ArpMalformed,
  /** ARP replies and requests ferry does not answer (the guest's own address). */
  ArpIgnored,
  Ipv4Truncated,
  Ipv4BadVersion,
  Ipv4BadIhl,
  Ipv4BadTotalLength,
  Ipv4BadChecksum,
  /** An IPv4 fragment reassembly does not take (reassembly off). */
  Ipv4Fragment,
  Ipv6Truncated,
  Ipv6BadVersion,
  Ipv6BadPayloadLength,
  Ipv6ExtensionTruncated,
  Ipv6TooManyExtensions,
  Ipv6Fragment,
  UdpMalformed,
  UdpBadChecksum,
  TcpMalformed,
  IcmpMalformed,
  IcmpBadChecksum,
  /** ICMP types other than echo request from the guest. */
  IcmpUnsupported,
  DhcpMalformed,
  /** DHCP messages ferry does not answer (DECLINE, relayed, unknown type...). */
  DhcpIgnored,
  /** No handler for this protocol is installed (e.g. TCP before translation exists). */
  NoHandler,
  /** IPv4 or IPv6 is disabled in the configuration. */
  FamilyDisabled,
  /** The guest had no receive buffers for a reply. */
  NoGuestBuffers,
  /** Ping sockets are not allowed (net.ipv4.ping_group_range) or failed. */
  EchoSocketUnavailable,
  /** Sending an echo request on the host socket failed. */
  EchoSendFailed,
  /** The echo flow table is full. */
  EchoTableFull,
  /** An exception escaped a handler: a bug, counted so it is visible. */
  InternalError,
  /** A guest SYN for one of ferry's own listening sockets on the host (config.ownTcpPorts): answered with an RST. */
  TcpToOwnPort,
  /** A fragment overlapping one already held (RFC 5722): its whole datagram is discarded. */
  FragmentOverlap,
  /** An exact copy of a fragment already held: ignored. */
  FragmentDuplicate,
  /** A fragment with inconsistent offsets/lengths, or a datagram over 65535 bytes. */
  FragmentMalformed,
  /** A datagram not completed within the reassembly timeout (counted once per datagram). */
  FragmentTimeout,
  /** A datagram given up to make room (datagram or byte bound of reassembly). */
  FragmentEvicted,
  /** An IPv6 fragment whose Fragment header does not directly follow the fixed header. */
  FragmentUnsupported,
}

/** Label text per DropReason, in enum order. */
export const DROP_REASON_LABELS: readonly string[] = [
  'ethernet_truncated',
  'unsupported_ethertype',
  'split_headers_too_long',
  'arp_malformed',
  'arp_ignored',
  'ipv4_truncated',
  'ipv4_bad_version',
  'ipv4_bad_ihl',
  'ipv4_bad_total_length',
  'ipv4_bad_checksum',
  'ipv4_fragment',
  'ipv6_truncated',
  'ipv6_bad_version',
  'ipv6_bad_payload_length',
  'ipv6_extension_truncated',
  'ipv6_too_many_extensions',
  'ipv6_fragment',
  'udp_malformed',
  'udp_bad_checksum',
  'tcp_malformed',
  'icmp_malformed',
  'icmp_bad_checksum',
  'icmp_unsupported',
  'dhcp_malformed',
  'dhcp_ignored',
  'no_handler',
  'family_disabled',
  'no_guest_buffers',
  'echo_socket_unavailable',
  'echo_send_failed',
  'echo_table_full',
  'internal_error',
  'tcp_to_own_port',
  'fragment_overlap',
  'fragment_duplicate',
  'fragment_malformed',
  'fragment_timeout',
  'fragment_evicted',
  'fragment_unsupported',
];

const DROP_HELP = 'Frames from the guest dropped by the stack, by reason';

/** Counter slot per DropReason. */
export const DROP_SLOTS: readonly number[] = DROP_REASON_LABELS.map((reason) => defineCounter('ferry_stack_drops_total', DROP_HELP, { reason }));

/** Reasons that mean a malformed or hostile guest frame (worth a warning); others are routine. */
const MALFORMED_REASONS: readonly DropReason[] = [
  DropReason.EthernetTruncated,
  DropReason.SplitHeadersTooLong,
  DropReason.ArpMalformed,
  DropReason.Ipv4Truncated,
  DropReason.Ipv4BadVersion,
  DropReason.Ipv4BadIhl,
  DropReason.Ipv4BadTotalLength,
  DropReason.Ipv4BadChecksum,
  DropReason.Ipv6Truncated,
  DropReason.Ipv6BadVersion,
  DropReason.Ipv6BadPayloadLength,
  DropReason.Ipv6ExtensionTruncated,
  DropReason.Ipv6TooManyExtensions,
  DropReason.UdpMalformed,
  DropReason.UdpBadChecksum,
  DropReason.TcpMalformed,
  DropReason.IcmpMalformed,
  DropReason.IcmpBadChecksum,
  DropReason.DhcpMalformed,
  DropReason.InternalError,
  DropReason.FragmentOverlap,
  DropReason.FragmentMalformed,
];

/** 1 at index r when reason r is logged (an array lookup on the hot path, not a Set). */
const LOGGED = new Uint8Array(DROP_REASON_LABELS.length);
for (const reason of MALFORMED_REASONS) LOGGED[reason] = 1;

/** The metric label for a reason. */
export function dropReasonLabel(reason: DropReason): string {
  return DROP_REASON_LABELS[reason] ?? 'unknown';
}

/**
 * Count one dropped frame and, for malformed input, log a rate-limited line
 * (at most a few per reason per 10 s). `detail` is built only when logged.
 */
export function countDrop(counters: CounterBlock, reason: DropReason, detail?: () => string): void {
  counters.add(DROP_SLOTS[reason]);
  if (LOGGED[reason] === 1) {
    const label = DROP_REASON_LABELS[reason];
    rateLimited(reason === DropReason.InternalError ? 'error' : 'warn', `stack drop ${label}`, () =>
      detail === undefined ? `stack: dropped guest frame: ${label}` : `stack: dropped guest frame: ${label}: ${detail()}`,
    );
  }
}
