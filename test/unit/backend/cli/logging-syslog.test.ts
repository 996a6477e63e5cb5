/**
 * Syslog output (the background copy's log): the datagram text, and lines
 * reaching a real AF_UNIX datagram socket bound on a path, as /dev/log is.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { PassThrough } from 'stream';
import { log } from '../../../../src/sys/log';
import { native } from '../../../../src/sys/native';
import { closeLogging, setupLogging, SyslogTransport, syslogLine } from '../../../../src/backend/cli/logging';
import { type LoggingOptions } from '../../../../src/backend/cli/options';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;

/** sockaddr_un for a filesystem path. */
function pathAddress(path: string): Uint8Array {
  const bytes = Buffer.from(path, 'utf8');
  const out = new Uint8Array(2 + bytes.length + 1);
  new DataView(out.buffer).setUint16(0, AF_UNIX, true);
  out.set(bytes, 2);
  return out;
}

/** Datagrams queued on the (non-blocking) socket, at most 64. */
function receive(fd: number): string[] {
  const buffer = new Uint8Array(16384);
  const out: string[] = [];
  for (let i = 0; i < 64; i++) {
    const n = native.read(fd, buffer, 0, buffer.length);
    if (n < 0) break;
    out.push(Buffer.from(buffer.subarray(0, n)).toString('utf8'));
  }
  return out;
}

const options = (over: Partial<LoggingOptions> = {}): LoggingOptions => ({ level: 'info', trace: false, file: null, fileSize: 1 << 20, name: 'passt', ...over });

describe('logging to syslog', () => {
  let dir = '';
  let fd = -1;
  let path = '';

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-syslog-'));
    path = join(dir, 'log');
    fd = native.socket(AF_UNIX, SOCK_DGRAM, 0);
    native.bind(fd, pathAddress(path));
  });

  afterEach(async () => {
    await closeLogging();
    native.close(fd);
    rmSync(dir, { recursive: true, force: true });
  });

  it('syslogLine: LOG_DAEMON priority, syslog(3) time stamp, ident[pid], one line', () => {
    const time = new Date(2026, 6, 4, 3, 4, 5);
    expect(syslogLine('passt', 42, 'error', 'a\nb', time)).to.equal('<27>Jul  4 03:04:05 passt[42]: a\\nb');
    expect(syslogLine('pasta', 7, 'info', 'up', time)).to.match(/^<30>Jul {2}4 03:04:05 pasta\[7\]: up$/);
    expect(syslogLine('x', 1, 'warn', '', time).startsWith('<28>')).to.equal(true);
    expect(syslogLine('x', 1, 'debug', '', time).startsWith('<31>')).to.equal(true);
  });

  it('with syslog on, lines at or above the level reach the socket, and stderr still gets them', async () => {
    const stream = new PassThrough();
    let seen = '';
    stream.on('data', (d: Buffer) => (seen += d.toString()));
    setupLogging(options(), { stream, isTty: false, journal: false, syslog: true, syslogPath: path });
    log.info('listening on /tmp/x.socket');
    log.debug('not at info');
    log.warn('careful');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const lines = receive(fd);
    expect(lines).to.have.length(2);
    expect(lines[0]).to.match(new RegExp(`^<30>[A-Z][a-z]{2} [ 0-9]\\d \\d\\d:\\d\\d:\\d\\d passt\\[${process.pid}\\]: listening on /tmp/x\\.socket$`));
    expect(lines[1]).to.match(/^<28>.* careful$/);
    expect(seen).to.include('passt: info: listening on /tmp/x.socket');
  });

  it('off by default in the foreground, and with --log-file', async () => {
    setupLogging(options(), { stream: new PassThrough(), isTty: false, journal: false, syslogPath: path });
    log.info('foreground');
    setupLogging(options({ file: join(dir, 'f.log') }), { syslog: true, syslogPath: path });
    log.info('to the file');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(receive(fd)).to.deep.equal([]);
  });

  it('no syslog listening: lines are counted as lost, logging goes on', () => {
    const transport = new SyslogTransport(join(dir, 'nobody'), 'passt', (p, b) => native.unixSendDatagram(p, b), 'info');
    let called = 0;
    transport.log({ level: 'info', message: 'x' }, () => called++);
    transport.log({ level: 'error', message: 'y' }, () => called++);
    expect(transport.lost).to.equal(2);
    expect(called).to.equal(2);
  });

  it('an overlong line is cut to 8 KiB', () => {
    transportSend('z'.repeat(20000));
    const [line] = receive(fd);
    expect(Buffer.byteLength(line)).to.equal(8192);
  });

  function transportSend(message: string): void {
    new SyslogTransport(path, 'passt', (p, b) => native.unixSendDatagram(p, b), 'info').log({ level: 'info', message }, () => undefined);
  }
});
