/**
 * What TCP and UDP do alike with the guest's addresses and their host
 * sockets: remember the address the guest sends from (inbound flows go
 * there) and bind outbound sockets to the --outbound-if interface and the
 * -o address.
 */
import type { StackConfig } from '../config';
import type { StackSockets } from '../context';
import { rateLimited } from '../../sys/log';
import { errorCode } from '../../sys/errno';
import { equalAt } from '../address';
import { isGroupOrUnspecified } from '../flow/address-map';
import { SOL_SOCKET, SO_BINDTODEVICE } from '../../sys/linux';

/**
 * The guest's address as last seen in its packets (passt's addr_seen),
 * initially the configured one: inbound flows go there, so a guest with
 * another address (SLAAC next to the host's, a static one) still gets them
 * once it has sent something. Unspecified sources and IPv6 link-local or
 * multicast ones are not taken (inbound flows are for a global address).
 */
export class SeenGuestAddress {
  readonly v4 = new Uint8Array(4);
  readonly v6 = new Uint8Array(16);

  constructor(config: StackConfig) {
    if (config.ipv4 !== null) this.v4.set(config.ipv4.address.subarray(0, 4));
    if (config.ipv6 !== null) this.v6.set(config.ipv6.address.subarray(0, 16));
  }

  /** The address for `family` (4 or 16 bytes, reused: copy it to keep it). */
  of(family: 4 | 6): Uint8Array {
    return family === 4 ? this.v4 : this.v6;
  }

  /** Take the source address at bytes[src] of a guest packet. */
  note(family: 4 | 6, bytes: Uint8Array, src: number): void {
    if (family === 4) {
      if ((bytes[src] | bytes[src + 1] | bytes[src + 2] | bytes[src + 3]) === 0 || equalAt(bytes, src, this.v4, 4)) return;
      for (let i = 0; i < 4; i++) this.v4[i] = bytes[src + i];
      return;
    }
    if (equalAt(bytes, src, this.v6, 16)) return;
    if ((bytes[src] === 0xfe && (bytes[src + 1] & 0xc0) === 0x80) || isGroupOrUnspecified(6, bytes, src)) return;
    for (let i = 0; i < 16; i++) this.v6[i] = bytes[src + i];
  }
}

/** SO_BINDTODEVICE to the outbound interface (-i); a failure is logged rarely (per `protocol`) and ignored. */
export function bindToDevice(sockets: Pick<StackSockets, 'setsockoptBytes'>, fd: number, name: string, protocol: 'tcp' | 'udp'): void {
  try {
    sockets.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(name + '\0', 'latin1'));
  } catch (e) {
    rateLimited('warn', `${protocol} bind`, () => `${protocol}: SO_BINDTODEVICE ${name}: ${errorCode(e)}`, 1, 600_000);
  }
}

/** The interface outbound sockets of `family` are bound to (--outbound-if4/6), or null. */
export function outboundInterface(config: StackConfig, family: 4 | 6): string | null {
  const specific = family === 4 ? config.outboundIf4 : config.outboundIf6;
  return specific !== undefined ? specific : config.interfaceName;
}

/** The source address outbound sockets of `family` bind to (-o/--outbound), or null. */
export function outboundAddress(config: StackConfig, family: 4 | 6): Uint8Array | null {
  return (family === 4 ? config.outbound4 : config.outbound6) ?? null;
}
