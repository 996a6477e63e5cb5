/**
 * Closing a file descriptor on a teardown or error path, where a failure (the
 * fd closed already, or by its owner) changes nothing and must not stop the
 * rest of the teardown. One helper for every part: code that owns its fds
 * closes through the addon; the stack's handlers close through the socket
 * calls they were given (real or a unit test's fakes).
 */
import { rmSync } from 'fs';
import type { Native } from './native';

type Closer = Pick<Native, 'close'>;

let addonCloser: Closer | null = null;

/** The addon, loaded on first use so that modules given fake socket calls never load it. */
function addon(): Closer {
  if (addonCloser === null) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily: unit tests with fake sockets run without the addon
    addonCloser = (require('./native') as typeof import('./native')).native;
  }
  return addonCloser;
}

/** Close fd through the addon, ignoring any error; null (no fd) does nothing. */
export function closeQuietly(fd: number | null): void {
  if (fd === null) return;
  closeSocketQuietly(addon(), fd);
}

/** Close fd through the given socket calls, ignoring any error; no socket calls (null/undefined) does nothing. */
export function closeSocketQuietly(sockets: Closer | null | undefined, fd: number): void {
  try {
    sockets?.close(fd);
  } catch {
    // The fd is gone either way.
  }
}

/**
 * Remove a file ferry made (pid file, socket) on the way out, ignoring any
 * error: once ferry has confined itself the path may be out of reach
 * (EACCES, ENOENT in the empty root), and the cleanup helper forked before
 * confinement removes it instead. null does nothing.
 */
export function removeQuietly(path: string | null): void {
  if (path === null) return;
  try {
    rmSync(path, { force: true });
  } catch {
    // Out of reach from the confined process: the cleanup helper has it.
  }
}
