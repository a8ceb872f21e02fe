/*
 * bench/load.c - the load client of the benchmark.  One thread, epoll/poll,
 * non-blocking sockets.  Every loop is bounded by a duration, a count or a
 * deadline, so a hung bridge makes a run fail, never hang.
 *
 *   load MODE --target HOST:PORT|/unix/path [options]
 *
 * Modes (one JSON line on stdout per run; the driver parses it):
 *   pingpong  --conns N --size S --duration D   round trips/s, p50/p99 latency
 *   reqresp   --size S --duration D             one conn, S echoed in full; MB/s
 *   bulk-up   --duration D                      client -> target (server: sink)
 *   bulk-down --duration D                      target -> client (server: source)
 *   churn     --workers W --duration D          connect, 16 B echo, close; conn/s
 *   idle      --conns N [--hold-max S]          open N, echo once, hold until stdin
 *                                               closes or SIGUSR1, echo again
 *   halfclose [--size S] [--trials T]           send, shutdown(SHUT_WR), expect the
 *                                               whole echo back, T trials; exit 0/1
 *   verify    --bytes N                         stream N pseudo-random bytes through
 *                                               echo, compare every byte
 *
 * TLS modes (OpenSSL, the bridge terminates TLS; --ca FILE verifies its
 * certificate and the target's IP address, --tls-version 1.3|1.2 pins the
 * version, default 1.3).  Each JSON line also names the negotiated version,
 * cipher suite and key-exchange group:
 *   tls-handshake --workers W --conns C --duration D   W threads, C connections
 *                                               each in flight: connect, full
 *                                               handshake (no session reuse), 16 B
 *                                               echo, close_notify, close
 *   tls-resume    (as tls-handshake)            the same, each connection offering
 *                                               the ticket its slot got last time
 *   tls-pingpong  --conns N --size S --duration D [--workers W]
 *   tls-bulk-up / tls-bulk-down --duration D
 *   tls-idle      --conns N [--hold-max S]
 *   tls-halfclose [--size S] [--trials T]       close_notify + SHUT_WR after the
 *                                               request, the whole echo expected
 *   tls-verify    --bytes N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define OP_TIMEOUT_US 5000000LL   /* one connect or echo round may take this long */
#define HIST_MAX_US 2000000       /* latency histogram: 1 us buckets up to 2 s */

/* ---------- options and small helpers ---------- */

struct opts {
    const char *mode, *target, *ca;
    int tls_version;
    int conns, workers, trials;
    long size;
    double duration, hold_max;
    long long bytes;
};

static struct opts o = { .tls_version = 13, .conns = 1, .workers = 16, .trials = 10, .size = 64, .duration = 5,
                         .hold_max = 300, .bytes = 256LL << 20 };
static volatile sig_atomic_t g_wakeup;

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void usage(void) {
    fprintf(stderr, "usage: load pingpong|reqresp|bulk-up|bulk-down|churn|idle|halfclose|verify|"
                    "tls-handshake|tls-resume|tls-pingpong|tls-bulk-up|tls-bulk-down|tls-idle|tls-halfclose|tls-verify "
                    "--target HOST:PORT|PATH [--conns N] [--size S] [--duration D] "
                    "[--workers W] [--trials T] [--bytes N] [--hold-max S] [--ca FILE] [--tls-version 1.3|1.2]\n");
    exit(64);
}

static void parse_args(int argc, char **argv) {
    if (argc < 2) usage();
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--target")) o.target = v;
        else if (!strcmp(a, "--conns")) o.conns = atoi(v);
        else if (!strcmp(a, "--workers")) o.workers = atoi(v);
        else if (!strcmp(a, "--trials")) o.trials = atoi(v);
        else if (!strcmp(a, "--size")) o.size = atol(v);
        else if (!strcmp(a, "--duration")) o.duration = atof(v);
        else if (!strcmp(a, "--hold-max")) o.hold_max = atof(v);
        else if (!strcmp(a, "--bytes")) o.bytes = atoll(v);
        else if (!strcmp(a, "--ca")) o.ca = v;
        else if (!strcmp(a, "--tls-version")) o.tls_version = !strcmp(v, "1.2") ? 12 : !strcmp(v, "1.3") ? 13 : 0;
        else usage();
    }
    if (!o.target || !o.tls_version || o.conns < 1 || o.workers < 1 || o.trials < 1 || o.size < 1 || o.duration <= 0) usage();
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---------- target address ---------- */

static char g_host[256];
static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static int g_family;

static void resolve_target(void) {
    if (o.target[0] == '/') {
        struct sockaddr_un *sa = (struct sockaddr_un *)&g_addr;
        sa->sun_family = AF_UNIX;
        snprintf(sa->sun_path, sizeof sa->sun_path, "%s", o.target);
        g_addrlen = sizeof *sa;
        g_family = AF_UNIX;
        return;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", o.target);
    char *colon = strrchr(host, ':');
    if (!colon) usage();
    *colon = 0;
    snprintf(g_host, sizeof g_host, "%s", host);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0) { fprintf(stderr, "cannot resolve %s\n", o.target); exit(1); }
    memcpy(&g_addr, res->ai_addr, res->ai_addrlen);
    g_addrlen = res->ai_addrlen;
    g_family = res->ai_family;
    freeaddrinfo(res);
}

/* A new socket to the target.  TCP gets TCP_NODELAY: small requests must not
 * wait for Nagle.  Non-blocking sockets may return with connect in progress. */
static int open_socket(int nonblock, int *in_progress) {
    int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    if (g_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    *in_progress = 0;
    if (connect(fd, (struct sockaddr *)&g_addr, g_addrlen) < 0) {
        if (nonblock && errno == EINPROGRESS) { *in_progress = 1; return fd; }
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int wait_fd(int fd, short events, long long deadline);

/* Connect with a timeout (a bridge whose queue is full drops SYNs, and a
 * blocking connect would then wait minutes); the socket stays non-blocking.
 * A UNIX socket with a full queue answers EAGAIN at once: retried until the
 * deadline. */
static int connect_target(void) {
    long long deadline = now_us() + OP_TIMEOUT_US;
    for (;;) {
        int ip;
        int fd = open_socket(1, &ip);
        if (fd < 0 && errno == EAGAIN && g_family == AF_UNIX && now_us() < deadline) {
            usleep(1000);
            continue;
        }
        if (fd < 0 || !ip) return fd;
        int err = ETIMEDOUT;
        socklen_t l = sizeof err;
        if (wait_fd(fd, POLLOUT, deadline)) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err == 0) return fd;
        close(fd);
        errno = err;
        return -1;
    }
}

/* Wait for events on one fd, until the absolute deadline.  0 on timeout. */
static int wait_fd(int fd, short events, long long deadline) {
    long long left = deadline - now_us();
    if (left <= 0) return 0;
    struct pollfd p = { .fd = fd, .events = events };
    int r = poll(&p, 1, (int)((left + 999) / 1000));
    return r > 0 ? p.revents : 0;
}

/* Send/receive exactly len bytes on a non-blocking fd before the deadline. */
static int send_all(int fd, const unsigned char *buf, size_t len, long long deadline) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n > 0) { done += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) return -1;
        if (!wait_fd(fd, POLLOUT, deadline)) return -1;
    }
    return 0;
}

static int recv_all(int fd, unsigned char *buf, size_t len, long long deadline) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = recv(fd, buf + done, len - done, 0);
        if (n > 0) { done += (size_t)n; continue; }
        if (n == 0) return -1;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return -1;
        if (!wait_fd(fd, POLLIN, deadline)) return -1;
    }
    return 0;
}

/* One small echo round trip with a timeout; 0 when it came back intact. */
static int echo_once(int fd, size_t len) {
    unsigned char out[64], in[64];
    if (len > sizeof out) len = sizeof out;
    for (size_t i = 0; i < len; i++) out[i] = (unsigned char)('a' + i % 26);
    long long dl = now_us() + OP_TIMEOUT_US;
    if (send_all(fd, out, len, dl) < 0 || recv_all(fd, in, len, dl) < 0) return -1;
    return memcmp(out, in, len) ? -1 : 0;
}

/* Deterministic pseudo-random stream: byte i depends only on i, so sender
 * and checker generate it independently (splitmix64 of the word index). */
static uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void gen_stream(uint64_t off, unsigned char *buf, size_t len) {
    for (size_t i = 0; i < len;) {
        uint64_t pos = off + i;
        uint64_t w = splitmix(pos >> 3);
        unsigned k = (unsigned)(pos & 7);
        for (; k < 8 && i < len; k++, i++) buf[i] = (unsigned char)(w >> (k * 8));
    }
}

/* ---------- pingpong ---------- */

struct pp_conn { int fd; size_t sent, got; long long t0; };

static int pct(const uint32_t *hist, long long total, double p) {
    long long want = (long long)(total * p), seen = 0;
    for (int i = 0; i <= HIST_MAX_US; i++) { seen += hist[i]; if (seen > want) return i; }
    return HIST_MAX_US;
}

static int run_pingpong(void) {
    size_t S = (size_t)o.size;
    unsigned char *out = malloc(S), *in = malloc(S < CHUNK ? CHUNK : S);
    uint32_t *hist = calloc(HIST_MAX_US + 1, sizeof *hist);
    struct pp_conn *cs = calloc((size_t)o.conns, sizeof *cs);
    memset(out, 'p', S);
    int ep = epoll_create1(0), errors = 0, open = 0;
    for (int i = 0; i < o.conns; i++) {
        cs[i].fd = connect_target();
        if (cs[i].fd < 0) { errors++; continue; }
        open++;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &cs[i] };
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    /* The first 10% (max 1 s) warms the bridge up and is not counted. */
    long long start = now_us(), warm = (long long)(o.duration * 1e6 * 0.1);
    if (warm > 1000000) warm = 1000000;
    long long measure_from = start + warm, end = start + (long long)(o.duration * 1e6);
    long long counted = 0, all = 0; /* all: warm-up included, for CPU per round trip */
    for (int i = 0; i < o.conns; i++) {
        if (cs[i].fd < 0) continue;
        cs[i].t0 = now_us();
        if (send_all(cs[i].fd, out, S, cs[i].t0 + OP_TIMEOUT_US) < 0) errors++;
        cs[i].sent = S;
    }
    struct epoll_event evs[256];
    long long last_progress = now_us();
    while (open > 0) {
        long long t = now_us();
        if (t >= end) break;
        if (t - last_progress > OP_TIMEOUT_US) { errors++; break; } /* stalled bridge */
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct pp_conn *c = evs[k].data.ptr;
            ssize_t r = recv(c->fd, in, S - c->got, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                errors++; close(c->fd); c->fd = -1; open--; continue;
            }
            if (r < 0) continue;
            c->got += (size_t)r;
            if (c->got < S) continue;
            long long t1 = now_us();
            last_progress = t1;
            all++;
            if (c->t0 >= measure_from) {
                long long lat = t1 - c->t0;
                hist[lat > HIST_MAX_US ? HIST_MAX_US : lat]++;
                counted++;
            }
            if (t1 >= end) continue;
            c->got = 0;
            c->t0 = t1;
            if (send_all(c->fd, out, S, t1 + OP_TIMEOUT_US) < 0) { errors++; close(c->fd); c->fd = -1; open--; }
        }
    }
    double secs = (now_us() - measure_from) / 1e6;
    if (secs <= 0) secs = 1e-6;
    printf("{\"mode\":\"pingpong\",\"conns\":%d,\"size\":%zu,\"seconds\":%.3f,\"all_round_trips\":%lld,\"round_trips\":%lld,"
           "\"rt_per_s\":%.1f,\"p50_us\":%d,\"p99_us\":%d,\"errors\":%d}\n",
           o.conns, S, secs, all, counted, counted / secs,
           counted ? pct(hist, counted, 0.50) : -1, counted ? pct(hist, counted, 0.99) : -1, errors);
    for (int i = 0; i < o.conns; i++) if (cs[i].fd >= 0) close(cs[i].fd);
    return errors ? 1 : 0;
}

/* ---------- reqresp: one request of S bytes, echoed in full, repeated ---------- */

/* Send len bytes while reading the echo concurrently (a 1 MB request does
 * not fit in the socket buffers, so writing first would deadlock). */
static int echo_round(int fd, const unsigned char *out, unsigned char *in, size_t len, long long deadline) {
    size_t sent = 0, got = 0;
    while (got < len) {
        struct pollfd p = { .fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0) };
        long long left = deadline - now_us();
        if (left <= 0 || poll(&p, 1, (int)(left / 1000) + 1) < 0) return -1;
        if ((p.revents & POLLOUT) && sent < len) {
            ssize_t n = send(fd, out + sent, len - sent, MSG_NOSIGNAL);
            if (n > 0) sent += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR) return -1;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            size_t want = len - got < CHUNK ? len - got : CHUNK;
            ssize_t n = recv(fd, in, want, 0);
            if (n > 0) got += (size_t)n;
            else if (n == 0 || (errno != EAGAIN && errno != EINTR)) return -1;
        }
    }
    return 0;
}

static int run_reqresp(void) {
    size_t S = (size_t)o.size;
    unsigned char *out = malloc(S), *in = malloc(CHUNK);
    memset(out, 'r', S);
    int fd = connect_target();
    if (fd < 0) { printf("{\"mode\":\"reqresp\",\"size\":%zu,\"error\":\"connect: %s\"}\n", S, strerror(errno)); return 1; }
    long long start = now_us(), end = start + (long long)(o.duration * 1e6), last = start;
    long long rounds = 0;
    int errors = 0;
    while (now_us() < end) {
        if (echo_round(fd, out, in, S, now_us() + OP_TIMEOUT_US * 2) < 0) { errors++; break; }
        rounds++;
        last = now_us();
    }
    double secs = (last - start) / 1e6;
    if (secs <= 0) secs = 1e-6;
    printf("{\"mode\":\"reqresp\",\"size\":%zu,\"seconds\":%.3f,\"rounds\":%lld,\"mb_per_s\":%.2f,\"errors\":%d}\n",
           S, secs, rounds, rounds * (double)S / secs / 1e6, errors);
    close(fd);
    return errors ? 1 : 0;
}

/* ---------- bulk transfers ---------- */

static int run_bulk_up(void) {
    unsigned char *buf = malloc(CHUNK);
    memset(buf, 'u', CHUNK);
    int fd = connect_target();
    if (fd < 0) { printf("{\"mode\":\"bulk-up\",\"error\":\"connect: %s\"}\n", strerror(errno)); return 1; }
    long long start = now_us(), end = start + (long long)(o.duration * 1e6), bytes = 0;
    int errors = 0;
    while (now_us() < end) {
        ssize_t n = send(fd, buf, CHUNK, MSG_NOSIGNAL);
        if (n > 0) { bytes += n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) { errors++; break; }
        wait_fd(fd, POLLOUT, end);
    }
    /* Count the time until the sink has read everything: it closes at our EOF,
     * and the bridge passes that close back to us. */
    shutdown(fd, SHUT_WR);
    long long dl = now_us() + OP_TIMEOUT_US;
    int eof = 0;
    while (!eof && wait_fd(fd, POLLIN, dl)) {
        ssize_t n = recv(fd, buf, CHUNK, 0);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) eof = 1;
    }
    double secs = (now_us() - start) / 1e6;
    printf("{\"mode\":\"bulk-up\",\"seconds\":%.3f,\"bytes\":%lld,\"mb_per_s\":%.2f,\"eof\":%s,\"errors\":%d}\n",
           secs, bytes, bytes / secs / 1e6, eof ? "true" : "false", errors);
    close(fd);
    return errors ? 1 : 0;
}

static int run_bulk_down(void) {
    unsigned char *buf = malloc(CHUNK);
    int fd = connect_target();
    if (fd < 0) { printf("{\"mode\":\"bulk-down\",\"error\":\"connect: %s\"}\n", strerror(errno)); return 1; }
    long long start = now_us(), end = start + (long long)(o.duration * 1e6), bytes = 0;
    int errors = 0;
    while (now_us() < end) {
        ssize_t n = recv(fd, buf, CHUNK, 0);
        if (n > 0) { bytes += n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || errno != EAGAIN) { errors++; break; }
        wait_fd(fd, POLLIN, end);
    }
    double secs = (now_us() - start) / 1e6;
    printf("{\"mode\":\"bulk-down\",\"seconds\":%.3f,\"bytes\":%lld,\"mb_per_s\":%.2f,\"errors\":%d}\n",
           secs, bytes, bytes / secs / 1e6, errors);
    close(fd);
    return errors ? 1 : 0;
}

/* ---------- churn: connect, 16 B echo, close, as fast as W workers can ---------- */

enum churn_state { CH_IDLE, CH_CONNECTING, CH_READING };
struct churn_w { int fd; enum churn_state st; size_t got; long long deadline; };

static const unsigned char CHURN_MSG[16] = "churn-0123456789";

static void churn_finish(int ep, struct churn_w *w) {
    if (w->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, w->fd, NULL); close(w->fd); }
    w->fd = -1;
    w->st = CH_IDLE;
}

/* Start one cycle; returns -1 on an immediate error, 1 when the target's
 * queue is momentarily full (UNIX EAGAIN: retried, not an error). */
static int churn_start(int ep, struct churn_w *w) {
    int ip;
    int fd = open_socket(1, &ip);
    if (fd < 0) return errno == EAGAIN && g_family == AF_UNIX ? 1 : -1;
    w->fd = fd;
    w->got = 0;
    w->deadline = now_us() + OP_TIMEOUT_US;
    if (ip) {
        w->st = CH_CONNECTING;
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = w };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        return 0;
    }
    if (send(fd, CHURN_MSG, 16, MSG_NOSIGNAL) != 16) { churn_finish(ep, w); return -1; }
    w->st = CH_READING;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

/* Progress on an event; returns 1 when a cycle completed, -1 on error. */
static int churn_event(int ep, struct churn_w *w) {
    if (w->st == CH_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || send(w->fd, CHURN_MSG, 16, MSG_NOSIGNAL) != 16) { churn_finish(ep, w); return -1; }
        w->st = CH_READING;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };
        epoll_ctl(ep, EPOLL_CTL_MOD, w->fd, &ev);
        return 0;
    }
    unsigned char in[16];
    ssize_t n = recv(w->fd, in, 16 - w->got, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) { churn_finish(ep, w); return -1; }
    w->got += (size_t)n;
    if (w->got < 16) return 0;
    churn_finish(ep, w);
    return 1;
}

static int run_churn(void) {
    struct churn_w *ws = calloc((size_t)o.workers, sizeof *ws);
    int ep = epoll_create1(0);
    long long start = now_us(), end = start + (long long)(o.duration * 1e6);
    long long done = 0, errors = 0, retries = 0, timeouts = 0;
    for (int i = 0; i < o.workers; i++) { ws[i].fd = -1; ws[i].st = CH_IDLE; }
    struct epoll_event evs[256];
    /* After the duration no new cycle starts; the ones in flight get their
     * own 5 s deadline, so the loop ends by end + 5 s at the latest. */
    for (;;) {
        long long t = now_us();
        int active = 0;
        for (int i = 0; i < o.workers; i++) {
            struct churn_w *w = &ws[i];
            if (w->st != CH_IDLE && t > w->deadline) { churn_finish(ep, w); errors++; timeouts++; }
            if (w->st == CH_IDLE && t < end) {
                int r = churn_start(ep, w);
                if (r < 0) errors++;
                else if (r > 0) retries++;
            }
            if (w->st != CH_IDLE) active++;
        }
        if (!active && t >= end) break;
        int n = epoll_wait(ep, evs, 256, 10);
        for (int k = 0; k < n; k++) {
            int r = churn_event(ep, evs[k].data.ptr);
            if (r > 0) done++;
            else if (r < 0) errors++;
        }
    }
    double secs = (now_us() - start) / 1e6;
    printf("{\"mode\":\"churn\",\"workers\":%d,\"seconds\":%.3f,\"conns\":%lld,\"conn_per_s\":%.1f,"
           "\"errors\":%lld,\"timeouts\":%lld,\"retries\":%lld}\n",
           o.workers, secs, done, done / secs, errors, timeouts, retries);
    return errors ? 1 : 0;
}

/* ---------- idle: hold N connections, check they still work afterwards ---------- */

static void on_usr1(int sig) { (void)sig; g_wakeup = 1; }

/* Hold until the driver closes our stdin or sends SIGUSR1, at most hold_max seconds. */
static void hold_until_released(double hold_max) {
    struct sigaction sa = { .sa_handler = on_usr1 };
    sigaction(SIGUSR1, &sa, NULL);
    long long hold_end = now_us() + (long long)(hold_max * 1e6);
    char junk[256];
    while (!g_wakeup && now_us() < hold_end) {
        struct pollfd p = { .fd = 0, .events = POLLIN };
        if (poll(&p, 1, 200) > 0 && read(0, junk, sizeof junk) <= 0) break;
    }
}

static int run_idle(void) {
    int *fds = calloc((size_t)o.conns, sizeof *fds);
    int open_failures = 0;
    long long t0 = now_us();
    /* Opening is bounded as a whole: a bridge that stops accepting (a
     * connection cap) turns the rest into failures instead of 5 s waits each. */
    long long open_deadline = t0 + 60000000LL;
    for (int i = 0; i < o.conns; i++) {
        fds[i] = now_us() < open_deadline ? connect_target() : -1;
        if (fds[i] < 0 || echo_once(fds[i], 16) < 0) {
            if (fds[i] >= 0) close(fds[i]);
            fds[i] = -1;
            open_failures++;
        }
    }
    printf("{\"mode\":\"idle\",\"phase\":\"ready\",\"conns\":%d,\"open_failures\":%d,\"open_seconds\":%.3f}\n",
           o.conns, open_failures, (now_us() - t0) / 1e6);
    fflush(stdout);

    hold_until_released(o.hold_max);

    /* Send on all first, then collect all replies under one shared deadline,
     * so a bridge that lost every connection costs 5 s, not 5 s each. */
    int failures = 0;
    const unsigned char msg[16] = "idle-check-01234";
    for (int i = 0; i < o.conns; i++)
        if (fds[i] >= 0 && send(fds[i], msg, 16, MSG_NOSIGNAL) != 16) { close(fds[i]); fds[i] = -1; failures++; }
    long long dl = now_us() + OP_TIMEOUT_US;
    for (int i = 0; i < o.conns; i++) {
        if (fds[i] < 0) continue;
        unsigned char in[16];
        if (recv_all(fds[i], in, 16, dl) < 0 || memcmp(in, msg, 16)) failures++;
        close(fds[i]);
    }
    printf("{\"mode\":\"idle\",\"phase\":\"done\",\"conns\":%d,\"open_failures\":%d,\"failures\":%d}\n",
           o.conns, open_failures, failures);
    return open_failures || failures ? 1 : 0;
}

/* ---------- halfclose ---------- */

/* One trial: request, then our EOF right away, so the echo is still in flight
 * when the bridge sees the half-close.  1 when the whole echo came back. */
static int halfclose_once(const unsigned char *out, unsigned char *in, size_t S, size_t *received) {
    *received = 0;
    int fd = connect_target();
    if (fd < 0) return 0;
    long long dl = now_us() + OP_TIMEOUT_US;
    int sent_ok = send_all(fd, out, S, dl) == 0;
    shutdown(fd, SHUT_WR);
    size_t got = 0;
    while (got <= S && wait_fd(fd, POLLIN, dl)) {
        ssize_t n = recv(fd, in + got, S + 1 - got, 0);
        if (n > 0) { got += (size_t)n; continue; }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        break; /* EOF or error */
    }
    close(fd);
    *received = got;
    return sent_ok && got == S && memcmp(out, in, S) == 0;
}

/* Whether a bridge drops the reply is a race on its side, so one lucky trial
 * proves little: --trials T (default 10), all must get the whole reply. */
static int run_halfclose(void) {
    size_t S = (size_t)o.size;
    unsigned char *out = malloc(S), *in = malloc(S + 1);
    gen_stream(0, out, S);
    int trials = o.trials, failures = 0;
    size_t worst = S, received;
    for (int t = 0; t < trials; t++) {
        if (!halfclose_once(out, in, S, &received)) failures++;
        if (received < worst) worst = received;
    }
    printf("{\"mode\":\"halfclose\",\"size\":%zu,\"trials\":%d,\"failures\":%d,\"least_received\":%zu,\"ok\":%s}\n",
           S, trials, failures, worst, failures ? "false" : "true");
    return failures ? 1 : 0;
}

/* ---------- verify: N pseudo-random bytes through echo, compared ---------- */

static int run_verify(void) {
    unsigned char *out = malloc(CHUNK), *in = malloc(CHUNK), *want = malloc(CHUNK);
    int fd = connect_target();
    if (fd < 0) { printf("{\"mode\":\"verify\",\"ok\":false,\"error\":\"connect: %s\"}\n", strerror(errno)); return 1; }
    long long N = o.bytes, sent = 0, got = 0, mismatched = 0;
    size_t out_len = 0, out_off = 0;
    long long start = now_us();
    /* Bounded: at least 30 s, plus 1 s per 10 MB (a bridge slower than that fails). */
    long long deadline = start + 30000000LL + N / 10;
    /* No shutdown(SHUT_WR) after the last byte: half-close is tested on its
     * own, and bridges that close on it would show up here as missing bytes. */
    int eof = 0;
    while (got < N && !eof && now_us() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN | (sent < N ? POLLOUT : 0) };
        if (poll(&p, 1, 100) <= 0) continue;
        if ((p.revents & POLLOUT) && sent < N) {
            if (out_off == out_len) {
                out_len = (size_t)(N - sent < CHUNK ? N - sent : CHUNK);
                gen_stream((uint64_t)sent, out, out_len);
                out_off = 0;
            }
            ssize_t n = send(fd, out + out_off, out_len - out_off, MSG_NOSIGNAL);
            if (n > 0) {
                out_off += (size_t)n;
                if (out_off == out_len) sent += (long long)out_len;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) break;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(fd, in, CHUNK, 0);
            if (n > 0) {
                long long take = n;
                if (got + take > N) { mismatched += got + take - N; take = N - got; } /* extra bytes */
                gen_stream((uint64_t)got, want, (size_t)take);
                for (long long i = 0; i < take; i++) mismatched += in[i] != want[i];
                got += n;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) eof = 1;
        }
    }
    double secs = (now_us() - start) / 1e6;
    long long missing = got < N ? N - got : 0;
    int ok = mismatched == 0 && missing == 0;
    printf("{\"mode\":\"verify\",\"bytes\":%lld,\"received\":%lld,\"mismatched\":%lld,\"missing\":%lld,"
           "\"seconds\":%.3f,\"mb_per_s\":%.2f,\"ok\":%s}\n",
           N, got, mismatched, missing, secs, got / secs / 1e6, ok ? "true" : "false");
    close(fd);
    return ok ? 0 : 1;
}

/* ====================================================================== */
/* ---------- TLS: the same workloads through a TLS-terminating bridge ---------- */

/* One client context for the whole run.  Full handshakes: no session is ever
 * offered.  Resumption: every connection slot keeps the last session ticket
 * it received (new_session_cb) and offers it on its next connection. */
static SSL_CTX *g_ctx;
static int g_slot_idx = -1;

struct tls_slot { SSL_SESSION *sess; };

static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
    struct tls_slot *slot = SSL_get_ex_data(ssl, g_slot_idx);
    if (!slot) return 0;
    if (slot->sess) SSL_SESSION_free(slot->sess);
    slot->sess = sess;
    return 1; /* we keep the reference */
}

static void tls_init(int resume) {
    g_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ctx) { fprintf(stderr, "SSL_CTX_new failed\n"); exit(1); }
    int v = o.tls_version == 12 ? TLS1_2_VERSION : TLS1_3_VERSION;
    SSL_CTX_set_min_proto_version(g_ctx, v);
    SSL_CTX_set_max_proto_version(g_ctx, v);
    /* A bridge that closes without close_notify reads as an EOF, as a plain socket's. */
    SSL_CTX_set_options(g_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Whole socket reads, not header then body: fewer system calls in the client. */
    SSL_CTX_set_read_ahead(g_ctx, 1);
    if (o.ca) {
        if (SSL_CTX_load_verify_locations(g_ctx, o.ca, NULL) != 1) { fprintf(stderr, "cannot load --ca %s\n", o.ca); exit(1); }
        SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
        /* The certificate must name the address we connect to (SAN IP). */
        X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(g_ctx), g_host);
    } else {
        SSL_CTX_set_verify(g_ctx, SSL_VERIFY_NONE, NULL);
    }
    g_slot_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (resume) {
        SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(g_ctx, new_session_cb);
    } else {
        SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
    }
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* What was negotiated, as JSON members (no leading comma): version, cipher, group. */
static char g_tls_info[256] = "\"version\":null,\"cipher\":null,\"group\":null";
static pthread_mutex_t g_info_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_info_set;

static void note_tls_info(SSL *ssl) {
    if (g_info_set) return;
    pthread_mutex_lock(&g_info_lock);
    if (!g_info_set) {
        int nid = SSL_get_negotiated_group(ssl);
        const char *group = nid > 0 ? SSL_group_to_name(ssl, nid) : NULL;
        snprintf(g_tls_info, sizeof g_tls_info, "\"version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\"",
                 SSL_get_version(ssl), SSL_get_cipher_name(ssl), group ? group : "?");
        g_info_set = 1;
    }
    pthread_mutex_unlock(&g_info_lock);
}

/* The first failure, for the JSON line ("first_error"): OpenSSL's reason or errno's. */
static char g_first_error[200];
static pthread_mutex_t g_err_lock = PTHREAD_MUTEX_INITIALIZER;

static void note_error(const char *where, int ssl_err) {
    unsigned long e = ERR_peek_last_error();
    char buf[160];
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    else if (ssl_err == SSL_ERROR_SYSCALL && errno) snprintf(buf, sizeof buf, "%s", strerror(errno));
    else if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN) snprintf(buf, sizeof buf, "closed by the peer");
    else snprintf(buf, sizeof buf, "SSL error %d, %s", ssl_err, errno ? strerror(errno) : "no errno");
    ERR_clear_error();
    pthread_mutex_lock(&g_err_lock);
    if (!g_first_error[0]) {
        snprintf(g_first_error, sizeof g_first_error, "%s: %s", where, buf);
        for (char *p = g_first_error; *p; p++) if (*p == '"' || *p == '\\' || (unsigned char)*p < 32) *p = '\'';
    }
    pthread_mutex_unlock(&g_err_lock);
}

static void print_first_error(void) {
    if (g_first_error[0]) printf(",\"first_error\":\"%s\"", g_first_error);
}

struct tconn { int fd; SSL *ssl; };

/* Wait until OpenSSL's last WANT is satisfied; 0 on timeout or another error. */
static int tls_wait(struct tconn *c, int rc, long long deadline, const char *where) {
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) return wait_fd(c->fd, POLLIN, deadline) != 0;
    if (e == SSL_ERROR_WANT_WRITE) return wait_fd(c->fd, POLLOUT, deadline) != 0;
    note_error(where, e);
    return 0;
}

static void tls_close(struct tconn *c, int polite) {
    if (c->ssl) {
        if (polite) SSL_shutdown(c->ssl); /* close_notify, not waiting for the peer's */
        SSL_free(c->ssl);
    }
    if (c->fd >= 0) close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* Connect and complete the handshake before the deadline; 0 on success. */
static int tls_connect(struct tconn *c, long long deadline) {
    c->ssl = NULL;
    c->fd = connect_target();
    if (c->fd < 0) { note_error("connect", SSL_ERROR_SYSCALL); return -1; }
    c->ssl = SSL_new(g_ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    for (;;) {
        ERR_clear_error();
        int rc = SSL_do_handshake(c->ssl);
        if (rc == 1) { note_tls_info(c->ssl); return 0; }
        if (!tls_wait(c, rc, deadline, "handshake")) { tls_close(c, 0); return -1; }
    }
}

static int tls_write_all(struct tconn *c, const unsigned char *buf, size_t len, long long deadline) {
    size_t done = 0;
    while (done < len) {
        size_t n = 0;
        ERR_clear_error();
        int rc = SSL_write_ex(c->ssl, buf + done, len - done, &n);
        if (rc == 1) { done += n; continue; }
        if (!tls_wait(c, rc, deadline, "write")) return -1;
    }
    return 0;
}

static int tls_read_all(struct tconn *c, unsigned char *buf, size_t len, long long deadline) {
    size_t done = 0;
    while (done < len) {
        size_t n = 0;
        ERR_clear_error();
        int rc = SSL_read_ex(c->ssl, buf + done, len - done, &n);
        if (rc == 1) { done += n; continue; }
        if (!tls_wait(c, rc, deadline, "read")) return -1;
    }
    return 0;
}

/* Read until the peer's EOF (close_notify, FIN or reset) or the deadline;
 * bytes land in buf up to cap (more are counted, not kept).  Returns bytes
 * read; *eof says whether the end came. */
static size_t tls_read_to_eof(struct tconn *c, unsigned char *buf, size_t cap, long long deadline, int *eof) {
    unsigned char scratch[16384];
    size_t got = 0;
    *eof = 0;
    for (;;) {
        size_t n = 0;
        unsigned char *into = got < cap ? buf + got : scratch;
        size_t room = got < cap ? cap - got : sizeof scratch;
        ERR_clear_error();
        errno = 0;
        int rc = SSL_read_ex(c->ssl, into, room, &n);
        if (rc == 1) { got += n; continue; }
        int e = SSL_get_error(c->ssl, rc);
        if (e == SSL_ERROR_WANT_READ && wait_fd(c->fd, POLLIN, deadline)) continue;
        if (e == SSL_ERROR_WANT_WRITE && wait_fd(c->fd, POLLOUT, deadline)) continue;
        if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL) *eof = 1;
        else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) note_error("read to EOF", e);
        ERR_clear_error();
        return got;
    }
}

/* ---------- tls-handshake / tls-resume: W threads × C connections in flight ---------- */

enum hs_state { HS_IDLE, HS_CONNECTING, HS_HANDSHAKE, HS_WRITE, HS_READ };

struct hs_conn {
    struct tconn t;
    enum hs_state st;
    uint32_t events;
    size_t got;
    long long t0, deadline;
    struct tls_slot slot;
};

struct hs_worker {
    pthread_t th;
    int resume;
    long long done, errors, timeouts, resumed;
    uint32_t *hist; /* handshake time: connect → client's handshake done */
    long long hs_count;
};

static long long g_start, g_end;

static void hs_interest(int ep, struct hs_conn *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->t.fd, &e);
    c->events = ev;
}

static void hs_end(struct hs_conn *c, int polite) {
    tls_close(&c->t, polite); /* closing the fd also leaves the epoll set */
    c->st = HS_IDLE;
    c->events = 0;
}

/* OpenSSL wants I/O (wait for it) or failed (count it). */
static void hs_want(struct hs_worker *w, int ep, struct hs_conn *c, int rc, const char *where) {
    int e = SSL_get_error(c->t.ssl, rc);
    if (e == SSL_ERROR_WANT_READ) { hs_interest(ep, c, EPOLLIN); return; }
    if (e == SSL_ERROR_WANT_WRITE) { hs_interest(ep, c, EPOLLOUT); return; }
    note_error(where, e);
    w->errors++;
    hs_end(c, 0);
}

static const unsigned char HS_MSG[16] = "tls-hs-012345678";

static void hs_step(struct hs_worker *w, int ep, struct hs_conn *c) {
    if (c->st == HS_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->t.fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { errno = err; note_error("connect", SSL_ERROR_SYSCALL); w->errors++; hs_end(c, 0); return; }
        c->st = HS_HANDSHAKE;
    }
    int rc;
    size_t n;
    unsigned char in[64];
    if (c->st == HS_HANDSHAKE) {
        ERR_clear_error();
        errno = 0;
        rc = SSL_do_handshake(c->t.ssl);
        if (rc != 1) { hs_want(w, ep, c, rc, "handshake"); return; }
        long long lat = now_us() - c->t0;
        w->hist[lat > HIST_MAX_US ? HIST_MAX_US : lat]++;
        w->hs_count++;
        if (SSL_session_reused(c->t.ssl)) w->resumed++;
        note_tls_info(c->t.ssl);
        c->st = HS_WRITE;
    }
    if (c->st == HS_WRITE) {
        ERR_clear_error();
        rc = SSL_write_ex(c->t.ssl, HS_MSG, sizeof HS_MSG, &n);
        if (rc != 1) { hs_want(w, ep, c, rc, "write"); return; }
        c->st = HS_READ;
        c->got = 0;
    }
    /* HS_READ: the echo, after the tickets the server sends first (read on the way). */
    for (;;) {
        ERR_clear_error();
        errno = 0;
        rc = SSL_read_ex(c->t.ssl, in + c->got, sizeof HS_MSG - c->got, &n);
        if (rc != 1) { hs_want(w, ep, c, rc, "read"); return; }
        c->got += n;
        if (c->got < sizeof HS_MSG) continue;
        if (memcmp(in, HS_MSG, sizeof HS_MSG)) { note_error("echo mismatch", SSL_ERROR_SSL); w->errors++; hs_end(c, 0); return; }
        w->done++;
        hs_end(c, 1);
        return;
    }
}

static void hs_start(struct hs_worker *w, int ep, struct hs_conn *c) {
    int ip;
    c->t0 = now_us();
    c->deadline = c->t0 + OP_TIMEOUT_US;
    c->t.fd = open_socket(1, &ip);
    if (c->t.fd < 0) { note_error("connect", SSL_ERROR_SYSCALL); w->errors++; c->t.ssl = NULL; return; }
    c->t.ssl = SSL_new(g_ctx);
    SSL_set_fd(c->t.ssl, c->t.fd);
    SSL_set_connect_state(c->t.ssl);
    SSL_set_ex_data(c->t.ssl, g_slot_idx, &c->slot);
    if (w->resume && c->slot.sess) SSL_set_session(c->t.ssl, c->slot.sess);
    c->events = 0;
    if (ip) { c->st = HS_CONNECTING; hs_interest(ep, c, EPOLLOUT); return; }
    c->st = HS_HANDSHAKE;
    hs_step(w, ep, c);
}

static void *hs_thread(void *arg) {
    struct hs_worker *w = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct hs_conn *cs = calloc((size_t)o.conns, sizeof *cs);
    for (int i = 0; i < o.conns; i++) { cs[i].t.fd = -1; cs[i].st = HS_IDLE; }
    struct epoll_event evs[256];
    /* After the duration no new connection starts; the ones in flight get
     * their own 5 s deadline. */
    for (;;) {
        long long t = now_us();
        int active = 0;
        for (int i = 0; i < o.conns; i++) {
            struct hs_conn *c = &cs[i];
            if (c->st != HS_IDLE && t > c->deadline) { note_error("timeout", 0); hs_end(c, 0); w->errors++; w->timeouts++; }
            if (c->st == HS_IDLE && t < g_end) hs_start(w, ep, c);
            if (c->st != HS_IDLE) active++;
        }
        if (!active && t >= g_end) break;
        int n = epoll_wait(ep, evs, 256, 10);
        for (int k = 0; k < n; k++) hs_step(w, ep, evs[k].data.ptr);
    }
    for (int i = 0; i < o.conns; i++) if (cs[i].slot.sess) SSL_SESSION_free(cs[i].slot.sess);
    free(cs);
    close(ep);
    return NULL;
}

static int run_tls_handshakes(int resume) {
    tls_init(resume);
    struct hs_worker *ws = calloc((size_t)o.workers, sizeof *ws);
    double cpu0 = cpu_seconds();
    g_start = now_us();
    g_end = g_start + (long long)(o.duration * 1e6);
    for (int i = 0; i < o.workers; i++) {
        ws[i].resume = resume;
        ws[i].hist = calloc(HIST_MAX_US + 1, sizeof *ws[i].hist);
        pthread_create(&ws[i].th, NULL, hs_thread, &ws[i]);
    }
    long long done = 0, errors = 0, timeouts = 0, resumed = 0, hs = 0;
    uint32_t *hist = ws[0].hist;
    for (int i = 0; i < o.workers; i++) {
        pthread_join(ws[i].th, NULL);
        done += ws[i].done; errors += ws[i].errors; timeouts += ws[i].timeouts; resumed += ws[i].resumed; hs += ws[i].hs_count;
        if (i > 0) for (int b = 0; b <= HIST_MAX_US; b++) hist[b] += ws[i].hist[b];
    }
    double secs = (now_us() - g_start) / 1e6;
    printf("{\"mode\":\"%s\",\"workers\":%d,\"conns\":%d,\"seconds\":%.3f,\"handshakes\":%lld,\"conns_done\":%lld,"
           "\"hs_per_s\":%.1f,\"resumed\":%lld,\"hs_p50_us\":%d,\"hs_p99_us\":%d,\"errors\":%lld,\"timeouts\":%lld,"
           "\"client_cpu_s\":%.3f,%s",
           resume ? "tls-resume" : "tls-handshake", o.workers, o.conns, secs, hs, done, done / secs, resumed,
           hs ? pct(hist, hs, 0.50) : -1, hs ? pct(hist, hs, 0.99) : -1, errors, timeouts, cpu_seconds() - cpu0, g_tls_info);
    print_first_error();
    printf("}\n");
    return errors ? 1 : 0;
}

/* ---------- tls-pingpong: N connections over W threads ---------- */

struct tpp_conn { struct tconn t; size_t got; long long t0; };

struct tpp_worker {
    pthread_t th;
    struct tpp_conn *cs;
    int n, open, errors;
    long long counted, all;
    uint32_t *hist;
};

static long long g_measure_from;

static void *tpp_thread(void *arg) {
    struct tpp_worker *w = arg;
    size_t S = (size_t)o.size;
    unsigned char *out = malloc(S), *in = malloc(S);
    memset(out, 'p', S);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < w->n; i++) {
        struct tpp_conn *c = &w->cs[i];
        if (c->t.fd < 0) continue;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->t.fd, &ev);
        c->t0 = now_us();
        if (tls_write_all(&c->t, out, S, c->t0 + OP_TIMEOUT_US) < 0) { w->errors++; tls_close(&c->t, 0); w->open--; }
    }
    struct epoll_event evs[256];
    long long last_progress = now_us();
    while (w->open > 0) {
        long long t = now_us();
        if (t >= g_end) break;
        if (t - last_progress > OP_TIMEOUT_US) { note_error("stalled", 0); w->errors++; break; }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct tpp_conn *c = evs[k].data.ptr;
            if (c->t.fd < 0) continue;
            for (;;) {
                size_t r = 0;
                ERR_clear_error();
                errno = 0;
                int rc = SSL_read_ex(c->t.ssl, in, S - c->got, &r);
                if (rc != 1) {
                    int e = SSL_get_error(c->t.ssl, rc);
                    if (e == SSL_ERROR_WANT_READ) break;
                    if (e == SSL_ERROR_WANT_WRITE && wait_fd(c->t.fd, POLLOUT, now_us() + OP_TIMEOUT_US)) continue;
                    note_error("read", e);
                    w->errors++; tls_close(&c->t, 0); w->open--;
                    break;
                }
                c->got += r;
                if (c->got < S) continue;
                long long t1 = now_us();
                last_progress = t1;
                w->all++;
                if (c->t0 >= g_measure_from) {
                    long long lat = t1 - c->t0;
                    w->hist[lat > HIST_MAX_US ? HIST_MAX_US : lat]++;
                    w->counted++;
                }
                if (t1 >= g_end) break;
                c->got = 0;
                c->t0 = t1;
                if (tls_write_all(&c->t, out, S, t1 + OP_TIMEOUT_US) < 0) { w->errors++; tls_close(&c->t, 0); w->open--; break; }
                /* Only go on reading if OpenSSL already holds bytes: else the reply is not here yet. */
                if (!SSL_has_pending(c->t.ssl)) break;
            }
        }
    }
    close(ep);
    free(out);
    free(in);
    return NULL;
}

static int run_tls_pingpong(void) {
    tls_init(0);
    int W = o.workers > o.conns ? o.conns : o.workers;
    struct tpp_conn *cs = calloc((size_t)o.conns, sizeof *cs);
    int errors = 0;
    /* Every connection opened (handshake done) before the clock starts. */
    for (int i = 0; i < o.conns; i++)
        if (tls_connect(&cs[i].t, now_us() + OP_TIMEOUT_US) < 0) errors++;
    struct tpp_worker *ws = calloc((size_t)W, sizeof *ws);
    for (int i = 0, at = 0; i < W; i++) {
        ws[i].n = o.conns / W + (i < o.conns % W);
        ws[i].cs = cs + at;
        at += ws[i].n;
        for (int k = 0; k < ws[i].n; k++) ws[i].open += ws[i].cs[k].t.fd >= 0;
        ws[i].hist = calloc(HIST_MAX_US + 1, sizeof *ws[i].hist);
    }
    double cpu0 = cpu_seconds();
    long long start = now_us(), warm = (long long)(o.duration * 1e6 * 0.1);
    if (warm > 1000000) warm = 1000000;
    g_measure_from = start + warm;
    g_end = start + (long long)(o.duration * 1e6);
    for (int i = 0; i < W; i++) pthread_create(&ws[i].th, NULL, tpp_thread, &ws[i]);
    long long counted = 0, all = 0;
    uint32_t *hist = ws[0].hist;
    for (int i = 0; i < W; i++) {
        pthread_join(ws[i].th, NULL);
        counted += ws[i].counted; all += ws[i].all; errors += ws[i].errors;
        if (i > 0) for (int b = 0; b <= HIST_MAX_US; b++) hist[b] += ws[i].hist[b];
    }
    double secs = (now_us() - g_measure_from) / 1e6;
    if (secs <= 0) secs = 1e-6;
    printf("{\"mode\":\"tls-pingpong\",\"conns\":%d,\"workers\":%d,\"size\":%ld,\"seconds\":%.3f,\"all_round_trips\":%lld,\"round_trips\":%lld,"
           "\"rt_per_s\":%.1f,\"p50_us\":%d,\"p99_us\":%d,\"errors\":%d,\"client_cpu_s\":%.3f,%s",
           o.conns, W, o.size, secs, all, counted, counted / secs,
           counted ? pct(hist, counted, 0.50) : -1, counted ? pct(hist, counted, 0.99) : -1, errors, cpu_seconds() - cpu0, g_tls_info);
    print_first_error();
    printf("}\n");
    for (int i = 0; i < o.conns; i++) tls_close(&cs[i].t, 1);
    return errors ? 1 : 0;
}

/* ---------- tls-bulk-up / tls-bulk-down ---------- */

static int run_tls_bulk(int up) {
    tls_init(0);
    const char *mode = up ? "tls-bulk-up" : "tls-bulk-down";
    unsigned char *buf = malloc(CHUNK);
    memset(buf, 'u', CHUNK);
    struct tconn c;
    if (tls_connect(&c, now_us() + OP_TIMEOUT_US) < 0) {
        printf("{\"mode\":\"%s\",\"errors\":1", mode);
        print_first_error();
        printf("}\n");
        return 1;
    }
    double cpu0 = cpu_seconds();
    long long start = now_us(), end = start + (long long)(o.duration * 1e6), bytes = 0;
    int errors = 0, eof = 0;
    while (now_us() < end) {
        size_t n = 0;
        ERR_clear_error();
        errno = 0;
        int rc = up ? SSL_write_ex(c.ssl, buf, CHUNK, &n) : SSL_read_ex(c.ssl, buf, CHUNK, &n);
        if (rc == 1) { bytes += (long long)n; continue; }
        int e = SSL_get_error(c.ssl, rc);
        if (e == SSL_ERROR_WANT_READ) { wait_fd(c.fd, POLLIN, end); continue; }
        if (e == SSL_ERROR_WANT_WRITE) { wait_fd(c.fd, POLLOUT, end); continue; }
        note_error(up ? "write" : "read", e);
        errors++;
        break;
    }
    if (up && !errors) {
        /* Count the time until the sink has read everything: it closes at our
         * EOF (close_notify and FIN), and the bridge passes that close back. */
        SSL_shutdown(c.ssl);
        shutdown(c.fd, SHUT_WR);
        tls_read_to_eof(&c, buf, CHUNK, now_us() + OP_TIMEOUT_US, &eof);
    }
    double secs = (now_us() - start) / 1e6;
    printf("{\"mode\":\"%s\",\"seconds\":%.3f,\"bytes\":%lld,\"mb_per_s\":%.2f,\"eof\":%s,\"errors\":%d,\"client_cpu_s\":%.3f,%s",
           mode, secs, bytes, bytes / secs / 1e6, eof ? "true" : "false", errors, cpu_seconds() - cpu0, g_tls_info);
    print_first_error();
    printf("}\n");
    tls_close(&c, 0);
    return errors ? 1 : 0;
}

/* ---------- tls-idle: hold N TLS connections, check they still work ---------- */

static int run_tls_idle(void) {
    tls_init(0);
    struct tconn *cs = calloc((size_t)o.conns, sizeof *cs);
    int open_failures = 0;
    long long t0 = now_us(), open_deadline = t0 + 90000000LL;
    const unsigned char msg[16] = "idle-check-01234";
    unsigned char in[16];
    for (int i = 0; i < o.conns; i++) {
        cs[i].fd = -1;
        long long dl = now_us() + OP_TIMEOUT_US;
        if (now_us() >= open_deadline || tls_connect(&cs[i], dl) < 0 ||
            tls_write_all(&cs[i], msg, 16, dl) < 0 || tls_read_all(&cs[i], in, 16, dl) < 0 || memcmp(in, msg, 16)) {
            tls_close(&cs[i], 0);
            open_failures++;
        }
    }
    printf("{\"mode\":\"tls-idle\",\"phase\":\"ready\",\"conns\":%d,\"open_failures\":%d,\"open_seconds\":%.3f,%s}\n",
           o.conns, open_failures, (now_us() - t0) / 1e6, g_tls_info);
    fflush(stdout);

    hold_until_released(o.hold_max);

    /* All requests first, then all replies under one shared deadline. */
    int failures = 0;
    long long dl = now_us() + OP_TIMEOUT_US;
    for (int i = 0; i < o.conns; i++)
        if (cs[i].fd >= 0 && tls_write_all(&cs[i], msg, 16, dl) < 0) { tls_close(&cs[i], 0); failures++; }
    dl = now_us() + OP_TIMEOUT_US;
    for (int i = 0; i < o.conns; i++) {
        if (cs[i].fd < 0) continue;
        if (tls_read_all(&cs[i], in, 16, dl) < 0 || memcmp(in, msg, 16)) failures++;
        tls_close(&cs[i], 1);
    }
    printf("{\"mode\":\"tls-idle\",\"phase\":\"done\",\"conns\":%d,\"open_failures\":%d,\"failures\":%d", o.conns, open_failures, failures);
    print_first_error();
    printf("}\n");
    return open_failures || failures ? 1 : 0;
}

/* ---------- tls-halfclose ---------- */

/* One trial: request, then close_notify and our FIN right away, so the echo
 * is still in flight when the bridge sees the half-close. */
static int tls_halfclose_once(const unsigned char *out, unsigned char *in, size_t S, size_t *received) {
    *received = 0;
    struct tconn c;
    long long dl = now_us() + OP_TIMEOUT_US;
    if (tls_connect(&c, dl) < 0) return 0;
    int sent_ok = tls_write_all(&c, out, S, dl) == 0;
    ERR_clear_error();
    SSL_shutdown(c.ssl);
    shutdown(c.fd, SHUT_WR);
    int eof;
    size_t got = tls_read_to_eof(&c, in, S + 1, dl, &eof);
    tls_close(&c, 0);
    *received = got;
    return sent_ok && got == S && memcmp(out, in, S) == 0;
}

static int run_tls_halfclose(void) {
    tls_init(0);
    size_t S = (size_t)o.size;
    unsigned char *out = malloc(S), *in = malloc(S + 1);
    gen_stream(0, out, S);
    int failures = 0;
    size_t worst = S, received;
    for (int t = 0; t < o.trials; t++) {
        if (!tls_halfclose_once(out, in, S, &received)) failures++;
        if (received < worst) worst = received;
    }
    printf("{\"mode\":\"tls-halfclose\",\"size\":%zu,\"trials\":%d,\"failures\":%d,\"least_received\":%zu,\"ok\":%s,%s",
           S, o.trials, failures, worst, failures ? "false" : "true", g_tls_info);
    print_first_error();
    printf("}\n");
    return failures ? 1 : 0;
}

/* ---------- tls-verify: N pseudo-random bytes through echo over TLS, compared ---------- */

static int run_tls_verify(void) {
    tls_init(0);
    unsigned char *out = malloc(CHUNK), *in = malloc(CHUNK), *want = malloc(CHUNK);
    struct tconn c;
    if (tls_connect(&c, now_us() + OP_TIMEOUT_US) < 0) {
        printf("{\"mode\":\"tls-verify\",\"ok\":false");
        print_first_error();
        printf("}\n");
        return 1;
    }
    long long N = o.bytes, sent = 0, got = 0, mismatched = 0;
    size_t out_len = 0, out_off = 0;
    long long start = now_us(), deadline = start + 30000000LL + N / 10;
    int eof = 0, write_wants = POLLOUT, read_wants = POLLIN;
    while (got < N && !eof && now_us() < deadline) {
        /* Write while OpenSSL can, then read all it has; poll only for what they wait on. */
        while (sent < N) {
            if (out_off == out_len) {
                out_len = (size_t)(N - sent < CHUNK ? N - sent : CHUNK);
                gen_stream((uint64_t)sent, out, out_len);
                out_off = 0;
            }
            size_t n = 0;
            ERR_clear_error();
            int rc = SSL_write_ex(c.ssl, out + out_off, out_len - out_off, &n);
            if (rc == 1) {
                out_off += n;
                if (out_off == out_len) sent += (long long)out_len;
                continue;
            }
            int e = SSL_get_error(c.ssl, rc);
            if (e == SSL_ERROR_WANT_WRITE) write_wants = POLLOUT;
            else if (e == SSL_ERROR_WANT_READ) write_wants = POLLIN;
            else { note_error("write", e); eof = 1; }
            break;
        }
        for (;;) {
            size_t n = 0;
            ERR_clear_error();
            errno = 0;
            int rc = SSL_read_ex(c.ssl, in, CHUNK, &n);
            if (rc == 1) {
                long long take = (long long)n;
                if (got + take > N) { mismatched += got + take - N; take = N - got; }
                gen_stream((uint64_t)got, want, (size_t)take);
                for (long long i = 0; i < take; i++) mismatched += in[i] != want[i];
                got += (long long)n;
                continue;
            }
            int e = SSL_get_error(c.ssl, rc);
            if (e == SSL_ERROR_WANT_READ) read_wants = POLLIN;
            else if (e == SSL_ERROR_WANT_WRITE) read_wants = POLLOUT;
            else { if (e != SSL_ERROR_ZERO_RETURN) note_error("read", e); eof = 1; }
            break;
        }
        if (got >= N || eof) break;
        struct pollfd p = { .fd = c.fd, .events = (short)(read_wants | (sent < N ? write_wants : 0)) };
        poll(&p, 1, 100);
    }
    double secs = (now_us() - start) / 1e6;
    long long missing = got < N ? N - got : 0;
    int ok = mismatched == 0 && missing == 0;
    printf("{\"mode\":\"tls-verify\",\"bytes\":%lld,\"received\":%lld,\"mismatched\":%lld,\"missing\":%lld,"
           "\"seconds\":%.3f,\"mb_per_s\":%.2f,\"ok\":%s,%s",
           N, got, mismatched, missing, secs, got / secs / 1e6, ok ? "true" : "false", g_tls_info);
    print_first_error();
    printf("}\n");
    tls_close(&c, 1);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    resolve_target();
    if (!strcmp(o.mode, "pingpong")) return run_pingpong();
    if (!strcmp(o.mode, "reqresp")) return run_reqresp();
    if (!strcmp(o.mode, "bulk-up")) return run_bulk_up();
    if (!strcmp(o.mode, "bulk-down")) return run_bulk_down();
    if (!strcmp(o.mode, "churn")) return run_churn();
    if (!strcmp(o.mode, "idle")) return run_idle();
    if (!strcmp(o.mode, "halfclose")) return run_halfclose();
    if (!strcmp(o.mode, "verify")) return run_verify();
    if (!strcmp(o.mode, "tls-handshake")) return run_tls_handshakes(0);
    if (!strcmp(o.mode, "tls-resume")) return run_tls_handshakes(1);
    if (!strcmp(o.mode, "tls-pingpong")) return run_tls_pingpong();
    if (!strcmp(o.mode, "tls-bulk-up")) return run_tls_bulk(1);
    if (!strcmp(o.mode, "tls-bulk-down")) return run_tls_bulk(0);
    if (!strcmp(o.mode, "tls-idle")) return run_tls_idle();
    if (!strcmp(o.mode, "tls-halfclose")) return run_tls_halfclose();
    if (!strcmp(o.mode, "tls-verify")) return run_tls_verify();
    usage();
    return 64;
}
