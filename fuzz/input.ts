/**
 * A cursor over one fuzzer input. Reads past the end yield zeros and empty
 * slices, so a target never has to special-case short inputs.
 */
export class FuzzInput {
  private at = 0;

  constructor(readonly bytes: Uint8Array) {}

  get left(): number {
    return this.bytes.length - this.at;
  }

  u8(): number {
    return this.at < this.bytes.length ? this.bytes[this.at++] : 0;
  }

  u16(): number {
    return this.u8() | (this.u8() << 8);
  }

  u32(): number {
    return (this.u16() | (this.u16() << 16)) >>> 0;
  }

  /** Up to `n` bytes (fewer at the end of the input), as a view. */
  take(n: number): Uint8Array {
    const end = Math.min(this.bytes.length, this.at + Math.max(0, n));
    const out = this.bytes.subarray(this.at, end);
    this.at = end;
    return out;
  }

  rest(): Uint8Array {
    return this.take(this.left);
  }
}

/** Thrown when a target finds an invariant broken; the message says which. */
export class InvariantError extends Error {
  constructor(message: string) {
    super(`invariant broken: ${message}`);
    this.name = 'InvariantError';
  }
}

export function check(condition: boolean, message: () => string): void {
  if (!condition) throw new InvariantError(message());
}
