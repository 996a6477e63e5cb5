/**
 * Builds the stack a worker hands its frames to, with every protocol
 * handler that exists installed.
 */
import { Stack, StackOptions } from '../stack/stack';
import { Ipv6ControlPlane } from '../stack/ndp';
import { FlowTable } from '../stack/flow-table';
import { UdpService } from '../stack/udp';

/** Create the stack over a worker's port, counters, fd watcher and sockets. */
export function createStack(options: StackOptions): Stack {
  const ipv6Control = options.config.ipv6 !== null ? new Ipv6ControlPlane(options.config, options.counters) : null;
  const stack = new Stack({ ...options, ipv6Control });
  if (options.sockets !== null && options.sockets !== undefined && options.watcher !== null && options.watcher !== undefined) {
    // One flow table per worker, shared by the transport handlers (TcpService takes it as TcpServiceOptions.flows).
    const flows = new FlowTable(Math.max(1, options.config.maxFlows), options.counters);
    const udp = new UdpService(stack.ctx, { flows });
    stack.udpHandler = udp;
    udp.listen(options.config.udpForwards ?? []);
    // Stack has no timer hook for transport handlers yet: chain UDP's idle expiry in front of its own.
    const stackTimer = stack.onTimer.bind(stack);
    stack.onTimer = (now = stack.ctx.clock.now()): void => {
      udp.onTimer(now);
      stackTimer(now);
    };
    const stackClose = stack.close.bind(stack);
    stack.close = (): void => {
      udp.close();
      stackClose();
    };
  }
  return stack;
}
