/**
 * What the flow table keeps for the control API (flow-table.ts): serial
 * numbers that a reused slot never repeats, found again by findSerial, and
 * the inbound mark, cleared when the slot is reused.
 */
import { expect } from 'chai';
import { FlowTable, NO_FLOW, defineFlowStates } from '../../../../src/stack/flow/flow-table';

const PROTO = 252; // an experimental protocol number: this test's own
defineFlowStates(PROTO, 'control-test', ['open']);

const GUEST = Uint8Array.from([192, 0, 2, 1]);
const REMOTE = Uint8Array.from([198, 51, 100, 9]);

describe('FlowTable: serials and inbound marks for the control API', () => {
  it('gives every flow a new serial, even in a reused slot, and finds flows by it', () => {
    const table = new FlowTable(2);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1000, REMOTE, 0, 80, 0, 0);
    const serialA = table.serial[a];
    table.release(a);
    const b = table.allocate(PROTO, 4, GUEST, 0, 1001, REMOTE, 0, 80, 0, 0);
    expect(b).to.equal(a); // the slot is reused...
    expect(table.serial[b]).to.be.greaterThan(serialA); // ...its serial is not
    expect(table.findSerial(serialA)).to.equal(NO_FLOW);
    expect(table.findSerial(table.serial[b])).to.equal(b);
    // Another table of the same thread does not repeat serials either.
    const other = new FlowTable(1);
    const c = other.allocate(PROTO, 4, GUEST, 0, 1002, REMOTE, 0, 80, 0, 0);
    expect(other.serial[c]).to.be.greaterThan(table.serial[b]);
    expect([...table.flows(0)].map((f) => f.serial)).to.deep.equal([table.serial[b]]);
  });

  it('marks inbound flows until their slot is reused; free slots cannot be marked', () => {
    const table = new FlowTable(1);
    table.markInbound(0);
    const a = table.allocate(PROTO, 4, GUEST, 0, 1000, REMOTE, 0, 80, 0, 0);
    expect([...table.flows(0)][0].inbound).to.equal(false);
    table.markInbound(a);
    expect([...table.flows(0)][0].inbound).to.equal(true);
    table.release(a);
    table.allocate(PROTO, 4, GUEST, 0, 1000, REMOTE, 0, 80, 0, 0);
    expect([...table.flows(0)][0].inbound).to.equal(false);
    table.markInbound(-1);
    table.markInbound(5);
  });
});
