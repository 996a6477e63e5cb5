/**
 * Ethernet II header view (IEEE 802.3 with an EtherType): 14 bytes,
 * destination MAC, source MAC, EtherType. No FCS (virtio and tap carry none).
 */
import { be16, setBe16 } from './checksum';
import { WireView } from './view';

export const ETHERNET_HEADER_LENGTH = 14;

/** EtherType values the stack knows. */
export const EtherType = {
  Ipv4: 0x0800,
  Arp: 0x0806,
  Vlan: 0x8100,
  Ipv6: 0x86dd,
} as const;

/** Why an Ethernet frame is unusable (0 = fine). */
export enum EthernetError {
  Ok = 0,
  Truncated = 1,
}

/** ff:ff:ff:ff:ff:ff */
export const BROADCAST_MAC = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** A reusable view of an Ethernet header at bytes[offset]; length = bytes of the frame available from offset. */
export class EthernetView extends WireView {
  /** Check the header fits; returns an EthernetError. */
  validate(): EthernetError {
    if (this.length < ETHERNET_HEADER_LENGTH || this.offset + this.length > this.bytes.length) return EthernetError.Truncated;
    return EthernetError.Ok;
  }

  /** Absolute offset of the destination MAC in bytes. */
  get dstOffset(): number {
    return this.offset;
  }

  /** Absolute offset of the source MAC in bytes. */
  get srcOffset(): number {
    return this.offset + 6;
  }

  get etherType(): number {
    return be16(this.bytes, this.offset + 12);
  }

  set etherType(value: number) {
    setBe16(this.bytes, this.offset + 12, value);
  }

  /** Absolute offset of the payload (the L3 header). */
  get payloadOffset(): number {
    return this.offset + ETHERNET_HEADER_LENGTH;
  }

  /** True when the destination has the group bit set (broadcast or multicast). */
  get dstIsMulticast(): boolean {
    return (this.bytes[this.offset] & 1) !== 0;
  }

  /** True when the source has the group bit set (never valid for a sender). */
  get srcIsMulticast(): boolean {
    return (this.bytes[this.offset + 6] & 1) !== 0;
  }

  /** Copy the source MAC into out[outOffset..+6). */
  copySource(out: Uint8Array, outOffset = 0): void {
    out.set(this.bytes.subarray(this.offset + 6, this.offset + 12), outOffset);
  }
}

/** Write an Ethernet header at bytes[offset]; returns the payload offset. */
export function emitEthernet(bytes: Uint8Array, offset: number, dst: Uint8Array, src: Uint8Array, etherType: number): number {
  bytes.set(dst.subarray(0, 6), offset);
  bytes.set(src.subarray(0, 6), offset + 6);
  setBe16(bytes, offset + 12, etherType);
  return offset + ETHERNET_HEADER_LENGTH;
}
