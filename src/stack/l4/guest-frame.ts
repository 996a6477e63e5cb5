/**
 * Headers of a TCP segment or UDP datagram to the guest, written around a
 * payload the socket already put in the RX reservation: Ethernet and IP
 * from the flow's slot in the FlowTable (its remote to the guest), in
 * place when the reservation's first segment holds them, else in a scratch
 * copied in before the commit.
 */
import type { FramePort, SegmentList } from '../../io/frame-io';
import type { StackContext } from '../context';
import { ADDRESS_SLOT, type FlowTable } from '../flow/flow-table';
import { ETHERNET_HEADER_LENGTH, EtherType, emitEthernet } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH, emitIpv4 } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH, emitIpv6 } from '../wire/ipv6';
import { pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from '../wire/checksum';

/** Ethernet + IPv6 + the longest TCP header, the most a frame's headers take. */
const MAX_HEADERS = ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + 60;

/** Ethernet + IP header bytes of a frame to the guest. */
export function ipHeadersLength(family: number): number {
  return ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH);
}

/**
 * Where a frame's headers go: `out[at...]` is the reservation itself when
 * its first segment holds `headerLength` bytes, else a scratch that end()
 * copies in. One per translator, reused for every frame.
 */
export class HeaderWindow {
  out: Uint8Array;
  at = 0;
  private inPlace = false;
  private length = 0;
  private readonly scratch = new Uint8Array(MAX_HEADERS);

  constructor() {
    this.out = this.scratch;
  }

  /** Open the window on list's first headerLength bytes (at most MAX_HEADERS). */
  begin(list: SegmentList, headerLength: number): void {
    this.length = headerLength;
    this.inPlace = list.lengths[0] >= headerLength;
    this.out = this.inPlace ? list.buffers[0] : this.scratch;
    this.at = this.inPlace ? list.offsets[0] : 0;
  }

  /** Put the headers into the reservation (a copy only when they were not written in place). */
  end(list: SegmentList): void {
    if (!this.inPlace) list.copyIn(0, this.scratch, 0, this.length);
  }
}

const src = new Uint8Array(16);
const dst = new Uint8Array(16);

/**
 * Ethernet (ferry to the guest's MAC) and IPv4/IPv6 headers at out[at] for
 * a frame of flow `id` from its remote to its guest address, carrying
 * `protocol` with l4Length bytes. Returns the L4 offset.
 */
export function emitFlowIpHeaders(out: Uint8Array, at: number, ctx: StackContext, flows: FlowTable, id: number, protocol: number, l4Length: number): number {
  const v4 = flows.family[id] === 4;
  const base = id * ADDRESS_SLOT;
  const length = v4 ? 4 : 16;
  for (let i = 0; i < length; i++) {
    src[i] = flows.remoteAddress[base + i];
    dst[i] = flows.guestAddress[base + i];
  }
  const l3 = emitEthernet(out, at, ctx.guestMac, ctx.config.ourMac, v4 ? EtherType.Ipv4 : EtherType.Ipv6);
  return v4 ? emitIpv4(out, l3, src, dst, protocol, l4Length) : emitIpv6(out, l3, src, dst, protocol, l4Length);
}

/** The pseudo-header sum of a frame of flow `id` to the guest (remote to guest, `protocol`, l4Length bytes). */
export function flowPseudoSum(flows: FlowTable, id: number, protocol: number, l4Length: number): number {
  const base = id * ADDRESS_SLOT;
  return flows.family[id] === 4
    ? pseudoHeaderSumIpv4(flows.remoteAddress, base, flows.guestAddress, base, protocol, l4Length)
    : pseudoHeaderSumIpv6(flows.remoteAddress, base, flows.guestAddress, base, protocol, l4Length);
}

/**
 * Call `listener` too when the guest posts RX buffers again
 * (port.onWritable), after any listener already there: TCP and UDP both
 * resume on it.
 */
export function addWritableListener(port: FramePort, listener: () => void): void {
  const previous = port.onWritable;
  port.onWritable = previous === null ? listener : () => {
    previous();
    listener();
  };
}
