/**
 * QEMU with `reconnect=1` on its vhost-user chardev gets a working device
 * again after ferry dies and a new ferry starts on the same socket path:
 * ferry is SIGKILLed while the guest runs pings at 50 per second
 * (its socket file is left behind, as after a crash), the guest sees its
 * carrier drop, a new ferry process removes the stale socket and listens,
 * QEMU reconnects by itself, the carrier comes back and the guest takes a second DHCP lease and pings
 * over IPv4 and IPv6 through the new ferry. Then the guest reloads its
 * virtio-net driver (a device reset on the same connection: rings stopped
 * and set up again) and takes a third lease and pings. Last, ferry is
 * stopped with SIGTERM while the guest is still connected: it exits
 * promptly and cleanly.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, killPid, type TestNetwork, TEST_NET } from '../../support/netns';
import { bootGuest, type Guest, pingScript, requireGuestPrerequisites } from '../../support/guest';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from '../../support/e2e/ferry-process';

const TARGETS = [TEST_NET.serverV4, TEST_NET.serverV6];
/** A test resolver, so the guest is never told about the machine's real one. */
const FERRY_ARGS = ['--dns', '192.0.2.53'];

/** Guest side: one ping, wait for the carrier to go and come back (bounded), DHCP again, ping again. */
const TEST_SCRIPT = `
say() { echo "FERRY-GUEST: $*"; }
carrier() { cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0; }
if ping -4 -c 1 -W 3 ${TEST_NET.serverV4} >/dev/null 2>&1; then say "first ping ok"; else say "first ping failed"; fi
# Traffic in flight while ferry dies: rings hold buffers ferry never
# completed, which QEMU must hand to the next back-end in a usable state.
ping -4 -i 0.02 -s 20000 -w 4 ${TEST_NET.serverV4} >/dev/null 2>&1 &
ping -6 -i 0.02 -s 1000 -w 4 ${TEST_NET.serverV6} >/dev/null 2>&1 &
sleep 1
say "ready for restart"
i=0
while [ "$(carrier)" = 1 ] && [ "$i" -lt 300 ]; do usleep 100000; i=$((i + 1)); done
say "carrier lost $(carrier)"
i=0
while [ "$(carrier)" != 1 ] && [ "$i" -lt 300 ]; do usleep 100000; i=$((i + 1)); done
say "carrier back $(carrier)"
udhcpc -i eth0 -s /etc/udhcpc.script -f -q -n -t 5 -T 1 -A 1 -O mtu -O search 2>/tmp/udhcpc2.log || say "second dhcp failed: $(tail -n 1 /tmp/udhcpc2.log)"
${pingScript(TARGETS)}
# A device reset on the same connection: unloading the driver resets the
# device (QEMU stops the rings with GET_VRING_BASE), loading it again sets
# them up afresh.
rmmod virtio_net && insmod /lib/modules/virtio_net.ko || say "driver reload failed"
i=0
while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 50 ]; do usleep 100000; i=$((i + 1)); done
ip link set eth0 up
i=0
while [ "$(carrier)" != 1 ] && [ "$i" -lt 50 ]; do usleep 100000; i=$((i + 1)); done
udhcpc -i eth0 -s /etc/udhcpc.script -f -q -n -t 3 -T 1 -A 1 2>/tmp/udhcpc3.log || say "third dhcp failed: $(tail -n 1 /tmp/udhcpc3.log)"
${pingScript([TEST_NET.serverV4]).replace(/FERRY-GUEST: ping /g, 'FERRY-GUEST: ping after reset ')}
# Finally ferry is stopped with SIGTERM while this guest is connected.
say "ready for stop"
i=0
while [ "$(carrier)" = 1 ] && [ "$i" -lt 100 ]; do usleep 100000; i=$((i + 1)); done
say "carrier after stop $(carrier)"
`;

describe('e2e: QEMU reconnects to a restarted ferry (reconnect=1)', function () {
  this.timeout(150000);

  let net: TestNetwork | null = null;
  let firstFerry: FerryProcess | null = null;
  let secondFerry: FerryProcess | null = null;
  let guest: Guest | null = null;
  let workDir = '';
  let exitCode: number | null = null;
  let bootError: Error | null = null;
  let staleSocketLeft = false;
  let restartError: Error | null = null;
  let stopExit: number | null | 'hung' | undefined;
  let stopMs = -1;
  let socketLeftAfterStop = true;

  before(async function () {
    requireGuestPrerequisites(this, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-'));
    const socketPath = path.join(workDir, 'ferry.sock');
    firstFerry = await startFerry(net.ns, socketPath, FERRY_ARGS);
    guest = bootGuest({
      net,
      nic: { kind: 'vhost-user', socketPath, reconnectSeconds: 1 },
      testScript: TEST_SCRIPT,
      append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=5', 'ferry.test_timeout=90'],
      timeoutMs: 120000,
    });
    try {
      await guest.waitForMarker('ready for restart', 60000);
      // A crash, not a shutdown: no chance to remove the socket file.
      killPid(firstFerry.child.pid, 'SIGKILL');
      await firstFerry.exited;
      staleSocketLeft = fs.existsSync(socketPath);
      secondFerry = await startFerry(net.ns, socketPath, FERRY_ARGS);
      await secondFerry.waitForLog(/listening for vhost-user front-ends/, 10000);
    } catch (err) {
      restartError = err as Error;
    }
    try {
      if (restartError === null && secondFerry !== null) {
        await guest.waitForMarker('ready for stop', 90000);
        const stopStart = Date.now();
        killPid(secondFerry.child.pid, 'SIGTERM');
        stopExit = await Promise.race([secondFerry.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 5000))]);
        stopMs = Date.now() - stopStart;
        socketLeftAfterStop = fs.existsSync(socketPath);
      }
      exitCode = await guest.waitDone(90000);
    } catch (err) {
      bootError = err as Error;
    }
  });

  after(async function () {
    if (guest) await guest.destroy();
    if (firstFerry) await firstFerry.stop();
    if (secondFerry) await secondFerry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    guest = null;
    firstFerry = null;
    secondFerry = null;
    net = null;
  });

  function diagnostics(): string {
    const tail = (f: FerryProcess | null): string => f?.log().split('\n').slice(-20).join('\n') ?? '(not started)';
    return `${guest?.vm.diagnostics(60) ?? ''}\n--- first ferry log ---\n${tail(firstFerry)}\n--- second ferry log ---\n${tail(secondFerry)}`;
  }

  it('the guest works on the first ferry', function () {
    expect(restartError, `${restartError?.message}\n${diagnostics()}`).to.equal(null);
    expect(guest?.lease()?.address, diagnostics()).to.equal(TEST_NET.hostV4);
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(/FERRY-GUEST: first ping ok/);
  });

  it('the killed ferry leaves its socket file behind, and the second ferry listens on that path anyway', function () {
    expect(staleSocketLeft, diagnostics()).to.equal(true);
    expect(secondFerry?.log() ?? '', diagnostics()).to.match(/listening for vhost-user front-ends/);
  });

  it('the guest sees its carrier drop when ferry dies and come back after QEMU reconnects', function () {
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(/FERRY-GUEST: carrier lost 0\r?\n/);
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(/FERRY-GUEST: carrier back 1\r?\n/);
    expect(secondFerry?.log() ?? '', diagnostics()).to.match(/front-end \S+ connected/);
  });

  it('the guest takes a second DHCP lease from the new ferry', function () {
    const leases = [...(guest?.vm.serialLines ?? '').matchAll(/FERRY-GUEST: lease (\S+)\//g)].map((m) => m[1]);
    expect(leases.slice(0, 2), diagnostics()).to.deep.equal([TEST_NET.hostV4, TEST_NET.hostV4]);
  });

  for (const target of TARGETS) {
    it(`after the restart, ping -c3 ${target} gets 3 replies`, function () {
      expect(guest?.pings().get(target), diagnostics()).to.deep.equal({ transmitted: 3, received: 3, exitCode: 0 });
    });
  }

  it('after a device reset (driver reloaded) on the same connection, the guest gets a third lease and pings', function () {
    const leases = [...(guest?.vm.serialLines ?? '').matchAll(/FERRY-GUEST: lease (\S+)\//g)].map((m) => m[1]);
    expect(leases.length, diagnostics()).to.equal(3);
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(
      new RegExp(`FERRY-GUEST: ping after reset ${TEST_NET.serverV4.replace(/\./g, '\\.')} transmitted 3 received 3 rc 0\r?\n`),
    );
    // No reconnection needed: the front-end stayed connected until ferry was stopped.
    const beforeStop = (secondFerry?.log() ?? '').split('stopping:')[0];
    expect(beforeStop, diagnostics()).to.not.match(/disconnected/);
  });

  it('SIGTERM with the guest connected: ferry exits 0 within 3 s, removes its socket, the guest loses its carrier', function () {
    expect(stopExit, diagnostics()).to.equal(0);
    expect(stopMs, diagnostics()).to.be.below(3000);
    expect(socketLeftAfterStop, diagnostics()).to.equal(false);
    expect(guest?.vm.serialLines ?? '', diagnostics()).to.match(/FERRY-GUEST: carrier after stop 0\r?\n/);
  });

  it('the guest finishes its checks and powers off', function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(exitCode, diagnostics()).to.equal(0);
  });
});
