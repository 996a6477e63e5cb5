import { expect } from 'chai';
import {
  checkForwardSpecCombination,
  DEFAULT_EPHEMERAL_RANGE,
  ForwardSpecError,
  forwardedPortCount,
  guestPortFor,
  parseEphemeralRange,
  parseForwardSpec,
} from '../../../../src/stack/flow/forward-spec';

const mappingsOf = (spec: string) => parseForwardSpec(spec).mappings;

describe('forward-spec', () => {
  describe('keywords', () => {
    it('none forwards nothing', () => {
      const spec = parseForwardSpec('none');
      expect(spec.mode).to.equal('none');
      expect(spec.mappings).to.deep.equal([]);
    });

    it('auto is a mode without mappings, refused where not allowed', () => {
      expect(parseForwardSpec('auto').mode).to.equal('auto');
      expect(() => parseForwardSpec('auto', { allowAuto: false })).to.throw(ForwardSpecError, /auto/);
    });

    it('all skips port 0 and the ephemeral range', () => {
      const spec = parseForwardSpec('all', { ephemeral: { first: 32768, last: 60999 } });
      expect(spec.mode).to.equal('all');
      expect(spec.bestEffort).to.equal(true);
      expect(spec.mappings).to.deep.equal([
        { hostPortFirst: 1, hostPortLast: 32767, guestPortFirst: 1 },
        { hostPortFirst: 61000, hostPortLast: 65535, guestPortFirst: 61000 },
      ]);
      expect(guestPortFor(spec.mappings, 40000)).to.equal(-1);
      expect(guestPortFor(spec.mappings, 22)).to.equal(22);
    });

    it('all with the default (RFC 6335) ephemeral range ends at 49151', () => {
      const spec = parseForwardSpec('all');
      expect(spec.mappings).to.deep.equal([{ hostPortFirst: 1, hostPortLast: DEFAULT_EPHEMERAL_RANGE.first - 1, guestPortFirst: 1 }]);
      expect(() => parseForwardSpec('all', { allowAll: false })).to.throw(ForwardSpecError, /all/);
    });
  });

  describe('port lists', () => {
    it('single port', () => {
      expect(mappingsOf('22')).to.deep.equal([{ hostPortFirst: 22, hostPortLast: 22, guestPortFirst: 22 }]);
    });

    it('remapped port 22:23', () => {
      const mappings = mappingsOf('22:23');
      expect(guestPortFor(mappings, 22)).to.equal(23);
      expect(guestPortFor(mappings, 23)).to.equal(-1);
    });

    it('list 22,25 and range 22-80', () => {
      expect(mappingsOf('22,25')).to.deep.equal([
        { hostPortFirst: 22, hostPortLast: 22, guestPortFirst: 22 },
        { hostPortFirst: 25, hostPortLast: 25, guestPortFirst: 25 },
      ]);
      const range = mappingsOf('22-80');
      expect(range).to.deep.equal([{ hostPortFirst: 22, hostPortLast: 80, guestPortFirst: 22 }]);
      expect(forwardedPortCount(range)).to.equal(59);
    });

    it('adjacent identity items merge into one run', () => {
      expect(mappingsOf('10-19,20,21-30')).to.deep.equal([{ hostPortFirst: 10, hostPortLast: 30, guestPortFirst: 10 }]);
    });

    it('range remap 22-80:32-90 shifts every port', () => {
      const mappings = mappingsOf('22-80:32-90');
      expect(mappings).to.deep.equal([{ hostPortFirst: 22, hostPortLast: 80, guestPortFirst: 32 }]);
      expect(guestPortFor(mappings, 22)).to.equal(32);
      expect(guestPortFor(mappings, 50)).to.equal(60);
      expect(guestPortFor(mappings, 80)).to.equal(90);
      expect(guestPortFor(mappings, 81)).to.equal(-1);
      expect(guestPortFor(mappings, 21)).to.equal(-1);
    });

    it('exclusions punch holes, before or after the range', () => {
      const expected = [
        { hostPortFirst: 2000, hostPortLast: 2999, guestPortFirst: 2000 },
        { hostPortFirst: 3011, hostPortLast: 5000, guestPortFirst: 3011 },
      ];
      expect(mappingsOf('2000-5000,~3000-3010')).to.deep.equal(expected);
      expect(mappingsOf('~3000-3010,2000-5000')).to.deep.equal(expected);
    });

    it('exclusions inside a remapped range keep the offset of the rest', () => {
      const mappings = mappingsOf('1000-1010:2000-2010,~1005');
      expect(guestPortFor(mappings, 1004)).to.equal(2004);
      expect(guestPortFor(mappings, 1005)).to.equal(-1);
      expect(guestPortFor(mappings, 1006)).to.equal(2006);
    });

    it('exclusion-only spec forwards every other non-ephemeral port', () => {
      const spec = parseForwardSpec('~20000-20010', { ephemeral: { first: 49152, last: 65535 } });
      expect(spec.bestEffort).to.equal(true);
      expect(spec.mappings).to.deep.equal([
        { hostPortFirst: 1, hostPortLast: 19999, guestPortFirst: 1 },
        { hostPortFirst: 20011, hostPortLast: 49151, guestPortFirst: 20011 },
      ]);
    });

    it('a later overlapping range wins, as in passt', () => {
      const mappings = mappingsOf('100-110,105:205');
      expect(guestPortFor(mappings, 104)).to.equal(104);
      expect(guestPortFor(mappings, 105)).to.equal(205);
      expect(guestPortFor(mappings, 106)).to.equal(106);
    });

    it('the ends of the port space are usable', () => {
      expect(guestPortFor(mappingsOf('1'), 1)).to.equal(1);
      expect(guestPortFor(mappingsOf('65535:1'), 65535)).to.equal(1);
    });
  });

  describe('bind address and interface', () => {
    it('IPv4 address prefix', () => {
      const spec = parseForwardSpec('192.0.2.1/22');
      expect(Array.from(spec.bindAddress ?? [])).to.deep.equal([192, 0, 2, 1]);
      expect(spec.interfaceName).to.equal(null);
      expect(spec.mappings).to.deep.equal([{ hostPortFirst: 22, hostPortLast: 22, guestPortFirst: 22 }]);
    });

    it('IPv6 address, bare or in brackets', () => {
      for (const text of ['2001:db8::1/22', '[2001:db8::1]/22']) {
        const spec = parseForwardSpec(text);
        expect(spec.bindAddress?.length).to.equal(16);
        expect(spec.bindAddress?.[0]).to.equal(0x20);
        expect(spec.bindAddress?.[15]).to.equal(1);
      }
      expect(parseForwardSpec('::1/22').bindAddress?.[15]).to.equal(1);
    });

    it('address with interface, and interface alone', () => {
      const both = parseForwardSpec('192.0.2.1%eth0/22');
      expect(both.interfaceName).to.equal('eth0');
      expect(both.bindAddress?.length).to.equal(4);
      const onlyInterface = parseForwardSpec('%eth0/22');
      expect(onlyInterface.interfaceName).to.equal('eth0');
      expect(onlyInterface.bindAddress).to.equal(null);
    });

    it('address prefix with a ranged exclusion', () => {
      const spec = parseForwardSpec('192.0.2.1/20-30,~25');
      expect(spec.mappings).to.deep.equal([
        { hostPortFirst: 20, hostPortLast: 24, guestPortFirst: 20 },
        { hostPortFirst: 26, hostPortLast: 30, guestPortFirst: 26 },
      ]);
    });

    it('exclusion-only spec with a bind address', () => {
      const spec = parseForwardSpec('192.0.2.1/~25', { ephemeral: { first: 1000, last: 65535 } });
      expect(spec.bindAddress?.length).to.equal(4);
      expect(spec.mappings).to.deep.equal([
        { hostPortFirst: 1, hostPortLast: 24, guestPortFirst: 1 },
        { hostPortFirst: 26, hostPortLast: 999, guestPortFirst: 26 },
      ]);
    });

    it('bind prefix refused where not allowed (-T/-U)', () => {
      expect(() => parseForwardSpec('192.0.2.1/22', { allowBindAddress: false })).to.throw(ForwardSpecError, /not allowed/);
    });
  });

  describe('malformed specs', () => {
    const cases: Array<[string, RegExp]> = [
      ['', /empty/],
      ['abc', /'abc' is not a port number/],
      ['22,', /missing port number/],
      [',22', /missing port number/],
      ['22-', /missing port number/],
      ['-22', /missing port number/],
      ['0', /port 0/],
      ['65536', /out of range/],
      ['123456', /not a port number/],
      ['80-22', /runs backwards/],
      ['1000-1010:2000', /differ in length/],
      ['22:23-24', /differ in length/],
      ['22:', /missing port number/],
      ['22::23', /not a port number/],
      ['~25:26', /cannot be remapped/],
      ['~20-30,~25', /overlap at port 25/],
      ['22,~22', /every port is excluded/],
      ['300.0.2.1/22', /not an IPv4 or IPv6 address/],
      ['192.0.2.1/', /missing port number/],
      ['/22', /missing address or interface/],
      ['192.0.2.1%/22', /empty interface name/],
      ['%averyveryverylongname/22', /longer than 15/],
      ['+22', /not a port number/],
      [' 22', /not a port number/],
      ['22 ', /not a port number/],
      ['2001:db8::1:22', /not a port number/],
      ['NONE', /not a port number/],
    ];
    for (const [text, reason] of cases) {
      it(`rejects '${text}'`, () => {
        expect(() => parseForwardSpec(text)).to.throw(ForwardSpecError, reason);
      });
    }

    it('error messages are a single line', () => {
      for (const [text] of cases) {
        try {
          parseForwardSpec(text);
        } catch (error) {
          expect((error as Error).message).to.not.include('\n');
        }
      }
    });
  });

  describe('combining repeated options', () => {
    it('port lists combine; none/all/auto stand alone', () => {
      const first = parseForwardSpec('22');
      expect(() => checkForwardSpecCombination([first], parseForwardSpec('80'))).to.not.throw();
      expect(() => checkForwardSpecCombination([first], parseForwardSpec('all'))).to.throw(ForwardSpecError, /conflicts/);
      expect(() => checkForwardSpecCombination([parseForwardSpec('none')], first)).to.throw(ForwardSpecError, /conflicts with the earlier 'none'/);
      expect(() => checkForwardSpecCombination([], parseForwardSpec('all'))).to.not.throw();
    });
  });

  describe('guestPortFor', () => {
    it('finds ports in many runs', () => {
      const mappings = mappingsOf('1,3,5,7,9,11,13:113');
      expect([1, 2, 3, 9, 10, 13, 14].map((port) => guestPortFor(mappings, port))).to.deep.equal([1, -1, 3, 9, -1, 113, -1]);
      expect(guestPortFor([], 22)).to.equal(-1);
    });
  });

  describe('parseEphemeralRange', () => {
    it('parses the sysctl text', () => {
      expect(parseEphemeralRange('32768\t60999\n')).to.deep.equal({ first: 32768, last: 60999 });
      expect(parseEphemeralRange('60999 32768')).to.equal(null);
      expect(parseEphemeralRange('x')).to.equal(null);
      expect(parseEphemeralRange('0 100')).to.equal(null);
    });
  });
});
