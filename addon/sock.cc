// Inet/netlink socket calls for the stack, scatter/gather send/receive, and
// the constants TypeScript needs.
#include <fcntl.h>
#include <linux/errqueue.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include "common.h"

#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

namespace ferry {

namespace {

// Clamp a buffer length to what the socket API can describe.
socklen_t SockLen(size_t n) { return n > INT_MAX ? INT_MAX : static_cast<socklen_t>(n); }

// Per-thread mmsghdr scratch for sendmmsg/recvmmsg (no heap per call).
struct mmsghdr* ScratchMsgs() {
  static thread_local struct mmsghdr msgs[kMaxIov];
  return msgs;
}

napi_value Socket(napi_env env, napi_callback_info info) {
  FERRY_ARGS(3);
  int32_t domain, type, protocol;
  if (!ArgInt32(env, argv[0], &domain, "socket") || !ArgInt32(env, argv[1], &type, "socket") ||
      !ArgInt32(env, argv[2], &protocol, "socket"))
    return nullptr;
  int fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
  if (fd == -1) return ThrowErrno(env, "socket", errno);
  return MakeInt(env, fd);
}

napi_value Bind(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  uint8_t* sa;
  size_t len;
  if (!ArgInt32(env, argv[0], &fd, "bind") || !ArgBytes(env, argv[1], &sa, &len, "bind")) return nullptr;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(sa), SockLen(len)) == -1) return ThrowErrno(env, "bind", errno);
  return nullptr;
}

napi_value Connect(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  uint8_t* sa;
  size_t len;
  if (!ArgInt32(env, argv[0], &fd, "connect") || !ArgBytes(env, argv[1], &sa, &len, "connect")) return nullptr;
  if (connect(fd, reinterpret_cast<struct sockaddr*>(sa), SockLen(len)) == -1) {
    // An interrupted connect carries on in the background, like EINPROGRESS.
    if (errno == EINPROGRESS || errno == EINTR) return MakeInt(env, -1);
    return ThrowErrno(env, "connect", errno);
  }
  return MakeInt(env, 0);
}

napi_value Listen(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd, backlog;
  if (!ArgInt32(env, argv[0], &fd, "listen") || !ArgInt32(env, argv[1], &backlog, "listen")) return nullptr;
  if (listen(fd, backlog) == -1) return ThrowErrno(env, "listen", errno);
  return nullptr;
}

napi_value AcceptFrom(napi_env env, napi_callback_info info) {
  FERRY_ARGS(3);
  int32_t fd;
  uint8_t* addr;
  size_t cap;
  int32_t* lenOut;
  size_t nLen;
  if (!ArgInt32(env, argv[0], &fd, "accept4") || !ArgBytes(env, argv[1], &addr, &cap, "accept4") ||
      !ArgInt32Array(env, argv[2], &lenOut, &nLen, "accept4"))
    return nullptr;
  if (nLen < 1) return ThrowRange(env, "accept4", "addrLenOut needs one element");
  socklen_t len = SockLen(cap);
  int r = RetryEintr(
      [&] { return accept4(fd, reinterpret_cast<struct sockaddr*>(addr), &len, SOCK_CLOEXEC | SOCK_NONBLOCK); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "accept4", errno);
  lenOut[0] = static_cast<int32_t>(len);
  return MakeInt(env, r);
}

napi_value SockName(napi_env env, napi_callback_info info, bool peer) {
  const char* name = peer ? "getpeername" : "getsockname";
  FERRY_ARGS(2);
  int32_t fd;
  uint8_t* addr;
  size_t cap;
  if (!ArgInt32(env, argv[0], &fd, name) || !ArgBytes(env, argv[1], &addr, &cap, name)) return nullptr;
  socklen_t len = SockLen(cap);
  int r = peer ? getpeername(fd, reinterpret_cast<struct sockaddr*>(addr), &len)
               : getsockname(fd, reinterpret_cast<struct sockaddr*>(addr), &len);
  if (r == -1) return ThrowErrno(env, name, errno);
  return MakeInt(env, len);
}

napi_value GetSockName(napi_env env, napi_callback_info info) { return SockName(env, info, false); }
napi_value GetPeerName(napi_env env, napi_callback_info info) { return SockName(env, info, true); }

napi_value SetSockOptInt(napi_env env, napi_callback_info info) {
  FERRY_ARGS(4);
  int32_t fd, level, name, value;
  if (!ArgInt32(env, argv[0], &fd, "setsockopt") || !ArgInt32(env, argv[1], &level, "setsockopt") ||
      !ArgInt32(env, argv[2], &name, "setsockopt") || !ArgInt32(env, argv[3], &value, "setsockopt"))
    return nullptr;
  int v = value;
  if (setsockopt(fd, level, name, &v, sizeof v) == -1) return ThrowErrno(env, "setsockopt", errno);
  return nullptr;
}

napi_value GetSockOptInt(napi_env env, napi_callback_info info) {
  FERRY_ARGS(3);
  int32_t fd, level, name;
  if (!ArgInt32(env, argv[0], &fd, "getsockopt") || !ArgInt32(env, argv[1], &level, "getsockopt") ||
      !ArgInt32(env, argv[2], &name, "getsockopt"))
    return nullptr;
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) == -1) return ThrowErrno(env, "getsockopt", errno);
  // Some options (e.g. IP_TOS on some paths) report a single byte.
  if (len == 1) v = *reinterpret_cast<unsigned char*>(&v);
  return MakeInt(env, v);
}

napi_value SetSockOptBytes(napi_env env, napi_callback_info info) {
  FERRY_ARGS(4);
  int32_t fd, level, name;
  uint8_t* p;
  size_t n;
  if (!ArgInt32(env, argv[0], &fd, "setsockopt") || !ArgInt32(env, argv[1], &level, "setsockopt") ||
      !ArgInt32(env, argv[2], &name, "setsockopt") || !ArgBytes(env, argv[3], &p, &n, "setsockopt"))
    return nullptr;
  if (setsockopt(fd, level, name, p, SockLen(n)) == -1) return ThrowErrno(env, "setsockopt", errno);
  return nullptr;
}

napi_value GetSockOptBytes(napi_env env, napi_callback_info info) {
  FERRY_ARGS(4);
  int32_t fd, level, name;
  uint8_t* p;
  size_t n;
  if (!ArgInt32(env, argv[0], &fd, "getsockopt") || !ArgInt32(env, argv[1], &level, "getsockopt") ||
      !ArgInt32(env, argv[2], &name, "getsockopt") || !ArgBytes(env, argv[3], &p, &n, "getsockopt"))
    return nullptr;
  socklen_t len = SockLen(n);
  if (getsockopt(fd, level, name, p, &len) == -1) return ThrowErrno(env, "getsockopt", errno);
  return MakeInt(env, len);
}

napi_value Shutdown(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd, how;
  if (!ArgInt32(env, argv[0], &fd, "shutdown") || !ArgInt32(env, argv[1], &how, "shutdown")) return nullptr;
  if (shutdown(fd, how) == -1) return ThrowErrno(env, "shutdown", errno);
  return nullptr;
}

napi_value SendMsg(napi_env env, napi_callback_info info) {
  FERRY_ARGS(5);
  int32_t fd, flags;
  uint8_t *addr, *control;
  size_t addrLen, controlLen;
  if (!ArgInt32(env, argv[0], &fd, "sendmsg") || !ArgBytesOrNull(env, argv[2], &addr, &addrLen, "sendmsg") ||
      !ArgInt32(env, argv[3], &flags, "sendmsg") || !ArgBytesOrNull(env, argv[4], &control, &controlLen, "sendmsg"))
    return nullptr;
  struct iovec* iov = ScratchIov();
  long n = BuildIov(env, argv[1], iov, "sendmsg");
  if (n < 0) return nullptr;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_name = addr;
  msg.msg_namelen = SockLen(addrLen);
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(n);
  msg.msg_control = controlLen ? control : nullptr;
  msg.msg_controllen = controlLen;
  ssize_t r = RetryEintr([&] { return sendmsg(fd, &msg, flags | MSG_NOSIGNAL); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "sendmsg", errno);
  return MakeInt(env, r);
}

napi_value RecvMsg(napi_env env, napi_callback_info info) {
  FERRY_ARGS(6);
  int32_t fd, flags;
  uint8_t *addr, *control;
  size_t addrCap, controlCap, nMeta;
  int32_t* meta;
  if (!ArgInt32(env, argv[0], &fd, "recvmsg") || !ArgInt32(env, argv[2], &flags, "recvmsg") ||
      !ArgBytesOrNull(env, argv[3], &addr, &addrCap, "recvmsg") ||
      !ArgInt32Array(env, argv[4], &meta, &nMeta, "recvmsg") ||
      !ArgBytesOrNull(env, argv[5], &control, &controlCap, "recvmsg"))
    return nullptr;
  if (nMeta < (controlCap ? 3u : 2u)) return ThrowRange(env, "recvmsg", "meta too short");
  struct iovec* iov = ScratchIov();
  long n = BuildIov(env, argv[1], iov, "recvmsg");
  if (n < 0) return nullptr;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_name = addr;
  msg.msg_namelen = SockLen(addrCap);
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(n);
  msg.msg_control = controlCap ? control : nullptr;
  msg.msg_controllen = controlCap;
  ssize_t r = RetryEintr([&] { return recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "recvmsg", errno);
  meta[0] = addr ? static_cast<int32_t>(msg.msg_namelen) : 0;
  meta[1] = msg.msg_flags;
  if (controlCap) meta[2] = static_cast<int32_t>(msg.msg_controllen);
  return MakeInt(env, r);
}

napi_value SendMmsg(napi_env env, napi_callback_info info) {
  FERRY_ARGS(7);
  int32_t fd, count, flags;
  int32_t *starts, *counts;
  size_t nStarts, nCounts;
  if (!ArgInt32(env, argv[0], &fd, "sendmmsg") || !ArgInt32Array(env, argv[2], &starts, &nStarts, "sendmmsg") ||
      !ArgInt32Array(env, argv[3], &counts, &nCounts, "sendmmsg") || !ArgInt32(env, argv[5], &count, "sendmmsg") ||
      !ArgInt32(env, argv[6], &flags, "sendmmsg"))
    return nullptr;
  if (count < 0 || static_cast<size_t>(count) > kMaxIov || static_cast<size_t>(count) > nStarts ||
      static_cast<size_t>(count) > nCounts)
    return ThrowRange(env, "sendmmsg", "count outside iovStart/iovCount or above 1024");
  bool haveAddrs = !IsNullish(env, argv[4]);
  uint32_t nAddrs = 0;
  if (haveAddrs) {
    bool isArray = false;
    if (napi_is_array(env, argv[4], &isArray) != napi_ok || !isArray ||
        napi_get_array_length(env, argv[4], &nAddrs) != napi_ok)
      return ThrowType(env, "sendmmsg", "addrs must be an array or null");
    if (nAddrs < static_cast<uint32_t>(count)) return ThrowRange(env, "sendmmsg", "addrs shorter than count");
  }
  struct iovec* iov = ScratchIov();
  long nIov = BuildIov(env, argv[1], iov, "sendmmsg");
  if (nIov < 0) return nullptr;
  struct mmsghdr* msgs = ScratchMsgs();
  for (int32_t i = 0; i < count; i++) {
    int32_t s = starts[i], c = counts[i];
    if (s < 0 || c < 0 || s > nIov || c > nIov - s) return ThrowRange(env, "sendmmsg", "datagram iovecs out of range");
    struct msghdr& m = msgs[i].msg_hdr;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov + s;
    m.msg_iovlen = static_cast<size_t>(c);
    if (haveAddrs) {
      napi_value a;
      uint8_t* addr;
      size_t addrLen;
      if (napi_get_element(env, argv[4], static_cast<uint32_t>(i), &a) != napi_ok ||
          !ArgBytesOrNull(env, a, &addr, &addrLen, "sendmmsg"))
        return nullptr;
      m.msg_name = addr;
      m.msg_namelen = SockLen(addrLen);
    }
    msgs[i].msg_len = 0;
  }
  if (count == 0) return MakeInt(env, 0);
  int r = RetryEintr([&] { return sendmmsg(fd, msgs, static_cast<unsigned>(count), flags | MSG_NOSIGNAL); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "sendmmsg", errno);
  return MakeInt(env, r);
}

napi_value RecvMmsg(napi_env env, napi_callback_info info) {
  FERRY_ARGS(8);
  int32_t fd, count, flags;
  int32_t *lensOut, *addrLens = nullptr, *flagsOut = nullptr;
  size_t nLens, nAddrLens = 0, nFlags = 0;
  if (!ArgInt32(env, argv[0], &fd, "recvmmsg") || !ArgInt32Array(env, argv[2], &lensOut, &nLens, "recvmmsg") ||
      !ArgInt32(env, argv[5], &count, "recvmmsg") || !ArgInt32(env, argv[6], &flags, "recvmmsg"))
    return nullptr;
  bool haveAddrs = !IsNullish(env, argv[3]);
  if (!IsNullish(env, argv[4]) && !ArgInt32Array(env, argv[4], &addrLens, &nAddrLens, "recvmmsg")) return nullptr;
  if (!IsNullish(env, argv[7]) && !ArgInt32Array(env, argv[7], &flagsOut, &nFlags, "recvmmsg")) return nullptr;
  if (count < 0 || static_cast<size_t>(count) > kMaxIov || static_cast<size_t>(count) > nLens ||
      (addrLens && static_cast<size_t>(count) > nAddrLens) || (flagsOut && static_cast<size_t>(count) > nFlags))
    return ThrowRange(env, "recvmmsg", "count exceeds an output array or 1024");
  uint32_t nAddrs = 0;
  if (haveAddrs) {
    bool isArray = false;
    if (napi_is_array(env, argv[3], &isArray) != napi_ok || !isArray ||
        napi_get_array_length(env, argv[3], &nAddrs) != napi_ok)
      return ThrowType(env, "recvmmsg", "addrs must be an array or null");
    if (nAddrs < static_cast<uint32_t>(count)) return ThrowRange(env, "recvmmsg", "addrs shorter than count");
  }
  struct iovec* iov = ScratchIov();
  long nIov = BuildIov(env, argv[1], iov, "recvmmsg");
  if (nIov < 0) return nullptr;
  if (count > nIov) return ThrowRange(env, "recvmmsg", "count exceeds iov.count");
  struct mmsghdr* msgs = ScratchMsgs();
  for (int32_t i = 0; i < count; i++) {
    struct msghdr& m = msgs[i].msg_hdr;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov + i;
    m.msg_iovlen = 1;
    if (haveAddrs) {
      napi_value a;
      uint8_t* addr;
      size_t cap;
      if (napi_get_element(env, argv[3], static_cast<uint32_t>(i), &a) != napi_ok ||
          !ArgBytesOrNull(env, a, &addr, &cap, "recvmmsg"))
        return nullptr;
      m.msg_name = addr;
      m.msg_namelen = SockLen(cap);
    }
    msgs[i].msg_len = 0;
  }
  if (count == 0) return MakeInt(env, 0);
  int r = RetryEintr([&] { return recvmmsg(fd, msgs, static_cast<unsigned>(count), flags | MSG_CMSG_CLOEXEC, nullptr); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "recvmmsg", errno);
  for (int i = 0; i < r; i++) {
    lensOut[i] = static_cast<int32_t>(msgs[i].msg_len);
    if (addrLens) addrLens[i] = msgs[i].msg_hdr.msg_name ? static_cast<int32_t>(msgs[i].msg_hdr.msg_namelen) : 0;
    if (flagsOut) flagsOut[i] = msgs[i].msg_hdr.msg_flags;
  }
  return MakeInt(env, r);
}

napi_value RecvErrqueue(napi_env env, napi_callback_info info) {
  FERRY_ARGS(5);
  int32_t fd;
  uint8_t *data, *control, *addr;
  size_t dataCap, controlCap, addrCap, nMeta;
  int32_t* meta;
  if (!ArgInt32(env, argv[0], &fd, "recvmsg") || !ArgBytes(env, argv[1], &data, &dataCap, "recvmsg") ||
      !ArgBytes(env, argv[2], &control, &controlCap, "recvmsg") ||
      !ArgInt32Array(env, argv[3], &meta, &nMeta, "recvmsg") ||
      !ArgBytesOrNull(env, argv[4], &addr, &addrCap, "recvmsg"))
    return nullptr;
  if (nMeta < (addr ? 3u : 2u)) return ThrowRange(env, "recvmsg", "meta too short");
  struct iovec iov = {data, dataCap};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_name = addr;
  msg.msg_namelen = SockLen(addrCap);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = controlCap ? control : nullptr;
  msg.msg_controllen = controlCap;
  ssize_t r = RetryEintr([&] { return recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT | MSG_CMSG_CLOEXEC); });
  if (r == -1) return errno == EAGAIN ? MakeInt(env, -1) : ThrowErrno(env, "recvmsg", errno);
  meta[0] = static_cast<int32_t>(msg.msg_controllen);
  meta[1] = msg.msg_flags;
  if (addr) meta[2] = static_cast<int32_t>(msg.msg_namelen);
  return MakeInt(env, r);
}

void SetConstants(napi_env env, napi_value exports) {
  napi_value c;
  napi_create_object(env, &c);
#define K(name)                                    \
  do {                                             \
    napi_value v;                                  \
    napi_create_double(env, (double)(name), &v);   \
    napi_set_named_property(env, c, #name, v);     \
  } while (0)
  // epoll
  K(EPOLLIN); K(EPOLLOUT); K(EPOLLERR); K(EPOLLHUP); K(EPOLLRDHUP); K(EPOLLPRI);
  {
    // EPOLLET is bit 31: keep it as the int32 value epoll_event.events holds in an Int32Array.
    napi_value v;
    napi_create_int32(env, static_cast<int32_t>(EPOLLET), &v);
    napi_set_named_property(env, c, "EPOLLET", v);
  }
  // address families and socket types
  K(AF_UNSPEC); K(AF_UNIX); K(AF_INET); K(AF_INET6); K(AF_NETLINK);
  K(SOCK_STREAM); K(SOCK_DGRAM); K(SOCK_RAW); K(SOCK_SEQPACKET); K(SOCK_NONBLOCK); K(SOCK_CLOEXEC);
  // protocols / levels
  K(IPPROTO_IP); K(IPPROTO_IPV6); K(IPPROTO_TCP); K(IPPROTO_UDP); K(IPPROTO_ICMP); K(IPPROTO_ICMPV6);
  K(SOL_SOCKET); K(SOL_IP); K(SOL_IPV6); K(SOL_TCP);
  // socket options
  K(SO_REUSEADDR); K(SO_REUSEPORT); K(SO_ERROR); K(SO_RCVBUF); K(SO_SNDBUF); K(SO_KEEPALIVE);
  K(SO_BINDTODEVICE); K(SO_PEEK_OFF); K(SO_RCVLOWAT); K(SO_SNDLOWAT); K(SO_LINGER); K(SO_TYPE);
  K(SO_BROADCAST); K(SO_MARK); K(SO_PEERCRED);
  K(TCP_NODELAY); K(TCP_INFO); K(TCP_MAXSEG); K(TCP_KEEPIDLE); K(TCP_KEEPINTVL); K(TCP_KEEPCNT);
  K(TCP_WINDOW_CLAMP); K(TCP_QUICKACK); K(TCP_CORK); K(TCP_USER_TIMEOUT); K(TCP_CONGESTION);
  K(TCP_NOTSENT_LOWAT); K(TCP_REPAIR);
  K(IP_RECVERR); K(IP_TTL); K(IP_TOS); K(IP_PKTINFO); K(IP_FREEBIND); K(IP_MTU_DISCOVER); K(IP_PMTUDISC_DO);
  K(IP_PMTUDISC_DONT); K(IP_PMTUDISC_PROBE); K(IP_MTU); K(IP_RECVTTL); K(IP_RECVTOS); K(IP_TRANSPARENT);
  K(IP_MULTICAST_LOOP); K(IP_MULTICAST_TTL); K(IP_HDRINCL);
  K(IPV6_RECVERR); K(IPV6_V6ONLY); K(IPV6_UNICAST_HOPS); K(IPV6_RECVPKTINFO); K(IPV6_PKTINFO); K(IPV6_FREEBIND);
  K(IPV6_MTU_DISCOVER); K(IPV6_PMTUDISC_DO); K(IPV6_MTU); K(IPV6_TCLASS); K(IPV6_RECVTCLASS);
  K(IPV6_RECVHOPLIMIT); K(IPV6_HOPLIMIT); K(IPV6_MULTICAST_HOPS); K(IPV6_MULTICAST_LOOP);
  // sock_extended_err origins for the error queue
  K(SO_EE_ORIGIN_NONE); K(SO_EE_ORIGIN_LOCAL); K(SO_EE_ORIGIN_ICMP); K(SO_EE_ORIGIN_ICMP6);
  // message flags
  K(MSG_PEEK); K(MSG_DONTWAIT); K(MSG_TRUNC); K(MSG_CTRUNC); K(MSG_ERRQUEUE); K(MSG_NOSIGNAL); K(MSG_MORE);
  K(MSG_WAITALL); K(MSG_OOB); K(MSG_EOR); K(MSG_CONFIRM);
  K(SCM_RIGHTS); K(SCM_CREDENTIALS);
  K(SHUT_RD); K(SHUT_WR); K(SHUT_RDWR);
  // netlink
  K(NETLINK_ROUTE); K(RTMGRP_LINK); K(RTMGRP_IPV4_IFADDR); K(RTMGRP_IPV6_IFADDR); K(RTMGRP_IPV4_ROUTE);
  K(RTMGRP_IPV6_ROUTE); K(NETLINK_GET_STRICT_CHK); K(NETLINK_EXT_ACK);
  // ioctls
  K(SIOCOUTQ); K(TIOCOUTQ); K(SIOCINQ); K(FIONREAD); K(SIOCOUTQNSD);
  // file types (fstat st_mode)
  K(S_IFMT); K(S_IFSOCK); K(S_IFREG); K(S_IFIFO); K(S_IFCHR);
  // errno values callers compare against
  K(EAGAIN); K(EWOULDBLOCK); K(EINPROGRESS); K(ECONNREFUSED); K(ECONNRESET); K(ECONNABORTED); K(EPIPE);
  K(ETIMEDOUT); K(EHOSTUNREACH); K(ENETUNREACH); K(EADDRINUSE); K(EADDRNOTAVAIL); K(EINTR); K(EBADF);
  K(EINVAL); K(ENOENT); K(EMSGSIZE); K(ENOTCONN); K(EISCONN); K(EALREADY); K(EACCES); K(EPERM); K(ENOBUFS);
  K(EHOSTDOWN); K(ENETDOWN); K(EPROTO); K(ENOPROTOOPT); K(EAFNOSUPPORT); K(ERANGE); K(ENOMEM); K(EMFILE);
  K(ENFILE);
  // misc
  K(IOV_MAX); K(SOMAXCONN);
  {
    napi_value v;
    napi_create_double(env, static_cast<double>(sysconf(_SC_PAGESIZE)), &v);
    napi_set_named_property(env, c, "PAGE_SIZE", v);
  }
#undef K
  napi_set_named_property(env, exports, "constants", c);
}

}  // namespace

void InitSock(Napi::Env env, Napi::Object exports) {
  napi_value e = exports;
  SetFunction(env, e, "socket", Socket);
  SetFunction(env, e, "bind", Bind);
  SetFunction(env, e, "connect", Connect);
  SetFunction(env, e, "listen", Listen);
  SetFunction(env, e, "acceptFrom", AcceptFrom);
  SetFunction(env, e, "getsockname", GetSockName);
  SetFunction(env, e, "getpeername", GetPeerName);
  SetFunction(env, e, "setsockoptInt", SetSockOptInt);
  SetFunction(env, e, "getsockoptInt", GetSockOptInt);
  SetFunction(env, e, "setsockoptBytes", SetSockOptBytes);
  SetFunction(env, e, "getsockoptBytes", GetSockOptBytes);
  SetFunction(env, e, "shutdown", Shutdown);
  SetFunction(env, e, "sendmsg", SendMsg);
  SetFunction(env, e, "recvmsg", RecvMsg);
  SetFunction(env, e, "sendmmsg", SendMmsg);
  SetFunction(env, e, "recvmmsg", RecvMmsg);
  SetFunction(env, e, "recvErrqueue", RecvErrqueue);
  SetConstants(env, e);
}

}  // namespace ferry
