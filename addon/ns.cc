// Namespaces and tap devices for `ferry pasta` (see src/native.ts nsOpen and
// tunOpen for the contract, src/backend/pasta.ts for the design).
//
// A multi-threaded process (Node always is) cannot setns() into a user
// namespace (EINVAL), so nsOpen forks: the child has one thread, joins the
// namespaces, opens the tap and sockets there, hands them back over a
// socketpair with SCM_RIGHTS and _exits. Between fork() and _exit() the
// child only makes system calls (setns, open, ioctl, socket, sendmsg) on
// data prepared before the fork: no allocation, no locks, nothing of
// Node's. An fd keeps the namespace it was opened in, so the parent can then
// use the tap and sockets from its own namespaces.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "common.h"

namespace ferry {

namespace {

constexpr uint32_t kMaxNamespaces = 8;
constexpr uint32_t kMaxSockets = 16;

// Where the child failed (reported back with errno).
enum Step : int32_t { kOk = 0, kSetns = 1, kOpenTun = 2, kTunSetIff = 3, kSocket = 4 };

const char* StepName(int32_t step) {
  switch (step) {
    case kSetns: return "setns";
    case kOpenTun: return "open /dev/net/tun";
    case kTunSetIff: return "ioctl TUNSETIFF";
    case kSocket: return "socket";
    default: return "nsOpen";
  }
}

// The child's one message: outcome plus the tap's actual name; fds ride along.
struct Reply {
  int32_t err;
  int32_t step;
  char name[IFNAMSIZ];
};

// Open /dev/net/tun and attach/create interface `name` with `flags`; the
// kernel's chosen name is written back into name. Returns the fd or -1
// with errno set and *step saying which call failed. Syscalls only.
int OpenTun(char* name, int flags, int32_t* step) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd == -1) {
    *step = kOpenTun;
    return -1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  ifr.ifr_flags = static_cast<short>(flags);
  if (ioctl(fd, TUNSETIFF, &ifr) == -1) {
    int err = errno;
    close(fd);
    errno = err;
    *step = kTunSetIff;
    return -1;
  }
  memcpy(name, ifr.ifr_name, IFNAMSIZ);
  name[IFNAMSIZ - 1] = '\0';
  return fd;
}

[[noreturn]] void ChildMain(int channel, const int* nsFds, uint32_t nsCount, bool wantTun, char* tunName, int tunFlags,
                            const int32_t* triples, uint32_t socketCount) {
  Reply reply;
  memset(&reply, 0, sizeof reply);
  int fds[1 + kMaxSockets];
  int nfds = 0;
  for (uint32_t i = 0; i < nsCount && reply.step == kOk; i++) {
    if (setns(nsFds[i], 0) == -1) {
      reply.step = kSetns;
      reply.err = errno;
    }
  }
  if (reply.step == kOk && wantTun) {
    int fd = OpenTun(tunName, tunFlags, &reply.step);
    if (fd == -1) reply.err = errno;
    else fds[nfds++] = fd;
    memcpy(reply.name, tunName, IFNAMSIZ);
  }
  for (uint32_t i = 0; i < socketCount && reply.step == kOk; i++) {
    int fd = socket(triples[3 * i], triples[3 * i + 1] | SOCK_NONBLOCK | SOCK_CLOEXEC, triples[3 * i + 2]);
    if (fd == -1) {
      reply.step = kSocket;
      reply.err = errno;
    } else {
      fds[nfds++] = fd;
    }
  }
  if (reply.step != kOk) nfds = 0;  // all or nothing: the parent gets no fds on failure
  struct iovec iov = {&reply, sizeof reply};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * (1 + kMaxSockets))];
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  _exit(sendmsg(channel, &msg, MSG_NOSIGNAL) == -1 ? 1 : 0);
}

// Reap the child: it exits right after its one message (or was killed).
void Reap(pid_t pid) {
  int status;
  RetryEintr([&] { return waitpid(pid, &status, 0); });
}

napi_value NsOpen(napi_env env, napi_callback_info info) {
  FERRY_ARGS(5);
  // ---- arguments, all read before the fork ----
  bool isArray = false;
  uint32_t nsCount = 0, socketValues = 0;
  if (napi_is_array(env, argv[0], &isArray) != napi_ok || !isArray) return ThrowType(env, "nsOpen", "namespaceFds must be an array");
  napi_get_array_length(env, argv[0], &nsCount);
  if (nsCount > kMaxNamespaces) return ThrowInval(env, "nsOpen", "at most 8 namespaces");
  int nsFds[kMaxNamespaces];
  for (uint32_t i = 0; i < nsCount; i++) {
    napi_value v;
    int32_t fd;
    napi_get_element(env, argv[0], i, &v);
    if (!ArgInt32(env, v, &fd, "nsOpen")) return nullptr;
    nsFds[i] = fd;
  }
  bool wantTun = !IsNullish(env, argv[1]);
  char tunName[IFNAMSIZ + 1];
  memset(tunName, 0, sizeof tunName);
  int32_t tunFlags = 0;
  if (wantTun) {
    size_t len = 0;
    if (napi_get_value_string_utf8(env, argv[1], tunName, sizeof tunName, &len) != napi_ok) return ThrowType(env, "nsOpen", "tunName must be a string or null");
    if (len >= IFNAMSIZ) return ThrowInval(env, "nsOpen", "tunName longer than 15 bytes");
    if (!ArgInt32(env, argv[2], &tunFlags, "nsOpen")) return nullptr;
  }
  if (napi_is_array(env, argv[3], &isArray) != napi_ok || !isArray) return ThrowType(env, "nsOpen", "sockets must be an array");
  napi_get_array_length(env, argv[3], &socketValues);
  if (socketValues % 3 != 0 || socketValues / 3 > kMaxSockets) return ThrowInval(env, "nsOpen", "sockets: up to 16 [domain, type, protocol] triples");
  int32_t triples[3 * kMaxSockets];
  for (uint32_t i = 0; i < socketValues; i++) {
    napi_value v;
    napi_get_element(env, argv[3], i, &v);
    if (!ArgInt32(env, v, &triples[i], "nsOpen")) return nullptr;
  }
  int32_t timeoutMs = 5000;
  if (!IsNullish(env, argv[4]) && !ArgInt32(env, argv[4], &timeoutMs, "nsOpen")) return nullptr;

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) return ThrowErrno(env, "socketpair", errno);
  pid_t pid = fork();
  if (pid == -1) {
    int err = errno;
    close(sv[0]);
    close(sv[1]);
    return ThrowErrno(env, "fork", err);
  }
  if (pid == 0) {
    close(sv[0]);
    ChildMain(sv[1], nsFds, nsCount, wantTun, tunName, tunFlags, triples, socketValues / 3);
  }
  close(sv[1]);

  // ---- parent: one message, bounded wait ----
  struct pollfd p = {sv[0], POLLIN, 0};
  int ready = RetryEintr([&] { return poll(&p, 1, timeoutMs); });
  if (ready <= 0) {
    int err = ready == 0 ? ETIMEDOUT : errno;
    kill(pid, SIGKILL);
    Reap(pid);
    close(sv[0]);
    return ThrowErrno(env, "nsOpen", err);
  }
  Reply reply;
  memset(&reply, 0, sizeof reply);
  struct iovec iov = {&reply, sizeof reply};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * (1 + kMaxSockets))];
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t r = RetryEintr([&] { return recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC); });
  int recvErr = errno;
  close(sv[0]);
  Reap(pid);
  int fds[1 + kMaxSockets];
  int nfds = 0;
  if (r > 0) {
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k && nfds < static_cast<int>(1 + kMaxSockets); j++) memcpy(&fds[nfds++], CMSG_DATA(c) + j * sizeof(int), sizeof(int));
    }
  }
  const int expected = (wantTun ? 1 : 0) + static_cast<int>(socketValues / 3);
  if (r != static_cast<ssize_t>(sizeof reply) || reply.step != kOk || nfds != expected) {
    for (int i = 0; i < nfds; i++) close(fds[i]);
    if (r == -1) return ThrowErrno(env, "recvmsg", recvErr);
    if (r != static_cast<ssize_t>(sizeof reply)) return ThrowErrno(env, "nsOpen", EPROTO);  // the child died early
    if (reply.step != kOk) return ThrowErrno(env, StepName(reply.step), reply.err);
    return ThrowErrno(env, "nsOpen", EPROTO);
  }
  reply.name[IFNAMSIZ - 1] = '\0';
  napi_value result, sockets, name;
  napi_create_object(env, &result);
  napi_create_array_with_length(env, socketValues / 3, &sockets);
  int at = 0;
  napi_set_named_property(env, result, "tunFd", MakeInt(env, wantTun ? fds[at++] : -1));
  napi_create_string_utf8(env, wantTun ? reply.name : "", NAPI_AUTO_LENGTH, &name);
  napi_set_named_property(env, result, "tunName", name);
  for (uint32_t i = 0; i < socketValues / 3; i++) napi_set_element(env, sockets, i, MakeInt(env, fds[at++]));
  napi_set_named_property(env, result, "sockets", sockets);
  return result;
}

napi_value TunOpen(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  char name[IFNAMSIZ + 1];
  memset(name, 0, sizeof name);
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) return ThrowType(env, "tunOpen", "name must be a string");
  if (len >= IFNAMSIZ) return ThrowInval(env, "tunOpen", "name longer than 15 bytes");
  int32_t flags;
  if (!ArgInt32(env, argv[1], &flags, "tunOpen")) return nullptr;
  int32_t step = kOk;
  int fd = OpenTun(name, flags, &step);
  if (fd == -1) return ThrowErrno(env, StepName(step), errno);
  napi_value arr, vname;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, MakeInt(env, fd));
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &vname);
  napi_set_element(env, arr, 1, vname);
  return arr;
}

napi_value TunSetOffload(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  uint32_t flags;
  if (!ArgInt32(env, argv[0], &fd, "ioctl TUNSETOFFLOAD") || !ArgUint32(env, argv[1], &flags, "ioctl TUNSETOFFLOAD")) return nullptr;
  if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) == -1) return ThrowErrno(env, "ioctl TUNSETOFFLOAD", errno);
  return nullptr;
}

}  // namespace

void InitNs(Napi::Env env, Napi::Object exports) {
  SetFunction(env, exports, "nsOpen", NsOpen);
  SetFunction(env, exports, "tunOpen", TunOpen);
  SetFunction(env, exports, "tunSetOffload", TunSetOffload);
  napi_value c;
  napi_get_named_property(env, exports, "constants", &c);
  napi_valuetype t;
  napi_typeof(env, c, &t);
  if (t != napi_object) return;
  napi_set_named_property(env, c, "IFF_TUN", MakeInt(env, IFF_TUN));
  napi_set_named_property(env, c, "IFF_TAP", MakeInt(env, IFF_TAP));
  napi_set_named_property(env, c, "IFF_NO_PI", MakeInt(env, IFF_NO_PI));
  napi_set_named_property(env, c, "IFF_VNET_HDR", MakeInt(env, IFF_VNET_HDR));
  napi_set_named_property(env, c, "TUN_F_CSUM", MakeInt(env, TUN_F_CSUM));
  napi_set_named_property(env, c, "TUN_F_TSO4", MakeInt(env, TUN_F_TSO4));
  napi_set_named_property(env, c, "TUN_F_TSO6", MakeInt(env, TUN_F_TSO6));
  napi_set_named_property(env, c, "TUN_F_TSO_ECN", MakeInt(env, TUN_F_TSO_ECN));
  napi_set_named_property(env, c, "CLONE_NEWNET", MakeInt(env, CLONE_NEWNET));
  napi_set_named_property(env, c, "CLONE_NEWUSER", MakeInt(env, CLONE_NEWUSER));
}

}  // namespace ferry
