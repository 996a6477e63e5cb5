/**
 * systemd integration without libsystemd: socket activation (LISTEN_FDS /
 * LISTEN_PID, as sd_listen_fds does) and readiness notification
 * (NOTIFY_SOCKET, as sd_notify does).
 */
import { native } from '../../sys/native';
import { log } from '../../sys/log';

/** First fd passed by socket activation (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;

/**
 * The fds systemd passed to this process, or [] when not socket-activated.
 * Like sd_listen_fds(1): checks LISTEN_PID, then removes the variables so
 * children don't inherit them, and marks the fds close-on-exec.
 */
export function systemdListenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): number[] {
  const listenPid = env.LISTEN_PID;
  const listenFds = env.LISTEN_FDS;
  if (listenPid === undefined || listenFds === undefined) return [];
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (Number(listenPid) !== pid) return [];
  const count = Number(listenFds);
  if (!Number.isInteger(count) || count <= 0 || count > 64) return [];
  const fds: number[] = [];
  for (let fd = LISTEN_FDS_START; fd < LISTEN_FDS_START + count; fd++) {
    native.setCloexec(fd, true);
    fds.push(fd);
  }
  return fds;
}

/** A datagram socket connected to $NOTIFY_SOCKET (systemdNotifyConnect), or null: send by path. */
let notifyFd: number | null = null;

/** sockaddr_un for a path, or an abstract name given as '@name'. */
function unixAddress(socket: string): Uint8Array {
  const name = socket.startsWith('@') ? Buffer.concat([Buffer.of(0), Buffer.from(socket.slice(1))]) : Buffer.concat([Buffer.from(socket), Buffer.of(0)]);
  const address = Buffer.alloc(2 + name.length);
  address.writeUInt16LE(native.constants.AF_UNIX, 0);
  name.copy(address, 2);
  return address;
}

/** Connect to $NOTIFY_SOCKET now, so that later notifications need no path and no permission (ferry confines itself). */
export function systemdNotifyConnect(env: NodeJS.ProcessEnv = process.env): void {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '' || notifyFd !== null) return;
  const fd = native.socket(native.constants.AF_UNIX, native.constants.SOCK_DGRAM, 0);
  try {
    native.connect(fd, unixAddress(socket));
    notifyFd = fd;
  } catch (error) {
    native.close(fd);
    log.warn(`sd_notify: cannot connect to ${socket}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Send a notification (e.g. "READY=1") to $NOTIFY_SOCKET if set; failures are logged, never fatal. */
export function systemdNotify(state: string, env: NodeJS.ProcessEnv = process.env): void {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return;
  try {
    const message = Buffer.from(state);
    if (notifyFd !== null) {
      if (native.write(notifyFd, message, 0, message.length) < 0) throw new Error('write: EAGAIN');
      return;
    }
    native.unixSendDatagram(socket, message);
  } catch (error) {
    log.warn(`sd_notify to ${socket}: ${error instanceof Error ? error.message : String(error)}`);
  }
}
