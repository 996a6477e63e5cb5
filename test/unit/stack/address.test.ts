import { expect } from 'chai';
import {
  parseIpv4,
  formatIpv4,
  parseIpv6,
  formatIpv6,
  parseIp,
  formatIp,
  parseMac,
  formatMac,
  maskAddress,
  prefixContains,
  netmaskFromPrefix,
  prefixFromNetmask,
  linkLocalFromMac,
  solicitedNodeAddress,
  solicitedNodeMac,
  isIpv6LinkLocal,
  isLoopback,
  isUnspecified,
  equalsAt,
} from '../../../src/stack/address';

const hex = (b: Uint8Array | null): string | null => (b === null ? null : Buffer.from(b).toString('hex'));

describe('address', () => {
  describe('IPv4', () => {
    it('parses and formats dotted quads', () => {
      expect(hex(parseIpv4('192.0.2.1'))).to.equal('c0000201');
      expect(formatIpv4(new Uint8Array([198, 51, 100, 254]))).to.equal('198.51.100.254');
      expect(hex(parseIpv4('0.0.0.0'))).to.equal('00000000');
      expect(hex(parseIpv4('255.255.255.255'))).to.equal('ffffffff');
    });
    it('rejects malformed text', () => {
      for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.0.0.1', '01.2.3.4', '1..2.3', 'a.b.c.d', '1.2.3.4 ', '-1.2.3.4', '1.2.3.1000']) {
        expect(parseIpv4(bad), bad).to.equal(null);
      }
    });
  });

  describe('IPv6', () => {
    it('parses full, compressed and embedded-IPv4 forms', () => {
      expect(hex(parseIpv6('2001:db8:0:0:0:0:0:1'))).to.equal('20010db8000000000000000000000001');
      expect(hex(parseIpv6('2001:db8::1'))).to.equal('20010db8000000000000000000000001');
      expect(hex(parseIpv6('::'))).to.equal('0'.repeat(32));
      expect(hex(parseIpv6('::1'))).to.equal('0'.repeat(31) + '1');
      expect(hex(parseIpv6('fe80::'))).to.equal('fe80' + '0'.repeat(28));
      expect(hex(parseIpv6('::ffff:192.0.2.1'))).to.equal('00000000000000000000ffffc0000201');
      expect(hex(parseIpv6('64:ff9b::192.0.2.33'))).to.equal('0064ff9b0000000000000000c0000221');
      expect(hex(parseIpv6('1:2:3:4:5:6:192.0.2.1'))).to.equal('000100020003000400050006c0000201');
      expect(hex(parseIpv6('2001:DB8::AbCd'))).to.equal('20010db800000000000000000000abcd');
    });
    it('rejects malformed text', () => {
      const bad = [
        '', ':', ':::', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '1::2:3:4:5:6:7:8', '12345::', 'g::1',
        '1:2:', ':1:2:3:4:5:6:7', '::192.0.2.1:1', '1.2.3.4::', '::256.0.0.1', 'fe80::1%eth0', '1:2:3:4:5:6:7:192.0.2.1',
      ];
      for (const text of bad) expect(parseIpv6(text), text).to.equal(null);
    });
    it('formats canonically (RFC 5952)', () => {
      const round = (t: string): string => formatIpv6(parseIpv6(t)!);
      expect(round('2001:0db8:0000:0000:0000:0000:0000:0001')).to.equal('2001:db8::1');
      expect(round('2001:db8:0:1:0:0:0:1')).to.equal('2001:db8:0:1::1');
      expect(round('2001:db8:0:0:1:0:0:1')).to.equal('2001:db8::1:0:0:1');
      expect(round('2001:db8:1:1:1:1:0:1')).to.equal('2001:db8:1:1:1:1:0:1');
      expect(round('::')).to.equal('::');
      expect(round('::1')).to.equal('::1');
      expect(round('fe80::')).to.equal('fe80::');
      expect(round('::ffff:192.0.2.1')).to.equal('::ffff:192.0.2.1');
    });
    it('parseIp/formatIp pick the family', () => {
      expect(parseIp('192.0.2.1')!.length).to.equal(4);
      expect(parseIp('2001:db8::1')!.length).to.equal(16);
      expect(parseIp('nonsense')).to.equal(null);
      expect(formatIp(parseIp('2001:db8::fe')!)).to.equal('2001:db8::fe');
      expect(formatIp(parseIp('203.0.113.9')!)).to.equal('203.0.113.9');
    });
  });

  describe('MAC', () => {
    it('parses and formats', () => {
      expect(hex(parseMac('9a:55:9A:55:9a:55'))).to.equal('9a559a559a55');
      expect(hex(parseMac('02-00-00-00-00-01'))).to.equal('020000000001');
      expect(formatMac(new Uint8Array([0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x05]))).to.equal('9a:55:9a:55:9a:05');
      for (const bad of ['', '9a:55:9a:55:9a', '9a:55:9a:55:9a:55:00', '9a:55:9a:55:9a:5', 'zz:55:9a:55:9a:55']) expect(parseMac(bad), bad).to.equal(null);
    });
  });

  describe('prefixes', () => {
    it('masks and tests containment', () => {
      expect(formatIpv4(maskAddress(parseIpv4('192.0.2.77')!, 24))).to.equal('192.0.2.0');
      expect(formatIpv4(maskAddress(parseIpv4('192.0.2.77')!, 25))).to.equal('192.0.2.0');
      expect(formatIpv4(maskAddress(parseIpv4('192.0.2.200')!, 25))).to.equal('192.0.2.128');
      expect(formatIpv4(maskAddress(parseIpv4('192.0.2.200')!, 0))).to.equal('0.0.0.0');
      expect(formatIpv4(maskAddress(parseIpv4('192.0.2.200')!, 32))).to.equal('192.0.2.200');
      expect(formatIpv6(maskAddress(parseIpv6('2001:db8:1:2:3:4:5:6')!, 64))).to.equal('2001:db8:1:2::');
      expect(formatIpv6(maskAddress(parseIpv6('2001:db8:1:2:3:4:5:6')!, 33))).to.equal('2001:db8::');
      expect(prefixContains(parseIpv4('192.0.2.0')!, 24, parseIpv4('192.0.2.254')!)).to.equal(true);
      expect(prefixContains(parseIpv4('192.0.2.0')!, 24, parseIpv4('192.0.3.1')!)).to.equal(false);
      expect(prefixContains(parseIpv6('2001:db8::')!, 64, parseIpv6('2001:db8::fe')!)).to.equal(true);
      expect(prefixContains(parseIpv6('2001:db8::')!, 64, parseIpv6('2001:db8:0:1::fe')!)).to.equal(false);
      expect(prefixContains(parseIpv6('2001:db8::')!, 64, parseIpv4('192.0.2.1')!)).to.equal(false);
    });
    it('converts netmasks', () => {
      expect(formatIpv4(netmaskFromPrefix(24))).to.equal('255.255.255.0');
      expect(formatIpv4(netmaskFromPrefix(0))).to.equal('0.0.0.0');
      expect(formatIpv4(netmaskFromPrefix(31))).to.equal('255.255.255.254');
      expect(prefixFromNetmask(parseIpv4('255.255.252.0')!)).to.equal(22);
      expect(prefixFromNetmask(parseIpv4('255.0.255.0')!)).to.equal(-1);
    });
  });

  describe('link-local and multicast', () => {
    it('derives the EUI-64 link-local address of a MAC', () => {
      expect(formatIpv6(linkLocalFromMac(parseMac('9a:55:9a:55:9a:55')!))).to.equal('fe80::9855:9aff:fe55:9a55');
      expect(formatIpv6(linkLocalFromMac(parseMac('52:54:00:12:34:56')!))).to.equal('fe80::5054:ff:fe12:3456');
      expect(isIpv6LinkLocal(linkLocalFromMac(parseMac('52:54:00:12:34:56')!))).to.equal(true);
      expect(isIpv6LinkLocal(parseIpv6('2001:db8::1')!)).to.equal(false);
    });
    it('computes solicited-node groups and their MACs', () => {
      const a = parseIpv6('2001:db8::12:3456:789a')!;
      expect(formatIpv6(solicitedNodeAddress(a))).to.equal('ff02::1:ff56:789a');
      expect(formatMac(solicitedNodeMac(a))).to.equal('33:33:ff:56:78:9a');
    });
    it('classifies loopback and unspecified', () => {
      expect(isLoopback(parseIpv4('127.0.0.53')!)).to.equal(true);
      expect(isLoopback(parseIpv6('::1')!)).to.equal(true);
      expect(isLoopback(parseIpv6('::2')!)).to.equal(false);
      expect(isLoopback(parseIpv4('192.0.2.1')!)).to.equal(false);
      expect(isUnspecified(parseIpv6('::')!)).to.equal(true);
      expect(isUnspecified(parseIpv6('::1')!)).to.equal(false);
    });
    it('compares bytes at an offset with bounds', () => {
      const packet = new Uint8Array([0, 192, 0, 2, 1]);
      expect(equalsAt(packet, 1, parseIpv4('192.0.2.1')!)).to.equal(true);
      expect(equalsAt(packet, 2, parseIpv4('192.0.2.1')!)).to.equal(false);
      expect(equalsAt(packet, -1, parseIpv4('192.0.2.1')!)).to.equal(false);
    });
  });
});
