/*
 * A minimal DHCPv6 client (RFC 8415) for the e2e test guest: busybox has no
 * udhcpc6, and the guest must show that ferry hands out the host's global
 * address by DHCPv6 (the kernel's SLAAC only gives an address derived from
 * the MAC).
 *
 *   dhcp6-client IFNAME [TRIES [no-rapid-commit]]
 *
 * Sends SOLICIT with rapid commit (unless told not to) and one IA_NA from the
 * interface's link-local address to ff02::1:2, one try per second; takes a
 * REPLY (rapid commit) directly, or answers an ADVERTISE with a REQUEST.
 * Prints on stdout
 *
 *   address <ipv6> rapid-commit|after-request dns <a,b|none>
 *
 * and exits 0, or prints "failed: <reason>" and exits 1. It configures
 * nothing itself: the guest's init applies the address.
 *
 * Built static by scripts/build-guest.sh. Every received length is checked
 * against the datagram before it is read.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { SOLICIT = 1, ADVERTISE = 2, REQUEST = 3, REPLY = 7 };
enum {
  OPT_CLIENTID = 1,
  OPT_SERVERID = 2,
  OPT_IA_NA = 3,
  OPT_IAADDR = 5,
  OPT_ORO = 6,
  OPT_ELAPSED_TIME = 8,
  OPT_STATUS_CODE = 13,
  OPT_RAPID_COMMIT = 14,
  OPT_DNS_SERVERS = 23,
  OPT_DOMAIN_LIST = 24,
};

#define MAX_SERVER_ID 130
#define MAX_DNS 4

struct lease {
  int have_address;
  unsigned char address[16];
  int dns_count;
  unsigned char dns[MAX_DNS][16];
  unsigned char server_id[MAX_SERVER_ID];
  size_t server_id_length;
};

static unsigned get16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

static size_t put16(unsigned char *p, unsigned v) {
  p[0] = (unsigned char)(v >> 8);
  p[1] = (unsigned char)v;
  return 2;
}

static size_t put_option_header(unsigned char *p, unsigned code, unsigned length) {
  put16(p, code);
  put16(p + 2, length);
  return 4;
}

/* Builds a SOLICIT or REQUEST into out (at least 256 bytes); returns its length. */
static size_t build_message(unsigned char *out, int type, const unsigned char xid[3], const unsigned char mac[6],
                            const struct lease *advertised, int rapid_commit) {
  size_t at = 0;
  out[at++] = (unsigned char)type;
  memcpy(out + at, xid, 3);
  at += 3;
  /* Client id: DUID-LL (type 3), hardware type Ethernet (1), the MAC. */
  at += put_option_header(out + at, OPT_CLIENTID, 10);
  at += put16(out + at, 3);
  at += put16(out + at, 1);
  memcpy(out + at, mac, 6);
  at += 6;
  if (type == REQUEST) {
    at += put_option_header(out + at, OPT_SERVERID, (unsigned)advertised->server_id_length);
    memcpy(out + at, advertised->server_id, advertised->server_id_length);
    at += advertised->server_id_length;
  }
  at += put_option_header(out + at, OPT_ELAPSED_TIME, 2);
  at += put16(out + at, 0);
  at += put_option_header(out + at, OPT_ORO, 4);
  at += put16(out + at, OPT_DNS_SERVERS);
  at += put16(out + at, OPT_DOMAIN_LIST);
  if (type == SOLICIT && rapid_commit) at += put_option_header(out + at, OPT_RAPID_COMMIT, 0);
  /* IA_NA: IAID 1, T1 and T2 left to the server. */
  at += put_option_header(out + at, OPT_IA_NA, 12);
  memset(out + at, 0, 12);
  out[at + 3] = 1;
  at += 12;
  return at;
}

/* Reads the IAADDR options inside an IA_NA's data (after its 12 fixed bytes). */
static void parse_ia_na(const unsigned char *data, size_t length, struct lease *lease) {
  size_t at = 12;
  while (length >= 4 && at <= length - 4) {
    unsigned code = get16(data + at);
    size_t optlen = get16(data + at + 2);
    if (optlen > length - at - 4) return;
    if (code == OPT_IAADDR && optlen >= 24) {
      memcpy(lease->address, data + at + 4, 16);
      lease->have_address = 1;
    }
    at += 4 + optlen;
  }
}

/*
 * Parses a server message for transaction xid; returns its type (ADVERTISE or
 * REPLY) with the lease filled in, or 0 for anything else or anything malformed.
 */
static int parse_reply(const unsigned char *msg, size_t length, const unsigned char xid[3], struct lease *lease) {
  if (length < 4 || (msg[0] != ADVERTISE && msg[0] != REPLY) || memcmp(msg + 1, xid, 3) != 0) return 0;
  memset(lease, 0, sizeof *lease);
  size_t at = 4;
  while (at + 4 <= length) {
    unsigned code = get16(msg + at);
    size_t optlen = get16(msg + at + 2);
    const unsigned char *data = msg + at + 4;
    if (optlen > length - at - 4) return 0;
    if (code == OPT_SERVERID && optlen <= MAX_SERVER_ID) {
      memcpy(lease->server_id, data, optlen);
      lease->server_id_length = optlen;
    } else if (code == OPT_IA_NA && optlen >= 12) {
      parse_ia_na(data, optlen, lease);
    } else if (code == OPT_DNS_SERVERS) {
      for (size_t i = 0; i + 16 <= optlen && lease->dns_count < MAX_DNS; i += 16) {
        memcpy(lease->dns[lease->dns_count++], data + i, 16);
      }
    } else if (code == OPT_STATUS_CODE && optlen >= 2 && get16(data) != 0) {
      return 0;
    }
    at += 4 + optlen;
  }
  return lease->server_id_length > 0 ? msg[0] : 0;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int fail(const char *what) {
  printf("failed: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s IFNAME [TRIES [no-rapid-commit]]\n", argv[0]);
    return 2;
  }
  const char *ifname = argv[1];
  int tries = argc > 2 ? atoi(argv[2]) : 5;
  if (tries < 1 || tries > 60) tries = 5;
  int rapid_commit = !(argc > 3 && strcmp(argv[3], "no-rapid-commit") == 0);
  unsigned ifindex = if_nametoindex(ifname);
  if (ifindex == 0) return fail("no such interface");

  int fd = socket(AF_INET6, SOCK_DGRAM, 0);
  if (fd < 0) return fail("socket");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) return fail("SIOCGIFHWADDR");
  unsigned char mac[6];
  memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname)) < 0) return fail("SO_BINDTODEVICE");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &ifindex, sizeof ifindex) < 0) return fail("IPV6_MULTICAST_IF");
  struct sockaddr_in6 local = {.sin6_family = AF_INET6, .sin6_port = htons(546)};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) return fail("bind [::]:546");

  struct sockaddr_in6 servers = {.sin6_family = AF_INET6, .sin6_port = htons(547), .sin6_scope_id = ifindex};
  inet_pton(AF_INET6, "ff02::1:2", &servers.sin6_addr);

  unsigned char xid[3];
  srand((unsigned)now_ms() ^ (unsigned)getpid());
  for (int i = 0; i < 3; i++) xid[i] = (unsigned char)rand();

  unsigned char out[512];
  unsigned char in[1500];
  struct lease lease;
  struct lease advertised;
  memset(&advertised, 0, sizeof advertised);
  int type = SOLICIT;
  for (int attempt = 0; attempt < tries; attempt++) {
    size_t length = build_message(out, type, xid, mac, &advertised, rapid_commit);
    /* A tentative link-local source (DAD still running) refuses to send: try again next round. */
    if (sendto(fd, out, length, 0, (struct sockaddr *)&servers, sizeof servers) < 0 && errno != EADDRNOTAVAIL) {
      return fail("sendto");
    }
    long deadline = now_ms() + 1000;
    for (int reads = 0; reads < 64; reads++) {
      long left = deadline - now_ms();
      if (left <= 0) break;
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, (int)left) <= 0) break;
      ssize_t got = recv(fd, in, sizeof in, 0);
      if (got <= 0) continue;
      int kind = parse_reply(in, (size_t)got, xid, &lease);
      if (kind == REPLY && lease.have_address) {
        char text[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, lease.address, text, sizeof text);
        printf("address %s %s dns ", text, type == REQUEST ? "after-request" : "rapid-commit");
        for (int i = 0; i < lease.dns_count; i++) {
          inet_ntop(AF_INET6, lease.dns[i], text, sizeof text);
          printf("%s%s", i ? "," : "", text);
        }
        printf("%s\n", lease.dns_count ? "" : "none");
        return 0;
      }
      if (kind == ADVERTISE && type == SOLICIT && lease.have_address) {
        advertised = lease;
        type = REQUEST;
        /* Once only (type is now REQUEST): the REQUEST gets a round of its own. */
        attempt--;
        break;
      }
    }
  }
  errno = 0;
  return fail(type == REQUEST ? "no REPLY to REQUEST" : "no ADVERTISE or REPLY");
}
