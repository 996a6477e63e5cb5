/**
 * The options of passt(1) ferry did not have before: each either does what
 * passt's does or is refused with one line naming it (never accepted and
 * dropped).
 */
import { expect } from 'chai';
import { OptionError, parseOptions } from '../../../../src/backend/cli/options';
import { parsePastaCommandLine } from '../../../../src/backend/cli/pasta-options';

function errorOf(argv: string[], pasta = false): string {
  try {
    if (pasta) parsePastaCommandLine(argv);
    else parseOptions(argv);
  } catch (error) {
    expect(error).to.be.instanceOf(OptionError);
    const message = (error as Error).message;
    expect(message).to.not.include('\n');
    return message;
  }
  return expect.fail(`no error for ${argv.join(' ')}`);
}

describe('passt(1) options without a ferry counterpart before', () => {
  describe('refused, naming the option', () => {
    const refused: string[][] = [
      ['--stats', '5'],
      ['--conf-path', '/tmp/x'],
      ['-c', '/tmp/x'],
      ['--migrate-exit'],
      ['--migrate-no-linger'],
      ['--host-lo-to-ns-lo'],
      ['--ns-mac-addr', '02:00:00:00:00:01'],
      ['--splice-only'],
      ['--repair-path', '/tmp/repair.sock'],
    ];
    for (const argv of refused) {
      it(`${argv.join(' ')}`, () => {
        const message = errorOf(argv);
        expect(message.startsWith(`${argv[0]}: not supported by ferry: `), message).to.equal(true);
        // The same in pasta mode, where the option reaches the shared parser.
        expect(errorOf(argv, true)).to.equal(message);
      });
    }

    it('a refused option in a bundle of short flags is named too', () => {
      expect(errorOf(['-1c', '/tmp/x'])).to.match(/^-c: not supported by ferry/);
    });

    it('--version after a refused option still fails (rootlesskit probes --host-lo-to-ns-lo --version)', () => {
      expect(errorOf(['--host-lo-to-ns-lo', '--version'])).to.match(/^--host-lo-to-ns-lo: /);
    });
  });

  describe('real', () => {
    it('--repair-path none: no repair socket, which is what ferry has', () => {
      expect(parseOptions(['--repair-path', 'none']).action).to.equal('run');
    });

    it('--chroot-fallback is accepted and says why it has nothing to do', () => {
      const parsed = parseOptions(['--chroot-fallback']);
      expect(parsed.notes.some((note) => note.startsWith('--chroot-fallback: '))).to.equal(true);
    });

    it('--dhcp-dns and --dhcp-search undo --no-dhcp-dns and --no-dhcp-search given before them', () => {
      const off = parseOptions(['--no-dhcp-dns', '--no-dhcp-search']).options.services;
      expect([off.dhcpDns, off.dhcpSearch]).to.deep.equal([false, false]);
      const on = parseOptions(['--no-dhcp-dns', '--no-dhcp-search', '--dhcp-dns', '--dhcp-search']).options.services;
      expect([on.dhcpDns, on.dhcpSearch]).to.deep.equal([true, true]);
      const pasta = parsePastaCommandLine(['--no-dhcp-dns', '--dhcp-dns', '--netns', '/run/netns/x']).parsed.options.services;
      expect(pasta.dhcpDns).to.equal(true);
    });

    it('-a ADDR/PREFIX sets the IPv4 prefix length, as -n would', () => {
      const o = parseOptions(['-a', '192.0.2.10/26']).options.network;
      expect(Array.from(o.address4 as Uint8Array)).to.deep.equal([192, 0, 2, 10]);
      expect(o.prefixLength4).to.equal(26);
    });

    it('-a IPv6/PREFIX is checked, and leaves the IPv4 prefix alone', () => {
      const o = parseOptions(['-a', '2001:db8::5/64']).options.network;
      expect(o.address6?.length).to.equal(16);
      expect(o.prefixLength4).to.equal(null);
      expect(errorOf(['-a', '2001:db8::5/129'])).to.match(/^-a: 129 is out of range/);
    });

    it('-a with a prefix and -n together are refused, in either order', () => {
      expect(errorOf(['-a', '192.0.2.10/24', '-n', '24'])).to.match(/^-n: prefix length given twice/);
      expect(errorOf(['-n', '24', '-a', '192.0.2.10/24'])).to.match(/^-a: prefix length given twice/);
      expect(errorOf(['-a', '192.0.2.10/33'])).to.match(/^-a: \/33 is not an IPv4 prefix length/);
      expect(errorOf(['-a', '192.0.2.10/x'])).to.match(/^-a: 'x' is not a number/);
    });

    it('--freebind marks every -t/-u spec, given before or after it (the listeners set IP_FREEBIND)', () => {
      const o = parseOptions(['-t', '192.0.2.99/10020', '--freebind', '-u', '10021']).options;
      expect(o.forwards.tcp.map((spec) => spec.freebind)).to.deep.equal([true]);
      expect(o.forwards.udp.map((spec) => spec.freebind)).to.deep.equal([true]);
      expect(parseOptions(['-t', '10020']).options.forwards.tcp[0].freebind).to.not.equal(true);
    });

    it('pasta --netns-only and --no-netns-quit', () => {
      const plain = parsePastaCommandLine(['1234']).pasta;
      expect([plain.netns, plain.netnsOnly, plain.netnsQuit]).to.deep.equal(['1234', false, true]);
      const given = parsePastaCommandLine(['--netns-only', '--no-netns-quit', '1234']).pasta;
      expect([given.netns, given.netnsOnly, given.netnsQuit]).to.deep.equal(['1234', true, false]);
    });

    it('pasta --no-copy-routes and --no-copy-addrs (deprecated) are what --config-net does anyway', () => {
      const { parsed, pasta } = parsePastaCommandLine(['--config-net', '--no-copy-routes', '--no-copy-addrs', '--netns', '/run/netns/x']);
      expect(parsed.action).to.equal('run');
      expect(pasta.configNet).to.equal(true);
    });
  });
});
