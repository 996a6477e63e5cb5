/**
 * libvirt with a real guest on ferry: a private libvirtd (Debian's, QEMU
 * driver, TCG) runs inside the test namespace, ferry listens there with its
 * socket given to the libvirt-qemu group, and `virsh create` starts the
 * domain documented in docs/libvirt.md (read from that file, only paths
 * replaced): `<interface type='vhostuser'>` on ferry's socket, shared memfd
 * memory, direct kernel boot of the test guest, console to a file. The
 * guest's DHCP lease is the host's own address; its poweroff ends the
 * transient domain.
 */
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, type CommandResult, type TestNetwork, TEST_NET } from '../../support/netns';
import { guestImage, requireGuestPrerequisites } from '../../support/guest';
import { DEFAULT_GUEST_MAC } from '../../support/qemu';
import {
  ConsoleFile,
  groupId,
  LIBVIRT_DOC,
  LIBVIRT_QEMU_USER,
  type Libvirtd,
  missingLibvirtPrerequisites,
  processExists,
  startLibvirtd,
  testedDomainXml,
  userIds,
  waitUntil,
  xmlEscape,
} from '../../support/libvirt';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from '../../support/e2e/ferry-process';

/** The domain's name in docs/libvirt.md (the test's libvirtd is private, so no clash). */
const DOMAIN = 'vm1';
/** Resolver given to ferry so the guest is never told about the machine's real one. */
const TEST_DNS_V4 = '192.0.2.53';

/** uid and gid (real) of a running process, from /proc. */
function processIds(pid: number): { uid: number; gid: number } | null {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status);
    const gid = /^Gid:\s+(\d+)/m.exec(status);
    return uid && gid ? { uid: Number(uid[1]), gid: Number(gid[1]) } : null;
  } catch {
    return null;
  }
}

describe('e2e: libvirt domain with a vhostuser interface on ferry', function () {
  this.timeout(200000);

  let net: TestNetwork | null = null;
  let ferry: FerryProcess | null = null;
  let libvirtd: Libvirtd | null = null;
  let workDir = '';
  let consoleFile: ConsoleFile | null = null;
  let qemuPid: number | null = null;
  let qemuIds: { uid: number; gid: number } | null = null;
  let socketStat: fs.Stats | null = null;
  let create: CommandResult | null = null;
  let doneCode: number | null = null;
  let bootError: Error | null = null;
  let qemuEnded = false;
  let domainsAfter: CommandResult | null = null;
  let ferryAliveAtEnd = false;
  let ferryExitCode: number | null = null;
  const timings: string[] = [];
  let kernel = '';
  let initrd = '';

  /**
   * Writes the domain of docs/libvirt.md into the work dir as `file`, with
   * the test's socket, guest image and console file; returns its path.
   */
  function writeDomain(file: string, socketPath: string, consolePath: string): string {
    const xml = testedDomainXml(fs.readFileSync(LIBVIRT_DOC, 'utf8'), [
      ['/run/ferry/vm1.sock', xmlEscape(socketPath)],
      ['/var/lib/ferry/guest/vmlinuz', xmlEscape(kernel)],
      ['/var/lib/ferry/guest/initramfs.cpio.gz', xmlEscape(initrd)],
      ['/var/log/ferry/vm1-console.log', xmlEscape(consolePath)],
      // Few DHCP tries, no wait for IPv6: a broken lease fails fast.
      ['</cmdline>', ' ferry.dhcp_tries=3 ferry.ipv6_wait=0</cmdline>'],
    ]);
    const out = path.join(workDir, file);
    fs.writeFileSync(out, xml);
    return out;
  }

  before(async function () {
    requireGuestPrerequisites(this, [
      ...(fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]),
      ...missingLibvirtPrerequisites(),
    ]);
    const started = Date.now();
    const mark = (what: string): number => timings.push(`${what} at ${((Date.now() - started) / 1000).toFixed(1)} s`);

    net = await createTestNetwork();
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-libvirt-'));
    // libvirt-qemu reaches the socket, kernel and initramfs through this directory.
    fs.chmodSync(workDir, 0o755);
    libvirtd = startLibvirtd(net.ns, path.join(workDir, 'libvirt'));

    // The guest image is copied beside the socket: its cache directory may not be readable by libvirt-qemu.
    const image = guestImage();
    kernel = path.join(workDir, 'vmlinuz');
    initrd = path.join(workDir, 'initramfs.cpio.gz');
    fs.copyFileSync(image.kernel, kernel);
    fs.copyFileSync(image.initrd, initrd);
    fs.chmodSync(kernel, 0o644);
    fs.chmodSync(initrd, 0o644);

    const socketPath = path.join(workDir, 'ferry.sock');
    ferry = await startFerry(net.ns, socketPath, ['--socket-mode', '0660', '--socket-group', LIBVIRT_QEMU_USER, '--dns', TEST_DNS_V4]);
    socketStat = fs.statSync(socketPath);
    mark('ferry listening');
    await libvirtd.waitReady(45000);
    mark('libvirtd ready');

    consoleFile = new ConsoleFile(path.join(workDir, 'console.log'));
    const domainFile = writeDomain('domain.xml', socketPath, consoleFile.file);

    // Bounded: a back-end that stops answering leaves virsh create hanging.
    create = await libvirtd.virsh(['create', domainFile], 45000);
    mark('virsh create returned');
    qemuPid = libvirtd.qemuPid(DOMAIN);
    if (qemuPid !== null) qemuIds = processIds(qemuPid);
    const pid = qemuPid;
    const qemuGone = (): boolean => pid === null || !processExists(pid);

    if (create.code === 0) {
      try {
        doneCode = Number((await consoleFile.waitFor(/FERRY-GUEST: done (\d+)\r?\n/, 60000, qemuGone))[1]);
        mark('guest done');
      } catch (err) {
        bootError = err as Error;
      }
      // The guest powers off by ACPI; libvirt ends the transient domain (on_poweroff destroy).
      qemuEnded = await waitUntil(qemuGone, 15000);
      mark('QEMU gone');
      // libvirt forgets the domain once it has seen QEMU's monitor close.
      const listDeadline = Date.now() + 10000;
      do {
        domainsAfter = await libvirtd.virsh(['list', '--all', '--name'], 10000);
        if (domainsAfter.code !== 0 || domainsAfter.stdout.trim() === '') break;
        await new Promise((r) => setTimeout(r, 200));
      } while (Date.now() < listDeadline);
      mark('domain gone from libvirt');
    }
    ferryAliveAtEnd = ferry.child.exitCode === null && ferry.child.signalCode === null;
    ferryExitCode = await ferry.stop();
    if (process.env.FERRY_E2E_TIMINGS) process.stderr.write(`    libvirt e2e: ${timings.join(', ')}\n`);
  });

  after(async function () {
    // virsh destroy always: a domain left running would outlive libvirtd.
    if (libvirtd) {
      await libvirtd.destroyDomain(DOMAIN, qemuPid ?? libvirtd.qemuPid(DOMAIN));
      await libvirtd.stop();
    }
    if (ferry) await ferry.stop();
    if (net) await destroyTestNetwork(net);
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    libvirtd = null;
    ferry = null;
    net = null;
  });

  function diagnostics(): string {
    return [
      `--- timings: ${timings.join(', ')} ---`,
      `--- virsh create: ${create ? `${create.code ?? create.signal} ${create.stdout.trim()} ${create.stderr.trim()}` : 'not run'} ---`,
      `--- console ---\n${consoleFile?.tail() ?? ''}`,
      `--- libvirt's QEMU log ---\n${libvirtd?.qemuLog(DOMAIN).split('\n').slice(-15).join('\n') ?? ''}`,
      `--- libvirtd ---\n${libvirtd?.log().split('\n').slice(-15).join('\n') ?? ''}`,
      `--- ferry log ---\n${ferry?.log().split('\n').slice(-20).join('\n') ?? ''}`,
    ].join('\n');
  }

  it(`ferry's socket belongs to the ${LIBVIRT_QEMU_USER} group with mode 0660 (--socket-group, --socket-mode)`, function () {
    const gid = groupId(LIBVIRT_QEMU_USER);
    expect(gid, `${LIBVIRT_QEMU_USER} group`).to.not.equal(null);
    expect(socketStat?.isSocket()).to.equal(true);
    expect((socketStat?.mode ?? 0) & 0o777).to.equal(0o660);
    expect(socketStat?.gid).to.equal(gid);
  });

  it(`virsh create starts the domain, and libvirt runs its QEMU as ${LIBVIRT_QEMU_USER}`, function () {
    expect(create?.code, diagnostics()).to.equal(0);
    expect(qemuPid, `QEMU pid file\n${diagnostics()}`).to.not.equal(null);
    const ids = userIds(LIBVIRT_QEMU_USER);
    // Not root: only the socket's group and mode let QEMU connect (dynamic_ownership is off).
    expect(qemuIds?.uid, diagnostics()).to.equal(ids?.uid).and.to.not.equal(0);
  });

  it('libvirt gives QEMU a vhost-user NIC on the socket, shared memfd memory and no MSI-X vectors', function () {
    const log = libvirtd?.qemuLog(DOMAIN) ?? '';
    expect(log, diagnostics()).to.match(/-chardev socket,id=charnet0,path=\S*ferry\.sock/);
    expect(log).to.match(/"type":"vhost-user","chardev":"charnet0"/);
    expect(log).to.match(/"qom-type":"memory-backend-memfd","id":"pc\.ram","share":true/);
    expect(log).to.match(/"driver":"virtio-net-pci"[^\n]*"mac":"52:54:00:12:34:56"[^\n]*"vectors":0/);
  });

  it('the virtio-net driver probes eth0 with the domain MAC and the link comes up', function () {
    const text = consoleFile?.lines() ?? '';
    expect(text, diagnostics()).to.match(new RegExp(`FERRY-GUEST: virtio_net probed eth0 mac ${DEFAULT_GUEST_MAC}\\r?\\n`));
    expect(text, diagnostics()).to.match(/FERRY-GUEST: link up /);
  });

  it(`the guest is leased the host's address ${TEST_NET.hostV4}/${TEST_NET.prefixV4} via ${TEST_NET.routerV4}`, function () {
    const lease = /FERRY-GUEST: lease (\S+)\/(\d+) router (\S+) mtu \S+ dns (\S+)/.exec(consoleFile?.lines() ?? '');
    expect(lease, diagnostics()).to.not.equal(null);
    expect(lease?.[1]).to.equal(TEST_NET.hostV4);
    expect(Number(lease?.[2])).to.equal(TEST_NET.prefixV4);
    expect(lease?.[3]).to.equal(TEST_NET.routerV4);
    expect(lease?.[4]).to.equal(TEST_DNS_V4);
  });

  it("the guest's poweroff ends the transient domain (ACPI, on_poweroff destroy)", function () {
    expect(bootError, diagnostics()).to.equal(null);
    expect(doneCode, diagnostics()).to.equal(0);
    expect(qemuEnded, `QEMU ${qemuPid} still running\n${diagnostics()}`).to.equal(true);
    expect(domainsAfter?.code, diagnostics()).to.equal(0);
    expect(domainsAfter?.stdout.trim(), 'domains left in libvirt').to.equal('');
  });

  it('ferry keeps running through the domain and exits cleanly on SIGTERM', function () {
    expect(ferryAliveAtEnd, diagnostics()).to.equal(true);
    expect(ferryExitCode, diagnostics()).to.equal(0);
  });

  it(`without --socket-group and --socket-mode, ${LIBVIRT_QEMU_USER}'s QEMU is refused the socket and virsh create fails`, async function () {
    if (!libvirtd || !net || !libvirtd.alive) throw new Error(`libvirtd is not running\n${diagnostics()}`);
    const socketPath = path.join(workDir, 'ferry-default-mode.sock');
    const plain = await startFerry(net.ns, socketPath, ['--dns', TEST_DNS_V4]);
    try {
      expect(fs.statSync(socketPath).mode & 0o002, 'socket not writable by others').to.equal(0);
      const domainFile = writeDomain('domain-default-mode.xml', socketPath, path.join(workDir, 'console-default-mode.log'));
      // Generous bound: under load (CI on 2 cores) libvirt may take a while to give up.
      const refused = await libvirtd.virsh(['create', domainFile], 60000);
      expect(refused.code, `${refused.stdout}\n${refused.stderr}`).to.not.equal(0);
      expect(refused.stderr, `virsh create said (code ${refused.code}):\n${refused.stdout}\n${refused.stderr}\n${diagnostics()}`).to.match(/ferry-default-mode\.sock'?:? ?[\s\S]{0,200}Permission denied/);
      expect(plain.child.exitCode, plain.log()).to.equal(null);
    } finally {
      await libvirtd.destroyDomain(DOMAIN, libvirtd.qemuPid(DOMAIN));
      await plain.stop();
    }
  });
});
