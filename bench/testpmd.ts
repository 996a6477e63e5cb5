/**
 * DPDK's testpmd as a vhost-user front-end, sending 64-byte UDP datagrams
 * (guest->host) through a back-end into a sink, at a rate no TCG guest can
 * reach. testpmd's virtio-user port connects to the back-end's socket in
 * the test namespace, addressed as the guest would be (the host's own
 * 192.0.2.1, source port 40000) to 192.0.2.2 port 9 in the peer namespace,
 * where nothing listens: the datagrams delivered are counted on the peer's
 * veth (RX packets), the back-end's CPU per delivered datagram from /proc.
 * Back-ends: ferry with one queue pair, passt in vhost-user mode, and ferry
 * with --queues 2 fed by two testpmd queue pairs (one forwarding lcore
 * sending on both); each queue's TX count is read from testpmd's per-stream
 * statistics.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, run, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../test/support/netns';
import { commandAvailable } from '../test/support/guest';
import { FERRY_CLI_MODULE } from '../test/support/e2e/ferry-process';
import { processCpuSeconds } from './support/cpu';
import { startBenchFerry } from './support/ferry';
import { type Measurement } from './figures';
import { passtBinary, passtHasVhostUser } from './support/peers';

/** testpmd's binary name in Debian's `dpdk` package. */
export const TESTPMD = 'dpdk-testpmd';
/** ferry's and passt's default MAC: testpmd's frames are addressed to it. */
const BACKEND_MAC = '9a:55:9a:55:9a:55';
/** 64 bytes of UDP payload: 14 + 20 + 8 + 64. */
const FRAME_LENGTH = 106;
/** The test's name in the tables. */
export const TESTPMD_TEST = 'testpmd 64 B guest->host';

/** A back-end started for one testpmd run. */
interface PmdStarted {
  pid: number;
  stop(): Promise<void>;
  log(): string;
}

/** A back-end testpmd can drive: its queue pairs, why it cannot run (null if it can), and how to start it. */
export interface PmdBackend {
  name: string;
  queues: number;
  missing(): string | null;
  start(ns: string, socketPath: string): Promise<PmdStarted>;
}

async function waitForSocket(file: string, alive: () => boolean, output: () => string): Promise<void> {
  const deadline = Date.now() + 10000;
  while (!fs.existsSync(file)) {
    if (!alive()) throw new Error(`exited before creating ${file}:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`${file} not created within 10 s:\n${output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function ferryPmd(queues: number): PmdBackend {
  return {
    name: queues > 1 ? `ferry --queues ${queues}` : 'ferry',
    queues,
    missing: () => (fs.existsSync(FERRY_CLI_MODULE) ? null : `ferry is not built (${FERRY_CLI_MODULE})`),
    start: async (ns, socketPath) => {
      const ferry = await startBenchFerry(ns, socketPath, ['-q', ...(queues > 1 ? ['--queues', String(queues)] : [])]);
      return { pid: ferry.child.pid ?? 0, stop: () => ferry.stop(), log: () => ferry.log() };
    },
  };
}

/** The testpmd back-ends in table order: ferry first. */
export const PMD_BACKENDS: PmdBackend[] = [
  ferryPmd(1),
  {
    name: 'passt (vhost-user)',
    queues: 1,
    missing: () => {
      const passt = passtBinary();
      if (passt.missing || !passt.path) return passt.missing ?? 'passt not found';
      return passtHasVhostUser(passt.path) ? null : `${passt.path} (${passt.version}) has no --vhost-user`;
    },
    start: async (ns, socketPath) => {
      const child = spawnIn(ns, [passtBinary().path ?? 'passt', '--vhost-user', '-f', '-q', '--runas', '0', '-s', socketPath, '-t', 'none', '-u', 'none']);
      let output = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
      child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
      await waitForSocket(socketPath, () => child.exitCode === null && child.signalCode === null, () => output);
      return { pid: child.pid ?? 0, stop: () => stopChild(child, 1000), log: () => output };
    },
  },
  ferryPmd(2),
];

/** Why the testpmd benchmark cannot run here at all (null if it can). */
export function testpmdMissing(): string | null {
  if (!commandAvailable(TESTPMD)) {
    return `${TESTPMD} is not installed (scripts/install-bench-deps.sh)`;
  }
  return null;
}

/**
 * TX-packets of each forwarding stream in testpmd's final statistics
 * ("Forward Stats for RX Port= 0/Queue= Q -> TX Port= 0/Queue= Q" blocks), by TX queue.
 */
export function perQueueTxPackets(output: string): Map<number, number> {
  const out = new Map<number, number>();
  const re = /Forward Stats for RX Port=\s*\d+\/Queue=\s*\d+ -> TX Port=\s*\d+\/Queue=\s*(\d+)[^\n]*\n[^\n]*TX-packets:\s*(\d+)/g;
  for (let m = re.exec(output); m; m = re.exec(output)) out.set(Number(m[1]), (out.get(Number(m[1])) ?? 0) + Number(m[2]));
  return out;
}

async function rxPackets(ns: string, dev: string): Promise<number> {
  const r = await run(['ip', '-n', ns, '-s', '-j', 'link', 'show', 'dev', dev]);
  const doc = JSON.parse(r.stdout) as { stats64?: { rx?: { packets?: number } } }[];
  return doc[0]?.stats64?.rx?.packets ?? NaN;
}

/** Runs testpmd txonly into `backend` for `seconds`, `runs` times (one back-end, one testpmd per run). */
export async function runTestpmd(backend: PmdBackend, seconds: number, runs: number, say: (line: string) => void): Promise<Measurement> {
  const m: Measurement = { section: 'pmd', test: TESTPMD_TEST, kind: 'pps', backend: backend.name, runs: [] };
  const queueTotals = new Map<number, number>();
  for (let r = 0; r < runs; r++) {
    let net: TestNetwork | null = null;
    const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-pmd-'));
    let started: PmdStarted | null = null;
    const filePrefix = `ferry-bench-${process.pid}`;
    try {
      net = await createTestNetwork();
      const socketPath = path.join(workDir, 'backend.sock');
      started = await backend.start(net.ns, socketPath);
      const q = backend.queues;
      // lcore 0 waits on stdin, lcore 1 sends on every queue (testpmd needs a
      // forwarding core besides the main one; the machine has two cores).
      // stdbuf: testpmd's stdout is a pipe here, fully buffered without it.
      const pmd = spawnIn(net.ns, [
        'stdbuf', '-oL', TESTPMD, '--no-pci', '--no-huge', '-m', '512', '-l', '0,1', '--file-prefix', filePrefix,
        `--vdev=net_virtio_user0,path=${socketPath},queues=${q},mac=52:54:00:12:34:56`,
        '--', '--forward-mode=txonly', `--tx-ip=${TEST_NET.hostV4},${TEST_NET.serverV4}`, '--tx-udp=40000,9',
        `--txpkts=${FRAME_LENGTH}`, `--eth-peer=0,${BACKEND_MAC}`, '--total-num-mbufs=16384', '--nb-cores=1',
        `--rxq=${q}`, `--txq=${q}`,
      ]);
      let out = '';
      pmd.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
      pmd.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
      const t00 = Date.now();
      while (!/Press enter to exit/.test(out)) {
        if (pmd.exitCode !== null || Date.now() - t00 > 30000) throw new Error(`testpmd did not start forwarding:\n${out.split('\n').slice(-15).join('\n')}`);
        await new Promise((res) => setTimeout(res, 100));
      }
      // A second to settle (the guest MAC learnt, the flow's socket open).
      await new Promise((res) => setTimeout(res, 1000));
      const pid = started.pid;
      const cpu0 = processCpuSeconds(pid);
      const rx0 = await rxPackets(net.peerNs, TEST_NET.peerLinkName);
      const t0 = process.hrtime.bigint();
      await new Promise((res) => setTimeout(res, seconds * 1000));
      const cpu1 = processCpuSeconds(pid);
      const rx1 = await rxPackets(net.peerNs, TEST_NET.peerLinkName);
      const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
      pmd.stdin?.write('\n');
      await Promise.race([new Promise((res) => pmd.once('exit', res)), new Promise((res) => setTimeout(res, 5000))]);
      await stopChild(pmd, 1000);
      const tail = out.slice(out.lastIndexOf('Press enter to exit'));
      const sent = /TX-packets:\s*(\d+)/.exec(tail.slice(tail.lastIndexOf('Accumulated forward statistics')))?.[1];
      const perQueue = perQueueTxPackets(tail);
      for (const [queue, n] of perQueue) queueTotals.set(queue, (queueTotals.get(queue) ?? 0) + n);
      const delivered = rx1 - rx0;
      m.runs.push({ bytes: delivered * 64, seconds: elapsed, cpuSeconds: cpu1 - cpu0, packets: delivered, lostPackets: 0 });
      const queues = perQueue.size > 1 ? `, per TX queue ${[...perQueue].map(([qq, n]) => `q${qq} ${n}`).join(' ')}` : '';
      say(`  ${backend.name} testpmd run ${r + 1}: ${(delivered / elapsed / 1000).toFixed(1)} kpps delivered (testpmd sent ${sent ?? '?'} in all${queues}), back-end CPU ${(cpu1 - cpu0).toFixed(2)} s`);
    } catch (err) {
      m.error = (err as Error).message.split('\n')[0];
      say(`  ${backend.name} testpmd run ${r + 1}: ${(err as Error).message}\n${started?.log().split('\n').slice(-10).join('\n') ?? ''}`);
    } finally {
      if (started) await started.stop();
      if (net) await destroyTestNetwork(net);
      fs.rmSync(workDir, { recursive: true, force: true });
      // DPDK's runtime directory for this --file-prefix.
      fs.rmSync(`/var/run/dpdk/${filePrefix}`, { recursive: true, force: true });
    }
  }
  if (backend.queues > 1) {
    m.detail = queueTotals.size > 0
      ? `testpmd TX per queue over all runs: ${[...queueTotals].sort((a, b) => a[0] - b[0]).map(([q, n]) => `q${q} ${n}`).join(', ')}`
      : 'testpmd printed no per-queue statistics';
  }
  return m;
}
