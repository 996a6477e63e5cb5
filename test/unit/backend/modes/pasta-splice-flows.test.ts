/**
 * pasta's -T relays as tcp-splice flows of a flow table, with REAL kernel
 * sockets inside a private network namespace this file creates (run
 * normally, it re-runs itself under `unshare --net`, FERRY_SPLICE_NETNS=1).
 * The "namespace" and "host" loopbacks are the same loopback here: the
 * forwarder listens on one port and dials another. A host server whose
 * accept queue is full leaves dials pending, so relays stay connecting
 * (half-open); the table evicts them through the kind's evictor when full,
 * and the control API's close ends a spliced one through its closer.
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as net from 'net';
import { native, type Poller } from '../../../../src/sys/native';
import { CounterBlock } from '../../../../src/sys/counters';
import type { FdWatcher, ReadyHandler } from '../../../../src/stack/context';
import { EVICTION_MIN_AGE_MS, FlowKind, FlowTable, NO_FLOW } from '../../../../src/stack/flow/flow-table';
import { loopbackSockaddr } from '../../../../src/backend/modes/pasta/loopback-forward';
import { SpliceState, TcpNamespaceForwarder } from '../../../../src/backend/modes/pasta/pasta-forward';
import { REPO_ROOT } from '../../../support/paths';

const IN_NETNS = process.env.FERRY_SPLICE_NETNS === '1';
const LISTEN_PORT = 9801;
const SERVER_PORT = 9800;
const STUCK_PORT = 9802;

class PollerWatcher implements FdWatcher {
  private readonly events = new Int32Array(128);
  private readonly handlers = new Map<number, ReadyHandler>();
  readonly poller: Poller;
  constructor() {
    this.poller = new native.Poller(this.events, (count) => {
      for (let i = 0; i < count; i++) this.handlers.get(this.events[2 * i])?.onReady(this.events[2 * i], this.events[2 * i + 1]);
    });
  }
  watch(fd: number, events: number, handler: ReadyHandler): void {
    if (this.handlers.has(fd)) this.poller.modify(fd, events);
    else this.poller.add(fd, events);
    this.handlers.set(fd, handler);
  }
  modify(fd: number, events: number): void {
    this.poller.modify(fd, events);
  }
  unwatch(fd: number): void {
    if (this.handlers.delete(fd)) this.poller.remove(fd);
  }
}

/** Opens sockets in this (the test's private) namespace, as nsOpen would in pasta's. */
function openHere(triples: number[]): number[] {
  const fds: number[] = [];
  for (let i = 0; i < triples.length; i += 3) fds.push(native.socket(triples[i], triples[i + 1], triples[i + 2]));
  return fds;
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  for (let waited = 0; !condition(); waited += 10) {
    if (waited >= timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function spliceStates(table: FlowTable): number[] {
  const states: number[] = [];
  for (let id = 0; id < table.capacity; id++) if (table.isLive(id, FlowKind.TcpSplice)) states.push(table.state[id]);
  return states;
}

if (!IN_NETNS) {
  describe('pasta tcp-splice flows (real sockets in a private network namespace)', function () {
    this.timeout(60000);
    it('passes every test of this file inside a fresh namespace', function () {
      if (spawnSync('unshare', ['--net', 'true'], { stdio: 'ignore' }).status !== 0) this.skip();
      const mocha = require.resolve('mocha/bin/mocha.js');
      const r = spawnSync('unshare', ['--net', 'sh', '-c', `set -e; ip link set lo up; exec "${process.execPath}" "${mocha}" --no-config --timeout 20000 "${__filename}"`], {
        encoding: 'utf8',
        timeout: 55_000,
        env: { ...process.env, FERRY_SPLICE_NETNS: '1' },
        cwd: REPO_ROOT,
      });
      expect(r.status, `${r.stdout}\n${r.stderr}`).to.equal(0);
      expect(Number(/(\d+) passing/.exec(r.stdout)?.[1] ?? 0), r.stdout).to.be.at.least(2);
      expect(r.stdout).to.not.match(/pending|failing/);
    });
  });
} else {
  describe('pasta tcp-splice flows in a private namespace', () => {
    let watcher: PollerWatcher;
    let forwarder: TcpNamespaceForwarder;
    const sockets: net.Socket[] = [];
    const fds: number[] = [];

    beforeEach(() => {
      watcher = new PollerWatcher();
    });

    afterEach(() => {
      for (const socket of sockets.splice(0)) socket.destroy();
      forwarder?.close();
      for (const fd of fds.splice(0)) native.close(fd);
      watcher.poller.close();
    });

    it('a spliced relay is listed as a tcp-splice flow with its bytes and closed through the kind\'s closer', async () => {
      const table = new FlowTable(8);
      forwarder = new TcpNamespaceForwarder(watcher, new CounterBlock(), true, table);
      const server = net.createServer((c) => c.on('data', (d) => c.write(d)));
      await new Promise<void>((resolve) => server.listen(SERVER_PORT, '127.0.0.1', resolve));
      try {
        expect(forwarder.listen(openHere, [{ listenPort: LISTEN_PORT, targetPort: SERVER_PORT }])).to.be.at.least(1);
        const client = net.connect(LISTEN_PORT, '127.0.0.1');
        sockets.push(client);
        let echoed = '';
        let closed = false;
        client.on('data', (d) => (echoed += d.toString()));
        client.on('close', () => (closed = true));
        client.on('error', () => undefined);
        client.write('hello');
        await until(() => echoed === 'hello', 5000, 'the echo through the relay');
        const flows = [...table.flows(performance.now())];
        expect(flows).to.have.length(1);
        expect(flows[0]).to.deep.include({ kind: 'tcp-splice', state: 'spliced', inbound: false, remotePort: SERVER_PORT, guestPort: client.localPort, bytesFromGuest: 5, bytesToGuest: 5 });
        expect(table.closeFlow(flows[0].id)).to.equal(true);
        await until(() => closed, 5000, 'the client to see the relay close');
        expect(table.count).to.equal(0);
        expect(forwarder.relayCount).to.equal(0);
      } finally {
        await new Promise((r) => server.close(r));
      }
    });

    it('relays stuck connecting are evicted through the kind\'s evictor when the table is full', async () => {
      const capacity = 4;
      const table = new FlowTable(capacity);
      forwarder = new TcpNamespaceForwarder(watcher, new CounterBlock(), true, table);
      // A host server that never accepts, with the smallest accept queue: further dials stay in SYN_SENT.
      const c = native.constants;
      const stuck = native.socket(c.AF_INET, c.SOCK_STREAM, 0);
      fds.push(stuck);
      native.bind(stuck, loopbackSockaddr(4, STUCK_PORT));
      native.listen(stuck, 0);
      forwarder.listen(openHere, [{ listenPort: LISTEN_PORT, targetPort: STUCK_PORT }]);
      const closedClients = new Set<number>();
      for (let i = 0; i < capacity; i++) {
        const client = net.connect(LISTEN_PORT, '127.0.0.1');
        client.on('close', () => closedClients.add(i));
        client.on('error', () => undefined);
        sockets.push(client);
      }
      await until(() => table.countOf(FlowKind.TcpSplice) === capacity, 5000, 'every connection to be a relay');
      await until(() => spliceStates(table).filter((s) => s === SpliceState.Connecting).length >= 2, 5000, 'relays stuck connecting');
      await new Promise((r) => setTimeout(r, EVICTION_MIN_AGE_MS + 10));
      const connecting = spliceStates(table).filter((s) => s === SpliceState.Connecting).length;
      const id = table.allocate(FlowKind.Udp, 4, Uint8Array.of(192, 0, 2, 1), 0, 5000, Uint8Array.of(198, 51, 100, 1), 0, 53, 0, performance.now());
      expect(id).to.not.equal(NO_FLOW);
      expect(table.evictions).to.equal(1);
      // A connecting relay went, not the spliced one.
      expect(spliceStates(table).filter((s) => s === SpliceState.Connecting).length).to.equal(connecting - 1);
      expect(table.countOf(FlowKind.TcpSplice)).to.equal(capacity - 1);
      expect(forwarder.relayCount).to.equal(capacity - 1);
      await until(() => closedClients.size === 1, 5000, 'the evicted relay\'s client to see it close');
    });
  });
}
