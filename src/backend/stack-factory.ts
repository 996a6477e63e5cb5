/**
 * Builds the stack a worker hands its frames to, with every protocol
 * handler that exists installed.
 */
import { Stack, StackOptions } from '../stack/stack';
import { Ipv6ControlPlane } from '../stack/ndp';

/** Create the stack over a worker's port, counters, fd watcher and sockets. */
export function createStack(options: StackOptions): Stack {
  const ipv6Control = options.config.ipv6 !== null ? new Ipv6ControlPlane(options.config, options.counters) : null;
  return new Stack({ ...options, ipv6Control });
}
