/**
 * Fuzz target: the control API's stream framing (FrameReader) and request
 * decoding. The input is a byte stream cut into chunks at input-chosen
 * sizes; every frame read from it is decoded as a request. Invariants: no
 * frame is larger than the bound or than what came in, the reader's copying
 * stays linear, only ControlRequestError escapes decodeRequest, and a
 * request that decodes encodes and decodes back to itself.
 */
import { deepStrictEqual } from 'assert';
import { ControlRequestError, FrameReader, decodeRequest, encodeRequest } from '../../src/backend/control/control-protocol';
import { FuzzInput, check } from '../input';

const MAX_BODY = 4096;

export function fuzz(data: Buffer): void {
  const input = new FuzzInput(data);
  const reader = new FrameReader(MAX_BODY);
  let pushed = 0;
  let framed = 0;
  for (let round = 0; round < 256 && input.left > 0; round++) {
    const chunk = Buffer.from(input.take(1 + (input.u8() % 64) * (input.u8() % 8 === 0 ? 64 : 1)));
    reader.push(chunk);
    pushed += chunk.length;
    // Each next() either yields a frame (consuming at least its 4-byte header) or stops.
    for (let frames = 0; frames <= pushed; frames++) {
      const result = reader.next();
      if (result.kind !== 'frame') break;
      check(result.body.length <= MAX_BODY, () => `frame of ${result.body.length} bytes, bound ${MAX_BODY}`);
      framed += 4 + result.body.length;
      check(framed <= pushed, () => `${framed} bytes framed from ${pushed} pushed`);
      decodeChecked(result.body);
    }
  }
  check(reader.copiedBytes <= 3 * pushed + 64, () => `${reader.copiedBytes} bytes copied for ${pushed} pushed`);
}

function decodeChecked(body: Uint8Array): void {
  let request;
  try {
    request = decodeRequest(body);
  } catch (error) {
    if (error instanceof ControlRequestError) return;
    throw error;
  }
  deepStrictEqual(decodeRequest(encodeRequest(request)), request);
}
