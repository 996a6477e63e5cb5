/**
 * Optional: DPDK's testpmd as a vhost-user front-end, sending
 * 64-byte UDP datagrams (guest->host) through ferry into a sink, at a rate
 * no TCG guest can reach. testpmd's virtio-user port connects to ferry's
 * socket in the test namespace, addressed as the guest would be (the host's
 * own 192.0.2.1, source port 40000) to 192.0.2.2 port 9 in the peer
 * namespace, where nothing listens: the datagrams delivered are counted on
 * the peer's veth (RX packets), ferry's CPU per delivered datagram from
 * /proc. Debian 12's passt has no vhost-user, so ferry has no peer here.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, run, spawnIn, stopChild, type TestNetwork, TEST_NET } from '../test/support/netns';
import { commandAvailable } from '../test/support/guest';
import { FERRY_CLI_MODULE, startFerry } from '../test/e2e/ferry-process';
import { processCpuSeconds } from './cpu';
import { type Measurement } from './figures';

/** testpmd's binary name in Debian's `dpdk` package. */
export const TESTPMD = 'dpdk-testpmd';
/** ferry's default MAC (-M): testpmd's frames are addressed to it. */
const FERRY_MAC = '9a:55:9a:55:9a:55';
/** 64 bytes of UDP payload: 14 + 20 + 8 + 64. */
const FRAME_LENGTH = 106;

/** Why the testpmd benchmark cannot run here (null if it can). */
export function testpmdMissing(): string | null {
  if (!commandAvailable(TESTPMD)) {
    return `${TESTPMD} is not installed (apt-get install --no-install-recommends dpdk librte-net-virtio23 librte-mempool-ring23)`;
  }
  if (!fs.existsSync(FERRY_CLI_MODULE)) return `ferry is not built (${FERRY_CLI_MODULE})`;
  return null;
}

async function rxPackets(ns: string, dev: string): Promise<number> {
  const r = await run(['ip', '-n', ns, '-s', '-j', 'link', 'show', 'dev', dev]);
  const doc = JSON.parse(r.stdout) as { stats64?: { rx?: { packets?: number } } }[];
  return doc[0]?.stats64?.rx?.packets ?? NaN;
}

/** Runs testpmd txonly into ferry for `seconds`, `runs` times (one ferry, one testpmd per run). */
export async function runTestpmd(seconds: number, runs: number, say: (line: string) => void): Promise<Measurement> {
  const m: Measurement = { section: 'vm', test: 'testpmd 64 B guest->host (vhost-user only)', kind: 'pps', backend: 'ferry', runs: [] };
  for (let r = 0; r < runs; r++) {
    let net: TestNetwork | null = null;
    const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-pmd-'));
    let ferry: Awaited<ReturnType<typeof startFerry>> | null = null;
    const filePrefix = `ferry-bench-${process.pid}`;
    try {
      net = await createTestNetwork();
      const socketPath = path.join(workDir, 'ferry.sock');
      // lcore 0 waits on stdin, lcore 1 sends (testpmd needs a forwarding core besides the main one).
      ferry = await startFerry(net.ns, socketPath, ['-q']);
      // stdbuf: testpmd's stdout is a pipe here, fully buffered without it.
      const pmd = spawnIn(net.ns, [
        'stdbuf', '-oL', TESTPMD, '--no-pci', '--no-huge', '-m', '512', '-l', '0,1', '--file-prefix', filePrefix,
        `--vdev=net_virtio_user0,path=${socketPath},queues=1,mac=52:54:00:12:34:56`,
        '--', '--forward-mode=txonly', `--tx-ip=${TEST_NET.hostV4},${TEST_NET.serverV4}`, '--tx-udp=40000,9',
        `--txpkts=${FRAME_LENGTH}`, `--eth-peer=0,${FERRY_MAC}`, '--total-num-mbufs=16384', '--nb-cores=1',
      ]);
      let out = '';
      pmd.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
      pmd.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
      const started = Date.now();
      while (!/Press enter to exit/.test(out)) {
        if (pmd.exitCode !== null || Date.now() - started > 30000) throw new Error(`testpmd did not start forwarding:\n${out.split('\n').slice(-15).join('\n')}`);
        await new Promise((res) => setTimeout(res, 100));
      }
      // A second to settle (the guest MAC learnt, the flow's socket open).
      await new Promise((res) => setTimeout(res, 1000));
      const pid = ferry.child.pid ?? 0;
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
      const sent = /TX-packets:\s*(\d+)/.exec(out.slice(out.lastIndexOf('Accumulated forward statistics')))?.[1];
      const delivered = rx1 - rx0;
      m.runs.push({ bytes: delivered * 64, seconds: elapsed, cpuSeconds: cpu1 - cpu0, packets: delivered, lostPackets: 0 });
      say(`  ferry testpmd run ${r + 1}: ${(delivered / elapsed / 1000).toFixed(1)} kpps delivered (testpmd sent ${sent ?? '?'} in all), ferry CPU ${(cpu1 - cpu0).toFixed(2)} s`);
    } catch (err) {
      m.error = (err as Error).message.split('\n')[0];
      say(`  ferry testpmd run ${r + 1}: ${(err as Error).message}\n${ferry?.log().split('\n').slice(-10).join('\n') ?? ''}`);
    } finally {
      if (ferry) await ferry.stop();
      if (net) await destroyTestNetwork(net);
      fs.rmSync(workDir, { recursive: true, force: true });
      // DPDK's runtime directory for this --file-prefix.
      fs.rmSync(`/var/run/dpdk/${filePrefix}`, { recursive: true, force: true });
    }
  }
  return m;
}
