import { expect } from 'chai';
import { CounterBlock } from '../../../src/sys/counters';
import { native } from '../../../src/sys/native';
import type { ReadyHandler } from '../../../src/stack/context';
import { PortLease, WatcherLease, createStackParts } from '../../../src/stack/stack-factory';
import { FakeFramePort, NO_OFFLOAD, testConfig } from '../../support/fakes/stack-fakes';

/** An fd watcher that only records (no fd is ever polled). */
class RecordingWatcher {
  readonly handlers = new Map<number, ReadyHandler>();
  watch(fd: number, _events: number, handler: ReadyHandler): void {
    this.handlers.set(fd, handler);
  }
  modify(): void {
    // Nothing to change in a recording.
  }
  unwatch(fd: number): void {
    this.handlers.delete(fd);
  }
  handlerOf(fd: number): ReadyHandler | undefined {
    return this.handlers.get(fd);
  }
}

describe('stack-factory: a stack holds the port and the loop only for its lifetime', () => {
  it('PortLease forwards while held; after revoke it reserves nothing and the port no longer calls into it', () => {
    const port = new FakeFramePort();
    const lease = new PortLease(port);
    let calls = 0;
    lease.onWritable = () => calls++;
    port.onWritable?.();
    expect(calls).to.equal(1);
    expect(lease.reserve(64)).to.not.equal(null);
    lease.commit(60, NO_OFFLOAD);
    lease.flush();
    expect(port.frames.length).to.equal(1);
    lease.revoke();
    expect(port.onWritable).to.equal(null);
    expect(lease.reserve(64)).to.equal(null);
    lease.commit(60, NO_OFFLOAD);
    expect(port.frames.length).to.equal(1, 'nothing reaches the port after revoke');
  });

  it('leases in a row never chain: the next stack\'s listener is the only one called', () => {
    const port = new FakeFramePort();
    const first = new PortLease(port);
    let firstCalls = 0;
    first.onWritable = () => firstCalls++;
    first.revoke();
    const second = new PortLease(port);
    let secondCalls = 0;
    second.onWritable = () => secondCalls++;
    port.onWritable?.();
    expect([firstCalls, secondCalls]).to.deep.equal([0, 1]);
  });

  it('a listener set before the stack keeps being called and gets its place back on revoke', () => {
    const port = new FakeFramePort();
    let earlier = 0;
    const before = (): void => void earlier++;
    port.onWritable = before;
    const lease = new PortLease(port);
    port.onWritable?.();
    expect(earlier).to.equal(1);
    lease.revoke();
    expect(port.onWritable).to.equal(before);
  });

  it('WatcherLease unwatches on revoke what the stack left watched, but not an fd someone else took over', () => {
    const loop = new RecordingWatcher();
    const lease = new WatcherLease(loop);
    const mine: ReadyHandler = { onReady: () => undefined };
    const theirs: ReadyHandler = { onReady: () => undefined };
    lease.watch(40, 1, mine);
    lease.watch(41, 1, mine);
    lease.watch(42, 1, mine);
    lease.unwatch(42);
    loop.watch(41, 1, theirs); // fd 41 was closed without unwatch and its number reused
    expect(lease.revoke()).to.equal(1);
    expect([...loop.handlers.keys()]).to.deep.equal([41]);
    lease.watch(43, 1, mine);
    expect(loop.handlers.has(43)).to.equal(false, 'a revoked lease watches nothing');
  });

  it('StackParts.dispose(): services closed, the port\'s onWritable released, nothing left on the loop', () => {
    const port = new FakeFramePort();
    const loop = new RecordingWatcher();
    const parts = createStackParts({ config: testConfig(), port, counters: new CounterBlock(), watcher: loop, sockets: native });
    expect(parts.tcp).to.not.equal(null);
    expect(parts.udp).to.not.equal(null);
    expect(port.onWritable, 'the services listen for RX buffers').to.not.equal(null);
    parts.dispose();
    parts.dispose();
    expect(port.onWritable).to.equal(null);
    expect(loop.handlers.size).to.equal(0);
    expect(parts.stack.isDisposed).to.equal(true);
    expect(parts.stack.tcpHandler).to.equal(null);
  });
});
