import { expect } from 'chai';
import { descriptorLimitFailure, descriptorLimitMessage, isDescriptorExhaustion, openFileLimit } from '../../../../src/stack/l4/fd-limit';

describe('l4/fd-limit', () => {
  it('EMFILE and ENFILE are exhaustion; other bind errors are not', () => {
    expect(['EMFILE', 'ENFILE'].map(isDescriptorExhaustion)).to.deep.equal([true, true]);
    expect(['EADDRINUSE', 'EACCES', ''].map(isDescriptorExhaustion)).to.deep.equal([false, false, false]);
  });

  it('reads the soft limit from /proc/self/limits text', () => {
    const text = 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            256                  4096                 files\n';
    expect(openFileLimit(text)).to.equal('256');
    expect(openFileLimit('Max open files            unlimited            unlimited            files')).to.equal('unlimited');
    expect(openFileLimit('nothing here')).to.equal(null);
    // This process's own, read from /proc.
    expect(openFileLimit()).to.match(/^(\d+|unlimited)$/);
  });

  it('names the option, the spec, the code, the count and the limit', () => {
    const line = descriptorLimitMessage('-t', 'all', 'EMFILE', 231, '256');
    expect(line).to.equal('-t all: out of file descriptors (EMFILE) after 231 listening sockets; the open-file limit (RLIMIT_NOFILE) is 256: raise it (ulimit -n) or forward fewer ports');
    expect(descriptorLimitMessage('-u', '1-3000', 'ENFILE', 0, null)).to.match(/^-u 1-3000: the system-wide file table is full \(ENFILE\) after 0 listening sockets: raise/);
  });

  it('a result is fatal only when its last error is exhaustion', () => {
    expect(descriptorLimitFailure('-t', 'all', { opened: 3, errors: [] })).to.equal(null);
    expect(descriptorLimitFailure('-t', '80', { opened: 0, errors: [{ code: 'EADDRINUSE' }] })).to.equal(null);
    const fatal = descriptorLimitFailure('-u', 'all', { opened: 9, errors: [{ code: 'EADDRINUSE' }, { code: 'EMFILE' }] });
    expect(fatal?.name).to.equal('DescriptorLimitError');
    expect(fatal?.message).to.match(/^-u all: out of file descriptors \(EMFILE\) after 9 listening sockets/);
    // Logged with its stack, it is still the one line.
    expect(fatal?.stack).to.equal(`DescriptorLimitError: ${fatal?.message}`);
  });
});
