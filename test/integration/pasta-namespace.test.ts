/**
 * `ferry pasta` for real, inside a test network (test/support/netns.ts):
 * ferry runs in the test namespace (uplink0 with 192.0.2.1/24 and
 * 2001:db8::1/64, gateways .254 and ::fe), creates a nested user+network
 * namespace with a tap named after uplink0, and runs a command there.
 * Checked: the netlink configuration (--config-net), the exit status, -I,
 * DHCP from the stack without --config-net, ICMP echo from the namespace to
 * the server in the test network, and joining an existing namespace
 * (--netns) served until SIGTERM.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  canCreateNamespaces,
  type CommandResult,
  createTestNetwork,
  destroyTestNetwork,
  run,
  runChecked,
  runIn,
  spawnIn,
  stopChild,
  type TestNetwork,
  TEST_NET,
} from '../support/netns';
import { REPO_ROOT } from '../support/guest';
import { destinationMac, etherType, readPcapFile, sourceMac } from '../support/pcap-reader';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
const TEST_DNS_V4 = '192.0.2.53';

/** `ferry pasta ARGS` in the test namespace, to completion. */
function pasta(net: TestNetwork, args: string[], timeoutMs = 20000): Promise<CommandResult> {
  return runIn(net.ns, [process.execPath, FERRY_BIN, 'pasta', '--dns', TEST_DNS_V4, ...args], { timeoutMs });
}

function describeResult(r: CommandResult): string {
  return `exit ${r.code ?? r.signal}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

describe('integration: ferry pasta in a test namespace', function () {
  this.timeout(60000);
  let net: TestNetwork | null = null;

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    if ((await run(['unshare', '--user', '--map-root-user', '--net', 'true'])).code !== 0) this.skip();
    net = await createTestNetwork();
  });

  after(async function () {
    if (net) await destroyTestNetwork(net);
    net = null;
  });

  it('--config-net: the tap carries the host\'s addresses, default routes and MTU; loopback is up', async function () {
    const r = await pasta(net as TestNetwork, ['--config-net', '--', 'sh', '-c', 'ip -o addr show; ip route show; ip -6 route show; ip -o link show']);
    expect(r.code, describeResult(r)).to.equal(0);
    const tap = TEST_NET.uplinkName;
    expect(r.stdout).to.match(new RegExp(`\\d+: ${tap}\\s+inet ${TEST_NET.hostV4}/${TEST_NET.prefixV4} `));
    expect(r.stdout).to.match(new RegExp(`\\d+: ${tap}\\s+inet6 ${TEST_NET.hostV6}/${TEST_NET.prefixV6} `));
    expect(r.stdout).to.match(new RegExp(`default via ${TEST_NET.routerV4} dev ${tap}`));
    expect(r.stdout).to.match(new RegExp(`default via ${TEST_NET.routerV6} dev ${tap}`));
    expect(r.stdout).to.match(new RegExp(`\\d+: ${tap}: <[^>]*\\bUP\\b[^>]*> mtu 65520 `));
    expect(r.stdout).to.match(/\d+: lo: <[^>]*\bUP\b/);
  });

  it('exits with the command\'s status (128 + N for a signal)', async function () {
    const seven = await pasta(net as TestNetwork, ['--', 'sh', '-c', 'exit 7']);
    expect(seven.code, describeResult(seven)).to.equal(7);
    const killed = await pasta(net as TestNetwork, ['--', 'sh', '-c', 'kill -TERM $$']);
    expect(killed.code, describeResult(killed)).to.equal(143);
    const ok = await pasta(net as TestNetwork, ['true']);
    expect(ok.code, describeResult(ok)).to.equal(0);
  });

  it('SIGTERM to ferry reaches the command, whose exit status ferry returns', async function () {
    const ferry = spawnIn((net as TestNetwork).ns, [process.execPath, FERRY_BIN, 'pasta', '-q', '--', 'sh', '-c', "trap 'echo got-term; kill $!; exit 3' TERM; echo ready; sleep 20 & wait"]);
    let out = '';
    ferry.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((resolve) => ferry.on('close', (code) => resolve(code)));
    for (let i = 0; i < 100 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).to.include('ready');
    await stopChild(ferry, 5000);
    expect(await exited, out).to.equal(3);
    expect(out).to.include('got-term');
  });

  it('-I names the tap; without --config-net it is up with no address', async function () {
    const r = await pasta(net as TestNetwork, ['-I', 'eth7', '--', 'sh', '-c', 'ip -o link show eth7; ip -o -4 addr show dev eth7; echo end']);
    expect(r.code, describeResult(r)).to.equal(0);
    expect(r.stdout).to.match(/\d+: eth7: <[^>]*\bUP\b/);
    expect(r.stdout).to.not.match(/inet /);
  });

  it('without --config-net, a DHCP client in the namespace is leased the host\'s address by the stack', async function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-dhcp-'));
    try {
      const script = path.join(dir, 'udhcpc.script');
      fs.writeFileSync(script, '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu"\nexit 0\n', { mode: 0o755 });
      // --runas 0: udhcpc runs its script from the test's root-only scratch directory (as root, pasta would otherwise make it nobody's).
      const r = await pasta(net as TestNetwork, ['--runas', '0', '--', 'busybox', 'udhcpc', '-i', TEST_NET.uplinkName, '-f', '-q', '-n', '-t', '4', '-T', '1', '-s', script]);
      expect(r.code, describeResult(r)).to.equal(0);
      expect(r.stdout, describeResult(r)).to.include(`LEASE ip=${TEST_NET.hostV4} mask=${TEST_NET.prefixV4} router=${TEST_NET.routerV4} dns=${TEST_DNS_V4} mtu=65520`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('ping from the namespace reaches the server in the test network over IPv4 and IPv6 (ICMP echo through ferry); --pcap records the tap\'s frames', async function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pasta-pcap-'));
    try {
      const pcapPath = path.join(dir, 'tap.pcap');
      const script = `busybox ping -c 3 -W 2 -w 8 ${TEST_NET.serverV4}; echo rc4=$?; busybox ping -6 -c 3 -W 2 -w 8 ${TEST_NET.serverV6}; echo rc6=$?`;
      const r = await pasta(net as TestNetwork, ['--config-net', '--pcap', pcapPath, '--', 'sh', '-c', script], 30000);
      expect(r.code, describeResult(r)).to.equal(0);
      expect(r.stdout, describeResult(r)).to.include('rc4=0');
      expect(r.stdout, describeResult(r)).to.include('rc6=0');
      expect(r.stdout.match(/3 packets transmitted, 3 packets received/g), describeResult(r)).to.have.length(2);
      const frames = readPcapFile(pcapPath).frames.map((f) => f.data);
      const ferryMac = '9a:55:9a:55:9a:55';
      // ICMP echo requests from the namespace and replies from ferry, both families.
      const icmp4 = (f: Uint8Array, type: number): boolean => etherType(f) === 0x0800 && f[23] === 1 && f[34] === type;
      const icmp6 = (f: Uint8Array, type: number): boolean => etherType(f) === 0x86dd && f[20] === 58 && f[54] === type;
      expect(frames.filter((f) => icmp4(f, 8) && destinationMac(f) === ferryMac)).to.have.length(3);
      expect(frames.filter((f) => icmp4(f, 0) && sourceMac(f) === ferryMac)).to.have.length(3);
      expect(frames.filter((f) => icmp6(f, 128))).to.have.length(3);
      expect(frames.filter((f) => icmp6(f, 129) && sourceMac(f) === ferryMac)).to.have.length(3);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('without --config-net, the namespace\'s kernel takes ferry\'s router advertisement (SLAAC address, default route via ferry)', async function () {
    // Bounded: the kernel solicits at link up and ferry answers at once; allow a few seconds.
    const script = `for i in 1 2 3 4 5 6 7 8 9 10; do ip -6 route show default | grep -q 'via fe80::' && break; sleep 0.5; done; ip -6 -o addr show dev ${TEST_NET.uplinkName} scope global; ip -6 route show default`;
    const r = await pasta(net as TestNetwork, ['--', 'sh', '-c', script], 30000);
    expect(r.code, describeResult(r)).to.equal(0);
    expect(r.stdout, describeResult(r)).to.match(/inet6 2001:db8::[0-9a-f:]+\/64 scope global/);
    expect(r.stdout, describeResult(r)).to.match(new RegExp(`default via fe80::[0-9a-f:]+ dev ${TEST_NET.uplinkName} proto ra`));
  });

  it('--netns joins an existing namespace and serves its tap until SIGTERM', async function () {
    const target = `ferry-pasta-join-${process.pid}`;
    await runChecked(['ip', 'netns', 'add', target]);
    const ferry = spawnIn((net as TestNetwork).ns, [process.execPath, FERRY_BIN, 'pasta', '--dns', TEST_DNS_V4, '--config-net', '-I', 'tapj0', '--netns', target]);
    let log = '';
    ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
    const exited = new Promise<number | null>((resolve) => ferry.on('close', (code) => resolve(code)));
    try {
      // Bounded wait for ferry to configure the tap in the target.
      let addresses = '';
      for (let i = 0; i < 100 && !addresses.includes(`inet ${TEST_NET.hostV4}/`); i++) {
        await new Promise((r) => setTimeout(r, 100));
        addresses = (await run(['ip', '-n', target, '-o', 'addr', 'show', 'dev', 'tapj0'])).stdout;
      }
      expect(addresses, log).to.include(`inet ${TEST_NET.hostV4}/${TEST_NET.prefixV4}`);
      const ping = await run(['ip', 'netns', 'exec', target, 'busybox', 'ping', '-c', '2', '-W', '2', '-w', '6', TEST_NET.serverV4], { timeoutMs: 10000 });
      expect(ping.code, `${describeResult(ping)}\n--- ferry ---\n${log}`).to.equal(0);
      await stopChild(ferry, 3000);
      expect(await exited, log).to.equal(0);
    } finally {
      await stopChild(ferry, 1000);
      await run(['ip', 'netns', 'del', target]);
    }
  });

  it('a bare PID joins that process\'s user and network namespaces; ferry exits when the process does', async function () {
    const n = net as TestNetwork;
    const holder = spawnIn(n.ns, ['unshare', '--user', '--map-root-user', '--net', 'sleep', '30']);
    const pid = holder.pid as number;
    try {
      // `ip netns exec` execs unshare in place: its PID is the namespace holder's; wait until it has unshared.
      for (let i = 0; i < 100 && fs.readlinkSync(`/proc/${pid}/ns/user`) === fs.readlinkSync('/proc/self/ns/user'); i++) await new Promise((r) => setTimeout(r, 20));
      const ferry = spawnIn(n.ns, [process.execPath, FERRY_BIN, 'pasta', '--dns', TEST_DNS_V4, '--config-net', '-I', 'eth0', String(pid)]);
      let log = '';
      ferry.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
      const exited = new Promise<number | null>((resolve) => ferry.on('close', (code) => resolve(code)));
      let addresses = '';
      for (let i = 0; i < 100 && !addresses.includes(`inet ${TEST_NET.hostV4}/`); i++) {
        await new Promise((r) => setTimeout(r, 100));
        addresses = (await run(['nsenter', '-t', String(pid), '-U', '-n', '--', 'ip', '-o', 'addr', 'show', 'dev', 'eth0'])).stdout;
      }
      expect(addresses, log).to.include(`inet ${TEST_NET.hostV4}/${TEST_NET.prefixV4}`);
      const ping = await run(['nsenter', '-t', String(pid), '-U', '-n', '--', 'busybox', 'ping', '-c', '1', '-W', '2', TEST_NET.serverV4], { timeoutMs: 10000 });
      expect(ping.code, `${describeResult(ping)}\n--- ferry ---\n${log}`).to.equal(0);
      await stopChild(holder, 1000);
      // Bounded: ferry checks the process once a second.
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 5000))]);
      expect(code, log).to.equal(0);
    } finally {
      await stopChild(holder, 1000);
    }
  });

  it('a namespace that cannot be joined fails with status 125 and one error line', async function () {
    const r = await pasta(net as TestNetwork, ['--netns', '/nonexistent/ns', '--', 'true']);
    expect(r.code, describeResult(r)).to.equal(125);
    expect(r.stderr).to.match(/cannot set up/);
  });
});
