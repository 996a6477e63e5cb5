/**
 * The e2e test guest: finds the kernel and initramfs that
 * scripts/build-guest.sh made, adds a per-test /test.sh, boots it with
 * qemu.ts inside a test namespace and reads the "FERRY-GUEST: ..." markers
 * that test/guest/init prints on the serial console.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { canCreateNamespaces, type TestNetwork } from './netns';
import { type GuestNic, type QemuVm, qemuAvailable, startQemu } from './qemu';

import { REPO_ROOT } from './paths';

export { REPO_ROOT };

/** Kernel and initramfs of the built guest. */
export interface GuestImage {
  kernel: string;
  initrd: string;
}

/** Where scripts/build-guest.sh puts the guest (FERRY_GUEST_CACHE/out, default .cache/guest/out). */
export function guestImage(): GuestImage {
  const cache = process.env.FERRY_GUEST_CACHE ?? path.join(REPO_ROOT, '.cache', 'guest');
  const out = path.join(cache, 'out');
  return { kernel: path.join(out, 'vmlinuz'), initrd: path.join(out, 'initramfs.cpio.gz') };
}

/** What a real-guest test needs and this machine lacks (empty when all is there). */
export function missingGuestPrerequisites(): string[] {
  const missing: string[] = [];
  if (os.platform() !== 'linux') missing.push('Linux');
  if (!canCreateNamespaces()) missing.push('root with iproute2 (network namespaces)');
  if (!qemuAvailable()) missing.push('qemu-system-x86_64');
  const img = guestImage();
  if (!fs.existsSync(img.kernel) || !fs.existsSync(img.initrd)) {
    missing.push(`guest image in ${path.dirname(img.kernel)} (run scripts/install-test-deps.sh)`);
  }
  return missing;
}

/**
 * Skips the calling test (or suite, from a before hook) when the machine
 * lacks something a real-guest test needs; under CI (CI=true) throws
 * instead, so a broken CI setup fails rather than passing by skipping.
 */
export function requireGuestPrerequisites(ctx: Mocha.Context, extra: string[] = []): void {
  const missing = [...missingGuestPrerequisites(), ...extra];
  if (missing.length === 0) return;
  if (process.env.CI === 'true') {
    throw new Error(`e2e prerequisites missing under CI: ${missing.join('; ')}`);
  }
  console.warn(`    (skipping: missing ${missing.join('; ')})`);
  ctx.skip();
}

/** True if `cmd` is found on PATH. */
export function commandAvailable(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

// ---------------------------------------------------------------------------
// newc cpio, to append /test.sh to the initramfs (the kernel unpacks
// concatenated archives one after another).

function newcHeader(name: string, mode: number, size: number, ino: number): Buffer {
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
  return Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'ascii');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

/** A newc cpio archive holding the given regular files (path without leading '/', content, mode bits). */
export function newcArchive(files: { name: string; content: Buffer | string; mode?: number }[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const entry = (name: string, mode: number, data: Buffer): void => {
    const header = newcHeader(name, mode, data.length, ino++);
    const nameBytes = Buffer.concat([Buffer.from(name, 'utf8'), Buffer.alloc(1)]);
    parts.push(header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length));
  };
  for (const f of files) {
    entry(f.name, 0o100000 | (f.mode ?? 0o644), Buffer.isBuffer(f.content) ? f.content : Buffer.from(f.content, 'utf8'));
  }
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

/**
 * Writes `dir`/initramfs-test.cpio: the base initramfs, zero padding to a
 * 4-byte boundary (where the kernel looks for the next archive), and an
 * uncompressed cpio with /test.sh. Returns its path.
 */
export function initrdWithTestScript(baseInitrd: string, testScript: string, dir: string): string {
  const base = fs.readFileSync(baseInitrd);
  const extra = newcArchive([{ name: 'test.sh', content: testScript, mode: 0o755 }]);
  const out = path.join(dir, 'initramfs-test.cpio');
  fs.writeFileSync(out, Buffer.concat([base, pad4(base.length), extra]));
  return out;
}

// ---------------------------------------------------------------------------

/** Options for bootGuest(). */
export interface BootOptions {
  net: TestNetwork;
  nic: GuestNic;
  /** Shell script run in the guest after network setup; its exit code is reported by "done N". */
  testScript?: string;
  /** ferry.* and other kernel parameters, e.g. ['ferry.ipv6_wait=0']. */
  append?: string[];
  mac?: string;
  /** Overall bound on the guest's life (default 90 s). */
  timeoutMs?: number;
  /** Scratch directory for the per-test initramfs (default: a new temp dir); removed by destroy(). */
  workDir?: string;
  /** Extra QEMU arguments (e.g. a filter-dump object on netdev net0). */
  extraArgs?: string[];
  /** vCPUs (default 1). */
  cpus?: number;
}

/** The DHCP lease the guest reported. */
export interface GuestLease {
  address: string;
  prefixLength: number;
  routers: string[];
  mtu: number | null;
  dns: string[];
  search: string[];
}

/** Outcome of one guest ping printed by pingScript(). */
export interface PingResult {
  transmitted: number;
  received: number;
  exitCode: number;
}

/**
 * Shell for a guest /test.sh: pings every target `count` times, all targets
 * at once (a boot's time is precious), and prints one line per target:
 *   FERRY-GUEST: ping <target> transmitted N received M rc R
 * (read back with Guest.pings()). Each ping is bounded by -w. With
 * `payloadBytes` (ping -s) the target is reported as "<target>@<size>".
 */
export function pingScript(targets: string[], count = 3, intervalSeconds = 0.5, payloadBytes?: number): string {
  const lines = ['ping_dir=$(mktemp -d)'];
  const size = payloadBytes !== undefined ? ` -s ${payloadBytes}` : '';
  targets.forEach((t, i) => {
    const family = t.includes(':') ? '-6' : '-4';
    lines.push(`(ping ${family} -c ${count} -i ${intervalSeconds}${size} -W 2 -w ${count + 4} ${t} >"$ping_dir/${i}" 2>&1; echo "rc $?" >>"$ping_dir/${i}") &`);
  });
  lines.push('wait');
  // With a payload size the results are keyed "<target>@<size>".
  targets = targets.map((t) => (payloadBytes !== undefined ? `${t}@${payloadBytes}` : t));
  targets.forEach((t, i) => {
    lines.push(
      `awk '/packets transmitted/ { print $1, $4 }' "$ping_dir/${i}" | ` +
        `{ read -r tx rx; echo "FERRY-GUEST: ping ${t} transmitted \${tx:-0} received \${rx:-0} rc $(sed -n 's/^rc //p' "$ping_dir/${i}")"; }`,
    );
    // A failed ping's own words, for the failure message.
    lines.push(`grep -q '^rc 0$' "$ping_dir/${i}" || sed 's/^/FERRY-GUEST: ping-output ${t}: /' "$ping_dir/${i}"`);
  });
  return lines.join('\n') + '\n';
}

/** A booted (or booting) test guest. */
export class Guest {
  constructor(readonly vm: QemuVm, readonly workDir: string) {}

  /** Waits for a serial console match (see QemuVm.waitFor). */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    return this.vm.waitFor(re, timeoutMs);
  }

  /** Waits for "FERRY-GUEST: <what>" (a regex source after the prefix). */
  waitForMarker(what: string, timeoutMs: number): Promise<RegExpExecArray> {
    return this.vm.waitFor(new RegExp(`FERRY-GUEST: ${what}`), timeoutMs);
  }

  /** Waits for "FERRY-GUEST: done N" and resolves with N (the /test.sh exit code, 0 without one). */
  async waitDone(timeoutMs: number): Promise<number> {
    const m = await this.vm.waitFor(/FERRY-GUEST: done (\d+)/, timeoutMs);
    return Number(m[1]);
  }

  /** The lease the guest reported so far, or null. */
  lease(): GuestLease | null {
    const m = /FERRY-GUEST: lease (\S+)\/(\d+) router (\S+) mtu (\S+) dns (\S+) search (\S+)/.exec(this.vm.serialLines);
    if (!m) return null;
    const list = (s: string): string[] => (s === 'none' ? [] : s.split(',').filter((x) => x.length > 0));
    return {
      address: m[1],
      prefixLength: Number(m[2]),
      routers: list(m[3]),
      mtu: m[4] === 'none' ? null : Number(m[4]),
      dns: list(m[5]),
      search: list(m[6]),
    };
  }

  /** Addresses the guest reported on eth0 ("addr inet|inet6 A/P scope S"). */
  addresses(): { family: 'inet' | 'inet6'; address: string; prefixLength: number; scope: string }[] {
    const out: { family: 'inet' | 'inet6'; address: string; prefixLength: number; scope: string }[] = [];
    const re = /FERRY-GUEST: addr (inet6?) ([^/\s]+)\/(\d+) scope (\S+)/g;
    const text = this.vm.serialLines;
    for (let m = re.exec(text); m; m = re.exec(text)) {
      out.push({ family: m[1] as 'inet' | 'inet6', address: m[2], prefixLength: Number(m[3]), scope: m[4] });
    }
    return out;
  }

  /** The DHCPv6 lease the guest reported ("dhcp6 lease A dns B,C"; boot with ferry.dhcp6=1), or null. */
  dhcp6Lease(): { address: string; dns: string[] } | null {
    const m = /FERRY-GUEST: dhcp6 lease (\S+) dns (\S+)/.exec(this.vm.serialLines);
    if (!m) return null;
    return { address: m[1], dns: m[2] === 'none' ? [] : m[2].split(',') };
  }

  /** Default IPv6 routes the guest reported ("route6 default via ..."), one line each. */
  routes6(): string[] {
    return [...this.vm.serialLines.matchAll(/FERRY-GUEST: route6 (.*?)\r?\n/g)].map((m) => m[1].trim());
  }

  /** Echo results printed by pingScript(), by target, in the order they were printed. */
  pings(): Map<string, PingResult> {
    const out = new Map<string, PingResult>();
    const re = /FERRY-GUEST: ping (\S+) transmitted (\d+) received (\d+) rc (\d+)/g;
    for (const m of this.vm.serialLines.matchAll(re)) {
      out.set(m[1], { transmitted: Number(m[2]), received: Number(m[3]), exitCode: Number(m[4]) });
    }
    return out;
  }

  /** Kills QEMU if still running and removes the scratch directory. */
  async destroy(): Promise<void> {
    await this.vm.kill();
    fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}

/**
 * Boots the test guest in opts.net.ns with the chosen NIC; returns at once.
 * The caller must destroy() it (or destroyTestNetwork kills QEMU).
 */
export function bootGuest(opts: BootOptions): Guest {
  const img = guestImage();
  const workDir = opts.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-'));
  const initrd = opts.testScript !== undefined ? initrdWithTestScript(img.initrd, opts.testScript, workDir) : img.initrd;
  const vm = startQemu({
    netns: opts.net.ns,
    kernel: img.kernel,
    initrd,
    append: opts.append,
    nic: opts.nic,
    mac: opts.mac,
    timeoutMs: opts.timeoutMs ?? 90000,
    extraArgs: opts.extraArgs,
    cpus: opts.cpus,
  });
  return new Guest(vm, workDir);
}
