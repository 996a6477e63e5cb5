/**
 * What the integration tests that drive a real ferry daemon share: waiting
 * (bounded), the guest's first frame (an ARP request for the gateway), and
 * reading the daemon's metrics from its UNIX --metrics socket.
 */
import * as http from 'http';
import { TEST_NET } from '../netns';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `condition` every 20 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** An ARP request from the guest (MAC `guestMac`, by default the host's address) for the gateway. */
export function arpRequestForGateway(guestMac: Uint8Array, guestV4: string = TEST_NET.hostV4): Uint8Array {
  const ip = (text: string): number[] => text.split('.').map(Number);
  const frame = new Uint8Array(42);
  frame.fill(0xff, 0, 6);
  frame.set(guestMac, 6);
  frame.set([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01], 12);
  frame.set(guestMac, 22);
  frame.set(ip(guestV4), 28);
  frame.set(ip(TEST_NET.routerV4), 38);
  return frame;
}

/** Text of GET /metrics from the daemon's UNIX metrics socket (no keep-alive connection left open to blur its fd count). */
export function scrape(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = http.get({ socketPath, path: '/metrics', timeout: 3000, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body));
    });
    request.on('timeout', () => request.destroy(new Error('metrics timeout')));
    request.on('error', reject);
  });
}

/** Sum of a metric's samples whose labels include all of `labels`. */
export function metricSum(text: string, name: string, labels: Record<string, string>): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
