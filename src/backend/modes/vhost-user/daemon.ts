/**
 * The long-running daemon: starts the queue-pair workers, serves vhost-user
 * front-ends one after another on the socket, and shuts down cleanly on
 * SIGTERM/SIGINT (socket file removed, workers stopped).
 */
import './counter-layout'; // first: fixes the counter slot layout shared with the workers
import * as fs from 'fs';
import { log } from '../../../sys/log';
import { removeQuietly } from '../../../sys/close';
import { native } from '../../../sys/native';
import { CounterBlock } from '../../../sys/counters';
import type { DaemonOptions } from '../../cli/options';
import { QueueWorker } from './queue-worker';
import { NetDevice } from './net-device';
import { VhostUserServer } from './server';
import { resolveDaemonStackConfig } from '../stack-setup';
import { systemdListenFds, systemdNotify } from '../../cli/systemd';
import { logFromWorker } from '../../cli/logging';
import type { ControlServer } from '../../control/control';
import type { MetricsServer } from '../../control/metrics';
import { confineProcess, planIsolation, processContext } from '../../cli/isolation';

/**
 * Exit code when a queue-pair worker dies or stops answering (EX_SOFTWARE).
 * The daemon exits rather than start a replacement worker: a worker stuck
 * in a system call cannot be stopped, so a replacement would run beside a
 * thread still holding the old guest's memory and fds; and the worker's
 * state (the front-end's rings and memory, forwards added at run time) is
 * gone with it anyway, so the front-end must reconnect either way. A fresh
 * process from the supervisor (systemd Restart=on-failure, libvirt, or QEMU
 * with reconnect=) is the one state that is surely clean.
 */
export const WORKER_FAILURE_EXIT_CODE = 70;

/**
 * Tests only: the workers' entry script, for a test whose worker fails on
 * purpose (it wraps worker-main.js) to check how the daemon ends.
 */
export const TEST_WORKER_SCRIPT_ENV = 'FERRY_TEST_WORKER_SCRIPT';

/** Where the vhost-user socket goes when neither --socket-path nor --fd is given. */
export const DEFAULT_SOCKET_PATH = '/tmp/ferry.socket';

/** True when fd is a listening socket (SO_ACCEPTCONN), false for a connected one. */
function isListeningSocket(fd: number): boolean {
  const SO_ACCEPTCONN = 30;
  return native.getsockoptInt(fd, native.constants.SOL_SOCKET, SO_ACCEPTCONN) !== 0;
}

/**
 * Run until a signal (or, with --one-off, the first front-end's
 * disconnection). Resolves with the process exit code.
 */
export async function runDaemon(options: DaemonOptions): Promise<number> {
  const isolation = planIsolation('vhost-user', options, processContext());
  const stackConfig = await resolveDaemonStackConfig(options);
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only with --pcap, at startup
  if (options.pcapFile !== null) (require('../../frontends/middleware/pcap') as typeof import('../../frontends/middleware/pcap')).createPcapFile(options.pcapFile);

  // A failed worker ends the daemon (see WORKER_FAILURE_EXIT_CODE); set once the stop sequence exists.
  // A failure before then is kept and acted on as soon as it is.
  let earlyFailure: { queuePair: number; reason: string } | null = null;
  let onWorkerFailure: (queuePair: number, reason: string) => void = (queuePair, reason) => {
    earlyFailure ??= { queuePair, reason };
  };
  const testScript = process.env[TEST_WORKER_SCRIPT_ENV];
  if (testScript !== undefined && testScript !== '') log.warn(`${TEST_WORKER_SCRIPT_ENV} ON (tests only): workers run ${testScript}`);
  const workers: QueueWorker[] = [];
  for (let queuePair = 0; queuePair < options.queues; queuePair++) {
    workers.push(
      new QueueWorker(
        { queuePair, stack: stackConfig, protocols: options.protocols, pcapPath: options.pcapFile, debug: options.logging.level === 'debug' },
        logFromWorker,
        (failedPair, reason) => onWorkerFailure(failedPair, reason),
        testScript !== undefined && testScript !== '' ? { script: testScript } : {},
      ),
    );
  }
  try {
    await Promise.all(workers.map((w) => w.whenReady()));
  } catch (error) {
    await Promise.all(workers.map((w) => w.terminate()));
    throw error;
  }

  const device = new NetDevice(workers, { queuePairs: options.queues, mtu: stackConfig?.mtu ?? 65520 });
  const mainCounters = new CounterBlock();

  let listenFd: number | undefined;
  let connectedFd: number | undefined;
  const activated = systemdListenFds();
  if (options.fd !== null) {
    if (isListeningSocket(options.fd)) listenFd = options.fd;
    else connectedFd = options.fd;
  } else if (activated.length > 0 && options.socketPath === null) {
    listenFd = activated[0];
  }
  const socketPath = listenFd === undefined && connectedFd === undefined ? (options.socketPath ?? DEFAULT_SOCKET_PATH) : undefined;

  let socketGroup: number | undefined;
  if (options.socketGroup !== null) socketGroup = groupId(options.socketGroup);

  const server = VhostUserServer.listen({
    device,
    counters: mainCounters,
    ...(socketPath !== undefined ? { socketPath } : { listenFd: (listenFd ?? connectedFd) as number }),
    ...(connectedFd !== undefined ? { connected: true } : {}),
    ...(options.socketMode !== null ? { socketMode: options.socketMode } : {}),
    ...(socketGroup !== undefined ? { socketGroup } : {}),
  });

  // The metrics (prom-client) and the control API (protobufjs) are loaded only when one is asked for:
  // together they cost about 20 MB of the main thread's memory. Loaded here, at startup, before
  // anything confines the process.
  let metricsServer: MetricsServer | null = null;
  let control: ControlServer | null = null;
  if (options.metrics !== null || options.controlPath !== null) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only with --metrics or the control API (see above)
    const { FerryMetrics, startMetricsServer } = require('../../control/metrics') as typeof import('../../control/metrics');
    // Index = queue pair; main's own block (vhost-user server counters) last.
    const metrics = new FerryMetrics(() => [...workers.map((w) => w.counters), mainCounters]);
    if (options.metrics !== null) {
      metricsServer = await startMetricsServer(options.metrics, metrics);
      log.info(`metrics on ${metricsServer.address}`);
    }
    if (options.controlPath !== null) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only with the control API (see above)
      const { startControlServer } = require('../../control/control') as typeof import('../../control/control');
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only with the control API (see above)
      const { DaemonControlHandler } = require('./control-handler') as typeof import('./control-handler');
      control = await startControlServer(options.controlPath, new DaemonControlHandler(workers, metrics.registry));
      log.info(`control API on ${control.path}`);
    }
  }

  if (options.pidFile !== null) fs.writeFileSync(options.pidFile, `${process.pid}\n`);
  // Everything is loaded and open: from here on no path is reachable (the schema is read lazily otherwise).
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only with the control API (see above)
  if (control !== null) (require('../../control/control-protocol') as typeof import('../../control/control-protocol')).loadControlSchema();
  const metricsPath = options.metrics?.kind === 'unix' ? options.metrics.path : null;
  confineProcess(isolation, (line) => log.info(line), [socketPath, options.pidFile, options.controlPath, metricsPath]);
  const where = socketPath ?? `fd ${listenFd ?? connectedFd}`;
  log.info(`listening for vhost-user front-ends on ${where} (${options.queues} queue pair${options.queues > 1 ? 's' : ''})`);
  systemdNotify(`READY=1\nSTATUS=Listening on ${where}`);

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async (reason: string, code: number): Promise<void> => {
      if (stopping) return;
      stopping = true;
      log.info(`stopping: ${reason}`);
      systemdNotify('STOPPING=1');
      try {
        await server.close();
      } catch (error) {
        log.warn(`closing the vhost-user server: ${String(error)}`);
      }
      const stopped = await Promise.all(workers.map((w) => w.terminate()));
      if (stopped.includes(false)) endStuckProcess(reason);
      if (metricsServer !== null) await metricsServer.close();
      if (control !== null) await control.close();
      removeQuietly(options.pidFile);
      process.removeListener('SIGTERM', onTerm);
      process.removeListener('SIGINT', onInt);
      resolve(code);
    };
    onWorkerFailure = (queuePair, reason) => {
      log.error(`queue pair ${queuePair} worker failed (${reason}): exiting with ${WORKER_FAILURE_EXIT_CODE} so that the supervisor starts a fresh daemon`);
      void stop(`queue pair ${queuePair} worker failed`, WORKER_FAILURE_EXIT_CODE);
    };
    if (earlyFailure !== null) onWorkerFailure(earlyFailure.queuePair, earlyFailure.reason);
    const onTerm = (): void => void stop('SIGTERM', 0);
    const onInt = (): void => void stop('SIGINT', 0);
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
    server.on('connected', (id: number) => {
      log.info(`front-end ${id} connected`);
      systemdNotify(`STATUS=Serving front-end ${id} on ${where}`);
    });
    server.on('disconnected', (id: number, reason: string) => {
      log.info(`front-end ${id} disconnected: ${reason}`);
      if (options.oneOff || connectedFd !== undefined) void stop('--one-off: the front-end disconnected', 0);
      else systemdNotify(`STATUS=Listening on ${where}`);
    });
  });
}

/**
 * A worker thread is stuck in a system call: Node's process.exit would wait
 * for it for ever, so the process ends itself with SIGKILL, which the
 * supervisor sees as a failure all the same (stderr is a pipe or a file
 * under a supervisor, written synchronously, so the line is not lost).
 */
function endStuckProcess(reason: string): void {
  const line = `ferry: a queue-pair worker thread cannot be stopped (${reason}); ending the process with SIGKILL\n`;
  log.error(line.trim());
  process.stderr.write(line);
  process.kill(process.pid, 'SIGKILL');
}

/** A group name or number as a gid; throws naming the group when unknown. */
function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  const line = fs
    .readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((l) => l.split(':')[0] === group);
  if (line === undefined) throw new Error(`--socket-group: no group named ${group}`);
  return Number(line.split(':')[2]);
}
