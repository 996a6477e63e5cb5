/**
 * Typed binding to the C++ addon (addon/ferry.cc).
 *
 * The addon holds only the syscalls Node lacks; it has no protocol logic.
 * Every call is a thin wrapper: on failure it throws an Error whose `code` is
 * the errno name ('EAGAIN', 'EBADF', ...) and whose `errno` is the number.
 * Calls that are expected to hit EAGAIN on non-blocking fds return a sentinel
 * instead of throwing (documented per call), because throwing on the hot path
 * would allocate.
 *
 * This module may be imported from any layer (stack, virtqueue, backend).
 */
import * as path from 'path';

/** Error thrown by addon calls. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** Result of recvmsg on a UNIX stream socket carrying SCM_RIGHTS. */
export interface RecvFdsResult {
  /** Bytes received; 0 means the peer closed the connection. */
  bytes: number;
  /** File descriptors received with the message (already owned by us, CLOEXEC). */
  fds: number[];
  /** True when the kernel reported MSG_CTRUNC (more fds than we had room for; extras are closed by the kernel). */
  ctrunc: boolean;
}

/**
 * Epoll-based readiness source bound to the calling thread's libuv loop.
 * One wake-up of libuv calls `callback(count)` once, after epoll_wait filled
 * `events` with `count` pairs [fd, epollEvents] (so events.length/2 is the
 * batch limit). No allocation per wake-up.
 */
export interface Poller {
  /** Watch fd for the given epoll event bits (level-triggered). */
  add(fd: number, events: number): void;
  /** Change the event bits for fd. */
  modify(fd: number, events: number): void;
  /** Stop watching fd (ignores ENOENT/EBADF). */
  remove(fd: number): void;
  /** Close the epoll fd and stop the libuv handle; no callbacks after this. Idempotent. */
  close(): void;
  /** Let the handle keep the thread's event loop alive (the default). */
  ref(): void;
  /** Stop the handle from keeping the event loop alive on its own (still delivers callbacks). */
  unref(): void;
}

/**
 * `events` must have length >= 2; a batch holds at most min(events.length/2, 1024) pairs.
 * The callback runs like any libuv callback (microtasks/nextTicks run after it;
 * an exception becomes an 'uncaughtException'). While open, the Poller is kept
 * alive by the addon; an open Poller is closed automatically when its thread's
 * environment is torn down (e.g. a worker exits).
 */
export interface PollerConstructor {
  new (events: Int32Array, callback: (count: number) => void): Poller;
}

/**
 * An iovec list for scatter/gather socket calls: `count` entries, entry i is
 * bytes [offsets[i], offsets[i] + lengths[i]) of `buffers[i]` (an ArrayBuffer,
 * e.g. a guest-memory mapping, or a Uint8Array whose own byteOffset is added).
 * The arrays are allocated once and reused; the addon builds `struct iovec`
 * in per-thread scratch space (at most IOV_MAX = 1024 entries). Every
 * (offset, length) is checked against its buffer: out of bounds throws a
 * RangeError with code 'ERANGE' and nothing is sent/received. A detached
 * buffer has length 0.
 */
export interface IoVecList {
  buffers: (ArrayBuffer | Uint8Array)[];
  offsets: Float64Array;
  lengths: Float64Array;
  count: number;
}

/** What nsOpen opened inside the namespaces. */
export interface NsOpenResult {
  /** The tap/tun fd (O_NONBLOCK, CLOEXEC), or -1 when none was asked for. */
  tunFd: number;
  /** The device's actual name (the kernel's choice when '' or a pattern like 'tap%d' was given); '' without a tap. */
  tunName: string;
  /** One fd per requested socket, in request order (SOCK_NONBLOCK|SOCK_CLOEXEC). */
  sockets: number[];
}

export interface Native {
  // ---- generic fd calls ----
  close(fd: number): void;
  dup(fd: number): number;
  /** Set or clear O_NONBLOCK. */
  setNonBlocking(fd: number, on: boolean): void;
  /** Set FD_CLOEXEC. */
  setCloexec(fd: number, on: boolean): void;
  /** read(2) into buf[offset, offset+length); returns bytes or -1 on EAGAIN. */
  read(fd: number, buf: Uint8Array, offset: number, length: number): number;
  /** write(2) from buf[offset, offset+length); returns bytes or -1 on EAGAIN. */
  write(fd: number, buf: Uint8Array, offset: number, length: number): number;
  /** readv(2); returns bytes or -1 on EAGAIN. */
  readv(fd: number, iov: IoVecList): number;
  /** writev(2); returns bytes or -1 on EAGAIN. */
  writev(fd: number, iov: IoVecList): number;

  // ---- UNIX sockets (vhost-user, control, systemd notify) ----
  /** socket+bind+listen on a UNIX stream path (CLOEXEC, NONBLOCK). Unlinks nothing. */
  unixListen(path: string, backlog: number): number;
  /** socket+connect to a UNIX stream path (CLOEXEC, blocking). */
  unixConnect(path: string): number;
  /** accept4(CLOEXEC|NONBLOCK); returns -1 on EAGAIN. */
  accept(fd: number): number;
  /** recvmsg with room for up to maxFds SCM_RIGHTS fds; returns null on EAGAIN. */
  recvFds(fd: number, buf: Uint8Array, offset: number, length: number, maxFds: number): RecvFdsResult | null;
  /** sendmsg with SCM_RIGHTS; returns bytes sent (-1 on EAGAIN). MSG_NOSIGNAL. */
  sendFds(fd: number, buf: Uint8Array, offset: number, length: number, fds: number[]): number;
  /** socketpair(AF_UNIX, type|CLOEXEC), type defaults to SOCK_STREAM; blocking. */
  socketpair(type?: number): [number, number];
  /** One datagram to a UNIX datagram socket path ('@' prefix = abstract), as sd_notify does. Never blocks: a full receiver queue throws EAGAIN. */
  unixSendDatagram(path: string, buf: Uint8Array): void;
  /** getsockopt SO_PEERCRED: [pid, uid, gid]. */
  peerCred(fd: number): [number, number, number];
  /** fstat: returns [st_mode, st_size]. */
  fstat(fd: number): [number, number];
  /** What fd is, as its /proc/self/fd link says (read through a directory fd opened at load, so it works after confinement). */
  fdLink(fd: number): string;

  // ---- guest memory ----
  /** memfd_create(name, MFD_CLOEXEC) + ftruncate(size). For tests and the test front-end. */
  memfdCreate(name: string, size: number): number;
  /**
   * mmap(fd, offset .. offset+size) MAP_SHARED, PROT_READ|PROT_WRITE, split
   * into separate mappings of at most chunkSize bytes (chunkSize a multiple of
   * the page size, at most 2^32; offset page aligned; size > 0; else throws
   * code 'EINVAL'). Returns one external ArrayBuffer per chunk, in order (the
   * last one may be shorter). If any chunk fails, the ones already made are
   * unmapped and the error thrown. A chunk is unmapped when munmap() is
   * called on it or, failing that, when it is garbage collected.
   */
  mmap(fd: number, offset: number, size: number, chunkSize: number): ArrayBuffer[];
  /**
   * Unmap an ArrayBuffer returned by mmap and detach it (byteLength becomes 0).
   * Idempotent; a no-op for other ArrayBuffers. Chunks are per thread: do not
   * transfer them (a transferred chunk is only unmapped by its finalizer).
   */
  munmap(buffer: ArrayBuffer): void;

  // ---- eventfd ----
  /** eventfd(initval, EFD_CLOEXEC|EFD_NONBLOCK). */
  eventfd(initval: number): number;
  /** Read (and reset) the counter; returns -1 on EAGAIN (counter was 0). */
  eventfdRead(fd: number): number;
  /** Add value to the counter (EAGAIN ignored: the counter is saturated, a wake-up is pending anyway). */
  eventfdWrite(fd: number, value: number): void;

  Poller: PollerConstructor;

  // ---- inet / netlink sockets (for the stack) ----
  /** socket(domain, type|SOCK_NONBLOCK|SOCK_CLOEXEC, protocol). */
  socket(domain: number, type: number, protocol: number): number;
  /** bind to a raw sockaddr (bytes of sockaddr_in/sockaddr_in6/sockaddr_nl). */
  bind(fd: number, sockaddr: Uint8Array): void;
  /** connect to a raw sockaddr; returns 0, or -1 for EINPROGRESS. */
  connect(fd: number, sockaddr: Uint8Array): number;
  listen(fd: number, backlog: number): void;
  /** accept4 returning the fd (or -1 on EAGAIN) and writing the peer sockaddr into addrOut (length returned via addrLenOut[0]). */
  acceptFrom(fd: number, addrOut: Uint8Array, addrLenOut: Int32Array): number;
  /** getsockname into addrOut; returns the address length. */
  getsockname(fd: number, addrOut: Uint8Array): number;
  /** getpeername into addrOut; returns the address length. */
  getpeername(fd: number, addrOut: Uint8Array): number;
  setsockoptInt(fd: number, level: number, name: number, value: number): void;
  getsockoptInt(fd: number, level: number, name: number): number;
  /** setsockopt from a byte buffer (e.g. SO_BINDTODEVICE, IPV6_V6ONLY structs). */
  setsockoptBytes(fd: number, level: number, name: number, value: Uint8Array): void;
  /** getsockopt into a byte buffer (e.g. TCP_INFO); returns the length written. */
  getsockoptBytes(fd: number, level: number, name: number, out: Uint8Array): number;
  /** shutdown(fd, how). */
  shutdown(fd: number, how: number): void;
  /**
   * sendmsg with iovecs, optional destination sockaddr (null for connected),
   * flags (MSG_NOSIGNAL always added), optional raw control message bytes
   * (e.g. an IP_PKTINFO cmsg). Returns bytes or -1 on EAGAIN.
   */
  sendmsg(fd: number, iov: IoVecList, sockaddr: Uint8Array | null, flags: number, control?: Uint8Array | null): number;
  /**
   * recvmsg into iovecs; flags e.g. MSG_PEEK. The source address is written
   * into addrOut (if given) and its length into meta[0] (0 without addrOut);
   * meta[1] receives msg_flags (MSG_TRUNC, MSG_CTRUNC...). With controlOut,
   * raw control messages are written there and their length into meta[2]
   * (meta then needs 3 elements). Returns bytes or -1 on EAGAIN.
   */
  recvmsg(fd: number, iov: IoVecList, flags: number, addrOut: Uint8Array | null, meta: Int32Array, controlOut?: Uint8Array | null): number;
  /**
   * sendmmsg: `count` datagrams; datagram i uses iovec entries
   * [iovStart[i], iovStart[i]+iovCount[i]) of iov and destination
   * addrs[i] (or null; addrs itself may be null for a connected socket).
   * MSG_NOSIGNAL always added. count <= 1024. Returns datagrams sent (may be
   * fewer than count) or -1 on EAGAIN.
   */
  sendmmsg(fd: number, iov: IoVecList, iovStart: Int32Array, iovCount: Int32Array, addrs: (Uint8Array | null)[] | null, count: number, flags: number): number;
  /**
   * recvmmsg: up to `count` datagrams, datagram i into iovec entry i of iov
   * (one entry each); lengths received into lensOut[i], source address into
   * addrs[i] (length into addrLens[i]); msg_flags into flagsOut[i] if given
   * (MSG_TRUNC marks a datagram longer than its buffer). count <= 1024.
   * Returns datagrams received or -1 on EAGAIN.
   */
  recvmmsg(fd: number, iov: IoVecList, lensOut: Int32Array, addrs: Uint8Array[] | null, addrLens: Int32Array | null, count: number, flags: number, flagsOut?: Int32Array | null): number;
  /**
   * Read one message from the socket error queue (MSG_ERRQUEUE|MSG_DONTWAIT):
   * see the stack's ICMP error handling. The control messages are written raw
   * into controlOut (the caller parses sock_extended_err); meta[0] = control
   * length, meta[1] = msg_flags, meta[2] = length of the address written to
   * addrOut (the original destination) when addrOut is given. Returns bytes
   * or -1 if none.
   */
  recvErrqueue(fd: number, dataOut: Uint8Array, controlOut: Uint8Array, meta: Int32Array, addrOut?: Uint8Array | null): number;
  /** splice(2) between fds (pipes), SPLICE_F_MOVE|SPLICE_F_NONBLOCK; returns bytes or -1 on EAGAIN. */
  splice(fdIn: number, fdOut: number, length: number): number;
  /** pipe2(O_NONBLOCK|O_CLOEXEC): [readFd, writeFd]. */
  pipe(): [number, number];
  /** ioctl(fd, request, &int) returning the int, e.g. SIOCOUTQ / SIOCINQ queue sizes. */
  ioctlInt(fd: number, request: number): number;

  // ---- namespaces and tap devices (ferry pasta) ----
  /**
   * Open a tap and/or sockets inside other namespaces. Forks a
   * single-threaded child (a multi-threaded process cannot join a user
   * namespace) that setns()es into each of `namespaceFds` in order (a user
   * namespace before the network namespace it owns), then, if tunName is
   * not null, opens /dev/net/tun with TUNSETIFF(tunName, tunFlags), then
   * creates one socket per [domain, type, protocol] triple of the flat
   * `sockets` array (at most 16), and passes everything back with
   * SCM_RIGHTS before exiting. Blocks the calling thread until then (at most
   * timeoutMs, default 5000; the child is killed on timeout). All or
   * nothing: on failure no fd is left open and the error's `syscall` names
   * the failing step ('setns', 'open /dev/net/tun', 'ioctl TUNSETIFF',
   * 'socket'), `code` its errno. An fd keeps its namespace: the tap stays in
   * the target namespace, the sockets bind and connect there.
   */
  nsOpen(namespaceFds: number[], tunName: string | null, tunFlags: number, sockets: number[], timeoutMs?: number | null): NsOpenResult;
  /** open /dev/net/tun (O_NONBLOCK, CLOEXEC) + TUNSETIFF in the calling thread's namespace: [fd, actual name]. */
  tunOpen(name: string, flags: number): [number, string];
  /**
   * ioctl TUNSETOFFLOAD on a tap opened with IFF_VNET_HDR: TUN_F_* offloads
   * the reader accepts (TUN_F_CSUM: partial checksums, TUN_F_TSO4/6: TCP
   * segments up to 64 KiB described by the virtio-net header). Throws on error.
   */
  tunSetOffload(fd: number, flags: number): void;

  /**
   * A full memory barrier (atomic_thread_fence seq_cst). Needed between
   * publishing the used index and reading the guest's notification flags, a
   * store-load ordering JS cannot express on non-shared ArrayBuffers.
   */
  fence(): void;

  // ---- constants ----
  /**
   * Numbers from the system headers: EPOLL*, AF_*, SOCK_*, IPPROTO_*, SOL_*,
   * SO_*, TCP_*, IP_*, IPV6_*, SO_EE_ORIGIN_*, MSG_*, SCM_*, SHUT_*,
   * NETLINK_*, RTMGRP_*, SIOCINQ, SIOCOUTQ, TIOCOUTQ, FIONREAD, S_IF*, errno values
   * (EAGAIN, EINPROGRESS, ECONNREFUSED, ...), IOV_MAX, SOMAXCONN, PAGE_SIZE,
   * IFF_TUN, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, TUN_F_CSUM, TUN_F_TSO4,
   * TUN_F_TSO6, TUN_F_TSO_ECN, CLONE_NEWNET, CLONE_NEWUSER.
   * EPOLLET is the int32 value (negative), as it appears in Poller batches.
   */
  constants: Record<string, number>;
}

function load(): Native {
  const root = path.resolve(__dirname, '..', '..', '..');
  const candidates = [
    path.join(root, 'build', 'Release', 'ferry_native.node'),
    path.join(root, 'build', 'Debug', 'ferry_native.node'),
  ];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon's path is known only at run time (Release or Debug build)
      return require(candidate) as Native;
    } catch (e) {
      lastError = e;
    }
  }
  throw new Error(`ferry: native addon not built (run "npm ci" or "npm run build:addon"): ${String(lastError)}`);
}

/** The addon, loaded once per thread. */
export const native: Native = load();

/**
 * The guest-memory fault guard and the seal calls of addon/guard.cc (merged
 * into Native). Every chunk returned by mmap() is guarded: a SIGBUS on it
 * (its file shrank under it, or never covered it) maps zero pages over the
 * rest of the chunk and counts a fault instead of killing the process.
 */
export interface Native {
  /** Faults absorbed on guest memory by this process so far (every thread). */
  guardFaults(): number;
  /** Faults absorbed on one chunk returned by mmap() (0 for other buffers). */
  guardMappingFaults(buffer: ArrayBuffer): number;
  /** True when the SIGBUS handler is installed. */
  guardInstalled(): boolean;
  /** fcntl(F_ADD_SEALS); throws (EPERM when F_SEAL_SEAL is set, EINVAL when the file cannot be sealed). */
  addSeals(fd: number, seals: number): void;
  /** fcntl(F_GET_SEALS): the F_SEAL_* bits, or -1 when the file does not support seals. */
  getSeals(fd: number): number;
  /** memfd_create(name, MFD_CLOEXEC|MFD_ALLOW_SEALING) + ftruncate(size). For tests. */
  memfdCreateSealable(name: string, size: number): number;
}

/** Self-confinement (addon/isolate.cc; the policy and its order are in src/backend/cli/isolation.ts). */
export interface Native {
  /** The seccomp allow-list by name; with namespaceHelpers also setns/fork (pasta's namespace helper). */
  isolationSyscalls(namespaceHelpers: boolean): string[];
  /**
   * Sets no_new_privs and installs the allow-list on every thread
   * (SECCOMP_FILTER_FLAG_TSYNC): any other call kills the process, or with
   * logOnly is allowed and logged by the kernel (SECCOMP_RET_LOG). Throws.
   */
  isolationSeccomp(namespaceHelpers: boolean, logOnly: boolean): void;
  /** Empties the capability bounding set; false when CAP_SETPCAP is missing and it stays as it was. */
  isolationDropBoundingSet(): boolean;
  /** Clears the ambient set and zeroes effective, permitted and inheritable. Throws. */
  isolationClearCapabilities(): void;
  /** PR_SET_NO_NEW_PRIVS. Throws. */
  isolationNoNewPrivs(): void;
  /** PR_SET_DUMPABLE. Throws. */
  isolationDumpable(on: boolean): void;
  /** chroot (all threads: they share one fs_struct) into a detached, read-only, empty tmpfs. Needs root. Throws. */
  isolationChrootEmpty(): void;
  /** Landlock with every filesystem right handled and no rule (calling thread and threads it starts); returns the ABI, 0 without Landlock. */
  isolationLandlock(): number;
  /**
   * Forks a helper that keeps ferry's privileges and nothing else (no fd but
   * its pipe): it unlinks `paths` (at most 8) once ferry writes 'u' on the
   * returned fd (CLOEXEC) before exiting, and leaves them when the pipe just
   * closes (ferry killed).
   */
  isolationCleanupHelper(paths: string[]): number;
}
