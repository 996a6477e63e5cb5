/**
 * The shared flow table: numeric lookups, capacity bound, free list reuse,
 * state gauges, fd mapping, due timers and the control-API iterator.
 */
import { expect } from 'chai';
import { CounterBlock, counterDefinitions } from '../../../../src/sys/counters';
import { FlowTable, NO_FLOW, defineFlowStates } from '../../../../src/stack/flow/flow-table';

const PROTO = 253; // an experimental protocol number: its gauges are this test's own
defineFlowStates(PROTO, 'test', ['opening', 'open']);

const GUEST = Uint8Array.from([192, 0, 2, 1]);
const GUEST6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

function remote(i: number): Uint8Array {
  return Uint8Array.from([198, 51, 100, i & 0xff]);
}

function gaugeSlot(state: string): number {
  return counterDefinitions().findIndex((d) => d.metric === 'ferry_flows' && d.labels.protocol === 'test' && d.labels.state === state);
}

describe('FlowTable', () => {
  it('finds flows by the whole key, addresses at any offset', () => {
    const table = new FlowTable(8);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1000, remote(1), 0, 80, 0, 0);
    const b = table.allocate(PROTO, 4, GUEST, 0, 1001, remote(1), 0, 80, 0, 0);
    expect(a).to.not.equal(b);
    // The same key inside a larger packet buffer.
    const packet = new Uint8Array(40);
    packet.set(GUEST, 12);
    packet.set(remote(1), 16);
    expect(table.lookup(PROTO, 4, packet, 12, 1000, packet, 16, 80)).to.equal(a);
    expect(table.lookup(PROTO, 4, packet, 12, 1001, packet, 16, 80)).to.equal(b);
    // Any field different: no match.
    expect(table.lookup(PROTO, 4, packet, 12, 1000, packet, 16, 81)).to.equal(NO_FLOW);
    expect(table.lookup(PROTO + 1, 4, packet, 12, 1000, packet, 16, 80)).to.equal(NO_FLOW);
    expect(table.lookup(PROTO, 4, GUEST, 0, 1000, remote(2), 0, 80)).to.equal(NO_FLOW);
  });

  it('keeps IPv4 and IPv6 flows apart', () => {
    const table = new FlowTable(4);
    const r6 = GUEST6.slice();
    r6[15] = 2;
    const v6 = table.allocate(PROTO, 6, GUEST6, 0, 5, r6, 0, 6, 0, 0);
    expect(table.lookup(PROTO, 6, GUEST6, 0, 5, r6, 0, 6)).to.equal(v6);
    // The first 4 bytes of the IPv6 addresses are no IPv4 flow.
    expect(table.lookup(PROTO, 4, GUEST6, 0, 5, r6, 0, 6)).to.equal(NO_FLOW);
  });

  it('is bounded: allocation fails when full and succeeds again after a release', () => {
    const counters = new CounterBlock();
    const table = new FlowTable(3, counters);
    const ids = [0, 1, 2].map((i) => table.allocate(PROTO, 4, GUEST, 0, 2000 + i, remote(i), 0, 443, 0, 0));
    expect(ids).to.deep.equal([0, 1, 2]);
    expect(table.full).to.equal(true);
    expect(table.allocate(PROTO, 4, GUEST, 0, 3000, remote(9), 0, 443, 0, 0)).to.equal(NO_FLOW);
    const refused = counterDefinitions().findIndex((d) => d.metric === 'ferry_flows_refused_total' && d.labels.protocol === 'test');
    expect(counters.get(refused)).to.equal(1);
    table.release(1);
    expect(table.lookup(PROTO, 4, GUEST, 0, 2001, remote(1), 0, 443)).to.equal(NO_FLOW);
    // The others are still found (the hash chains survived the unlink).
    expect(table.lookup(PROTO, 4, GUEST, 0, 2000, remote(0), 0, 443)).to.equal(0);
    expect(table.lookup(PROTO, 4, GUEST, 0, 2002, remote(2), 0, 443)).to.equal(2);
    expect(table.allocate(PROTO, 4, GUEST, 0, 3000, remote(9), 0, 443, 0, 0)).to.equal(1);
    expect(table.count).to.equal(3);
    expect(table.countOf(PROTO)).to.equal(3);
  });

  it('keeps every flow of a full table findable through releases in any order', () => {
    const table = new FlowTable(64);
    const keys: number[] = [];
    for (let i = 0; i < 64; i++) keys.push(table.allocate(PROTO, 4, GUEST, 0, 10_000 + i, remote(7), 0, 53, 0, 0));
    for (let i = 0; i < 64; i++) expect(table.lookup(PROTO, 4, GUEST, 0, 10_000 + i, remote(7), 0, 53)).to.equal(keys[i]);
    for (let i = 0; i < 64; i += 3) table.release(keys[i]);
    for (let i = 0; i < 64; i++) {
      const expected = i % 3 === 0 ? NO_FLOW : keys[i];
      expect(table.lookup(PROTO, 4, GUEST, 0, 10_000 + i, remote(7), 0, 53)).to.equal(expected);
    }
    expect(table.count).to.equal(64 - 22);
  });

  it('keeps the per-state gauges exact across state changes and releases', () => {
    const counters = new CounterBlock();
    const table = new FlowTable(4, counters);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1, remote(1), 0, 1, 0, 0);
    const b = table.allocate(PROTO, 4, GUEST, 0, 2, remote(1), 0, 1, 0, 0);
    table.setState(a, 1);
    expect(counters.get(gaugeSlot('opening'))).to.equal(1);
    expect(counters.get(gaugeSlot('open'))).to.equal(1);
    table.release(a);
    table.release(a); // twice: no effect
    table.release(b);
    expect(counters.get(gaugeSlot('opening'))).to.equal(0);
    expect(counters.get(gaugeSlot('open'))).to.equal(0);
  });

  it('maps sockets to flows and forgets them on release', () => {
    const table = new FlowTable(2);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1, remote(1), 0, 1, 0, 0);
    table.setFd(a, 42);
    expect(table.flowOfFd(42)).to.equal(a);
    table.setFd(a, 43);
    expect(table.flowOfFd(42)).to.equal(NO_FLOW);
    table.release(a);
    expect(table.flowOfFd(43)).to.equal(NO_FLOW);
    expect(table.fd[a]).to.equal(-1);
  });

  it('visits only due flows of the protocol asked for', () => {
    const table = new FlowTable(4);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1, remote(1), 0, 1, 0, 0);
    const b = table.allocate(PROTO, 4, GUEST, 0, 2, remote(1), 0, 1, 0, 0);
    const c = table.allocate(17, 4, GUEST, 0, 3, remote(1), 0, 1, 0, 0);
    table.deadline[a] = 100;
    table.deadline[b] = 300;
    table.deadline[c] = 100;
    const seen: number[] = [];
    table.forEachDue(200, PROTO, (id) => {
      seen.push(id);
      table.release(id);
    });
    expect(seen).to.deep.equal([a]);
    table.forEachDue(200, -1, (id) => seen.push(id));
    expect(seen).to.deep.equal([a, c]);
  });

  it('lists flows for the control API with state names, bytes and age', () => {
    const table = new FlowTable(4);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1234, remote(5), 0, 80, 1, 1000);
    table.bytesFromGuest[a] = 10;
    table.bytesToGuest[a] = 20;
    const flows = [...table.flows(1500)];
    expect(flows).to.have.length(1);
    expect(flows[0]).to.deep.include({ id: a, protocol: PROTO, family: 4, state: 'open', guestPort: 1234, remotePort: 80, bytesFromGuest: 10, bytesToGuest: 20, ageMs: 500 });
    expect([...flows[0].remoteAddress]).to.deep.equal([198, 51, 100, 5]);
  });

  it('rejects an unusable capacity', () => {
    expect(() => new FlowTable(0)).to.throw(RangeError);
    expect(() => new FlowTable(1.5)).to.throw(RangeError);
  });
});
