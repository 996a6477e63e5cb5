/**
 * How ferry confines itself once setup is done, as passt does: which steps
 * apply, from the options and the way ferry was started, and in what order.
 * The system calls are in the addon (addon/isolate.cc); this module decides.
 *
 * The steps, in order (each needs what the previous ones take away):
 *   1. empty root: chroot into a detached, read-only, empty tmpfs (needs
 *      CAP_SYS_ADMIN and CAP_SYS_CHROOT, so only when started as root). It
 *      moves every thread at once because Node's threads share one fs_struct.
 *   2. bounding set emptied (needs CAP_SETPCAP, before leaving uid 0).
 *   3. identity: started as root, ferry becomes nobody (or --runas
 *      USER[:GROUP]); glibc applies the change to every thread, and leaving
 *      uid 0 clears every thread's permitted and effective capabilities.
 *   4. ambient, inheritable, permitted and effective capabilities zeroed;
 *      PR_SET_NO_NEW_PRIVS; PR_SET_DUMPABLE 0 (no core dumps of guest
 *      memory, /proc/PID owned by root).
 *   5. Landlock with no rule: no path can be opened at all, where the
 *      kernel has Landlock (the layer an unprivileged start relies on).
 *   6. seccomp allow-list on every thread (TSYNC); a call outside it kills
 *      the process, or with --seccomp-log is allowed and logged by the
 *      kernel (audit, dmesg: type=1326).
 *
 * Node runs several threads before any JavaScript, and a multi-threaded
 * process cannot unshare() or setns() into a user or mount namespace
 * (EINVAL), so ferry gets its empty root without new namespaces: the tmpfs
 * is detached (it belongs to no mount namespace) and nothing can be mounted
 * or created in it once the capabilities are gone.
 *
 * Steps 1 and 5 are skipped, each with a log line, where ferry still needs
 * paths after setup: `ferry pasta` with `auto` forwarding or a joined PID
 * to watch (both read /proc). The log file's fd, $NOTIFY_SOCKET and the
 * syslog socket are opened or connected before confinement, so logging and
 * sd_notify keep working without their paths.
 */
import { readFileSync } from 'fs';
import { closeQuietly } from '../../sys/close';
import { native } from '../../sys/native';
import type { DaemonOptions } from './options';
import type { PastaOptions } from './pasta-options';
import { systemdNotifyConnect } from './systemd';

/** Which front-end is being confined (pasta keeps a namespace helper and its children). */
export type IsolationMode = 'vhost-user' | 'stream' | 'pasta';

/** A uid and gid to run as. */
export interface Identity {
  uid: number;
  gid: number;
}

/** A --runas that cannot be honoured; the message is one line naming the option. */
export class IsolationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IsolationError';
  }
}

/** passt's fallback when the system has no "nobody" entry. */
export const NOBODY: Identity = { uid: 65534, gid: 65534 };

/** What the policy looks at, injectable for tests. */
export interface IsolationContext {
  /** Effective uid ferry was started with. */
  euid: number;
  egid: number;
  /** Contents of /etc/passwd and /etc/group (for --runas names and "nobody"). */
  passwd: string;
  group: string;
}

/** The steps to take, and why any was left out. */
export interface IsolationPlan {
  /** chroot into an empty tmpfs. */
  emptyRoot: boolean;
  /** Landlock with no rules. */
  landlock: boolean;
  /** Identity to switch to, or null to keep the current one. */
  identity: Identity | null;
  /** seccomp: a violation is logged (true) or kills the process (false). */
  seccompLog: boolean;
  /** pasta: the filter also allows setns/fork for the helper that opens sockets in the namespace. */
  namespaceHelpers: boolean;
  /** One log line per step left out. */
  skipped: string[];
}

/** The system calls the plan is carried out with (the addon; a recorder in unit tests). */
export interface IsolationSystem {
  chrootEmpty(): void;
  dropBoundingSet(): boolean;
  setIdentity(identity: Identity): void;
  clearCapabilities(): void;
  noNewPrivs(): void;
  dumpable(on: boolean): void;
  /** Returns the Landlock ABI used, 0 when the kernel has none. */
  landlock(): number;
  seccomp(namespaceHelpers: boolean, logOnly: boolean): void;
}

/** Fields of the /etc/passwd or /etc/group line whose first field is `name`, or null. */
function entry(table: string, name: string): string[] | null {
  for (const line of table.split('\n')) {
    const fields = line.split(':');
    if (fields.length >= 4 && fields[0] === name) return fields;
  }
  return null;
}

/** The id in field 2 of the line named `name`, or null. */
function idOf(table: string, name: string): number | null {
  const fields = entry(table, name);
  if (fields === null || !/^[0-9]+$/.test(fields[2])) return null;
  return Number(fields[2]);
}

/** The primary group (field 3) of the passwd line with uid `uid`, or null. */
function primaryGroupOfUid(passwd: string, uid: number): number | null {
  for (const line of passwd.split('\n')) {
    const fields = line.split(':');
    if (fields.length >= 4 && fields[2] === String(uid) && /^[0-9]+$/.test(fields[3])) return Number(fields[3]);
  }
  return null;
}

/**
 * --runas USER[:GROUP] as ids (passt's forms: UID, UID:GID, LOGIN,
 * LOGIN:GROUP). Without a group: the user's primary group, or for a number
 * with no passwd entry the same number. Throws IsolationError when a name
 * is unknown.
 */
export function resolveRunas(runas: string, passwd: string, group: string): Identity {
  const colon = runas.indexOf(':');
  const user = colon === -1 ? runas : runas.slice(0, colon);
  const groupName = colon === -1 ? null : runas.slice(colon + 1);
  let uid: number;
  let primary: number | null;
  if (/^[0-9]+$/.test(user)) {
    uid = Number(user);
    primary = primaryGroupOfUid(passwd, uid);
  } else {
    const fields = entry(passwd, user);
    if (fields === null || !/^[0-9]+$/.test(fields[2])) throw new IsolationError(`--runas: no user named ${user}`);
    uid = Number(fields[2]);
    primary = /^[0-9]+$/.test(fields[3]) ? Number(fields[3]) : null;
  }
  let gid: number;
  if (groupName === null) gid = primary ?? uid;
  else if (/^[0-9]+$/.test(groupName)) gid = Number(groupName);
  else {
    const found = idOf(group, groupName);
    if (found === null) throw new IsolationError(`--runas: no group named ${groupName}`);
    gid = found;
  }
  return { uid, gid };
}

/** "nobody" from the system's tables (its primary group, else "nogroup"/"nobody"), else 65534:65534. */
export function nobodyIdentity(passwd: string, group: string): Identity {
  const fields = entry(passwd, 'nobody');
  if (fields === null || !/^[0-9]+$/.test(fields[2])) return NOBODY;
  const gid = /^[0-9]+$/.test(fields[3]) ? Number(fields[3]) : idOf(group, 'nogroup') ?? idOf(group, 'nobody') ?? NOBODY.gid;
  return { uid: Number(fields[2]), gid };
}

/**
 * Who to run as: started as root, nobody unless --runas says otherwise (a
 * --runas 0 is honoured, as passt does); started as anyone else, --runas
 * may only name that same identity. null: keep the current one.
 */
export function targetIdentity(runas: string | null, context: IsolationContext): Identity | null {
  const wanted = runas !== null ? resolveRunas(runas, context.passwd, context.group) : context.euid === 0 ? nobodyIdentity(context.passwd, context.group) : null;
  if (wanted === null) return null;
  if (wanted.uid === context.euid && wanted.gid === context.egid) return null;
  if (context.euid !== 0) throw new IsolationError(`--runas: only root can change to another user (ferry runs as uid ${context.euid})`);
  return wanted;
}

/** pasta needs /proc after setup: `auto` forwarding scans it, a joined PID is watched through it. */
export function pastaNeedsProcfs(options: DaemonOptions, pasta: PastaOptions): string | null {
  const { tcp, udp, tcpNs, udpNs } = options.forwards;
  if ([...tcp, ...udp, ...tcpNs, ...udpNs].some((spec) => spec.mode === 'auto')) return 'auto forwarding reads /proc';
  if (pasta.netns !== null && pasta.command.length === 0) return 'the joined process is watched through /proc';
  return null;
}

/**
 * The plan for a mode. For pasta, `pasta` decides whether /proc stays in
 * view and whether the identity changes (a command joined through nsenter
 * runs as the invoking user; ferry keeps that user to be able to stop it).
 * Throws IsolationError for a --runas that cannot be honoured.
 */
export function planIsolation(mode: IsolationMode, options: DaemonOptions, context: IsolationContext, pasta: PastaOptions | null = null): IsolationPlan {
  const skipped: string[] = [];
  let identity = targetIdentity(options.runas, context);
  if (mode === 'pasta' && pasta !== null && pasta.netns !== null && pasta.command.length > 0 && options.runas === null && identity !== null) {
    skipped.push('identity: kept, the command joined through nsenter runs as this user and ferry must be able to stop it (--runas to choose)');
    identity = null;
  }
  let pathsNeeded: string | null = null;
  if (mode === 'pasta' && pasta !== null) pathsNeeded = pastaNeedsProcfs(options, pasta);
  const privileged = context.euid === 0;
  const emptyRoot = pathsNeeded === null && privileged;
  if (pathsNeeded !== null) skipped.push(`filesystem: kept in view, ${pathsNeeded}`);
  else if (!privileged) skipped.push('empty root: needs root (a multi-threaded process cannot make a user namespace); Landlock only');
  return { emptyRoot, landlock: pathsNeeded === null, identity, seccompLog: options.seccompLog, namespaceHelpers: mode === 'pasta', skipped };
}

/** The context of this process. */
export function processContext(): IsolationContext {
  const read = (path: string): string => {
    try {
      return readFileSync(path, 'utf8');
    } catch {
      return '';
    }
  };
  return {
    euid: process.geteuid?.() ?? -1,
    egid: process.getegid?.() ?? -1,
    passwd: read('/etc/passwd'),
    group: read('/etc/group'),
  };
}

/**
 * Carry out the plan; returns a log line per step taken. A step the kernel
 * refuses throws (ferry must not serve half-confined), except Landlock on a
 * kernel without it, which is reported.
 */
export function confine(plan: IsolationPlan, system: IsolationSystem): string[] {
  const done: string[] = [];
  if (plan.emptyRoot) {
    system.chrootEmpty();
    done.push('root: an empty read-only tmpfs');
  }
  const boundingEmpty = system.dropBoundingSet();
  if (plan.identity !== null) {
    system.setIdentity(plan.identity);
    done.push(`identity: uid ${plan.identity.uid} gid ${plan.identity.gid}`);
  }
  system.clearCapabilities();
  done.push(boundingEmpty ? 'capabilities: none, bounding set empty' : 'capabilities: none (bounding set kept: no CAP_SETPCAP)');
  system.noNewPrivs();
  system.dumpable(false);
  if (plan.landlock) {
    const abi = system.landlock();
    done.push(abi > 0 ? `Landlock ABI ${abi}: no filesystem access` : 'Landlock: not in this kernel');
  }
  system.seccomp(plan.namespaceHelpers, plan.seccompLog);
  done.push(plan.seccompLog ? 'seccomp: allow-list, calls outside it logged (--seccomp-log)' : 'seccomp: allow-list, calls outside it kill the process');
  return done;
}

let confined = false;

/** True once confine() has run in this process: nothing can be loaded by path any more (e.g. a new worker). */
export function isConfined(): boolean {
  return confined;
}

/** The addon's calls plus Node's uid/gid switch (glibc applies it to every thread). */
function nativeSystem(): IsolationSystem {
  return {
    chrootEmpty: () => native.isolationChrootEmpty(),
    dropBoundingSet: () => native.isolationDropBoundingSet(),
    setIdentity: (identity) => {
      const { setgroups, setgid, setuid } = process;
      if (setgroups === undefined || setgid === undefined || setuid === undefined) throw new Error('this platform cannot change the user');
      setgroups([]);
      setgid(identity.gid);
      setuid(identity.uid);
    },
    clearCapabilities: () => native.isolationClearCapabilities(),
    noNewPrivs: () => native.isolationNoNewPrivs(),
    dumpable: (on) => native.isolationDumpable(on),
    landlock: () => native.isolationLandlock(),
    seccomp: (helpers, logOnly) => native.isolationSeccomp(helpers, logOnly),
  };
}

/**
 * Files ferry removes when it stops (its socket, pid file...) are out of its
 * reach once confined: a helper forked now, holding nothing but a pipe,
 * removes them after a clean exit (killed, ferry leaves them, as before).
 */
function removeOnCleanExit(paths: readonly string[]): void {
  if (paths.length === 0) return;
  const fd = native.isolationCleanupHelper([...paths]);
  const byte = Buffer.from('u');
  process.once('exit', () => {
    try {
      native.write(fd, byte, 0, 1);
    } catch {
      // the helper is gone: nothing more to do
    }
  });
}

/**
 * Confine this process as planned and log what was done (call once every
 * module, worker and file the mode needs is loaded and open). `removeOnExit`:
 * the files this mode created and would remove when it stops.
 */
export function confineProcess(
  plan: IsolationPlan,
  logLine: (line: string) => void,
  removeOnExit: ReadonlyArray<string | null | undefined> = [],
  system: IsolationSystem = nativeSystem(),
): void {
  // sys/close loads the addon on first use; a require() after confinement would find no file.
  closeQuietly(-1);
  systemdNotifyConnect();
  removeOnCleanExit(removeOnExit.filter((p): p is string => typeof p === 'string' && p !== ''));
  for (const line of plan.skipped) logLine(`isolation: ${line}`);
  for (const line of confine(plan, system)) logLine(`isolation: ${line}`);
  confined = true;
}
