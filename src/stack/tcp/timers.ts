/**
 * TCP timers: one deadline per flow (FlowTable.deadline), set from the
 * flow's state: retransmission with exponential backoff while data or a
 * SYN is unacknowledged, a zero-window probe, the FIN timeout of a
 * half-closed flow, the idle timeout of an established one, and the SYN
 * timeout of a connect() that never completes. TcpService.onTimer walks
 * the flows that are due.
 */
import { FIN_TIMEOUT_MS, F_FIN_SENT, F_READABLE, IDLE_TIMEOUT_MS, MAX_RETRIES, RTO_MAX_MS, type TcpConnections, TcpEvent, TcpState, seqDiff } from './connection';
import { rewind, sendData } from './host-to-guest';
import { abort, sendSyn } from './output';

/** Set the flow's deadline from its state: retransmission while data is unacknowledged, else FIN or idle timeout. */
export function armTimer(c: TcpConnections, id: number): void {
  const now = c.ctx.clock.now();
  if (c.sndNxt[id] !== c.sndUna[id] || seqDiff(c.sndMax[id], c.sndUna[id]) > 0) {
    c.flows.deadline[id] = now + c.rto[id];
  } else if (c.flows.state[id] === TcpState.Closing) {
    c.flows.deadline[id] = now + FIN_TIMEOUT_MS;
  } else {
    c.flows.deadline[id] = c.activity[id] + IDLE_TIMEOUT_MS;
  }
}

export function onDeadline(c: TcpConnections, id: number): void {
  const now = c.timerNow;
  const state = c.flows.state[id] as TcpState;
  switch (state) {
    case TcpState.Connecting:
      c.ctx.counters.add(TcpEvent.Timeout);
      abort(c, id, true, true);
      return;
    case TcpState.SynAckSent:
    case TcpState.SynSent:
      if (!backoff(c, id)) return;
      sendSyn(c, id, state === TcpState.SynAckSent);
      c.flows.deadline[id] = now + c.rto[id];
      return;
    default:
  }
  if (seqDiff(c.sndMax[id], c.sndUna[id]) > 0) {
    if (!backoff(c, id)) return;
    c.ctx.counters.add(TcpEvent.Retransmit);
    rewind(c, id);
    c.flows.deadline[id] = now + c.rto[id];
    return;
  }
  if (state === TcpState.Closing) {
    if (now - c.activity[id] >= FIN_TIMEOUT_MS) {
      c.ctx.counters.add(TcpEvent.Timeout);
      abort(c, id, true, true);
      return;
    }
  } else if (now - c.activity[id] >= IDLE_TIMEOUT_MS) {
    c.ctx.counters.add(TcpEvent.Timeout);
    abort(c, id, true, true);
    return;
  }
  if (c.sndWnd[id] === 0 && (c.flag[id] & F_FIN_SENT) === 0) {
    // Zero window: probe with one byte (or the FIN) so the guest reports when it opens.
    c.flag[id] |= F_READABLE;
    sendData(c, id, true);
    c.rto[id] = Math.min(RTO_MAX_MS, c.rto[id] * 2);
    c.flows.deadline[id] = now + c.rto[id];
    return;
  }
  armTimer(c, id);
}

/** One more retry with a doubled timeout; false (and the flow reset) when retries are exhausted. */
export function backoff(c: TcpConnections, id: number): boolean {
  if (++c.retries[id] > MAX_RETRIES) {
    c.ctx.counters.add(TcpEvent.Timeout);
    abort(c, id, true, true);
    return false;
  }
  c.rto[id] = Math.min(RTO_MAX_MS, c.rto[id] * 2);
  return true;
}
