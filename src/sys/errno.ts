/**
 * The errno name of a failed addon call, for log lines and for telling
 * failures apart (EAGAIN, ECONNREFUSED...).
 */

/** The error's `code` (e.g. 'EADDRINUSE') when it has one, else the error as a string. */
export function errorCode(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : String(e);
}
