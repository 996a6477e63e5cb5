/**
 * The far side of the TCP integration test, run as its own process in the
 * peer namespace (the "outside world"):
 *
 *   node tcp-peer-helper.js server PORT
 *       listens on 192.0.2.2 and 2001:db8::2; per connection reads an
 *       8-byte header (bytes the client will send, bytes it wants back,
 *       big-endian u32 each), hashes what follows, then answers with the
 *       64-character hex SHA-256 of it (dashes instead when the client is
 *       not 192.0.2.1 / 2001:db8::1, the test namespace's address) and the requested bytes of
 *       patternBytes(want, 77), and closes. Prints "ready" once listening.
 *
 *   node tcp-peer-helper.js client HOST PORT SEND WANT
 *       the same exchange as a client (from 192.0.2.2 / 2001:db8::2); prints one JSON line
 *       { ok, sentHash, echoedHash, received, receivedHash } and exits 0
 *       when the server's hash matches and the reply is intact.
 */
import { createHash } from 'crypto';
import * as net from 'net';

/** The same xorshift pattern as test/support/fakes/tcp-guest.ts patternBytes. */
function patternBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function serve(port: number): void {
  let listening = 0;
  for (const host of ['192.0.2.2', '2001:db8::2']) {
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      let header: Buffer | null = null;
      let pending = Buffer.alloc(0);
      let expected = 0;
      let want = 0;
      let got = 0;
      const hash = createHash('sha256');
      socket.on('error', () => undefined);
      socket.on('data', (d: Buffer) => {
        if (header === null) {
          pending = Buffer.concat([pending, d]);
          if (pending.length < 8) return;
          header = pending.subarray(0, 8);
          expected = header.readUInt32BE(0);
          want = header.readUInt32BE(4);
          d = pending.subarray(8);
        }
        hash.update(d);
        got += d.length;
      });
      socket.on('end', () => {
        // A connection not from the test namespace's address would mean ferry's socket left from elsewhere.
        const fromHost = socket.remoteAddress === '192.0.2.1' || socket.remoteAddress === '2001:db8::1';
        const digest = got === expected && fromHost ? hash.digest('hex') : (fromHost ? 'short' : 'wrong-source').padEnd(64, '-');
        socket.write(digest);
        socket.end(patternBytes(want, 77));
      });
    });
    server.listen(port, host, 4096, () => {
      if (++listening === 2) process.stdout.write('ready\n');
    });
  }
}

function client(host: string, port: number, send: number, want: number): void {
  const data = patternBytes(send, 55);
  // From the server address, not the router's (the peer link's primary address).
  const localAddress = host.includes(':') ? '2001:db8::2' : '192.0.2.2';
  const socket = net.connect({ host, port, localAddress, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  socket.on('connect', () => {
    const header = Buffer.alloc(8);
    header.writeUInt32BE(send, 0);
    header.writeUInt32BE(want, 4);
    socket.write(header);
    socket.end(data);
  });
  socket.on('data', (d: Buffer) => chunks.push(d));
  const finish = (error: string | null): void => {
    const all = Buffer.concat(chunks);
    const echoedHash = all.subarray(0, 64).toString('latin1');
    const reply = all.subarray(64);
    const sentHash = createHash('sha256').update(data).digest('hex');
    const receivedHash = createHash('sha256').update(reply).digest('hex');
    const ok = error === null && echoedHash === sentHash && reply.length === want && receivedHash === createHash('sha256').update(patternBytes(want, 77)).digest('hex');
    process.stdout.write(JSON.stringify({ ok, error, sentHash, echoedHash, received: reply.length, receivedHash }) + '\n');
    process.exit(ok ? 0 : 1);
  };
  socket.on('end', () => finish(null));
  socket.on('error', (e: NodeJS.ErrnoException) => finish(e.code ?? String(e)));
  setTimeout(() => finish('timeout'), 60_000).unref();
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'server') serve(Number(args[0]));
else if (mode === 'client') client(args[0], Number(args[1]), Number(args[2]), Number(args[3]));
else {
  process.stderr.write('usage: tcp-peer-helper server PORT | client HOST PORT SEND WANT\n');
  process.exit(2);
}
