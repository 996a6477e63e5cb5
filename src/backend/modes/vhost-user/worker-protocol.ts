/**
 * Messages between the main thread (the vhost-user device) and a queue-pair
 * worker. Main sends one request at a time per worker and awaits its reply;
 * requests carry an id echoed in the reply. fds cross threads as plain
 * numbers (fd numbers are process-wide).
 *
 * Ring indices here are local to the worker's queue pair: 0 = RX (ferry to
 * guest), 1 = TX (guest to ferry), as in virtio-net's queue numbering.
 */
import type { StackConfig } from '../../../stack/config';
import type { ForwardSpec } from '../../../stack/flow/forward-spec';
import type { RegionWithFd } from '../../../virtqueue/guest-memory';
import type { ControlStatus, FlowInfo, FlowProtocol, ForwardInfo, ForwardProtocol } from '../../control/control-protocol';

export const RX_RING = 0;
export const TX_RING = 1;


export type WorkerRequest =
  | { op: 'features'; features: bigint }
  | { op: 'mem-table'; /** fds stay owned by the main thread: the worker maps them and never closes them. */ regions: RegionWithFd[] }
  | { op: 'vring-num'; ring: number; num: number }
  | { op: 'vring-addr'; ring: number; descriptorUserAddress: number; availableUserAddress: number; usedUserAddress: number }
  | { op: 'vring-base'; ring: number; base: number }
  /** Stop the ring and return its last available index. */
  | { op: 'vring-stop'; ring: number }
  /**
   * The worker owns kick and call fds from the moment it receives the
   * request: it closes them when replaced, on a fault, on reset, and when the
   * request fails. A request that never reached a worker (it had exited)
   * leaves them to main, which closes them.
   */
  | { op: 'vring-kick'; ring: number; fd: number | null }
  | { op: 'vring-call'; ring: number; fd: number | null }
  | { op: 'vring-enable'; ring: number; enabled: boolean }
  | { op: 'send-rarp'; mac: Uint8Array }
  /** Front-end gone: stop rings, close kick/call fds, unmap memory, forget the guest (a fresh stack for the next one). */
  | { op: 'reset' }
  /** The daemon stops: reset, then release the stack, the loop and the capture file; nothing runs afterwards. */
  | { op: 'dispose' };

/**
 * Control API requests (control-handler.ts). Flows are named by their
 * serial number (FlowTable.serial), unique within one worker; main makes
 * ids unique across workers. Forward requests go to the worker that owns
 * the listeners (queue pair 0).
 */
export type WorkerControlRequest =
  | { op: 'list-flows'; /** null: every protocol. */ protocol: FlowProtocol | null }
  /** Close one flow (TCP: reset both ways). */
  | { op: 'close-flow'; serial: number }
  | { op: 'add-forward'; protocol: ForwardProtocol; spec: ForwardSpec }
  /** Stop forwarding the host ports of spec (guest ports ignored). */
  | { op: 'remove-forward'; protocol: ForwardProtocol; spec: ForwardSpec }
  | { op: 'list-forwards' };

/** What add-forward did: OK, or the control status to answer with and why. */
export type AddForwardOutcome = { status: 'OK'; message: string } | { status: Exclude<ControlStatus, 'OK'>; message: string };

/** The reply value of each control request. */
export interface WorkerControlReplies {
  /** Flows with id = their serial and queuePair set; main makes the ids global. */
  'list-flows': FlowInfo[];
  /** false: no flow with that serial. */
  'close-flow': boolean;
  'add-forward': AddForwardOutcome;
  /** Host ports no longer forwarded (counted once per rule they left); 0 when nothing matched. */
  'remove-forward': number;
  'list-forwards': ForwardInfo[];
}

/** The reply value of control request `Op`. */
export type WorkerControlReply<Op extends WorkerControlRequest['op']> = WorkerControlReplies[Op];

/** Any reply value: a number for the device requests, structured data (structured-cloned) for control ones. */
export type WorkerReplyValue = number | WorkerControlReplies[keyof WorkerControlReplies];

export type WorkerRequestWithId = (WorkerRequest | WorkerControlRequest) & { id: number };

export type WorkerMessage =
  | { type: 'reply'; id: number; ok: true; value?: WorkerReplyValue }
  | { type: 'reply'; id: number; ok: false; error: string }
  | { type: 'log'; level: 'error' | 'warn' | 'info' | 'debug'; message: string }
  /** counterLayout: the worker's counter-layout.ts SHARED_LAYOUT, checked against main's. */
  | { type: 'ready'; counterLayout: string };

/** What a worker is started with (workerData). */
export interface WorkerInit {
  queuePair: number;
  /** The worker's counters (see src/counters.ts), read by main for metrics. */
  counters: SharedArrayBuffer;
  /** null: no stack (frames are only counted). */
  stack: StackConfig | null;
  /** --no-tcp / --no-udp / --no-icmp: false turns that protocol's translation off. */
  protocols: { tcp: boolean; udp: boolean; icmp: boolean };
  /** pcap file created by main, or null. */
  pcapPath: string | null;
  /** Negotiable: VIRTIO_NET_F_MRG_RXBUF etc. come through 'features'. */
  debug: boolean;
}
