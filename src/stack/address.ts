/**
 * IPv4/IPv6/MAC text <-> bytes helpers and the small address computations
 * the control plane needs (prefix masks, EUI-64 link-local, solicited-node
 * multicast). Addresses are Uint8Array (4 or 16 bytes, 6 for MACs) so they
 * can be compared against packet bytes directly. Not used per packet for
 * parsing text: these run at configuration time and in tests.
 */

/** Parse dotted-quad IPv4 text; returns 4 bytes or null when malformed. */
export function parseIpv4(text: string): Uint8Array | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i];
    // Decimal only, no leading zeros (they are octal to some parsers: ambiguous).
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return null;
    const value = Number(part);
    if (value > 255) return null;
    out[i] = value;
  }
  return out;
}

/** Format 4 bytes as dotted-quad text. */
export function formatIpv4(bytes: Uint8Array): string {
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
}

/**
 * Parse IPv6 text (RFC 4291 2.2: `::` compression, embedded dotted IPv4 in
 * the last 32 bits; a `%zone` suffix is rejected). Returns 16 bytes or null.
 */
export function parseIpv6(text: string): Uint8Array | null {
  if (text.length === 0 || text.length > 45) return null;
  const doubleColon = text.indexOf('::');
  if (doubleColon !== -1 && text.indexOf('::', doubleColon + 1) !== -1) return null;
  const head = doubleColon === -1 ? text : text.slice(0, doubleColon);
  const tail = doubleColon === -1 ? '' : text.slice(doubleColon + 2);
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === '' ? [] : tail.split(':');
  const words: number[] = [];
  const tailWords: number[] = [];
  const parseGroups = (groups: string[], into: number[], mayEndWithIpv4: boolean): boolean => {
    for (let i = 0; i < groups.length; i++) {
      const group = groups[i];
      if (mayEndWithIpv4 && i === groups.length - 1 && group.includes('.')) {
        const v4 = parseIpv4(group);
        if (v4 === null) return false;
        into.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(group)) return false;
      into.push(parseInt(group, 16));
    }
    return true;
  };
  // Embedded IPv4 may only be the very last group of the whole address.
  if (!parseGroups(headGroups, words, doubleColon === -1)) return null;
  if (!parseGroups(tailGroups, tailWords, true)) return null;
  if (doubleColon === -1) {
    if (words.length !== 8) return null;
  } else {
    // '::' stands for at least one zero group.
    if (words.length + tailWords.length > 7) return null;
    while (words.length + tailWords.length < 8) words.push(0);
  }
  words.push(...tailWords);
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[2 * i] = words[i] >> 8;
    out[2 * i + 1] = words[i] & 0xff;
  }
  return out;
}

/**
 * Format 16 bytes as canonical IPv6 text (RFC 5952: lower case, longest run
 * of two or more zero groups compressed, first such run on ties; IPv4-mapped
 * addresses keep a dotted tail).
 */
export function formatIpv6(bytes: Uint8Array): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  const isV4Mapped = words[0] === 0 && words[1] === 0 && words[2] === 0 && words[3] === 0 && words[4] === 0 && words[5] === 0xffff;
  if (isV4Mapped) return `::ffff:${formatIpv4(bytes.subarray(12, 16))}`;
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number): string => words.slice(from, to).map((w) => w.toString(16)).join(':');
  if (bestLength < 2) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

/** Parse either family: 4 bytes for IPv4 text, 16 for IPv6, null otherwise. */
export function parseIp(text: string): Uint8Array | null {
  return text.includes(':') ? parseIpv6(text) : parseIpv4(text);
}

/** Format 4 or 16 bytes as text (the family follows from the length). */
export function formatIp(bytes: Uint8Array): string {
  return bytes.length === 4 ? formatIpv4(bytes) : formatIpv6(bytes);
}

/** Parse a MAC address 'aa:bb:cc:dd:ee:ff' (also '-' separated); null when malformed. */
export function parseMac(text: string): Uint8Array | null {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6) return null;
  const out = new Uint8Array(6);
  for (let i = 0; i < 6; i++) {
    if (!/^[0-9a-fA-F]{2}$/.test(parts[i])) return null;
    out[i] = parseInt(parts[i], 16);
  }
  return out;
}

/** Format 6 bytes as 'aa:bb:cc:dd:ee:ff'. */
export function formatMac(bytes: Uint8Array): string {
  return Array.from(bytes.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** True when a and b hold the same bytes (same length). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** True when bytes [offset, offset+address.length) of packet equal address. */
export function equalsAt(packet: Uint8Array, offset: number, address: Uint8Array): boolean {
  if (offset < 0 || offset + address.length > packet.length) return false;
  for (let i = 0; i < address.length; i++) if (packet[offset + i] !== address[i]) return false;
  return true;
}

/** True when a[aOffset..] equals b[0..length) (no bounds check: the caller knows both hold length bytes). */
export function equalAt(a: Uint8Array, aOffset: number, b: Uint8Array, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aOffset + i] !== b[i]) return false;
  return true;
}

/** A copy of `address` with all bits past `prefixLength` cleared (the network address). */
export function maskAddress(address: Uint8Array, prefixLength: number): Uint8Array {
  const out = new Uint8Array(address.length);
  const bits = Math.max(0, Math.min(prefixLength, address.length * 8));
  for (let i = 0; i < address.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - 8 * i));
    out[i] = address[i] & ((0xff00 >> keep) & 0xff);
  }
  return out;
}

/** True when `address` lies in network/prefixLength (same family required). */
export function prefixContains(network: Uint8Array, prefixLength: number, address: Uint8Array): boolean {
  if (network.length !== address.length) return false;
  return bytesEqual(maskAddress(network, prefixLength), maskAddress(address, prefixLength));
}

/** IPv4 netmask bytes for a prefix length (24 -> 255.255.255.0). */
export function netmaskFromPrefix(prefixLength: number): Uint8Array {
  return maskAddress(new Uint8Array([255, 255, 255, 255]), prefixLength);
}

/** Prefix length of a contiguous IPv4 netmask, or -1 when the mask has holes. */
export function prefixFromNetmask(mask: Uint8Array): number {
  let length = 0;
  let seenZero = false;
  for (let i = 0; i < mask.length * 8; i++) {
    const bit = (mask[i >> 3] >> (7 - (i & 7))) & 1;
    if (bit === 1) {
      if (seenZero) return -1;
      length++;
    } else {
      seenZero = true;
    }
  }
  return length;
}

/** fe80::/64 link-local address with the modified EUI-64 interface id of `mac` (RFC 4291 app. A). */
export function linkLocalFromMac(mac: Uint8Array): Uint8Array {
  const out = new Uint8Array(16);
  out[0] = 0xfe;
  out[1] = 0x80;
  out[8] = mac[0] ^ 0x02; // flip the universal/local bit
  out[9] = mac[1];
  out[10] = mac[2];
  out[11] = 0xff;
  out[12] = 0xfe;
  out[13] = mac[3];
  out[14] = mac[4];
  out[15] = mac[5];
  return out;
}

/** Solicited-node multicast address ff02::1:ffXX:XXXX for `address` (RFC 4291 2.7.1). */
export function solicitedNodeAddress(address: Uint8Array): Uint8Array {
  const out = new Uint8Array(16);
  out[0] = 0xff;
  out[1] = 0x02;
  out[11] = 0x01;
  out[12] = 0xff;
  out[13] = address[13];
  out[14] = address[14];
  out[15] = address[15];
  return out;
}

/** Ethernet multicast MAC 33:33:xx:xx:xx:xx for an IPv6 multicast address (RFC 2464 7). */
export function multicastMacForIpv6(address: Uint8Array): Uint8Array {
  return new Uint8Array([0x33, 0x33, address[12], address[13], address[14], address[15]]);
}

/** MAC 33:33:ff:xx:xx:xx of the solicited-node group of `address`. */
export function solicitedNodeMac(address: Uint8Array): Uint8Array {
  return multicastMacForIpv6(solicitedNodeAddress(address));
}

/** True for IPv6 fe80::/10. */
export function isIpv6LinkLocal(address: Uint8Array): boolean {
  return address[0] === 0xfe && (address[1] & 0xc0) === 0x80;
}

/** True for IPv6 ff00::/8. */
export function isIpv6Multicast(address: Uint8Array): boolean {
  return address[0] === 0xff;
}

/** True for :: (all zero, any length). */
export function isUnspecified(address: Uint8Array): boolean {
  for (let i = 0; i < address.length; i++) if (address[i] !== 0) return false;
  return true;
}

/** True for 127.0.0.0/8 (4 bytes) or ::1 (16 bytes). */
export function isLoopback(address: Uint8Array): boolean {
  if (address.length === 4) return address[0] === 127;
  return isIpv6LoopbackAt(address, 0);
}

/** True when bytes[offset, offset+16) is ::1. */
export function isIpv6LoopbackAt(bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < 15; i++) if (bytes[offset + i] !== 0) return false;
  return bytes[offset + 15] === 1;
}

/** ff02::1, all nodes on the link. */
export const IPV6_ALL_NODES = new Uint8Array([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
/** ff02::2, all routers on the link. */
export const IPV6_ALL_ROUTERS = new Uint8Array([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02]);
/** ff02::1:2, all DHCPv6 relay agents and servers. */
export const IPV6_ALL_DHCP_SERVERS = new Uint8Array([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0x02]);

/**
 * True when the low 64 bits of the IPv6 address at bytes[offset..+16) are
 * the modified EUI-64 interface id of `mac` (an address SLAAC would form
 * for that MAC, link-local or global).
 */
export function interfaceIdMatchesMac(bytes: Uint8Array, offset: number, mac: Uint8Array, macOffset = 0): boolean {
  if (offset < 0 || offset + 16 > bytes.length || macOffset < 0 || macOffset + 6 > mac.length) return false;
  return (
    bytes[offset + 8] === (mac[macOffset] ^ 0x02) &&
    bytes[offset + 9] === mac[macOffset + 1] &&
    bytes[offset + 10] === mac[macOffset + 2] &&
    bytes[offset + 11] === 0xff &&
    bytes[offset + 12] === 0xfe &&
    bytes[offset + 13] === mac[macOffset + 3] &&
    bytes[offset + 14] === mac[macOffset + 4] &&
    bytes[offset + 15] === mac[macOffset + 5]
  );
}
