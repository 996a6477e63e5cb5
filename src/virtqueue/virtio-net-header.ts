/**
 * The virtio-net header that precedes every frame in a virtqueue buffer
 * (virtio 1.x 5.1.6): flags u8, gso_type u8, hdr_len le16, gso_size le16,
 * csum_start le16, csum_offset le16, then num_buffers le16 when VERSION_1 or
 * MRG_RXBUF is negotiated (12 bytes; 10 for a legacy device without either).
 *
 * The header sits at the start of the chain's buffers, which the guest may
 * split anywhere: reading and writing go straight to guest memory when the
 * first segment holds the whole header, through a 12-byte scratch otherwise.
 */
import type { OffloadInfo, SegmentList } from '../io/frame-io';
import { VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF } from './features';

export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** Header length with num_buffers. */
export const VIRTIO_NET_HDR_LENGTH = 12;
/** Legacy header length (no VERSION_1, no MRG_RXBUF). */
export const VIRTIO_NET_HDR_LEGACY_LENGTH = 10;

/** Header length for the negotiated features. */
export function virtioNetHeaderLength(features: bigint): number {
  return (features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF)) !== 0n ? VIRTIO_NET_HDR_LENGTH : VIRTIO_NET_HDR_LEGACY_LENGTH;
}

/** A fresh all-zero OffloadInfo (allocate once per port). */
export function emptyOffload(): OffloadInfo {
  return { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
}

/** Reads and writes the header at the start of a SegmentList; one instance per port (it owns a scratch). */
export class VirtioNetHeader {
  private readonly scratch = new Uint8Array(VIRTIO_NET_HDR_LENGTH);

  constructor(readonly length: number = VIRTIO_NET_HDR_LENGTH) {
    if (length !== VIRTIO_NET_HDR_LENGTH && length !== VIRTIO_NET_HDR_LEGACY_LENGTH) throw new RangeError(`virtio-net header length ${length}`);
  }

  /**
   * Read the header from the start of `list` into `out`. Returns the
   * num_buffers field (0 for the legacy layout), or -1 when the list holds
   * fewer than `length` bytes.
   */
  read(list: SegmentList, out: OffloadInfo): number {
    const length = this.length;
    if (list.totalLength < length) return -1;
    let bytes: Uint8Array;
    let at: number;
    if (list.count > 0 && list.lengths[0] >= length) {
      bytes = list.buffers[0];
      at = list.offsets[0];
    } else {
      list.copyOut(0, this.scratch, 0, length);
      bytes = this.scratch;
      at = 0;
    }
    out.flags = bytes[at];
    out.gsoType = bytes[at + 1];
    out.hdrLen = bytes[at + 2] | (bytes[at + 3] << 8);
    out.gsoSize = bytes[at + 4] | (bytes[at + 5] << 8);
    out.csumStart = bytes[at + 6] | (bytes[at + 7] << 8);
    out.csumOffset = bytes[at + 8] | (bytes[at + 9] << 8);
    return length === VIRTIO_NET_HDR_LENGTH ? bytes[at + 10] | (bytes[at + 11] << 8) : 0;
  }

  /**
   * Write the header at the start of `list`: the offload fields (all zero
   * when `offload` is null/undefined) and num_buffers (12-byte layout only).
   * Returns false when the list holds fewer than `length` bytes.
   */
  write(list: SegmentList, offload: OffloadInfo | null | undefined, numBuffers: number): boolean {
    const length = this.length;
    if (list.totalLength < length) return false;
    const direct = list.count > 0 && list.lengths[0] >= length;
    const bytes = direct ? list.buffers[0] : this.scratch;
    const at = direct ? list.offsets[0] : 0;
    if (offload) {
      bytes[at] = offload.flags;
      bytes[at + 1] = offload.gsoType;
      bytes[at + 2] = offload.hdrLen & 0xff;
      bytes[at + 3] = offload.hdrLen >>> 8;
      bytes[at + 4] = offload.gsoSize & 0xff;
      bytes[at + 5] = offload.gsoSize >>> 8;
      bytes[at + 6] = offload.csumStart & 0xff;
      bytes[at + 7] = offload.csumStart >>> 8;
      bytes[at + 8] = offload.csumOffset & 0xff;
      bytes[at + 9] = offload.csumOffset >>> 8;
    } else {
      bytes.fill(0, at, at + 10);
    }
    if (length === VIRTIO_NET_HDR_LENGTH) {
      bytes[at + 10] = numBuffers & 0xff;
      bytes[at + 11] = (numBuffers >>> 8) & 0xff;
    }
    if (!direct) list.copyIn(0, this.scratch, 0, length);
    return true;
  }
}
