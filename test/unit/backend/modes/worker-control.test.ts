/**
 * The worker's side of the control API (worker-control.ts): port-range
 * arithmetic, and the forwarding rules over fake listener sets (which
 * record what was opened and closed, and fail the ports they are told
 * to): conflicts, all-or-nothing adds, partial removals, re-opening on a
 * new stack. Real sockets: test/integration/control-daemon.test.ts and
 * test/e2e/traffic/control-forward.test.ts.
 */
import { expect } from 'chai';
import type { StackConfig } from '../../../../src/stack/config';
import { parseForwardSpec } from '../../../../src/stack/flow/forward-spec';
import type { ForwardSpec } from '../../../../src/stack/flow/forward-spec';
import type { ListenerInfo, TaggedListenResult } from '../../../../src/stack/tcp/listen';
import type { StackParts } from '../../../../src/stack/stack-factory';
import { subtractPorts, WorkerForwards } from '../../../../src/backend/modes/vhost-user/worker-control';

/** One protocol's listening sockets: tag and host port of each, failing the ports in `failing`. */
class FakeListeners {
  readonly open: ListenerInfo[] = [];
  readonly failing = new Map<number, string>();

  openTagged(specs: readonly ForwardSpec[], tag: number): TaggedListenResult {
    const result: TaggedListenResult = { opened: 0, failures: [], errors: [] };
    for (const spec of specs) {
      for (const m of spec.mappings) {
        for (let port = m.hostPortFirst; port <= m.hostPortLast; port++) {
          const code = this.failing.get(port);
          if (code === undefined) {
            this.open.push({ tag, hostPort: port, family: 4 });
            result.opened++;
          } else if (!spec.bestEffort) {
            result.failures.push(`port ${port}: ${code}`);
            result.errors.push({ port, family: 4, code });
          }
        }
      }
    }
    return result;
  }

  listenTagged(specs: readonly ForwardSpec[], tag: number): { opened: number; errors: TaggedListenResult['errors'] } {
    const { opened, errors } = this.openTagged(specs, tag);
    return { opened, errors };
  }

  closeWhere(match: (listener: ListenerInfo) => boolean): number {
    const before = this.open.length;
    this.open.splice(0, this.open.length, ...this.open.filter((l) => !match(l)));
    return before - this.open.length;
  }

  closeListeners(match: (listener: ListenerInfo) => boolean): number {
    return this.closeWhere(match);
  }

  ports(): number[] {
    return this.open.map((l) => l.hostPort).sort((a, b) => a - b);
  }
}

function fakeParts(tcp: FakeListeners | null, udp: FakeListeners | null): StackParts {
  return { stack: null, flows: null, tcp: null, udp, tcpListeners: tcp } as unknown as StackParts;
}

function spec(text: string): ForwardSpec {
  return parseForwardSpec(text, { allowAuto: false });
}

function config(tcp: string[], udp: string[] = []): StackConfig {
  return { tcpForwards: tcp.map(spec), udpForwards: udp.map(spec) } as unknown as StackConfig;
}

describe('worker-control: port ranges', () => {
  it('subtracts host ports, keeping each piece mapped to the same guest ports', () => {
    const m = [{ hostPortFirst: 5000, hostPortLast: 5009, guestPortFirst: 100 }];
    expect(subtractPorts(m, [{ hostPortFirst: 5003, hostPortLast: 5004, guestPortFirst: 0 }])).to.deep.equal([
      { hostPortFirst: 5000, hostPortLast: 5002, guestPortFirst: 100 },
      { hostPortFirst: 5005, hostPortLast: 5009, guestPortFirst: 105 },
    ]);
    expect(subtractPorts(m, [{ hostPortFirst: 4000, hostPortLast: 5000, guestPortFirst: 0 }])).to.deep.equal([{ hostPortFirst: 5001, hostPortLast: 5009, guestPortFirst: 101 }]);
    expect(subtractPorts(m, [{ hostPortFirst: 5009, hostPortLast: 6000, guestPortFirst: 0 }])).to.deep.equal([{ hostPortFirst: 5000, hostPortLast: 5008, guestPortFirst: 100 }]);
    expect(subtractPorts(m, [{ hostPortFirst: 1, hostPortLast: 65535, guestPortFirst: 0 }])).to.deep.equal([]);
    expect(subtractPorts(m, [{ hostPortFirst: 6000, hostPortLast: 6001, guestPortFirst: 0 }])).to.deep.equal(m);
  });
});

describe('worker-control: WorkerForwards', () => {
  it('opens the -t/-u rules on every new stack and lists them as configured', () => {
    const forwards = new WorkerForwards(config(['8080:80', 'none'], ['5353:53']));
    const tcp = new FakeListeners();
    const udp = new FakeListeners();
    forwards.openAll(fakeParts(tcp, udp));
    expect(tcp.ports()).to.deep.equal([8080]);
    expect(udp.ports()).to.deep.equal([5353]);
    expect(forwards.list()).to.deep.equal([
      { protocol: 'tcp', spec: '8080:80', bindAddress: '', interface: '', mappings: [{ hostPortFirst: 8080, hostPortLast: 8080, guestPortFirst: 80 }], runtime: false },
      { protocol: 'udp', spec: '5353:53', bindAddress: '', interface: '', mappings: [{ hostPortFirst: 5353, hostPortLast: 5353, guestPortFirst: 53 }], runtime: false },
    ]);
    // A new guest, a new stack: the same rules again, runtime ones included.
    expect(forwards.add(fakeParts(tcp, udp), 'tcp', spec('127.0.0.1/2222:22')).status).to.equal('OK');
    const tcp2 = new FakeListeners();
    forwards.openAll(fakeParts(tcp2, new FakeListeners()));
    expect(tcp2.ports()).to.deep.equal([2222, 8080]);
  });

  it('refuses a port another rule of the protocol already forwards, on the same or any address', () => {
    const forwards = new WorkerForwards(config(['8000-8010']));
    const tcp = new FakeListeners();
    const parts = fakeParts(tcp, new FakeListeners());
    forwards.openAll(parts);
    const outcome = forwards.add(parts, 'tcp', spec('7990-8000'));
    expect(outcome).to.deep.equal({ status: 'CONFLICT', message: "tcp port 8000 is already forwarded ('8000-8010')" });
    expect(forwards.add(parts, 'tcp', spec('127.0.0.1/8005')).status).to.equal('CONFLICT');
    // Another protocol, or ports beside the rule, are fine.
    expect(forwards.add(parts, 'udp', spec('8000')).status).to.equal('OK');
    expect(forwards.add(parts, 'tcp', spec('8011')).status).to.equal('OK');
    // Two specific addresses do not collide.
    expect(forwards.add(parts, 'tcp', spec('127.0.0.1/9000')).status).to.equal('OK');
    expect(forwards.add(parts, 'tcp', spec('127.0.0.2/9000')).status).to.equal('OK');
  });

  it('adds all or nothing: a port in use makes the whole rule a CONFLICT, other errors INTERNAL', () => {
    const forwards = new WorkerForwards(config([]));
    const tcp = new FakeListeners();
    const parts = fakeParts(tcp, new FakeListeners());
    tcp.failing.set(7002, 'EADDRINUSE');
    const outcome = forwards.add(parts, 'tcp', spec('7000-7003'));
    expect(outcome.status).to.equal('CONFLICT');
    expect(outcome.message).to.match(/tcp port 7002 \(IPv4\): EADDRINUSE/);
    expect(tcp.ports()).to.deep.equal([]);
    expect(forwards.list()).to.deep.equal([]);
    tcp.failing.set(7002, 'EACCES');
    expect(forwards.add(parts, 'tcp', spec('7000-7003')).status).to.equal('INTERNAL');
    expect(tcp.ports()).to.deep.equal([]);
    tcp.failing.clear();
    expect(forwards.add(parts, 'tcp', spec('7000-7003')).status).to.equal('OK');
    expect(tcp.ports()).to.deep.equal([7000, 7001, 7002, 7003]);
  });

  it('says why a protocol cannot be forwarded when its translator is off or there is no stack', () => {
    const forwards = new WorkerForwards(config([]));
    expect(forwards.add(fakeParts(null, new FakeListeners()), 'tcp', spec('80'))).to.deep.equal({ status: 'CONFLICT', message: 'TCP is off in this ferry (--no-tcp)' });
    expect(forwards.add(fakeParts(new FakeListeners(), null), 'udp', spec('80'))).to.deep.equal({ status: 'CONFLICT', message: 'UDP is off in this ferry (--no-udp)' });
    expect(forwards.add(null, 'udp', spec('80')).status).to.equal('CONFLICT');
  });

  it('removes host ports from rules, closing only their listeners, and counts what it removed', () => {
    const forwards = new WorkerForwards(config(['6000-6003:100-103', '6010']));
    const tcp = new FakeListeners();
    const parts = fakeParts(tcp, new FakeListeners());
    forwards.openAll(parts);
    expect(forwards.remove(parts, 'tcp', spec('6001-6002:1-2'))).to.equal(2);
    expect(tcp.ports()).to.deep.equal([6000, 6003, 6010]);
    expect(forwards.list()[0].mappings).to.deep.equal([
      { hostPortFirst: 6000, hostPortLast: 6000, guestPortFirst: 100 },
      { hostPortFirst: 6003, hostPortLast: 6003, guestPortFirst: 103 },
    ]);
    // Nothing of UDP, nothing bound to another address, nothing left there: 0.
    expect(forwards.remove(parts, 'udp', spec('6000'))).to.equal(0);
    expect(forwards.remove(parts, 'tcp', spec('127.0.0.1/6000'))).to.equal(0);
    expect(forwards.remove(parts, 'tcp', spec('6001'))).to.equal(0);
    // One spec across two rules; both go.
    expect(forwards.remove(parts, 'tcp', spec('6000-6010'))).to.equal(3);
    expect(tcp.ports()).to.deep.equal([]);
    expect(forwards.list()).to.deep.equal([]);
    // Freed ports can be forwarded again.
    expect(forwards.add(parts, 'tcp', spec('6001')).status).to.equal('OK');
  });
});
