import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'fs';
import { request } from 'http';
import { createServer } from 'net';
import { spawnSync } from 'child_process';
import { tmpdir } from 'os';
import { join } from 'path';
import { CounterBlock, type CounterDefinition } from '../../../../src/sys/counters';
import { FerryMetrics, startMetricsServer } from '../../../../src/backend/control/metrics';

/** A private set of definitions so the test does not depend on what other modules declared. */
const definitions: CounterDefinition[] = [
  { metric: 'ferry_test_frames_total', help: 'Frames seen.', kind: 'counter', labels: { direction: 'tx' } },
  { metric: 'ferry_test_frames_total', help: 'Frames seen.', kind: 'counter', labels: { direction: 'rx' } },
  { metric: 'ferry_test_flows', help: 'Open flows.', kind: 'gauge', labels: {} },
];

function twoBlocks(): CounterBlock[] {
  const first = new CounterBlock(new SharedArrayBuffer(8 * 16));
  const second = new CounterBlock(new SharedArrayBuffer(8 * 16));
  first.add(0, 10);
  first.add(1, 3);
  first.set(2, 4);
  second.add(0, 5);
  second.add(1, 1);
  second.set(2, 2);
  return [first, second];
}

/** GET `path` over a UNIX socket or TCP; resolves with status, content type and body. */
function get(target: { socketPath: string } | { host: string; port: number }, path = '/metrics', method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ ...target, path, method, timeout: 5000 }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, type: String(response.headers['content-type']), body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

describe('metrics', () => {
  describe('FerryMetrics', () => {
    it('labels each slot by queue pair', async () => {
      const blocks = twoBlocks();
      const metrics = new FerryMetrics(() => blocks, { processMetrics: false, definitions: () => definitions });
      const text = await metrics.render();
      expect(text).to.include('# HELP ferry_test_frames_total Frames seen.');
      expect(text).to.include('# TYPE ferry_test_frames_total counter');
      expect(text).to.include('ferry_test_frames_total{queue_pair="0",direction="tx"} 10');
      expect(text).to.include('ferry_test_frames_total{queue_pair="1",direction="tx"} 5');
      expect(text).to.include('ferry_test_frames_total{queue_pair="0",direction="rx"} 3');
      expect(text).to.include('ferry_test_frames_total{queue_pair="1",direction="rx"} 1');
      expect(text).to.include('# TYPE ferry_test_flows gauge');
      expect(text).to.include('ferry_test_flows{queue_pair="0"} 4');
      expect(text).to.include('ferry_test_flows{queue_pair="1"} 2');
    });

    it('sums over queue pairs when asked', async () => {
      const blocks = twoBlocks();
      const metrics = new FerryMetrics(() => blocks, { processMetrics: false, perQueuePair: false, definitions: () => definitions });
      const text = await metrics.render();
      expect(text).to.include('ferry_test_frames_total{direction="tx"} 15');
      expect(text).to.include('ferry_test_frames_total{direction="rx"} 4');
      expect(text).to.include('ferry_test_flows 6');
      expect(text).to.not.include('queue_pair');
    });

    it('reads the blocks at every scrape, skips absent workers', async () => {
      const blocks: Array<CounterBlock | null> = twoBlocks();
      const metrics = new FerryMetrics(() => blocks, { processMetrics: false, definitions: () => definitions });
      await metrics.render();
      (blocks[0] as CounterBlock).add(0, 7);
      blocks[1] = null;
      const text = await metrics.render();
      expect(text).to.include('ferry_test_frames_total{queue_pair="0",direction="tx"} 17');
      expect(text).to.not.include('queue_pair="1"');
    });

    it('picks up slots declared after it was created', async () => {
      const growing: CounterDefinition[] = [definitions[0]];
      const blocks = twoBlocks();
      const metrics = new FerryMetrics(() => blocks, { processMetrics: false, definitions: () => growing });
      expect(await metrics.render()).to.not.include('direction="rx"');
      growing.push(definitions[1], { metric: 'ferry_test_late_total', help: 'Late.', kind: 'counter', labels: { reason: 'x' } });
      blocks[0].set(2, 9);
      const text = await metrics.render();
      expect(text).to.include('ferry_test_frames_total{queue_pair="0",direction="rx"} 3');
      expect(text).to.include('ferry_test_late_total{queue_pair="0",reason="x"} 9');
    });

    it('process metrics and event-loop lag with the prefix', async () => {
      const metrics = new FerryMetrics(() => [], { definitions: () => [], processPrefix: 'ferry_' });
      const text = await metrics.render();
      expect(text).to.match(/^ferry_process_cpu_user_seconds_total /m);
      expect(text).to.match(/^ferry_nodejs_eventloop_lag_seconds /m);
    });

    it('a corrupt negative counter slot is left out rather than throwing', async () => {
      const blocks = twoBlocks();
      blocks[0].set(0, -1);
      const metrics = new FerryMetrics(() => blocks, { processMetrics: false, definitions: () => definitions });
      const text = await metrics.render();
      expect(text).to.not.include('ferry_test_frames_total{queue_pair="0",direction="tx"}');
      expect(text).to.include('ferry_test_frames_total{queue_pair="1",direction="tx"} 5');
    });
  });

  describe('startMetricsServer', () => {
    let dir: string;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'ferry-metrics-'));
    });
    afterEach(() => {
      rmSync(dir, { recursive: true, force: true });
    });

    const metrics = (): FerryMetrics => {
      const blocks = twoBlocks();
      return new FerryMetrics(() => blocks, { processMetrics: false, definitions: () => definitions });
    };

    it('serves GET /metrics over a UNIX socket and removes it on close', async () => {
      const socketPath = join(dir, 'metrics.sock');
      const server = await startMetricsServer(`unix:${socketPath}`, metrics());
      try {
        expect(server.address).to.equal(socketPath);
        const response = await get({ socketPath });
        expect(response.status).to.equal(200);
        expect(response.type).to.match(/^text\/plain/);
        expect(response.body).to.include('ferry_test_frames_total{queue_pair="1",direction="rx"} 1');
        expect((await get({ socketPath }, '/other')).status).to.equal(404);
        expect((await get({ socketPath }, '/metrics', 'POST')).status).to.equal(405);
        const head = await get({ socketPath }, '/metrics', 'HEAD');
        expect(head.status).to.equal(200);
        expect(head.body).to.equal('');
      } finally {
        await server.close();
      }
      expect(existsSync(socketPath)).to.equal(false);
    });

    it('serves over TCP on 127.0.0.1 with a kernel-chosen port', async () => {
      const server = await startMetricsServer({ kind: 'tcp', host: '127.0.0.1', port: 0 }, metrics());
      try {
        const port = Number(server.address.split(':')[1]);
        expect(port).to.be.greaterThan(0);
        const response = await get({ host: '127.0.0.1', port });
        expect(response.status).to.equal(200);
        expect(response.body).to.include('ferry_test_flows{queue_pair="0"} 4');
      } finally {
        await server.close();
      }
    });

    it('replaces a stale socket file, refuses a live socket or a regular file', async () => {
      const stale = join(dir, 'stale.sock');
      const holder = createServer();
      await new Promise<void>((resolve) => holder.listen(stale, resolve));
      // A live socket is refused...
      let error: unknown = null;
      await startMetricsServer(`unix:${stale}`, metrics()).catch((e: unknown) => (error = e));
      expect(String(error)).to.match(/in use/);
      await new Promise<void>((resolve) => holder.close(() => resolve()));
      // ...a regular file is refused...
      const file = join(dir, 'file');
      writeFileSync(file, 'x');
      error = null;
      await startMetricsServer(`unix:${file}`, metrics()).catch((e: unknown) => (error = e));
      expect(String(error)).to.match(/not a socket/);
      // ...and a leftover socket file nobody listens on is replaced.
      const leftover = join(dir, 'leftover.sock');
      // A process that dies without closing leaves its socket file behind.
      const child = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(leftover)}, () => process.kill(process.pid, 'SIGKILL'))`], { timeout: 5000 });
      expect(child.signal).to.equal('SIGKILL');
      expect(existsSync(leftover)).to.equal(true);
      const server = await startMetricsServer(`unix:${leftover}`, metrics());
      try {
        expect((await get({ socketPath: leftover })).status).to.equal(200);
      } finally {
        await server.close();
      }
    });
  });
});
