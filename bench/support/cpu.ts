/**
 * CPU time of a back-end process, read from /proc: utime + stime of the
 * whole process (all its threads), or of the threads whose name passes a
 * filter (QEMU's I/O threads without its vCPU threads).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';

let ticksPerSecond: number | null = null;

/** Kernel clock ticks per second for /proc times (getconf CLK_TCK, 100 if unknown). */
export function clockTicksPerSecond(): number {
  if (ticksPerSecond === null) {
    const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number(out.stdout?.trim());
    ticksPerSecond = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return ticksPerSecond;
}

/** Parses a /proc/.../stat line: the command name and utime + stime in seconds, or null if malformed. */
export function parseStat(text: string): { comm: string; cpuSeconds: number } | null {
  // The name is in parentheses and may itself contain spaces or ')'.
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  const fields = text.slice(close + 2).trim().split(/\s+/);
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return { comm: text.slice(open + 1, close), cpuSeconds: (utime + stime) / clockTicksPerSecond() };
}

/** utime + stime of process `pid` (all threads) in seconds; NaN once the process is gone. */
export function processCpuSeconds(pid: number): number {
  try {
    return parseStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))?.cpuSeconds ?? NaN;
  } catch {
    return NaN;
  }
}

/**
 * utime + stime, in seconds, of the threads of `pid` whose name `keep`
 * accepts (a thread that exits between samples takes its time with it);
 * NaN once the process is gone.
 */
export function threadsCpuSeconds(pid: number, keep: (threadName: string) => boolean): number {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return NaN;
  }
  let sum = 0;
  for (const tid of tids) {
    try {
      const st = parseStat(fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
      if (st && keep(st.comm)) sum += st.cpuSeconds;
    } catch {
      // The thread ended between readdir and read.
    }
  }
  return sum;
}

/** QEMU names its TCG/KVM vCPU threads "CPU n/TCG" (or "CPU n/KVM"): everything else is main loop and I/O. */
export function isQemuIoThread(threadName: string): boolean {
  return !/^CPU \d+\//.test(threadName);
}

/** CPU seconds spent by QEMU `pid` outside its vCPU threads (main loop, device emulation, slirp). */
export function qemuIoCpuSeconds(pid: number): number {
  return threadsCpuSeconds(pid, isQemuIoThread);
}
