/**
 * The e2e harness's own pure parts, without root or QEMU: the pcap reader
 * (byte orders, nanosecond files, cut files, bad headers, malformed frames)
 * and the newc cpio writer that appends /test.sh to the guest's initramfs.
 */
import { expect } from 'chai';
import {
  parsePcap,
  isDhcpDiscover,
  isRouterSolicitation,
  isNeighborSolicitation,
  dhcpClientMessageType,
  sourceMac,
  destinationMac,
  etherType,
} from '../../support/pcap-reader';
import { newcArchive } from '../../support/guest';
import { nicArgs, qemuArgv } from '../../support/qemu';

const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

function ethernet(dst: number[], type: number, payload: number[]): number[] {
  return [...dst, ...GUEST_MAC, type >> 8, type & 0xff, ...payload];
}

/** A DHCP DISCOVER frame as udhcpc sends it (checksums left zero: the reader does not check them). */
function dhcpDiscover(messageType = 1): Uint8Array {
  const bootp = new Array<number>(236).fill(0);
  bootp[0] = 1; // BOOTREQUEST
  bootp[1] = 1;
  bootp[2] = 6;
  const options = [0x63, 0x82, 0x53, 0x63, 0, 0, 53, 1, messageType, 255];
  const dhcp = [...bootp, ...options];
  const udp = [0, 68, 0, 67, (8 + dhcp.length) >> 8, (8 + dhcp.length) & 0xff, 0, 0, ...dhcp];
  const totalLen = 20 + udp.length;
  const ip = [0x45, 0, totalLen >> 8, totalLen & 0xff, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, ...udp];
  return Uint8Array.from(ethernet([255, 255, 255, 255, 255, 255], 0x0800, ip));
}

function icmpv6(type: number): Uint8Array {
  const body = [type, 0, 0, 0, 0, 0, 0, 0];
  const src = [0xfe, 0x80, ...new Array<number>(14).fill(0)];
  const dst = [0xff, 0x02, ...new Array<number>(13).fill(0), 2];
  const ip6 = [0x60, 0, 0, 0, 0, body.length, 58, 255, ...src, ...dst, ...body];
  return Uint8Array.from(ethernet([0x33, 0x33, 0, 0, 0, 2], 0x86dd, ip6));
}

/** A pcap file holding `frames`, in either byte order and time resolution. */
function pcapOf(frames: Uint8Array[], opts: { bigEndian?: boolean; nano?: boolean } = {}): Uint8Array {
  const le = !opts.bigEndian;
  const total = 24 + frames.reduce((n, f) => n + 16 + f.length, 0);
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  v.setUint32(0, opts.nano ? 0xa1b23c4d : 0xa1b2c3d4, le);
  v.setUint16(4, 2, le);
  v.setUint16(6, 4, le);
  v.setUint32(16, 65535, le);
  v.setUint32(20, 1, le);
  let off = 24;
  frames.forEach((f, i) => {
    v.setUint32(off, 1000 + i, le);
    v.setUint32(off + 4, 500, le);
    v.setUint32(off + 8, f.length, le);
    v.setUint32(off + 12, f.length, le);
    out.set(f, off + 16);
    off += 16 + f.length;
  });
  return out;
}

describe('e2e harness: pcap reader', function () {
  it('reads little-endian microsecond captures and spots DISCOVER and RS', function () {
    const file = parsePcap(pcapOf([dhcpDiscover(), icmpv6(133), icmpv6(135)]));
    expect(file.frames).to.have.length(3);
    expect(file.truncated).to.equal(false);
    expect(file.nanosecond).to.equal(false);
    expect(file.frames[0].time).to.be.closeTo(1000.0005, 1e-9);
    expect(isDhcpDiscover(file.frames[0].data)).to.equal(true);
    expect(isRouterSolicitation(file.frames[0].data)).to.equal(false);
    expect(isRouterSolicitation(file.frames[1].data)).to.equal(true);
    expect(isNeighborSolicitation(file.frames[2].data)).to.equal(true);
    expect(sourceMac(file.frames[0].data)).to.equal('52:54:00:12:34:56');
    expect(destinationMac(file.frames[1].data)).to.equal('33:33:00:00:00:02');
    expect(etherType(file.frames[1].data)).to.equal(0x86dd);
  });

  it('reads big-endian and nanosecond captures', function () {
    const be = parsePcap(pcapOf([icmpv6(133)], { bigEndian: true }));
    expect(isRouterSolicitation(be.frames[0].data)).to.equal(true);
    const nano = parsePcap(pcapOf([icmpv6(133)], { nano: true }));
    expect(nano.nanosecond).to.equal(true);
    expect(nano.frames[0].time).to.be.closeTo(1000.0000005, 1e-9);
  });

  it('reports a record cut short instead of reading past the end', function () {
    const whole = pcapOf([dhcpDiscover(), icmpv6(133)]);
    const cut = parsePcap(whole.subarray(0, whole.length - 5));
    expect(cut.truncated).to.equal(true);
    expect(cut.frames).to.have.length(1);
    const headerOnly = parsePcap(whole.subarray(0, 24 + 7));
    expect(headerOnly.truncated).to.equal(true);
    expect(headerOnly.frames).to.have.length(0);
  });

  it('rejects a bad magic, a short file, a non-Ethernet link type and an absurd record length', function () {
    expect(() => parsePcap(new Uint8Array(10))).to.throw(/shorter/);
    const bad = pcapOf([]);
    bad[0] = 0;
    expect(() => parsePcap(bad)).to.throw(/magic/);
    const raw = pcapOf([]);
    new DataView(raw.buffer).setUint32(20, 101, true);
    expect(() => parsePcap(raw)).to.throw(/link type/);
    const huge = pcapOf([icmpv6(133)]);
    new DataView(huge.buffer).setUint32(24 + 8, 0x7fffffff, true);
    expect(() => parsePcap(huge)).to.throw(/claims/);
  });

  it('does not mistake other DHCP messages or truncated frames for a DISCOVER', function () {
    expect(dhcpClientMessageType(dhcpDiscover(3))).to.equal(3); // REQUEST
    expect(isDhcpDiscover(dhcpDiscover(3))).to.equal(false);
    const whole = dhcpDiscover();
    for (const len of [0, 13, 14, 33, 41, 42 + 100, whole.length - 3]) {
      expect(isDhcpDiscover(whole.subarray(0, len)), `length ${len}`).to.equal(false);
    }
    const rs = icmpv6(133);
    for (const len of [0, 20, 54, 57]) {
      expect(isRouterSolicitation(rs.subarray(0, len)), `length ${len}`).to.equal(false);
    }
    // An option walk that runs off the end terminates.
    const noEnd = dhcpDiscover();
    const runaway = noEnd.subarray(0, noEnd.length - 4);
    expect(dhcpClientMessageType(runaway)).to.equal(0);
  });
});

describe('e2e harness: initramfs append and QEMU command line', function () {
  it('writes newc entries with 4-byte aligned names and data, ending in a trailer', function () {
    const script = 'echo hi\nexit 3\n';
    const archive = newcArchive([{ name: 'test.sh', content: script, mode: 0o755 }]);
    expect(archive.length % 4).to.equal(0);
    const text = archive.toString('latin1');
    expect(text.slice(0, 6)).to.equal('070701');
    const field = (i: number): number => parseInt(text.slice(6 + i * 8, 14 + i * 8), 16);
    expect(field(1)).to.equal(0o100755); // mode
    expect(field(6)).to.equal(script.length); // file size
    expect(field(11)).to.equal('test.sh'.length + 1); // name size with NUL
    const nameStart = 110;
    expect(text.slice(nameStart, nameStart + 7)).to.equal('test.sh');
    const dataStart = Math.ceil((nameStart + 8) / 4) * 4;
    expect(text.slice(dataStart, dataStart + script.length)).to.equal(script);
    expect(text).to.contain('TRAILER!!!');
  });

  it('gives vhost-user shared memory and legacy interrupts', function () {
    const argv = qemuArgv({
      netns: 'unused',
      kernel: 'k',
      initrd: 'i',
      nic: { kind: 'vhost-user', socketPath: '/tmp/s.sock', reconnectSeconds: 1 },
    });
    const joined = argv.join(' ');
    expect(joined).to.contain('memory-backend-memfd,id=mem,size=512M,share=on');
    expect(joined).to.contain('-numa node,memdev=mem');
    expect(joined).to.contain('-m 512M');
    expect(joined).to.contain('socket,id=chr0,path=/tmp/s.sock,reconnect=1');
    expect(joined).to.match(/virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile=,vectors=0/);
    expect(nicArgs({ kind: 'none' }, 'x')).to.deep.equal([]);
  });

  it('asks for multiqueue only above one queue pair, and for the given vCPUs', function () {
    const one = nicArgs({ kind: 'vhost-user', socketPath: '/s' }, 'm').join(' ');
    expect(one).to.contain('vhost-user,id=net0,chardev=chr0 ');
    expect(one).to.not.contain('mq=on');
    const two = nicArgs({ kind: 'vhost-user', socketPath: '/s', queues: 2 }, 'm').join(' ');
    expect(two).to.contain('vhost-user,id=net0,chardev=chr0,queues=2');
    expect(two).to.match(/virtio-net-pci,netdev=net0,mac=m,romfile=,vectors=0,mq=on$/);
    const argv = qemuArgv({ netns: 'n', kernel: 'k', initrd: 'i', nic: { kind: 'none' }, cpus: 2 });
    expect(argv[argv.indexOf('-smp') + 1]).to.equal('2');
    const defaults = qemuArgv({ netns: 'n', kernel: 'k', initrd: 'i', nic: { kind: 'none' } });
    expect(defaults[defaults.indexOf('-smp') + 1]).to.equal('1');
  });
});
