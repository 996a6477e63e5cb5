import { expect } from 'chai';
import {
  confine,
  type Identity,
  type IsolationContext,
  IsolationError,
  type IsolationPlan,
  type IsolationSystem,
  nobodyIdentity,
  planIsolation,
  resolveRunas,
  targetIdentity,
} from '../../../../src/backend/cli/isolation';
import { OptionError, parseOptions } from '../../../../src/backend/cli/options';
import { parsePastaCommandLine } from '../../../../src/backend/cli/pasta-options';

const PASSWD = ['root:x:0:0:root:/root:/bin/bash', 'daemon:x:1:1::/usr/sbin:/usr/sbin/nologin', 'qemu:x:107:113::/var/lib/qemu:/bin/false', 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin', ''].join('\n');
const GROUP = ['root:x:0:', 'kvm:x:104:qemu', 'qemu:x:113:', 'nogroup:x:65534:', ''].join('\n');

function context(euid: number, extra: Partial<IsolationContext> = {}): IsolationContext {
  return { euid, egid: euid, passwd: PASSWD, group: GROUP, ...extra };
}

/** The one-line IsolationError message `f` throws. */
function isolationErrorOf(f: () => unknown): string {
  try {
    f();
  } catch (error) {
    expect(error).to.be.instanceOf(IsolationError);
    expect((error as Error).message).to.not.include('\n');
    return (error as Error).message;
  }
  return expect.fail('no IsolationError');
}

describe('cli/isolation', () => {
  describe('--runas parsing (options)', () => {
    it('accepts UID, UID:GID, LOGIN and LOGIN:GROUP', () => {
      for (const value of ['65534', '107:104', 'qemu', 'qemu:kvm', 'svc-user_1', 'a.b$']) {
        expect(parseOptions(['--runas', value]).options.runas).to.equal(value);
      }
      expect(parseOptions(['--runas=0']).options.runas).to.equal('0');
    });

    it('refuses malformed values with one line naming the option', () => {
      for (const value of ['', 'a:b:c', 'user:', ':group', 'bad name', '-x', '4294967295']) {
        expect(() => parseOptions(['--runas', value]), value).to.throw(OptionError, /^--runas: /);
      }
    });

    it('--seccomp-log is off unless given, and shared with pasta', () => {
      expect(parseOptions([]).options.seccompLog).to.equal(false);
      expect(parseOptions(['--seccomp-log']).options.seccompLog).to.equal(true);
      expect(parsePastaCommandLine(['--seccomp-log', '--', 'true']).parsed.options.seccompLog).to.equal(true);
      expect(() => parseOptions(['--seccomp-log=1'])).to.throw(OptionError);
    });
  });

  describe('identity', () => {
    it('resolves names and numbers; a user alone brings its primary group', () => {
      expect(resolveRunas('qemu', PASSWD, GROUP)).to.deep.equal({ uid: 107, gid: 113 });
      expect(resolveRunas('qemu:kvm', PASSWD, GROUP)).to.deep.equal({ uid: 107, gid: 104 });
      expect(resolveRunas('107', PASSWD, GROUP)).to.deep.equal({ uid: 107, gid: 113 });
      expect(resolveRunas('107:5', PASSWD, GROUP)).to.deep.equal({ uid: 107, gid: 5 });
      // A number with no passwd entry: the same number as group (as passt does).
      expect(resolveRunas('4000', PASSWD, GROUP)).to.deep.equal({ uid: 4000, gid: 4000 });
    });

    it('an unknown user or group is refused with one line', () => {
      expect(isolationErrorOf(() => resolveRunas('nosuchuser', PASSWD, GROUP))).to.equal('--runas: no user named nosuchuser');
      expect(isolationErrorOf(() => resolveRunas('qemu:nosuchgroup', PASSWD, GROUP))).to.equal('--runas: no group named nosuchgroup');
    });

    it('nobody from the tables, or 65534:65534 without an entry', () => {
      expect(nobodyIdentity(PASSWD, GROUP)).to.deep.equal({ uid: 65534, gid: 65534 });
      expect(nobodyIdentity('nobody:x:99:99::/:/sbin/nologin\n', '')).to.deep.equal({ uid: 99, gid: 99 });
      expect(nobodyIdentity('', '')).to.deep.equal({ uid: 65534, gid: 65534 });
    });

    it('root without --runas becomes nobody; --runas wins; --runas 0 keeps root', () => {
      expect(targetIdentity(null, context(0))).to.deep.equal({ uid: 65534, gid: 65534 });
      expect(targetIdentity('qemu', context(0))).to.deep.equal({ uid: 107, gid: 113 });
      expect(targetIdentity('0', context(0))).to.equal(null);
    });

    it('a user who is not root keeps their identity, and cannot ask for another', () => {
      expect(targetIdentity(null, context(1000))).to.equal(null);
      expect(targetIdentity('1000', context(1000))).to.equal(null);
      expect(isolationErrorOf(() => targetIdentity('qemu', context(1000)))).to.match(/^--runas: only root can change to another user/);
    });
  });

  describe('plan', () => {
    const daemon = (argv: string[] = []) => parseOptions(argv).options;

    it('root: empty root, Landlock, nobody, seccomp that kills', () => {
      const plan = planIsolation('vhost-user', daemon(), context(0));
      expect(plan).to.deep.equal({ emptyRoot: true, landlock: true, identity: { uid: 65534, gid: 65534 }, seccompLog: false, namespaceHelpers: false, skipped: [] });
    });

    it('not root: no empty root (said why), Landlock and seccomp still', () => {
      const plan = planIsolation('stream', daemon(['--seccomp-log']), context(1000));
      expect(plan.emptyRoot).to.equal(false);
      expect(plan.landlock).to.equal(true);
      expect(plan.identity).to.equal(null);
      expect(plan.seccompLog).to.equal(true);
      expect(plan.skipped.join('\n')).to.match(/empty root: needs root/);
    });

    it('--log-file needs no path after setup (its fd is opened before, rotation is in place): an empty root all the same', () => {
      const logFile = planIsolation('vhost-user', daemon(['--log-file', '/var/log/ferry.log']), context(0));
      expect([logFile.emptyRoot, logFile.landlock]).to.deep.equal([true, true]);
      expect(logFile.skipped).to.deep.equal([]);
      expect(logFile.identity).to.deep.equal({ uid: 65534, gid: 65534 });
    });

    it('pasta: the namespace helper calls are allowed; auto forwarding and a watched PID keep /proc', () => {
      const plain = parsePastaCommandLine(['--config-net', '--', 'true']);
      const planned = planIsolation('pasta', plain.parsed.options, context(0), plain.pasta);
      expect([planned.emptyRoot, planned.namespaceHelpers]).to.deep.equal([true, true]);
      const auto = parsePastaCommandLine(['-t', 'auto', '--', 'true']);
      expect(planIsolation('pasta', auto.parsed.options, context(0), auto.pasta).skipped).to.deep.equal(['filesystem: kept in view, auto forwarding reads /proc']);
      const watched = parsePastaCommandLine(['4242']);
      expect(planIsolation('pasta', watched.parsed.options, context(0), watched.pasta).skipped).to.deep.equal(['filesystem: kept in view, the joined process is watched through /proc']);
    });

    it('pasta joining a namespace with a command keeps the user it runs the command as, unless --runas says otherwise', () => {
      const joined = parsePastaCommandLine(['--netns', '/run/netns/x', '--', 'true']);
      const plan = planIsolation('pasta', joined.parsed.options, context(0), joined.pasta);
      expect(plan.identity).to.equal(null);
      expect(plan.skipped[0]).to.match(/^identity: kept/);
      const asked = parsePastaCommandLine(['--runas', 'qemu', '--netns', '/run/netns/x', '--', 'true']);
      expect(planIsolation('pasta', asked.parsed.options, context(0), asked.pasta).identity).to.deep.equal({ uid: 107, gid: 113 });
    });

    it('an unknown --runas user stops the plan', () => {
      expect(isolationErrorOf(() => planIsolation('vhost-user', daemon(['--runas', 'ghost']), context(0)))).to.equal('--runas: no user named ghost');
    });
  });

  describe('confine: the order of the steps', () => {
    function recorder(boundingEmpty = true, landlockAbi = 4): { system: IsolationSystem; calls: string[] } {
      const calls: string[] = [];
      const system: IsolationSystem = {
        chrootEmpty: () => void calls.push('chroot'),
        dropBoundingSet: () => (calls.push('bounding'), boundingEmpty),
        setIdentity: (identity: Identity) => void calls.push(`identity ${identity.uid}:${identity.gid}`),
        clearCapabilities: () => void calls.push('capabilities'),
        noNewPrivs: () => void calls.push('no_new_privs'),
        dumpable: (on) => void calls.push(`dumpable ${on}`),
        landlock: () => (calls.push('landlock'), landlockAbi),
        seccomp: (helpers, logOnly) => void calls.push(`seccomp helpers=${helpers} log=${logOnly}`),
      };
      return { system, calls };
    }
    const full: IsolationPlan = { emptyRoot: true, landlock: true, identity: { uid: 65534, gid: 65534 }, seccompLog: false, namespaceHelpers: false, skipped: [] };

    it('chroot needs the privileges the later steps drop; capabilities go after the uid change; seccomp last', () => {
      const { system, calls } = recorder();
      const lines = confine(full, system);
      expect(calls).to.deep.equal(['chroot', 'bounding', 'identity 65534:65534', 'capabilities', 'no_new_privs', 'dumpable false', 'landlock', 'seccomp helpers=false log=false']);
      expect(lines.join('\n')).to.match(/bounding set empty/).and.match(/Landlock ABI 4/).and.match(/kill the process/);
    });

    it('skipped steps are not taken; the rest keep their order', () => {
      const { system, calls } = recorder(false, 0);
      const lines = confine({ ...full, emptyRoot: false, identity: null, seccompLog: true, namespaceHelpers: true }, system);
      expect(calls).to.deep.equal(['bounding', 'capabilities', 'no_new_privs', 'dumpable false', 'landlock', 'seccomp helpers=true log=true']);
      expect(lines.join('\n')).to.match(/bounding set kept/).and.match(/Landlock: not in this kernel/).and.match(/logged \(--seccomp-log\)/);
    });

    it('a step the kernel refuses stops there: no later step runs', () => {
      const { system, calls } = recorder();
      system.setIdentity = () => {
        throw new Error('setuid: EPERM');
      };
      expect(() => confine(full, system)).to.throw(/EPERM/);
      expect(calls).to.deep.equal(['chroot', 'bounding']);
    });
  });
});
