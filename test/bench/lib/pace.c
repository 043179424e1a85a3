// An open-loop HTTP/1.1 load generator for the benchmark's latency scenarios: requests are sent at a
// fixed rate, each on its own schedule (evenly spaced, or Poisson with `poisson`), on keep-alive
// connections, and each latency is counted from when the request was due, not from when a connection
// was free to send it (wrk2's correction for coordinated omission). wrk's Lua `delay()` is in whole
// milliseconds, so its clients send in clumps on millisecond ticks; this one keeps time in nanoseconds
// with a timerfd. Built by the harness with the system's C compiler (test/bench/lib/load.mjs).
//
//   pace <host> <port> <path> <connections> <rate/s> <seconds> <warmup seconds> [uniform|poisson]
//
// Prints one JSON line: requests, bytes, errors, non2xx, seconds, rps and latency percentiles in
// milliseconds. A connection the server closes is opened again (its request counts as an error).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int fd;
  int busy;
  uint64_t due;   // when the request in flight was due (ns)
  char buf[65536];
  size_t len;
} conn_t;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int open_conn(const char *host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return -1;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Length of one whole response at the start of buf, 0 when incomplete, -1 when it cannot be framed;
// *close says the server will close the connection after it.
static long response_length(const char *buf, size_t len, int *close) {
  const char *end = memmem(buf, len, "\r\n\r\n", 4);
  if (!end) return len > 60000 ? -1 : 0;
  size_t head = (size_t)(end - buf) + 4;
  long body = -1;
  for (const char *p = buf; p < end;) {
    const char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
    if (!eol) break;
    if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0) body = strtol(p + 15, NULL, 10);
    if ((size_t)(eol - p) >= 17 && strncasecmp(p, "connection:", 11) == 0 && memmem(p, (size_t)(eol - p), "close", 5)) *close = 1;
    p = eol + 2;
  }
  if (body < 0) return -1;
  return head + (size_t)body <= len ? (long)(head + (size_t)body) : 0;
}

// Replaces connection i with a new one (after a close by the server); 0, or -1 when it cannot connect.
static int reconnect(int ep, conn_t *cn, uint32_t i, const char *host, int port) {
  epoll_ctl(ep, EPOLL_CTL_DEL, cn->fd, NULL);
  close(cn->fd);
  cn->fd = open_conn(host, port);
  if (cn->fd < 0) return -1;
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
  epoll_ctl(ep, EPOLL_CTL_ADD, cn->fd, &ev);
  cn->len = 0;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: pace host port path connections rate seconds warmup [uniform|poisson]\n");
    return 2;
  }
  const char *host = argv[1];
  int port = atoi(argv[2]);
  const char *path = argv[3];
  int n = atoi(argv[4]);
  double rate = atof(argv[5]), seconds = atof(argv[6]), warmup = atof(argv[7]);
  int poisson = argc > 8 && strcmp(argv[8], "poisson") == 0;
  if (n < 1 || rate <= 0 || seconds <= 0 || warmup < 0) return 2;

  char req[1024];
  int reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, host, port);
  conn_t *c = calloc((size_t)n, sizeof *c);
  int ep = epoll_create1(0);
  for (int i = 0; i < n; i++) {
    c[i].fd = open_conn(host, port);
    if (c[i].fd < 0) { fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(errno)); return 1; }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
  }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

  // Idle connections (a ring) and requests due but waiting for one (their due times, a ring).
  int *idle = malloc(sizeof(int) * (size_t)n);
  size_t idle_head = 0, idle_count = 0;
  for (int i = 0; i < n; i++) idle[idle_count++] = i;
  size_t cap = 1 << 20;
  uint64_t *waiting = malloc(sizeof(uint64_t) * cap);
  size_t w_head = 0, w_count = 0;

  size_t max_samples = (size_t)(rate * seconds * 1.2) + 1024;
  uint64_t *lat = malloc(sizeof(uint64_t) * max_samples);
  size_t samples = 0;
  long errors = 0, non2xx = 0;
  unsigned long long bytes = 0;
  srand48((long)now_ns());

  // PACE_TRACE names a file that gets each request's send time (µs from the start), one a line: what
  // the generator itself did, which its tests check rather than a busy server's arrival times.
  const char *trace_path = getenv("PACE_TRACE");
  FILE *trace = trace_path ? fopen(trace_path, "w") : NULL;
  if (trace_path && !trace) { fprintf(stderr, "PACE_TRACE %s: %s\n", trace_path, strerror(errno)); return 1; }
  uint64_t start = now_ns();
#define SENT() do { if (trace) fprintf(trace, "%llu\n", (unsigned long long)((now_ns() - start) / 1000)); } while (0)
  uint64_t measure_from = start + (uint64_t)(warmup * 1e9);
  uint64_t stop = measure_from + (uint64_t)(seconds * 1e9);
  double mean_gap = 1e9 / rate;
  uint64_t next_due = start;

  for (;;) {
    uint64_t t = now_ns();
    // Past the end nothing new is sent; the requests due before it are sent (a late wake-up must not
    // drop them) and answered (at most 2 s more).
    if (t >= stop && ((next_due >= stop && idle_count == (size_t)n && w_count == 0) || t >= stop + 2000000000ull)) break;
    // Every request now due goes to an idle connection, or waits for one.
    while (next_due <= t && next_due < stop) {
      if (idle_count > 0) {
        int i = idle[idle_head];
        idle_head = (idle_head + 1) % (size_t)n;
        idle_count--;
        c[i].busy = 1;
        c[i].due = next_due;
        if (write(c[i].fd, req, (size_t)reqlen) != reqlen) errors++;
        SENT();
      } else if (w_count < cap) {
        waiting[(w_head + w_count) % cap] = next_due;
        w_count++;
      } else errors++;
      next_due += poisson ? (uint64_t)(-log(1.0 - drand48()) * mean_gap) : (uint64_t)mean_gap;
    }
    struct itimerspec its = {0};
    uint64_t wake = next_due < stop ? next_due : t >= stop ? t + 10000000ull : stop;
    its.it_value.tv_sec = (time_t)(wake / 1000000000ull);
    its.it_value.tv_nsec = (long)(wake % 1000000000ull);
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);

    struct epoll_event evs[256];
    int k = epoll_wait(ep, evs, 256, 1000);
    for (int e = 0; e < k; e++) {
      uint32_t id = evs[e].data.u32;
      if (id == UINT32_MAX) {
        uint64_t x;
        if (read(tfd, &x, sizeof x) < 0) { /* nothing due yet */ }
        continue;
      }
      conn_t *cn = &c[id];
      ssize_t r = read(cn->fd, cn->buf + cn->len, sizeof cn->buf - cn->len);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        // Closed (or reset): a new connection takes its place; a request it carried is lost.
        if (reconnect(ep, cn, id, host, port) < 0) { fprintf(stderr, "reconnect %s:%d: %s\n", host, port, strerror(errno)); return 1; }
        if (cn->busy) errors++;
        cn->busy = 0;
        idle[(idle_head + idle_count) % (size_t)n] = (int)id;
        idle_count++;
        continue;
      }
      cn->len += (size_t)r;
      int closing = 0;
      long whole = response_length(cn->buf, cn->len, &closing);
      if (whole < 0) { fprintf(stderr, "an answer without Content-Length\n"); return 1; }
      if (whole == 0) continue;
      uint64_t done = now_ns();
      if (!cn->busy) errors++;
      else if (strncmp(cn->buf, "HTTP/1.1 2", 10) != 0) non2xx++;
      bytes += (unsigned long long)whole;
      if (cn->due >= measure_from && samples < max_samples) lat[samples++] = done - cn->due;
      memmove(cn->buf, cn->buf + whole, cn->len - (size_t)whole);
      cn->len -= (size_t)whole;
      cn->busy = 0;
      if (closing && reconnect(ep, cn, id, host, port) < 0) { fprintf(stderr, "reconnect %s:%d: %s\n", host, port, strerror(errno)); return 1; }
      if (w_count > 0) {
        // The oldest waiting request goes at once; its latency still counts from when it was due.
        cn->busy = 1;
        cn->due = waiting[w_head];
        w_head = (w_head + 1) % cap;
        w_count--;
        if (write(cn->fd, req, (size_t)reqlen) != reqlen) errors++;
        SENT();
      } else {
        idle[(idle_head + idle_count) % (size_t)n] = (int)id;
        idle_count++;
      }
    }
  }
  if (trace) fclose(trace);
  qsort(lat, samples, sizeof *lat, cmp_u64);
#define PCT(p) (samples ? lat[(size_t)((double)(samples - 1) * (p))] / 1e6 : 0.0)
  printf("{\"requests\":%zu,\"bytes\":%llu,\"errors\":%ld,\"non2xx\":%ld,\"seconds\":%.3f,\"rps\":%.1f,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"p999\":%.4f,\"max\":%.4f}\n",
         samples, bytes, errors, non2xx, seconds, samples / seconds, PCT(0.5), PCT(0.9), PCT(0.99), PCT(0.999), samples ? lat[samples - 1] / 1e6 : 0.0);
  return 0;
}
