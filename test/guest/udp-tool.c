/*
 * A tiny UDP helper for the e2e guest (busybox nc has no UDP mode), built
 * statically by scripts/build-guest-tools.sh and carried into the guest by
 * test/e2e/udp-dns.test.ts.
 *
 *   udp-tool echo ADDR PORT COUNT
 *       COUNT sequence-numbered datagrams, sizes spread over 1..65000
 *       (every 10th large, the rest up to 1500; the first is 1 byte and the
 *       second 65000), each awaited (stop and wait, 2 s timeout) and checked
 *       byte for byte. Prints "echo ok COUNT lost L bad B bytes N".
 *   udp-tool serve PORT COUNT SECONDS
 *       Bind [::]:PORT (dual-stack), print "serve ready PORT", echo up to COUNT
 *       datagrams (or until SECONDS pass), print "serve done N".
 *   udp-tool refused ADDR PORT
 *       connect() a UDP socket, send one datagram, recv with a 3 s timeout;
 *       prints "refused" (exit 0) on ECONNREFUSED, else what happened (exit 1).
 *
 * Every loop is bounded in count and time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_DATAGRAM 65000

static unsigned char out_buf[MAX_DATAGRAM];
static unsigned char in_buf[MAX_DATAGRAM + 16];

/* Fill a sockaddr for ADDR (IPv4 or IPv6 text) and PORT; returns its length or 0. */
static socklen_t make_addr(const char *text, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    return sizeof *in4;
  }
  if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    return sizeof *in6;
  }
  return 0;
}

static void set_timeout(int fd, int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* Size of datagram i: deterministic, mostly small, every 10th large. */
static size_t size_of(unsigned i) {
  if (i == 0) return 1;
  if (i == 1) return MAX_DATAGRAM;
  uint32_t h = i * 2654435761u;
  h ^= h >> 15;
  if (i % 10 == 0) return 1 + h % MAX_DATAGRAM;
  return 1 + h % 1500;
}

static void fill(unsigned char *p, size_t n, unsigned seq) {
  for (size_t j = 0; j < n; j++) p[j] = (unsigned char)(j * 31 + seq * 7 + 1);
  if (n >= 4) {
    p[0] = seq >> 24;
    p[1] = seq >> 16;
    p[2] = seq >> 8;
    p[3] = seq;
  }
}

static int cmd_echo(const char *addr, int port, unsigned count) {
  struct sockaddr_storage ss;
  socklen_t len = make_addr(addr, port, &ss);
  if (!len) return fprintf(stderr, "bad address %s\n", addr), 2;
  int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) < 0) return perror("echo socket/connect"), 2;
  int big = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  set_timeout(fd, 2000);
  unsigned lost = 0, bad = 0;
  unsigned long long bytes = 0;
  for (unsigned i = 0; i < count; i++) {
    size_t n = size_of(i);
    fill(out_buf, n, i);
    if (send(fd, out_buf, n, 0) != (ssize_t)n) {
      fprintf(stderr, "send %u (%zu bytes): %s\n", i, n, strerror(errno));
      lost++;
      continue;
    }
    /* Skip stale echoes of earlier (late) datagrams: at most 4 reads per datagram. */
    int matched = 0;
    for (int tries = 0; tries < 4 && !matched; tries++) {
      ssize_t r = recv(fd, in_buf, sizeof in_buf, 0);
      if (r < 0) break;
      if ((size_t)r == n && memcmp(in_buf, out_buf, n) == 0) matched = 1;
      else if (r >= 4 && n >= 4 && memcmp(in_buf, out_buf, 4) == 0) {
        bad++;
        fprintf(stderr, "datagram %u: %zd bytes back, %zu sent, content differs\n", i, r, n);
        break;
      }
    }
    if (matched) bytes += n;
    else lost++;
  }
  printf("echo ok %u lost %u bad %u bytes %llu\n", count, lost, bad, bytes);
  fflush(stdout);
  return lost == 0 && bad == 0 ? 0 : 1;
}

static int cmd_serve(int port, unsigned count, int seconds) {
  /* Dual-stack: IPv4 senders show up as ::ffff:a.b.c.d. */
  int fd = socket(AF_INET6, SOCK_DGRAM, 0);
  int off = 0;
  struct sockaddr_in6 sa;
  memset(&sa, 0, sizeof sa);
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons((uint16_t)port);
  if (fd >= 0) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) return perror("serve bind"), 2;
  printf("serve ready %d\n", port);
  fflush(stdout);
  set_timeout(fd, 500);
  time_t end = time(NULL) + seconds;
  unsigned served = 0;
  while (served < count && time(NULL) < end) {
    struct sockaddr_in6 from;
    socklen_t fromlen = sizeof from;
    ssize_t r = recvfrom(fd, in_buf, sizeof in_buf, 0, (struct sockaddr *)&from, &fromlen);
    if (r < 0) continue;
    char text[INET6_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET6, &from.sin6_addr, text, sizeof text);
    printf("serve got %zd from %s:%d\n", r, text, ntohs(from.sin6_port));
    fflush(stdout);
    sendto(fd, in_buf, (size_t)r, 0, (struct sockaddr *)&from, fromlen);
    served++;
  }
  printf("serve done %u\n", served);
  fflush(stdout);
  return 0;
}

static int cmd_refused(const char *addr, int port) {
  struct sockaddr_storage ss;
  socklen_t len = make_addr(addr, port, &ss);
  if (!len) return fprintf(stderr, "bad address %s\n", addr), 2;
  int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) < 0) return perror("refused socket/connect"), 2;
  set_timeout(fd, 3000);
  if (send(fd, "knock", 5, 0) < 0) {
    int e = errno;
    printf("%s\n", e == ECONNREFUSED ? "refused" : strerror(e));
    return e == ECONNREFUSED ? 0 : 1;
  }
  ssize_t r = recv(fd, in_buf, sizeof in_buf, 0);
  int e = errno;
  if (r < 0 && e == ECONNREFUSED) {
    printf("refused\n");
    return 0;
  }
  printf("not refused: %s\n", r < 0 ? strerror(e) : "a reply came");
  return 1;
}

int main(int argc, char **argv) {
  if (argc >= 5 && strcmp(argv[1], "echo") == 0) return cmd_echo(argv[2], atoi(argv[3]), (unsigned)atoi(argv[4]));
  if (argc >= 5 && strcmp(argv[1], "serve") == 0) return cmd_serve(atoi(argv[2]), (unsigned)atoi(argv[3]), atoi(argv[4]));
  if (argc >= 4 && strcmp(argv[1], "refused") == 0) return cmd_refused(argv[2], atoi(argv[3]));
  fprintf(stderr, "usage: udp-tool echo ADDR PORT COUNT | serve PORT COUNT SECONDS | refused ADDR PORT\n");
  return 2;
}
