import { expect } from 'chai';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  FLAG_VERSION,
  HEADER_SIZE,
  MAX_PAYLOAD_SIZE,
  type MemoryRegion,
  PayloadSize,
  ProtocolFeature,
  Request,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
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
  encodeHeader,
  encodeMemoryTable,
  encodeRarpMac,
  encodeSingleMemoryRegion,
  encodeU64,
  encodeVringAddress,
  encodeVringState,
  expectedPayloadSize,
  hasMandatoryReply,
  memoryTableSize,
  protocolFeatureMask,
  requestName,
  validateRequestHeader,
  vringFdRequestValue,
} from '../../../../src/backend/modes/vhost-user/protocol';

function view(size: number): DataView {
  return new DataView(new ArrayBuffer(size));
}

function expectReason(fn: () => unknown, reason: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught, 'expected a VhostUserProtocolError').to.be.instanceOf(VhostUserProtocolError);
  expect((caught as VhostUserProtocolError).reason).to.equal(reason);
}

const region: MemoryRegion = { guestAddress: 0x1000n, size: 0x20000n, userAddress: 0x7f0000000000n, mmapOffset: 0x3000n };

describe('vhost-user protocol codec', () => {
  describe('constants', () => {
    it('has the spec numbers for requests, flags and feature bits', () => {
      expect(Request.GET_FEATURES).to.equal(1);
      expect(Request.SET_MEM_TABLE).to.equal(5);
      expect(Request.GET_VRING_BASE).to.equal(11);
      expect(Request.SET_VRING_ENABLE).to.equal(18);
      expect(Request.NET_SET_MTU).to.equal(20);
      expect(Request.GET_MAX_MEM_SLOTS).to.equal(36);
      expect(Request.REM_MEM_REG).to.equal(38);
      expect(FLAG_VERSION).to.equal(1);
      expect(FLAG_REPLY).to.equal(4);
      expect(FLAG_NEED_REPLY).to.equal(8);
      expect(ProtocolFeature.REPLY_ACK).to.equal(3);
      expect(ProtocolFeature.CONFIGURE_MEM_SLOTS).to.equal(15);
      expect(VHOST_USER_PROTOCOL_F_MQ).to.equal(1n);
      expect(VHOST_USER_PROTOCOL_F_REPLY_ACK).to.equal(8n);
      expect(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS).to.equal(protocolFeatureMask(15));
      expect(VHOST_USER_F_PROTOCOL_FEATURES).to.equal(0x40000000n);
    });

    it('names requests for logs', () => {
      expect(requestName(Request.SET_VRING_KICK)).to.equal('SET_VRING_KICK');
      expect(requestName(999)).to.equal('UNKNOWN(999)');
    });
  });

  describe('header', () => {
    it('round-trips little-endian', () => {
      const v = view(HEADER_SIZE);
      encodeHeader(v, 0, Request.SET_FEATURES, FLAG_VERSION | FLAG_NEED_REPLY, 8);
      expect(Array.from(new Uint8Array(v.buffer))).to.deep.equal([2, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]);
      expect(decodeHeader(v)).to.deep.equal({ request: 2, flags: 9, size: 8 });
    });

    it('rejects a short header', () => {
      expectReason(() => decodeHeader(view(11)), 'short_header');
      expectReason(() => decodeHeader(view(12), 4), 'short_header');
    });

    it('accepts a version 1 request with or without NEED_REPLY', () => {
      validateRequestHeader({ request: 1, flags: FLAG_VERSION, size: 0 });
      validateRequestHeader({ request: 1, flags: FLAG_VERSION | FLAG_NEED_REPLY, size: MAX_PAYLOAD_SIZE });
    });

    it('rejects wrong versions, reply or unknown flags, and oversized payloads', () => {
      expectReason(() => validateRequestHeader({ request: 1, flags: 0, size: 0 }), 'bad_version');
      expectReason(() => validateRequestHeader({ request: 1, flags: 2, size: 0 }), 'bad_version');
      expectReason(() => validateRequestHeader({ request: 1, flags: 3, size: 0 }), 'bad_version');
      expectReason(() => validateRequestHeader({ request: 1, flags: FLAG_VERSION | FLAG_REPLY, size: 0 }), 'bad_flags');
      expectReason(() => validateRequestHeader({ request: 1, flags: FLAG_VERSION | 0x100, size: 0 }), 'bad_flags');
      expectReason(() => validateRequestHeader({ request: 1, flags: FLAG_VERSION, size: MAX_PAYLOAD_SIZE + 1 }), 'oversized');
      expectReason(() => validateRequestHeader({ request: 1, flags: FLAG_VERSION, size: 0xffffffff }), 'oversized');
    });
  });

  describe('u64', () => {
    it('round-trips the full 64-bit range', () => {
      const v = view(8);
      encodeU64(v, 0, 0xfedcba9876543210n);
      expect(decodeU64(v)).to.equal(0xfedcba9876543210n);
    });

    it('rejects short and oversized payloads', () => {
      expectReason(() => decodeU64(view(0)), 'bad_size');
      expectReason(() => decodeU64(view(7)), 'bad_size');
      expectReason(() => decodeU64(view(9)), 'bad_size');
    });
  });

  describe('vring state', () => {
    it('round-trips', () => {
      const v = view(8);
      encodeVringState(v, 0, 3, 0xffff);
      expect(decodeVringState(v)).to.deep.equal({ index: 3, num: 0xffff });
    });

    it('rejects short and oversized payloads', () => {
      expectReason(() => decodeVringState(view(4)), 'bad_size');
      expectReason(() => decodeVringState(view(16)), 'bad_size');
    });
  });

  describe('vring address', () => {
    it('round-trips', () => {
      const v = view(PayloadSize.VRING_ADDRESS);
      const address = {
        index: 1,
        flags: 0,
        descriptorUserAddress: 0x7f0000001000n,
        usedUserAddress: 0x7f0000003000n,
        availableUserAddress: 0x7f0000002000n,
        logGuestAddress: 0n,
      };
      encodeVringAddress(v, 0, address);
      expect(decodeVringAddress(v)).to.deep.equal(address);
    });

    it('rejects short and oversized payloads', () => {
      expectReason(() => decodeVringAddress(view(32)), 'bad_size');
      expectReason(() => decodeVringAddress(view(48)), 'bad_size');
    });
  });

  describe('memory table', () => {
    it('round-trips 1 and 8 regions', () => {
      for (const count of [1, 8]) {
        const regions = Array.from({ length: count }, (_, i) => ({ ...region, guestAddress: region.guestAddress + BigInt(i) * 0x100000n }));
        const v = view(memoryTableSize(count));
        expect(encodeMemoryTable(v, 0, regions)).to.equal(8 + 32 * count);
        expect(decodeMemoryTable(v)).to.deep.equal(regions);
      }
    });

    it('accepts an empty table', () => {
      expect(decodeMemoryTable(view(8))).to.deep.equal([]);
    });

    it('rejects a payload shorter than its header', () => {
      expectReason(() => decodeMemoryTable(view(4)), 'bad_size');
    });

    it('rejects a size that does not match num_regions', () => {
      const short = view(memoryTableSize(2) - 1);
      short.setUint32(0, 2, true);
      expectReason(() => decodeMemoryTable(short), 'bad_size');
      const long = view(memoryTableSize(1) + 32);
      long.setUint32(0, 1, true);
      expectReason(() => decodeMemoryTable(long), 'bad_size');
    });

    it('rejects more than 8 regions', () => {
      const v = view(memoryTableSize(9));
      v.setUint32(0, 9, true);
      expectReason(() => decodeMemoryTable(v), 'too_many_regions');
      const huge = view(8);
      huge.setUint32(0, 0xffffffff, true);
      expectReason(() => decodeMemoryTable(huge), 'too_many_regions');
    });

    it('rejects zero-sized and wrapping regions', () => {
      for (const bad of [
        { ...region, size: 0n },
        { ...region, guestAddress: 0xffffffffffff0000n, size: 0x20000n },
        { ...region, userAddress: 0xfffffffffffff000n },
        { ...region, mmapOffset: 0xffffffffffffffffn },
      ]) {
        const v = view(memoryTableSize(1));
        encodeMemoryTable(v, 0, [bad]);
        expectReason(() => decodeMemoryTable(v), 'bad_region');
      }
    });
  });

  describe('single memory region', () => {
    it('round-trips with 8 bytes of padding first', () => {
      const v = view(PayloadSize.SINGLE_MEMORY_REGION);
      encodeSingleMemoryRegion(v, 0, region);
      expect(v.getBigUint64(0, true)).to.equal(0n);
      expect(v.getBigUint64(8, true)).to.equal(region.guestAddress);
      expect(decodeSingleMemoryRegion(v)).to.deep.equal(region);
    });

    it('rejects short, oversized and bad regions', () => {
      expectReason(() => decodeSingleMemoryRegion(view(32)), 'bad_size');
      expectReason(() => decodeSingleMemoryRegion(view(48)), 'bad_size');
      const v = view(PayloadSize.SINGLE_MEMORY_REGION);
      encodeSingleMemoryRegion(v, 0, { ...region, size: 0n });
      expectReason(() => decodeSingleMemoryRegion(v), 'bad_region');
    });
  });

  describe('vring fd request (kick/call/err)', () => {
    it('splits index and no-fd flag', () => {
      const v = view(8);
      encodeU64(v, 0, vringFdRequestValue(5, true));
      expect(decodeVringFdRequest(v)).to.deep.equal({ index: 5, noFd: true });
      encodeU64(v, 0, vringFdRequestValue(255, false));
      expect(decodeVringFdRequest(v)).to.deep.equal({ index: 255, noFd: false });
    });

    it('rejects unknown bits and wrong sizes', () => {
      const v = view(8);
      encodeU64(v, 0, 0x200n);
      expectReason(() => decodeVringFdRequest(v), 'bad_value');
      encodeU64(v, 0, 1n << 63n);
      expectReason(() => decodeVringFdRequest(v), 'bad_value');
      expectReason(() => decodeVringFdRequest(view(4)), 'bad_size');
      expectReason(() => decodeVringFdRequest(view(12)), 'bad_size');
    });
  });

  describe('MTU and RARP', () => {
    it('decodes an MTU and rejects values beyond 16 bits', () => {
      const v = view(8);
      encodeU64(v, 0, 1500n);
      expect(decodeMtu(v)).to.equal(1500);
      encodeU64(v, 0, 0x10000n);
      expectReason(() => decodeMtu(v), 'bad_value');
      expectReason(() => decodeMtu(view(2)), 'bad_size');
    });

    it('round-trips the RARP MAC and copies it out of the buffer', () => {
      const v = view(8);
      const mac = Uint8Array.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
      encodeRarpMac(v, 0, mac);
      const decoded = decodeRarpMac(v);
      expect(Array.from(decoded)).to.deep.equal(Array.from(mac));
      v.setUint8(0, 0);
      expect(decoded[0]).to.equal(0x52);
      expectReason(() => decodeRarpMac(view(6)), 'bad_size');
      expectReason(() => decodeRarpMac(view(16)), 'bad_size');
    });
  });

  describe('request shapes', () => {
    it('knows the payload size of every handled request', () => {
      expect(expectedPayloadSize(Request.GET_FEATURES)).to.equal(0);
      expect(expectedPayloadSize(Request.SET_FEATURES)).to.equal(8);
      expect(expectedPayloadSize(Request.SET_VRING_ADDR)).to.equal(40);
      expect(expectedPayloadSize(Request.GET_VRING_BASE)).to.equal(8);
      expect(expectedPayloadSize(Request.SET_MEM_TABLE)).to.equal('memory_table');
      expect(expectedPayloadSize(Request.ADD_MEM_REG)).to.equal(40);
      expect(expectedPayloadSize(12345)).to.equal(undefined);
    });

    it('marks the requests whose front-end waits for a typed reply', () => {
      expect(hasMandatoryReply(Request.GET_FEATURES)).to.equal(true);
      expect(hasMandatoryReply(Request.GET_VRING_BASE)).to.equal(true);
      expect(hasMandatoryReply(Request.GET_MAX_MEM_SLOTS)).to.equal(true);
      expect(hasMandatoryReply(Request.SET_MEM_TABLE)).to.equal(false);
      expect(hasMandatoryReply(Request.SET_VRING_KICK)).to.equal(false);
    });
  });
});
