/**
 * The Linux constants ferry's TypeScript uses, declared once with their
 * values from the kernel's UAPI headers (the same on x86-64 and arm64).
 * Modules import them from here instead of redeclaring them, and need no
 * addon to do so (unit tests with fake sockets run without it); a unit test
 * checks each value against the addon's, which come from the C headers.
 */

// Address families and socket types (linux/socket.h, linux/net.h).
export const AF_UNSPEC = 0;
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;

// Protocol levels and numbers (netinet/in.h).
export const SOL_SOCKET = 1;
export const SOL_IP = 0;
export const SOL_IPV6 = 41;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_IPV6 = 41;
export const IPPROTO_ICMPV6 = 58;

// SOL_SOCKET options (asm-generic/socket.h).
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_LINGER = 13;
export const SO_BINDTODEVICE = 25;
export const SO_ACCEPTCONN = 30;
export const SO_PEEK_OFF = 42;

// IP and IPv6 options (linux/in.h, linux/in6.h).
export const IP_RECVERR = 11;
export const IPV6_RECVERR = 25;
export const IPV6_V6ONLY = 26;

// TCP options and states (linux/tcp.h, net/tcp_states.h).
export const TCP_NODELAY = 1;
export const TCP_INFO = 11;
export const TCP_STATE_LISTEN = 0x0a;

// Message flags (linux/socket.h).
export const MSG_PEEK = 0x2;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;

// epoll events (linux/eventpoll.h). EPOLLET is bit 31: as an int32 it is negative, as the poller reports it.
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 1 << 31;

// ioctls (asm-generic/ioctls.h, linux/sockios.h).
export const SIOCOUTQ = 0x5411;
export const SIOCINQ = 0x541b;

// Interface flags (linux/if.h) and rtnetlink message types (linux/rtnetlink.h).
export const IFF_UP = 0x1;
export const IFF_LOOPBACK = 0x8;
export const IFF_RUNNING = 0x40;
export const RTM_NEWLINK = 16;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_GETROUTE = 26;

// errno values callers compare against (asm-generic/errno-base.h, errno.h).
export const EPERM = 1;
export const ENOENT = 2;
export const EINTR = 4;
export const EBADF = 9;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EINVAL = 22;
export const ENFILE = 23;
export const EMFILE = 24;
export const EPIPE = 32;
export const EADDRINUSE = 98;
export const EADDRNOTAVAIL = 99;
export const ENETUNREACH = 101;
export const ECONNRESET = 104;
export const ENOTCONN = 107;
export const ETIMEDOUT = 110;
export const ECONNREFUSED = 111;
export const EHOSTUNREACH = 113;
export const EINPROGRESS = 115;
