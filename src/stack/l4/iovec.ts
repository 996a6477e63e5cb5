/**
 * iovec lists over frame memory: the payload of a guest frame handed to
 * sendmsg, the space of an RX reservation handed to recvmsg. The entries
 * are views (buffer, offset, length) into the same memory, never copies.
 */
import type { IoVecList } from '../../sys/native';
import type { SegmentList } from '../../io/frame-io';

/** iovec entries per socket call (the kernel's IOV_MAX). */
export const IOV_ENTRIES = 1024;

/** An empty list of `entries` iovecs, allocated once per translator. */
export function newIoVecList(entries = IOV_ENTRIES): IoVecList {
  return { buffers: new Array<Uint8Array>(entries), offsets: new Float64Array(entries), lengths: new Float64Array(entries), count: 0 };
}

/**
 * Point iov's entries from `start` on at bytes [position, position+length)
 * of the concatenation of `list`, and set iov.count. Returns false when
 * the range needs more entries than iov has or runs past the list's end.
 */
export function iovFromSegments(iov: IoVecList, list: SegmentList, position: number, length: number, start = 0): boolean {
  let count = start;
  let skip = position;
  let left = length;
  for (let i = 0; i < list.count && left > 0; i++) {
    const segLength = list.lengths[i];
    if (skip >= segLength) {
      skip -= segLength;
      continue;
    }
    if (count >= iov.offsets.length) break;
    const n = Math.min(segLength - skip, left);
    iov.buffers[count] = list.buffers[i];
    iov.offsets[count] = list.offsets[i] + skip;
    iov.lengths[count] = n;
    count++;
    left -= n;
    skip = 0;
  }
  iov.count = count;
  return left === 0;
}
