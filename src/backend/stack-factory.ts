/**
 * Builds the stack a worker hands its frames to, with every protocol
 * handler that exists installed.
 */
import { Stack, StackOptions } from '../stack/stack';

/** Create the stack over a worker's port, counters, fd watcher and sockets. */
export function createStack(options: StackOptions): Stack {
  return new Stack(options);
}
