/**
 * Checks on the fds a vhost-user front-end hands over, beyond their count:
 * what kind of file an fd is, and whether the daemon itself ran out of fds.
 */
import { errorCode } from '../../../sys/errno';
import { native } from '../../../sys/native';

/**
 * Null when `fd` is an eventfd, else why not. Its /proc/self/fd link (read
 * through a directory fd the addon opened before confinement) names
 * the anonymous inode ("anon_inode:[eventfd]"); nothing else may stand in
 * for a kick, call or err fd (a socket or pipe would have the worker read
 * the front-end's data, a regular file would poll readable forever).
 */
export function eventFdProblem(fd: number): string | null {
  let target: string;
  try {
    target = native.fdLink(fd);
  } catch (error) {
    return `cannot identify fd ${fd}: ${error instanceof Error ? error.message : String(error)}`;
  }
  return target === 'anon_inode:[eventfd]' ? null : `fd is ${target}, not an eventfd`;
}

/**
 * After MSG_CTRUNC: true when we could not take one more fd ourselves
 * (EMFILE/ENFILE), the real reason the kernel dropped the message's fds.
 */
export function atFdLimit(probeFd: number): boolean {
  try {
    native.close(native.dup(probeFd));
    return false;
  } catch (error) {
    const code = errorCode(error);
    return code === 'EMFILE' || code === 'ENFILE';
  }
}
