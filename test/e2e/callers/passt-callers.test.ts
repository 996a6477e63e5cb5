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
 * - rootlesskit v2 (pkg/network/pasta): the --host-lo-to-ns-lo feature
 *   probe, then `pasta --stderr --ns-ifname=tap0 --mtu=65520 --config-net
 *   --address=A --netmask=24 --gateway=G --dns-forward=D --no-map-gw
 *   --ipv4-only --tcp-ports=none --udp-ports=none CHILD_PID`, traffic from
 *   the child's namespace, pasta ending with the child.
 * - KubeVirt's passt binding, whose domain interface libvirt turns into
 *   `passt --vhost-user --one-off --socket PATH --pid FILE --interface IF
 *   --log-file FILE --tcp-ports PORTS --udp-ports PORTS`; then a guest as
 *   for libvirt.
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
import { type ChildProcess } from 'child_process';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, killPid, run, runChecked, stopChild, type TestNetwork, TEST_NET } from '../../support/netns';
import { bootGuest, type Guest, pingScript, REPO_ROOT, requireGuestPrerequisites } from '../../support/guest';
import { FERRY_BIN } from '../../support/e2e/ferry-process';
import { ECHO_TOOL_SOURCE, exchange, holdNamespace, inHeld, sleep, waitUntil } from './dropin-tools';

const DNS_SERVER_V4 = '192.0.2.53';

/** PIDs of processes whose command line contains `needle` (the background copy ferry started for us). */
/**
 * Processes with `needle` among their arguments. Confined ferry forks a
 * helper before confinement (comm "ferry-cleanup", same arguments) that
 * removes its files after a clean exit: it is counted only on request.
 */
function pidsWithArgument(needle: string, withHelpers = false): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (!withHelpers && fs.readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'ferry-cleanup') continue;
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

describe('e2e: ferry under passt\'s names, as podman, rootlesskit, libvirt and KubeVirt run it', function () {
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
   * rootlesskit v2's pasta network driver (pkg/network/pasta): probes
   * `pasta --version` and `pasta --host-lo-to-ns-lo --version` (the option
   * is passed only when that succeeds), then runs `pasta --stderr
   * --ns-ifname=tap0 --mtu=65520 --config-net --address=A --netmask=24
   * --gateway=G --dns-forward=D [--no-map-gw] [--ipv4-only]
   * --tcp-ports=none --udp-ports=none CHILD_PID` with CombinedOutput, then
   * uses tap0 in the child's namespace; pasta ends when the child does.
   * Its own 10.0.2.0/24 default is replaced by a documentation range.
   */
  describe('rootlesskit v2: pasta ... --config-net --address ... CHILD_PID', () => {
    const address = '203.0.113.100';
    const gateway = '203.0.113.2';
    const dnsForward = '203.0.113.3';
    let child: ChildProcess | null = null;
    let childPid = 0;
    let pastaPid = 0;

    after(async () => {
      if (child !== null) await stopChild(child, 1000);
    });

    it('the feature probe: --version works, --host-lo-to-ns-lo --version is refused (so it is left out)', async function () {
      const n = net as TestNetwork;
      const version = await run(['ip', 'netns', 'exec', n.ns, path.join(dir, 'pasta'), '--version'], { timeoutMs: 10000 });
      expect(version.code, version.stderr).to.equal(0);
      const probe = await run(['ip', 'netns', 'exec', n.ns, path.join(dir, 'pasta'), '--host-lo-to-ns-lo', '--version'], { timeoutMs: 10000 });
      expect(probe.code).to.not.equal(0);
      expect(probe.stderr).to.match(/--host-lo-to-ns-lo: not supported by ferry/);
    });

    it('returns 0 with tap0 configured in the child\'s namespace, stdout and stderr closed', async function () {
      const n = net as TestNetwork;
      ({ child, pid: childPid } = await holdNamespace(n));
      const args = ['--stderr', '--ns-ifname=tap0', '--mtu=65520', '--config-net', `--address=${address}`, '--netmask=24', `--gateway=${gateway}`, `--dns-forward=${dnsForward}`, '--no-map-gw', '--ipv4-only', '--tcp-ports=none', '--udp-ports=none', String(childPid)];
      const result = await run(['ip', 'netns', 'exec', n.ns, path.join(dir, 'pasta'), ...args], { timeoutMs: 30000 });
      const pids = pidsWithArgument(String(childPid)).filter((pid) => pid !== childPid && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--ns-ifname=tap0'));
      started.push(...pids);
      expect(result.code, `${result.stdout}${result.stderr}`).to.equal(0);
      expect(pids, 'one background pasta').to.have.length(1);
      pastaPid = pids[0];
      const addresses = (await run(inHeld(childPid, ['ip', '-o', 'addr', 'show', 'dev', 'tap0']))).stdout;
      expect(addresses).to.include(`inet ${address}/24`);
      const routes = (await run(inHeld(childPid, ['ip', 'route', 'show', 'default']))).stdout;
      expect(routes).to.include(`via ${gateway} dev tap0`);
      const link = (await run(inHeld(childPid, ['ip', '-o', 'link', 'show', 'dev', 'tap0']))).stdout;
      expect(link).to.include('mtu 65520');
    });

    it('the child reaches the test network over TCP, and DNS to --dns-forward reaches the host\'s resolver', async function () {
      if (pastaPid === 0) this.skip();
      const n = net as TestNetwork;
      const tcp = await exchange(tool, 'tcp', { side: { kind: 'host', ns: n.peerNs }, bind: TEST_NET.serverV4, port: 10009 }, { side: { kind: 'held', pid: childPid }, target: TEST_NET.serverV4 }, 'rootless');
      expect(tcp.reply, tcp.details).to.equal('echo:rootless');
      expect(tcp.peer, tcp.details).to.equal(TEST_NET.hostV4);
      const dns = await exchange(tool, 'udp', { side: { kind: 'host', ns: n.peerNs }, bind: DNS_SERVER_V4, port: 53 }, { side: { kind: 'held', pid: childPid }, target: dnsForward }, 'query');
      expect(dns.reply, dns.details).to.equal('echo:query');
    });

    it('pasta ends when the child does', async function () {
      if (pastaPid === 0) this.skip();
      await stopChild(child as ChildProcess, 1000);
      child = null;
      expect(await waitUntil(() => !alive(pastaPid), 10000), 'pasta still running 10 s after the child exited').to.equal(true);
    });
  });

  /**
   * libvirt 11's qemuPasstBuildCommand: [--vhost-user] --one-off --socket PATH
   * --pid FILE [--interface IF] [--tcp-ports SPEC]; qemuSecurityCommandRun
   * waits for the exit, then libvirt reads the PID file (cgroup placement).
   */
  const libvirtCases = [
    { title: 'libvirt 11, passt for -netdev stream', mode: 'socket', kubevirt: false },
    { title: 'libvirt 11, passt for -netdev vhost-user', mode: 'vhost-user', kubevirt: false },
    // KubeVirt's passt binding (sidecar network-passt-binding, domain/configurator.go) makes the
    // interface <interface type='vhostuser'><backend type='passt' logFile='/var/run/kubevirt/passt.log'/>
    // with <source dev=POD_IF/> and one <portForward proto=...><range start=PORT/> per protocol
    // listing the VMI's ports: libvirt passes --log-file F --tcp-ports 10011 --udp-ports 10012.
    // (A VMI without ports gets --tcp-ports all --udp-ports all: one socket per port, more than
    // this machine's 20000-fd limit holds.)
    { title: 'KubeVirt\'s passt binding (through libvirt 11): --vhost-user ... --log-file F --tcp-ports 10011 --udp-ports 10012', mode: 'vhost-user', kubevirt: true },
  ] as const;
  for (const { title, mode, kubevirt } of libvirtCases) {
    describe(title, () => {
      let passtPid = 0;
      let socketPath = '';
      let pidFile = '';
      let guest: Guest | null = null;
      // dir is made in the suite's before hook: the log file's path is known only then.
      const logFile = (): string => path.join(dir, 'passt.log');

      before(function () {
        requireGuestPrerequisites(this);
      });

      after(async () => {
        if (guest !== null) await guest.destroy();
      });

      it('returns 0 once the socket listens; --pid names the background passt', async function () {
        const n = net as TestNetwork;
        const stem = `vm1-net0-${mode}${kubevirt ? '-kubevirt' : ''}`;
        socketPath = path.join(dir, `${stem}.socket`);
        pidFile = path.join(dir, `${stem}-passt.pid`);
        // libvirt adds --hostname/--fqdn when the domain's <backend> names them.
        const names = mode === 'socket' ? ['--hostname', 'vm1', '--fqdn', 'vm1.example.org'] : [];
        const forwards = kubevirt ? ['--log-file', logFile(), '--tcp-ports', '10011', '--udp-ports', '10012'] : ['--tcp-ports', '10007'];
        const args = [...(mode === 'vhost-user' ? ['--vhost-user'] : []), '--one-off', '--socket', socketPath, '--pid', pidFile, '--interface', TEST_NET.uplinkName, ...names, ...forwards];
        const result = await run(['ip', 'netns', 'exec', n.ns, path.join(dir, 'passt'), ...args], { timeoutMs: 30000 });
        const pids = pidsWithArgument(socketPath);
        // The helpers too must end once passt has.
        started.push(...pidsWithArgument(socketPath, true));
        const logged = kubevirt && fs.existsSync(logFile()) ? fs.readFileSync(logFile(), 'utf8') : '';
        expect(result.code, `${result.stdout}${result.stderr}${logged}`).to.equal(0);
        expect(fs.existsSync(socketPath)).to.equal(true);
        expect(pids, 'one background passt').to.have.length(1);
        passtPid = pids[0];
        expect(Number(fs.readFileSync(pidFile, 'utf8').trim())).to.equal(passtPid);
        if (kubevirt) {
          // The VMI's ports listen on the host; the log is in the file.
          const listening = (await run(['ip', 'netns', 'exec', n.ns, 'ss', '-Hltun', 'sport = :10011 or sport = :10012'])).stdout;
          expect(listening, 'host TCP port 10011 forwarded').to.match(/tcp .*:10011 /);
          expect(listening, 'host UDP port 10012 forwarded').to.match(/udp .*:10012 /);
          expect(fs.readFileSync(logFile(), 'utf8')).to.include('listening for vhost-user front-ends');
        }
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
