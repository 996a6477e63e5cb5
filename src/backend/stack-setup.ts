/**
 * Turns the command line's network options and what host discovery finds
 * into the StackConfig every worker gets.
 */
import type { StackConfig } from '../stack/config';
import type { DaemonOptions } from './options';

/** Resolve the stack configuration, or null to run without a stack (frames only counted). */
export async function resolveDaemonStackConfig(_options: DaemonOptions): Promise<StackConfig | null> {
  return null;
}
