/*
 * A small TCP helper for the e2e guest (busybox nc cannot count, hash,
 * half-close on purpose or hold a thousand connections), built statically by
 * scripts/build-guest-tools.sh and carried into the guest by
 * test/e2e/tcp-*.test.ts. Every mode prints one result line; every loop is
 * bounded in count and time.
 *
 *   tcp-tool upload ADDR PORT BYTES
 *       Connect, send BYTES of a pseudo-random stream, shut the write side,
 *       read the server's reply until EOF. Prints
 *       "upload sent N sha256 HEX ms T reply <first reply line>".
 *   tcp-tool download ADDR PORT BYTES
 *       Connect, send "BYTES\n", read until EOF. Prints
 *       "download got N sha256 HEX ms T".
 *   tcp-tool serve PORT COUNT SECONDS
 *       Listen on [::]:PORT (dual-stack), print "serve ready PORT", then for
 *       up to COUNT connections (or SECONDS): read until EOF, hash, answer
 *       "got N sha256 HEX\n", close; prints "serve got N sha256 HEX from A".
 *   tcp-tool echo-many ADDR PORT CONNECTIONS
 *       Open CONNECTIONS connections at once (non-blocking, poll), send a
 *       distinct 64-byte message on each, expect it echoed byte for byte,
 *       close. Prints "echo-many ok K bad B failed F ms T" (60 s bound).
 *   tcp-tool halfclose ADDR PORT
 *       Connect, send a line, shut the write side, read until EOF. Prints
 *       "halfclose reply <reply>".
 *   tcp-tool reset-recv ADDR PORT
 *       Connect, send a line, read: prints "reset-recv ECONNRESET" when the
 *       server reset the connection (else what happened).
 *   tcp-tool reset-send ADDR PORT
 *       Connect, send a line, wait for the server's "ok", then close with
 *       SO_LINGER 0 (an RST). Prints "reset-send sent".
 *   tcp-tool connect ADDR PORT
 *       Connect with a 10 s bound. Prints "connect ok ms T" or
 *       "connect ERRNAME ms T".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- SHA-256 (FIPS 180-4) ---- */

typedef struct {
  uint32_t h[8];
  uint64_t length;
  unsigned char block[64];
  size_t used;
} sha256_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(sha256_ctx *c) {
  static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(c->h, init, sizeof init);
  c->length = 0;
  c->used = 0;
}

static void sha256_block(sha256_ctx *c, const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
    h = g; g = f; f = e; e = d + t1; d = cc; cc = b; b = a; a = t1 + t2;
  }
  c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha256_update(sha256_ctx *c, const unsigned char *p, size_t n) {
  c->length += n;
  if (c->used > 0) {
    size_t take = 64 - c->used < n ? 64 - c->used : n;
    memcpy(c->block + c->used, p, take);
    c->used += take;
    p += take;
    n -= take;
    if (c->used < 64) return;
    sha256_block(c, c->block);
    c->used = 0;
  }
  for (; n >= 64; p += 64, n -= 64) sha256_block(c, p);
  memcpy(c->block, p, n);
  c->used = n;
}

/* Hex digest into out (65 bytes). */
static void sha256_final(sha256_ctx *c, char *out) {
  uint64_t bits = c->length * 8;
  unsigned char pad = 0x80;
  sha256_update(c, &pad, 1);
  unsigned char zero = 0;
  while (c->used != 56) sha256_update(c, &zero, 1);
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
  sha256_update(c, len, 8);
  for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", c->h[i]);
}

/* ---- helpers ---- */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static socklen_t make_addr(const char *text, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    return sizeof *in4;
  }
  if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return sizeof *in6;
  }
  return 0;
}

static const char *errname(int e) {
  switch (e) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    case EPIPE: return "EPIPE";
    case EAGAIN: return "EAGAIN";
    default: return strerror(e);
  }
}

/* Blocking connect with SO_RCVTIMEO/SO_SNDTIMEO of `seconds`; returns the fd or -errno. */
static int dial(const char *addr, int port, int seconds) {
  struct sockaddr_storage ss;
  socklen_t len = make_addr(addr, port, &ss);
  if (len == 0) {
    fprintf(stderr, "bad address %s\n", addr);
    exit(2);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM, 0);
  if (fd < 0) return -errno;
  struct timeval tv = {seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

static int dial_or_die(const char *mode, const char *addr, int port, int seconds) {
  int fd = dial(addr, port, seconds);
  if (fd < 0) {
    printf("%s connect %s\n", mode, errname(-fd));
    exit(1);
  }
  return fd;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

#define CHUNK (256 * 1024)
static unsigned char buf[CHUNK];

/* Pseudo-random bytes (xorshift64*), so a shifted or repeated chunk changes the hash. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static void fill_random(unsigned char *p, size_t n) {
  for (size_t i = 0; i + 8 <= n; i += 8) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t v = rng_state * 0x2545f4914f6cdd1dull;
    memcpy(p + i, &v, 8);
  }
}

/* Read until EOF into the hash; returns bytes read, or -errno. */
static long long read_all_hashed(int fd, sha256_ctx *c) {
  long long total = 0;
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r == 0) return total;
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    sha256_update(c, buf, (size_t)r);
    total += r;
  }
}

/* ---- modes ---- */

static int upload(const char *addr, int port, long long bytes) {
  int fd = dial_or_die("upload", addr, port, 60);
  sha256_ctx c;
  sha256_init(&c);
  double start = now_ms();
  long long left = bytes;
  while (left > 0) {
    size_t n = left < CHUNK ? (size_t)left : CHUNK;
    fill_random(buf, CHUNK);
    sha256_update(&c, buf, n);
    int e = write_all(fd, buf, n);
    if (e < 0) {
      printf("upload send %s after %lld\n", errname(-e), bytes - left);
      return 1;
    }
    left -= (long long)n;
  }
  shutdown(fd, SHUT_WR);
  char reply[256];
  size_t got = 0;
  for (int i = 0; i < 1000 && got < sizeof reply - 1; i++) {
    ssize_t r = recv(fd, reply + got, sizeof reply - 1 - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
  }
  reply[got] = 0;
  char *nl = strchr(reply, '\n');
  if (nl) *nl = 0;
  char hex[65];
  sha256_final(&c, hex);
  printf("upload sent %lld sha256 %s ms %.0f reply %s\n", bytes, hex, now_ms() - start, reply);
  close(fd);
  return 0;
}

static int download(const char *addr, int port, long long bytes) {
  int fd = dial_or_die("download", addr, port, 60);
  char request[32];
  int n = snprintf(request, sizeof request, "%lld\n", bytes);
  double start = now_ms();
  if (write_all(fd, (unsigned char *)request, (size_t)n) < 0) {
    printf("download request failed\n");
    return 1;
  }
  sha256_ctx c;
  sha256_init(&c);
  long long got = read_all_hashed(fd, &c);
  if (got < 0) {
    printf("download recv %s\n", errname((int)-got));
    return 1;
  }
  char hex[65];
  sha256_final(&c, hex);
  printf("download got %lld sha256 %s ms %.0f\n", got, hex, now_ms() - start);
  close(fd);
  return 0;
}

static int serve(int port, int count, int seconds) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  int zero = 0, one = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in6 sa;
  memset(&sa, 0, sizeof sa);
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons(port);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0) {
    printf("serve failed %s\n", errname(errno));
    return 1;
  }
  printf("serve ready %d\n", port);
  fflush(stdout);
  double deadline = now_ms() + seconds * 1000.0;
  for (int i = 0; i < count && now_ms() < deadline; i++) {
    struct pollfd p = {fd, POLLIN, 0};
    int left = (int)(deadline - now_ms());
    if (left <= 0 || poll(&p, 1, left) <= 0) break;
    struct sockaddr_in6 peer;
    socklen_t plen = sizeof peer;
    int c = accept(fd, (struct sockaddr *)&peer, &plen);
    if (c < 0) continue;
    struct timeval tv = {60, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char from[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &peer.sin6_addr, from, sizeof from);
    sha256_ctx h;
    sha256_init(&h);
    long long got = read_all_hashed(c, &h);
    char hex[65];
    sha256_final(&h, hex);
    if (got < 0) {
      printf("serve recv %s from %s\n", errname((int)-got), from);
    } else {
      char line[128];
      int n = snprintf(line, sizeof line, "got %lld sha256 %s\n", got, hex);
      write_all(c, (unsigned char *)line, (size_t)n);
      printf("serve got %lld sha256 %s from %s\n", got, hex, from);
    }
    fflush(stdout);
    close(c);
  }
  close(fd);
  return 0;
}

#define ECHO_MESSAGE 64
enum { E_CONNECTING, E_SENT, E_DONE, E_FAILED };

static int echo_many(const char *addr, int port, int count) {
  struct rlimit rl = {count + 64, count + 64};
  setrlimit(RLIMIT_NOFILE, &rl);
  struct sockaddr_storage ss;
  socklen_t len = make_addr(addr, port, &ss);
  int *fds = calloc(count, sizeof *fds);
  int *state = calloc(count, sizeof *state);
  int *got = calloc(count, sizeof *got);
  unsigned char(*in)[ECHO_MESSAGE] = calloc(count, ECHO_MESSAGE);
  struct pollfd *pfd = calloc(count, sizeof *pfd);
  int *index = calloc(count, sizeof *index);
  if (!fds || !state || !got || !in || !pfd || !index || len == 0) return 2;
  double start = now_ms();
  int failed = 0;
  for (int i = 0; i < count; i++) {
    fds[i] = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fds[i] < 0 || (connect(fds[i], (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS)) {
      state[i] = E_FAILED;
      failed++;
    }
  }
  int ok = 0, bad = 0;
  unsigned char message[ECHO_MESSAGE];
  double deadline = start + 60000;
  for (int round = 0; round < 100000 && now_ms() < deadline; round++) {
    int n = 0;
    for (int i = 0; i < count; i++) {
      if (state[i] == E_CONNECTING) pfd[n] = (struct pollfd){fds[i], POLLOUT, 0};
      else if (state[i] == E_SENT) pfd[n] = (struct pollfd){fds[i], POLLIN, 0};
      else continue;
      index[n++] = i;
    }
    if (n == 0) break;
    int r = poll(pfd, n, 1000);
    if (r < 0 && errno != EINTR) break;
    for (int k = 0; k < n; k++) {
      if (pfd[k].revents == 0) continue;
      int i = index[k];
      memset(message, 'a' + i % 26, sizeof message);
      snprintf((char *)message, sizeof message, "connection %d of %d|", i, count);
      if (state[i] == E_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || send(fds[i], message, sizeof message, MSG_NOSIGNAL) != (ssize_t)sizeof message) {
          state[i] = E_FAILED;
          failed++;
          if (failed <= 3) fprintf(stderr, "connection %d: %s\n", i, errname(err ? err : errno));
          close(fds[i]);
          continue;
        }
        state[i] = E_SENT;
      } else {
        ssize_t m = recv(fds[i], in[i] + got[i], ECHO_MESSAGE - got[i], 0);
        if (m <= 0) {
          if (m < 0 && errno == EAGAIN) continue;
          state[i] = E_FAILED;
          failed++;
          close(fds[i]);
          continue;
        }
        got[i] += (int)m;
        if (got[i] == ECHO_MESSAGE) {
          if (memcmp(in[i], message, ECHO_MESSAGE) == 0) ok++;
          else bad++;
          state[i] = E_DONE;
          close(fds[i]);
        }
      }
    }
  }
  int stuck_connecting = 0, stuck_echo = 0;
  for (int i = 0; i < count; i++) {
    if (state[i] == E_CONNECTING || state[i] == E_SENT) {
      if (state[i] == E_CONNECTING) stuck_connecting++;
      else stuck_echo++;
      failed++;
      close(fds[i]);
    }
  }
  if (stuck_connecting + stuck_echo > 0) fprintf(stderr, "echo-many unfinished: %d connecting, %d awaiting the echo\n", stuck_connecting, stuck_echo);
  printf("echo-many ok %d bad %d failed %d ms %.0f\n", ok, bad, failed, now_ms() - start);
  return ok == count ? 0 : 1;
}

static int halfclose(const char *addr, int port) {
  int fd = dial_or_die("halfclose", addr, port, 20);
  const char *line = "half-close request\n";
  write_all(fd, (const unsigned char *)line, strlen(line));
  shutdown(fd, SHUT_WR);
  char reply[256];
  size_t got = 0;
  for (int i = 0; i < 1000 && got < sizeof reply - 1; i++) {
    ssize_t r = recv(fd, reply + got, sizeof reply - 1 - got, 0);
    if (r < 0) {
      printf("halfclose recv %s\n", errname(errno));
      return 1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  reply[got] = 0;
  char *nl = strchr(reply, '\n');
  if (nl) *nl = 0;
  printf("halfclose reply %s\n", reply);
  return 0;
}

static int reset_recv(const char *addr, int port) {
  int fd = dial_or_die("reset-recv", addr, port, 20);
  const char *line = "reset me\n";
  write_all(fd, (const unsigned char *)line, strlen(line));
  char b[64];
  for (int i = 0; i < 100; i++) {
    ssize_t r = recv(fd, b, sizeof b, 0);
    if (r < 0) {
      printf("reset-recv %s\n", errname(errno));
      return errno == ECONNRESET ? 0 : 1;
    }
    if (r == 0) {
      printf("reset-recv eof\n");
      return 1;
    }
  }
  printf("reset-recv data\n");
  return 1;
}

static int reset_send(const char *addr, int port) {
  int fd = dial_or_die("reset-send", addr, port, 20);
  const char *line = "hello\n";
  write_all(fd, (const unsigned char *)line, strlen(line));
  char b[8];
  ssize_t r = recv(fd, b, sizeof b, 0);
  if (r <= 0) {
    printf("reset-send no-ok %s\n", r < 0 ? errname(errno) : "eof");
    return 1;
  }
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
  printf("reset-send sent\n");
  return 0;
}

static int connect_probe(const char *addr, int port) {
  double start = now_ms();
  int fd = dial(addr, port, 10);
  if (fd < 0) {
    printf("connect %s ms %.0f\n", errname(-fd), now_ms() - start);
    return 0;
  }
  printf("connect ok ms %.0f\n", now_ms() - start);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 5 && strcmp(argv[1], "upload") == 0) return upload(argv[2], atoi(argv[3]), atoll(argv[4]));
  if (argc >= 5 && strcmp(argv[1], "download") == 0) return download(argv[2], atoi(argv[3]), atoll(argv[4]));
  if (argc >= 5 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (argc >= 5 && strcmp(argv[1], "echo-many") == 0) return echo_many(argv[2], atoi(argv[3]), atoi(argv[4]));
  if (argc >= 4 && strcmp(argv[1], "halfclose") == 0) return halfclose(argv[2], atoi(argv[3]));
  if (argc >= 4 && strcmp(argv[1], "reset-recv") == 0) return reset_recv(argv[2], atoi(argv[3]));
  if (argc >= 4 && strcmp(argv[1], "reset-send") == 0) return reset_send(argv[2], atoi(argv[3]));
  if (argc >= 4 && strcmp(argv[1], "connect") == 0) return connect_probe(argv[2], atoi(argv[3]));
  fprintf(stderr, "usage: tcp-tool upload|download|serve|echo-many|halfclose|reset-recv|reset-send|connect ...\n");
  return 2;
}
