// Generic fd calls, UNIX sockets with fd passing, eventfd, memfd, pipes.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "common.h"

namespace ferry {

namespace {

// The kernel refuses more than this many fds in one SCM_RIGHTS message.
constexpr int kMaxScmFds = 253;

napi_value Pair(napi_env env, int64_t a, int64_t b) {
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, MakeInt(env, a));
  napi_set_element(env, arr, 1, MakeInt(env, b));
  return arr;
}

// Read a string argument into buf (NUL-terminated); fails on overflow.
bool ArgString(napi_env env, napi_value v, char* buf, size_t cap, size_t* len, const char* syscall) {
  if (napi_get_value_string_utf8(env, v, buf, cap, len) != napi_ok) {
    ThrowType(env, syscall, "expected a string");
    return false;
  }
  if (*len >= cap - 1) {
    ThrowErrno(env, syscall, ENAMETOOLONG);
    return false;
  }
  return true;
}

// Fill a sockaddr_un from a path; a leading '@' selects the abstract namespace.
bool MakeUnixAddr(napi_env env, napi_value v, struct sockaddr_un* sun, socklen_t* len, const char* syscall) {
  char path[sizeof(sun->sun_path) + 2];
  size_t n;
  if (!ArgString(env, v, path, sizeof path, &n, syscall)) return false;
  if (n == 0 || n > sizeof(sun->sun_path) - (path[0] == '@' ? 0 : 1)) {
    ThrowErrno(env, syscall, n == 0 ? EINVAL : ENAMETOOLONG);
    return false;
  }
  memset(sun, 0, sizeof *sun);
  sun->sun_family = AF_UNIX;
  memcpy(sun->sun_path, path, n);
  if (path[0] == '@') {
    sun->sun_path[0] = '\0';
    *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + n);
  } else {
    *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + n + 1);
  }
  return true;
}

napi_value Close(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "close")) return nullptr;
  // Never retry close: on Linux the fd is gone even when EINTR is reported.
  if (close(fd) == -1 && errno != EINTR) return ThrowErrno(env, "close", errno);
  return nullptr;
}

napi_value Dup(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "dup")) return nullptr;
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r == -1) return ThrowErrno(env, "dup", errno);
  return MakeInt(env, r);
}

napi_value SetNonBlocking(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  bool on;
  if (!ArgInt32(env, argv[0], &fd, "fcntl") || !ArgBool(env, argv[1], &on, "fcntl")) return nullptr;
  int flags = fcntl(fd, F_GETFL);
  if (flags == -1) return ThrowErrno(env, "fcntl", errno);
  int want = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (want != flags && fcntl(fd, F_SETFL, want) == -1) return ThrowErrno(env, "fcntl", errno);
  return nullptr;
}

napi_value SetCloexec(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  bool on;
  if (!ArgInt32(env, argv[0], &fd, "fcntl") || !ArgBool(env, argv[1], &on, "fcntl")) return nullptr;
  int flags = fcntl(fd, F_GETFD);
  if (flags == -1) return ThrowErrno(env, "fcntl", errno);
  int want = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  if (want != flags && fcntl(fd, F_SETFD, want) == -1) return ThrowErrno(env, "fcntl", errno);
  return nullptr;
}

napi_value Read(napi_env env, napi_callback_info info) {
  FERRY_ARGS(4);
  int32_t fd;
  uint8_t* p;
  size_t n;
  if (!ArgInt32(env, argv[0], &fd, "read") || !ArgRange(env, argv[1], argv[2], argv[3], &p, &n, "read"))
    return nullptr;
  ssize_t r = RetryEintr([&] { return read(fd, p, n); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "read", errno);
  return MakeInt(env, r);
}

napi_value Write(napi_env env, napi_callback_info info) {
  FERRY_ARGS(4);
  int32_t fd;
  uint8_t* p;
  size_t n;
  if (!ArgInt32(env, argv[0], &fd, "write") || !ArgRange(env, argv[1], argv[2], argv[3], &p, &n, "write"))
    return nullptr;
  ssize_t r = RetryEintr([&] { return write(fd, p, n); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "write", errno);
  return MakeInt(env, r);
}

napi_value Readv(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "readv")) return nullptr;
  struct iovec* iov = ScratchIov();
  long n = BuildIov(env, argv[1], iov, "readv");
  if (n < 0) return nullptr;
  ssize_t r = RetryEintr([&] { return readv(fd, iov, static_cast<int>(n)); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "readv", errno);
  return MakeInt(env, r);
}

napi_value Writev(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "writev")) return nullptr;
  struct iovec* iov = ScratchIov();
  long n = BuildIov(env, argv[1], iov, "writev");
  if (n < 0) return nullptr;
  ssize_t r = RetryEintr([&] { return writev(fd, iov, static_cast<int>(n)); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "writev", errno);
  return MakeInt(env, r);
}

napi_value UnixListen(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  struct sockaddr_un sun;
  socklen_t len;
  int32_t backlog;
  if (!MakeUnixAddr(env, argv[0], &sun, &len, "bind") || !ArgInt32(env, argv[1], &backlog, "listen")) return nullptr;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1) return ThrowErrno(env, "socket", errno);
  const char* failed = nullptr;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&sun), len) == -1)
    failed = "bind";
  else if (listen(fd, backlog) == -1)
    failed = "listen";
  if (failed) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, failed, err);
  }
  return MakeInt(env, fd);
}

// Wait for an interrupted blocking connect to finish and fetch its result.
int FinishInterruptedConnect(int fd) {
  struct pollfd p = {fd, POLLOUT, 0};
  if (RetryEintr([&] { return poll(&p, 1, -1); }) == -1) return errno;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) return errno;
  return err;
}

napi_value UnixConnect(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  struct sockaddr_un sun;
  socklen_t len;
  if (!MakeUnixAddr(env, argv[0], &sun, &len, "connect")) return nullptr;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) return ThrowErrno(env, "socket", errno);
  int err = 0;
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&sun), len) == -1) {
    err = errno == EINTR ? FinishInterruptedConnect(fd) : errno;
  }
  if (err != 0) {
    close(fd);
    return ThrowErrno(env, "connect", err);
  }
  return MakeInt(env, fd);
}

napi_value Accept(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "accept4")) return nullptr;
  int r = RetryEintr([&] { return accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "accept4", errno);
  return MakeInt(env, r);
}

napi_value RecvFds(napi_env env, napi_callback_info info) {
  FERRY_ARGS(5);
  int32_t fd, maxFds;
  uint8_t* p;
  size_t n;
  if (!ArgInt32(env, argv[0], &fd, "recvmsg") || !ArgRange(env, argv[1], argv[2], argv[3], &p, &n, "recvmsg") ||
      !ArgInt32(env, argv[4], &maxFds, "recvmsg"))
    return nullptr;
  if (maxFds < 0 || maxFds > kMaxScmFds) return ThrowRange(env, "recvmsg", "maxFds must be 0..253");
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxScmFds)];
  struct iovec iov = {p, n};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (maxFds > 0) {
    msg.msg_control = control;
    // CMSG_LEN, not CMSG_SPACE: the padding could hold one more fd than asked.
    msg.msg_controllen = CMSG_LEN(sizeof(int) * maxFds);
  }
  ssize_t r = RetryEintr([&] { return recvmsg(fd, &msg, MSG_CMSG_CLOEXEC); });
  if (r == -1) {
    if (errno == EAGAIN) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
    return ThrowErrno(env, "recvmsg", errno);
  }
  // Collect every fd that did arrive, even when MSG_CTRUNC is set, so the
  // caller owns (and can close) all of them.
  int fds[kMaxScmFds];
  int nfds = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t j = 0; j < k && nfds < kMaxScmFds; j++) memcpy(&fds[nfds++], CMSG_DATA(c) + j * sizeof(int), sizeof(int));
  }
  napi_value result, arr, vctrunc;
  if (napi_create_object(env, &result) != napi_ok || napi_create_array_with_length(env, nfds, &arr) != napi_ok) {
    for (int i = 0; i < nfds; i++) close(fds[i]);
    return nullptr;
  }
  for (int i = 0; i < nfds; i++) napi_set_element(env, arr, i, MakeInt(env, fds[i]));
  napi_get_boolean(env, (msg.msg_flags & MSG_CTRUNC) != 0, &vctrunc);
  napi_set_named_property(env, result, "bytes", MakeInt(env, r));
  napi_set_named_property(env, result, "fds", arr);
  napi_set_named_property(env, result, "ctrunc", vctrunc);
  return result;
}

napi_value SendFds(napi_env env, napi_callback_info info) {
  FERRY_ARGS(5);
  int32_t fd;
  uint8_t* p;
  size_t n;
  if (!ArgInt32(env, argv[0], &fd, "sendmsg") || !ArgRange(env, argv[1], argv[2], argv[3], &p, &n, "sendmsg"))
    return nullptr;
  bool isArray = false;
  uint32_t nfds = 0;
  if (napi_is_array(env, argv[4], &isArray) != napi_ok || !isArray ||
      napi_get_array_length(env, argv[4], &nfds) != napi_ok)
    return ThrowType(env, "sendmsg", "fds must be an array of numbers");
  if (nfds > static_cast<uint32_t>(kMaxScmFds)) return ThrowRange(env, "sendmsg", "at most 253 fds per message");
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxScmFds)];
  struct iovec iov = {p, n};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value e;
      int32_t v;
      if (napi_get_element(env, argv[4], i, &e) != napi_ok || !ArgInt32(env, e, &v, "sendmsg")) return nullptr;
      memcpy(CMSG_DATA(c) + i * sizeof(int), &v, sizeof(int));
    }
  }
  ssize_t r = RetryEintr([&] { return sendmsg(fd, &msg, MSG_NOSIGNAL); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "sendmsg", errno);
  return MakeInt(env, r);
}

napi_value Socketpair(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t type = SOCK_STREAM;
  if (!IsNullish(env, argv[0]) && !ArgInt32(env, argv[0], &type, "socketpair")) return nullptr;
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) == -1) return ThrowErrno(env, "socketpair", errno);
  return Pair(env, sv[0], sv[1]);
}

napi_value UnixSendDatagram(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  struct sockaddr_un sun;
  socklen_t len;
  uint8_t* p;
  size_t n;
  if (!MakeUnixAddr(env, argv[0], &sun, &len, "sendto") || !ArgBytes(env, argv[1], &p, &n, "sendto")) return nullptr;
  // Non-blocking: a receiver that stopped reading must not stall the event loop.
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd == -1) return ThrowErrno(env, "socket", errno);
  ssize_t r = RetryEintr(
      [&] { return sendto(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT, reinterpret_cast<struct sockaddr*>(&sun), len); });
  int err = errno;
  close(fd);
  if (r == -1) return ThrowErrno(env, "sendto", err);
  return nullptr;
}

napi_value PeerCred(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "getsockopt")) return nullptr;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) return ThrowErrno(env, "getsockopt", errno);
  napi_value arr;
  napi_create_array_with_length(env, 3, &arr);
  napi_set_element(env, arr, 0, MakeInt(env, cred.pid));
  napi_set_element(env, arr, 1, MakeInt(env, cred.uid));
  napi_set_element(env, arr, 2, MakeInt(env, cred.gid));
  return arr;
}

napi_value Fstat(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "fstat")) return nullptr;
  struct stat st;
  if (fstat(fd, &st) == -1) return ThrowErrno(env, "fstat", errno);
  return Pair(env, st.st_mode, st.st_size);
}

// /proc/self/fd, opened when the addon loads: the process may later confine
// itself into an empty root, where no /proc path resolves, but a directory
// fd opened before keeps naming this process's fd table.
int ProcSelfFd() {
  static const int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  return dir;
}

// What an fd is, as its /proc/self/fd link names it ("anon_inode:[eventfd]",
// "pipe:[123]", a path, ...), read through ProcSelfFd().
napi_value FdLink(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "readlinkat")) return nullptr;
  if (ProcSelfFd() == -1) return ThrowErrno(env, "open /proc/self/fd", ENOENT);
  char name[16];
  snprintf(name, sizeof name, "%d", fd);
  char target[256];
  ssize_t n = readlinkat(ProcSelfFd(), name, target, sizeof target - 1);
  if (n == -1) return ThrowErrno(env, "readlinkat", errno);
  napi_value out;
  napi_create_string_utf8(env, target, static_cast<size_t>(n), &out);
  return out;
}

napi_value MemfdCreate(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  char name[250];
  size_t n;
  uint64_t size;
  if (!ArgString(env, argv[0], name, sizeof name, &n, "memfd_create") || !ArgSize(env, argv[1], &size, "ftruncate"))
    return nullptr;
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd == -1) return ThrowErrno(env, "memfd_create", errno);
  if (RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); }) == -1) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "ftruncate", err);
  }
  return MakeInt(env, fd);
}

napi_value Eventfd(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  uint32_t initval;
  if (!ArgUint32(env, argv[0], &initval, "eventfd")) return nullptr;
  int fd = eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd == -1) return ThrowErrno(env, "eventfd", errno);
  return MakeInt(env, fd);
}

napi_value EventfdRead(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "read")) return nullptr;
  uint64_t v;
  ssize_t r = RetryEintr([&] { return read(fd, &v, sizeof v); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "read", errno);
  if (r != sizeof v) return ThrowErrno(env, "read", EIO);
  napi_value out;
  napi_create_double(env, static_cast<double>(v), &out);
  return out;
}

napi_value EventfdWrite(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  uint64_t v;
  if (!ArgInt32(env, argv[0], &fd, "write") || !ArgSize(env, argv[1], &v, "write")) return nullptr;
  ssize_t r = RetryEintr([&] { return write(fd, &v, sizeof v); });
  // EAGAIN: the counter is saturated, so a wake-up is already pending.
  if (r == -1 && errno != EAGAIN) return ThrowErrno(env, "write", errno);
  return nullptr;
}

napi_value Pipe(napi_env env, napi_callback_info info) {
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) == -1) return ThrowErrno(env, "pipe2", errno);
  return Pair(env, p[0], p[1]);
}

napi_value Splice(napi_env env, napi_callback_info info) {
  FERRY_ARGS(3);
  int32_t in, out;
  uint64_t len;
  if (!ArgInt32(env, argv[0], &in, "splice") || !ArgInt32(env, argv[1], &out, "splice") ||
      !ArgSize(env, argv[2], &len, "splice"))
    return nullptr;
  ssize_t r = RetryEintr(
      [&] { return splice(in, nullptr, out, nullptr, static_cast<size_t>(len), SPLICE_F_MOVE | SPLICE_F_NONBLOCK); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "splice", errno);
  return MakeInt(env, r);
}

napi_value IoctlInt(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  uint32_t req;
  if (!ArgInt32(env, argv[0], &fd, "ioctl") || !ArgUint32(env, argv[1], &req, "ioctl")) return nullptr;
  int v = 0;
  if (RetryEintr([&] { return ioctl(fd, req, &v); }) == -1) return ThrowErrno(env, "ioctl", errno);
  return MakeInt(env, v);
}

napi_value Fence(napi_env env, napi_callback_info info) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return nullptr;
}

}  // namespace

void InitFd(Napi::Env env, Napi::Object exports) {
  napi_value e = exports;
  SetFunction(env, e, "close", Close);
  SetFunction(env, e, "dup", Dup);
  SetFunction(env, e, "setNonBlocking", SetNonBlocking);
  SetFunction(env, e, "setCloexec", SetCloexec);
  SetFunction(env, e, "read", Read);
  SetFunction(env, e, "write", Write);
  SetFunction(env, e, "readv", Readv);
  SetFunction(env, e, "writev", Writev);
  SetFunction(env, e, "unixListen", UnixListen);
  SetFunction(env, e, "unixConnect", UnixConnect);
  SetFunction(env, e, "accept", Accept);
  SetFunction(env, e, "recvFds", RecvFds);
  SetFunction(env, e, "sendFds", SendFds);
  SetFunction(env, e, "socketpair", Socketpair);
  SetFunction(env, e, "unixSendDatagram", UnixSendDatagram);
  SetFunction(env, e, "peerCred", PeerCred);
  SetFunction(env, e, "fstat", Fstat);
  SetFunction(env, e, "fdLink", FdLink);
  ProcSelfFd();  // opened now, before any confinement
  SetFunction(env, e, "memfdCreate", MemfdCreate);
  SetFunction(env, e, "eventfd", Eventfd);
  SetFunction(env, e, "eventfdRead", EventfdRead);
  SetFunction(env, e, "eventfdWrite", EventfdWrite);
  SetFunction(env, e, "pipe", Pipe);
  SetFunction(env, e, "splice", Splice);
  SetFunction(env, e, "ioctlInt", IoctlInt);
  SetFunction(env, e, "fence", Fence);
}

}  // namespace ferry
