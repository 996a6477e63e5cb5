/**
 * Closing a file descriptor on a teardown path, where a failure (the fd
 * closed already, or by its owner) changes nothing and must not stop the
 * rest of the teardown.
 */
import { native } from '../native';

/** Close fd, ignoring any error; null (no fd) does nothing. */
export function closeQuietly(fd: number | null): void {
  if (fd === null) return;
  try {
    native.close(fd);
  } catch {
    // Already closed: the fd is gone either way.
  }
}
