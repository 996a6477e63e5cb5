/**
 * The daemon's ControlHandler (control-handler.ts) over fake workers that
 * answer control requests from tables: flow ids made unique across queue
 * pairs and routed back, forward outcomes turned into statuses, worker
 * failures into INTERNAL. The real workers: test/integration/control-daemon.test.ts.
 */
import { expect } from 'chai';
import { Registry } from 'prom-client';
import { ControlError } from '../../../../src/backend/control/control';
import type { FlowInfo } from '../../../../src/backend/control/control-protocol';
import { type ControlWorker, DaemonControlHandler, globalFlowId, splitFlowId } from '../../../../src/backend/modes/vhost-user/control-handler';
import type { WorkerControlReply, WorkerControlRequest } from '../../../../src/backend/modes/vhost-user/worker-protocol';
import { parseForwardSpec } from '../../../../src/stack/flow/forward-spec';

function flow(serial: number, queuePair: number): FlowInfo {
  return {
    id: serial,
    protocol: 'tcp',
    state: 'established',
    inbound: false,
    guestAddress: '192.0.2.1',
    guestPort: 40000 + serial,
    remoteAddress: '198.51.100.7',
    remotePort: 80,
    bytesFromGuest: 1,
    bytesToGuest: 2,
    ageMs: 3,
    queuePair,
  };
}

/** A worker answering from `answer`, recording what it was asked. */
class FakeWorker implements ControlWorker {
  readonly asked: WorkerControlRequest[] = [];
  constructor(private readonly answer: (request: WorkerControlRequest) => unknown) {}

  async control<R extends WorkerControlRequest>(request: R): Promise<WorkerControlReply<R['op']>> {
    this.asked.push(request);
    return this.answer(request) as WorkerControlReply<R['op']>;
  }
}

async function rejection(work: Promise<unknown>): Promise<ControlError> {
  try {
    await work;
  } catch (error) {
    expect(error).to.be.instanceOf(ControlError);
    return error as ControlError;
  }
  throw new Error('expected a ControlError');
}

describe('control-handler: flow ids', () => {
  it('are the serial with one queue pair, and split back for any number of them', () => {
    expect(globalFlowId(7, 0, 1)).to.equal(7);
    expect(splitFlowId(7, 1)).to.deep.equal({ queuePair: 0, serial: 7 });
    for (const queuePairs of [1, 2, 3, 16]) {
      for (const queuePair of [0, queuePairs - 1]) {
        for (const serial of [1, 2, 1000, 2 ** 40]) {
          expect(splitFlowId(globalFlowId(serial, queuePair, queuePairs), queuePairs)).to.deep.equal({ queuePair, serial });
        }
      }
    }
  });

  it('that no flow can have are refused', () => {
    expect(splitFlowId(0, 1)).to.equal(null);
    expect(splitFlowId(1, 2)).to.equal(null); // serial 0
    expect(splitFlowId(-4, 2)).to.equal(null);
    expect(splitFlowId(2.5, 2)).to.equal(null);
    expect(splitFlowId(2 ** 60, 2)).to.equal(null);
  });
});

describe('control-handler: DaemonControlHandler', () => {
  it('lists every worker’s flows with ids unique across workers, and closes each on its own worker', async () => {
    const workers = [0, 1].map(
      (queuePair) =>
        new FakeWorker((request) => {
          if (request.op === 'list-flows') return [flow(2, queuePair), flow(1, queuePair)];
          if (request.op === 'close-flow') return request.serial === 2;
          throw new Error(`unexpected ${request.op}`);
        }),
    );
    const handler = new DaemonControlHandler(workers, new Registry());
    const flows = await handler.listFlows('tcp');
    expect(flows.map((f) => [f.id, f.queuePair])).to.deep.equal([
      [2, 0],
      [4, 0],
      [3, 1],
      [5, 1],
    ]);
    expect(workers[0].asked[0]).to.deep.equal({ op: 'list-flows', protocol: 'tcp' });

    await handler.closeFlow(5); // serial 2 on queue pair 1
    expect(workers[1].asked.at(-1)).to.deep.equal({ op: 'close-flow', serial: 2 });
    expect(workers[0].asked.some((r) => r.op === 'close-flow')).to.equal(false);
    expect((await rejection(handler.closeFlow(3))).status).to.equal('NOT_FOUND'); // serial 1: the worker has none
    expect((await rejection(handler.closeFlow(0))).status).to.equal('NOT_FOUND');
  });

  it('turns forward outcomes into statuses: CONFLICT and friends as the worker says, nothing removed is NOT_FOUND', async () => {
    let outcome: unknown = { status: 'OK', message: '' };
    let removed = 0;
    const worker = new FakeWorker((request) => {
      if (request.op === 'add-forward') return outcome;
      if (request.op === 'remove-forward') return removed;
      if (request.op === 'list-forwards') return [];
      throw new Error(`unexpected ${request.op}`);
    });
    const handler = new DaemonControlHandler([worker, new FakeWorker(() => null)], new Registry());
    const spec = parseForwardSpec('8080:80');
    await handler.addForward('tcp', spec);
    expect(worker.asked[0]).to.deep.equal({ op: 'add-forward', protocol: 'tcp', spec });
    outcome = { status: 'CONFLICT', message: 'tcp port 8080 is already forwarded' };
    const conflict = await rejection(handler.addForward('tcp', spec));
    expect([conflict.status, conflict.message]).to.deep.equal(['CONFLICT', 'tcp port 8080 is already forwarded']);
    expect((await rejection(handler.removeForward('udp', spec))).status).to.equal('NOT_FOUND');
    removed = 1;
    await handler.removeForward('udp', spec);
    expect(await handler.listForwards()).to.deep.equal([]);
  });

  it('answers INTERNAL when a worker fails or has gone', async () => {
    const handler = new DaemonControlHandler(
      [
        new FakeWorker(() => {
          throw new Error('worker has exited');
        }),
      ],
      new Registry(),
    );
    const error = await rejection(handler.listFlows(null));
    expect(error.status).to.equal('INTERNAL');
    expect(error.message).to.match(/worker has exited/);
  });
});
