/*
 * bench/server.c - the test server behind every bridge in the benchmark.
 * One thread, epoll, non-blocking sockets: it must never be the bottleneck,
 * so it does no allocation per byte and no logging.
 *
 *   server MODE PATH         MODE = echo | sink | source, on a UNIX socket
 *   server MODE HOST:PORT    the same on TCP (the mirror section: UNIX
 *                            clients -> bridge -> this), e.g. 127.0.0.1:4000
 *
 * echo:   echo every byte back.  On EOF from the peer it flushes what is
 *         pending, then shuts down its write side (half-close aware), then
 *         closes.
 * sink:   read and discard; close at EOF.
 * source: write an endless stream until the peer closes or resets.
 *
 * A stale socket file at PATH is removed first.  SIGTERM/SIGINT exit cleanly
 * and unlink PATH.  On TCP the listener has SO_REUSEADDR (restarted in another
 * mode on the same port while old connections sit in TIME_WAIT) and accepted
 * sockets get TCP_NODELAY, as the bridges set it on theirs: small echoes must
 * not wait for Nagle.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)
#define MAX_EVENTS 256

enum mode { MODE_ECHO, MODE_SINK, MODE_SOURCE };

/* One accepted client.  Only echo uses buf/len/off: bytes read but not yet
 * written back.  We stop reading while anything is pending, which gives
 * natural back-pressure instead of unbounded buffering. */
struct conn {
    int fd;
    int read_eof;
    size_t len, off;
    unsigned char *buf;
};

static enum mode g_mode;
static int g_epfd;
static volatile sig_atomic_t g_stop;
/* The UNIX socket's path, removed at exit; NULL when listening on TCP. */
static const char *g_path;
/* Shared scratch buffers: sink reads into one, source writes from the other. */
static unsigned char g_scratch[BUF_SIZE];
static unsigned char g_pattern[BUF_SIZE];

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void set_interest(struct conn *c, unsigned events) {
    struct epoll_event ev = { .events = events, .data.ptr = c };
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct conn *c) {
    close(c->fd); /* also removes it from the epoll set */
    free(c->buf);
    free(c);
}

/* Write pending echo bytes.  Returns -1 when the connection is gone. */
static int echo_flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n > 0) { c->off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        return -1;
    }
    c->off = c->len = 0;
    return 0;
}

static void handle_echo(struct conn *c) {
    for (int rounds = 0; rounds < 64; rounds++) {
        if (echo_flush(c) < 0) { conn_close(c); return; }
        if (c->len > 0) { set_interest(c, EPOLLOUT); return; }
        if (c->read_eof) {
            /* Everything echoed: pass the half-close on, then we are done. */
            shutdown(c->fd, SHUT_WR);
            conn_close(c);
            return;
        }
        ssize_t n = recv(c->fd, c->buf, BUF_SIZE, 0);
        if (n > 0) { c->len = (size_t)n; c->off = 0; continue; }
        if (n == 0) { c->read_eof = 1; continue; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) { set_interest(c, EPOLLIN); return; }
        conn_close(c);
        return;
    }
    /* Busy connection: yield to the others, come back via level-triggered epoll. */
    set_interest(c, c->len > 0 ? EPOLLOUT : EPOLLIN);
}

static void handle_sink(struct conn *c) {
    for (int rounds = 0; rounds < 64; rounds++) {
        ssize_t n = recv(c->fd, g_scratch, BUF_SIZE, 0);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        conn_close(c); /* EOF or error */
        return;
    }
}

static void handle_source(struct conn *c, unsigned events) {
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        /* Anything the peer sends is discarded; EOF or error ends the stream. */
        ssize_t n = recv(c->fd, g_scratch, BUF_SIZE, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            conn_close(c);
            return;
        }
    }
    for (int rounds = 0; rounds < 64; rounds++) {
        ssize_t n = send(c->fd, g_pattern, BUF_SIZE, MSG_NOSIGNAL);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        conn_close(c);
        return;
    }
}

static void accept_all(int lfd) {
    for (int i = 0; i < 1024; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or EMFILE: retried on the next event */
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); return; }
        c->fd = fd;
        if (!g_path) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        unsigned events = EPOLLIN;
        if (g_mode == MODE_ECHO) {
            c->buf = malloc(BUF_SIZE);
            if (!c->buf) { close(fd); free(c); return; }
        } else if (g_mode == MODE_SOURCE) {
            events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
        }
        struct epoll_event ev = { .events = events, .data.ptr = c };
        if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { conn_close(c); continue; }
    }
}

static int listen_unix(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) { fprintf(stderr, "path too long\n"); exit(1); }
    strcpy(sa.sun_path, path);
    unlink(path); /* stale socket from an earlier run */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    /* Bridges that drop privileges (nginx workers) must still connect. */
    chmod(path, 0777);
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

/* HOST:PORT (the last colon splits; an IPv6 host without brackets works). */
static int listen_tcp(const char *addr) {
    char host[256];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    if (!colon) { fprintf(stderr, "not HOST:PORT: %s\n", addr); exit(64); }
    *colon = 0;
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV }, *res;
    int e = getaddrinfo(host, colon + 1, &hints, &res);
    if (e != 0) { fprintf(stderr, "cannot resolve %s: %s\n", addr, gai_strerror(e)); exit(1); }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) die("bind");
    freeaddrinfo(res);
    /* The same backlog as the UNIX listener (the kernel caps it at somaxconn). */
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s echo|sink|source PATH|HOST:PORT\n", argv[0]);
        return 64;
    }
    if (!strcmp(argv[1], "echo")) g_mode = MODE_ECHO;
    else if (!strcmp(argv[1], "sink")) g_mode = MODE_SINK;
    else if (!strcmp(argv[1], "source")) g_mode = MODE_SOURCE;
    else { fprintf(stderr, "unknown mode %s\n", argv[1]); return 64; }
    /* The benchmark's rule for addresses: a path starts with '/'. */
    g_path = argv[2][0] == '/' ? argv[2] : NULL;

    raise_fd_limit();
    for (size_t i = 0; i < BUF_SIZE; i++) g_pattern[i] = (unsigned char)(i * 131u + 7u);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = g_path ? listen_unix(g_path) : listen_tcp(argv[2]);
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_epfd < 0) die("epoll_create1");
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl");

    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        int n = epoll_wait(g_epfd, evs, MAX_EVENTS, 1000);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { accept_all(lfd); continue; }
            switch (g_mode) {
            case MODE_ECHO: handle_echo(c); break;
            case MODE_SINK: handle_sink(c); break;
            case MODE_SOURCE: handle_source(c, evs[i].events); break;
            }
        }
    }
    if (g_path) unlink(g_path);
    return 0;
}
