import { expect } from 'chai';
import { existsSync, fstatSync, mkdtempSync, readFileSync, rmSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { PassThrough } from 'stream';
import { log, rateLimited } from '../../src/log';
import { closeLogging, formatLine, isJournalStream, logFromWorker, oneLine, setupLogging } from '../../src/backend/logging';
import { LoggingOptions } from '../../src/backend/options';

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
