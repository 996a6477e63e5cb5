/**
 * ARP packet view (RFC 826) for Ethernet/IPv4 only: 28 bytes.
 */
import { be16, setBe16 } from './checksum';
import { WireView } from './view';

export const ARP_PACKET_LENGTH = 28;

/** ARP opcodes (RFC 826). */
export const ArpOperation = {
  Request: 1,
  Reply: 2,
} as const;

/** Why an ARP packet is unusable (0 = fine). */
export enum ArpError {
  Ok = 0,
  Truncated = 1,
  /** Hardware type not Ethernet (1) or hardware length not 6. */
  BadHardware = 2,
  /** Protocol type not IPv4 or protocol length not 4. */
  BadProtocol = 3,
  /** Operation neither request nor reply. */
  BadOperation = 4,
}

/** A reusable view of an ARP packet at bytes[offset]. */
export class ArpView extends WireView {
  /** Check size and the fixed fields for Ethernet/IPv4; returns an ArpError. */
  validate(): ArpError {
    if (this.length < ARP_PACKET_LENGTH || this.offset + ARP_PACKET_LENGTH > this.bytes.length) return ArpError.Truncated;
    if (this.hardwareType !== 1 || this.bytes[this.offset + 4] !== 6) return ArpError.BadHardware;
    if (this.protocolType !== 0x0800 || this.bytes[this.offset + 5] !== 4) return ArpError.BadProtocol;
    const op = this.operation;
    if (op !== ArpOperation.Request && op !== ArpOperation.Reply) return ArpError.BadOperation;
    return ArpError.Ok;
  }

  get hardwareType(): number {
    return be16(this.bytes, this.offset);
  }

  get protocolType(): number {
    return be16(this.bytes, this.offset + 2);
  }

  get operation(): number {
    return be16(this.bytes, this.offset + 6);
  }

  set operation(value: number) {
    setBe16(this.bytes, this.offset + 6, value);
  }

  /** Absolute offset of the sender hardware address. */
  get senderMacOffset(): number {
    return this.offset + 8;
  }

  /** Absolute offset of the sender protocol address. */
  get senderIpOffset(): number {
    return this.offset + 14;
  }

  /** Absolute offset of the target hardware address. */
  get targetMacOffset(): number {
    return this.offset + 18;
  }

  /** Absolute offset of the target protocol address. */
  get targetIpOffset(): number {
    return this.offset + 24;
  }
}

/**
 * Write an Ethernet/IPv4 ARP packet at bytes[offset] (addresses given as
 * byte arrays with their offsets). Returns the offset after it.
 */
export function emitArp(
  bytes: Uint8Array,
  offset: number,
  operation: number,
  senderMac: Uint8Array,
  senderIp: Uint8Array,
  senderIpOffset: number,
  targetMac: Uint8Array,
  targetMacOffset: number,
  targetIp: Uint8Array,
  targetIpOffset: number,
): number {
  setBe16(bytes, offset, 1);
  setBe16(bytes, offset + 2, 0x0800);
  bytes[offset + 4] = 6;
  bytes[offset + 5] = 4;
  setBe16(bytes, offset + 6, operation);
  bytes.set(senderMac.subarray(0, 6), offset + 8);
  // Byte loops rather than subarray(): no per-packet allocation.
  for (let i = 0; i < 4; i++) bytes[offset + 14 + i] = senderIp[senderIpOffset + i];
  for (let i = 0; i < 6; i++) bytes[offset + 18 + i] = targetMac[targetMacOffset + i];
  for (let i = 0; i < 4; i++) bytes[offset + 24 + i] = targetIp[targetIpOffset + i];
  return offset + ARP_PACKET_LENGTH;
}
