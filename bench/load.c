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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define OP_TIMEOUT_US 5000000LL   /* one connect or echo round may take this long */
#define HIST_MAX_US 2000000       /* latency histogram: 1 us buckets up to 2 s */

/* ---------- options and small helpers ---------- */

struct opts {
    const char *mode, *target;
    int conns, workers, trials;
    long size;
    double duration, hold_max;
    long long bytes;
};

static struct opts o = { .conns = 1, .workers = 16, .trials = 10, .size = 64, .duration = 5,
                         .hold_max = 300, .bytes = 256LL << 20 };
static volatile sig_atomic_t g_wakeup;

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void usage(void) {
    fprintf(stderr, "usage: load pingpong|reqresp|bulk-up|bulk-down|churn|idle|halfclose|verify "
                    "--target HOST:PORT|PATH [--conns N] [--size S] [--duration D] "
                    "[--workers W] [--trials T] [--bytes N] [--hold-max S]\n");
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
        else usage();
    }
    if (!o.target || o.conns < 1 || o.workers < 1 || o.trials < 1 || o.size < 1 || o.duration <= 0) usage();
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---------- target address ---------- */

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

    /* Hold until the driver closes our stdin or sends SIGUSR1 (bounded). */
    struct sigaction sa = { .sa_handler = on_usr1 };
    sigaction(SIGUSR1, &sa, NULL);
    long long hold_end = now_us() + (long long)(o.hold_max * 1e6);
    char junk[256];
    while (!g_wakeup && now_us() < hold_end) {
        struct pollfd p = { .fd = 0, .events = POLLIN };
        if (poll(&p, 1, 200) > 0 && read(0, junk, sizeof junk) <= 0) break;
    }

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
    usage();
    return 64;
}
