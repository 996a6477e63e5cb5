/**
 * Builds the stack a worker hands its frames to, with every protocol
 * handler that exists installed.
 */
import { Stack, StackOptions } from '../stack/stack';
import { Ipv6Control } from '../stack/ipv6-control';

/** A worker's stack and the periodic work it needs. */
export interface WorkerStack {
  stack: Stack;
  /** Call every STACK_TIMER_INTERVAL_MS. */
  onTimer(): void;
}

/** Create the stack over a worker's port, counters, fd watcher and sockets. */
export function createStack(options: StackOptions): WorkerStack {
  const ipv6Control = options.config.ipv6 !== null ? new Ipv6Control(options.config, options.counters) : null;
  const stack = new Stack({ ...options, ipv6Control });
  return {
    stack,
    onTimer: () => {
      if (ipv6Control !== null) ipv6Control.onTimer(stack.ctx, stack.ctx.clock.now());
      stack.onTimer();
    },
  };
}
