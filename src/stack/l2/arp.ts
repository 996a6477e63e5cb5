/**
 * ARP responder (passt's model): ferry owns the guest's segment, so it
 * answers every ARP request with its own MAC, except for the guest's own
 * address (the guest probing or announcing itself: RFC 5227 probes for its
 * address and gratuitous ARP get no answer, or the guest would see a
 * conflict).
 */
import type { RxFrame, StackContext } from '../context';
import { ARP_PACKET_LENGTH, ArpError, ArpOperation, ArpView, emitArp } from '../wire/arp';
import { ETHERNET_HEADER_LENGTH, EtherType, emitEthernet } from '../wire/ethernet';
import { DropReason, countDrop } from '../drops';

const arp = new ArpView();

/** Bytes of an ARP reply frame (no padding: virtio and tap need none). */
export const ARP_REPLY_FRAME_LENGTH = ETHERNET_HEADER_LENGTH + ARP_PACKET_LENGTH;

function sameIpv4(a: Uint8Array, aOffset: number, b: Uint8Array, bOffset: number): boolean {
  return a[aOffset] === b[bOffset] && a[aOffset + 1] === b[bOffset + 1] && a[aOffset + 2] === b[bOffset + 2] && a[aOffset + 3] === b[bOffset + 3];
}

/**
 * Handle one ARP packet from the guest at frame.bytes[offset], length bytes
 * (contiguous). Replies to requests as described above; counts and drops
 * everything else. Returns true when a reply was queued.
 */
export function handleArp(ctx: StackContext, frame: RxFrame, offset: number, length: number): boolean {
  const ipv4 = ctx.config.ipv4;
  if (ipv4 === null) {
    countDrop(ctx.counters, DropReason.FamilyDisabled);
    return false;
  }
  const bytes = frame.bytes;
  arp.reset(bytes, offset, length);
  const error = arp.validate();
  if (error !== ArpError.Ok) {
    countDrop(ctx.counters, DropReason.ArpMalformed, () => `ARP error ${ArpError[error]}`);
    return false;
  }
  if (arp.operation !== ArpOperation.Request) {
    countDrop(ctx.counters, DropReason.ArpIgnored);
    return false;
  }
  // Announcements (sender == target) and questions about the guest's own
  // address are the guest checking for conflicts: stay silent.
  if (sameIpv4(bytes, arp.senderIpOffset, bytes, arp.targetIpOffset) || sameIpv4(bytes, arp.targetIpOffset, ipv4.address, 0)) {
    countDrop(ctx.counters, DropReason.ArpIgnored);
    return false;
  }
  if (ctx.openFrame(ARP_REPLY_FRAME_LENGTH) < ARP_REPLY_FRAME_LENGTH) {
    ctx.cancelFrame();
    countDrop(ctx.counters, DropReason.NoGuestBuffers);
    return false;
  }
  const out = ctx.out;
  const at = ctx.outOffset;
  const requesterMac = bytes.subarray(arp.senderMacOffset, arp.senderMacOffset + 6);
  emitEthernet(out, at, requesterMac, ctx.config.ourMac, EtherType.Arp);
  emitArp(
    out,
    at + ETHERNET_HEADER_LENGTH,
    ArpOperation.Reply,
    ctx.config.ourMac,
    bytes,
    arp.targetIpOffset, // we are whoever the guest asked for
    bytes,
    arp.senderMacOffset,
    bytes,
    arp.senderIpOffset,
  );
  ctx.commitFrame(ARP_REPLY_FRAME_LENGTH);
  return true;
}
