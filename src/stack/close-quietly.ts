/**
 * Closing a host socket on a teardown or error path, where a failure (the
 * fd already gone) changes nothing and must not stop the rest of the work.
 */
import type { Native } from '../native';

/** Close fd through the handler's socket calls, ignoring any error; no socket calls (null/undefined) does nothing. */
export function closeSocketQuietly(sockets: Pick<Native, 'close'> | null | undefined, fd: number): void {
  try {
    sockets?.close(fd);
  } catch {
    // The fd is gone either way.
  }
}
