/**
 * The main thread's handle on one queue-pair worker: starts the
 * worker_thread, sends it requests and resolves their replies, forwards its
 * log lines, and exposes its counters block for metrics.
 *
 * A worker that fails (an exception escaping, an exit nobody asked for, or
 * no answer to a request within its deadline) is reported once through
 * onFailure; from then on every request is refused at once, and fds sent
 * with a request it did not answer are closed here, so none is kept.
 */
import { closeQuietly } from '../../../sys/close';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { CounterBlock } from '../../../sys/counters';
import { SHARED_LAYOUT } from './counter-layout';
import { log, type LogLevel } from '../../../sys/log';
import type { WorkerControlReply, WorkerControlRequest, WorkerInit, WorkerMessage, WorkerReplyValue, WorkerRequest } from './worker-protocol';

/** How long a worker may take to answer one request before the device gives up on it. */
const REQUEST_TIMEOUT_MS = 10_000;

/** How long terminate() waits for the worker to release what it holds before stopping the thread. */
const DISPOSE_TIMEOUT_MS = 2_000;
/** How long terminate() waits for the thread to stop (a thread stuck in a system call never does). */
const TERMINATE_TIMEOUT_MS = 2_000;

interface Pending {
  resolve: (value: WorkerReplyValue | undefined) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
  /** fds handed over with the request, closed here if the worker never answers. */
  fds: readonly number[];
}

/** Why a worker is no longer usable (given once to onFailure). */
export type WorkerFailureHandler = (queuePair: number, reason: string) => void;

/** What a unit test may change; the daemon uses the defaults. */
export interface QueueWorkerOptions {
  /** The worker's entry script (default: worker-main.js beside this module). */
  script?: string;
  /** Deadline for each request (default REQUEST_TIMEOUT_MS). */
  requestTimeoutMs?: number;
}

export class QueueWorker {
  readonly counters: CounterBlock;
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private exited = false;
  /** Set once the worker failed (see onFailure) or terminate() began: requests are refused. */
  private failure: string | null = null;
  private terminating = false;
  private readonly ready: Promise<void>;
  private readonly queuePair: number;
  private readonly requestTimeoutMs: number;

  /**
   * Start the worker for queue pair `init.queuePair`. `onLog` receives the
   * worker's log lines (main owns the log file).
   */
  constructor(
    init: Omit<WorkerInit, 'counters'>,
    onLog: (level: LogLevel, message: string, queuePair: number) => void,
    private readonly onFailure: WorkerFailureHandler = () => undefined,
    options: QueueWorkerOptions = {},
  ) {
    this.queuePair = init.queuePair;
    this.requestTimeoutMs = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    this.counters = new CounterBlock();
    const workerInit: WorkerInit = { ...init, counters: this.counters.buffer };
    this.worker = new Worker(options.script ?? path.join(__dirname, 'worker-main.js'), { workerData: workerInit, resourceLimits: { maxYoungGenerationSizeMb: 2 } });
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
      log.debug(`queue pair ${init.queuePair}: worker error: ${error.stack ?? String(error)}`);
      failReady(error);
      this.fail(`an exception escaped: ${error.message}`);
    });
    this.worker.on('exit', (code) => {
      this.exited = true;
      failReady(new Error(`worker exited with code ${code}`));
      if (!this.terminating) this.fail(`the worker exited (code ${code})`);
      this.rejectAllPending(`queue pair ${init.queuePair}: worker exited (code ${code})`);
    });
  }

  /** Resolves once the worker has loaded and installed its handlers. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  /** True once the worker failed: it answers nothing any more. */
  get failed(): boolean {
    return this.failure !== null && !this.terminating;
  }

  /**
   * Send one device request; resolves with the reply's value (0 when none).
   * `fds` are handed over with it: if the worker never answers (it has
   * failed, exits or times out) they are closed here.
   */
  async request(request: WorkerRequest, fds: readonly number[] = []): Promise<number> {
    const value = await this.send(request, fds);
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
  private send(request: WorkerRequest | WorkerControlRequest, fds: readonly number[] = [], timeoutMs = this.requestTimeoutMs): Promise<WorkerReplyValue | undefined> {
    if (this.exited || this.failure !== null) {
      for (const fd of fds) closeQuietly(fd);
      return Promise.reject(new Error(`queue pair ${this.queuePair}: worker unavailable (${this.failure ?? 'exited'})`));
    }
    const id = this.nextId++;
    return new Promise<WorkerReplyValue | undefined>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        for (const fd of fds) closeQuietly(fd);
        reject(new Error(`worker did not answer ${request.op} within ${timeoutMs} ms`));
        if (!this.terminating) this.fail(`no answer to ${request.op} within ${timeoutMs} ms`);
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, fds });
      this.worker.postMessage({ ...request, id });
    });
  }

  /** Mark the worker failed (once), refuse what is pending and tell the owner. */
  private fail(reason: string): void {
    if (this.failure !== null) return;
    this.failure = reason;
    log.error(`queue pair ${this.queuePair}: worker failed: ${reason}`);
    this.rejectAllPending(`queue pair ${this.queuePair}: worker failed (${reason})`);
    this.onFailure(this.queuePair, reason);
  }

  /** Reject every request still waiting, closing the fds handed over with them (the worker cannot use them any more). */
  private rejectAllPending(message: string): void {
    for (const [, pending] of this.pending) {
      clearTimeout(pending.timer);
      for (const fd of pending.fds) closeQuietly(fd);
      pending.reject(new Error(message));
    }
    this.pending.clear();
  }

  /**
   * The worker's dispose step, then the thread's end: the worker is asked to
   * release its stack, rings, memory and loop (bounded in time), then the
   * thread is stopped (also bounded: a thread stuck in a system call cannot
   * be stopped). Resolves true once the thread has stopped, false when it
   * is stuck (then only ending the process with a signal ends it: Node's
   * process.exit waits for worker threads).
   */
  async terminate(): Promise<boolean> {
    if (this.exited) return true;
    this.terminating = true;
    if (this.failure === null) {
      try {
        await this.send({ op: 'dispose' }, [], DISPOSE_TIMEOUT_MS);
      } catch {
        // A worker that cannot dispose is stopped all the same.
      }
    }
    this.failure ??= 'terminated';
    let timer: NodeJS.Timeout | undefined;
    const stopped = this.worker.terminate().then(() => true, () => true);
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), TERMINATE_TIMEOUT_MS);
      timer.unref();
    });
    const done = await Promise.race([stopped, late]);
    clearTimeout(timer);
    if (!done) log.warn(`queue pair ${this.queuePair}: worker thread did not stop within ${TERMINATE_TIMEOUT_MS} ms`);
    return done;
  }
}
