/**
 * The base every wire view extends: a window bytes[offset, offset+length)
 * that one reusable view object is pointed at packet after packet, so parsing
 * allocates nothing per packet.
 */

/**
 * A reusable window over bytes. Plain fields (not getters) because the
 * views' getters read them on every field access in the hot path. The bounds
 * check each validate() starts with stays spelled out in the views: as a
 * shared method here it made a reset+validate micro-benchmark ~1.5x slower
 * (one function seeing every view class), where the shared reset costs ~10%.
 */
export class WireView {
  bytes: Uint8Array = new Uint8Array(0);
  offset = 0;
  /** Bytes available from offset; what they span is up to each view. */
  length = 0;

  /** Point the view at bytes[offset, offset+length); returns this. */
  reset(bytes: Uint8Array, offset: number, length: number): this {
    this.bytes = bytes;
    this.offset = offset;
    this.length = length;
    return this;
  }
}
