/**
 * iperf3 for the benchmarks: a persistent JSON-speaking server started in a
 * test namespace, and the receiver-side figures of one test read from the
 * JSON of whichever end received (the server for forward tests, the client
 * for -R), matched by iperf3's per-test cookie.
 */
import { type ChildProcess } from 'child_process';
import { runIn, spawnIn, stopChild } from '../../test/support/netns';

/** What the receiving end of one iperf3 test saw. */
export interface IperfReceived {
  bytes: number;
  seconds: number;
  /** UDP only: datagrams that arrived, and those the receiver counted as lost. */
  packets?: number;
  lostPackets?: number;
  lostPercent?: number;
  /** One-second intervals in which the receiver got nothing (a stalled transfer), when it reported intervals. */
  stalledSeconds?: number;
}

/** A summary section of iperf3's JSON ("sum", "sum_received"); the UDP fields only for UDP. */
interface UdpSum {
  bytes?: number;
  seconds?: number;
  packets?: number;
  lost_packets?: number;
  lost_percent?: number;
}

/** The parts of iperf3's JSON the benchmarks read (iperf3 3.12). */
interface IperfJson {
  start?: { cookie?: string; test_start?: { protocol?: string; reverse?: number } };
  end?: { sum?: UdpSum; sum_received?: UdpSum };
  intervals?: { sum?: { bytes?: number; omitted?: boolean } }[];
  error?: string;
}

/** Intervals of a receiver's JSON in which it got no bytes (omitted ones not counted); undefined without intervals. */
export function stalledIntervals(receiverDoc: IperfJson): number | undefined {
  const intervals = receiverDoc.intervals;
  if (!intervals || intervals.length === 0) return undefined;
  return intervals.filter((i) => i.sum && !i.sum.omitted && i.sum.bytes === 0).length;
}

/** Parses one iperf3 JSON document; throws with iperf3's own error text when it reports one. */
export function parseIperf(text: string): IperfJson {
  const doc = JSON.parse(text) as IperfJson;
  if (doc.error) throw new Error(`iperf3: ${doc.error}`);
  return doc;
}

/** The per-test cookie iperf3 prints in both ends' JSON. */
export function iperfCookie(doc: IperfJson): string {
  return doc.start?.cookie ?? '';
}

/**
 * Receiver-side figures from the JSON of the end that received: its
 * end.sum_received, for TCP and UDP alike (iperf3 3.12's end.sum mixes the
 * sender's byte count with the receiver's loss on a -R client, and has 0
 * bytes on a UDP server).
 */
export function receivedFigures(receiverDoc: IperfJson, udp: boolean): IperfReceived {
  const r = receiverDoc.end?.sum_received;
  if (!r || r.bytes === undefined || r.seconds === undefined) throw new Error('iperf3 JSON without end.sum_received');
  const stalled = stalledIntervals(receiverDoc);
  const out: IperfReceived = { bytes: r.bytes, seconds: r.seconds };
  if (stalled !== undefined) out.stalledSeconds = stalled;
  if (!udp) return out;
  return { ...out, packets: r.packets, lostPackets: r.lost_packets, lostPercent: r.lost_percent };
}

/** Splits concatenated pretty-printed JSON documents (each closes with "}" alone on a line). */
export function splitJsonDocuments(text: string): string[] {
  const docs: string[] = [];
  let start = 0;
  for (let at = text.indexOf('\n}', start); at >= 0; at = text.indexOf('\n}', start)) {
    docs.push(text.slice(start, at + 2).trim());
    start = at + 2;
  }
  return docs.filter((d) => d.startsWith('{'));
}

/** A persistent `iperf3 -s -J` in a namespace; its per-test JSON documents looked up by cookie. */
export class IperfServer {
  private output = '';
  private constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
  }

  /** Starts the server bound to `address`:`port` in `ns`; resolves once it listens (or rejects after 5 s). */
  static async start(ns: string, address: string, port: number): Promise<IperfServer> {
    const server = new IperfServer(spawnIn(ns, ['iperf3', '-s', '-J', '-B', address, '-p', String(port)]));
    // iperf3 -J prints nothing until a test ends: wait for the listening socket instead.
    const deadline = Date.now() + 5000;
    for (;;) {
      const ss = await runIn(ns, ['ss', '-Hltn', `sport = :${port}`]);
      if (ss.stdout.trim() !== '') return server;
      if (server.child.exitCode !== null || Date.now() > deadline) {
        await server.stop();
        throw new Error(`iperf3 server on ${address}:${port} did not start: ${server.output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** The server's JSON for the test with `cookie`, waiting up to `timeoutMs` for it to be printed. */
  async documentFor(cookie: string, timeoutMs = 5000): Promise<IperfJson> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const text of splitJsonDocuments(this.output)) {
        try {
          const doc = JSON.parse(text) as IperfJson;
          if (iperfCookie(doc) === cookie) return parseIperf(text);
        } catch (err) {
          if (/^iperf3:/.test((err as Error).message)) throw err;
        }
      }
      if (Date.now() > deadline) throw new Error(`iperf3 server printed no result for test ${cookie}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops the server by its PID. */
  async stop(): Promise<void> {
    await stopChild(this.child, 1000);
  }
}
