/**
 * The direction of imports between ferry's parts, checked by `npm test`
 * (`npm run check:imports`). Each part is a folder; a part may import only
 * itself and the parts listed for it, all of them below it:
 *
 *   src/backend/main.ts      the entry: picks a mode
 *   src/backend/modes/       vhost-user/ (server, net device, workers) | pasta/ | stream/
 *   src/backend/control/     control API, ferryctl, metrics
 *   src/backend/cli/         options, logging, systemd glue (read by every mode and the control API)
 *   src/backend/frontends/   tap and stream ports; middleware/ (pcap, fault injection)
 *   src/backend/host/        host discovery, netlink, resolv.conf, option resolution
 *   src/stack/               frames in, frames out; knows no rings and no backend
 *   src/virtqueue/           guest memory, split ring, virtio-net port; knows no IP
 *   src/io/                  the frame seam between ports and the stack
 *   src/sys/                 addon bindings, byte order, sockaddr, log, counters
 */
const PARTS = {
  sys: { path: '^src/sys/', may: [] },
  io: { path: '^src/io/', may: ['sys'] },
  virtqueue: { path: '^src/virtqueue/', may: ['io', 'sys'] },
  stack: { path: '^src/stack/', may: ['io', 'sys'] },
  host: { path: '^src/backend/host/', may: ['stack', 'io', 'sys'] },
  frontends: { path: '^src/backend/frontends/', may: ['virtqueue', 'stack', 'io', 'sys'] },
  cli: { path: '^src/backend/cli/', may: ['host', 'stack', 'io', 'sys'] },
  control: { path: '^src/backend/control/', may: ['cli', 'host', 'stack', 'io', 'sys'] },
  modes: { path: '^src/backend/modes/', may: ['control', 'cli', 'host', 'frontends', 'virtqueue', 'stack', 'io', 'sys'] },
  main: { path: '^src/backend/main[.]ts$', may: ['modes', 'cli', 'sys'] },
};

/** Inside the stack: wire views at the bottom, then the flow table and the shared L4 helpers, then the protocols, then the dispatcher. */
const STACK_INNER = [
  {
    name: 'stack-wire-is-the-bottom',
    comment: 'wire/ views know only bytes: no flows, protocols or dispatcher',
    from: { path: '^src/stack/wire/' },
    to: { path: '^src/stack/', pathNot: '^src/stack/wire/' },
  },
  {
    name: 'stack-flow-below-protocols',
    comment: 'the flow table and forwarding rules serve every protocol and import none of them',
    from: { path: '^src/stack/flow/' },
    to: { path: '^src/stack/(l2|tcp|udp|icmp)/|^src/stack/stack(-factory)?[.]ts$' },
  },
  {
    name: 'stack-l4-below-protocols',
    comment: 'l4/ holds what TCP and UDP share (iovecs, frame headers, checksums); it serves them and imports none of them',
    from: { path: '^src/stack/l4/' },
    to: { path: '^src/stack/(l2|tcp|udp|icmp)/|^src/stack/stack(-factory)?[.]ts$' },
  },
  {
    name: 'stack-reassembly-below-protocols',
    comment: 'reassembly/ puts guest fragments back together for the dispatcher; it imports no protocol',
    from: { path: '^src/stack/reassembly/' },
    to: { path: '^src/stack/(l2|l4|tcp|udp|icmp|flow)/|^src/stack/stack(-factory)?[.]ts$' },
  },
  {
    name: 'stack-protocols-below-dispatcher',
    comment: 'protocols are called by the dispatcher (stack.ts) and built by the factory; they import neither',
    from: { path: '^src/stack/(l2|tcp|udp|icmp)/' },
    to: { path: '^src/stack/stack(-factory)?[.]ts$' },
  },
];

/** The modes are side by side: none imports another. */
const MODES = ['vhost-user', 'pasta', 'stream'].map((mode) => ({
  name: `mode-${mode}-alone`,
  comment: 'each mode wires the parts itself; shared wiring lives directly in src/backend/modes/',
  from: { path: `^src/backend/modes/${mode}/` },
  to: { path: '^src/backend/modes/[^/]+/', pathNot: `^src/backend/modes/${mode}/` },
}));

const layering = Object.entries(PARTS).map(([name, part]) => ({
  name: `${name}-imports-down`,
  comment: `${name} may import only ${part.may.length > 0 ? part.may.join(', ') : 'itself'} (and node/npm modules)`,
  from: { path: part.path },
  to: { path: '^src/', pathNot: [part.path, ...part.may.map((m) => PARTS[m].path)] },
}));

module.exports = {
  forbidden: [
    ...layering,
    ...STACK_INNER,
    ...MODES,
    { name: 'no-circular', comment: 'no import cycles', from: {}, to: { circular: true } },
    { name: 'src-not-tests', comment: 'the product never imports tests or benchmarks', from: { path: '^src/' }, to: { path: '^(test|bench)/' } },
    { name: 'not-to-unresolvable', comment: 'every import resolves', from: {}, to: { couldNotResolve: true } },
  ].map((rule) => ({ severity: 'error', ...rule })),
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
  },
};
