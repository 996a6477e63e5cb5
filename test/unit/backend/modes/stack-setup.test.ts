/**
 * The TCP ports ferry itself listens on that the guest could reach through
 * the loopback maps (stack-setup.ts ownTcpPortsOf, StackConfig.ownTcpPorts).
 */
import { expect } from 'chai';
import { ownTcpPortsOf } from '../../../../src/backend/modes/stack-setup';
import { parseMetricsEndpoint } from '../../../../src/backend/cli/options';

describe('stack-setup: ownTcpPortsOf', () => {
  it('lists --metrics on a loopback address, localhost or a wildcard', () => {
    for (const text of ['127.0.0.1:9100', '[::1]:9100', '0.0.0.0:9100', '[::]:9100', 'localhost:9100', '127.8.9.10:9100']) {
      expect(ownTcpPortsOf(parseMetricsEndpoint(text)), text).to.deep.equal([9100]);
    }
  });

  it('leaves out other addresses, port 0 (not known yet), UNIX sockets and no --metrics', () => {
    for (const text of ['192.0.2.1:9100', '[2001:db8::1]:9100', 'metrics.example:9100', '127.0.0.1:0', 'unix:/run/ferry/metrics.sock']) {
      expect(ownTcpPortsOf(parseMetricsEndpoint(text)), text).to.deep.equal([]);
    }
    expect(ownTcpPortsOf(null)).to.deep.equal([]);
  });
});
