/**
 * Command line parsing for the ferry daemon: GNU-style long options
 * (`--opt VALUE`, `--opt=VALUE`), short options (`-s PATH`, `-sPATH`,
 * bundled flags `-4f`), with passt's option names and meanings wherever passt
 * has the same option, so passt configurations written by libvirt or podman
 * carry over. ferry's own options (queues, metrics, control socket...) are
 * long-only.
 *
 * Differences from passt, on purpose:
 * - -4 with -6, and --socket with --fd, are rejected as contradictory
 *   (passt lets the last one win).
 * - Long options must be spelled in full (no getopt-style abbreviations):
 *   scripts stay readable and new options cannot make old ones ambiguous.
 *
 * The result is a plain object (DaemonOptions) with no behaviour; invalid
 * input throws OptionError whose message is one line naming the option.
 */

import { isLoopback, parseMac } from '../../stack/address';
import {
  checkForwardSpecCombination,
  DEFAULT_EPHEMERAL_RANGE,
  type ForwardSpec,
  ForwardSpecError,
  type ForwardSpecRules,
  parseForwardSpec,
  type PortRange,
} from '../../stack/flow/forward-spec';
import { DEFAULT_MAX_FLOWS, DEFAULT_MTU, DEFAULT_UDP_IDLE_MS, defaultNetworkAddressOptions, defaultServiceSwitches } from '../host/resolve-config';
import type { AddressOrNone, NetworkAddressOptions, ServiceSwitches } from '../host/resolve-config';
import {
  addressValue,
  defaultInstanceName,
  dnsName,
  fail,
  fileModeValue,
  groupValue,
  integerValue,
  interfaceNameValue,
  type MetricsEndpoint,
  netmaskValue,
  nonEmpty,
  OptionError,
  parseMetricsEndpoint,
  readEphemeralRange,
  runasValue,
  socketPathValue,
} from './option-values';

export type { AddressOrNone, MetricsEndpoint };
export { OptionError, defaultInstanceName, parseMetricsEndpoint, readEphemeralRange };
/** The default MTU is also the largest -m accepts (resolve-config applies it). */
export { DEFAULT_MAX_FLOWS, DEFAULT_MTU };


export type LogLevelName = 'error' | 'warn' | 'info' | 'debug';

export interface LoggingOptions {
  /** -d/--debug: 'debug'; -q/--quiet: 'warn'; default 'info'. The last of -d/-q/--trace wins, as in passt. */
  level: LogLevelName;
  /** --trace: also log single packets (implies level 'debug'). */
  trace: boolean;
  /** -l/--log-file: log to this file instead of stderr. */
  file: string | null;
  /** --log-size: bytes the log file may grow to (default 1 MiB). */
  fileSize: number;
  /** --name: instance name put in every log line (default: the socket file name without extension). */
  name: string;
}


/** The address options beyond what the stack resolves (src/stack/resolve-config.ts declares those). */
export interface NetworkOverrides extends NetworkAddressOptions {
  /** -o/--outbound (IPv4): source address of outbound sockets. */
  outbound4: Uint8Array | null;
  /** -o/--outbound (IPv6). */
  outbound6: Uint8Array | null;
}

/** Which built-in services answer the guest (declared with the stack's other overrides). */
export type ServiceOptions = ServiceSwitches;

/** Protocol handlers (--no-tcp, --no-udp, --no-icmp turn them off). */
export interface ProtocolOptions {
  tcp: boolean;
  udp: boolean;
  icmp: boolean;
}

/** Port forwarding specs in the order given; empty = option not given (passt's default for passt mode: none). */
export interface ForwardOptions {
  /** -t/--tcp-ports: host to guest TCP. */
  tcp: ForwardSpec[];
  /** -u/--udp-ports: host to guest UDP. */
  udp: ForwardSpec[];
  /** -T/--tcp-ns: guest (namespace) to host TCP (pasta). */
  tcpNs: ForwardSpec[];
  /** -U/--udp-ns: guest (namespace) to host UDP (pasta). */
  udpNs: ForwardSpec[];
}

/** Everything runDaemon needs from the command line. */
export interface DaemonOptions {
  /** -s/--socket/--socket-path: vhost-user socket to listen on; null with --fd or when none given (the daemon picks). */
  socketPath: string | null;
  /** -F/--fd: an inherited, already connected vhost-user socket (implies oneOff). */
  fd: number | null;
  /** --vhost-user was given (ferry always speaks vhost-user in this mode; accepted for passt compatibility). */
  vhostUser: boolean;
  /** -1/--one-off: exit once the first front-end disconnects. */
  oneOff: boolean;
  /** -f/--foreground: stay in the foreground when invoked as passt or pasta (which go to the background once ready otherwise). */
  foreground: boolean;
  /** -P/--pid: write our PID to this file once listening. */
  pidFile: string | null;
  /** -p/--pcap: capture guest-side frames to this file. */
  pcapFile: string | null;
  /** --freebind: allow -t/-u bind addresses not (yet) configured on the host. */
  freebind: boolean;
  /** --runas USER[:GROUP] (names or numbers): who to run as once set up; started as root without it, nobody (cli/isolation.ts). */
  runas: string | null;
  /** --seccomp-log: a system call outside the allow-list is logged by the kernel instead of killing ferry. */
  seccompLog: boolean;
  logging: LoggingOptions;
  network: NetworkOverrides;
  services: ServiceOptions;
  protocols: ProtocolOptions;
  forwards: ForwardOptions;
  /** --queues: virtqueue pairs (one worker thread each), 1-16, default 1. */
  queues: number;
  /** --max-flows: bound on flows per worker. */
  maxFlows: number;
  /** --udp-timeout: idle seconds before a UDP flow is dropped. */
  udpTimeoutSeconds: number;
  /** --metrics: Prometheus endpoint, or null for none. */
  metrics: MetricsEndpoint | null;
  /** --control: control API socket path, or null for none. */
  controlPath: string | null;
  /** --socket-mode: permission bits for the vhost-user socket file, or null to leave them to the umask. */
  socketMode: number | null;
  /** --socket-group: group (name or numeric id) for the socket file, or null. */
  socketGroup: string | null;
}

/** What the command line asks for: run the daemon, or print something and exit. */
export type CommandAction = 'run' | 'help' | 'version' | 'print-capabilities';

export interface ParsedCommandLine {
  action: CommandAction;
  options: DaemonOptions;
  /** Notes for the log once logging is up (e.g. options accepted but ignored). */
  notes: string[];
}

/** Context the parser needs from the host; injectable for tests. */
export interface ParseEnvironment {
  /** The kernel's ephemeral port range (skipped by -t all). */
  ephemeral: PortRange;
  /** `ferry pasta`: -t/-u also accept 'auto' (ports bound in the namespace). */
  pasta?: boolean;
}

export const MIN_MTU = 68;
export const MAX_QUEUES = 16;
export const MAX_MAX_FLOWS = 1 << 20;
export const DEFAULT_UDP_TIMEOUT_SECONDS = DEFAULT_UDP_IDLE_MS / 1000;
export const DEFAULT_LOG_SIZE = 1024 * 1024;
/** passt's minimum log file size (5 pages of 8 KiB). */
export const MIN_LOG_SIZE = 40960;

/** Fresh options with every default applied. */
export function defaultDaemonOptions(): DaemonOptions {
  return {
    socketPath: null,
    fd: null,
    vhostUser: false,
    oneOff: false,
    foreground: false,
    pidFile: null,
    pcapFile: null,
    freebind: false,
    runas: null,
    seccompLog: false,
    logging: { level: 'info', trace: false, file: null, fileSize: DEFAULT_LOG_SIZE, name: 'ferry' },
    network: { ...defaultNetworkAddressOptions(), outbound4: null, outbound6: null },
    services: defaultServiceSwitches(),
    protocols: { tcp: true, udp: true, icmp: true },
    forwards: { tcp: [], udp: [], tcpNs: [], udpNs: [] },
    queues: 1,
    maxFlows: DEFAULT_MAX_FLOWS,
    udpTimeoutSeconds: DEFAULT_UDP_TIMEOUT_SECONDS,
    metrics: null,
    controlPath: null,
    socketMode: null,
    socketGroup: null,
  };
}

// ---------------------------------------------------------------------------
// The option table: names, help text and what each option does.

/** Mutable parse state: the options being built plus what was seen. */
interface ParseState {
  options: DaemonOptions;
  environment: ParseEnvironment;
  notes: string[];
  action: CommandAction;
  /** Option (as typed) that set each of these, for conflict messages. */
  socketGiven: string | null;
  fdGiven: string | null;
  ipv4OnlyGiven: string | null;
  ipv6OnlyGiven: string | null;
  nameGiven: boolean;
  /** -n was given / -a carried an IPv4 prefix length: passt refuses both together. */
  netmaskGiven: boolean;
  prefixInAddress: boolean;
  /** Options as typed that need TCP / UDP, to report --no-tcp conflicts. */
  tcpForwardGiven: string | null;
  udpForwardGiven: string | null;
}

interface OptionSpec {
  /** Long names without the leading '--'; the first is the one shown in help. */
  long: readonly string[];
  /** Single-character short name, if any. */
  short?: string;
  /** Placeholder shown in help; present iff the option takes a value. */
  value?: string;
  help: string;
  apply(state: ParseState, value: string, shown: string): void;
}

/** Put an address into the ...4 or ...6 field by family. */
function byFamily(address: Uint8Array, set4: () => void, set6: () => void): void {
  if (address.length === 4) set4();
  else set6();
}

function addForward(state: ParseState, shown: string, text: string, list: ForwardSpec[], rules: Partial<ForwardSpecRules>): void {
  try {
    const spec = parseForwardSpec(text, { ...rules, ephemeral: state.environment.ephemeral });
    checkForwardSpecCombination(list, spec);
    list.push(spec);
  } catch (error) {
    if (error instanceof ForwardSpecError) fail(shown, error.message);
    throw error;
  }
}

/** -t/-u (passt: bind addresses and 'all' allowed, 'auto' is pasta-only). */
const HOST_SIDE_RULES: Partial<ForwardSpecRules> = { allowBindAddress: true, allowAll: true, allowAuto: false };
/** -t/-u rules: pasta also takes 'auto' there (forward what the namespace binds). */
function hostSideRules(state: ParseState): Partial<ForwardSpecRules> {
  return state.environment.pasta === true ? { ...HOST_SIDE_RULES, allowAuto: true } : HOST_SIDE_RULES;
}
/** -T/-U (pasta: no bind address, 'auto' allowed, 'all' not). */
const NAMESPACE_SIDE_RULES: Partial<ForwardSpecRules> = { allowBindAddress: false, allowAll: false, allowAuto: true };

/** An option passt has and ferry does not: one line naming it and why, and a non-zero exit. */
function refuse(shown: string, why: string): never {
  throw new OptionError(`${shown}: not supported by ferry: ${why}`);
}

function refusal(long: string, value: string | undefined, why: string, short?: string): OptionSpec {
  return { long: [long], short, value, help: `Refused (passt option): ${why}`, apply: (_s, _v, shown) => refuse(shown, why) };
}

/** -a ADDR/PREFIX: the address text and the prefix length, or null when none was given. */
function splitPrefix(shown: string, text: string): { text: string; prefix: number | null } {
  const slash = text.indexOf('/');
  if (slash === -1) return { text, prefix: null };
  return { text: text.slice(0, slash), prefix: integerValue(shown, text.slice(slash + 1), 0, 128) };
}

const OPTIONS: readonly OptionSpec[] = [
  // --- what to do
  { long: ['help'], short: 'h', help: 'Print this help and exit', apply: (s) => (s.action = 'help') },
  { long: ['version'], help: 'Print the version and exit', apply: (s) => (s.action = 'version') },
  { long: ['print-capabilities'], help: 'Print vhost-user back-end capabilities as JSON and exit', apply: (s) => (s.action = 'print-capabilities') },
  // --- front-end connection
  {
    long: ['socket', 'socket-path'], short: 's', value: 'PATH', help: 'Listen for the vhost-user front-end on UNIX socket PATH',
    apply: (s, v, shown) => {
      s.options.socketPath = socketPathValue(shown, v);
      s.socketGiven = shown;
    },
  },
  {
    long: ['fd'], short: 'F', value: 'FD', help: 'Use inherited, connected vhost-user socket FD (implies --one-off)',
    apply: (s, v, shown) => {
      s.options.fd = integerValue(shown, v, 3, 0x7fffffff);
      s.options.oneOff = true;
      s.fdGiven = shown;
    },
  },
  { long: ['vhost-user'], help: 'Speak vhost-user on --socket (always the case; accepted for passt compatibility)', apply: (s) => (s.options.vhostUser = true) },
  { long: ['one-off'], short: '1', help: 'Exit after the first front-end disconnects', apply: (s) => (s.options.oneOff = true) },
  { long: ['socket-mode'], value: 'MODE', help: 'Permission bits (octal) of the socket file, e.g. 0660', apply: (s, v, shown) => (s.options.socketMode = fileModeValue(shown, v)) },
  { long: ['socket-group'], value: 'GROUP', help: 'Group (name or id) owning the socket file', apply: (s, v, shown) => (s.options.socketGroup = groupValue(shown, v)) },
  { long: ['queues'], value: 'N', help: `Virtqueue pairs, one worker thread each (1-${MAX_QUEUES}, default 1)`, apply: (s, v, shown) => (s.options.queues = integerValue(shown, v, 1, MAX_QUEUES)) },
  // --- process
  {
    long: ['hostname'], short: 'H', value: 'NAME', help: 'Host name given to the guest (DHCP option 12)',
    apply: (s, v, shown) => (s.options.network.hostname = dnsName(shown, v, 63)),
  },
  {
    long: ['fqdn'], value: 'NAME', help: 'Fully qualified name given to the guest (DHCP option 81, DHCPv6 option 39)',
    apply: (s, v, shown) => (s.options.network.fqdn = dnsName(shown, v, 253)),
  },
  { long: ['foreground'], short: 'f', help: 'Stay in the foreground (as passt or pasta: do not go to the background once ready)', apply: (s) => (s.options.foreground = true) },
  { long: ['pid'], short: 'P', value: 'FILE', help: 'Write our PID to FILE once listening', apply: (s, v, shown) => (s.options.pidFile = nonEmpty(shown, v, 'path')) },
  {
    long: ['runas'], value: 'UID|UID:GID|LOGIN|LOGIN:GROUP', help: 'Run as this user once set up (started as root: default nobody)',
    apply: (s, v, shown) => (s.options.runas = runasValue(shown, v)),
  },
  {
    long: ['seccomp-log'], help: 'Log system calls outside the seccomp allow-list (kernel log) instead of being killed',
    apply: (s) => (s.options.seccompLog = true),
  },
  { long: ['name'], value: 'NAME', help: 'Instance name in log lines (default: socket file name)', apply: (s, v, shown) => {
    if (!/^[A-Za-z0-9_.@:+-]{1,64}$/.test(v)) fail(shown, `'${v}' is not a valid name (1-64 letters, digits, _ . @ : + -)`);
    s.options.logging.name = v;
    s.nameGiven = true;
  } },
  // --- logging
  {
    long: ['debug'], short: 'd', help: 'Log debug messages',
    apply: (s) => {
      s.options.logging.level = 'debug';
    },
  },
  {
    long: ['trace'], help: 'Log single packets too (implies --debug)',
    apply: (s) => {
      s.options.logging.level = 'debug';
      s.options.logging.trace = true;
    },
  },
  {
    long: ['quiet'], short: 'q', help: 'Log warnings and errors only',
    apply: (s) => {
      s.options.logging.level = 'warn';
      s.options.logging.trace = false;
    },
  },
  { long: ['log-file'], short: 'l', value: 'PATH', help: 'Log to file PATH instead of stderr', apply: (s, v, shown) => (s.options.logging.file = nonEmpty(shown, v, 'path')) },
  { long: ['log-size'], value: 'BYTES', help: `Limit the log file to BYTES (default ${DEFAULT_LOG_SIZE})`, apply: (s, v, shown) => (s.options.logging.fileSize = integerValue(shown, v, MIN_LOG_SIZE, Number.MAX_SAFE_INTEGER)) },
  { long: ['stderr'], short: 'e', help: 'No effect (deprecated in passt; logs go to stderr unless --log-file)', apply: () => undefined },
  { long: ['pcap'], short: 'p', value: 'FILE', help: 'Capture guest-side frames to FILE (pcap format)', apply: (s, v, shown) => (s.options.pcapFile = nonEmpty(shown, v, 'path')) },
  // --- observability
  { long: ['metrics'], value: 'HOST:PORT|unix:PATH', help: 'Serve Prometheus metrics at GET /metrics', apply: (s, v, shown) => (s.options.metrics = parseMetricsEndpoint(v, shown)) },
  { long: ['control'], value: 'PATH', help: 'Serve the control API on UNIX socket PATH', apply: (s, v, shown) => (s.options.controlPath = socketPathValue(shown, v)) },
  // --- addresses
  { long: ['mtu'], short: 'm', value: 'MTU', help: `MTU announced to the guest (${MIN_MTU}-${DEFAULT_MTU}; 0: announce none; default ${DEFAULT_MTU})`, apply: (s, v, shown) => {
    // 0 (announce no MTU) is passt's special value, outside the range proper.
    if (!/^[0-9]+$/.test(v)) fail(shown, `'${v}' is not a number`);
    const mtu = Number(v);
    if (mtu !== 0 && !(mtu >= MIN_MTU && mtu <= DEFAULT_MTU)) fail(shown, `${v} is out of range (${MIN_MTU}-${DEFAULT_MTU})`);
    s.options.network.mtu = mtu;
  } },
  {
    long: ['address'], short: 'a', value: 'ADDR[/PREFIX]', help: 'Address given to the guest (once per family; default: the host\'s); an IPv4 /PREFIX replaces -n',
    apply: (s, v, shown) => {
      const { text, prefix } = splitPrefix(shown, v);
      const address = addressValue(shown, text, { unspecified: true, loopback: true, multicast: true, broadcast: true, v4mapped: true });
      if (prefix !== null) {
        if (s.netmaskGiven) fail(shown, 'prefix length given twice (here and with -n/--netmask)');
        // As in passt: an IPv6 prefix length is checked but has no use (the guest's prefix comes from the RA).
        if (address.length === 4 && prefix > 32) fail(shown, `/${prefix} is not an IPv4 prefix length (0-32)`);
        if (address.length === 4) {
          s.options.network.prefixLength4 = prefix;
          s.prefixInAddress = true;
        }
      }
      byFamily(address, () => (s.options.network.address4 = address), () => (s.options.network.address6 = address));
    },
  },
  {
    long: ['netmask'], short: 'n', value: 'MASK', help: 'IPv4 netmask, dotted or prefix length',
    apply: (s, v, shown) => {
      if (s.prefixInAddress) fail(shown, 'prefix length given twice (here and in -a/--address)');
      s.options.network.prefixLength4 = netmaskValue(shown, v);
      s.netmaskGiven = true;
    },
  },
  {
    long: ['gateway'], short: 'g', value: 'ADDR', help: 'Default gateway announced to the guest (once per family)',
    apply: (s, v, shown) => {
      const address = addressValue(shown, v, { unspecified: true, loopback: true, broadcast: true });
      byFamily(address, () => (s.options.network.gateway4 = address), () => (s.options.network.gateway6 = address));
    },
  },
  { long: ['interface'], short: 'i', value: 'NAME', help: 'Host interface to derive addresses and routes from', apply: (s, v, shown) => (s.options.network.interface = interfaceNameValue(shown, v)) },
  {
    long: ['outbound'], short: 'o', value: 'ADDR', help: 'Source address for outbound sockets (once per family)',
    apply: (s, v, shown) => {
      const address = addressValue(shown, v, { unspecified: true, multicast: true, broadcast: true, v4mapped: true });
      if (address.length === 16 && isLoopback(address)) fail(shown, `${v} is a loopback address`);
      byFamily(address, () => (s.options.network.outbound4 = address), () => (s.options.network.outbound6 = address));
    },
  },
  { long: ['outbound-if4'], value: 'NAME', help: 'Bind IPv4 outbound sockets to interface NAME', apply: (s, v, shown) => (s.options.network.outboundIf4 = interfaceNameValue(shown, v)) },
  { long: ['outbound-if6'], value: 'NAME', help: 'Bind IPv6 outbound sockets to interface NAME', apply: (s, v, shown) => (s.options.network.outboundIf6 = interfaceNameValue(shown, v)) },
  {
    long: ['mac-addr'], short: 'M', value: 'ADDR', help: 'ferry\'s own MAC address towards the guest (default 9a:55:9a:55:9a:55)',
    apply: (s, v, shown) => {
      const mac = parseMac(v);
      if (mac === null) fail(shown, `'${v}' is not a MAC address`);
      if ((mac[0] & 1) === 1) fail(shown, `${v} is a multicast MAC address`);
      s.options.network.macAddr = mac;
    },
  },
  {
    long: ['ipv4-only'], short: '4', help: 'IPv4 only: ignore IPv6 traffic',
    apply: (s, _v, shown) => {
      s.options.network.ipv4Only = true;
      s.ipv4OnlyGiven = shown;
    },
  },
  {
    long: ['ipv6-only'], short: '6', help: 'IPv6 only: ignore IPv4 traffic',
    apply: (s, _v, shown) => {
      s.options.network.ipv6Only = true;
      s.ipv6OnlyGiven = shown;
    },
  },
  // --- DNS
  {
    long: ['dns'], short: 'D', value: 'ADDR|none', help: 'Resolver announced to the guest, verbatim (repeatable); none: no DNS',
    apply: (s, v, shown) => {
      if (v === 'none') {
        s.options.network.dns = 'none';
        return;
      }
      const address = addressValue(shown, v);
      const current = s.options.network.dns;
      s.options.network.dns = Array.isArray(current) ? [...current, address] : [address];
    },
  },
  {
    long: ['dns-forward'], value: 'ADDR', help: 'Guest DNS traffic to ADDR goes to --dns-host (once per family)',
    apply: (s, v, shown) => {
      const address = addressValue(shown, v, { unspecified: true, loopback: true, broadcast: true });
      byFamily(address, () => (s.options.network.dnsForward4 = address), () => (s.options.network.dnsForward6 = address));
    },
  },
  {
    long: ['dns-host'], value: 'ADDR', help: 'Host resolver for --dns-forward traffic (default: first in /etc/resolv.conf)',
    apply: (s, v, shown) => {
      const address = addressValue(shown, v, { unspecified: true, broadcast: true });
      byFamily(address, () => (s.options.network.dnsHost4 = address), () => (s.options.network.dnsHost6 = address));
    },
  },
  {
    long: ['search'], short: 'S', value: 'LIST|none', help: 'DNS search domains, space separated (repeatable); none: no list',
    apply: (s, v, shown) => {
      if (v === 'none') {
        s.options.network.search = 'none';
        return;
      }
      const domains = v.split(/\s+/).filter((d) => d !== '');
      if (domains.length === 0) fail(shown, 'empty search list');
      for (const domain of domains) {
        if (domain.length > 253 || !/^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$/.test(domain)) fail(shown, `'${domain}' is not a domain name`);
      }
      const current = s.options.network.search;
      s.options.network.search = Array.isArray(current) ? [...current, ...domains] : domains;
    },
  },
  { long: ['no-dhcp-dns'], help: 'Don\'t announce resolvers via DHCP, DHCPv6 or NDP', apply: (s) => (s.options.services.dhcpDns = false) },
  { long: ['no-dhcp-search'], help: 'Don\'t announce the search list via DHCP, DHCPv6 or NDP', apply: (s) => (s.options.services.dhcpSearch = false) },
  // ferry announces the resolvers and search list in both modes by default; these undo a --no-dhcp-* given before.
  { long: ['dhcp-dns'], help: 'Announce resolvers via DHCP, DHCPv6 and NDP (the default)', apply: (s) => (s.options.services.dhcpDns = true) },
  { long: ['dhcp-search'], help: 'Announce the search list via DHCP, DHCPv6 and NDP (the default)', apply: (s) => (s.options.services.dhcpSearch = true) },
  // --- address mapping
  {
    long: ['map-host-loopback'], value: 'ADDR|none', help: 'Guest traffic to ADDR goes to the host\'s loopback (default: the gateway)',
    apply: (s, v, shown) => {
      if (v === 'none') {
        s.options.network.mapHostLoopback4 = 'none';
        s.options.network.mapHostLoopback6 = 'none';
        s.options.network.noMapGw = true;
        return;
      }
      const address = addressValue(shown, v, { unspecified: true, loopback: true, multicast: true });
      byFamily(address, () => (s.options.network.mapHostLoopback4 = address), () => (s.options.network.mapHostLoopback6 = address));
    },
  },
  { long: ['no-map-gw'], help: 'Don\'t map the gateway address to the host', apply: (s) => (s.options.network.noMapGw = true) },
  {
    long: ['map-guest-addr'], value: 'ADDR|none', help: 'Guest traffic to ADDR goes to the guest\'s own address on the host',
    apply: (s, v, shown) => {
      if (v === 'none') {
        s.options.network.mapGuestAddr4 = 'none';
        s.options.network.mapGuestAddr6 = 'none';
        return;
      }
      const address = addressValue(shown, v, { unspecified: true, loopback: true, multicast: true });
      byFamily(address, () => (s.options.network.mapGuestAddr4 = address), () => (s.options.network.mapGuestAddr6 = address));
    },
  },
  // --- services and protocols
  { long: ['no-dhcp'], help: 'Disable the DHCP server', apply: (s) => (s.options.services.dhcp = false) },
  { long: ['no-dhcpv6'], help: 'Disable the DHCPv6 server', apply: (s) => (s.options.services.dhcpv6 = false) },
  { long: ['no-ndp'], help: 'Disable NDP responses', apply: (s) => (s.options.services.ndp = false) },
  { long: ['no-ra'], help: 'Disable router advertisements', apply: (s) => (s.options.services.ra = false) },
  { long: ['no-tcp'], help: 'Disable TCP', apply: (s) => (s.options.protocols.tcp = false) },
  { long: ['no-udp'], help: 'Disable UDP', apply: (s) => (s.options.protocols.udp = false) },
  { long: ['no-icmp'], help: 'Disable ICMP/ICMPv6 echo', apply: (s) => (s.options.protocols.icmp = false) },
  // --- forwarding
  {
    long: ['tcp-ports'], short: 't', value: 'SPEC', help: 'Forward host TCP ports to the guest: none, all, or a list like 22,2222:22,8000-8010,~8005 with an optional ADDR%IF/ prefix (repeatable)',
    apply: (s, v, shown) => {
      addForward(s, shown, v, s.options.forwards.tcp, hostSideRules(s));
      s.tcpForwardGiven ??= shown;
    },
  },
  {
    long: ['udp-ports'], short: 'u', value: 'SPEC', help: 'Forward host UDP ports to the guest (syntax as for -t)',
    apply: (s, v, shown) => {
      addForward(s, shown, v, s.options.forwards.udp, hostSideRules(s));
      s.udpForwardGiven ??= shown;
    },
  },
  {
    long: ['tcp-ns'], short: 'T', value: 'SPEC', help: 'Forward guest-side TCP ports to the host (pasta; none, auto or a port list)',
    apply: (s, v, shown) => {
      addForward(s, shown, v, s.options.forwards.tcpNs, NAMESPACE_SIDE_RULES);
      s.tcpForwardGiven ??= shown;
    },
  },
  {
    long: ['udp-ns'], short: 'U', value: 'SPEC', help: 'Forward guest-side UDP ports to the host (pasta)',
    apply: (s, v, shown) => {
      addForward(s, shown, v, s.options.forwards.udpNs, NAMESPACE_SIDE_RULES);
      s.udpForwardGiven ??= shown;
    },
  },
  { long: ['freebind'], help: 'Allow -t/-u bind addresses not configured on the host', apply: (s) => (s.options.freebind = true) },
  // --- passt options ferry has no counterpart for: refused rather than ignored, so a caller learns at once
  {
    long: ['repair-path'], value: 'PATH|none', help: 'Only \'none\' (no passt-repair socket): ferry does not migrate TCP connections',
    apply: (s, v, shown) => {
      if (v !== 'none') refuse(shown, 'ferry has no TCP_REPAIR migration helper interface (only \'none\' is accepted)');
    },
  },
  {
    long: ['chroot-fallback'], help: 'Accepted: ferry never pivot_root()s, so there is nothing to fall back from',
    apply: (s, _v, shown) => s.notes.push(`${shown}: ferry does not switch to an empty root filesystem, nothing to fall back from`),
  },
  refusal('stats', 'DELAY', 'no periodic event statistics (use --metrics)'),
  refusal('conf-path', 'PATH', 'no pesto(1) configuration socket (use --control)', 'c'),
  refusal('migrate-exit', undefined, 'no live migration of connections'),
  refusal('migrate-no-linger', undefined, 'no live migration of connections'),
  refusal('host-lo-to-ns-lo', undefined, 'forwarded host-loopback connections always reach the namespace\'s address'),
  refusal('ns-mac-addr', 'ADDR', 'the namespace\'s tap keeps the MAC address the kernel gave it'),
  refusal('splice-only', undefined, 'a tap device is always created in the namespace'),
  // --- limits
  { long: ['max-flows'], value: 'N', help: `Flows per worker (1-${MAX_MAX_FLOWS}, default ${DEFAULT_MAX_FLOWS})`, apply: (s, v, shown) => (s.options.maxFlows = integerValue(shown, v, 1, MAX_MAX_FLOWS)) },
  { long: ['udp-timeout'], value: 'SECONDS', help: `Idle time before a UDP flow is dropped (1-86400, default ${DEFAULT_UDP_TIMEOUT_SECONDS})`, apply: (s, v, shown) => (s.options.udpTimeoutSeconds = integerValue(shown, v, 1, 86400)) },
];

const byLong = new Map<string, OptionSpec>();
const byShort = new Map<string, OptionSpec>();
for (const spec of OPTIONS) {
  for (const name of spec.long) byLong.set(name, spec);
  if (spec.short !== undefined) byShort.set(spec.short, spec);
}

/** One help line per option: ["-s, --socket, --socket-path PATH", "Listen for..."], in table order. */
export function optionHelp(): Array<[string, string]> {
  return OPTIONS.map((spec) => {
    const names = [...(spec.short !== undefined ? [`-${spec.short}`] : []), ...spec.long.map((name) => `--${name}`)].join(', ');
    return [spec.value !== undefined ? `${names} ${spec.value}` : names, spec.help];
  });
}

/** Checks that need every option seen (conflicts between options). */
function finish(state: ParseState): void {
  const { options } = state;
  if (state.socketGiven !== null && state.fdGiven !== null) fail(state.fdGiven, `cannot be combined with ${state.socketGiven}`);
  if (state.ipv4OnlyGiven !== null && state.ipv6OnlyGiven !== null) fail(state.ipv6OnlyGiven, `cannot be combined with ${state.ipv4OnlyGiven}`);
  if (!options.protocols.tcp && state.tcpForwardGiven !== null) fail(state.tcpForwardGiven, 'TCP port forwarding requested but --no-tcp was given');
  if (!options.protocols.udp && state.udpForwardGiven !== null) fail(state.udpForwardGiven, 'UDP port forwarding requested but --no-udp was given');
  if (options.socketPath !== null && options.controlPath === options.socketPath) fail('--control', 'must differ from the vhost-user socket path');
  if (options.metrics?.kind === 'unix' && (options.metrics.path === options.socketPath || options.metrics.path === options.controlPath)) {
    fail('--metrics', 'must differ from the other socket paths');
  }
  if (!state.nameGiven) options.logging.name = defaultInstanceName(options.socketPath, options.fd);
  if (options.freebind) for (const spec of [...options.forwards.tcp, ...options.forwards.udp]) spec.freebind = true;
}

/**
 * Parse the daemon's arguments (without 'node' and the script). Returns the
 * action to take and the options; --help, --version and
 * --print-capabilities stop parsing where they appear, as in passt. Throws
 * OptionError with a one-line message for anything invalid.
 */
export function parseOptions(argv: readonly string[], environment: ParseEnvironment = { ephemeral: DEFAULT_EPHEMERAL_RANGE }): ParsedCommandLine {
  const state: ParseState = {
    options: defaultDaemonOptions(),
    environment,
    notes: [],
    action: 'run',
    socketGiven: null,
    fdGiven: null,
    ipv4OnlyGiven: null,
    ipv6OnlyGiven: null,
    nameGiven: false,
    netmaskGiven: false,
    prefixInAddress: false,
    tcpForwardGiven: null,
    udpForwardGiven: null,
  };
  const done = (): ParsedCommandLine => ({ action: state.action, options: state.options, notes: state.notes });

  let index = 0;
  while (index < argv.length) {
    const argument = argv[index++];
    if (argument === '--') {
      if (index < argv.length) throw new OptionError(`unexpected argument '${argv[index]}'`);
      break;
    }
    if (argument.startsWith('--')) {
      const equals = argument.indexOf('=');
      const name = equals === -1 ? argument.slice(2) : argument.slice(2, equals);
      const shown = `--${name}`;
      const spec = byLong.get(name);
      if (spec === undefined) throw new OptionError(`unknown option '${shown}' (see --help)`);
      let value = '';
      if (spec.value !== undefined) {
        if (equals !== -1) value = argument.slice(equals + 1);
        else if (index < argv.length) value = argv[index++];
        else fail(shown, `needs a value (${spec.value})`);
      } else if (equals !== -1) {
        fail(shown, 'does not take a value');
      }
      spec.apply(state, value, shown);
      if (state.action !== 'run') return done();
      continue;
    }
    if (argument.startsWith('-') && argument.length > 1) {
      // A bundle of short options: flags, then at most one option taking a
      // value, which is the rest of the argument or the next argument.
      for (let position = 1; position < argument.length; position++) {
        const letter = argument[position];
        const shown = `-${letter}`;
        const spec = byShort.get(letter);
        if (spec === undefined) throw new OptionError(`unknown option '${shown}' (see --help)`);
        let value = '';
        if (spec.value !== undefined) {
          if (position + 1 < argument.length) value = argument.slice(position + 1);
          else if (index < argv.length) value = argv[index++];
          else fail(shown, `needs a value (${spec.value})`);
          position = argument.length;
        }
        spec.apply(state, value, shown);
        if (state.action !== 'run') return done();
      }
      continue;
    }
    throw new OptionError(`unexpected argument '${argument}'`);
  }
  finish(state);
  return done();
}

// ---------------------------------------------------------------------------
// `ferry pasta`: the namespace options pasta(1) adds, and the command to run.

/** Does this option (as typed, '--name' or '-x') take a value? undefined when unknown (pasta's parser asks). */
export function optionTakesValue(name: string, long: boolean): boolean | undefined {
  const spec = long ? byLong.get(name) : byShort.get(name);
  return spec === undefined ? undefined : spec.value !== undefined;
}
