/**
 * The main thread's handle on one queue-pair worker: starts the
 * worker_thread, sends it requests and resolves their replies, forwards its
 * log lines, and exposes its counters block for metrics.
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import { CounterBlock } from '../../../sys/counters';
import { SHARED_LAYOUT } from './counter-layout';
import { log, type LogLevel } from '../../../sys/log';
import type { WorkerControlReply, WorkerControlRequest, WorkerInit, WorkerMessage, WorkerReplyValue, WorkerRequest } from './worker-protocol';

/** How long a worker may take to answer one request before the device gives up on it. */
const REQUEST_TIMEOUT_MS = 10_000;

interface Pending {
  resolve: (value: WorkerReplyValue | undefined) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class QueueWorker {
  readonly counters: CounterBlock;
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private exited = false;
  private readonly ready: Promise<void>;

  /**
   * Start the worker for queue pair `init.queuePair`. `onLog` receives the
   * worker's log lines (main owns the log file).
   */
  constructor(init: Omit<WorkerInit, 'counters'>, onLog: (level: LogLevel, message: string, queuePair: number) => void) {
    this.counters = new CounterBlock();
    const workerInit: WorkerInit = { ...init, counters: this.counters.buffer };
    this.worker = new Worker(path.join(__dirname, 'worker-main.js'), { workerData: workerInit });
    let markReady: () => void = () => undefined;
    let failReady: (e: Error) => void = () => undefined;
    this.ready = new Promise<void>((resolve, reject) => {
      markReady = resolve;
      failReady = reject;
    });
    this.worker.on('message', (message: WorkerMessage) => {
      switch (message.type) {
        case 'ready':
          if (message.counterLayout !== SHARED_LAYOUT) {
            failReady(new Error(`queue pair ${init.queuePair}: counter layout ${message.counterLayout} differs from the main thread's ${SHARED_LAYOUT}`));
          } else markReady();
          break;
        case 'log':
          onLog(message.level, message.message, init.queuePair);
          break;
        case 'reply': {
          const pending = this.pending.get(message.id);
          if (pending === undefined) return;
          this.pending.delete(message.id);
          clearTimeout(pending.timer);
          if (message.ok) pending.resolve(message.value);
          else pending.reject(new Error(message.error));
          break;
        }
      }
    });
    this.worker.on('error', (error) => {
      log.error(`queue pair ${init.queuePair}: worker failed: ${error.stack ?? String(error)}`);
      failReady(error);
    });
    this.worker.on('exit', (code) => {
      this.exited = true;
      failReady(new Error(`worker exited with code ${code}`));
      for (const [, pending] of this.pending) {
        clearTimeout(pending.timer);
        pending.reject(new Error(`queue pair ${init.queuePair}: worker exited (code ${code})`));
      }
      this.pending.clear();
    });
  }

  /** Resolves once the worker has loaded and installed its handlers. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  /** Send one device request; resolves with the reply's value (0 when none). */
  async request(request: WorkerRequest): Promise<number> {
    const value = await this.send(request);
    return typeof value === 'number' ? value : 0;
  }

  /**
   * Send one control request; resolves with its structured reply (see
   * WorkerControlReplies), rejects when the worker failed it or has gone.
   */
  async control<R extends WorkerControlRequest>(request: R): Promise<WorkerControlReply<R['op']>> {
    const value = await this.send(request);
    if (value === undefined) throw new Error(`queue pair worker sent no value for ${request.op}`);
    // The worker answers each op with its WorkerControlReplies type (worker-main.ts handleControl).
    return value as WorkerControlReply<R['op']>;
  }

  /** Post one request with a fresh id; resolves with the reply's value as sent. */
  private send(request: WorkerRequest | WorkerControlRequest): Promise<WorkerReplyValue | undefined> {
    if (this.exited) return Promise.reject(new Error('worker has exited'));
    const id = this.nextId++;
    return new Promise<WorkerReplyValue | undefined>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`worker did not answer ${request.op} within ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.worker.postMessage({ ...request, id });
    });
  }

  /** Stop the worker thread. */
  async terminate(): Promise<void> {
    if (this.exited) return;
    await this.worker.terminate();
  }
}
