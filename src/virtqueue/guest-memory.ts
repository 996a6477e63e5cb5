/**
 * Guest memory as the vhost-user front-end shares it: a few regions, each a
 * range of guest physical addresses (GPA) backed by an fd that we map.
 *
 * A region is mapped in chunks of at most `chunkSize` bytes (one ArrayBuffer
 * each: V8 cannot hold one buffer per many-GiB region), so a guest range may
 * cross chunk boundaries as well as region boundaries; `translate` splits it.
 * Every chunk has one long-lived Uint8Array and DataView: the hot path only
 * ever produces (chunk view, offset, length) triples, never new objects.
 *
 * Addresses are JS numbers. Guest addresses and sizes at or above 2^53 are
 * rejected at construction (and by `addressFromBigInt`), so arithmetic on
 * them stays exact. Everything the guest hands us is checked here before use.
 */
import type { SegmentList } from '../io/frame-io';

/** 2^53: no guest address, size or end may reach this. */
export const MAX_GUEST_ADDRESS = 2 ** 53;

/** Default size of one mapping chunk: 1 GiB. */
export const DEFAULT_CHUNK_SIZE = 2 ** 30;

/** The vhost-user description of one region (see vhost-user.rst, "Memory regions description"). */
export interface GuestRegionLayout {
  /** GPA of the region's first byte. */
  guestPhysAddr: number;
  /** Region size in bytes (> 0). */
  size: number;
  /** The front-end's virtual address (UVA) of the first byte; ring addresses arrive in this space. */
  userAddr: number;
  /** Offset of the region's first byte within its fd. */
  mmapOffset: number;
}

/** A region whose backing is already mapped (or, in unit tests, plain ArrayBuffers). */
export interface MappedRegion extends GuestRegionLayout {
  /**
   * The mapping, in order: chunk k holds mapping bytes [k*chunkSize, (k+1)*chunkSize).
   * Every chunk but the last is exactly chunkSize bytes.
   */
  chunks: ArrayBuffer[];
  chunkSize: number;
  /**
   * Where the region's first byte sits in the mapping (non-zero when the
   * mapping had to start at a page boundary below mmapOffset). Default 0.
   */
  mappingStart?: number;
}

/** A region to map from an fd (the fd stays owned by the caller). */
export interface RegionWithFd extends GuestRegionLayout {
  fd: number;
}

/**
 * Default bound on the guest memory one table may map: 1 TiB. Every chunk
 * costs V8 a few milliseconds to adopt (external memory accounting), so a
 * table must stay small enough to map well inside the front-end's reply
 * deadline: 1 TiB is 1024 chunks, a few seconds; a front-end declaring
 * 60 TiB of holes would otherwise stall the worker for minutes.
 */
export const DEFAULT_MAX_GUEST_MEMORY = 2 ** 40;

/** The mmap/munmap pair of the addon; injectable so tests need no addon. */
export interface GuestMemoryMapper {
  mmap(fd: number, offset: number, size: number, chunkSize: number): ArrayBuffer[];
  munmap(buffer: ArrayBuffer): void;
  /** Faults absorbed on guest memory by the whole process (the addon's SIGBUS guard); absent: never faults. */
  totalFaults?(): number;
  /** Faults absorbed on one chunk made by mmap. */
  chunkFaults?(buffer: ArrayBuffer): number;
}

/** Page size assumed for mmap offsets (x86-64 and the common arm64 configurations map at 4 KiB). */
const PAGE_SIZE = 4096;

/**
 * Convert a u64 address from the wire to a number; returns -1 when it is at
 * or above 2^53 (such an address can never be inside guest memory here).
 */
export function addressFromBigInt(value: bigint): number {
  if (value < 0n || value >= BigInt(MAX_GUEST_ADDRESS)) return -1;
  return Number(value);
}

function isAddress(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

/** One mapped region with its per-chunk views. */
class Region {
  readonly gpaStart: number;
  readonly gpaEnd: number;
  readonly uvaStart: number;
  readonly uvaEnd: number;
  readonly mappingStart: number;
  readonly chunkSize: number;
  readonly bytes: Uint8Array[];
  readonly views: DataView[];

  constructor(readonly source: MappedRegion) {
    const { guestPhysAddr, size, userAddr, mmapOffset, chunks, chunkSize } = source;
    const mappingStart = source.mappingStart ?? 0;
    if (!isAddress(guestPhysAddr) || !isAddress(size) || !isAddress(userAddr) || !isAddress(mmapOffset)) {
      throw new RangeError('guest memory region: address, size or offset is not an integer in [0, 2^53)');
    }
    if (size === 0) throw new RangeError('guest memory region: size 0');
    if (guestPhysAddr + size > MAX_GUEST_ADDRESS || userAddr + size > MAX_GUEST_ADDRESS) {
      throw new RangeError('guest memory region: ends at or beyond 2^53');
    }
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError('guest memory region: bad chunk size');
    if (!isAddress(mappingStart) || mappingStart >= chunkSize) throw new RangeError('guest memory region: bad mapping start');
    const needed = mappingStart + size;
    let mapped = 0;
    for (let k = 0; k < chunks.length; k++) {
      const length = chunks[k].byteLength;
      if (k < chunks.length - 1 && length !== chunkSize) throw new RangeError(`guest memory region: chunk ${k} is ${length} bytes, expected ${chunkSize}`);
      if (length > chunkSize) throw new RangeError('guest memory region: chunk larger than chunk size');
      mapped += length;
    }
    if (mapped < needed) throw new RangeError(`guest memory region: mapping has ${mapped} bytes, region needs ${needed}`);
    this.gpaStart = guestPhysAddr;
    this.gpaEnd = guestPhysAddr + size;
    this.uvaStart = userAddr;
    this.uvaEnd = userAddr + size;
    this.mappingStart = mappingStart;
    this.chunkSize = chunkSize;
    this.bytes = chunks.map((c) => new Uint8Array(c));
    this.views = chunks.map((c) => new DataView(c));
  }
}

/**
 * The guest's memory: translates guest physical ranges into views of our
 * mappings. Construct from already-mapped chunks (tests: plain ArrayBuffers),
 * or with `GuestMemory.map` from the region fds.
 */
export class GuestMemory {
  private readonly regions: Region[];
  /** Index of the region that served the last lookup (consecutive lookups tend to hit the same region). */
  private lastRegion = 0;
  private mapper: GuestMemoryMapper | null = null;
  /** The process-wide fault count when this memory was last checked (a change means: look at our chunks). */
  private faultBaseline = 0;
  private faultSeen = false;

  /** Result of the last successful `locate`: the chunk's bytes, its DataView, and the offset in it. */
  hitBytes: Uint8Array = new Uint8Array(0);
  hitView: DataView = new DataView(new ArrayBuffer(0));
  hitOffset = 0;

  /** Throws RangeError when a region is malformed or two regions overlap (in GPA or UVA space). */
  constructor(regions: MappedRegion[]) {
    this.regions = regions.map((r) => new Region(r));
    this.regions.sort((a, b) => a.gpaStart - b.gpaStart);
    for (let i = 1; i < this.regions.length; i++) {
      if (this.regions[i].gpaStart < this.regions[i - 1].gpaEnd) throw new RangeError('guest memory: regions overlap in guest physical space');
    }
    const byUva = [...this.regions].sort((a, b) => a.uvaStart - b.uvaStart);
    for (let i = 1; i < byUva.length; i++) {
      if (byUva[i].uvaStart < byUva[i - 1].uvaEnd) throw new RangeError('guest memory: regions overlap in front-end address space');
    }
  }

  /**
   * Map every region from its fd (MAP_SHARED, read/write) in chunks of
   * `chunkSize` bytes and return the memory. The fds stay the caller's. On
   * failure, whatever was mapped is unmapped again and the error rethrown.
   */
  static map(
    regions: RegionWithFd[],
    chunkSize = DEFAULT_CHUNK_SIZE,
    mapper: GuestMemoryMapper = loadNativeMapper(),
    maxTotalSize = DEFAULT_MAX_GUEST_MEMORY,
  ): GuestMemory {
    // Refused before the first mmap: mapping a huge table chunk by chunk is itself the attack.
    const tooLarge = totalSizeProblem(regions.map((r) => r.size), maxTotalSize);
    if (tooLarge !== null) throw new RangeError(`guest memory: ${tooLarge}`);
    const faultBaseline = mapper.totalFaults?.() ?? 0;
    const mapped: MappedRegion[] = [];
    try {
      for (const r of regions) {
        if (!isAddress(r.mmapOffset) || !isAddress(r.size) || r.size === 0) throw new RangeError('guest memory region: bad size or mmap offset');
        // mmap wants a page-aligned offset: start the mapping at the page holding mmapOffset.
        const mapOffset = r.mmapOffset - (r.mmapOffset % PAGE_SIZE);
        const mappingStart = r.mmapOffset - mapOffset;
        const chunks = mapper.mmap(r.fd, mapOffset, mappingStart + r.size, chunkSize);
        mapped.push({ guestPhysAddr: r.guestPhysAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.mmapOffset, chunks, chunkSize, mappingStart });
      }
      const memory = new GuestMemory(mapped);
      memory.mapper = mapper;
      memory.faultBaseline = faultBaseline;
      return memory;
    } catch (e) {
      for (const m of mapped) for (const c of m.chunks) mapper.munmap(c);
      throw e;
    }
  }

  /**
   * True once a SIGBUS on one of this memory's chunks was absorbed (its file
   * was shorter than the region or was truncated): the chunk now reads as
   * zeros from the fault on, and the rings in it must be treated as broken.
   * Cheap while nothing faulted (one addon call comparing a counter).
   */
  get faulted(): boolean {
    if (this.faultSeen) return true;
    const mapper = this.mapper;
    if (mapper === null || mapper.totalFaults === undefined || mapper.chunkFaults === undefined) return false;
    const total = mapper.totalFaults();
    if (total === this.faultBaseline) return false;
    this.faultBaseline = total;
    for (const r of this.regions) {
      for (const c of r.source.chunks) {
        if (mapper.chunkFaults(c) > 0) {
          this.faultSeen = true;
          return true;
        }
      }
    }
    return false;
  }

  /** Number of regions. */
  get regionCount(): number {
    return this.regions.length;
  }

  /** The regions as they were described (for logs and the control API). */
  layouts(): GuestRegionLayout[] {
    return this.regions.map((r) => ({ guestPhysAddr: r.gpaStart, size: r.gpaEnd - r.gpaStart, userAddr: r.uvaStart, mmapOffset: r.source.mmapOffset }));
  }

  /** Index of the region containing gpa, or -1. */
  private findRegion(gpa: number): number {
    const regions = this.regions;
    const cached = regions[this.lastRegion];
    if (cached !== undefined && gpa >= cached.gpaStart && gpa < cached.gpaEnd) return this.lastRegion;
    for (let i = 0; i < regions.length; i++) {
      if (gpa >= regions[i].gpaStart && gpa < regions[i].gpaEnd) {
        this.lastRegion = i;
        return i;
      }
    }
    return -1;
  }

  /**
   * Append guest range [gpa, gpa+length) to `out` as one or more segments
   * (split where chunks or regions end). Returns false, with `out` unchanged,
   * when any byte lies outside guest memory, the arguments are not valid
   * addresses, or `out` has no room. A zero length appends nothing and
   * returns true.
   */
  translate(gpa: number, length: number, out: SegmentList): boolean {
    if (length === 0) return true;
    if (!(gpa >= 0 && length > 0 && gpa + length <= MAX_GUEST_ADDRESS)) return false;
    const savedCount = out.count;
    const savedTotal = out.totalLength;
    let cursor = gpa;
    let remaining = length;
    while (remaining > 0) {
      const index = this.findRegion(cursor);
      if (index < 0) break;
      const region = this.regions[index];
      const mappingOffset = region.mappingStart + (cursor - region.gpaStart);
      const chunk = Math.floor(mappingOffset / region.chunkSize);
      const offset = mappingOffset - chunk * region.chunkSize;
      const n = Math.min(remaining, region.gpaEnd - cursor, region.chunkSize - offset);
      if (!out.push(region.bytes[chunk], offset, n)) break;
      cursor += n;
      remaining -= n;
    }
    if (remaining === 0) return true;
    out.count = savedCount;
    out.totalLength = savedTotal;
    return false;
  }

  /**
   * Find guest range [gpa, gpa+length) as one contiguous piece of one chunk.
   * On success sets hitBytes/hitView/hitOffset and returns true; returns
   * false when the range is outside guest memory or crosses a chunk or
   * region boundary. Allocates nothing (for indirect tables on the hot path).
   */
  locate(gpa: number, length: number): boolean {
    if (!(gpa >= 0 && length >= 0 && gpa + length <= MAX_GUEST_ADDRESS)) return false;
    const index = this.findRegion(gpa);
    if (index < 0) return false;
    const region = this.regions[index];
    if (gpa + length > region.gpaEnd) return false;
    const mappingOffset = region.mappingStart + (gpa - region.gpaStart);
    const chunk = Math.floor(mappingOffset / region.chunkSize);
    const offset = mappingOffset - chunk * region.chunkSize;
    if (offset + length > region.bytes[chunk].byteLength) return false;
    this.hitBytes = region.bytes[chunk];
    this.hitView = region.views[chunk];
    this.hitOffset = offset;
    return true;
  }

  /**
   * A contiguous view of a ring structure: { bytes, view, offset } of the
   * chunk holding [gpa, gpa+length), or null when it is outside guest memory
   * or crosses a chunk/region boundary. For configuration time (allocates).
   */
  contiguous(gpa: number, length: number): { bytes: Uint8Array; view: DataView; offset: number } | null {
    if (!this.locate(gpa, length)) return null;
    return { bytes: this.hitBytes, view: this.hitView, offset: this.hitOffset };
  }

  /** True when every byte of [gpa, gpa+length) is guest memory (possibly across regions). */
  contains(gpa: number, length: number): boolean {
    if (!(gpa >= 0 && length >= 0 && gpa + length <= MAX_GUEST_ADDRESS)) return false;
    let cursor = gpa;
    const end = gpa + length;
    // Bounded: each step moves to the end of a distinct region.
    for (let steps = 0; cursor < end && steps <= this.regions.length; steps++) {
      const index = this.findRegion(cursor);
      if (index < 0) return false;
      cursor = this.regions[index].gpaEnd;
    }
    return cursor >= end;
  }

  /**
   * Translate a front-end virtual address (as in SET_VRING_ADDR) to a guest
   * physical address; returns -1 when no region holds it.
   */
  uvaToGpa(uva: number): number {
    if (!isAddress(uva)) return -1;
    for (const r of this.regions) {
      if (uva >= r.uvaStart && uva < r.uvaEnd) return r.gpaStart + (uva - r.uvaStart);
    }
    return -1;
  }

  /**
   * Unmap every chunk (only when mapped by `GuestMemory.map`; buffers given
   * to the constructor are left alone). The memory must not be used afterwards.
   */
  unmap(): void {
    const mapper = this.mapper;
    this.mapper = null;
    if (mapper === null) return;
    for (const r of this.regions) for (const c of r.source.chunks) mapper.munmap(c);
  }
}

/** The addon's mmap/munmap, loaded on first use so that unit tests of this module need no addon. */
function loadNativeMapper(): GuestMemoryMapper {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily: unit tests of this module need no addon
  const { native } = require('../sys/native') as typeof import('../sys/native');
  return {
    mmap: (fd, offset, size, chunkSize) => native.mmap(fd, offset, size, chunkSize),
    munmap: (b) => native.munmap(b),
    totalFaults: () => native.guardFaults(),
    chunkFaults: (b) => native.guardMappingFaults(b),
  };
}

// ---------------------------------------------------------------------------
// Checks on region fds, made before anything is mapped (vhost-user's main
// thread runs them on SET_MEM_TABLE and ADD_MEM_REG).

/** File type bits of st_mode (fixed Linux ABI values). */
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
/** fcntl seal bits (linux/fcntl.h). */
export const F_SEAL_SEAL = 0x0001;
export const F_SEAL_SHRINK = 0x0002;

/** What checkRegionFd needs of the system; the addon in the daemon, fakes in unit tests. */
export interface RegionFdInspector {
  /** [st_mode, st_size]; throws when the fd is not open. */
  fstat(fd: number): [number, number];
  /** F_SEAL_* bits, or -1 when the file does not support seals. */
  getSeals(fd: number): number;
  /** F_ADD_SEALS; throws when refused. */
  addSeals(fd: number, seals: number): void;
}

/** The outcome of checkRegionFd. */
export type RegionFdCheck = { ok: true; shrinkSealed: boolean; fileSize: number } | { ok: false; problem: string };

/**
 * Check that a region can be mapped from `fd` without touching pages past
 * the file's end: the fd must be a regular file (a memfd, a /dev/shm or
 * hugetlbfs file: what QEMU passes) at least mmapOffset + size bytes long.
 * Then forbid shrinking it where the file allows (F_SEAL_SHRINK on a memfd
 * created with MFD_ALLOW_SEALING and not yet F_SEAL_SEAL'd; QEMU's memfd
 * backend seals grow+shrink+seal itself by default). A file that cannot be
 * sealed can still be truncated later: the addon's SIGBUS guard covers that.
 */
export function checkRegionFd(fd: number, mmapOffset: bigint, size: bigint, inspector: RegionFdInspector): RegionFdCheck {
  let mode: number;
  let fileSize: number;
  try {
    [mode, fileSize] = inspector.fstat(fd);
  } catch (error) {
    return { ok: false, problem: `fstat failed: ${error instanceof Error ? error.message : String(error)}` };
  }
  if ((mode & S_IFMT) !== S_IFREG) return { ok: false, problem: `fd is not a regular file or memfd (st_mode 0o${mode.toString(8)})` };
  if (mmapOffset + size > BigInt(fileSize)) {
    return { ok: false, problem: `region needs file bytes up to ${mmapOffset + size}, the file has ${fileSize}` };
  }
  let seals = inspector.getSeals(fd);
  if (seals >= 0 && (seals & F_SEAL_SHRINK) === 0 && (seals & F_SEAL_SEAL) === 0) {
    try {
      inspector.addSeals(fd, F_SEAL_SHRINK);
      seals |= F_SEAL_SHRINK;
    } catch {
      // Another process may have sealed it meanwhile; the guard still covers a truncation.
    }
  }
  return { ok: true, shrinkSealed: seals >= 0 && (seals & F_SEAL_SHRINK) !== 0, fileSize };
}

/** Null when `sizes` add up to at most `limit` bytes, else why not. */
export function totalSizeProblem(sizes: readonly (number | bigint)[], limit: number): string | null {
  let total = 0n;
  for (const size of sizes) total += BigInt(size);
  return total > BigInt(limit) ? `${total} bytes of guest memory exceed the ${limit}-byte bound` : null;
}

/** The addon's fstat and seal calls, loaded on first use. */
export function nativeRegionFdInspector(): RegionFdInspector {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily: unit tests of this module need no addon
  const { native } = require('../sys/native') as typeof import('../sys/native');
  return { fstat: (fd) => native.fstat(fd), getSeals: (fd) => native.getSeals(fd), addSeals: (fd, seals) => native.addSeals(fd, seals) };
}
