/**
 * The seam between frontends (virtqueue, tap, stream socket) and the stack.
 *
 * TX (frontend -> stack): the frontend hands the stack one Ethernet frame as
 * a gather list of views into (guest) memory, plus the virtio-net header
 * fields. The gather list object is owned by the frontend and reused for the
 * next frame: the stack must not keep it after `receiveFrame` returns.
 *
 * RX (stack -> frontend): the stack asks for buffer space with
 * `reserve(maxLength)`, writes the frame into the returned scatter list
 * (headers in place, payload by e.g. recvmsg straight into the segments),
 * then calls `commit(length)` (or `cancel()`). `flush()` publishes the batch
 * and notifies the other side once. A port may let the stack hold several
 * reservations at once (`reserveAnother`), so one socket call can fill many
 * frames; they are committed oldest first.
 *
 * Nothing here knows about virtqueues; `src/stack` never imports
 * `src/virtqueue` or `src/backend`.
 */

/**
 * A list of byte ranges: entry i is buffers[i][offsets[i] .. offsets[i]+lengths[i]).
 * Each `buffers[i]` is a long-lived Uint8Array over a whole mapping chunk or
 * pool buffer (not a per-packet subarray).
 */
export class SegmentList {
  buffers: Uint8Array[];
  offsets: Float64Array;
  lengths: Float64Array;
  count = 0;
  /** Sum of lengths[0..count). */
  totalLength = 0;

  constructor(readonly capacity: number) {
    this.buffers = new Array<Uint8Array>(capacity);
    this.offsets = new Float64Array(capacity);
    this.lengths = new Float64Array(capacity);
  }

  /** Forget all entries (keeps the arrays). */
  clear(): void {
    this.count = 0;
    this.totalLength = 0;
  }

  /** Append a range; returns false when the list is full. */
  push(buffer: Uint8Array, offset: number, length: number): boolean {
    if (this.count >= this.capacity) return false;
    const i = this.count++;
    this.buffers[i] = buffer;
    this.offsets[i] = offset;
    this.lengths[i] = length;
    this.totalLength += length;
    return true;
  }

  /**
   * Copy bytes [from, from+length) of the concatenated list into dst at
   * dstOffset. Returns the number of bytes copied (less at the end of the list).
   */
  copyOut(from: number, dst: Uint8Array, dstOffset: number, length: number): number {
    let copied = 0;
    let skip = from;
    for (let i = 0; i < this.count && copied < length; i++) {
      const segLen = this.lengths[i];
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, length - copied);
      const start = this.offsets[i] + skip;
      dst.set(this.buffers[i].subarray(start, start + n), dstOffset + copied);
      copied += n;
      skip = 0;
    }
    return copied;
  }

  /**
   * Copy src[srcOffset, srcOffset+length) into the concatenated list at byte
   * position `to`. Returns the number of bytes copied.
   */
  copyIn(to: number, src: Uint8Array, srcOffset: number, length: number): number {
    let copied = 0;
    let skip = to;
    for (let i = 0; i < this.count && copied < length; i++) {
      const segLen = this.lengths[i];
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, length - copied);
      const start = this.offsets[i] + skip;
      this.buffers[i].set(src.subarray(srcOffset + copied, srcOffset + copied + n), start);
      copied += n;
      skip = 0;
    }
    return copied;
  }
}

/** virtio-net header fields that travel with a frame (virtio 1.x, 5.1.6). */
export interface OffloadInfo {
  /** VIRTIO_NET_HDR_F_* flags. */
  flags: number;
  /** VIRTIO_NET_HDR_GSO_* type (0 = none). */
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/**
 * OffloadInfo.flags bits (the values of virtio's VIRTIO_NET_HDR_F_*, which
 * the tap's IFF_VNET_HDR header shares). On a frame from the guest,
 * NEEDS_CSUM says its TCP/UDP checksum is partial (not to be verified). On
 * a frame to the guest, DATA_VALID says the guest need not verify the
 * TCP/UDP checksum: send it only to a port whose `checksumOffload` is true.
 */
export const OFFLOAD_F_NEEDS_CSUM = 1;
export const OFFLOAD_F_DATA_VALID = 2;

/** Implemented by the stack (or a counting handler): consumes frames from the guest. */
export interface FrameSink {
  /**
   * One frame from the guest. `frame` holds the Ethernet frame (no virtio-net
   * header) and is only valid during the call. Returns nothing: drops are
   * counted by the sink itself.
   */
  receiveFrame(frame: SegmentList, offload: OffloadInfo): void;
}

/** Implemented by frontends: where the stack writes frames for the guest. */
export interface FramePort {
  /**
   * Reserve room for one frame of up to maxLength bytes. Returns a scatter
   * list of writable space (the frame's first byte is at position 0 of the
   * list; room for any frontend header is kept by the frontend), or null
   * when the guest has no buffers (the stack should retry after `onWritable`).
   * The list may be shorter than maxLength when the guest's buffers are
   * smaller; check `totalLength`.
   */
  reserve(maxLength: number): SegmentList | null;
  /**
   * Reserve room for one more frame while the earlier reservations stay
   * open (reserve() gives them back first). Returns null when the port has
   * no more buffers or holds no more reservations at once; the open ones
   * are still valid. Absent: one reservation at a time.
   */
  reserveAnother?(maxLength: number): SegmentList | null;
  /**
   * Publish the oldest open reservation with its real length (<= its
   * totalLength). A commit shorter than the reservation while later ones
   * are open gives those later ones back (as cancel would).
   */
  commit(length: number, offload?: OffloadInfo): void;
  /** Give every open reservation back unused. */
  cancel(): void;
  /** Publish what was committed and notify the other side (once per batch). */
  flush(): void;
  /** Called by the frontend when buffers become available after reserve() returned null. */
  onWritable: (() => void) | null;
  /** Largest frame the port can carry (MTU + Ethernet header), for the stack's MSS choices. */
  readonly maxFrameLength: number;
  /**
   * True when the other side takes frames committed with OFFLOAD_F_DATA_VALID
   * and skips verifying their TCP/UDP checksum, so the stack need not compute
   * it over the payload (virtio-net: VIRTIO_NET_F_GUEST_CSUM negotiated). May
   * change between reservations (feature renegotiation): read it per frame.
   * Absent means false: checksums are always complete.
   */
  readonly checksumOffload?: boolean;
}
