/**
 * Running out of file descriptors while opening the -t/-u listeners: every
 * further socket would fail the same way (and `-t all` asks for about
 * 130000), so opening stops at the first EMFILE/ENFILE and startup fails
 * with one line naming the option and the limit, as passt does, instead of
 * running on with a part of the ports forwarded.
 */
import * as fs from 'fs';

/** True for the errno codes that mean "no descriptor left" (per process, system-wide). */
export function isDescriptorExhaustion(code: string): boolean {
  return code === 'EMFILE' || code === 'ENFILE';
}

/** The process's soft RLIMIT_NOFILE as /proc/self/limits shows it ("unlimited" or a number), or null. */
export function openFileLimit(limitsText: string | null = readLimits()): string | null {
  if (limitsText === null) return LIMIT_AT_LOAD;
  const match = /^Max open files\s+(\S+)/m.exec(limitsText);
  return match === null ? null : match[1];
}

function readLimits(): string | null {
  try {
    return fs.readFileSync('/proc/self/limits', 'latin1');
  } catch {
    return null;
  }
}

/** Read while a descriptor is still free: at EMFILE the file cannot be opened. */
const LIMIT_AT_LOAD: string | null = ((): string | null => {
  const text = readLimits();
  if (text === null) return null;
  return /^Max open files\s+(\S+)/m.exec(text)?.[1] ?? null;
})();

/** Startup cannot open the listeners a -t/-u option asks for: no descriptor left. */
export class DescriptorLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DescriptorLimitError';
    // A condition of the host, not a fault of ferry: whoever logs the stack shows the one line.
    this.stack = `${this.name}: ${message}`;
  }
}

/**
 * The one line for `option` ('-t' or '-u') with spec text `spec`: what
 * failed, how many sockets were open by then, and the limit to raise.
 */
export function descriptorLimitMessage(option: '-t' | '-u', spec: string, code: string, opened: number, limit: string | null): string {
  const what = code === 'ENFILE' ? 'the system-wide file table is full (ENFILE)' : 'out of file descriptors (EMFILE)';
  const limitText = limit === null ? '' : `; the open-file limit (RLIMIT_NOFILE) is ${limit}`;
  return `${option} ${spec}: ${what} after ${opened} listening sockets${limitText}: raise it (ulimit -n) or forward fewer ports`;
}

/**
 * A DescriptorLimitError when `errors` (a listener-opening result) ends in
 * descriptor exhaustion, else null.
 */
export function descriptorLimitFailure(
  option: '-t' | '-u',
  spec: string,
  result: { opened: number; errors: readonly { code: string }[] },
): DescriptorLimitError | null {
  const last = result.errors[result.errors.length - 1];
  if (last === undefined || !isDescriptorExhaustion(last.code)) return null;
  return new DescriptorLimitError(descriptorLimitMessage(option, spec, last.code, result.opened, openFileLimit()));
}
