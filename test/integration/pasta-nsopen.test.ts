/**
 * native.nsOpen against real namespaces made by the test (never the
 * machine's own): the tap and the sockets it returns live in the target
 * namespace, user namespaces can be joined although Node is
 * multi-threaded, and failures name their step and leave no fd behind.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import { native } from '../../src/sys/native';
import { NetlinkConfigurator } from '../../src/backend/host/netlink-config';
import { canCreateNamespaces, run, runChecked } from '../support/netns';

const c = native.constants;
const TAP = c.IFF_TAP | c.IFF_NO_PI;
const NETLINK = [c.AF_NETLINK, c.SOCK_RAW, c.NETLINK_ROUTE ?? 0];

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function closeAll(fds: number[]): void {
  for (const fd of fds) if (fd >= 0) native.close(fd);
}

describe('integration: native.nsOpen', function () {
  this.timeout(20000);
  const name = `ferry-nsopen-${process.pid}`;
  let nsFd = -1;

  before(async function () {
    if (!canCreateNamespaces()) this.skip();
    await runChecked(['ip', 'netns', 'add', name]);
    nsFd = fs.openSync(`/run/netns/${name}`, 'r');
  });

  after(async function () {
    if (nsFd >= 0) fs.closeSync(nsFd);
    await run(['ip', 'netns', 'del', name]);
  });

  it('opens a tap (kernel-chosen name) and a netlink socket inside the target network namespace', async () => {
    const opened = native.nsOpen([nsFd], 'ftap%d', TAP, NETLINK, 3000);
    try {
      expect(opened.tunName).to.match(/^ftap\d+$/);
      expect(opened.sockets).to.have.length(1);
      const links = await runChecked(['ip', '-n', name, '-o', 'link', 'show']);
      expect(links).to.include(`: ${opened.tunName}: `);
      // The socket sees the target's links, not ours: the tap is found through it.
      const netlink = new NetlinkConfigurator(native, opened.sockets[0]);
      expect(netlink.linkIndex(opened.tunName)).to.be.greaterThan(1);
      netlink.linkUp(netlink.linkIndex(opened.tunName), 9000);
      expect(await runChecked(['ip', '-n', name, '-o', 'link', 'show', opened.tunName])).to.match(/mtu 9000 /);
      // Non-blocking, as the frontend needs: once drained, the tap reads EAGAIN (-1)
      // instead of blocking. (The kernel may already have queued the link's own
      // IPv6 solicitations after linkUp: read those first, a bounded number.)
      const buffer = new Uint8Array(65536);
      let result = native.read(opened.tunFd, buffer, 0, buffer.length);
      for (let i = 0; i < 64 && result > 0; i++) result = native.read(opened.tunFd, buffer, 0, buffer.length);
      expect(result).to.equal(-1);
    } finally {
      closeAll([opened.tunFd, ...opened.sockets]);
    }
    // Closing the only fd of a non-persistent tap removes the device.
    expect(await runChecked(['ip', '-n', name, '-o', 'link', 'show'])).to.not.include('ftap');
  });

  it('joins a user namespace (the child is single-threaded) and its network namespace', async function () {
    let holder: ChildProcess | null = null;
    try {
      holder = spawn('unshare', ['--user', '--map-root-user', '--net', 'sleep', '20'], { stdio: 'ignore' });
      const pid = holder.pid as number;
      // Bounded wait until unshare has made the namespaces.
      for (let i = 0; i < 100 && fs.readlinkSync(`/proc/${pid}/ns/net`) === fs.readlinkSync('/proc/self/ns/net'); i++) await new Promise((r) => setTimeout(r, 20));
      const fds = [fs.openSync(`/proc/${pid}/ns/user`, 'r'), fs.openSync(`/proc/${pid}/ns/net`, 'r')];
      const opened = native.nsOpen(fds, 'eth0', TAP, [], 3000);
      for (const fd of fds) fs.closeSync(fd);
      try {
        expect(opened.tunName).to.equal('eth0');
        const links = await runChecked(['nsenter', '-t', String(pid), '-U', '-n', '--', 'ip', '-o', 'link', 'show', 'eth0']);
        expect(links).to.match(/eth0: /);
      } finally {
        native.close(opened.tunFd);
      }
    } finally {
      holder?.kill('SIGKILL');
    }
  });

  it('tunSetOffload: a tap with IFF_VNET_HDR takes checksum and TSO offloads; a bad fd is an error', () => {
    const opened = native.nsOpen([nsFd], 'voff0', TAP | c.IFF_VNET_HDR, []);
    try {
      // Accepted by the kernel (its effect, segments above the MTU, is checked end to end in e2e/pasta/pasta-transfer).
      expect(() => native.tunSetOffload(opened.tunFd, c.TUN_F_CSUM | c.TUN_F_TSO4 | c.TUN_F_TSO6)).to.not.throw();
    } finally {
      native.close(opened.tunFd);
    }
    expect(() => native.tunSetOffload(-1, c.TUN_F_CSUM)).to.throw().that.includes({ code: 'EBADF' });
  });

  it('failures name the step and leave no fd open', () => {
    const before = openFdCount();
    const devNull = fs.openSync('/dev/null', 'r');
    try {
      expect(() => native.nsOpen([devNull], 'x0', TAP, NETLINK)).to.throw().that.includes({ syscall: 'setns', code: 'EINVAL' });
    } finally {
      fs.closeSync(devNull);
    }
    const first = native.nsOpen([nsFd], 'busy0', TAP, []);
    try {
      expect(() => native.nsOpen([nsFd], 'busy0', TAP, NETLINK)).to.throw().that.includes({ syscall: 'ioctl TUNSETIFF', code: 'EBUSY' });
    } finally {
      native.close(first.tunFd);
    }
    expect(() => native.nsOpen([nsFd], null, 0, [12345, c.SOCK_DGRAM, 0])).to.throw().that.includes({ syscall: 'socket' });
    expect(openFdCount()).to.equal(before);
  });

  it('checks its arguments before forking', () => {
    expect(() => native.nsOpen([nsFd], 'a-name-of-16-byt', TAP, [])).to.throw().that.includes({ code: 'EINVAL' });
    expect(() => native.nsOpen([nsFd], null, 0, [1, 2])).to.throw().that.includes({ code: 'EINVAL' });
    expect(() => native.nsOpen([nsFd, nsFd, nsFd, nsFd, nsFd, nsFd, nsFd, nsFd, nsFd], null, 0, [])).to.throw().that.includes({ code: 'EINVAL' });
  });

  it('sockets only, no tap: tunFd is -1 and the sockets are non-blocking', () => {
    const opened = native.nsOpen([nsFd], null, 0, [c.AF_INET, c.SOCK_DGRAM, 0, ...NETLINK]);
    try {
      expect(opened.tunFd).to.equal(-1);
      expect(opened.tunName).to.equal('');
      expect(opened.sockets).to.have.length(2);
      const meta = new Int32Array(3);
      const iov = { buffers: [new Uint8Array(16)], offsets: new Float64Array([0]), lengths: new Float64Array([16]), count: 1 };
      expect(native.recvmsg(opened.sockets[0], iov, 0, null, meta)).to.equal(-1);
    } finally {
      closeAll(opened.sockets);
    }
  });
});
