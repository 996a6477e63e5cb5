/**
 * Housekeeping for the back-ends that listen on a UNIX socket (ferry stream,
 * the vhost-user server): clearing the way for bind() on a path a dead
 * back-end left behind without ever taking a live one's, and naming the
 * peer that connected. Also the datagram sockets ferry talks through
 * (sd_notify, syslog), connected while paths still resolve: once ferry has
 * confined itself into an empty root, no socket path does.
 */
import * as fs from 'fs';
import { errorCode } from './errno';
import { native, type NativeError } from './native';

/**
 * Remove a socket file left by a dead back-end so bind() succeeds. Refuses
 * to touch anything that is not a socket, and a socket someone still
 * listens on (a connect() that succeeds means another back-end is alive):
 * both throw an Error whose message starts with `prefix` (e.g. 'vhost-user: ').
 */
export function removeStaleSocket(socketPath: string, prefix = ''): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return;
    throw error;
  }
  if (!stat.isSocket()) throw new Error(`${prefix}${socketPath} exists and is not a socket`);
  let probe: number;
  try {
    probe = native.unixConnect(socketPath);
  } catch (error) {
    const code = (error as NativeError).code;
    if (code === 'ECONNREFUSED' || code === 'ENOENT') {
      fs.rmSync(socketPath, { force: true });
      return;
    }
    throw error;
  }
  native.close(probe);
  throw new Error(`${prefix}${socketPath} is in use by another back-end`);
}

/** " (pid P, uid U)" of a connected UNIX socket's peer for a log line, or '' when the kernel cannot say. */
export function peerDescription(fd: number): string {
  try {
    const [pid, uid] = native.peerCred(fd);
    return ` (pid ${pid}, uid ${uid})`;
  } catch {
    return '';
  }
}

/** sockaddr_un for a path, or an abstract name given as '@name'. */
export function unixSocketAddress(socket: string): Uint8Array {
  const name = socket.startsWith('@') ? Buffer.concat([Buffer.of(0), Buffer.from(socket.slice(1))]) : Buffer.concat([Buffer.from(socket), Buffer.of(0)]);
  const address = Buffer.alloc(2 + name.length);
  address.writeUInt16LE(native.constants.AF_UNIX, 0);
  name.copy(address, 2);
  return address;
}

/** A non-blocking datagram socket connected to `socket` (a path or '@abstract'); throws when it cannot connect. */
export function connectUnixDatagram(socket: string): number {
  const fd = native.socket(native.constants.AF_UNIX, native.constants.SOCK_DGRAM, 0);
  try {
    native.connect(fd, unixSocketAddress(socket));
    native.setNonBlocking(fd, true);
    return fd;
  } catch (error) {
    native.close(fd);
    throw error;
  }
}
