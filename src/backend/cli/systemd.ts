/**
 * systemd integration without libsystemd: socket activation (LISTEN_FDS /
 * LISTEN_PID, as sd_listen_fds does) and readiness notification
 * (NOTIFY_SOCKET, as sd_notify does).
 */
import { native } from '../../sys/native';
import { log } from '../../sys/log';
import { connectUnixDatagram } from '../../sys/unix-socket';

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

/** Connect to $NOTIFY_SOCKET now, so that later notifications need no path and no permission (ferry confines itself). */
export function systemdNotifyConnect(env: NodeJS.ProcessEnv = process.env): void {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '' || notifyFd !== null) return;
  try {
    notifyFd = connectUnixDatagram(socket);
  } catch (error) {
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
