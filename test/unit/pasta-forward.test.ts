import { expect } from 'chai';
import { expandForwards, loopbackSockaddr, MAX_FORWARDED_PORTS } from '../../src/backend/pasta-forward';
import { parseForwardSpec } from '../../src/stack/forward-spec';

const NS_RULES = { allowBindAddress: false, allowAll: false, allowAuto: true };

describe('pasta -T/-U port expansion', () => {
  it('ports, ranges and remaps become (listen, target) pairs', () => {
    const specs = [parseForwardSpec('22,8000-8002:9000-9002', NS_RULES)];
    expect(expandForwards(specs)).to.deep.equal([
      { listenPort: 22, targetPort: 22 },
      { listenPort: 8000, targetPort: 9000 },
      { listenPort: 8001, targetPort: 9001 },
      { listenPort: 8002, targetPort: 9002 },
    ]);
  });

  it('a later spec for the same port wins; none and auto add nothing', () => {
    const specs = [parseForwardSpec('80', NS_RULES), parseForwardSpec('none', NS_RULES), parseForwardSpec('auto', NS_RULES), parseForwardSpec('80:8080', NS_RULES)];
    expect(expandForwards(specs)).to.deep.equal([{ listenPort: 80, targetPort: 8080 }]);
  });

  it('refuses more ports than it can open sockets for', () => {
    expect(() => expandForwards([parseForwardSpec(`1-${MAX_FORWARDED_PORTS + 1}`, NS_RULES)])).to.throw(/more than 4096/);
    expect(expandForwards([parseForwardSpec(`1-${MAX_FORWARDED_PORTS}`, NS_RULES)])).to.have.length(MAX_FORWARDED_PORTS);
  });

  it('loopback sockaddrs: 127.0.0.1 and ::1 with the port in network order', () => {
    const v4 = loopbackSockaddr(4, 0x1234);
    expect(v4).to.have.length(16);
    expect([...v4.subarray(2, 8)]).to.deep.equal([0x12, 0x34, 127, 0, 0, 1]);
    const v6 = loopbackSockaddr(6, 80);
    expect(v6).to.have.length(28);
    expect([v6[2], v6[3], v6[23]]).to.deep.equal([0, 80, 1]);
  });
});
