/**
 * Tests of the C++ addon through its typed binding (src/native.ts). Sockets
 * used here are AF_UNIX pairs/paths in a temp dir and 127.0.0.1 only.
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { type IoVecList, type NativeError, native } from '../../../src/sys/native';
import { DIST_ROOT } from '../../support/paths';

const C = native.constants;
const KiB = 1024;

/** Run fn, expecting it to throw; returns the error. */
function thrown(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected an exception');
}

/** An IoVecList over the given (buffer, offset, length) triples. */
function iovList(entries: [ArrayBuffer | Uint8Array, number, number][]): IoVecList {
  const list: IoVecList = {
    buffers: [],
    offsets: new Float64Array(Math.max(entries.length, 1)),
    lengths: new Float64Array(Math.max(entries.length, 1)),
    count: entries.length,
  };
  entries.forEach(([buf, off, len], i) => {
    list.buffers.push(buf);
    list.offsets[i] = off;
    list.lengths[i] = len;
  });
  return list;
}

/** sockaddr_in bytes for an IPv4 dotted quad and port. */
function sockaddrIn(ip: string, port: number): Uint8Array {
  const sa = new Uint8Array(16);
  const dv = new DataView(sa.buffer);
  dv.setUint16(0, C.AF_INET, true);
  dv.setUint16(2, port, false);
  ip.split('.').forEach((octet, i) => (sa[4 + i] = Number(octet)));
  return sa;
}

/** Port of a bound inet socket. */
function boundPort(fd: number): number {
  const sa = new Uint8Array(128);
  const len = native.getsockname(fd, sa);
  expect(len).to.equal(16);
  return new DataView(sa.buffer).getUint16(2, false);
}

/** A UDP socket bound to 127.0.0.1 on an ephemeral port. */
function udpLoopback(): { fd: number; port: number; addr: Uint8Array } {
  const fd = native.socket(C.AF_INET, C.SOCK_DGRAM, 0);
  native.bind(fd, sockaddrIn('127.0.0.1', 0));
  const port = boundPort(fd);
  return { fd, port, addr: sockaddrIn('127.0.0.1', port) };
}

/** Call fn until it returns something other than -1, at most `tries` times, 5 ms apart. */
async function until(fn: () => number, tries = 200): Promise<number> {
  for (let i = 0; i < tries; i++) {
    const r = fn();
    if (r !== -1) return r;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return -1;
}

describe('native addon', () => {
  const opened: number[] = [];
  /** Remember fds to close after each test. */
  function track<T extends number | number[]>(fds: T): T {
    if (Array.isArray(fds)) opened.push(...fds);
    else opened.push(fds);
    return fds;
  }
  afterEach(() => {
    for (const fd of opened.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // already closed by the test
      }
    }
  });

  describe('errors', () => {
    it('carry code, errno and syscall', () => {
      const e = thrown(() => native.close(987654));
      expect(e).to.be.instanceOf(Error);
      expect(e.code).to.equal('EBADF');
      expect(e.errno).to.equal(9);
      expect(e.syscall).to.equal('close');
      expect(e.message).to.equal('close: EBADF (Bad file descriptor)');
    });

    it('reject arguments of the wrong type', () => {
      const e = thrown(() => native.dup('3' as unknown as number));
      expect(e).to.be.instanceOf(TypeError);
      expect(e.code).to.equal('EINVAL');
    });

    it('exports the constants the stack needs', () => {
      for (const name of ['EPOLLIN', 'EPOLLET', 'AF_NETLINK', 'SO_PEEK_OFF', 'TCP_INFO', 'IP_RECVERR', 'IPV6_FREEBIND', 'MSG_ERRQUEUE', 'SIOCOUTQ', 'SIOCINQ', 'EINPROGRESS', 'NETLINK_ROUTE']) {
        expect(C[name], name).to.be.a('number');
      }
      expect(C.IPV6_FREEBIND).to.equal(78);
      expect(C.EPOLLET | 0).to.equal(C.EPOLLET);
    });
  });

  describe('generic fd calls', () => {
    it('read/write return -1 on EAGAIN and honour offsets', () => {
      const [a, b] = track(native.socketpair());
      native.setNonBlocking(b, true);
      const buf = new Uint8Array(16);
      expect(native.read(b, buf, 0, 16)).to.equal(-1);
      const src = Uint8Array.from([9, 9, 1, 2, 3, 9]);
      expect(native.write(a, src, 2, 3)).to.equal(3);
      expect(native.read(b, buf, 4, 10)).to.equal(3);
      expect(Array.from(buf.subarray(3, 8))).to.deep.equal([0, 1, 2, 3, 0]);
    });

    it('rejects read/write ranges outside the buffer', () => {
      const [a] = track(native.socketpair());
      const buf = new Uint8Array(8);
      expect(thrown(() => native.write(a, buf, 4, 5)).code).to.equal('ERANGE');
      expect(thrown(() => native.read(a, buf, 9, 0)).code).to.equal('ERANGE');
      expect(thrown(() => native.read(a, buf, -1, 2)).code).to.equal('EINVAL');
    });

    it('dup gives a distinct fd to the same socket', () => {
      const [a, b] = track(native.socketpair());
      const d = track(native.dup(a));
      expect(d).to.not.equal(a);
      native.write(d, Uint8Array.of(7), 0, 1);
      const buf = new Uint8Array(1);
      expect(native.read(b, buf, 0, 1)).to.equal(1);
      expect(buf[0]).to.equal(7);
      native.setCloexec(d, true);
    });

    it('pipe and splice move bytes between fds', () => {
      const [r, w] = track(native.pipe());
      const [a, b] = track(native.socketpair());
      native.write(w, Uint8Array.of(1, 2, 3, 4), 0, 4);
      expect(native.splice(r, a, 64)).to.equal(4);
      expect(native.splice(r, a, 64)).to.equal(-1);
      const buf = new Uint8Array(8);
      expect(native.read(b, buf, 0, 8)).to.equal(4);
      expect(Array.from(buf.subarray(0, 4))).to.deep.equal([1, 2, 3, 4]);
    });

    it('fstat reports the mode and size of a memfd', () => {
      const fd = track(native.memfdCreate('ferry-test', 12345));
      const [mode, size] = native.fstat(fd);
      expect(mode & C.S_IFMT).to.equal(C.S_IFREG);
      expect(size).to.equal(12345);
    });

    it('fence is callable', () => {
      expect(native.fence()).to.equal(undefined);
    });
  });

  describe('fd passing', () => {
    it('sends a memfd over a socketpair and maps the same bytes on the other side', () => {
      const [a, b] = track(native.socketpair());
      const mem = track(native.memfdCreate('ferry-pass', 64 * KiB));
      fs.writeSync(mem, Buffer.from('hello guest'), 0, 11, 4096);
      const hdr = Uint8Array.of(0xaa, 0xbb, 0xcc);
      expect(native.sendFds(a, hdr, 0, 3, [mem])).to.equal(3);
      const buf = new Uint8Array(16);
      const got = native.recvFds(b, buf, 0, 16, 8);
      expect(got).to.not.equal(null);
      expect(got!.bytes).to.equal(3);
      expect(got!.ctrunc).to.equal(false);
      expect(got!.fds).to.have.length(1);
      const fd = track(got!.fds[0]);
      expect(fd).to.not.equal(mem);
      const [chunk] = native.mmap(fd, 0, 64 * KiB, 64 * KiB);
      expect(Buffer.from(chunk, 4096, 11).toString()).to.equal('hello guest');
      // And writes through the mapping are seen by the sender's fd.
      new Uint8Array(chunk)[100] = 77;
      const check = Buffer.alloc(1);
      fs.readSync(mem, check, 0, 1, 100);
      expect(check[0]).to.equal(77);
      native.munmap(chunk);
    });

    it('reports MSG_CTRUNC and still returns the fds that arrived', () => {
      const [a, b] = track(native.socketpair());
      const fds = [track(native.eventfd(0)), track(native.eventfd(0)), track(native.eventfd(0))];
      native.sendFds(a, Uint8Array.of(1), 0, 1, fds);
      const got = native.recvFds(b, new Uint8Array(4), 0, 4, 1)!;
      expect(got.ctrunc).to.equal(true);
      expect(got.fds).to.have.length(1);
      track(got.fds);
    });

    it('recvFds returns null on EAGAIN and bytes 0 at EOF', () => {
      const [a, b] = track(native.socketpair());
      native.setNonBlocking(b, true);
      expect(native.recvFds(b, new Uint8Array(4), 0, 4, 4)).to.equal(null);
      native.shutdown(a, C.SHUT_WR);
      const got = native.recvFds(b, new Uint8Array(4), 0, 4, 4)!;
      expect(got.bytes).to.equal(0);
      expect(got.fds).to.deep.equal([]);
    });
  });

  describe('mmap', () => {
    it('splits a mapping into chunks of chunkSize, in order', () => {
      const fd = track(native.memfdCreate('ferry-chunks', 192 * KiB));
      const chunks = native.mmap(fd, 0, 192 * KiB, 64 * KiB);
      expect(chunks.map((c) => c.byteLength)).to.deep.equal([64 * KiB, 64 * KiB, 64 * KiB]);
      chunks.forEach((c, i) => new Uint8Array(c).fill(i + 1, 0, 8));
      for (let i = 0; i < 3; i++) {
        const out = new Uint8Array(8);
        fs.readSync(fd, out, 0, 8, i * 64 * KiB);
        expect(Array.from(out)).to.deep.equal(new Array(8).fill(i + 1));
      }
      // File writes show up in the matching chunk.
      fs.writeSync(fd, Uint8Array.of(42), 0, 1, 2 * 64 * KiB + 9);
      expect(new Uint8Array(chunks[2])[9]).to.equal(42);
      chunks.forEach((c) => native.munmap(c));
    });

    it('honours offset and a short last chunk', () => {
      const fd = track(native.memfdCreate('ferry-offset', 192 * KiB));
      fs.writeSync(fd, Uint8Array.of(5), 0, 1, 64 * KiB);
      fs.writeSync(fd, Uint8Array.of(6), 0, 1, 128 * KiB + 99);
      const chunks = native.mmap(fd, 64 * KiB, 64 * KiB + 100, 64 * KiB);
      expect(chunks.map((c) => c.byteLength)).to.deep.equal([64 * KiB, 100]);
      expect(new Uint8Array(chunks[0])[0]).to.equal(5);
      expect(new Uint8Array(chunks[1])[99]).to.equal(6);
      chunks.forEach((c) => native.munmap(c));
    });

    it('munmap detaches the buffer and a second munmap is harmless', () => {
      const fd = track(native.memfdCreate('ferry-unmap', 8 * KiB));
      const [a, b] = native.mmap(fd, 0, 8 * KiB, 4 * KiB);
      native.munmap(a);
      expect(a.byteLength).to.equal(0);
      native.munmap(a);
      expect(b.byteLength).to.equal(4 * KiB);
      new Uint8Array(b)[0] = 1; // the neighbour chunk is still mapped
      native.munmap(b);
      // An ordinary ArrayBuffer is left alone.
      const plain = new ArrayBuffer(8);
      native.munmap(plain);
      expect(plain.byteLength).to.equal(8);
    });

    it('a detached chunk in an iovec list reads as length 0', () => {
      const fd = track(native.memfdCreate('ferry-detached', 4 * KiB));
      const [chunk] = native.mmap(fd, 0, 4 * KiB, 4 * KiB);
      native.munmap(chunk);
      const [s] = track(native.socketpair());
      expect(thrown(() => native.writev(s, iovList([[chunk, 0, 1]]))).code).to.equal('ERANGE');
    });

    it('unmaps dropped chunks on GC, and never unmaps a chunk twice', () => {
      // In a child with --expose-gc: /proc/self/maps shows which mappings exist.
      const addon = path.join(DIST_ROOT, 'src', 'sys', 'native.js');
      const script = `
        const { native } = require(${JSON.stringify(addon)});
        const fs = require('fs');
        const maps = (name) => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes(name)).length;
        const tick = () => new Promise((r) => setTimeout(r, 20));
        (async () => {
          const dropped = native.memfdCreate('ferry-gc-dropped', 4 * 65536);
          let chunks = native.mmap(dropped, 0, 4 * 65536, 65536);
          const before = maps('ferry-gc-dropped');
          chunks = null;
          for (let i = 0; i < 5 && maps('ferry-gc-dropped') > 0; i++) { global.gc(); await tick(); }
          const after = maps('ferry-gc-dropped');
          // Unmap A explicitly, map B (likely at A's old address), then let A be collected.
          const a = native.memfdCreate('ferry-gc-a', 65536);
          const b = native.memfdCreate('ferry-gc-b', 65536);
          let [chunkA] = native.mmap(a, 0, 65536, 65536);
          native.munmap(chunkA);
          const [chunkB] = native.mmap(b, 0, 65536, 65536);
          chunkA = null;
          for (let i = 0; i < 5; i++) { global.gc(); await tick(); }
          new Uint8Array(chunkB)[0] = 1;
          console.log(JSON.stringify({ before, after, b: maps('ferry-gc-b') }));
        })();`;
      const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 10000 });
      expect(r.status, r.stderr).to.equal(0);
      expect(JSON.parse(r.stdout)).to.deep.equal({ before: 4, after: 0, b: 1 });
    });

    it('rejects invalid arguments with a code', () => {
      const fd = track(native.memfdCreate('ferry-bad', 64 * KiB));
      const page = C.PAGE_SIZE;
      expect(thrown(() => native.mmap(fd, 0, 4096, 0)).code).to.equal('EINVAL');
      expect(thrown(() => native.mmap(fd, 0, 4096, page + 1)).code).to.equal('EINVAL');
      expect(thrown(() => native.mmap(fd, 0, 4096, 2 ** 32 + page)).code).to.equal('EINVAL');
      expect(thrown(() => native.mmap(fd, 1, 4096, page)).code).to.equal('EINVAL');
      expect(thrown(() => native.mmap(fd, 0, 0, page)).code).to.equal('EINVAL');
      expect(thrown(() => native.mmap(fd, 0, 2 ** 60, page)).code).to.equal('EINVAL');
      const bad = thrown(() => native.mmap(987654, 0, 4096, page));
      expect(bad.code).to.equal('EBADF');
      expect(bad.syscall).to.equal('mmap');
    });
  });

  describe('eventfd and Poller', () => {
    it('eventfd counts writes and reads -1 when empty', () => {
      const fd = track(native.eventfd(0));
      expect(native.eventfdRead(fd)).to.equal(-1);
      native.eventfdWrite(fd, 3);
      native.eventfdWrite(fd, 4);
      expect(native.eventfdRead(fd)).to.equal(7);
      expect(native.eventfdRead(fd)).to.equal(-1);
    });

    it('wakes once with a batch of ready fds in the main thread', async () => {
      const e1 = track(native.eventfd(0));
      const e2 = track(native.eventfd(0));
      const batch = new Int32Array(8);
      const calls: number[][] = [];
      const poller = new native.Poller(batch, (count) => {
        const seen: number[] = [];
        for (let i = 0; i < count; i++) {
          seen.push(batch[2 * i]);
          expect(batch[2 * i + 1] & C.EPOLLIN).to.equal(C.EPOLLIN);
          native.eventfdRead(batch[2 * i]);
        }
        calls.push(seen.sort((x, y) => x - y));
      });
      try {
        poller.add(e1, C.EPOLLIN);
        poller.add(e2, C.EPOLLIN);
        native.eventfdWrite(e1, 1);
        native.eventfdWrite(e2, 1);
        await until(() => (calls.length > 0 ? 1 : -1));
        expect(calls).to.deep.equal([[e1, e2].sort((x, y) => x - y)]);
        // modify/remove: a removed fd no longer wakes the poller.
        poller.modify(e1, C.EPOLLIN | C.EPOLLET);
        poller.remove(e2);
        poller.remove(e2); // ENOENT is ignored
        native.eventfdWrite(e2, 1);
        native.eventfdWrite(e1, 1);
        await until(() => (calls.length > 1 ? 1 : -1));
        expect(calls[1]).to.deep.equal([e1]);
      } finally {
        poller.close();
        poller.close();
      }
    });

    it('limits a batch to events.length/2 and wakes again for the rest', async () => {
      const fds = [track(native.eventfd(1)), track(native.eventfd(1)), track(native.eventfd(1))];
      const batch = new Int32Array(3); // room for one pair
      const counts: number[] = [];
      const seen = new Set<number>();
      const poller = new native.Poller(batch, (count) => {
        counts.push(count);
        seen.add(batch[0]);
        native.eventfdRead(batch[0]);
      });
      try {
        fds.forEach((fd) => poller.add(fd, C.EPOLLIN));
        await until(() => (counts.length >= 3 ? 1 : -1));
        expect(counts).to.deep.equal([1, 1, 1]);
        expect([...seen].sort()).to.deep.equal([...fds].sort());
      } finally {
        poller.close();
      }
    });

    it('delivers no callback after close and allows ref/unref', async () => {
      const fd = track(native.eventfd(0));
      let calls = 0;
      const poller = new native.Poller(new Int32Array(2), () => calls++);
      poller.add(fd, C.EPOLLIN);
      poller.unref();
      poller.ref();
      native.eventfdWrite(fd, 1);
      poller.close();
      await new Promise((resolve) => setTimeout(resolve, 30));
      expect(calls).to.equal(0);
      expect(thrown(() => poller.add(fd, C.EPOLLIN)).code).to.equal('EBADF');
    });

    it('survives GC of a closed Poller and keeps an open one alive', () => {
      const addon = path.join(DIST_ROOT, 'src', 'sys', 'native.js');
      const script = `
        const { native } = require(${JSON.stringify(addon)});
        const tick = () => new Promise((r) => setTimeout(r, 20));
        (async () => {
          let closed = new native.Poller(new Int32Array(2), () => {});
          closed.close();
          closed = null;
          const fd = native.eventfd(0);
          let woke = 0;
          // Only the addon holds this one.
          new native.Poller(new Int32Array(2), () => { native.eventfdRead(fd); woke++; }).add(fd, native.constants.EPOLLIN);
          for (let i = 0; i < 3; i++) { global.gc(); await tick(); }
          native.eventfdWrite(fd, 1);
          for (let i = 0; i < 50 && woke === 0; i++) await tick();
          console.log(woke);
          process.exit(0);
        })();`;
      const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 10000 });
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.equal('1');
    });

    it('rejects a bad events array', () => {
      expect(() => new native.Poller(new Int32Array(1), () => undefined)).to.throw(TypeError);
      expect(() => new native.Poller(new Uint32Array(4) as unknown as Int32Array, () => undefined)).to.throw(TypeError);
    });

    it('wakes with a batch inside a worker thread', async () => {
      const worker = new Worker(path.join(__dirname, 'native-poller-worker.js'), { workerData: { mode: 'wake' } });
      const result = await new Promise<{ count: number; fd: number; events: number; expectedFd: number; value: number }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('worker timed out')), 5000);
        worker.once('message', (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        worker.once('error', reject);
      });
      await worker.terminate();
      expect(result.count).to.equal(1);
      expect(result.fd).to.equal(result.expectedFd);
      expect(result.events & C.EPOLLIN).to.equal(C.EPOLLIN);
      expect(result.value).to.equal(5);
    });

    it('a worker may exit with a Poller still open', async () => {
      const worker = new Worker(path.join(__dirname, 'native-poller-worker.js'), { workerData: { mode: 'leave-open' } });
      const code = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('worker did not exit')), 5000);
        worker.once('exit', (c) => {
          clearTimeout(timer);
          resolve(c);
        });
        worker.once('error', reject);
      });
      expect(code).to.equal(0);
    });

    it('an exception in the callback becomes an uncaught exception', () => {
      const addon = path.join(DIST_ROOT, 'src', 'sys', 'native.js');
      const script = `
        const { native } = require(${JSON.stringify(addon)});
        process.on('uncaughtException', (e) => { console.log('caught:' + e.message); process.exit(0); });
        const fd = native.eventfd(1);
        const p = new native.Poller(new Int32Array(2), () => { throw new Error('boom'); });
        p.add(fd, native.constants.EPOLLIN);
        setTimeout(() => { console.log('no exception'); process.exit(1); }, 2000);`;
      const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10000 });
      expect(r.stdout.trim()).to.equal('caught:boom');
      expect(r.status).to.equal(0);
    });

    it('runs microtasks queued by the callback before the next wake-up', async () => {
      const fd = track(native.eventfd(0));
      const order: string[] = [];
      const poller = new native.Poller(new Int32Array(2), () => {
        native.eventfdRead(fd);
        order.push('cb');
        void Promise.resolve().then(() => order.push('microtask'));
      });
      try {
        poller.add(fd, C.EPOLLIN);
        native.eventfdWrite(fd, 1);
        await until(() => (order.length >= 2 ? 1 : -1));
        expect(order).to.deep.equal(['cb', 'microtask']);
      } finally {
        poller.close();
      }
    });
  });

  describe('scatter/gather', () => {
    it('writev/readv over a socketpair with ArrayBuffer and Uint8Array entries', () => {
      const [a, b] = track(native.socketpair());
      const ab = new ArrayBuffer(16);
      new Uint8Array(ab).set([0, 1, 2, 3, 4, 5, 6, 7]);
      const backing = new Uint8Array(32);
      backing.set([10, 11, 12, 13], 20);
      const view = backing.subarray(18, 26); // byteOffset 18: bytes 10..13 at view[2..5]
      expect(native.writev(a, iovList([[ab, 2, 3], [view, 2, 4]]))).to.equal(7);
      const outA = new ArrayBuffer(4);
      const outB = new Uint8Array(new ArrayBuffer(10), 5, 5);
      expect(native.readv(b, iovList([[outA, 1, 2], [outB, 0, 5]]))).to.equal(7);
      expect(Array.from(new Uint8Array(outA))).to.deep.equal([0, 2, 3, 0]);
      expect(Array.from(outB)).to.deep.equal([4, 10, 11, 12, 13]);
    });

    it('rejects out-of-range iovecs before touching memory', () => {
      const [a] = track(native.socketpair());
      const buf = new Uint8Array(new ArrayBuffer(64), 16, 16);
      const cases: [ArrayBuffer | Uint8Array, number, number][] = [
        [buf, 0, 17],
        [buf, 16, 1],
        [buf, -1, 1],
        [buf, 0.5, 1],
        [buf, NaN, 1],
        [buf, 2 ** 53, 1],
        [new ArrayBuffer(8), 4, 5],
      ];
      for (const entry of cases) {
        const e = thrown(() => native.writev(a, iovList([entry])));
        expect(e.code, String(entry.slice(1))).to.equal('ERANGE');
        expect(e).to.be.instanceOf(RangeError);
      }
      const list = iovList([[buf, 0, 1]]);
      list.count = 2; // more entries than the arrays hold
      expect(thrown(() => native.writev(a, list)).code).to.equal('ERANGE');
      const big = iovList([]);
      big.count = 1025;
      expect(thrown(() => native.writev(a, big)).code).to.equal('ERANGE');
      const wrong = { buffers: [buf], offsets: [0], lengths: [1], count: 1 } as unknown as IoVecList;
      expect(thrown(() => native.writev(a, wrong)).code).to.equal('EINVAL');
    });

    it('sendmsg/recvmsg a UDP datagram on 127.0.0.1 with source address and MSG_TRUNC', () => {
      const rx = udpLoopback();
      const tx = udpLoopback();
      track([rx.fd, tx.fd]);
      const payload = new Uint8Array(new ArrayBuffer(100));
      payload.set([1, 2, 3, 4, 5, 6]);
      expect(native.sendmsg(tx.fd, iovList([[payload, 0, 3], [payload, 3, 3]]), rx.addr, 0)).to.equal(6);
      const out = new ArrayBuffer(4);
      const from = new Uint8Array(32);
      const meta = new Int32Array(2);
      expect(native.recvmsg(rx.fd, iovList([[out, 0, 4]]), 0, from, meta)).to.equal(4);
      expect(Array.from(new Uint8Array(out))).to.deep.equal([1, 2, 3, 4]);
      expect(meta[0]).to.equal(16);
      expect(meta[1] & C.MSG_TRUNC).to.equal(C.MSG_TRUNC);
      expect(Array.from(from.subarray(0, 16))).to.deep.equal(Array.from(tx.addr));
      expect(native.recvmsg(rx.fd, iovList([[out, 0, 4]]), 0, null, meta)).to.equal(-1);
    });

    it('recvmsg returns IP_PKTINFO control data when asked', () => {
      const rx = udpLoopback();
      const tx = udpLoopback();
      track([rx.fd, tx.fd]);
      native.setsockoptInt(rx.fd, C.IPPROTO_IP, C.IP_PKTINFO, 1);
      native.sendmsg(tx.fd, iovList([[Uint8Array.of(1), 0, 1]]), rx.addr, 0);
      const control = new Uint8Array(64);
      const meta = new Int32Array(3);
      expect(native.recvmsg(rx.fd, iovList([[new Uint8Array(8), 0, 8]]), 0, null, meta, control)).to.equal(1);
      expect(meta[2]).to.be.greaterThan(16);
      const dv = new DataView(control.buffer);
      expect(dv.getInt32(8, true)).to.equal(C.IPPROTO_IP); // cmsg_level after the 8-byte cmsg_len
      expect(dv.getInt32(12, true)).to.equal(C.IP_PKTINFO);
    });

    it('sendmmsg/recvmmsg several datagrams in one call each', () => {
      const rx = udpLoopback();
      const tx = udpLoopback();
      track([rx.fd, tx.fd]);
      const data = Uint8Array.from({ length: 30 }, (_, i) => i);
      // datagram 0 = entries 0..1, datagram 1 = entry 2, datagram 2 = entry 3
      const send = iovList([[data, 0, 2], [data, 2, 3], [data, 10, 4], [data, 20, 10]]);
      const sent = native.sendmmsg(tx.fd, send, Int32Array.of(0, 2, 3), Int32Array.of(2, 1, 1), [rx.addr, rx.addr, rx.addr], 3, 0);
      expect(sent).to.equal(3);
      const bufs = [new ArrayBuffer(8), new ArrayBuffer(8), new ArrayBuffer(8)];
      const lens = new Int32Array(3);
      const addrs = [new Uint8Array(16), new Uint8Array(16), new Uint8Array(16)];
      const addrLens = new Int32Array(3);
      const flags = new Int32Array(3);
      const got = native.recvmmsg(rx.fd, iovList(bufs.map((b) => [b, 0, 8])), lens, addrs, addrLens, 3, 0, flags);
      expect(got).to.equal(3);
      expect(Array.from(lens)).to.deep.equal([5, 4, 8]);
      expect(Array.from(new Uint8Array(bufs[0], 0, 5))).to.deep.equal([0, 1, 2, 3, 4]);
      expect(Array.from(new Uint8Array(bufs[1], 0, 4))).to.deep.equal([10, 11, 12, 13]);
      expect(Array.from(addrLens)).to.deep.equal([16, 16, 16]);
      expect(Array.from(addrs[2])).to.deep.equal(Array.from(tx.addr));
      expect(flags[2] & C.MSG_TRUNC).to.equal(C.MSG_TRUNC);
      expect(flags[0] & C.MSG_TRUNC).to.equal(0);
      expect(native.recvmmsg(rx.fd, iovList(bufs.map((b) => [b, 0, 8])), lens, null, null, 3, 0)).to.equal(-1);
      expect(thrown(() => native.sendmmsg(tx.fd, send, Int32Array.of(3), Int32Array.of(2), null, 1, 0)).code).to.equal('ERANGE');
    });

    it('sendmmsg with a connected socket and null addrs', () => {
      const [a, b] = track(native.socketpair(C.SOCK_DGRAM));
      const data = Uint8Array.of(1, 2, 3);
      expect(native.sendmmsg(a, iovList([[data, 0, 1], [data, 1, 2]]), Int32Array.of(0, 1), Int32Array.of(1, 1), null, 2, 0)).to.equal(2);
      const lens = new Int32Array(2);
      const bufs = [new Uint8Array(4), new Uint8Array(4)];
      expect(native.recvmmsg(b, iovList(bufs.map((x) => [x, 0, 4])), lens, null, null, 2, C.MSG_DONTWAIT)).to.equal(2);
      expect(Array.from(lens)).to.deep.equal([1, 2]);
    });

    it('recvErrqueue reads the ICMP port-unreachable error of a UDP send to a closed port', async () => {
      const closed = udpLoopback();
      native.close(closed.fd); // nothing listens on this port now
      const tx = udpLoopback();
      track(tx.fd);
      native.setsockoptInt(tx.fd, C.IPPROTO_IP, C.IP_RECVERR, 1);
      native.sendmsg(tx.fd, iovList([[Uint8Array.of(1, 2), 0, 2]]), closed.addr, 0);
      const data = new Uint8Array(64);
      const control = new Uint8Array(256);
      const meta = new Int32Array(3);
      const from = new Uint8Array(16);
      const n = await until(() => native.recvErrqueue(tx.fd, data, control, meta, from));
      expect(n).to.equal(2);
      expect(meta[1] & C.MSG_ERRQUEUE).to.equal(C.MSG_ERRQUEUE);
      expect(meta[0]).to.be.greaterThan(16);
      expect(meta[2]).to.equal(16);
      expect(Array.from(from)).to.deep.equal(Array.from(closed.addr));
      // struct sock_extended_err follows the 16-byte cmsghdr: ee_errno (u32), ee_origin (u8).
      const dv = new DataView(control.buffer);
      expect(dv.getInt32(8, true)).to.equal(C.IPPROTO_IP);
      expect(dv.getInt32(12, true)).to.equal(C.IP_RECVERR);
      expect(dv.getUint32(16, true)).to.equal(C.ECONNREFUSED);
      expect(control[20]).to.equal(C.SO_EE_ORIGIN_ICMP);
      expect(native.recvErrqueue(tx.fd, data, control, meta)).to.equal(-1);
    });
  });

  describe('inet and UNIX socket calls', () => {
    it('TCP on 127.0.0.1: non-blocking connect, acceptFrom, peer names, options, queue sizes', async () => {
      const lfd = track(native.socket(C.AF_INET, C.SOCK_STREAM, 0));
      native.setsockoptInt(lfd, C.SOL_SOCKET, C.SO_REUSEADDR, 1);
      expect(native.getsockoptInt(lfd, C.SOL_SOCKET, C.SO_REUSEADDR)).to.equal(1);
      native.bind(lfd, sockaddrIn('127.0.0.1', 0));
      native.listen(lfd, 16);
      const port = boundPort(lfd);
      const cfd = track(native.socket(C.AF_INET, C.SOCK_STREAM, 0));
      native.setsockoptInt(cfd, C.IPPROTO_TCP, C.TCP_NODELAY, 1);
      expect([0, -1]).to.include(native.connect(cfd, sockaddrIn('127.0.0.1', port)));
      const peer = new Uint8Array(28);
      const peerLen = new Int32Array(1);
      const afd = await until(() => native.acceptFrom(lfd, peer, peerLen));
      track(afd);
      expect(peerLen[0]).to.equal(16);
      expect(native.getsockoptInt(cfd, C.SOL_SOCKET, C.SO_ERROR)).to.equal(0);
      const name = new Uint8Array(16);
      expect(native.getpeername(afd, name)).to.equal(16);
      expect(Array.from(name)).to.deep.equal(Array.from(peer.subarray(0, 16)));
      expect(native.getpeername(cfd, name)).to.equal(16);
      expect(new DataView(name.buffer).getUint16(2, false)).to.equal(port);
      native.write(cfd, Uint8Array.of(1, 2, 3), 0, 3);
      expect(await until(() => (native.ioctlInt(afd, C.SIOCINQ) === 3 ? 3 : -1))).to.equal(3);
      expect(native.ioctlInt(cfd, C.SIOCOUTQ)).to.be.at.least(0);
      const tcpInfo = new Uint8Array(256);
      expect(native.getsockoptBytes(afd, C.IPPROTO_TCP, C.TCP_INFO, tcpInfo)).to.be.greaterThan(100);
      expect(tcpInfo[0]).to.equal(1); // tcpi_state == TCP_ESTABLISHED
      native.setsockoptBytes(cfd, C.SOL_SOCKET, C.SO_RCVBUF, new Uint8Array(Int32Array.of(65536).buffer));
      native.shutdown(cfd, C.SHUT_WR);
      expect(native.acceptFrom(lfd, peer, peerLen)).to.equal(-1);
    });

    it('connect to a closed TCP port reports ECONNREFUSED via SO_ERROR', async () => {
      const probe = track(native.socket(C.AF_INET, C.SOCK_STREAM, 0));
      native.bind(probe, sockaddrIn('127.0.0.1', 0));
      const port = boundPort(probe); // bound, not listening: connects are refused
      const fd = track(native.socket(C.AF_INET, C.SOCK_STREAM, 0));
      let err = 0;
      try {
        native.connect(fd, sockaddrIn('127.0.0.1', port));
        err = await until(() => native.getsockoptInt(fd, C.SOL_SOCKET, C.SO_ERROR) || -1);
      } catch (e) {
        err = (e as NativeError).errno;
      }
      expect(err).to.equal(C.ECONNREFUSED);
    });

    it('unixListen/unixConnect/accept round trip in a temp dir, with peer credentials', () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-native-'));
      try {
        const sock = path.join(dir, 'vhost.sock');
        const lfd = track(native.unixListen(sock, 4));
        expect(native.accept(lfd)).to.equal(-1);
        const cfd = track(native.unixConnect(sock));
        const afd = track(native.accept(lfd));
        expect(afd).to.be.at.least(0);
        const [pid, uid, gid] = native.peerCred(afd);
        expect(pid).to.equal(process.pid);
        expect(uid).to.equal(os.userInfo().uid);
        expect(gid).to.equal(os.userInfo().gid);
        expect(native.fstat(afd)[0] & C.S_IFMT).to.equal(C.S_IFSOCK);
        native.write(cfd, Uint8Array.of(42), 0, 1);
        const buf = new Uint8Array(1);
        expect(native.read(afd, buf, 0, 1)).to.equal(1);
        expect(buf[0]).to.equal(42);
        expect(thrown(() => native.unixListen(sock, 4)).code).to.equal('EADDRINUSE');
        expect(thrown(() => native.unixConnect(path.join(dir, 'missing'))).code).to.equal('ENOENT');
        expect(thrown(() => native.unixConnect('/' + 'x'.repeat(200))).code).to.equal('ENAMETOOLONG');
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('unixSendDatagram reaches an abstract datagram socket', () => {
      const name = `ferry-test-${process.pid}-${Date.now()}`;
      const fd = track(native.socket(C.AF_UNIX, C.SOCK_DGRAM, 0));
      const sun = new Uint8Array(2 + 1 + name.length);
      new DataView(sun.buffer).setUint16(0, C.AF_UNIX, true);
      sun.set(Buffer.from(name), 3); // sun_path[0] = 0: abstract namespace
      native.bind(fd, sun);
      native.unixSendDatagram('@' + name, Buffer.from('READY=1'));
      const buf = new Uint8Array(32);
      const n = native.read(fd, buf, 0, 32);
      expect(Buffer.from(buf.subarray(0, n)).toString()).to.equal('READY=1');
    });

    it('opens a netlink route socket', () => {
      const fd = track(native.socket(C.AF_NETLINK, C.SOCK_RAW, C.NETLINK_ROUTE));
      const nl = new Uint8Array(12);
      new DataView(nl.buffer).setUint16(0, C.AF_NETLINK, true);
      native.bind(fd, nl);
      const name = new Uint8Array(12);
      expect(native.getsockname(fd, name)).to.equal(12);
    });
  });
});
