/**
 * The daemon's ControlHandler: every control API command carried out by
 * the queue-pair workers (they own the flows and the listening sockets;
 * the main thread only asks them, see worker-control.ts), stats read from
 * the metrics registry, the log level set on main's logger.
 *
 * Flow ids: a worker names its flows by serial numbers it never reuses;
 * the id shown to clients is serial * queuePairs + queuePair, unique across
 * workers and equal to the serial when there is one queue pair.
 */
import type { Registry } from 'prom-client';
import type { ForwardSpec } from '../../../stack/flow/forward-spec';
import { ControlError, type ControlHandler, statsFromRegistry } from '../../control/control';
import type { ControlLogLevel, FlowInfo, FlowProtocol, ForwardInfo, ForwardProtocol, StatSample } from '../../control/control-protocol';
import { setLogLevel } from '../../cli/logging';
import type { QueueWorker } from './queue-worker';
import type { WorkerControlReply, WorkerControlRequest } from './worker-protocol';

/** The worker that owns the -t/-u listeners (worker-main.ts opens them on queue pair 0 only). */
const LISTENER_QUEUE_PAIR = 0;

/** The control-request side of a QueueWorker (a fake can stand in for a unit test). */
export type ControlWorker = Pick<QueueWorker, 'control'>;

/** The client-visible id of a worker's flow. */
export function globalFlowId(serial: number, queuePair: number, queuePairs: number): number {
  return serial * queuePairs + queuePair;
}

/** The worker and serial a client-visible flow id names, or null for an id no flow can have. */
export function splitFlowId(id: number, queuePairs: number): { queuePair: number; serial: number } | null {
  if (!Number.isSafeInteger(id) || id < 0 || queuePairs < 1) return null;
  const queuePair = id % queuePairs;
  const serial = (id - queuePair) / queuePairs;
  return serial >= 1 ? { queuePair, serial } : null;
}

/** The daemon's ControlHandler over its workers (index = queue pair). */
export class DaemonControlHandler implements ControlHandler {
  constructor(
    private readonly workers: readonly ControlWorker[],
    private readonly registry: Registry,
  ) {}

  /** Every worker's flows, ids made global, ordered by worker then age (oldest first). */
  async listFlows(protocol: FlowProtocol | null): Promise<FlowInfo[]> {
    const perWorker = await Promise.all(this.workers.map((worker) => this.ask(worker, { op: 'list-flows', protocol })));
    const queuePairs = this.workers.length;
    const flows: FlowInfo[] = [];
    perWorker.forEach((list, queuePair) => {
      for (const flow of [...list].sort((a, b) => a.id - b.id)) flows.push({ ...flow, id: globalFlowId(flow.id, queuePair, queuePairs), queuePair });
    });
    return flows;
  }

  /** The metrics registry's samples. */
  stats(): Promise<StatSample[]> {
    return statsFromRegistry(this.registry);
  }

  /** Forward spec's ports at run time; CONFLICT when a port is already forwarded or in use on the host. */
  async addForward(protocol: ForwardProtocol, spec: ForwardSpec): Promise<void> {
    const outcome = await this.ask(this.listenerWorker(), { op: 'add-forward', protocol, spec });
    if (outcome.status !== 'OK') throw new ControlError(outcome.status, outcome.message);
  }

  /** Stop forwarding spec's host ports; NOT_FOUND when none of them was forwarded. */
  async removeForward(protocol: ForwardProtocol, spec: ForwardSpec): Promise<void> {
    const removed = await this.ask(this.listenerWorker(), { op: 'remove-forward', protocol, spec });
    if (removed === 0) throw new ControlError('NOT_FOUND', `no ${protocol} forward covers '${spec.text}'`);
  }

  /** The forwarding rules in force. */
  listForwards(): Promise<ForwardInfo[]> {
    return this.ask(this.listenerWorker(), { op: 'list-forwards' });
  }

  /** Close one flow by its client-visible id; NOT_FOUND when no worker has it. */
  async closeFlow(id: number): Promise<void> {
    const where = splitFlowId(id, this.workers.length);
    const worker = where === null ? undefined : this.workers[where.queuePair];
    if (where === null || worker === undefined || !(await this.ask(worker, { op: 'close-flow', serial: where.serial }))) {
      throw new ControlError('NOT_FOUND', `no flow ${id}`);
    }
  }

  /** Main's logger (worker lines go through it, so they follow). */
  async setLogLevel(level: ControlLogLevel): Promise<void> {
    setLogLevel(level);
  }

  private listenerWorker(): ControlWorker {
    const worker = this.workers[LISTENER_QUEUE_PAIR];
    if (worker === undefined) throw new ControlError('INTERNAL', 'no queue-pair worker is running');
    return worker;
  }

  /** One request to one worker; a worker failure becomes INTERNAL with its message. */
  private async ask<R extends WorkerControlRequest>(worker: ControlWorker, request: R): Promise<WorkerControlReply<R['op']>> {
    try {
      return await worker.control(request);
    } catch (error) {
      throw new ControlError('INTERNAL', `worker: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}
