/**
 * Builds the stack a worker hands its frames to, with every protocol
 * handler that exists installed.
 */
import { Stack, type StackOptions } from './stack';
import { Ipv6ControlPlane } from './l2/ndp';
import { FlowTable } from './flow/flow-table';
import { UdpService } from './udp/udp';
import { TcpService } from './tcp/tcp';
import { TcpListeners } from './tcp/listen';
import { descriptorLimitFailure } from './l4/fd-limit';
import { log } from '../sys/log';

/** What a worker adds to the stack's own options. */
export interface WorkerStackOptions {
  /**
   * Inbound forwards (-t/-u listening sockets) live on one worker: a port can
   * be bound once. Guest-initiated flows live on the worker whose queue
   * carried them.
   */
  ownsListeners: boolean;
  /** --no-tcp: guest TCP is dropped and no -t listeners are opened. */
  tcp: boolean;
  /** --no-udp: guest UDP is dropped and no -u listeners are opened. */
  udp: boolean;
  /** --no-icmp: guest echo requests are dropped (default true). */
  icmp?: boolean;
  /**
   * Open the configured -t/-u forwards (default true). false: the listeners
   * exist empty and the caller opens forwards itself (the daemon's workers,
   * whose forwards change at run time).
   */
  openConfiguredForwards?: boolean;
}

/** A stack and the parts of it the control API reaches into (null: not installed). */
export interface StackParts {
  stack: Stack;
  /** The worker's flow table (null without host sockets). */
  flows: FlowTable | null;
  tcp: TcpService | null;
  udp: UdpService | null;
  /** The -t listeners (on the worker that owns listeners, with TCP on). */
  tcpListeners: TcpListeners | null;
}

/** Create the stack over a worker's port, counters, fd watcher and sockets. */
export function createStack(options: StackOptions, worker: WorkerStackOptions = { ownsListeners: true, tcp: true, udp: true }): Stack {
  return createStackParts(options, worker).stack;
}

/** createStack, also returning its flow table, transport services and listeners. */
export function createStackParts(options: StackOptions, worker: WorkerStackOptions = { ownsListeners: true, tcp: true, udp: true }): StackParts {
  const ipv6Control = options.config.ipv6 !== null ? new Ipv6ControlPlane(options.config, options.counters) : null;
  const stack = new Stack({ ...options, ipv6Control });
  stack.echoEnabled = worker.icmp !== false;
  const parts: StackParts = { stack, flows: null, tcp: null, udp: null, tcpListeners: null };
  const openConfigured = worker.openConfiguredForwards ?? true;
  if (options.sockets !== null && options.sockets !== undefined && options.watcher !== null && options.watcher !== undefined) {
    // One flow table per worker, shared by the transport handlers (TcpService takes it as TcpServiceOptions.flows).
    const flows = new FlowTable(Math.max(1, options.config.maxFlows), options.counters);
    parts.flows = flows;
    if (worker.tcp) {
      const tcp = new TcpService(stack.ctx, { flows });
      stack.tcpHandler = tcp;
      parts.tcp = tcp;
      if (worker.ownsListeners) {
        const listeners = new TcpListeners(stack.ctx, tcp);
        tcp.adoptListeners(listeners);
        parts.tcpListeners = listeners;
        if (openConfigured) {
          for (const spec of options.config.tcpForwards ?? []) {
            const result = listeners.openTagged([spec], 0);
            const fatal = descriptorLimitFailure('-t', spec.text, result);
            if (fatal !== null) throw fatal;
            for (const failure of result.failures) log.warn(`-t: ${failure}`);
          }
        }
      }
    }
    if (worker.udp) {
      const udp = new UdpService(stack.ctx, { flows });
      stack.udpHandler = udp;
      parts.udp = udp;
      if (worker.ownsListeners && openConfigured) {
        for (const spec of options.config.udpForwards ?? []) {
          const fatal = descriptorLimitFailure('-u', spec.text, udp.listenTagged([spec], 0));
          if (fatal !== null) throw fatal;
        }
      }
    }
  }
  return parts;
}
