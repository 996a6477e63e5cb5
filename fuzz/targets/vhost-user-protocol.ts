/**
 * Fuzz target: the vhost-user message codecs. The input is one message
 * (header + payload); every payload decoder is run over the payload. Only a
 * VhostUserProtocolError may escape a decoder, and what a decoder returns
 * must respect the limits it promises.
 */
import {
  MAX_MEM_TABLE_REGIONS,
  MAX_PAYLOAD_SIZE,
  VhostUserProtocolError,
  decodeHeader,
  decodeMemoryTable,
  decodeMtu,
  decodeRarpMac,
  decodeSingleMemoryRegion,
  decodeU64,
  decodeVringAddress,
  decodeVringFdRequest,
  decodeVringState,
  expectedPayloadSize,
  regionProblem,
  validateRequestHeader,
} from '../../src/backend/modes/vhost-user/protocol';
import { check } from '../input';

function refusedOnly(decode: () => void): void {
  try {
    decode();
  } catch (error) {
    if (!(error instanceof VhostUserProtocolError)) throw error;
  }
}

export function fuzz(data: Buffer): void {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let size = data.byteLength;
  refusedOnly(() => {
    const header = decodeHeader(view);
    validateRequestHeader(header);
    check(header.size <= MAX_PAYLOAD_SIZE, () => `accepted payload size ${header.size}`);
    expectedPayloadSize(header.request);
    size = Math.min(header.size, data.byteLength - 12);
  });
  const start = Math.min(12, data.byteLength);
  const payload = new DataView(data.buffer, data.byteOffset + start, Math.min(size, data.byteLength - start));
  refusedOnly(() => {
    const regions = decodeMemoryTable(payload);
    check(regions.length <= MAX_MEM_TABLE_REGIONS, () => `${regions.length} regions decoded`);
    for (const region of regions) check(regionProblem(region) === null, () => 'a decoded region is not sane');
  });
  refusedOnly(() => check(regionProblem(decodeSingleMemoryRegion(payload)) === null, () => 'the decoded region is not sane'));
  refusedOnly(() => {
    const request = decodeVringFdRequest(payload);
    check(request.index >= 0 && request.index <= 0xff, () => `vring index ${request.index}`);
  });
  refusedOnly(() => {
    const mtu = decodeMtu(payload);
    check(mtu >= 0 && mtu <= 0xffff, () => `MTU ${mtu}`);
  });
  refusedOnly(() => check(decodeRarpMac(payload).length === 6, () => 'RARP MAC is not 6 bytes'));
  refusedOnly(() => decodeU64(payload));
  refusedOnly(() => decodeVringState(payload));
  refusedOnly(() => decodeVringAddress(payload));
}
