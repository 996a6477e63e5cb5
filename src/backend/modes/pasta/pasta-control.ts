/**
 * The control API in pasta mode (--control PATH): one stack on the main
 * thread, so its flow table is read directly. Flows of every kind are
 * listed (the stack's TCP, UDP and ICMP echo, and the loopback relays:
 * tcp-splice for -T and the -t splice path, udp-forward for -U) and closed
 * through their kind's closer. Forwards are fixed on pasta's command line:
 * the forward commands answer UNIMPLEMENTED.
 */
import { ControlError, type ControlHandler, statsFromRegistry } from '../../control/control';
import type { ControlLogLevel, FlowInfo, FlowProtocol, ForwardInfo, StatSample } from '../../control/control-protocol';
import { closeTableFlow, listTableFlows } from '../../control/flow-list';
import type { FerryMetrics } from '../../control/metrics';
import { setLogLevel } from '../../cli/logging';
import type { FlowTable } from '../../../stack/flow/flow-table';

const FORWARDS_FIXED = 'pasta takes its forwards from the command line (-t/-u/-T/-U) only';

/** ControlHandler over pasta's one flow table (null: a stack without host sockets, nothing to list). */
export class PastaControlHandler implements ControlHandler {
  constructor(
    private readonly flows: FlowTable | null,
    /** The clock the table's flows were opened on (the stack's). */
    private readonly now: () => number,
    private readonly metrics: FerryMetrics,
  ) {}

  async listFlows(protocol: FlowProtocol | null): Promise<FlowInfo[]> {
    return this.flows === null ? [] : listTableFlows(this.flows, this.now(), 0, protocol);
  }

  /** Every counter, as the metrics endpoint shows it (rendering registers counters declared since the last look). */
  async stats(): Promise<StatSample[]> {
    await this.metrics.render();
    return statsFromRegistry(this.metrics.registry);
  }

  async addForward(): Promise<void> {
    throw new ControlError('UNIMPLEMENTED', FORWARDS_FIXED);
  }

  async removeForward(): Promise<void> {
    throw new ControlError('UNIMPLEMENTED', FORWARDS_FIXED);
  }

  async listForwards(): Promise<ForwardInfo[]> {
    throw new ControlError('UNIMPLEMENTED', FORWARDS_FIXED);
  }

  async closeFlow(id: number): Promise<void> {
    if (this.flows === null || !closeTableFlow(this.flows, id)) throw new ControlError('NOT_FOUND', `no flow ${id}`);
  }

  async setLogLevel(level: ControlLogLevel): Promise<void> {
    setLogLevel(level);
  }
}
