import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import {
  DEFAULT_MAX_FLOWS,
  DEFAULT_UDP_TIMEOUT_SECONDS,
  defaultInstanceName,
  optionHelp,
  OptionError,
  parseMetricsEndpoint,
  parseOptions,
  readEphemeralRange,
} from '../../../../src/backend/cli/options';

const parse = (...argv: string[]) => parseOptions(argv).options;
const bytes = (value: Uint8Array | null | 'none' | undefined) => (value instanceof Uint8Array ? Array.from(value) : value);

/** The OptionError message parsing `argv` throws (fails the test when it does not throw). */
function errorOf(...argv: string[]): string {
  try {
    parseOptions(argv);
  } catch (error) {
    expect(error).to.be.instanceOf(OptionError);
    const message = (error as Error).message;
    expect(message).to.not.include('\n');
    return message;
  }
  expect.fail(`no error for ${argv.join(' ')}`);
}

describe('options', () => {
  describe('defaults', () => {
    it('no arguments: run with every default', () => {
      const parsed = parseOptions([]);
      expect(parsed.action).to.equal('run');
      const o = parsed.options;
      expect(o.socketPath).to.equal(null);
      expect(o.fd).to.equal(null);
      expect(o.oneOff).to.equal(false);
      expect(o.queues).to.equal(1);
      expect(o.maxFlows).to.equal(DEFAULT_MAX_FLOWS);
      expect(o.udpTimeoutSeconds).to.equal(DEFAULT_UDP_TIMEOUT_SECONDS);
      expect(o.logging).to.deep.include({ level: 'info', trace: false, file: null, name: 'ferry' });
      expect(o.services).to.deep.equal({ dhcp: true, dhcpv6: true, ndp: true, ra: true, dhcpDns: true, dhcpSearch: true });
      expect(o.protocols).to.deep.equal({ tcp: true, udp: true, icmp: true });
      expect(o.forwards).to.deep.equal({ tcp: [], udp: [], tcpNs: [], udpNs: [] });
      expect(o.network.mtu).to.equal(null);
      expect(o.network.dns).to.equal(null);
      expect(o.metrics).to.equal(null);
    });
  });

  describe('passt-style invocations', () => {
    it('libvirt/podman style: --vhost-user --socket PATH -t 22 -u 53 --mtu 1500', () => {
      const o = parse('--vhost-user', '--socket', '/tmp/x.sock', '-t', '22', '-u', '53', '--mtu', '1500');
      expect(o.vhostUser).to.equal(true);
      expect(o.socketPath).to.equal('/tmp/x.sock');
      expect(o.forwards.tcp[0].mappings).to.deep.equal([{ hostPortFirst: 22, hostPortLast: 22, guestPortFirst: 22 }]);
      expect(o.forwards.udp[0].mappings).to.deep.equal([{ hostPortFirst: 53, hostPortLast: 53, guestPortFirst: 53 }]);
      expect(o.network.mtu).to.equal(1500);
      expect(o.logging.name).to.equal('x');
    });

    it('libvirt passt command line shape', () => {
      const o = parse('--one-off', '--socket', '/run/user/1000/libvirt/qemu/run/passt/1-vm-net0.socket', '--pid', '/run/x.pid',
        '--address', '192.0.2.10', '--netmask', '24', '--mac-addr', '52:54:00:12:34:56', '--mtu', '1500', '--interface', 'eth0',
        '--tcp-ports', '2222:22', '--udp-ports', '5353:53', '--log-file', '/tmp/passt.log', '--vhost-user');
      expect(o.oneOff).to.equal(true);
      expect(o.pidFile).to.equal('/run/x.pid');
      expect(bytes(o.network.address4)).to.deep.equal([192, 0, 2, 10]);
      expect(o.network.prefixLength4).to.equal(24);
      expect(bytes(o.network.macAddr)).to.deep.equal([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
      expect(o.network.interface).to.equal('eth0');
      expect(o.forwards.tcp[0].mappings[0]).to.deep.equal({ hostPortFirst: 2222, hostPortLast: 2222, guestPortFirst: 22 });
      expect(o.logging.file).to.equal('/tmp/passt.log');
      expect(o.logging.name).to.equal('1-vm-net0');
    });
  });

  describe('syntax', () => {
    it('--opt=VALUE and --opt VALUE', () => {
      expect(parse('--mtu=9000').network.mtu).to.equal(9000);
      expect(parse('--mtu', '9000').network.mtu).to.equal(9000);
    });

    it('short options: separate, attached, bundled', () => {
      expect(parse('-s', '/tmp/a.sock').socketPath).to.equal('/tmp/a.sock');
      expect(parse('-s/tmp/a.sock').socketPath).to.equal('/tmp/a.sock');
      const bundled = parse('-4fd');
      expect(bundled.network.ipv4Only).to.equal(true);
      expect(bundled.logging.level).to.equal('debug');
      const flagThenValue = parse('-1s', '/tmp/b.sock');
      expect(flagThenValue.oneOff).to.equal(true);
      expect(flagThenValue.socketPath).to.equal('/tmp/b.sock');
      expect(parse('-qm1280').network.mtu).to.equal(1280);
    });

    it('a value may start with a dash when the option takes one', () => {
      expect(parse('-P', '-odd.pid').pidFile).to.equal('-odd.pid');
      expect(parse('--log-file', '--odd').logging.file).to.equal('--odd');
    });

    it('unknown options, stray arguments, missing values', () => {
      expect(errorOf('--bogus')).to.equal("unknown option '--bogus' (see --help)");
      expect(errorOf('-z')).to.equal("unknown option '-z' (see --help)");
      expect(errorOf('-4z')).to.equal("unknown option '-z' (see --help)");
      expect(errorOf('stray')).to.equal("unexpected argument 'stray'");
      expect(errorOf('--', 'stray')).to.equal("unexpected argument 'stray'");
      expect(errorOf('--mtu')).to.equal('--mtu: needs a value (MTU)');
      expect(errorOf('-m')).to.equal('-m: needs a value (MTU)');
      expect(errorOf('--debug=yes')).to.equal('--debug: does not take a value');
      expect(errorOf('--sock', '/tmp/x')).to.match(/unknown option '--sock'/);
    });

    it('--help, --version, --print-capabilities stop parsing where they appear', () => {
      expect(parseOptions(['--help', '--bogus']).action).to.equal('help');
      expect(parseOptions(['-h']).action).to.equal('help');
      expect(parseOptions(['--version']).action).to.equal('version');
      expect(parseOptions(['--socket', '/tmp/x.sock', '--print-capabilities']).action).to.equal('print-capabilities');
      expect(errorOf('--bogus', '--help')).to.match(/bogus/);
    });
  });

  describe('front-end connection', () => {
    it('socket aliases', () => {
      for (const flag of ['-s', '--socket', '--socket-path']) expect(parse(flag, '/tmp/s.sock').socketPath).to.equal('/tmp/s.sock');
      expect(errorOf('--socket', '')).to.equal('--socket: empty path');
      expect(errorOf('--socket', '/tmp/' + 'x'.repeat(200))).to.match(/longer than 107 bytes/);
    });

    it('--fd and -F imply one-off and name the instance', () => {
      const o = parse('--fd', '5');
      expect(o.fd).to.equal(5);
      expect(o.oneOff).to.equal(true);
      expect(o.logging.name).to.equal('fd5');
      expect(parse('-F7').fd).to.equal(7);
      expect(errorOf('--fd', '2')).to.equal('--fd: 2 is out of range (3-2147483647)');
      expect(errorOf('--fd', 'x')).to.equal("--fd: 'x' is not a number");
      expect(errorOf('--fd', '-3')).to.equal("--fd: '-3' is not a number");
    });

    it('--socket-path with --fd is refused', () => {
      expect(errorOf('--socket-path', '/tmp/a', '--fd', '4')).to.equal('--fd: cannot be combined with --socket-path');
      expect(errorOf('-F', '4', '-s', '/tmp/a')).to.equal('-F: cannot be combined with -s');
    });

    it('--one-off / -1, --vhost-user, -f, -e accepted', () => {
      expect(parse('--one-off').oneOff).to.equal(true);
      expect(parse('-1').oneOff).to.equal(true);
      expect(parse('--vhost-user').vhostUser).to.equal(true);
      expect(() => parse('-f', '--foreground', '-e', '--stderr')).to.not.throw();
    });

    it('--socket-mode and --socket-group', () => {
      expect(parse('--socket-mode', '0660').socketMode).to.equal(0o660);
      expect(parse('--socket-mode=600').socketMode).to.equal(0o600);
      expect(parse('--socket-mode=0o770').socketMode).to.equal(0o770);
      expect(errorOf('--socket-mode', '0999')).to.equal("--socket-mode: '0999' is not an octal file mode");
      expect(errorOf('--socket-mode', '4755')).to.equal('--socket-mode: 4755 has bits beyond 0777');
      expect(parse('--socket-group', 'kvm').socketGroup).to.equal('kvm');
      expect(parse('--socket-group', '107').socketGroup).to.equal('107');
      expect(errorOf('--socket-group', 'a b')).to.equal("--socket-group: 'a b' is not a valid group name");
    });

    it('--queues range', () => {
      expect(parse('--queues', '4').queues).to.equal(4);
      expect(errorOf('--queues', '0')).to.equal('--queues: 0 is out of range (1-16)');
      expect(errorOf('--queues', '17')).to.equal('--queues: 17 is out of range (1-16)');
    });
  });

  describe('process and logging', () => {
    it('-P/--pid and -p/--pcap', () => {
      expect(parse('-P', '/tmp/p').pidFile).to.equal('/tmp/p');
      expect(parse('--pid=/tmp/q').pidFile).to.equal('/tmp/q');
      expect(parse('-p', '/tmp/c.pcap').pcapFile).to.equal('/tmp/c.pcap');
      expect(parse('--pcap', '/tmp/d.pcap').pcapFile).to.equal('/tmp/d.pcap');
    });

    it('--runas kept for isolation, no note', () => {
      const parsed = parseOptions(['--runas', 'nobody']);
      expect(parsed.options.runas).to.equal('nobody');
      expect(parsed.notes).to.deep.equal([]);
    });

    it('levels: -d, -q, --trace, last wins', () => {
      expect(parse('-d').logging.level).to.equal('debug');
      expect(parse('--debug').logging.level).to.equal('debug');
      expect(parse('-q').logging.level).to.equal('warn');
      expect(parse('--quiet').logging.level).to.equal('warn');
      expect(parse('--trace').logging).to.deep.include({ level: 'debug', trace: true });
      expect(parse('--trace', '-q').logging).to.deep.include({ level: 'warn', trace: false });
      expect(parse('-q', '-d').logging.level).to.equal('debug');
    });

    it('-l/--log-file and --log-size', () => {
      expect(parse('-l', '/tmp/f.log').logging.file).to.equal('/tmp/f.log');
      expect(parse('--log-file', '/tmp/g.log', '--log-size', '2097152').logging).to.deep.include({ file: '/tmp/g.log', fileSize: 2097152 });
      expect(errorOf('--log-size', '100')).to.match(/^--log-size: 100 is out of range \(40960-/);
    });

    it('--name overrides the socket-derived name', () => {
      expect(parse('-s', '/run/ferry/vm7.sock').logging.name).to.equal('vm7');
      expect(parse('-s', '/run/ferry/vm7.sock', '--name', 'web-1').logging.name).to.equal('web-1');
      expect(errorOf('--name', 'has space')).to.match(/^--name: 'has space' is not a valid name/);
    });

    it('--metrics and --control', () => {
      expect(parse('--metrics', '127.0.0.1:9100').metrics).to.deep.equal({ kind: 'tcp', host: '127.0.0.1', port: 9100 });
      expect(parse('--metrics=unix:/tmp/m.sock').metrics).to.deep.equal({ kind: 'unix', path: '/tmp/m.sock' });
      expect(parse('--control', '/tmp/c.sock').controlPath).to.equal('/tmp/c.sock');
      expect(errorOf('--metrics', '9100')).to.equal("--metrics: '9100' is neither HOST:PORT nor unix:PATH");
      expect(errorOf('-s', '/tmp/a.sock', '--control', '/tmp/a.sock')).to.equal('--control: must differ from the vhost-user socket path');
      expect(errorOf('--control', '/tmp/a.sock', '--metrics', 'unix:/tmp/a.sock')).to.equal('--metrics: must differ from the other socket paths');
    });
  });

  describe('addresses', () => {
    it('-m/--mtu range, 0 = do not announce', () => {
      expect(parse('-m', '65520').network.mtu).to.equal(65520);
      expect(parse('-m', '68').network.mtu).to.equal(68);
      expect(parse('--mtu', '0').network.mtu).to.equal(0);
      expect(errorOf('--mtu', '70000')).to.equal('--mtu: 70000 is out of range (68-65520)');
      expect(errorOf('--mtu', '67')).to.equal('--mtu: 67 is out of range (68-65520)');
      expect(errorOf('--mtu', '99999999999999999999')).to.equal('--mtu: 99999999999999999999 is out of range (68-65520)');
      expect(parse('--mtu', '00').network.mtu).to.equal(0);
      expect(errorOf('--mtu', '1500x')).to.equal("--mtu: '1500x' is not a number");
    });

    it('-a/--address once per family, last wins', () => {
      const o = parse('-a', '192.0.2.1', '--address', '2001:db8::5', '-a', '192.0.2.2');
      expect(bytes(o.network.address4)).to.deep.equal([192, 0, 2, 2]);
      expect(o.network.address6?.length).to.equal(16);
      expect(o.network.address6?.[15]).to.equal(5);
      expect(errorOf('-a', '127.0.0.1')).to.equal('-a: 127.0.0.1 is a loopback address');
      expect(errorOf('-a', '0.0.0.0')).to.equal('-a: 0.0.0.0 is the unspecified address');
      expect(errorOf('-a', '224.0.0.1')).to.equal('-a: 224.0.0.1 is a multicast address');
      expect(errorOf('-a', 'ff02::1')).to.equal('-a: ff02::1 is a multicast address');
      expect(errorOf('-a', '255.255.255.255')).to.equal('-a: 255.255.255.255 is the broadcast address');
      expect(errorOf('-a', '::ffff:192.0.2.1')).to.equal('-a: ::ffff:192.0.2.1 is an IPv4-mapped address');
      expect(errorOf('--address', '192.0.2')).to.equal("--address: '192.0.2' is not an IPv4 or IPv6 address");
    });

    it('-n/--netmask as bits or dotted', () => {
      expect(parse('-n', '24').network.prefixLength4).to.equal(24);
      expect(parse('--netmask', '255.255.240.0').network.prefixLength4).to.equal(20);
      expect(errorOf('-n', '33')).to.equal('-n: 33 is out of range (0-32)');
      expect(errorOf('-n', '255.0.255.0')).to.equal('-n: 255.0.255.0 is not a contiguous netmask');
      expect(errorOf('-n', 'x')).to.equal("-n: 'x' is neither a prefix length nor a dotted netmask");
    });

    it('-g/--gateway per family', () => {
      const o = parse('-g', '192.0.2.254', '--gateway', 'fe80::1');
      expect(bytes(o.network.gateway4)).to.deep.equal([192, 0, 2, 254]);
      expect(o.network.gateway6?.[0]).to.equal(0xfe);
      expect(errorOf('-g', '::1')).to.equal('-g: ::1 is a loopback address');
    });

    it('-i, -o, --outbound-if4/6', () => {
      const o = parse('-i', 'eth0', '-o', '192.0.2.3', '--outbound', '2001:db8::3', '--outbound-if4', 'wlan0', '--outbound-if6', 'eth1');
      expect(o.network.interface).to.equal('eth0');
      expect(bytes(o.network.outbound4)).to.deep.equal([192, 0, 2, 3]);
      expect(o.network.outbound6?.[15]).to.equal(3);
      expect(o.network.outboundIf4).to.equal('wlan0');
      expect(o.network.outboundIf6).to.equal('eth1');
      expect(errorOf('-i', 'averyveryverylongname')).to.equal("-i: 'averyveryverylongname' is not a valid interface name");
      expect(errorOf('--outbound-if4', 'a/b')).to.equal("--outbound-if4: 'a/b' is not a valid interface name");
      expect(errorOf('-o', '::1')).to.equal('-o: ::1 is a loopback address');
    });

    it('-M/--mac-addr', () => {
      expect(bytes(parse('-M', '9a:55:9a:55:9a:56').network.macAddr)).to.deep.equal([0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x56]);
      expect(errorOf('--mac-addr', '9a:55:9a')).to.equal("--mac-addr: '9a:55:9a' is not a MAC address");
      expect(errorOf('-M', '01:00:5e:00:00:01')).to.equal('-M: 01:00:5e:00:00:01 is a multicast MAC address');
    });

    it('-4 and -6, not together', () => {
      expect(parse('-4').network.ipv4Only).to.equal(true);
      expect(parse('--ipv6-only').network.ipv6Only).to.equal(true);
      expect(errorOf('-4', '-6')).to.equal('-6: cannot be combined with -4');
      expect(errorOf('--ipv6-only', '--ipv4-only')).to.equal('--ipv6-only: cannot be combined with --ipv4-only');
      // As in passt, addresses of the disabled family are accepted (and unused).
      expect(parse('-4', '-a', '2001:db8::1').network.address6?.length).to.equal(16);
    });
  });

  describe('DNS', () => {
    it('-D/--dns repeatable, none, none then addresses', () => {
      const o = parse('-D', '192.0.2.53', '--dns', '2001:db8::53');
      expect(Array.isArray(o.network.dns) && o.network.dns.length).to.equal(2);
      expect(parse('-D', 'none').network.dns).to.equal('none');
      const after = parse('-D', 'none', '-D', '127.0.0.1').network.dns;
      expect(Array.isArray(after) && after.map((a) => Array.from(a))).to.deep.equal([[127, 0, 0, 1]]);
      expect(errorOf('-D', 'resolver')).to.equal("-D: 'resolver' is not an IPv4 or IPv6 address");
    });

    it('--dns-forward and --dns-host per family', () => {
      const o = parse('--dns-forward', '192.0.2.1', '--dns-forward', '2001:db8::1', '--dns-host', '198.51.100.53', '--dns-host', '2001:db8::53');
      expect(bytes(o.network.dnsForward4)).to.deep.equal([192, 0, 2, 1]);
      expect(o.network.dnsForward6?.length).to.equal(16);
      expect(bytes(o.network.dnsHost4)).to.deep.equal([198, 51, 100, 53]);
      expect(o.network.dnsHost6?.[15]).to.equal(0x53);
      expect(errorOf('--dns-forward', '127.0.0.53')).to.equal('--dns-forward: 127.0.0.53 is a loopback address');
      expect(errorOf('--dns-host', '0.0.0.0')).to.equal('--dns-host: 0.0.0.0 is the unspecified address');
      expect(parse('--dns-host', '127.0.0.53').network.dnsHost4?.[0]).to.equal(127);
    });

    it('-S/--search space-separated, repeatable, none', () => {
      expect(parse('-S', 'example.com example.org', '--search', 'test').network.search).to.deep.equal(['example.com', 'example.org', 'test']);
      expect(parse('--search', 'none').network.search).to.equal('none');
      expect(errorOf('-S', 'bad..name')).to.equal("-S: 'bad..name' is not a domain name");
      expect(errorOf('-S', '  ')).to.equal('-S: empty search list');
    });

    it('--no-dhcp-dns, --no-dhcp-search', () => {
      expect(parse('--no-dhcp-dns', '--no-dhcp-search').services).to.deep.include({ dhcpDns: false, dhcpSearch: false });
    });
  });

  describe('address mapping', () => {
    it('--map-host-loopback, none implies --no-map-gw', () => {
      const o = parse('--map-host-loopback', '192.0.2.2', '--map-host-loopback', '2001:db8::2');
      expect(bytes(o.network.mapHostLoopback4)).to.deep.equal([192, 0, 2, 2]);
      expect(o.network.mapHostLoopback6 instanceof Uint8Array).to.equal(true);
      expect(o.network.noMapGw).to.equal(false);
      const none = parse('--map-host-loopback', 'none').network;
      expect([none.mapHostLoopback4, none.mapHostLoopback6, none.noMapGw]).to.deep.equal(['none', 'none', true]);
      expect(parse('--no-map-gw').network.noMapGw).to.equal(true);
      expect(errorOf('--map-host-loopback', '127.0.0.1')).to.equal('--map-host-loopback: 127.0.0.1 is a loopback address');
    });

    it('--map-guest-addr', () => {
      expect(bytes(parse('--map-guest-addr', '192.0.2.9').network.mapGuestAddr4)).to.deep.equal([192, 0, 2, 9]);
      expect(parse('--map-guest-addr', 'none').network.mapGuestAddr6).to.equal('none');
      expect(errorOf('--map-guest-addr', 'ff02::1')).to.equal('--map-guest-addr: ff02::1 is a multicast address');
    });
  });

  describe('services and protocols', () => {
    it('--no-* switches', () => {
      const o = parse('--no-dhcp', '--no-dhcpv6', '--no-ndp', '--no-ra', '--no-tcp', '--no-udp', '--no-icmp');
      expect(o.services).to.deep.include({ dhcp: false, dhcpv6: false, ndp: false, ra: false });
      expect(o.protocols).to.deep.equal({ tcp: false, udp: false, icmp: false });
    });

    it('forwarding a disabled protocol is refused', () => {
      expect(errorOf('--no-tcp', '-t', '22')).to.equal('-t: TCP port forwarding requested but --no-tcp was given');
      expect(errorOf('-u', '53', '--no-udp')).to.equal('-u: UDP port forwarding requested but --no-udp was given');
      expect(() => parse('--no-tcp', '-t', 'none')).to.throw(OptionError);
    });
  });

  describe('forwarding', () => {
    it('-t/-u repeatable, long forms too', () => {
      const o = parse('-t', '22', '--tcp-ports', '80:8080', '-u', '53', '--udp-ports=5000-5010');
      expect(o.forwards.tcp.map((s) => s.text)).to.deep.equal(['22', '80:8080']);
      expect(o.forwards.udp[1].mappings[0]).to.deep.equal({ hostPortFirst: 5000, hostPortLast: 5010, guestPortFirst: 5000 });
    });

    it('-t all uses the ephemeral range from the environment', () => {
      const { options } = parseOptions(['-t', 'all'], { ephemeral: { first: 32768, last: 60999 } });
      expect(options.forwards.tcp[0].mode).to.equal('all');
      expect(options.forwards.tcp[0].mappings[0]).to.deep.equal({ hostPortFirst: 1, hostPortLast: 32767, guestPortFirst: 1 });
    });

    it('-T/-U (pasta): auto allowed, bind addresses and all refused', () => {
      const o = parse('-T', 'auto', '--udp-ns', '53');
      expect(o.forwards.tcpNs[0].mode).to.equal('auto');
      expect(o.forwards.udpNs[0].mappings.length).to.equal(1);
      expect(parse('--tcp-ns', '8080').forwards.tcpNs.length).to.equal(1);
      expect(errorOf('-T', 'all')).to.match(/^-T: 'all' is only allowed/);
      expect(errorOf('-U', '192.0.2.1/53')).to.match(/^-U: a bind address or interface is not allowed/);
    });

    it('bad specs and conflicts name the option', () => {
      expect(errorOf('-t', '0')).to.equal("-t: port 0 cannot be forwarded in '0'");
      expect(errorOf('--tcp-ports', '80-22')).to.equal("--tcp-ports: range 80-22 runs backwards in '80-22'");
      expect(errorOf('-t', 'auto')).to.match(/^-t: 'auto' is only allowed for namespace forwarding/);
      expect(errorOf('-t', '22', '-t', 'none')).to.equal("-t: 'none' conflicts with the earlier '22'");
      expect(errorOf('-u', 'all', '-u', '53')).to.equal("-u: '53' conflicts with the earlier 'all'");
    });

    it('--freebind', () => {
      expect(parse('--freebind').freebind).to.equal(true);
    });
  });

  describe('limits', () => {
    it('--max-flows and --udp-timeout', () => {
      expect(parse('--max-flows', '100').maxFlows).to.equal(100);
      expect(parse('--udp-timeout', '30').udpTimeoutSeconds).to.equal(30);
      expect(errorOf('--max-flows', '0')).to.match(/^--max-flows: 0 is out of range \(1-/);
      expect(errorOf('--udp-timeout', '86401')).to.equal('--udp-timeout: 86401 is out of range (1-86400)');
      expect(errorOf('--udp-timeout', '1.5')).to.equal("--udp-timeout: '1.5' is not a number");
    });
  });

  describe('helpers', () => {
    it('parseMetricsEndpoint', () => {
      expect(parseMetricsEndpoint('[::1]:9100')).to.deep.equal({ kind: 'tcp', host: '::1', port: 9100 });
      expect(parseMetricsEndpoint('localhost:0')).to.deep.equal({ kind: 'tcp', host: 'localhost', port: 0 });
      expect(() => parseMetricsEndpoint('::1:9100')).to.throw(OptionError, /brackets/);
      expect(() => parseMetricsEndpoint(':9100')).to.throw(OptionError, /missing host/);
      expect(() => parseMetricsEndpoint('127.0.0.1:')).to.throw(OptionError, /missing port/);
      expect(() => parseMetricsEndpoint('127.0.0.1:70000')).to.throw(OptionError, /out of range/);
      expect(() => parseMetricsEndpoint('unix:')).to.throw(OptionError, /empty path/);
      expect(() => parseMetricsEndpoint('[192.0.2.1]:80')).to.throw(OptionError, /not an IPv6 address/);
    });

    it('defaultInstanceName', () => {
      expect(defaultInstanceName('/run/a/vm.sock', null)).to.equal('vm');
      expect(defaultInstanceName('/run/a/vm', null)).to.equal('vm');
      expect(defaultInstanceName('/run/a/.hidden', null)).to.equal('.hidden');
      expect(defaultInstanceName(null, 9)).to.equal('fd9');
      expect(defaultInstanceName(null, null)).to.equal('ferry');
    });

    it('readEphemeralRange reads the sysctl file or falls back', () => {
      const dir = mkdtempSync(join(tmpdir(), 'ferry-options-'));
      try {
        const file = join(dir, 'range');
        writeFileSync(file, '32768\t60999\n');
        expect(readEphemeralRange(file)).to.deep.equal({ first: 32768, last: 60999 });
        writeFileSync(file, 'garbage');
        expect(readEphemeralRange(file)).to.deep.equal({ first: 49152, last: 65535 });
        expect(readEphemeralRange(join(dir, 'missing'))).to.deep.equal({ first: 49152, last: 65535 });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('optionHelp lists every option once with its names', () => {
      const lines = optionHelp();
      const names = lines.map(([left]) => left);
      expect(names).to.include('-s, --socket, --socket-path PATH');
      expect(names).to.include('-F, --fd FD');
      expect(names).to.include('-t, --tcp-ports SPEC');
      expect(names).to.include('--no-map-gw');
      for (const [, help] of lines) expect(help.length).to.be.greaterThan(0);
      expect(new Set(names).size).to.equal(names.length);
    });
  });
});
