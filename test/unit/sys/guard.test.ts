/**
 * The addon's SIGBUS guard on guest memory (addon/guard.cc): a truncated
 * memfd read through a guarded mapping does not kill the process, the fault
 * is counted on its chunk, and any other SIGBUS keeps its default action.
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { type NativeError, native } from '../../../src/sys/native';
import { DIST_ROOT } from '../../support/paths';

/** Run fn, expecting it to throw; returns the error. */
function thrown(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected an exception');
}

describe('native addon: SIGBUS guard on guest memory', () => {
  const page = 4096;

  it('a read past the end of a truncated memfd: the process survives, the chunk is flagged, the rest is intact', () => {
    expect(native.guardInstalled()).to.equal(true);
    const fd = native.memfdCreate('ferry-guard-test', 16 * page);
    try {
      const [head, tail] = native.mmap(fd, 0, 16 * page, 8 * page);
      const headBytes = new Uint8Array(head);
      const tailBytes = new Uint8Array(tail);
      headBytes[100] = 0x11;
      tailBytes[3 * page] = 0x22;
      const before = native.guardFaults();
      // The front-end shrinks the file under our mapping: the tail's pages are gone.
      fs.ftruncateSync(fd, 4 * page);
      expect(tailBytes[3 * page], 'a vanished page reads as zero').to.equal(0);
      expect(native.guardFaults()).to.equal(before + 1);
      expect(native.guardMappingFaults(tail)).to.equal(1);
      expect(native.guardMappingFaults(head)).to.equal(0);
      // The zero pages cover the rest of the chunk: no further fault for it.
      tailBytes[7 * page + 5] = 1;
      expect(tailBytes[7 * page + 5]).to.equal(1);
      expect(native.guardMappingFaults(tail)).to.equal(1);
      // Within the file nothing changed, and it is still shared with the file.
      expect(headBytes[100]).to.equal(0x11);
      const fromFile = Buffer.alloc(1);
      fs.readSync(fd, fromFile, 0, 1, 100);
      expect(fromFile[0]).to.equal(0x11);
      // A chunk past the end from the start faults too (a region larger than its fd).
      const [beyond] = native.mmap(fd, 8 * page, 4 * page, 4 * page);
      expect(new Uint8Array(beyond)[0]).to.equal(0);
      expect(native.guardMappingFaults(beyond)).to.equal(1);
      for (const chunk of [head, tail, beyond]) native.munmap(chunk);
      expect(native.guardMappingFaults(tail), 'an unmapped chunk is no longer guarded').to.equal(0);
    } finally {
      native.close(fd);
    }
  });

  it('guards mappings made in a worker thread', async () => {
    const addon = path.join(DIST_ROOT, 'src', 'sys', 'native.js');
    const script = `
      const { parentPort } = require('worker_threads');
      const fs = require('fs');
      const { native } = require(${JSON.stringify(addon)});
      const fd = native.memfdCreate('ferry-guard-worker', 8192);
      const [chunk] = native.mmap(fd, 0, 8192, 8192);
      fs.ftruncateSync(fd, 0);
      const value = new Uint8Array(chunk)[4096];
      parentPort.postMessage({ value, faults: native.guardMappingFaults(chunk) });
      native.munmap(chunk);
      native.close(fd);
    `;
    const worker = new Worker(script, { eval: true });
    const result = await new Promise<{ value: number; faults: number }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('worker timed out')), 10000);
      worker.once('message', (m: { value: number; faults: number }) => {
        clearTimeout(timer);
        resolve(m);
      });
      worker.once('error', reject);
    });
    await worker.terminate();
    expect(result).to.deep.equal({ value: 0, faults: 1 });
  });

  it('any other SIGBUS keeps its default action (the process dies of it)', () => {
    const addon = path.join(DIST_ROOT, 'src', 'sys', 'native.js');
    const script = `
      const { native } = require(${JSON.stringify(addon)});
      if (!native.guardInstalled()) process.exit(3);
      process.kill(process.pid, 'SIGBUS');
      setTimeout(() => process.exit(4), 2000);
    `;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10000 });
    expect(r.signal).to.equal('SIGBUS');
  });

  it('seals: F_SEAL_SHRINK on a sealable memfd stops truncation; a plain memfd reports F_SEAL_SEAL', () => {
    const sealable = native.memfdCreateSealable('ferry-seal', 8192);
    const plain = native.memfdCreate('ferry-plain', 8192);
    const [readEnd, writeEnd] = native.pipe();
    try {
      expect(native.getSeals(sealable)).to.equal(0);
      native.addSeals(sealable, 0x0002);
      expect(native.getSeals(sealable)).to.equal(0x0002);
      expect(() => fs.ftruncateSync(sealable, 4096)).to.throw(/EPERM/);
      fs.ftruncateSync(sealable, 16384); // growing is still allowed
      expect(native.getSeals(plain)).to.equal(0x0001);
      expect(thrown(() => native.addSeals(plain, 0x0002)).code).to.equal('EPERM');
      expect(native.getSeals(readEnd)).to.equal(-1);
    } finally {
      for (const fd of [sealable, plain, readEnd, writeEnd]) native.close(fd);
    }
  });
});
