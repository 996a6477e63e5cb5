/**
 * `ferry pasta`: placeholder until the tap frontend lands (next commit).
 */
import type { DaemonOptions, PastaOptions } from './options';

/** Run COMMAND in a namespace served by ferry; resolves with its exit status. */
export async function runPasta(_options: DaemonOptions, _pasta: PastaOptions): Promise<number> {
  throw new Error('ferry pasta is not implemented yet');
}
