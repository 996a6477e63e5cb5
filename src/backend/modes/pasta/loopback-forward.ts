/**
 * What pasta's loopback forwarders share: the (listen, target) ports of
 * -T/-U specs, loopback sockaddrs, listeners bound to the namespace's
 * loopback, and the forwarding counters.
 */
import { defineCounter } from '../../../sys/counters';
import { log } from '../../../sys/log';
import { native } from '../../../sys/native';
import type { ForwardSpec } from '../../../stack/flow/forward-spec';
import { writeSockaddr } from '../../../sys/sockaddr';

/** One forwarded port: listen on `listenPort` in the namespace, go to `targetPort` on the host's loopback. */
export interface PortForward {
  listenPort: number;
  targetPort: number;
}

/** Bound on ports a spec may expand to (each needs sockets opened in the namespace). */
export const MAX_FORWARDED_PORTS = 4096;

const FORWARD_HELP = 'Connections or datagrams forwarded from the namespace\'s loopback to the host\'s (pasta -T/-U)';
export const COUNTERS = {
  tcpAccepted: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'tcp', event: 'accepted' }),
  tcpRefused: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'tcp', event: 'refused' }),
  tcpBytes: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'tcp', event: 'bytes' }),
  udpDatagrams: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'udp', event: 'datagrams' }),
  udpDropped: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'udp', event: 'dropped' }),
};

const SPLICE_HELP = 'TCP connections and bytes joined loopback to loopback with splice(2), by side the connection came from (pasta)';
/** What the splice fast path moved: -T connections (from the namespace) and -t ones from the host's loopback. */
export const SPLICE_COUNTERS = {
  namespaceConnections: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'namespace', event: 'connections' }),
  namespaceBytes: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'namespace', event: 'bytes' }),
  hostConnections: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'host', event: 'connections' }),
  hostBytes: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'host', event: 'bytes' }),
  hostFallbacks: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'host', event: 'fallbacks' }),
};

/** The (listen, target) port pairs of -T/-U specs, in order; throws past MAX_FORWARDED_PORTS. */
export function expandForwards(specs: readonly ForwardSpec[]): PortForward[] {
  const out: PortForward[] = [];
  const seen = new Map<number, number>();
  for (const spec of specs) {
    for (const m of spec.mappings) {
      for (let port = m.hostPortFirst; port <= m.hostPortLast; port++) {
        const target = m.guestPortFirst + (port - m.hostPortFirst);
        const at = seen.get(port);
        // A later spec for the same port wins, as passt does.
        if (at !== undefined) out[at] = { listenPort: port, targetPort: target };
        else {
          seen.set(port, out.length);
          out.push({ listenPort: port, targetPort: target });
        }
        if (out.length > MAX_FORWARDED_PORTS) throw new Error(`more than ${MAX_FORWARDED_PORTS} forwarded ports`);
      }
    }
  }
  return out;
}

export const LOOPBACK_V4 = Uint8Array.of(127, 0, 0, 1);
export const LOOPBACK_V6 = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1);

/** sockaddr for the loopback address of a family and a port. */
export function loopbackSockaddr(family: 4 | 6, port: number): Uint8Array {
  const out = new Uint8Array(28);
  const length = writeSockaddr(out, family, family === 4 ? LOOPBACK_V4 : LOOPBACK_V6, 0, port);
  return out.slice(0, length);
}

/** Opens sockets (domain, type, protocol triples) inside the namespace; see native.nsOpen. */
export type NamespaceSocketOpener = (triples: number[]) => number[];

/**
 * Bind one socket per family in the namespace to its loopback and `port`
 * (IPv6 only for ::1). A family whose bind fails (no ::1 when IPv6 is off)
 * is left out with one log line. Returns the bound fds with their family.
 */
export function bindLoopbackListeners(open: NamespaceSocketOpener, type: number, forwards: readonly PortForward[], what: string): Array<{ fd: number; family: 4 | 6; forward: PortForward }> {
  const c = native.constants;
  const bound: Array<{ fd: number; family: 4 | 6; forward: PortForward }> = [];
  const wanted: Array<{ family: 4 | 6; forward: PortForward }> = [];
  for (const forward of forwards) for (const family of [4, 6] as const) wanted.push({ family, forward });
  // nsOpen passes at most 16 sockets per call.
  for (let start = 0; start < wanted.length; start += 16) {
    const batch = wanted.slice(start, start + 16);
    const fds = open(batch.flatMap((w) => [w.family === 4 ? c.AF_INET : c.AF_INET6, type, 0]));
    batch.forEach((w, i) => {
      const fd = fds[i];
      try {
        native.setsockoptInt(fd, c.SOL_SOCKET, c.SO_REUSEADDR, 1);
        if (w.family === 6) native.setsockoptInt(fd, c.IPPROTO_IPV6, c.IPV6_V6ONLY, 1);
        native.bind(fd, loopbackSockaddr(w.family, w.forward.listenPort));
        if (type === c.SOCK_STREAM) native.listen(fd, c.SOMAXCONN ?? 128);
        bound.push({ fd, family: w.family, forward: w.forward });
      } catch (e) {
        native.close(fd);
        log.warn(`${what} ${w.forward.listenPort}: cannot listen on the namespace's ${w.family === 4 ? '127.0.0.1' : '::1'}: ${(e as Error).message}`);
      }
    });
  }
  return bound;
}

/** The loopback address of a family (what ferry dials on the other side). */
export function loopbackAddress(family: 4 | 6): Uint8Array {
  return family === 4 ? LOOPBACK_V4 : LOOPBACK_V6;
}

/** Offset of the address in a sockaddr of this family (sockaddr_in: 4, sockaddr_in6: 8); the port is at 2, big-endian. */
export function sockaddrAddressOffset(family: 4 | 6): number {
  return family === 4 ? 4 : 8;
}

/** The port of a sockaddr (network order at offset 2). */
export function sockaddrPortOf(sockaddr: Uint8Array): number {
  return (sockaddr[2] << 8) | sockaddr[3];
}
