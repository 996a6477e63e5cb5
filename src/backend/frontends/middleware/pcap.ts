/**
 * pcap capture of the frames crossing ferry (--pcap FILE), in the classic
 * libpcap format that tcpdump and wireshark read (LINKTYPE_ETHERNET).
 *
 * The main thread creates the file and writes the global header once
 * (`createPcapFile`); each worker opens it with O_APPEND and writes every
 * record (16-byte header + frame) with one writev, so records from several
 * workers never interleave. Capture copies nothing for the data path when it
 * is off; when it is on, each frame costs one writev of views.
 */
import * as fs from 'fs';
import { SegmentList } from '../../../io/frame-io';

const PCAP_MAGIC = 0xa1b2c3d4;
const LINKTYPE_ETHERNET = 1;
/** Frames are recorded whole: the snap length is the largest frame ferry handles. */
export const PCAP_SNAPLEN = 65536 + 14;

/** Create (truncate) FILE and write the pcap global header. */
export function createPcapFile(path: string): void {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(PCAP_MAGIC, 0);
  header.writeUInt16LE(2, 4); // version major
  header.writeUInt16LE(4, 6); // version minor
  header.writeInt32LE(0, 8); // thiszone
  header.writeUInt32LE(0, 12); // sigfigs
  header.writeUInt32LE(PCAP_SNAPLEN, 16);
  header.writeUInt32LE(LINKTYPE_ETHERNET, 20);
  fs.writeFileSync(path, header, { mode: 0o600 });
}

/**
 * For a frontend that writes its own capture on the main thread (pasta,
 * stream): create FILE with its header and open it for records, or null
 * when no capture was asked for.
 */
export function startPcap(path: string | null): PcapWriter | null {
  if (path === null) return null;
  createPcapFile(path);
  return new PcapWriter(path);
}

/** Appends records to a pcap file created by createPcapFile. */
export class PcapWriter {
  private readonly fd: number;
  private readonly recordHeader = Buffer.alloc(16);
  private readonly parts: Uint8Array[] = [];
  /** Records that could not be written (disk full...): counted, never fatal. */
  failures = 0;

  /** Open FILE for appending. Throws if it cannot be opened. */
  constructor(path: string) {
    this.fd = fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_APPEND);
  }

  /** Record the first `length` bytes of `frame` (a frame in guest or pool memory). */
  write(frame: SegmentList, length: number): void {
    const captured = Math.min(length, PCAP_SNAPLEN);
    const nowMs = Date.now();
    const header = this.recordHeader;
    header.writeUInt32LE(Math.floor(nowMs / 1000), 0);
    header.writeUInt32LE((nowMs % 1000) * 1000, 4);
    header.writeUInt32LE(captured, 8);
    header.writeUInt32LE(length, 12);
    const parts = this.parts;
    parts.length = 0;
    parts.push(header);
    let left = captured;
    for (let i = 0; i < frame.count && left > 0; i++) {
      const n = Math.min(frame.lengths[i], left);
      const start = frame.offsets[i];
      parts.push(frame.buffers[i].subarray(start, start + n));
      left -= n;
    }
    try {
      fs.writevSync(this.fd, parts);
    } catch {
      this.failures++;
    }
  }

  /** Record a frame held in one contiguous buffer. */
  writeBytes(bytes: Uint8Array): void {
    const list = this.single;
    list.clear();
    list.push(bytes, 0, bytes.length);
    this.write(list, bytes.length);
  }
  private readonly single = new SegmentList(1);

  /** Close the file. */
  close(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}
