/**
 * ferry installed under passt's names, run as its callers run passt/pasta:
 *
 * - podman 5 (containers/common libnetwork/pasta createPastaArgs): `pasta
 *   --config-net -t H-H:C-C --dns-forward 169.254.1.1 -u none -T none -U
 *   none --no-map-gw --quiet --netns PATH --map-guest-addr 169.254.1.2`,
 *   waiting like exec.Command(...).CombinedOutput() (for the exit and for
 *   the stdout/stderr pipe to close); then traffic in the container's
 *   namespace (the host via --map-guest-addr, DNS via --dns-forward, a
 *   published port), and cleanup by deleting the namespace, after which
 *   pasta exits on its own.
 * - libvirt 11 (src/qemu/qemu_passt.c qemuPasstBuildCommand): `passt
 *   [--vhost-user] --one-off --socket PATH --pid FILE --interface IF
 *   --tcp-ports PORT`, waiting for the exit, then reading the PID file;
 *   then a QEMU guest over `-netdev stream` (or vhost-user) gets its lease
 *   and pings the test network; --one-off ends passt with the guest.
 *
 * ferry runs as a symlink named pasta/passt to bin/ferry.js. The machine's
 * resolvers are never used: the test namespace gets its own resolv.conf
 * (/etc/netns/NS/resolv.conf, which `ip netns exec` mounts) naming a DNS
 * echo server in the test network.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, killPid, run, runChecked, type TestNetwork, TEST_NET } from '../support/netns';
import { bootGuest, type Guest, pingScript, REPO_ROOT, requireGuestPrerequisites } from '../support/guest';
import { FERRY_BIN } from './ferry-process';
import { ECHO_TOOL_SOURCE, exchange, sleep, waitUntil } from './dropin-tools';

const DNS_SERVER_V4 = '192.0.2.53';

/** PIDs of processes whose command line contains `needle` (the background copy ferry started for us). */
function pidsWithArgument(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').includes(needle)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
}

describe('e2e: ferry under passt\'s names, as podman and libvirt run it', function () {
  this.timeout(180000);
  let net: TestNetwork | null = null;
  let dir = '';
  let tool = '';
  let netnsEtc = '';
  const started: number[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-callers-'));
    for (const name of ['pasta', 'passt']) fs.symlinkSync(FERRY_BIN, path.join(dir, name));
    tool = path.join(dir, 'echo-tool.js');
    fs.writeFileSync(tool, ECHO_TOOL_SOURCE);
    netnsEtc = `/etc/netns/${net.ns}`;
    fs.mkdirSync(netnsEtc, { recursive: true });
    fs.writeFileSync(path.join(netnsEtc, 'resolv.conf'), `nameserver ${DNS_SERVER_V4}\n`);
    await runChecked(['ip', '-n', net.peerNs, 'addr', 'add', `${DNS_SERVER_V4}/${TEST_NET.prefixV4}`, 'dev', TEST_NET.peerLinkName]);
  });

  after(async () => {
    for (const pid of started) killPid(pid, 'SIGKILL');
    if (net !== null) await destroyTestNetwork(net);
    if (netnsEtc !== '') fs.rmSync(netnsEtc, { recursive: true, force: true });
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('podman 5: pasta --config-net ... --netns PATH', () => {
    let container = '';
    let pastaPid = 0;

    after(async () => {
      if (container !== '') await run(['ip', 'netns', 'del', container]);
    });

    it('returns 0 once the namespace is served, with stdout and stderr closed (CombinedOutput)', async function () {
      const n = net as TestNetwork;
      container = `${n.ns}-ctr`;
      await runChecked(['ip', 'netns', 'add', container]);
      const args = ['--config-net', '-t', '10004-10004:10004-10004', '--dns-forward', '169.254.1.1', '-u', 'none', '-T', 'none', '-U', 'none', '--no-map-gw', '--quiet', '--netns', `/run/netns/${container}`, '--map-guest-addr', '169.254.1.2'];
      const startedAt = Date.now();
      const result = await run(['ip', 'netns', 'exec', n.ns, path.join(dir, 'pasta'), ...args], { timeoutMs: 30000 });
      const pids = pidsWithArgument(`/run/netns/${container}`);
      started.push(...pids);
      expect(result.code, `${result.stdout}${result.stderr}`).to.equal(0);
      expect(Date.now() - startedAt).to.be.lessThan(30000);
      expect(pids, 'one background pasta').to.have.length(1);
      pastaPid = pids[0];
      expect(alive(pastaPid)).to.equal(true);
      // --config-net: the host's address and routes are in place before the caller goes on.
      const addresses = (await run(['ip', '-n', container, '-o', 'addr', 'show', 'dev', TEST_NET.uplinkName])).stdout;
      expect(addresses).to.include(`inet ${TEST_NET.hostV4}/${TEST_NET.prefixV4}`);
    });

    it('the container reaches the host through --map-guest-addr 169.254.1.2', async function () {
      if (pastaPid === 0) this.skip();
      const n = net as TestNetwork;
      const r = await exchange(tool, 'tcp', { side: { kind: 'host', ns: n.ns }, bind: '0.0.0.0', port: 10006 }, { side: { kind: 'host', ns: container }, target: '169.254.1.2' }, 'to-host');
      expect(r.reply, r.details).to.equal('echo:to-host');
    });

    it('DNS to --dns-forward 169.254.1.1 reaches the host\'s resolver', async function () {
      if (pastaPid === 0) this.skip();
      const n = net as TestNetwork;
      const r = await exchange(tool, 'udp', { side: { kind: 'host', ns: n.peerNs }, bind: DNS_SERVER_V4, port: 53 }, { side: { kind: 'host', ns: container }, target: '169.254.1.1' }, 'query');
      expect(r.reply, r.details).to.equal('echo:query');
      expect(r.peer, r.details).to.equal(TEST_NET.hostV4);
    });

    it('the published port (-t 10004-10004:10004-10004) reaches the container', async function () {
      if (pastaPid === 0) this.skip();
      const n = net as TestNetwork;
      const r = await exchange(tool, 'tcp', { side: { kind: 'host', ns: container }, bind: '0.0.0.0', port: 10004 }, { side: { kind: 'host', ns: n.ns }, target: '127.0.0.1' }, 'published');
      expect(r.reply, r.details).to.equal('echo:published');
    });

    it('deleting the namespace (podman\'s cleanup) ends pasta', async function () {
      if (pastaPid === 0) this.skip();
      await runChecked(['ip', 'netns', 'del', container]);
      container = '';
      expect(await waitUntil(() => !alive(pastaPid), 10000), 'pasta still running 10 s after the namespace was deleted').to.equal(true);
    });
  });

  /**
   * libvirt 11's qemuPasstBuildCommand: [--vhost-user] --one-off --socket PATH
   * --pid FILE [--interface IF] [--tcp-ports SPEC]; qemuSecurityCommandRun
   * waits for the exit, then libvirt reads the PID file (cgroup placement).
   */
  for (const mode of ['socket', 'vhost-user'] as const) {
    describe(`libvirt 11, passt for ${mode === 'socket' ? '-netdev stream' : '-netdev vhost-user'}`, () => {
      let passtPid = 0;
      let socketPath = '';
      let pidFile = '';
      let guest: Guest | null = null;

      before(function () {
        requireGuestPrerequisites(this);
      });

      after(async () => {
        if (guest !== null) await guest.destroy();
      });

      it('returns 0 once the socket listens; --pid names the background passt', async function () {
        const n = net as TestNetwork;
        socketPath = path.join(dir, `vm1-net0-${mode}.socket`);
        pidFile = path.join(dir, `vm1-net0-${mode}-passt.pid`);
        // libvirt adds --hostname/--fqdn when the domain's <backend> names them.
        const names = mode === 'socket' ? ['--hostname', 'vm1', '--fqdn', 'vm1.example.org'] : [];
        const args = [...(mode === 'vhost-user' ? ['--vhost-user'] : []), '--one-off', '--socket', socketPath, '--pid', pidFile, '--interface', TEST_NET.uplinkName, ...names, '--tcp-ports', '10007'];
        const result = await run(['ip', 'netns', 'exec', n.ns, path.join(dir, 'passt'), ...args], { timeoutMs: 30000 });
        const pids = pidsWithArgument(socketPath);
        started.push(...pids);
        expect(result.code, `${result.stdout}${result.stderr}`).to.equal(0);
        expect(fs.existsSync(socketPath)).to.equal(true);
        expect(pids, 'one background passt').to.have.length(1);
        passtPid = pids[0];
        expect(Number(fs.readFileSync(pidFile, 'utf8').trim())).to.equal(passtPid);
      });

      it("a QEMU guest is leased the host's address and pings the test network; --one-off ends passt with it", async function () {
        if (passtPid === 0) this.skip();
        const n = net as TestNetwork;
        guest = bootGuest({
          net: n,
          nic: mode === 'socket' ? { kind: 'stream', socketPath, server: false } : { kind: 'vhost-user', socketPath },
          append: ['ferry.dhcp_tries=3', 'ferry.ipv6_wait=0'],
          testScript: pingScript([TEST_NET.serverV4]),
          timeoutMs: 120000,
        });
        const code = await guest.waitDone(110000);
        const lease = guest.lease();
        const ping = guest.pings().get(TEST_NET.serverV4);
        const diagnostics = guest.vm.diagnostics();
        expect(code, diagnostics).to.equal(0);
        expect(lease?.address, diagnostics).to.equal(TEST_NET.hostV4);
        expect(lease?.routers, diagnostics).to.deep.equal([TEST_NET.routerV4]);
        expect(ping?.received, diagnostics).to.equal(ping?.transmitted);
        await guest.vm.exited;
        expect(await waitUntil(() => !alive(passtPid), 10000), 'passt still running 10 s after its one front-end left').to.equal(true);
        await sleep(100);
        expect(fs.existsSync(pidFile), 'PID file removed').to.equal(false);
      });
    });
  }

  describe('afterwards', () => {
    it('every background process this test made has ended by itself', function () {
      if (started.length === 0) this.skip();
      for (const pid of started) expect(alive(pid), `pid ${pid}`).to.equal(false);
    });
  });
});
