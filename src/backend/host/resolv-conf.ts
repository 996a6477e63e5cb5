/**
 * The host's resolvers and search domains from resolv.conf(5), as the
 * guest is told about them (DHCP, DHCPv6, RDNSS/DNSSL).
 */
import * as fs from 'fs';
import { log } from '../../sys/log';
import { parseIp } from '../../stack/address';

/** What resolv.conf says. */
export interface ResolvConf {
  /** `nameserver` addresses in file order (4 or 16 bytes each), duplicates removed. */
  nameservers: Uint8Array[];
  /** The last `search` or `domain` line wins, as in glibc. */
  searchDomains: string[];
}

/** More than this is never useful to a guest (glibc reads 3). */
export const MAX_NAMESERVERS = 8;
export const MAX_SEARCH_DOMAINS = 16;
/** A resolv.conf larger than this is not read (it is not a resolv.conf). */
const MAX_FILE_BYTES = 1 << 20;

/**
 * Parse resolv.conf text. Unknown keywords, malformed addresses and
 * comments ('#' or ';' at the start of a line, or after a value) are
 * ignored; an IPv6 zone ('%eth0') is dropped with the address (the guest
 * cannot use a host link-local resolver anyway).
 */
export function parseResolvConf(text: string): ResolvConf {
  const nameservers: Uint8Array[] = [];
  const seen = new Set<string>();
  let searchDomains: string[] = [];
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.replace(/[#;].*$/, '').trim();
    if (line.length === 0) continue;
    const [keyword, ...values] = line.split(/\s+/);
    if (keyword === 'nameserver') {
      if (values.length === 0 || nameservers.length >= MAX_NAMESERVERS) continue;
      const text = values[0];
      if (text.includes('%')) continue;
      const address = parseIp(text);
      if (address === null) continue;
      const key = Buffer.from(address).toString('hex');
      if (seen.has(key)) continue;
      seen.add(key);
      nameservers.push(address);
    } else if (keyword === 'search' || keyword === 'domain') {
      const domains = values
        .map((d) => (d.endsWith('.') ? d.slice(0, -1) : d))
        .filter((d) => d.length > 0 && d.length <= 253 && d !== '.');
      searchDomains = (keyword === 'domain' ? domains.slice(0, 1) : domains).slice(0, MAX_SEARCH_DOMAINS);
    }
  }
  return { nameservers, searchDomains };
}

/** Read and parse a resolv.conf; a missing or unreadable file gives empty lists (one log line). */
export function readResolvConf(path = '/etc/resolv.conf'): ResolvConf {
  try {
    const stat = fs.statSync(path);
    if (stat.size > MAX_FILE_BYTES) {
      log.warn(`resolv.conf: ${path} is ${stat.size} bytes, ignored`);
      return { nameservers: [], searchDomains: [] };
    }
    return parseResolvConf(fs.readFileSync(path, 'utf8'));
  } catch (e) {
    log.warn(`resolv.conf: cannot read ${path}: ${(e as Error).message}; no resolvers from the host`);
    return { nameservers: [], searchDomains: [] };
  }
}
