/**
 * Worker-thread side of the Poller tests in native.test.ts (not a test file
 * itself). workerData.mode:
 *  - 'wake': create an eventfd and a Poller on this worker's loop, signal the
 *    eventfd, and post back the batch the callback saw, then close.
 *  - 'leave-open': create a Poller watching an eventfd and exit without
 *    closing it, to check that thread teardown releases the libuv handle.
 */
import { parentPort, workerData } from 'worker_threads';
import { native } from '../../../src/sys/native';

interface WakeResult {
  count: number;
  fd: number;
  events: number;
  expectedFd: number;
  value: number;
}

function wake(): void {
  const efd = native.eventfd(0);
  const batch = new Int32Array(8);
  const poller = new native.Poller(batch, (count) => {
    const result: WakeResult = { count, fd: batch[0], events: batch[1], expectedFd: efd, value: native.eventfdRead(efd) };
    poller.close();
    native.close(efd);
    parentPort?.postMessage(result);
  });
  poller.add(efd, native.constants.EPOLLIN);
  native.eventfdWrite(efd, 5);
}

function leaveOpen(): void {
  const efd = native.eventfd(0);
  const poller = new native.Poller(new Int32Array(2), () => undefined);
  poller.add(efd, native.constants.EPOLLIN);
  parentPort?.postMessage('ready');
  // Exit with the Poller still open and its handle still referenced.
  setTimeout(() => process.exit(0), 10);
}

if (workerData?.mode === 'wake') wake();
else leaveOpen();
