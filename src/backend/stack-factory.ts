/**
 * Builds the stack a worker hands its frames to.
 */
import type { FrameSink } from '../stack/frame-io';
import { StackContext, StackContextOptions } from '../stack/context';

/** Create the stack over a worker's port, counters and fd watcher. */
export function createStack(options: StackContextOptions): FrameSink {
  const context = new StackContext(options);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { Stack } = require('../stack/stack') as { Stack: new (context: StackContext) => FrameSink };
  return new Stack(context);
}
