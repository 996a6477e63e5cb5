/**
 * src/sys/linux.ts declares Linux constants by value so that modules need no
 * addon to use them; here each value is checked against the addon's, which
 * the C compiler took from the kernel's headers.
 */
import { expect } from 'chai';
import * as linux from '../../../src/sys/linux';
import { native } from '../../../src/sys/native';

/** Names whose addon spelling differs from ours. */
const ADDON_NAME: Record<string, string> = { TCP_STATE_LISTEN: '' };

describe('sys/linux: constants', () => {
  const declared = Object.entries(linux).filter(([, v]) => typeof v === 'number') as [string, number][];

  it('declares each name once, with a number', () => {
    expect(declared.length).to.be.greaterThan(50);
  });

  it('matches every value the addon exports from the C headers', () => {
    const checked: string[] = [];
    for (const [name, value] of declared) {
      const addonName = ADDON_NAME[name] ?? name;
      if (addonName === '') continue;
      const addonValue = native.constants[addonName];
      if (addonValue === undefined) continue;
      // The addon reports EPOLLET as the int32 it is in epoll batches; so does linux.ts.
      expect(value, name).to.equal(addonValue | 0);
      checked.push(name);
    }
    // Most of the list is exported by the addon; a drop here means the comparison silently stopped.
    expect(checked.length, checked.join(' ')).to.be.greaterThan(40);
  });

  it('keeps TCP_LISTEN, the state number /proc/net/tcp shows for a listening socket', () => {
    expect(linux.TCP_STATE_LISTEN).to.equal(10);
  });
});
