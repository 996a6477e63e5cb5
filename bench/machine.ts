/**
 * What the benchmark ran on: CPU model and cores, kernel, Node, QEMU, the
 * peers' versions (passt and pasta as their --version prints it, with the
 * path they were run from; slirp4netns and its libslirp, QEMU's libslirp,
 * DPDK), iperf3, ferry's commit, and the date.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { passtBinary, pastaBinary, type PeerBinary } from './support/peers';

/** The machine and software versions, as printed above the tables. */
export interface MachineInfo {
  date: string;
  cpuModel: string;
  cores: number;
  kernel: string;
  node: string;
  qemu: string;
  passt: string;
  pasta: string;
  dpdk: string;
  slirp4netns: string;
  qemuLibslirp: string;
  iperf3: string;
  /** 1-minute load average when the run started (other work on a shared machine skews the figures). */
  loadAtStart: number;
  /** The ferry measured: commit, and whether src/ or addon/ had uncommitted changes (the tree is shared). */
  ferryRevision: string;
}

function firstLine(argv: string[]): string {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 5000 });
  if (r.error || r.status !== 0) return 'not installed';
  return (r.stdout || r.stderr).trim().split('\n')[0] ?? '';
}

/** Version of a Debian package as dpkg knows it, or null when not installed. */
export function debianPackageVersion(name: string): string | null {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status} ${Version}', name], { encoding: 'utf8', timeout: 5000 });
  const m = /install ok installed (\S+)/.exec(r.stdout ?? '');
  return m ? m[1] : null;
}

/** HEAD's short commit of the repository holding this file, with a note when src/ or addon/ differ from it. */
export function ferryRevision(): string {
  const cwd = path.join(__dirname, '..', '..');
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd, encoding: 'utf8', timeout: 5000 });
  if (head.status !== 0) return 'unknown (not a git checkout)';
  const dirty = spawnSync('git', ['status', '--porcelain', '--', 'src', 'addon'], { cwd, encoding: 'utf8', timeout: 5000 });
  return `${head.stdout.trim()}${dirty.stdout.trim() !== '' ? ' plus uncommitted changes in src/ or addon/' : ''}`;
}

/** Reads the machine description (no network, a few short commands). */
export function describeMachine(): MachineInfo {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown';
  const slirpVersion = spawnSync('slirp4netns', ['--version'], { encoding: 'utf8', timeout: 5000 });
  const slirpText = slirpVersion.status === 0 ? slirpVersion.stdout : '';
  const peer = (p: PeerBinary): string => (p.path ? `${p.version} (${p.path})` : `not found: ${p.missing ?? ''}`);
  const dpdk = debianPackageVersion('dpdk');
  const libslirp = debianPackageVersion('libslirp0');
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    cpuModel: model,
    cores: os.cpus().length,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    qemu: firstLine(['qemu-system-x86_64', '--version']).replace(/^QEMU emulator version /, ''),
    passt: peer(passtBinary()),
    pasta: peer(pastaBinary()),
    dpdk: dpdk ? `DPDK ${dpdk} (Debian package)` : 'DPDK not installed',
    slirp4netns: slirpText
      ? `${/slirp4netns version (\S+)/.exec(slirpText)?.[1] ?? '?'} (libslirp ${/libslirp: (\S+)/.exec(slirpText)?.[1] ?? '?'})`
      : 'not installed',
    qemuLibslirp: libslirp ?? 'unknown',
    iperf3: firstLine(['iperf3', '--version']),
    loadAtStart: os.loadavg()[0],
    ferryRevision: ferryRevision(),
  };
}

/** The machine as markdown list lines. */
export function machineMarkdown(m: MachineInfo): string {
  return [
    `- date: ${m.date}; ferry at commit ${m.ferryRevision}`,
    `- CPU: ${m.cpuModel}, ${m.cores} cores; kernel ${m.kernel}; 1-minute load average ${m.loadAtStart.toFixed(2)} at the start (others' work on a shared machine skews the figures)`,
    `- Node ${m.node}; QEMU ${m.qemu} (TCG, 1 vCPU), its libslirp ${m.qemuLibslirp}`,
    `- passt: ${m.passt}; pasta: ${m.pasta}`,
    `- slirp4netns ${m.slirp4netns}; ${m.dpdk}; ${m.iperf3}`,
  ].join('\n');
}
