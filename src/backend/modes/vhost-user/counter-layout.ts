/**
 * Fixes the layout of the counter slots shared between the main thread and
 * the workers. Slots are numbered in the order modules declare them at load
 * time (src/counters.ts), so both sides must load the declaring modules in
 * the same order before anything else declares a slot: the daemon and
 * worker-main import this module first. The worker reports its layout when
 * it is ready and the main thread checks it (`layoutSignature`).
 */
import '../../../virtqueue/virtio-net-port';
import '../../../stack/stack-factory';
import '../../../virtqueue/vring';
import { counterDefinitions } from '../../../sys/counters';

/** A short fingerprint of the slots declared so far (count and names), to compare across threads. */
export function layoutSignature(): string {
  const definitions = counterDefinitions();
  let hash = 0;
  for (const d of definitions) {
    const text = d.metric + JSON.stringify(d.labels);
    for (let i = 0; i < text.length; i++) hash = (Math.imul(hash, 31) + text.charCodeAt(i)) | 0;
  }
  return `${definitions.length}:${(hash >>> 0).toString(16)}`;
}

/** The layout fixed by the imports above, computed once at load. */
export const SHARED_LAYOUT = layoutSignature();
