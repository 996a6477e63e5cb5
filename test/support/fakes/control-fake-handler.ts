/**
 * A fake ControlHandler for tests of the control server and ferryctl:
 * records every call, answers from fixed data, and can fail or hang on
 * demand.
 */
import { ControlError, type ControlHandler } from '../../../src/backend/control/control';
import type { FlowInfo, FlowProtocol, ForwardInfo, ForwardProtocol, StatSample } from '../../../src/backend/control/control-protocol';
import type { ForwardSpec } from '../../../src/stack/flow/forward-spec';

/** The one flow FakeHandler lists by default. */
export const SAMPLE_FLOW: FlowInfo = {
  id: 7,
  protocol: 'tcp',
  state: 'ESTABLISHED',
  inbound: false,
  guestAddress: '192.0.2.1',
  guestPort: 40000,
  remoteAddress: '2001:db8::2',
  remotePort: 443,
  bytesFromGuest: 1234,
  bytesToGuest: 5_000_000_000,
  ageMs: 65_000,
  queuePair: 1,
};

/** A ControlHandler that records its calls and answers from fixed data. */
export class FakeHandler implements ControlHandler {
  calls: string[] = [];
  flows: FlowInfo[] = [SAMPLE_FLOW];
  forwards: ForwardInfo[] = [];
  failNext: Error | null = null;
  hang = false;

  private async step(call: string): Promise<void> {
    this.calls.push(call);
    if (this.hang) await new Promise(() => undefined);
    const failure = this.failNext;
    this.failNext = null;
    if (failure !== null) throw failure;
  }

  async listFlows(protocol: FlowProtocol | null): Promise<FlowInfo[]> {
    await this.step(`listFlows ${protocol}`);
    return this.flows.filter((f) => protocol === null || f.protocol === protocol);
  }
  async stats(): Promise<StatSample[]> {
    await this.step('stats');
    return [
      { name: 'ferry_rx_frames_total', labels: { queue_pair: '0' }, value: 42 },
      { name: 'ferry_flows', labels: { protocol: 'tcp', state: 'established' }, value: 1.5 },
    ];
  }
  async addForward(protocol: ForwardProtocol, spec: ForwardSpec): Promise<void> {
    await this.step(`addForward ${protocol} ${spec.text}`);
    if (this.forwards.some((f) => f.protocol === protocol && f.mappings[0].hostPortFirst === spec.mappings[0].hostPortFirst)) {
      throw new ControlError('CONFLICT', `${protocol} port ${spec.mappings[0].hostPortFirst} is already forwarded`);
    }
    this.forwards.push({ protocol, spec: spec.text, bindAddress: '', interface: '', mappings: spec.mappings.map((m) => ({ ...m })), runtime: true });
  }
  async removeForward(protocol: ForwardProtocol, spec: ForwardSpec): Promise<void> {
    await this.step(`removeForward ${protocol} ${spec.text}`);
    const port = spec.mappings[0].hostPortFirst;
    const before = this.forwards.length;
    this.forwards = this.forwards.filter((f) => !(f.protocol === protocol && f.mappings[0].hostPortFirst === port));
    if (this.forwards.length === before) throw new ControlError('NOT_FOUND', `${protocol} port ${port} is not forwarded`);
  }
  async listForwards(): Promise<ForwardInfo[]> {
    await this.step('listForwards');
    return this.forwards;
  }
  async closeFlow(id: number): Promise<void> {
    await this.step(`closeFlow ${id}`);
    if (!this.flows.some((f) => f.id === id)) throw new ControlError('NOT_FOUND', `no flow ${id}`);
  }
  async setLogLevel(level: string): Promise<void> {
    await this.step(`setLogLevel ${level}`);
  }
}

