/**
 * QueueWorker over real worker threads whose script misbehaves on purpose
 * (an exception escaping, an exit, no answer): the failure is reported once,
 * later requests are refused at once, and no fd handed over is kept.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../../../../src/sys/native';
import { QueueWorker } from '../../../../src/backend/modes/vhost-user/queue-worker';
import { SHARED_LAYOUT } from '../../../../src/backend/modes/vhost-user/counter-layout';

/** A worker script: answers every request with 0, except `vring-call`, where it does `onCall`. */
function workerScript(onCall: string): string {
  return `
const { parentPort } = require('worker_threads');
parentPort.on('message', (m) => {
  if (m.op === 'vring-call') { ${onCall} }
  else parentPort.postMessage({ type: 'reply', id: m.id, ok: true, value: 0 });
});
// The layout this (main) thread computed: in a test run other modules may have declared counters first.
parentPort.postMessage({ type: 'ready', counterLayout: ${JSON.stringify(SHARED_LAYOUT)} });
`;
}

function isOpen(fd: number): boolean {
  try {
    native.fstat(fd);
    return true;
  } catch {
    return false;
  }
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** The fd count once it holds still for 100 ms (a worker thread that ends closes its own loop's fds), within 3 s. */
async function settledFdCount(): Promise<number> {
  let count = openFdCount();
  for (let i = 0; i < 30; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const next = openFdCount();
    if (next === count) return count;
    count = next;
  }
  return count;
}

describe('QueueWorker: a failing worker is reported once and keeps no fd', function () {
  this.timeout(20000);
  let dir: string;
  const workers: QueueWorker[] = [];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-qw-'));
  });

  after(async () => {
    for (const w of workers) await w.terminate();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function start(name: string, onCall: string, requestTimeoutMs = 5000): Promise<{ worker: QueueWorker; failures: string[] }> {
    const script = path.join(dir, `${name}.js`);
    fs.writeFileSync(script, workerScript(onCall));
    const failures: string[] = [];
    const worker = new QueueWorker(
      { queuePair: 0, stack: null, protocols: { tcp: true, udp: true, icmp: true }, pcapPath: null, debug: false },
      () => undefined,
      (_queuePair, reason) => failures.push(reason),
      { script, requestTimeoutMs },
    );
    workers.push(worker);
    await worker.whenReady();
    return { worker, failures };
  }

  for (const [what, onCall] of [
    ['an exception escaping', "setImmediate(() => { throw new Error('boom'); });"],
    ['an exit nobody asked for', 'process.exit(3);'],
    ['no answer within the deadline', '/* never answers */'],
  ] as const) {
    it(`${what}: reported once, the fd sent with the request closed, later requests refused and their fds closed`, async () => {
      const { worker, failures } = await start(what.replace(/\W+/g, '-'), onCall, 300);
      expect(await worker.request({ op: 'vring-num', ring: 0, num: 256 })).to.equal(0);
      const fd = native.eventfd(0);
      let error: unknown = null;
      await worker.request({ op: 'vring-call', ring: 0, fd }, [fd]).catch((e: unknown) => (error = e));
      expect(error, 'the request failed').to.be.instanceOf(Error);
      expect(isOpen(fd), 'the fd sent with the unanswered request').to.equal(false);
      expect(failures.length).to.equal(1);
      expect(worker.failed).to.equal(true);
      // The front-end keeps handing fds over: none of them stays open.
      const before = await settledFdCount();
      for (let i = 0; i < 200; i++) {
        const next = native.eventfd(0);
        await worker.request({ op: 'vring-call', ring: 0, fd: next }, [next]).then(
          () => expect.fail('a failed worker answered'),
          () => undefined,
        );
      }
      expect(openFdCount()).to.equal(before);
      expect(failures.length).to.equal(1, 'reported once');
    });
  }

  it('a worker stuck in a blocking system call: reported, and terminate() says it could not stop it', async () => {
    const [readEnd, writeEnd] = native.pipe();
    native.setNonBlocking(writeEnd, false);
    const nativePath = path.resolve(__dirname, '../../../../src/sys/native.js');
    const { worker, failures } = await start(
      'stuck',
      `const { native } = require(${JSON.stringify(nativePath)}); const b = new Uint8Array(1 << 20); native.write(${writeEnd}, b, 0, b.length);`,
      300,
    );
    try {
      const fd = native.eventfd(0);
      await worker.request({ op: 'vring-call', ring: 0, fd }, [fd]).then(() => expect.fail('a stuck worker answered'), () => undefined);
      expect(failures.length).to.equal(1);
      expect(await worker.terminate()).to.equal(false);
    } finally {
      // Unblock the thread (its write fails with EPIPE) so that it can end with this test.
      native.close(readEnd);
      native.close(writeEnd);
    }
  });

  it('a worker that answers is never reported, and terminate() is no failure', async () => {
    const { worker, failures } = await start('answers', 'parentPort.postMessage({ type: "reply", id: m.id, ok: true, value: 0 });');
    const fd = native.eventfd(0);
    expect(await worker.request({ op: 'vring-call', ring: 0, fd }, [fd])).to.equal(0);
    expect(isOpen(fd), 'the worker owns the fd once it answered').to.equal(true);
    native.close(fd);
    await worker.terminate();
    expect(failures).to.deep.equal([]);
  });
});
