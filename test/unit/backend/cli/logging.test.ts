import { expect } from 'chai';
import { existsSync, fstatSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { PassThrough } from 'stream';
import { log, rateLimited } from '../../../../src/sys/log';
import { closeLogging, formatLine, isJournalStream, keptTail, logFromWorker, oneLine, setupLogging } from '../../../../src/backend/cli/logging';
import { type LoggingOptions } from '../../../../src/backend/cli/options';

function captureStream(): { stream: PassThrough; lines: () => string[] } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return { stream, lines: () => text.split('\n').filter((line) => line !== '') };
}

const options = (overrides: Partial<LoggingOptions> = {}): LoggingOptions => ({ level: 'info', trace: false, file: null, fileSize: 1 << 20, name: 'vm1', ...overrides });

describe('logging', () => {
  afterEach(async () => {
    await closeLogging();
  });

  describe('formatLine', () => {
    const time = new Date('2026-01-02T03:04:05.678Z');

    it('plain: name, level, message', () => {
      expect(formatLine({ name: 'vm1', colour: false, journal: false, timestamp: false }, 'warn', 'hello', time)).to.equal('vm1: warn: hello');
    });

    it('journal: syslog priority prefix per level', () => {
      const style = { name: 'vm1', colour: false, journal: true, timestamp: false };
      expect(formatLine(style, 'error', 'x', time)).to.equal('<3>vm1: error: x');
      expect(formatLine(style, 'warn', 'x', time)).to.equal('<4>vm1: warn: x');
      expect(formatLine(style, 'info', 'x', time)).to.equal('<6>vm1: info: x');
      expect(formatLine(style, 'debug', 'x', time)).to.equal('<7>vm1: debug: x');
    });

    it('file: timestamp; tty: coloured level', () => {
      expect(formatLine({ name: 'a', colour: false, journal: false, timestamp: true }, 'info', 'm', time)).to.equal('2026-01-02T03:04:05.678Z a: info: m');
      expect(formatLine({ name: 'a', colour: true, journal: false, timestamp: false }, 'error', 'm', time)).to.equal('a: \x1b[31merror\x1b[0m: m');
    });

    it('one line per event: control characters escaped', () => {
      expect(oneLine('a\nb\tc\x1b[31m\x00')).to.equal('a\\nb\\tc\\x1b[31m\\x00');
      expect(formatLine({ name: 'a', colour: false, journal: false, timestamp: false }, 'info', 'two\nlines')).to.equal('a: info: two\\nlines');
    });
  });

  describe('isJournalStream', () => {
    it('false without JOURNAL_STREAM or when it names another file', () => {
      expect(isJournalStream({})).to.equal(false);
      expect(isJournalStream({ JOURNAL_STREAM: 'garbage' })).to.equal(false);
      expect(isJournalStream({ JOURNAL_STREAM: '1:1' })).to.equal(false);
    });

    it('true when JOURNAL_STREAM names the device and inode of the fd', () => {
      const stat = fstatSync(2, { bigint: true });
      expect(isJournalStream({ JOURNAL_STREAM: `${stat.dev}:${stat.ino}` }, 2)).to.equal(true);
    });
  });

  describe('setupLogging', () => {
    it('installs itself as the log.ts sink, filters by level', () => {
      const { stream, lines } = captureStream();
      setupLogging(options(), { stream, isTty: false, journal: false });
      log.info('started');
      log.debug('hidden');
      log.error('broken');
      expect(lines()).to.deep.equal(['vm1: info: started', 'vm1: error: broken']);
    });

    it('--debug shows debug lines, --quiet hides info', () => {
      const debug = captureStream();
      setupLogging(options({ level: 'debug' }), { stream: debug.stream, isTty: false, journal: false });
      log.debug('detail');
      expect(debug.lines()).to.deep.equal(['vm1: debug: detail']);
      const quiet = captureStream();
      setupLogging(options({ level: 'warn' }), { stream: quiet.stream, isTty: false, journal: false });
      log.info('chatter');
      log.warn('careful');
      expect(quiet.lines()).to.deep.equal(['vm1: warn: careful']);
    });

    it('journal prefix when writing to the journal', () => {
      const { stream, lines } = captureStream();
      setupLogging(options(), { stream, isTty: true, journal: true });
      log.warn('w');
      expect(lines()).to.deep.equal(['<4>vm1: warn: w']);
    });

    it('rate-limited lines pass through the sink with their summary', () => {
      const { stream, lines } = captureStream();
      setupLogging(options(), { stream, isTty: false, journal: false });
      const key = `logging-test-${Date.now()}`;
      for (let i = 0; i < 5; i++) rateLimited('warn', key, () => `bad frame ${i}`, 2, 1000, 0);
      rateLimited('warn', key, () => 'after window', 2, 1000, 1000);
      expect(lines()).to.deep.equal([`vm1: warn: bad frame 0`, `vm1: warn: bad frame 1`, `vm1: warn: ${key}: 3 similar messages suppressed`, 'vm1: warn: after window']);
    });

    it('rate limits per key: one noisy key does not silence another', () => {
      const { stream, lines } = captureStream();
      setupLogging(options(), { stream, isTty: false, journal: false });
      const noisy = `noisy-${Date.now()}`;
      const quiet = `quiet-${Date.now()}`;
      const written = [0, 1, 2, 3].map((i) => rateLimited('warn', noisy, () => `noisy ${i}`, 1, 1000, 0));
      expect(written).to.deep.equal([true, false, false, false]);
      expect(rateLimited('warn', quiet, () => 'quiet 0', 1, 1000, 0)).to.equal(true);
      expect(lines()).to.deep.equal(['vm1: warn: noisy 0', 'vm1: warn: quiet 0']);
    });

    it('bounds the log file: --log-size, one file, its older half dropped in place', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ferry-logging-'));
      try {
        const file = join(dir, 'ferry.log');
        setupLogging(options({ file, fileSize: 4096 }));
        for (let i = 0; i < 300; i++) {
          log.info(`line ${i} ${'x'.repeat(60)}`);
          // Rotation happens between writes; give the file stream a turn now and then.
          if (i % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 5));
        }
        await closeLogging();
        const files = readdirSync(dir);
        expect(files.length).to.be.at.most(2);
        const total = files.reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
        expect(total).to.be.below(3 * 4096);
        expect(readFileSync(file, 'utf8')).to.include('line 299 ');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('keeps writing to --log-file through its fd once the path is gone (as after confinement)', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ferry-logging-'));
      try {
        const file = join(dir, 'ferry.log');
        setupLogging(options({ file }));
        log.info('before');
        renameSync(file, join(dir, 'moved.log'));
        log.info('after the path went away');
        await closeLogging();
        expect(existsSync(file)).to.equal(false);
        expect(readFileSync(join(dir, 'moved.log'), 'utf8')).to.match(/before\n.*after the path went away\n$/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('keptTail: the newest half of the limit, from a line start', () => {
      const text = Buffer.from(Array.from({ length: 100 }, (_, i) => `line ${i}`).join('\n') + '\n');
      const tail = keptTail(text, 200);
      expect(tail.length).to.be.at.most(100);
      expect(tail.toString().startsWith('line ')).to.equal(true);
      expect(tail.toString().endsWith('line 99\n')).to.equal(true);
      expect(keptTail(Buffer.from('short\n'), 4096).toString()).to.equal('short\n');
    });

    it('writes to --log-file with timestamps', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ferry-logging-'));
      try {
        const file = join(dir, 'ferry.log');
        setupLogging(options({ file }));
        log.info('to the file');
        await closeLogging();
        expect(existsSync(file)).to.equal(true);
        const text = readFileSync(file, 'utf8');
        expect(text).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z vm1: info: to the file\n$/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('logFromWorker', () => {
    it('tags the worker and checks the level', () => {
      const { stream, lines } = captureStream();
      setupLogging(options({ level: 'debug' }), { stream, isTty: false, journal: false });
      logFromWorker('debug', 'flow table full', 2);
      logFromWorker('bogus', 'odd level', 3);
      logFromWorker('info', 'line\ninjected', 0);
      expect(lines()).to.deep.equal(['vm1: debug: [worker 2] flow table full', 'vm1: warn: [worker 3] odd level', 'vm1: info: [worker 0] line\\ninjected']);
    });
  });
});
