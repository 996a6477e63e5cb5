import { expect } from 'chai';
import { native } from '../../../../src/sys/native';
import { FrontendLoop, maxFrameLengthFor } from '../../../../src/backend/modes/frontend-loop';

function tick(ms = 20): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

describe('FrontendLoop', () => {
  const fds: number[] = [];
  afterEach(() => {
    for (const fd of fds.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // closed by the test
      }
    }
  });

  function pair(): [number, number] {
    const [a, b] = native.socketpair();
    native.setNonBlocking(a, true);
    fds.push(a, b);
    return [a, b];
  }

  it('calls the handler of a ready fd with its events, then the batch-end hooks once per batch', async () => {
    const loop = new FrontendLoop();
    try {
      const [a, b] = pair();
      const [c, d] = pair();
      const seen: string[] = [];
      const drain = (fd: number): void => {
        while (native.read(fd, new Uint8Array(64), 0, 64) > 0);
      };
      loop.watch(a, native.constants.EPOLLIN, { onReady: (fd, events) => (seen.push(`a ${fd === a} ${(events & native.constants.EPOLLIN) !== 0}`), drain(fd)) });
      loop.watch(c, native.constants.EPOLLIN, { onReady: (fd) => (seen.push('c'), drain(fd)) });
      loop.onBatchEnd(() => seen.push('end'));
      native.write(b, Uint8Array.of(1), 0, 1);
      native.write(d, Uint8Array.of(2), 0, 1);
      for (let i = 0; i < 50 && !seen.includes('end'); i++) await tick(10);
      expect(seen.filter((s) => s !== 'end').sort()).to.deep.equal(['a true true', 'c']);
      expect(seen[seen.length - 1]).to.equal('end');
    } finally {
      loop.close();
    }
  });

  it('modify changes the events; unwatch stops the callbacks; watch of a watched fd replaces its handler', async () => {
    const loop = new FrontendLoop();
    try {
      const [a] = pair();
      let writable = 0;
      let replaced = 0;
      loop.watch(a, 0, { onReady: () => writable++ });
      await tick();
      expect(writable).to.equal(0);
      loop.modify(a, native.constants.EPOLLOUT);
      for (let i = 0; i < 50 && writable === 0; i++) await tick(10);
      expect(writable).to.be.greaterThan(0);
      loop.watch(a, native.constants.EPOLLOUT, { onReady: () => replaced++ });
      for (let i = 0; i < 50 && replaced === 0; i++) await tick(10);
      expect(replaced).to.be.greaterThan(0);
      loop.unwatch(a);
      const before = replaced;
      await tick(50);
      expect(replaced).to.equal(before);
    } finally {
      loop.close();
    }
  });

  it('timers run until close; close is idempotent and silences everything', async () => {
    const loop = new FrontendLoop();
    let ticks = 0;
    loop.every(10, () => ticks++);
    for (let i = 0; i < 50 && ticks < 2; i++) await tick(10);
    expect(ticks).to.be.greaterThan(1);
    loop.close();
    loop.close();
    const after = ticks;
    await tick(50);
    expect(ticks).to.equal(after);
    const [a, b] = pair();
    loop.watch(a, native.constants.EPOLLIN, { onReady: () => ticks++ });
    native.write(b, Uint8Array.of(1), 0, 1);
    await tick(50);
    expect(ticks).to.equal(after);
  });

  it('handlerOf names the handler watching an fd; dispose drops handlers and batch hooks', () => {
    const loop = new FrontendLoop();
    const [a] = pair();
    const handler = { onReady: (): void => undefined };
    loop.watch(a, native.constants.EPOLLIN, handler);
    loop.onBatchEnd(() => undefined);
    expect(loop.handlerOf(a)).to.equal(handler);
    expect(loop.watchedCount).to.equal(1);
    loop.unwatch(a);
    expect(loop.handlerOf(a)).to.equal(undefined);
    loop.watch(a, native.constants.EPOLLIN, handler);
    loop.dispose();
    expect(loop.watchedCount).to.equal(0, 'nothing the loop was given stays reachable from it');
    expect(loop.handlerOf(a)).to.equal(undefined);
    loop.dispose();
  });

  it('maxFrameLengthFor: MTU plus the Ethernet header; 0 (announce none) means the default MTU', () => {
    expect(maxFrameLengthFor(1500)).to.equal(1514);
    expect(maxFrameLengthFor(0)).to.equal(65534);
  });
});
