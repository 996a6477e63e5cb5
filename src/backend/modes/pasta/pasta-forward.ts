/**
 * pasta's -T/--tcp-ns and -U/--udp-ns: ports on the namespace's loopback
 * forwarded to the host's loopback, without ever becoming frames; the -t
 * splice path from the host's loopback into the namespace's; and `auto`
 * forwarding. One module per part (this one gathers them for pasta.ts):
 *
 *   loopback-forward.ts  port expansion, loopback sockaddrs and listeners, counters
 *   tcp-relay.ts         one spliced TCP relay; the tcp-splice flow kind
 *   tcp-forward.ts       -T listeners and the -t splice path (HostLoopbackSplicer)
 *   udp-forward.ts       -U, each namespace client a udp-forward flow
 *   auto-forward.ts      -T/-U auto and -t/-u auto (ports found in /proc/.../net)
 *
 * The listening sockets are created inside the namespace (native.nsOpen:
 * a socket keeps the namespace it was made in) and bound to 127.0.0.1 and
 * ::1 there; ferry accepts or receives on them from its own namespace and
 * talks to the host's loopback with ordinary sockets. Every relay and
 * client is a flow of the stack's flow table, listed and closed through it.
 */
export { COUNTERS, MAX_FORWARDED_PORTS, type NamespaceSocketOpener, type PortForward, SPLICE_COUNTERS, expandForwards, loopbackSockaddr } from './loopback-forward';
export { SPLICE_STATE_NAMES, SpliceFlows, SpliceState } from './tcp-relay';
export { HostLoopbackSplicer, MAX_TCP_RELAYS, TcpNamespaceForwarder } from './tcp-forward';
export { MAX_UDP_FLOWS, UDP_FORWARD_STATE_NAMES, UdpNamespaceForwarder } from './udp-forward';
export {
  AUTO_FORWARD_TAG,
  AutoForwarder,
  type BoundScope,
  type DynamicForwarder,
  InboundAutoListeners,
  type TaggedInboundListeners,
  boundLoopbackPorts,
  boundPorts,
  namespaceIdentity,
  ownSocketInodes,
  readNamespaceTables,
  singlePortSpec,
} from './auto-forward';
