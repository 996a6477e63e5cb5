/**
 * Text rendering for ferryctl: aligned tables for people (flows, stats,
 * forwards) and stable JSON for scripts. Pure functions over the decoded
 * control API objects; no I/O.
 */

import type { FlowInfo, ForwardInfo, ForwardMappingInfo, StatSample } from './control-protocol';

/** Columns whose cells are right-aligned (numbers). */
type Alignment = 'left' | 'right';

/**
 * An aligned table: a header row, then one row per entry, columns separated
 * by two spaces, trailing spaces trimmed. Returns the text with a final
 * newline; `empty` is returned instead when there are no rows.
 */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[], align: readonly Alignment[] = [], empty = ''): string {
  if (rows.length === 0) return empty;
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, column) => (align[column] === 'right' ? cell.padStart(widths[column]) : cell.padEnd(widths[column])))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** Bytes with binary units: "512 B", "1.5 KiB", "12.0 MiB". */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** A duration in milliseconds, to the precision a person reads: "850ms", "42s", "3m05s", "2h07m", "3d04h". */
export function formatAge(ms: number): string {
  if (ms < 1000) return `${Math.floor(ms)}ms`;
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(seconds % 60).padStart(2, '0')}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours}h${String(minutes % 60).padStart(2, '0')}m`;
  return `${Math.floor(hours / 24)}d${String(hours % 24).padStart(2, '0')}h`;
}

/** "ADDR:PORT", with IPv6 addresses in brackets; the bare address when the protocol has no ports (port 0). */
export function formatEndpoint(address: string, port: number): string {
  const shown = address.includes(':') ? `[${address}]` : address;
  return port === 0 ? shown : `${shown}:${port}`;
}

/** The flow table: one row per flow (of every kind), sorted by id. */
export function formatFlows(flows: readonly FlowInfo[]): string {
  const rows = [...flows]
    .sort((a, b) => a.id - b.id)
    .map((flow) => [
      String(flow.id),
      flow.kind ?? flow.protocol,
      flow.state,
      flow.inbound ? 'in' : 'out',
      formatEndpoint(flow.guestAddress, flow.guestPort),
      formatEndpoint(flow.remoteAddress, flow.remotePort),
      formatBytes(flow.bytesFromGuest),
      formatBytes(flow.bytesToGuest),
      formatAge(flow.ageMs),
      String(flow.queuePair),
    ]);
  return renderTable(
    ['ID', 'KIND', 'STATE', 'DIR', 'GUEST', 'REMOTE', 'FROM GUEST', 'TO GUEST', 'AGE', 'QP'],
    rows,
    ['right', 'left', 'left', 'left', 'left', 'left', 'right', 'right', 'right', 'right'],
    'no flows\n',
  );
}

/** `{a="1",b="2"}` in Prometheus style, or '' without labels. */
export function formatLabels(labels: Readonly<Record<string, string>>): string {
  const names = Object.keys(labels).sort();
  if (names.length === 0) return '';
  return `{${names.map((name) => `${name}=${JSON.stringify(labels[name])}`).join(',')}}`;
}

/** A sample value: integers as they are, others with up to 6 significant digits. */
export function formatValue(value: number): string {
  if (Number.isInteger(value)) return String(value);
  if (!Number.isFinite(value)) return String(value);
  return String(Number(value.toPrecision(6)));
}

/** The stats table: METRIC{labels} and VALUE, sorted by name then labels. */
export function formatStats(stats: readonly StatSample[]): string {
  const rows = stats
    .map((stat) => [`${stat.name}${formatLabels(stat.labels)}`, formatValue(stat.value)])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return renderTable(['METRIC', 'VALUE'], rows, ['left', 'right'], 'no stats\n');
}

/** "8080" / "8080-8090" for the host side of a mapping. */
function hostPorts(mapping: ForwardMappingInfo): string {
  return mapping.hostPortFirst === mapping.hostPortLast ? String(mapping.hostPortFirst) : `${mapping.hostPortFirst}-${mapping.hostPortLast}`;
}

/** The guest ports a mapping forwards to, in the same form. */
function guestPorts(mapping: ForwardMappingInfo): string {
  const last = mapping.guestPortFirst + (mapping.hostPortLast - mapping.hostPortFirst);
  return mapping.guestPortFirst === last ? String(last) : `${mapping.guestPortFirst}-${last}`;
}

/** Up to `limit` mappings as "H->G" joined by commas, then "(+N more)". */
function formatMappings(mappings: readonly ForwardMappingInfo[], limit = 4): string {
  const shown = mappings.slice(0, limit).map((m) => {
    const host = hostPorts(m);
    const guest = guestPorts(m);
    return host === guest ? host : `${host}->${guest}`;
  });
  if (mappings.length > limit) shown.push(`(+${mappings.length - limit} more)`);
  return shown.join(',');
}

/** The forwards table: protocol, host bind, ports, where it came from. */
export function formatForwards(forwards: readonly ForwardInfo[]): string {
  const rows = forwards.map((forward) => {
    const bind = forward.bindAddress === '' ? '*' : forward.bindAddress;
    return [
      forward.protocol,
      forward.interface === '' ? bind : `${bind}%${forward.interface}`,
      formatMappings(forward.mappings),
      forward.runtime ? 'ferryctl' : 'command line',
      forward.spec,
    ];
  });
  return renderTable(['PROTO', 'BIND', 'PORTS (HOST->GUEST)', 'ADDED BY', 'SPEC'], rows, [], 'no forwards\n');
}

/** Stable, indented JSON of any result, with a final newline. */
export function formatJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}
