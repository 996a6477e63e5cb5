/**
 * `ferry stream`: the same stack as the vhost-user daemon, behind QEMU's
 * stream socket (passt's mode without --vhost-user): ferry listens on a
 * UNIX socket (--socket PATH) and serves one peer at a time, e.g.
 *
 *   ferry stream --socket /tmp/vm1.sock
 *   qemu ... -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/vm1.sock
 *            (or -netdev socket,id=n0,connect=... for a TCP socket peer)
 *
 * Everything runs on the main thread (FrontendLoop): one fd, one queue, no
 * guest memory to map, so no worker threads. When the peer goes, ferry waits
 * for the next one (or exits with --one-off); SIGTERM/SIGINT stop it and
 * remove the socket file. --fd takes an inherited socket instead: listening
 * (serve peers on it) or already connected (serve that one, then exit).
 */
import * as fs from 'fs';
import { CounterBlock } from '../../../sys/counters';
import { log } from '../../../sys/log';
import { removeQuietly } from '../../../sys/close';
import { native } from '../../../sys/native';
import { FrontendLoop, maxFrameLengthFor, runStackOnLoop } from '../frontend-loop';
import type { DaemonOptions } from '../../cli/options';
import { startPcap } from '../../frontends/middleware/pcap';
import { resolveDaemonStackConfig } from '../stack-setup';
import { StreamPort } from '../../frontends/stream-port';
import { FerryMetrics, type MetricsServer, startMetricsServer } from '../../control/metrics';
import { systemdNotify } from '../../cli/systemd';
import { peerDescription, removeStaleSocket } from '../../../sys/unix-socket';
import { confineProcess, planIsolation, processContext } from '../../cli/isolation';

/** Where the socket goes when neither --socket nor --fd is given. */
export const DEFAULT_STREAM_SOCKET_PATH = '/tmp/ferry-stream.socket';

/** True when fd is a listening socket (SO_ACCEPTCONN). */
function isListeningSocket(fd: number): boolean {
  const SO_ACCEPTCONN = 30;
  return native.getsockoptInt(fd, native.constants.SOL_SOCKET, SO_ACCEPTCONN) !== 0;
}

/** Run `ferry stream` until a signal (or --one-off and the peer leaving); resolves with the exit code. */
export async function runStream(options: DaemonOptions): Promise<number> {
  const isolation = planIsolation('stream', options, processContext());
  const config = await resolveDaemonStackConfig(options);
  const counters = new CounterBlock();
  const capture = startPcap(options.pcapFile);

  let listenFd = -1;
  let connectedFd = -1;
  let socketPath: string | null = null;
  if (options.fd !== null) {
    native.setNonBlocking(options.fd, true);
    if (isListeningSocket(options.fd)) listenFd = options.fd;
    else connectedFd = options.fd;
  } else {
    socketPath = options.socketPath ?? DEFAULT_STREAM_SOCKET_PATH;
    removeStaleSocket(socketPath);
    const previous = options.socketMode !== null ? process.umask(0o777 & ~options.socketMode) : null;
    try {
      listenFd = native.unixListen(socketPath, 1);
    } finally {
      if (previous !== null) process.umask(previous);
    }
    if (options.socketMode !== null) fs.chmodSync(socketPath, options.socketMode);
  }
  const oneOff = options.oneOff || connectedFd >= 0;

  const loop = new FrontendLoop();
  const port = new StreamPort({
    counters,
    watcher: loop,
    maxFrameLength: maxFrameLengthFor(config.mtu),
    onFrame: capture !== null ? (_direction, frame, length) => capture.write(frame, length) : null,
  });
  const stack = runStackOnLoop(loop, config, port, counters, options.protocols);

  let metricsServer: MetricsServer | null = null;
  if (options.metrics !== null) {
    metricsServer = await startMetricsServer(options.metrics, new FerryMetrics(() => [counters]));
    log.info(`metrics on ${metricsServer.address}`);
  }

  const where = socketPath ?? `fd ${options.fd}`;
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async (reason: string): Promise<void> => {
      if (stopping) return;
      stopping = true;
      log.info(`stopping: ${reason}`);
      systemdNotify('STOPPING=1');
      port.onClosed = null;
      port.close('ferry is stopping');
      if (listenFd >= 0) {
        loop.unwatch(listenFd);
        native.close(listenFd);
      }
      stack.close();
      loop.close();
      removeQuietly(socketPath);
      if (metricsServer !== null) await metricsServer.close();
      removeQuietly(options.pidFile);
      process.removeListener('SIGTERM', onTerm);
      process.removeListener('SIGINT', onInt);
      resolve(0);
    };
    const onTerm = (): void => void stop('SIGTERM');
    const onInt = (): void => void stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);

    port.onClosed = (reason) => {
      log.info(`stream peer disconnected: ${reason}`);
      if (oneOff) void stop('--one-off: the peer disconnected');
      else systemdNotify(`STATUS=Listening on ${where}`);
    };

    if (listenFd >= 0) {
      loop.watch(listenFd, native.constants.EPOLLIN, {
        onReady: () => {
          // Bounded: the backlog is 1; a handful of accepts per wake-up is plenty.
          for (let i = 0; i < 8; i++) {
            const fd = native.accept(listenFd);
            if (fd < 0) return;
            if (port.connected) {
              log.warn('stream: a second peer connected while one is served: refused');
              native.close(fd);
              continue;
            }
            log.info(`stream peer connected on ${where}${peerDescription(fd)}`);
            systemdNotify(`STATUS=Serving a peer on ${where}`);
            port.attach(fd);
          }
        },
      });
    } else {
      port.attach(connectedFd);
    }
    if (options.pidFile !== null) fs.writeFileSync(options.pidFile, `${process.pid}\n`);
    confineProcess(isolation, (line) => log.info(line), [socketPath, options.pidFile, options.metrics?.kind === 'unix' ? options.metrics.path : null]);
    log.info(`listening for a stream peer (4-byte length-prefixed frames) on ${where}`);
    systemdNotify(`READY=1\nSTATUS=Listening on ${where}`);
  });
}
