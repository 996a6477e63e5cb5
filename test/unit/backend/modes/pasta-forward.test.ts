import { expect } from 'chai';
import {
  AUTO_FORWARD_TAG,
  AutoForwarder,
  boundLoopbackPorts,
  boundPorts,
  type DynamicForwarder,
  expandForwards,
  InboundAutoListeners,
  loopbackSockaddr,
  MAX_FORWARDED_PORTS,
  namespaceIdentity,
  ownSocketInodes,
  type PortForward,
  readNamespaceTables,
} from '../../../../src/backend/modes/pasta/pasta-forward';
import type { ForwardSpec } from '../../../../src/stack/flow/forward-spec';
import type { ListenerInfo } from '../../../../src/stack/tcp/listen';
import { parseForwardSpec } from '../../../../src/stack/flow/forward-spec';

const NS_RULES = { allowBindAddress: false, allowAll: false, allowAuto: true };

describe('pasta -T/-U port expansion', () => {
  it('ports, ranges and remaps become (listen, target) pairs', () => {
    const specs = [parseForwardSpec('22,8000-8002:9000-9002', NS_RULES)];
    expect(expandForwards(specs)).to.deep.equal([
      { listenPort: 22, targetPort: 22 },
      { listenPort: 8000, targetPort: 9000 },
      { listenPort: 8001, targetPort: 9001 },
      { listenPort: 8002, targetPort: 9002 },
    ]);
  });

  it('a later spec for the same port wins; none and auto add nothing', () => {
    const specs = [parseForwardSpec('80', NS_RULES), parseForwardSpec('none', NS_RULES), parseForwardSpec('auto', NS_RULES), parseForwardSpec('80:8080', NS_RULES)];
    expect(expandForwards(specs)).to.deep.equal([{ listenPort: 80, targetPort: 8080 }]);
  });

  it('refuses more ports than it can open sockets for', () => {
    expect(() => expandForwards([parseForwardSpec(`1-${MAX_FORWARDED_PORTS + 1}`, NS_RULES)])).to.throw(/more than 4096/);
    expect(expandForwards([parseForwardSpec(`1-${MAX_FORWARDED_PORTS}`, NS_RULES)])).to.have.length(MAX_FORWARDED_PORTS);
  });

  it('loopback sockaddrs: 127.0.0.1 and ::1 with the port in network order', () => {
    const v4 = loopbackSockaddr(4, 0x1234);
    expect(v4).to.have.length(16);
    expect([...v4.subarray(2, 8)]).to.deep.equal([0x12, 0x34, 127, 0, 0, 1]);
    const v6 = loopbackSockaddr(6, 80);
    expect(v6).to.have.length(28);
    expect([v6[2], v6[3], v6[23]]).to.deep.equal([0, 80, 1]);
  });
});

/** /proc/net/tcp as a little-endian host prints it (header line, then sockets). */
const TCP_TABLE = [
  '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
  '   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0', // 0.0.0.0:8080 listen
  '   1: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0', // 127.0.0.1:9000 listen
  '   2: 010200C0:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0', // 192.0.2.1:80 listen: not on loopback
  '   3: 0100007F:89F7 0100007F:2328 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0', // established
  '   4: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1005 1 0', // 127.0.0.1:22, ferry's own
  'garbage line',
].join('\n');
const TCP6_TABLE = [
  '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
  '   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0', // [::1]:8081
  '   1: B80D0120000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0', // [2001:db8::1]:8082
].join('\n');
const UDP_TABLE = [
  '   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
  '  100: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0 0', // 127.0.0.1:53 bound
  '  101: 0100007F:C000 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2 0 0', // connected client
].join('\n');

const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

describe('pasta auto forwarding', () => {
  (littleEndian ? it : it.skip)('boundLoopbackPorts: listening (TCP) or unconnected (UDP) sockets on any or loopback, own inodes left out', () => {
    expect([...boundLoopbackPorts(TCP_TABLE + '\n' + TCP6_TABLE, 'tcp', new Set([1005]))].sort()).to.deep.equal([8080, 8081, 9000]);
    expect([...boundLoopbackPorts(UDP_TABLE, 'udp', new Set())]).to.deep.equal([53]);
    expect([...boundLoopbackPorts('', 'tcp', new Set())]).to.deep.equal([]);
  });

  it('ownSocketInodes lists this process\'s sockets', () => {
    const inodes = ownSocketInodes();
    expect(inodes).to.be.instanceOf(Set);
    for (const inode of inodes) expect(inode).to.be.a('number').and.greaterThan(0);
  });

  (littleEndian ? it : it.skip)('AutoForwarder listens on ports as they appear and stops as they vanish; UDP leaves ephemeral ports alone', () => {
    const calls: string[] = [];
    const fake: DynamicForwarder = {
      listen: (_open, forwards: readonly PortForward[]) => {
        calls.push(`listen ${forwards.map((f) => `${f.listenPort}:${f.targetPort}`).join(',')}`);
        return forwards.length;
      },
      unlisten: (port) => calls.push(`unlisten ${port}`),
    };
    let table = TCP_TABLE;
    const auto = new AutoForwarder('tcp', fake, () => [], { first: 32768, last: 60999 }, () => table);
    auto.tick();
    expect(auto.ports).to.deep.equal([8080, 9000, 22].sort((a, b) => a - b));
    table = TCP_TABLE.split('\n').filter((l) => !l.includes(':2328 00000000')).join('\n');
    auto.tick();
    auto.tick();
    expect(calls).to.deep.equal(['listen 8080:8080,9000:9000,22:22', 'unlisten 9000']);
    const udpCalls: string[] = [];
    const udp = new AutoForwarder('udp', { listen: (_o, f) => (udpCalls.push(f.map((x) => x.listenPort).join(',')), f.length), unlisten: () => undefined }, () => [], { first: 49152, last: 65535 }, () => UDP_TABLE.replace(':0035 00000000', ':C001 00000000') + '\n' + UDP_TABLE);
    udp.tick();
    expect(udpCalls).to.deep.equal(['53']);
  });
});

describe('pasta -t/-u auto (ports bound in the namespace)', () => {
  (littleEndian ? it : it.skip)('boundPorts with scope any: every listening port, whatever its address', () => {
    expect([...boundPorts(TCP_TABLE + '\n' + TCP6_TABLE, 'tcp', new Set([1005]), 'any')].sort((a, b) => a - b)).to.deep.equal([80, 8080, 8081, 8082, 9000]);
    expect([...boundPorts(UDP_TABLE, 'udp', new Set([3001]), 'any')]).to.deep.equal([]);
  });

  it('readNamespaceTables reads a process\'s tables and refuses a process in another namespace', () => {
    const own = namespaceIdentity('/proc/self/ns/net');
    const text = readNamespaceTables('tcp', process.pid, own);
    expect(text).to.match(/local_address/);
    expect(() => readNamespaceTables('tcp', process.pid, '0:0')).to.throw(/not in the namespace/);
    expect(() => readNamespaceTables('tcp', 0x3fffffff, own)).to.throw();
  });

  (littleEndian ? it : it.skip)('InboundAutoListeners opens one tagged single-port spec per new port and closes only its own tag on that port', () => {
    const opened: ForwardSpec[] = [];
    const live: ListenerInfo[] = [{ tag: 0, hostPort: 9000, family: 4 }];
    const listeners = new InboundAutoListeners('tcp', {
      open: (spec, tag) => {
        opened.push(spec);
        const port = spec.mappings[0].hostPortFirst;
        live.push({ tag, hostPort: port, family: 4 }, { tag, hostPort: port, family: 6 });
        return port === 8082 ? [{ port, family: 6, code: 'EADDRINUSE' }] : [];
      },
      close: (match) => {
        const before = live.length;
        for (let i = live.length - 1; i >= 0; i--) if (match(live[i])) live.splice(i, 1);
        return before - live.length;
      },
    });
    let table = TCP_TABLE + '\n' + TCP6_TABLE;
    const auto = new AutoForwarder('tcp', listeners, () => [], { first: 32768, last: 60999 }, () => table, 'any');
    auto.tick();
    expect(opened.map((spec) => [spec.mode, spec.mappings, spec.bindAddress])).to.deep.include(['ports', [{ hostPortFirst: 9000, hostPortLast: 9000, guestPortFirst: 9000 }], null]);
    expect(auto.ports).to.deep.equal([22, 80, 8080, 8081, 8082, 9000]);
    // 9000 vanishes from the namespace: the auto listeners on 9000 close, the configured one (tag 0) stays.
    table = table.split('\n').filter((l) => !l.includes(':2328 00000000')).join('\n');
    auto.tick();
    expect(live.filter((l) => l.hostPort === 9000)).to.deep.equal([{ tag: 0, hostPort: 9000, family: 4 }]);
    expect(live.filter((l) => l.tag === AUTO_FORWARD_TAG).map((l) => l.hostPort)).to.not.include(9000);
  });

  it('a scan that cannot read the namespace changes nothing', () => {
    const calls: string[] = [];
    let fail = false;
    const auto = new AutoForwarder('tcp', { listen: (_o, f) => (calls.push(`listen ${f.length}`), f.length), unlisten: (p) => calls.push(`unlisten ${p}`) }, () => [], { first: 1, last: 2 }, () => {
      if (fail) throw new Error('process 1 left the namespace');
      return TCP_TABLE;
    }, 'any');
    auto.tick();
    fail = true;
    auto.tick();
    expect(calls).to.have.length(1);
    expect(auto.ports.length).to.be.greaterThan(0);
  });
});
