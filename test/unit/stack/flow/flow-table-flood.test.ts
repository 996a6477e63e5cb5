/**
 * The flow table under a flood: keyed buckets (a secret per table, keys a
 * peer picks spread evenly), the per-source bound on flows the network
 * opens, and eviction through each kind's evictor when the table is full.
 */
import { expect } from 'chai';
import { CounterBlock, counterDefinitions } from '../../../../src/sys/counters';
import { EVICTABLE_IDLE_MS, EVICTION_MIN_AGE_MS, FlowTable, MAX_FLOWS_PER_SOURCE, NO_FLOW, defineFlowStates, flowKindName } from '../../../../src/stack/flow/flow-table';

const KIND = 252; // a number no real kind uses: its counters are this test's own
const OTHER = 249;
defineFlowStates(KIND, 'flood-test', ['open']);
defineFlowStates(OTHER, 'flood-other', ['open']);

const GUEST = Uint8Array.from([192, 0, 2, 10]);
const ATTACKER = Uint8Array.from([203, 0, 113, 66]);

function peer(i: number): Uint8Array {
  return Uint8Array.from([198, 51, 100, i & 0xff]);
}

function counterOf(metric: string, label: string): number {
  return counterDefinitions().findIndex((d) => d.metric === metric && d.labels.protocol === label);
}

describe('FlowTable under a flood', () => {
  describe('keyed buckets', () => {
    it('spreads keys that differ in one port only over the buckets', () => {
      const table = new FlowTable(4096);
      // 4096 keys into 8192 buckets: a uniform hash leaves no chain much longer than a handful.
      const chains = new Map<number, number>();
      for (let port = 0; port < 4096; port++) {
        const bucket = table.bucketOf(KIND, 4, GUEST, 0, 80, ATTACKER, 0, port);
        chains.set(bucket, (chains.get(bucket) ?? 0) + 1);
      }
      expect(Math.max(...chains.values())).to.be.below(10);
      expect(chains.size).to.be.above(2500); // ~3220 expected for 4096 balls in 8192 bins
    });

    it('places the same keys differently under another secret', () => {
      const a = new FlowTable(1024, null, new Uint8Array(16).fill(1));
      const b = new FlowTable(1024, null, new Uint8Array(16).fill(2));
      let same = 0;
      for (let port = 0; port < 256; port++) if (a.bucketOf(KIND, 4, GUEST, 0, 80, ATTACKER, 0, port) === b.bucketOf(KIND, 4, GUEST, 0, 80, ATTACKER, 0, port)) same++;
      expect(same).to.be.below(10); // chance agreement is 256/2048
    });

    it('keys that collide in one table are found apart in it (whole-key compare)', () => {
      const table = new FlowTable(64, null, new Uint8Array(16));
      // Find two ports sharing a bucket under this fixed secret, then use both.
      const byBucket = new Map<number, number>();
      let pair: [number, number] | null = null;
      for (let port = 0; port < 10_000 && pair === null; port++) {
        const bucket = table.bucketOf(KIND, 4, GUEST, 0, 80, ATTACKER, 0, port);
        const earlier = byBucket.get(bucket);
        if (earlier !== undefined) pair = [earlier, port];
        else byBucket.set(bucket, port);
      }
      expect(pair).to.not.equal(null);
      const [p, q] = pair as [number, number];
      const a = table.allocate(KIND, 4, GUEST, 0, 80, ATTACKER, 0, p, 0, 0);
      const b = table.allocate(KIND, 4, GUEST, 0, 80, ATTACKER, 0, q, 0, 0);
      expect(table.lookup(KIND, 4, GUEST, 0, 80, ATTACKER, 0, p)).to.equal(a);
      expect(table.lookup(KIND, 4, GUEST, 0, 80, ATTACKER, 0, q)).to.equal(b);
      table.release(a);
      expect(table.lookup(KIND, 4, GUEST, 0, 80, ATTACKER, 0, q)).to.equal(b);
    });
  });

  describe('per-source bound', () => {
    it('refuses inbound flows past MAX_FLOWS_PER_SOURCE from one address, not from others', () => {
      const counters = new CounterBlock();
      const table = new FlowTable(MAX_FLOWS_PER_SOURCE * 4, counters);
      for (let port = 0; port < MAX_FLOWS_PER_SOURCE; port++) {
        expect(table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 10_000 + port, 0, 0)).to.not.equal(NO_FLOW);
      }
      expect(table.inboundFrom(4, ATTACKER, 0)).to.equal(MAX_FLOWS_PER_SOURCE);
      expect(table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 9999, 0, 0)).to.equal(NO_FLOW);
      expect(counters.get(counterOf('ferry_flows_source_limited_total', 'flood-test'))).to.equal(1);
      // Another source, and the guest's own flows, are not affected.
      expect(table.allocateInbound(KIND, 4, GUEST, 0, 80, peer(1), 0, 9999, 0, 0)).to.not.equal(NO_FLOW);
      expect(table.allocate(KIND, 4, GUEST, 0, 5555, ATTACKER, 0, 53, 0, 0)).to.not.equal(NO_FLOW);
      // A released flow gives its source room again.
      table.release(table.lookup(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 10_000));
      expect(table.inboundFrom(4, ATTACKER, 0)).to.equal(MAX_FLOWS_PER_SOURCE - 1);
      const again = table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 9999, 0, 0);
      expect(again).to.not.equal(NO_FLOW);
      expect(table.inbound[again]).to.equal(1);
    });

    it('counts flows marked inbound after allocate() too, once each', () => {
      const table = new FlowTable(8);
      const id = table.allocate(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 1, 0, 0);
      table.markInbound(id);
      table.markInbound(id);
      expect(table.inboundFrom(4, ATTACKER, 0)).to.equal(1);
      table.release(id);
      expect(table.inboundFrom(4, ATTACKER, 0)).to.equal(0);
    });
  });

  describe('eviction when full', () => {
    /** An evictor that gives up flows in `evictable`, releasing them, and records what it was offered. */
    function evictorFor(table: FlowTable, evictable: (id: number) => boolean, offered: number[]) {
      return (id: number): boolean => {
        offered.push(id);
        if (!evictable(id)) return false;
        table.release(id);
        return true;
      };
    }

    it('refuses when no kind has an evictor (the old behaviour)', () => {
      const table = new FlowTable(2);
      table.allocate(KIND, 4, GUEST, 0, 1, peer(1), 0, 1, 0, 0);
      table.allocate(KIND, 4, GUEST, 0, 2, peer(1), 0, 1, 0, 0);
      expect(table.allocate(KIND, 4, GUEST, 0, 3, peer(1), 0, 1, 0, 0)).to.equal(NO_FLOW);
    });

    it('evicts an inbound flow before the guest\'s own, through the kind\'s evictor', () => {
      const counters = new CounterBlock();
      const table = new FlowTable(4, counters);
      const offered: number[] = [];
      table.registerEvictor(KIND, evictorFor(table, () => true, offered));
      const own = [0, 1, 2].map((i) => table.allocate(KIND, 4, GUEST, 0, 100 + i, peer(i), 0, 443, 0, 0));
      const inbound = table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 4000, 0, 0);
      expect(table.full).to.equal(true);
      const fresh = table.allocate(KIND, 4, GUEST, 0, 200, peer(9), 0, 443, 0, 1000);
      expect(fresh).to.equal(inbound); // its slot, freed
      expect(offered).to.deep.equal([inbound]);
      for (const id of own) expect(table.family[id]).to.equal(4);
      expect(table.lookup(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 4000)).to.equal(NO_FLOW);
      expect(table.inboundFrom(4, ATTACKER, 0)).to.equal(0);
      expect(table.evictions).to.equal(1);
      expect(counters.get(counterOf('ferry_flows_evicted_total', 'flood-test'))).to.equal(1);
    });

    it('keeps flows their kind declines, and kinds without an evictor', () => {
      const table = new FlowTable(3);
      const offered: number[] = [];
      const keep = table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 1, 0, 0);
      const foreign = table.allocateInbound(OTHER, 4, GUEST, 0, 80, ATTACKER, 0, 2, 0, 0);
      const idle = table.allocate(KIND, 4, GUEST, 0, 7, peer(7), 0, 7, 0, 0);
      table.registerEvictor(KIND, evictorFor(table, (id) => table.guestPort[id] === 7, offered));
      expect(table.allocate(KIND, 4, GUEST, 0, 8, peer(8), 0, 8, 0, 1000)).to.equal(idle);
      expect(offered).to.deep.equal([keep, idle]); // inbound first; OTHER has no evictor: never offered
      expect(table.family[foreign]).to.equal(4);
      // Now nothing is evictable: refused.
      expect(table.allocate(KIND, 4, GUEST, 0, 9, peer(9), 0, 9, 0, 1000)).to.equal(NO_FLOW);
    });

    it('prefers flows from a source over its bound', () => {
      const table = new FlowTable(MAX_FLOWS_PER_SOURCE + 4);
      const offered: number[] = [];
      table.registerEvictor(KIND, evictorFor(table, () => true, offered));
      // A peer that is legitimately inbound, then a flooder marked past the bound by allocate()+markInbound().
      const legit = table.allocateInbound(KIND, 4, GUEST, 0, 80, peer(5), 0, 1, 0, 0);
      for (let i = 0; table.count < table.capacity; i++) table.markInbound(table.allocate(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 20_000 + i, 0, 0));
      const flooding = table.inboundFrom(4, ATTACKER, 0);
      expect(flooding).to.be.above(MAX_FLOWS_PER_SOURCE);
      expect(table.allocate(KIND, 4, GUEST, 0, 9, peer(9), 0, 9, 0, 1000)).to.not.equal(NO_FLOW);
      expect(offered).to.have.length(1);
      expect(table.inboundFrom(4, ATTACKER, 0)).to.equal(flooding - 1);
      expect(table.lookup(KIND, 4, GUEST, 0, 80, peer(5), 0, 1)).to.equal(legit);
    });

    it('never offers a flow opened moments ago (a kind may still hold its id from the same batch)', () => {
      const table = new FlowTable(1);
      const offered: number[] = [];
      table.registerEvictor(KIND, evictorFor(table, () => true, offered));
      table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 1, 0, 1000);
      expect(table.allocate(KIND, 4, GUEST, 0, 2, peer(2), 0, 2, 0, 1000 + EVICTION_MIN_AGE_MS - 1)).to.equal(NO_FLOW);
      expect(offered).to.deep.equal([]);
      expect(table.allocate(KIND, 4, GUEST, 0, 2, peer(2), 0, 2, 0, 1000 + EVICTION_MIN_AGE_MS)).to.not.equal(NO_FLOW);
    });

    it('offers flows of an earlier run of the event loop at once, however young', async () => {
      const table = new FlowTable(1);
      const offered: number[] = [];
      table.registerEvictor(KIND, evictorFor(table, () => true, offered));
      table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 1, 0, 1000);
      await Promise.resolve();
      expect(table.allocate(KIND, 4, GUEST, 0, 2, peer(2), 0, 2, 0, 1000)).to.not.equal(NO_FLOW);
      expect(offered).to.have.length(1);
    });

    it('releases a slot whose evictor said yes but kept it, and does not recurse', () => {
      const table = new FlowTable(1);
      let nested = -2;
      table.registerEvictor(KIND, () => {
        nested = table.allocate(KIND, 4, GUEST, 0, 3, peer(3), 0, 3, 0, 0); // full and evicting: refused
        return true;
      });
      const first = table.allocate(KIND, 4, GUEST, 0, 1, peer(1), 0, 1, 0, 0);
      const second = table.allocate(KIND, 4, GUEST, 0, 2, peer(2), 0, 2, 0, 1000);
      expect(nested).to.equal(NO_FLOW);
      expect(second).to.equal(first);
      expect(table.count).to.equal(1);
      expect(table.lookup(KIND, 4, GUEST, 0, 2, peer(2), 0, 2)).to.equal(second);
    });

    it('bounds the work of one allocation under a table full of flows nobody gives up', () => {
      const table = new FlowTable(4096);
      let calls = 0;
      table.registerEvictor(KIND, () => {
        calls++;
        return false;
      });
      for (let i = 0; i < 4096; i++) table.allocate(KIND, 4, GUEST, 0, i, peer(1), 0, 1, 0, 0);
      expect(table.allocate(KIND, 4, GUEST, 0, 9, peer(9), 0, 9, 0, 1000)).to.equal(NO_FLOW);
      expect(calls).to.be.at.most(128);
    });
  });

  it('halfOpenOrIdle: unanswered by the side that did not open it, or idle for EVICTABLE_IDLE_MS', () => {
    const table = new FlowTable(4);
    const idleMs = 30_000;
    const outbound = table.allocate(KIND, 4, GUEST, 0, 1, peer(1), 0, 1, 0, 0);
    table.bytesFromGuest[outbound] = 10;
    table.deadline[outbound] = 1000 + idleMs; // last active at 1000
    expect(table.halfOpenOrIdle(outbound, 1000, idleMs), 'the host never answered').to.equal(true);
    table.bytesToGuest[outbound] = 10;
    expect(table.halfOpenOrIdle(outbound, 1000 + EVICTABLE_IDLE_MS - 1, idleMs)).to.equal(false);
    expect(table.halfOpenOrIdle(outbound, 1000 + EVICTABLE_IDLE_MS, idleMs)).to.equal(true);
    const inbound = table.allocateInbound(KIND, 4, GUEST, 0, 80, ATTACKER, 0, 2, 0, 0);
    table.bytesToGuest[inbound] = 10;
    expect(table.halfOpenOrIdle(inbound, 0, idleMs), 'the guest never answered').to.equal(true);
    table.bytesFromGuest[inbound] = 1;
    expect(table.halfOpenOrIdle(inbound, 0, idleMs)).to.equal(false);
  });

  it('names kinds by their declared label', () => {
    expect(flowKindName(KIND)).to.equal('flood-test');
    expect(flowKindName(248)).to.equal('248');
  });
});
