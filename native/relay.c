// sockbridge's native relay: moves the bytes of plain (non-TLS) sessions.
//
// TypeScript decides, C moves bytes. JavaScript tells this file which sockets
// to listen on, which accepted client to pair with which connected target and
// with what timeouts, and when to close everything (drain, marked DOWN). This
// file does the system calls: accept4(2) on the listening sockets (in Node's
// own event loop, so that JavaScript decides about each client at once, with
// no hand-over between threads), connect(2) to the target when asked, and,
// per session, the relay loop in its threads. These report back in batches
// through one thread-safe function: a session ended (reason, errno, bytes),
// a session to retry (the target reset before its first byte; the client's
// bytes so far come back with it), a session handed back for a restart (its
// buffers emptied, its fds open, for systemd's fd store: src/handover.ts).
//
// Shape, after systemd's socket-proxyd.c: one struct per connection, one
// function per step. A few threads, each with its own epoll set (level-
// triggered, the interest of each fd derived from the buffer state, changed
// only when that state changes) and its own read buffer: a read goes into the
// thread's buffer and straight out to the other side; only what the other
// side cannot take right now is copied into a per-direction pending buffer,
// and while one is pending the source is not read (backpressure). EOF on one
// side becomes shutdown(SHUT_WR) on the other; a session is done when both
// directions are. Each thread owns its sessions: other threads (the
// JavaScript one) talk to it only through its command queue and eventfd.

#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
/* Only uv_poll_t and uv_timer_t, on the loop napi_get_uv_event_loop() gives:
   libuv keeps its ABI across 1.x, which every Node from 18 to 26 uses. */
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (64 * 1024)
/* The same limit as the TypeScript relay: a longer request is not retried. */
#define REPLAY_LIMIT (64 * 1024)
#define MAX_THREADS 64
#define MAX_LISTENERS 16
#define EVENTS_PER_WAIT 64
/* Accepts per readiness callback, so that one busy listener cannot hold the event loop. */
#define ACCEPT_BATCH 16
/* After EMFILE and friends: stop accepting for a while instead of spinning
   on a listening socket that stays readable. */
#define ACCEPT_PAUSE_MS 100
#define KEEPALIVE_IDLE_S 60
/* The most fds one message may carry (the kernel's SCM_MAX_FD). */
#define FDS_PER_MESSAGE 253
/* Messages per bundle: their buffers stay well inside a socket's default send buffer. */
#define BUNDLE_MESSAGES 32

/* Close reasons, in the order of CLOSE_REASONS in src/native-relay.ts. */
enum reason { R_DONE, R_CLIENT_TIMEOUT, R_SERVER_TIMEOUT, R_CLIENT_ERROR, R_SERVER_ERROR, R_MARKED_DOWN, R_SHUTDOWN };
/* Event kinds, as src/native-relay.ts reads them. */
enum event_kind { EV_ACCEPT = 1, EV_ACCEPT_ERROR = 2, EV_END = 3, EV_RETRY = 4, EV_HANDED = 5, EV_HANDOVER_DONE = 6 };
/* (EV_ACCEPT and EV_ACCEPT_ERROR come from the accept callback in the event loop, the others from the threads.) */
/* What an epoll entry points at. */
enum pollable_kind { P_SIDE, P_WAKEUP };

struct conn;
struct thread;

/* One socket of a session. */
struct side {
  enum pollable_kind kind; /* P_SIDE; first, as in every pollable */
  int fd;
  uint32_t interest;       /* what epoll watches for; meaningful while registered */
  bool registered;
  bool hup;                /* EPOLLHUP seen: reads never block now, and epoll would report it forever */
  struct conn *conn;
};

/* Bytes read from one side that the other could not take yet. */
struct pending {
  char *data;
  size_t len, off;
};

/* One direction: up is client → target, down is target → client. */
struct direction {
  struct pending pending;
  bool eof;  /* the source said EOF */
  bool shut; /* and the destination was shut down for writing */
};

struct conn {
  struct side client, server;
  struct direction up, down;
  /* The client's bytes until the target's first byte, for a retry. */
  char *replay;
  size_t replay_len;
  bool replaying;
  bool client_spoke_last; /* who owes the next byte, for the timeout's name */
  bool closed;            /* ended: only waits to be freed at the end of the loop turn */
  bool handing;           /* a restart takes it: not read any more, handed back once its buffers are empty */
  uint32_t id;
  uint32_t client_timeout, server_timeout; /* ms, 0 = none */
  int64_t last_active;
  uint64_t bytes_in, bytes_out;
  struct conn *prev, *next; /* the thread's sessions */
};

/* A listening socket, polled by Node's event loop (only the JavaScript thread touches it). */
struct listener {
  uv_poll_t poll;
  uv_timer_t pause; /* resumes accepting after EMFILE and friends */
  int fd;
  int index;
  bool used;
};

enum command_kind { C_START, C_CLOSE_ALL, C_PING, C_STOP, C_HANDOVER };

struct command {
  enum command_kind kind;
  struct conn *conn;  /* C_START */
  int arg;            /* C_CLOSE_ALL: the reason; C_PING: its number; C_HANDOVER: the grace in ms */
  uint32_t *ids;      /* C_CLOSE_ALL: only these sessions (sorted; owned), or all when NULL */
  size_t nids;
  struct command *next;
};

struct thread {
  pthread_t tid;
  int epfd;
  enum pollable_kind wakeup_kind; /* P_WAKEUP: the eventfd's epoll entry points here */
  int wakeup_fd;
  pthread_mutex_t lock;
  struct command *head, *tail;
  struct conn *conns;
  struct conn *dead;  /* ended this turn; freed after the turn's events */
  char *readbuf;
  int64_t now;
  uint32_t sweep_ms;  /* idle sweep interval, 0 while no session has a timeout */
  int64_t next_sweep;
  bool stopping;
  bool handing_over;  /* C_HANDOVER ran: sessions still emptying their buffers */
  int64_t handover_deadline;
  int index;
  atomic_int_fast64_t active;
  atomic_uint_fast64_t bytes_in, bytes_out;
  atomic_int answered; /* the last C_PING this thread ran (see js_alive) */
};

/* A message for JavaScript. */
struct event {
  enum event_kind kind;
  int a, b, c;        /* END: reason, errno; RETRY: fd, errno, client ended; HANDED: client fd, server fd, directions done;
                         HANDOVER_DONE: thread, sessions closed */
  uint32_t id;
  uint64_t bytes_in, bytes_out;
  char *data;         /* RETRY: the replay bytes (owned) */
  size_t len;
  struct event *next;
};

static struct {
  int nthreads;
  struct thread threads[MAX_THREADS];
  struct listener listeners[MAX_LISTENERS];
  int nlisteners;  /* slots are not reused: listeners are opened once, at start */
  unsigned cursor; /* where the next least-loaded search starts */
  int ping;        /* the last C_PING sent */
  atomic_int handover_budget; /* sessions the fd store can still take (C_HANDOVER) */
  napi_threadsafe_function tsfn;
  /* For the accept callbacks, which run in Node's event loop: */
  napi_env env;
  napi_ref on_event;       /* the JavaScript handler */
  napi_ref resource;       /* the object the callback scope is opened for */
  napi_async_context async;
  uv_loop_t *loop;
  pthread_mutex_t events_lock;
  struct event *events_head, *events_tail;
  bool running;
} relay = { .events_lock = PTHREAD_MUTEX_INITIALIZER };

/* ---- small helpers ---------------------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void push_event(struct event *ev) {
  pthread_mutex_lock(&relay.events_lock);
  bool was_empty = relay.events_head == NULL;
  if (relay.events_tail) relay.events_tail->next = ev;
  else relay.events_head = ev;
  relay.events_tail = ev;
  pthread_mutex_unlock(&relay.events_lock);
  /* One call per batch: the JavaScript side takes the whole queue each time. */
  if (was_empty) napi_call_threadsafe_function(relay.tsfn, NULL, napi_tsfn_nonblocking);
}

static struct event *new_event(enum event_kind kind) {
  struct event *ev = calloc(1, sizeof *ev);
  if (ev) ev->kind = kind;
  return ev;
}

static void send_command(struct thread *t, struct command *cmd) {
  pthread_mutex_lock(&t->lock);
  bool was_empty = t->head == NULL;
  if (t->tail) t->tail->next = cmd;
  else t->head = cmd;
  t->tail = cmd;
  pthread_mutex_unlock(&t->lock);
  if (was_empty) {
    uint64_t one = 1;
    ssize_t unused = write(t->wakeup_fd, &one, sizeof one);
    (void)unused; /* an eventfd write fails only on overflow, when the thread is awake anyway */
  }
}

/* ---- one session's steps -------------------------------------------------------- */

static void set_interest(struct thread *t, struct side *s, uint32_t want) {
  if (s->hup) {
    /* Level-triggered EPOLLHUP cannot be masked: leave the set, and let the
       other side's events drive this one (its reads never block now). */
    if (s->registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    s->registered = false;
    return;
  }
  if (s->registered && s->interest == want) return;
  struct epoll_event ev = { .events = want, .data.ptr = s };
  epoll_ctl(t->epfd, s->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev);
  s->registered = true;
  s->interest = want;
}

/* Read a side while its direction has nothing pending; write a side while it has. */
static void update_interest(struct thread *t, struct conn *c) {
  bool reads = !c->handing;
  set_interest(t, &c->client, (reads && !c->up.eof && !c->up.pending.len ? EPOLLIN : 0) | (c->down.pending.len ? EPOLLOUT : 0));
  set_interest(t, &c->server, (reads && !c->down.eof && !c->down.pending.len ? EPOLLIN : 0) | (c->up.pending.len ? EPOLLOUT : 0));
}

static void unlink_conn(struct thread *t, struct conn *c) {
  if (c->prev) c->prev->next = c->next;
  else t->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = NULL;
  c->next = t->dead; /* freed at the end of this turn: events already fetched may point at it */
  t->dead = c;
  c->closed = true;
  atomic_fetch_sub_explicit(&t->active, 1, memory_order_relaxed);
}

static void free_conn(struct conn *c) {
  free(c->up.pending.data);
  free(c->down.pending.data);
  free(c->replay);
  free(c);
}

static void conn_end(struct thread *t, struct conn *c, enum reason reason, int err) {
  if (c->closed) return;
  close(c->client.fd);
  close(c->server.fd);
  unlink_conn(t, c);
  struct event *ev = new_event(EV_END);
  if (!ev) return; /* out of memory: the session is gone, only its log line is lost */
  ev->id = c->id;
  ev->a = (int)reason;
  ev->b = err;
  ev->bytes_in = c->bytes_in;
  ev->bytes_out = c->bytes_out;
  push_event(ev);
}

/* The target reset before answering: give the client and its bytes back to JavaScript. */
static void conn_retry(struct thread *t, struct conn *c, int err) {
  struct event *ev = new_event(EV_RETRY);
  if (!ev) return conn_end(t, c, R_SERVER_ERROR, err);
  close(c->server.fd);
  if (c->client.registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->client.fd, NULL);
  unlink_conn(t, c);
  ev->id = c->id;
  ev->a = c->client.fd;
  ev->b = err;
  ev->c = c->up.eof;
  ev->bytes_in = c->bytes_in;
  ev->bytes_out = c->bytes_out;
  ev->data = c->replay;
  ev->len = c->replay_len;
  c->replay = NULL;
  push_event(ev);
}

static void side_failed(struct thread *t, struct conn *c, struct side *s, int err) {
  bool server = s == &c->server;
  if (server && c->replaying && (err == ECONNRESET || err == EPIPE)) return conn_retry(t, c, err);
  conn_end(t, c, server ? R_SERVER_ERROR : R_CLIENT_ERROR, err);
}

static void stop_replay(struct conn *c) {
  c->replaying = false;
  free(c->replay);
  c->replay = NULL;
  c->replay_len = 0;
}

/* Bookkeeping for n bytes read from side s: counters, activity, the replay copy. */
static void got(struct thread *t, struct conn *c, struct side *s, const char *data, size_t n) {
  c->last_active = t->now;
  if (s == &c->server) {
    c->client_spoke_last = false;
    if (c->replaying) stop_replay(c); /* it answered: the request can no longer be sent again */
    return;
  }
  c->client_spoke_last = true;
  c->bytes_in += n;
  atomic_fetch_add_explicit(&t->bytes_in, n, memory_order_relaxed);
  if (!c->replaying) return;
  char *grown = c->replay_len + n <= REPLAY_LIMIT ? realloc(c->replay, c->replay_len + n) : NULL;
  if (!grown) return stop_replay(c);
  memcpy(grown + c->replay_len, data, n);
  c->replay = grown;
  c->replay_len += n;
}

/* Write to side s; returns the bytes taken (0 when full), or -1 after ending the session. */
static ssize_t write_side(struct thread *t, struct conn *c, struct side *s, const char *data, size_t n) {
  ssize_t w;
  do w = send(s->fd, data, n, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    side_failed(t, c, s, errno);
    return -1;
  }
  if (s == &c->client) {
    c->bytes_out += (uint64_t)w;
    atomic_fetch_add_explicit(&t->bytes_out, (uint64_t)w, memory_order_relaxed);
  }
  return w;
}

/* Send what waits for dst. Returns false if the session ended. */
static bool flush(struct thread *t, struct conn *c, struct side *dst, struct pending *p) {
  while (p->off < p->len) {
    ssize_t w = write_side(t, c, dst, p->data + p->off, p->len - p->off);
    if (w < 0) return false;
    if (w == 0) return true;
    p->off += (size_t)w;
  }
  free(p->data);
  *p = (struct pending){ 0 };
  return true;
}

/* Keep what dst did not take; the source is not read until it is sent. */
static bool keep(struct thread *t, struct conn *c, struct pending *p, const char *data, size_t n) {
  p->data = malloc(n);
  if (!p->data) {
    conn_end(t, c, c->client_spoke_last ? R_SERVER_ERROR : R_CLIENT_ERROR, ENOMEM);
    return false;
  }
  memcpy(p->data, data, n);
  p->len = n;
  p->off = 0;
  return true;
}

/* One direction: flush what is pending, then read src and write dst until
   either would block. Returns false if the session ended. */
static bool move(struct thread *t, struct conn *c, struct side *src, struct side *dst, struct direction *d) {
  if (d->pending.len && !flush(t, c, dst, &d->pending)) return false;
  while (!d->eof && !d->pending.len && !c->handing) {
    ssize_t n;
    do n = recv(src->fd, t->readbuf, READ_SIZE, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      side_failed(t, c, src, errno);
      return false;
    }
    if (n == 0) {
      d->eof = true;
      if (src == &c->server && c->replaying) stop_replay(c); /* its EOF is an answer too */
      break;
    }
    got(t, c, src, t->readbuf, (size_t)n);
    ssize_t w = write_side(t, c, dst, t->readbuf, (size_t)n);
    if (w < 0) return false;
    if (w < n && !keep(t, c, &d->pending, t->readbuf + w, (size_t)(n - w))) return false;
    /* A short read emptied the socket; epoll says when there is more. A
       socket out of the set (hup) is read until EOF instead. */
    if (n < READ_SIZE && !src->hup) break;
  }
  if (d->eof && !d->pending.len && !d->shut) {
    /* The last direction to finish ends the session, and close(2) sends
       that FIN itself: one system call less per session. (Its source is
       read to EOF, so no unread byte turns the close into a reset.) */
    struct direction *other = d == &c->up ? &c->down : &c->up;
    if (!other->shut) shutdown(dst->fd, SHUT_WR); /* ENOTCONN once the peer is gone changes nothing */
    d->shut = true;
  }
  return true;
}

/* After the moves: done when both directions are, else watch what the state needs. */
static void settle(struct thread *t, struct conn *c) {
  if (c->up.shut && c->down.shut) return conn_end(t, c, R_DONE, 0);
  update_interest(t, c);
}

/* Both directions: at the start of a session, when both may have work. */
static void pump(struct thread *t, struct conn *c) {
  if (!move(t, c, &c->client, &c->server, &c->up)) return;
  if (!move(t, c, &c->server, &c->client, &c->down)) return;
  settle(t, c);
}

/* Only the directions an event concerns: readable s feeds the direction s is
   the source of, writable s drains the one it is the destination of. Pumping
   both would cost a recv(2) that returns EAGAIN on the other side per event. */
static void side_event(struct thread *t, struct side *s, uint32_t events) {
  struct conn *c = s->conn;
  if (c->closed) return;
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) return side_failed(t, c, s, err);
  }
  if (events & EPOLLHUP) s->hup = true; /* its reads never block now: read it to EOF below */
  bool client = s == &c->client;
  struct side *peer = client ? &c->server : &c->client;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
    /* Drains what waits for s, then reads the peer, which was paused for it
       (and is the only way a peer out of the epoll set (hup) is read again). */
    if (!move(t, c, peer, s, client ? &c->down : &c->up)) return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    if (!move(t, c, s, peer, client ? &c->up : &c->down)) return;
  }
  settle(t, c);
}

/* ---- a restart: sessions handed back ----------------------------------------------- */

/* Its buffers are empty, every byte in flight sits in the kernel: the fds go
   back to JavaScript, open, with what the next process needs to go on. */
static void conn_hand_back(struct thread *t, struct conn *c) {
  struct event *ev = new_event(EV_HANDED);
  if (!ev) return conn_end(t, c, R_SHUTDOWN, ENOMEM);
  if (c->client.registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->client.fd, NULL);
  if (c->server.registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->server.fd, NULL);
  unlink_conn(t, c);
  ev->id = c->id;
  ev->a = c->client.fd;
  ev->b = c->server.fd;
  ev->c = (c->up.shut ? 1 : 0) | (c->down.shut ? 2 : 0);
  ev->bytes_in = c->bytes_in;
  ev->bytes_out = c->bytes_out;
  if (c->replaying) { /* not answered yet: the next process may still send the request again */
    ev->data = c->replay;
    ev->len = c->replay_len;
    c->replay = NULL;
  }
  push_event(ev);
}

/* C_HANDOVER: take the sessions the fd store has room for (the others are
   relayed on, and drained); stop reading them. */
static void begin_handover(struct thread *t, int grace_ms) {
  t->handing_over = true;
  t->handover_deadline = t->now + grace_ms;
  for (struct conn *c = t->conns; c; c = c->next) {
    if (atomic_fetch_sub(&relay.handover_budget, 1) <= 0) continue;
    c->handing = true;
    update_interest(t, c);
  }
}

/* After each turn of a handover: hand back every session whose buffers are
   empty; at the deadline close those whose peer would not take their bytes.
   Then tell JavaScript this thread is done. */
static void handover_step(struct thread *t) {
  bool late = t->now >= t->handover_deadline, waiting = false;
  int closed = 0;
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    if (!c->handing) continue;
    if (!c->up.pending.len && !c->down.pending.len) {
      conn_hand_back(t, c);
    } else if (late) {
      conn_end(t, c, R_SHUTDOWN, 0);
      closed++;
    } else {
      waiting = true;
    }
  }
  if (waiting) return;
  t->handing_over = false;
  struct event *ev = new_event(EV_HANDOVER_DONE);
  if (!ev) return; /* JavaScript's own deadline ends the wait */
  ev->a = t->index;
  ev->b = closed;
  push_event(ev);
}

/* ---- a thread's own work ----------------------------------------------------------- */

static void start_conn(struct thread *t, struct conn *c) {
  c->last_active = t->now;
  c->next = t->conns;
  if (t->conns) t->conns->prev = c;
  t->conns = c;
  uint32_t shortest = c->client_timeout && c->server_timeout ? (c->client_timeout < c->server_timeout ? c->client_timeout : c->server_timeout)
                                                              : c->client_timeout | c->server_timeout;
  if (shortest) {
    /* A twentieth of the shorter timeout within 10 ms–1 s, as the TypeScript
       relay does: a session closes at most a tenth late. It only shrinks,
       as older sessions keep their timeouts after a reload. */
    uint32_t every = shortest / 20 < 10 ? 10 : shortest / 20 > 1000 ? 1000 : shortest / 20;
    if (!t->sweep_ms || every < t->sweep_ms) {
      t->sweep_ms = every;
      t->next_sweep = t->now + every;
    }
  }
  pump(t, c); /* sends the PROXY header and replay, reads what the client already sent */
}

static enum reason idle_reason(const struct conn *c) {
  uint32_t cl = c->client_timeout, sv = c->server_timeout;
  if (cl == sv) return c->client_spoke_last ? R_SERVER_TIMEOUT : R_CLIENT_TIMEOUT;
  if (!cl) return R_SERVER_TIMEOUT;
  if (!sv) return R_CLIENT_TIMEOUT;
  return sv < cl ? R_SERVER_TIMEOUT : R_CLIENT_TIMEOUT;
}

/* client-timeout and server-timeout: every byte read on one side is written
   to the other, so both sides are active at the same moments and the
   shorter timeout decides; equal ones name the side that owes the next byte. */
static void sweep(struct thread *t) {
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    uint32_t cl = c->client_timeout, sv = c->server_timeout;
    uint32_t limit = cl && sv ? (cl < sv ? cl : sv) : cl | sv;
    if (limit && t->now - c->last_active >= limit) conn_end(t, c, idle_reason(c), 0);
  }
  t->next_sweep = t->now + t->sweep_ms;
}

static int compare_ids(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void run_commands(struct thread *t) {
  uint64_t count;
  ssize_t unused = read(t->wakeup_fd, &count, sizeof count);
  (void)unused;
  pthread_mutex_lock(&t->lock);
  struct command *cmd = t->head;
  t->head = t->tail = NULL;
  pthread_mutex_unlock(&t->lock);
  while (cmd) {
    struct command *next = cmd->next;
    switch (cmd->kind) {
    case C_START:
      start_conn(t, cmd->conn);
      break;
    case C_CLOSE_ALL:
      for (struct conn *c = t->conns, *n; c; c = n) {
        n = c->next;
        if (!cmd->ids || bsearch(&c->id, cmd->ids, cmd->nids, sizeof *cmd->ids, compare_ids))
          conn_end(t, c, (enum reason)cmd->arg, 0);
      }
      free(cmd->ids);
      break;
    case C_PING:
      atomic_store(&t->answered, cmd->arg);
      break;
    case C_STOP:
      t->stopping = true;
      break;
    case C_HANDOVER:
      begin_handover(t, cmd->arg);
      break;
    }
    free(cmd);
    cmd = next;
  }
}

static void free_dead(struct thread *t) {
  while (t->dead) {
    struct conn *c = t->dead;
    t->dead = c->next;
    free_conn(c);
  }
}

static void *thread_main(void *arg) {
  struct thread *t = arg;
  struct epoll_event events[EVENTS_PER_WAIT];
  t->now = now_ms();
  while (!t->stopping) {
    int timeout = -1;
    if (t->sweep_ms) timeout = t->next_sweep > t->now ? (int)(t->next_sweep - t->now) : 0;
    if (t->handing_over) {
      int left = t->handover_deadline > t->now ? (int)(t->handover_deadline - t->now) : 0;
      if (timeout < 0 || left < timeout) timeout = left;
    }
    int n = epoll_wait(t->epfd, events, EVENTS_PER_WAIT, timeout);
    t->now = now_ms();
    for (int i = 0; i < n; i++) {
      enum pollable_kind *kind = events[i].data.ptr;
      if (*kind == P_WAKEUP) run_commands(t);
      else side_event(t, (struct side *)kind, events[i].events);
    }
    if (t->handing_over) handover_step(t);
    free_dead(t);
    if (t->sweep_ms && t->now >= t->next_sweep) {
      sweep(t);
      free_dead(t);
    }
  }
  /* Stopped: JavaScript has drained or closed every session; whatever is left goes silently. */
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    close(c->client.fd);
    close(c->server.fd);
    free_conn(c);
  }
  t->conns = NULL;
  return NULL;
}

/* ---- JavaScript side: the event batch -------------------------------------------- */

static void deliver(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  (void)data;
  if (env == NULL) return; /* the function is being released */
  pthread_mutex_lock(&relay.events_lock);
  struct event *ev = relay.events_head;
  relay.events_head = relay.events_tail = NULL;
  pthread_mutex_unlock(&relay.events_lock);
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  while (ev) {
    struct event *next = ev->next;
    napi_value argv[6];
    for (int i = 0; i < 6; i++) argv[i] = undefined;
    napi_create_int32(env, ev->kind, &argv[0]);
    switch (ev->kind) {
    case EV_END: /* (kind, id, reason, errno, bytes in, bytes out) */
      napi_create_uint32(env, ev->id, &argv[1]);
      napi_create_int32(env, ev->a, &argv[2]);
      napi_create_int32(env, ev->b, &argv[3]);
      napi_create_double(env, (double)ev->bytes_in, &argv[4]);
      napi_create_double(env, (double)ev->bytes_out, &argv[5]);
      break;
    case EV_RETRY: { /* (kind, id, client fd, errno, replay bytes, client ended) */
      void *copy;
      napi_create_uint32(env, ev->id, &argv[1]);
      napi_create_int32(env, ev->a, &argv[2]);
      napi_create_int32(env, ev->b, &argv[3]);
      napi_create_buffer_copy(env, ev->len, ev->len ? ev->data : "", &copy, &argv[4]);
      napi_get_boolean(env, ev->c != 0, &argv[5]);
      break;
    }
    case EV_HANDED: { /* (kind, id, [client fd, server fd, directions done], replay bytes or undefined, bytes in, bytes out) */
      napi_value fds, v;
      napi_create_uint32(env, ev->id, &argv[1]);
      napi_create_array_with_length(env, 3, &fds);
      int parts[3] = { ev->a, ev->b, ev->c };
      for (uint32_t i = 0; i < 3; i++) {
        napi_create_int32(env, parts[i], &v);
        napi_set_element(env, fds, i, v);
      }
      argv[2] = fds;
      if (ev->data) {
        void *copy;
        napi_create_buffer_copy(env, ev->len, ev->data, &copy, &argv[3]);
      }
      napi_create_double(env, (double)ev->bytes_in, &argv[4]);
      napi_create_double(env, (double)ev->bytes_out, &argv[5]);
      break;
    }
    case EV_HANDOVER_DONE: /* (kind, thread, sessions closed) */
      napi_create_int32(env, ev->a, &argv[1]);
      napi_create_int32(env, ev->b, &argv[2]);
      break;
    case EV_ACCEPT:
    case EV_ACCEPT_ERROR:
      break; /* sent by on_acceptable, never queued */
    }
    napi_value result;
    napi_status status = napi_call_function(env, undefined, callback, 6, argv, &result);
    free(ev->data);
    free(ev);
    if (status == napi_pending_exception) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err); /* the process's uncaughtException handler decides */
    }
    ev = next;
  }
}

/* ---- JavaScript side: the functions ------------------------------------------------ */

#define ARGS(n)                                                                      \
  size_t argc = n;                                                                   \
  napi_value argv[n];                                                                \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL

static int32_t int_arg(napi_env env, napi_value v) {
  int32_t x = 0;
  napi_get_value_int32(env, v, &x);
  return x;
}

static napi_value int_result(napi_env env, int64_t x) {
  napi_value v;
  napi_create_int64(env, x, &v);
  return v;
}

static napi_value undefined_result(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

/* init(threads, onEvent): start the threads. Returns 0 or -errno. */
static napi_value js_init(napi_env env, napi_callback_info info) {
  ARGS(2);
  if (relay.running) return int_result(env, -EALREADY);
  int n = int_arg(env, argv[0]);
  if (n < 1) n = 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  napi_value name;
  napi_create_string_utf8(env, "sockbridge-relay", NAPI_AUTO_LENGTH, &name);
  napi_value resource;
  if (napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, deliver, &relay.tsfn) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &relay.on_event) != napi_ok || napi_create_object(env, &resource) != napi_ok ||
      napi_create_reference(env, resource, 1, &relay.resource) != napi_ok ||
      napi_async_init(env, resource, name, &relay.async) != napi_ok || napi_get_uv_event_loop(env, &relay.loop) != napi_ok)
    return int_result(env, -EINVAL);
  relay.env = env;
  for (int i = 0; i < n; i++) {
    struct thread *t = &relay.threads[i];
    memset(t, 0, sizeof *t);
    t->index = i;
    t->wakeup_kind = P_WAKEUP;
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->wakeup_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    t->readbuf = malloc(READ_SIZE);
    pthread_mutex_init(&t->lock, NULL);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &t->wakeup_kind };
    if (t->epfd < 0 || t->wakeup_fd < 0 || !t->readbuf || epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wakeup_fd, &ev) < 0) return int_result(env, -ENOMEM);
    if (pthread_create(&t->tid, NULL, thread_main, t) != 0) return int_result(env, -EAGAIN);
    relay.nthreads = i + 1;
  }
  relay.running = true;
  return int_result(env, 0);
}

/* bindTcp(host or "", port): a bound (not yet listening) TCP socket. Returns the fd or -errno. */
static napi_value js_bind_tcp(napi_env env, napi_callback_info info) {
  ARGS(2);
  char host[256] = "";
  size_t hlen;
  napi_get_value_string_utf8(env, argv[0], host, sizeof host, &hlen);
  char port[16];
  snprintf(port, sizeof port, "%d", int_arg(env, argv[1]));
  /* No host: the IPv6 wildcard with IPv4 mapped in, as Node binds, or IPv4 alone. */
  struct addrinfo hints = { .ai_family = host[0] ? AF_UNSPEC : AF_INET6, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
  struct addrinfo *res;
  int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
  if (rc != 0 && !host[0]) {
    hints.ai_family = AF_INET;
    rc = getaddrinfo(NULL, port, &hints, &res);
  }
  if (rc != 0) return int_result(env, rc == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL);
  int err = EADDRNOTAVAIL;
  int fd = -1;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int on = 1, off = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (ai->ai_family == AF_INET6 && !host[0]) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return int_result(env, fd >= 0 ? fd : -err);
}

/* ---- JavaScript side: accepting, in Node's event loop ------------------------------- */

/* An IPv4 or IPv6 address as text into addr ("" for another family); returns the port. */
static int format_address(const struct sockaddr_storage *sa, char addr[INET6_ADDRSTRLEN]) {
  addr[0] = '\0';
  if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, addr, INET6_ADDRSTRLEN);
    return ntohs(in6->sin6_port);
  }
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in4->sin_addr, addr, INET6_ADDRSTRLEN);
    return ntohs(in4->sin_port);
  }
  return 0;
}

/* Call the JavaScript handler; exceptions go to the process's uncaughtException handler. */
static void call_handler(napi_env env, napi_value callback, napi_value *argv) {
  napi_value undefined, result;
  napi_get_undefined(env, &undefined);
  if (napi_call_function(env, undefined, callback, 6, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
}

static void on_acceptable(uv_poll_t *poll, int status, int events);

static void resume_accepting(uv_timer_t *timer) {
  struct listener *l = timer->data;
  if (l->used) uv_poll_start(&l->poll, UV_READABLE, on_acceptable);
}

/* The listening socket is readable: accept what waits (up to ACCEPT_BATCH)
   and hand each client to JavaScript, which decides at once. Inside one
   callback scope, so that process.nextTick and promises run after the batch. */
static void on_acceptable(uv_poll_t *poll, int status, int events) {
  (void)events;
  struct listener *l = poll->data;
  napi_env env = relay.env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback, resource;
  napi_callback_scope cscope;
  napi_get_reference_value(env, relay.on_event, &callback);
  napi_get_reference_value(env, relay.resource, &resource);
  if (napi_open_callback_scope(env, resource, relay.async, &cscope) != napi_ok) {
    napi_close_handle_scope(env, scope);
    return;
  }
  for (int i = 0; i < ACCEPT_BATCH && l->used; i++) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int fd = status < 0 ? -1 : accept4(l->fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    int err = status < 0 ? -status : errno;
    napi_value argv[6];
    napi_get_undefined(env, &argv[5]);
    for (int k = 1; k < 6; k++) argv[k] = argv[5];
    if (fd < 0) {
      if (status == 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED)) break;
      napi_create_int32(env, EV_ACCEPT_ERROR, &argv[0]); /* (kind, listener, errno) */
      napi_create_int32(env, l->index, &argv[1]);
      napi_create_int32(env, err, &argv[2]);
      call_handler(env, callback, argv);
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        uv_poll_stop(&l->poll);
        uv_timer_start(&l->pause, resume_accepting, ACCEPT_PAUSE_MS, 0);
      }
      break;
    }
    char addr[INET6_ADDRSTRLEN];
    int port = format_address(&sa, addr);
    napi_create_int32(env, EV_ACCEPT, &argv[0]); /* (kind, listener, fd, address, port) */
    napi_create_int32(env, l->index, &argv[1]);
    napi_create_int32(env, fd, &argv[2]);
    napi_create_string_latin1(env, addr, NAPI_AUTO_LENGTH, &argv[3]);
    napi_create_int32(env, port, &argv[4]);
    call_handler(env, callback, argv);
  }
  napi_close_callback_scope(env, cscope);
  napi_close_handle_scope(env, scope);
}

/* listen(fd, backlog): listen and start accepting. Returns the listener index or -errno. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  ARGS(2);
  if (!relay.running) return int_result(env, -ENOTCONN);
  if (relay.nlisteners >= MAX_LISTENERS) return int_result(env, -EMFILE);
  int fd = int_arg(env, argv[0]);
  int on = 1, idle = KEEPALIVE_IDLE_S;
  /* Set on the listening socket, Linux copies them to every accepted one:
     no setsockopt(2) per connection. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  if (listen(fd, int_arg(env, argv[1])) < 0) return int_result(env, -errno);
  struct listener *l = &relay.listeners[relay.nlisteners];
  if (uv_poll_init_socket(relay.loop, &l->poll, fd) != 0) return int_result(env, -EINVAL); /* it also sets O_NONBLOCK */
  uv_timer_init(relay.loop, &l->pause);
  l->poll.data = l;
  l->pause.data = l;
  l->fd = fd;
  l->index = relay.nlisteners++;
  l->used = true;
  uv_poll_start(&l->poll, UV_READABLE, on_acceptable);
  return int_result(env, l->index);
}

/* Stop polling and close the socket; its handles are closed too (their memory is static). */
static void close_listener(struct listener *l) {
  if (!l->used) return;
  l->used = false;
  uv_close((uv_handle_t *)&l->poll, NULL);
  uv_close((uv_handle_t *)&l->pause, NULL);
  close(l->fd);
}

/* localAddress(fd): "address port" of a socket's own end (the PROXY header; the port --listen bound), or "". */
static napi_value js_local_address(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  char text[INET6_ADDRSTRLEN + 8] = "";
  if (getsockname(int_arg(env, argv[0]), (struct sockaddr *)&sa, &len) == 0) {
    char addr[INET6_ADDRSTRLEN];
    int port = format_address(&sa, addr);
    snprintf(text, sizeof text, "%s %d", addr, port);
  }
  napi_value v;
  napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, &v);
  return v;
}

/* unlisten(index): stop accepting there and close the socket (new clients are
   refused, as by Node's server.close()). Synchronous: accepting happens in
   this thread, so nobody is accepted after it returns. */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  ARGS(1);
  int index = int_arg(env, argv[0]);
  if (index >= 0 && index < relay.nlisteners) close_listener(&relay.listeners[index]);
  return undefined_result(env);
}

/* connectUnix(path): a connected, non-blocking UNIX stream socket, or -errno.
   A UNIX connect(2) completes at once or fails at once (EAGAIN: full backlog). */
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], sa.sun_path, sizeof sa.sun_path, &len) != napi_ok || len >= sizeof sa.sun_path - 1)
    return int_result(env, -ENAMETOOLONG);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_result(env, -errno);
  int rc;
  do rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno;
    close(fd);
    return int_result(env, -err);
  }
  return int_result(env, fd);
}

/* closeFd(fd): a client refused, queued and dropped, or not retried. */
static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  ARGS(1);
  close(int_arg(env, argv[0]));
  return undefined_result(env);
}

/* Elements from..from+n of a JavaScript array of fds. */
static void ints_arg(napi_env env, napi_value arr, uint32_t from, uint32_t n, int *out) {
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, arr, from + i, &v);
    out[i] = int_arg(env, v);
  }
}

static bool buffer_arg(napi_env env, napi_value v, char **data, size_t *len) {
  bool is;
  *data = NULL;
  *len = 0;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return true;
  void *p;
  if (napi_get_buffer_info(env, v, &p, len) != napi_ok) return false;
  *data = p;
  return true;
}

/* The thread with the fewest sessions, so that threads share the load as HAProxy's do. */
static struct thread *least_loaded(void) {
  struct thread *best = &relay.threads[0]; /* relay.running: there is at least one */
  int64_t fewest = INT64_MAX;
  for (int i = 0; i < relay.nthreads; i++) {
    struct thread *t = &relay.threads[(relay.cursor + (unsigned)i) % (unsigned)relay.nthreads];
    int64_t n = atomic_load_explicit(&t->active, memory_order_relaxed);
    if (n < fewest) {
      fewest = n;
      best = t;
    }
  }
  relay.cursor++;
  return best;
}

/* A session for a thread: the one with the fewest. */
static void dispatch(struct conn *c, struct command *cmd) {
  struct thread *t = least_loaded();
  atomic_fetch_add_explicit(&t->active, 1, memory_order_relaxed);
  cmd->kind = C_START;
  cmd->conn = c;
  send_command(t, cmd);
}

/* What start and resume share: (id, clientFd, serverFd, ..., clientTimeoutMs, serverTimeoutMs) at argv[0, 1, 2] and [timeouts, timeouts + 1]. */
static void fill_conn(napi_env env, struct conn *c, napi_value *argv, int timeouts) {
  napi_get_value_uint32(env, argv[0], &c->id);
  c->client = (struct side){ .kind = P_SIDE, .fd = int_arg(env, argv[1]), .conn = c };
  c->server = (struct side){ .kind = P_SIDE, .fd = int_arg(env, argv[2]), .conn = c };
  c->client_timeout = (uint32_t)int_arg(env, argv[timeouts]);
  c->server_timeout = (uint32_t)int_arg(env, argv[timeouts + 1]);
}

/* start(id, clientFd, serverFd, header, replay, clientTimeoutMs, serverTimeoutMs, mayRetry, clientEnded):
   relay a connected pair. header (the PROXY header) and replay (the bytes of
   a retried request) are sent to the target first. Returns 0 or -errno; on
   an error the fds are still the caller's. */
static napi_value js_start(napi_env env, napi_callback_info info) {
  ARGS(9);
  if (!relay.running) return int_result(env, -ENOTCONN);
  char *header, *replay;
  size_t header_len, replay_len;
  if (!buffer_arg(env, argv[3], &header, &header_len) || !buffer_arg(env, argv[4], &replay, &replay_len)) return int_result(env, -EINVAL);
  struct conn *c = calloc(1, sizeof *c);
  struct command *cmd = calloc(1, sizeof *cmd);
  char *first = header_len + replay_len ? malloc(header_len + replay_len) : NULL;
  char *kept = replay_len ? malloc(replay_len) : NULL;
  if (!c || !cmd || (header_len + replay_len && !first) || (replay_len && !kept)) {
    free(c);
    free(cmd);
    free(first);
    free(kept);
    return int_result(env, -ENOMEM);
  }
  fill_conn(env, c, argv, 5);
  bool may_retry, client_ended;
  napi_get_value_bool(env, argv[7], &may_retry);
  napi_get_value_bool(env, argv[8], &client_ended);
  c->replaying = may_retry; /* no copy is kept for a session that will not be retried */
  c->up.eof = client_ended;
  c->client_spoke_last = replay_len > 0;
  if (first) {
    if (header_len) memcpy(first, header, header_len);
    if (replay_len) memcpy(first + header_len, replay, replay_len);
    c->up.pending = (struct pending){ .data = first, .len = header_len + replay_len };
  }
  if (kept) {
    memcpy(kept, replay, replay_len);
    c->replay = kept;
    c->replay_len = replay_len;
    c->bytes_in = replay_len; /* counted when first read */
  }
  dispatch(c, cmd);
  return int_result(env, 0);
}

/* resume(id, clientFd, serverFd, replay, clientTimeoutMs, serverTimeoutMs, directionsDone, bytesIn, bytesOut):
   relay on a session a previous process handed over (EV_HANDED's values).
   replay: the client's bytes already sent, kept for a retry (the target has
   not answered yet), or undefined. Returns 0 or -errno, as start. */
static napi_value js_resume(napi_env env, napi_callback_info info) {
  ARGS(9);
  if (!relay.running) return int_result(env, -ENOTCONN);
  char *replay;
  size_t replay_len;
  if (!buffer_arg(env, argv[3], &replay, &replay_len)) return int_result(env, -EINVAL);
  struct conn *c = calloc(1, sizeof *c);
  struct command *cmd = calloc(1, sizeof *cmd);
  char *kept = replay_len ? malloc(replay_len) : NULL;
  if (!c || !cmd || (replay_len && !kept)) {
    free(c);
    free(cmd);
    free(kept);
    return int_result(env, -ENOMEM);
  }
  fill_conn(env, c, argv, 4);
  int done = int_arg(env, argv[6]);
  /* A direction already done stays done: its shutdown(2) was sent, and the start's pump repeats it harmlessly. */
  c->up.eof = c->up.shut = (done & 1) != 0;
  c->down.eof = c->down.shut = (done & 2) != 0;
  double in = 0, out = 0;
  napi_get_value_double(env, argv[7], &in);
  napi_get_value_double(env, argv[8], &out);
  c->bytes_in = (uint64_t)in; /* the session's own counts; the threads' totals count this process's bytes */
  c->bytes_out = (uint64_t)out;
  if (kept) {
    memcpy(kept, replay, replay_len);
    c->replay = kept;
    c->replay_len = replay_len;
    c->replaying = true;
  }
  dispatch(c, cmd);
  return int_result(env, 0);
}

/* closeAll(reason, ids): close every relayed session, or only those whose ids
   the array names (the sessions of a target marked DOWN). */
static napi_value js_close_all(napi_env env, napi_callback_info info) {
  ARGS(2);
  bool is_array = false;
  napi_is_array(env, argv[1], &is_array);
  uint32_t n = 0;
  if (is_array) napi_get_array_length(env, argv[1], &n);
  uint32_t *ids = is_array ? malloc(sizeof *ids * (n ? n : 1)) : NULL;
  if (is_array && !ids) return int_result(env, -ENOMEM);
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, argv[1], i, &v);
    napi_get_value_uint32(env, v, &ids[i]);
  }
  if (ids) qsort(ids, n, sizeof *ids, compare_ids);
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    uint32_t *copy = ids ? malloc(sizeof *ids * (n ? n : 1)) : NULL;
    if (!cmd || (ids && !copy)) {
      free(cmd);
      free(copy);
      continue;
    }
    if (copy) memcpy(copy, ids, sizeof *ids * n);
    cmd->kind = C_CLOSE_ALL;
    cmd->arg = int_arg(env, argv[0]);
    cmd->ids = copy;
    cmd->nids = n;
    send_command(&relay.threads[i], cmd);
  }
  free(ids);
  return int_result(env, 0);
}

/* handover(graceMs, sessions): a restart. Every thread stops reading the
   sessions it is given (up to `sessions` in all: what the fd store holds),
   hands each back (EV_HANDED) once its buffers are empty, closes those still
   full after graceMs, and then says it is done (EV_HANDOVER_DONE). The other
   sessions are relayed on. Returns the number of threads (of DONE events). */
static napi_value js_handover(napi_env env, napi_callback_info info) {
  ARGS(2);
  atomic_store(&relay.handover_budget, int_arg(env, argv[1]));
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return int_result(env, -ENOMEM);
    cmd->kind = C_HANDOVER;
    cmd->arg = int_arg(env, argv[0]);
    send_command(&relay.threads[i], cmd);
  }
  return int_result(env, relay.nthreads);
}

/* ---- systemd's fd store ------------------------------------------------------------ */

/* The notify socket's address: a path, or "@name" in the abstract namespace. */
static socklen_t notify_address(napi_env env, napi_value v, struct sockaddr_un *sa) {
  *sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
  size_t len;
  if (napi_get_value_string_utf8(env, v, sa->sun_path, sizeof sa->sun_path, &len) != napi_ok || len == 0 || len >= sizeof sa->sun_path - 1) return 0;
  if (sa->sun_path[0] == '@') sa->sun_path[0] = '\0';
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (sa->sun_path[0] ? 1 : 0));
}

/* One datagram to the notify socket, with fds attached (SCM_RIGHTS). */
/* One message on sock (to sa, when given) with up to FDS_PER_MESSAGE fds attached (SCM_RIGHTS). Returns 0 or -errno. */
static int send_with_fds(int sock, const struct sockaddr_un *sa, socklen_t salen, const void *data, size_t len, const int *fds, size_t nfds) {
  char control[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
  memset(control, 0, sizeof control);
  if (nfds > FDS_PER_MESSAGE) return -E2BIG;
  struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
  struct msghdr msg = { .msg_name = (void *)sa, .msg_namelen = sa ? salen : 0, .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = nfds ? control : NULL, .msg_controllen = nfds ? CMSG_SPACE(sizeof(int) * nfds) : 0 };
  if (nfds) {
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
  }
  ssize_t rc;
  do rc = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (rc < 0 && errno == EINTR);
  return rc < 0 ? -errno : 0;
}

/* One datagram to the notify socket, with fds attached. */
static int notify_with_fds(const struct sockaddr_un *sa, socklen_t salen, const char *text, const int *fds, size_t nfds) {
  int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return -errno;
  int err = send_with_fds(sock, sa, salen, text, strlen(text), fds, nfds);
  close(sock);
  return err;
}

/* notifyWithFds(socket, text, fds): sd_pid_notify_with_fds(3), e.g.
   "FDSTORE=1\nFDNAME=sb" with up to FDS_PER_MESSAGE fds. Returns 0 or -errno. */
static napi_value js_notify_with_fds(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct sockaddr_un sa;
  socklen_t salen = notify_address(env, argv[0], &sa);
  if (!salen) return int_result(env, -EINVAL);
  char text[256];
  size_t tlen;
  if (napi_get_value_string_utf8(env, argv[1], text, sizeof text, &tlen) != napi_ok) return int_result(env, -EINVAL);
  uint32_t n = 0;
  napi_get_array_length(env, argv[2], &n);
  if (n > FDS_PER_MESSAGE) return int_result(env, -E2BIG);
  int fds[FDS_PER_MESSAGE];
  ints_arg(env, argv[2], 0, n, fds);
  return int_result(env, notify_with_fds(&sa, salen, text, fds, n));
}

/* barrier(socket, timeoutMs): sd_notify_barrier(3). systemd closes the pipe
   end sent with BARRIER=1 once it has processed every earlier message (the
   stored fds are safe then). Returns 0 or -errno (-ETIMEDOUT). */
static napi_value js_barrier(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct sockaddr_un sa;
  socklen_t salen = notify_address(env, argv[0], &sa);
  if (!salen) return int_result(env, -EINVAL);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) < 0) return int_result(env, -errno);
  int rc = notify_with_fds(&sa, salen, "BARRIER=1", &pipefd[1], 1);
  close(pipefd[1]);
  if (rc == 0) {
    struct pollfd p = { .fd = pipefd[0], .events = 0 };
    int n;
    do n = poll(&p, 1, int_arg(env, argv[1]));
    while (n < 0 && errno == EINTR);
    rc = n < 0 ? -errno : n == 0 ? -ETIMEDOUT : 0;
  }
  close(pipefd[0]);
  return int_result(env, rc);
}

/* bundle(fds): the fds, in order, queued in flight (SCM_RIGHTS) inside a new
   socket pair whose sending end is closed; returns the other end, or -errno.
   systemd's fd store compares every fd it gets with every one it holds, so
   storing thousands of fds one by one keeps PID 1 busy for seconds (measured:
   4,001 fds, 5 to 9 s): a few bundles cost it nothing. At most
   FDS_PER_MESSAGE * BUNDLE_MESSAGES fds. */
static napi_value js_bundle(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint32_t n = 0;
  napi_get_array_length(env, argv[0], &n);
  if (n > FDS_PER_MESSAGE * BUNDLE_MESSAGES) return int_result(env, -E2BIG);
  int pair[2];
  /* Non-blocking: a full buffer fails at once instead of hanging (nobody reads until the next process). */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0) return int_result(env, -errno);
  int err = 0;
  for (uint32_t off = 0; off < n && !err; off += FDS_PER_MESSAGE) {
    int fds[FDS_PER_MESSAGE];
    uint32_t k = n - off < FDS_PER_MESSAGE ? n - off : FDS_PER_MESSAGE;
    ints_arg(env, argv[0], off, k, fds);
    /* One byte per message, the count: a stream socket never merges messages that carry fds. */
    unsigned char count = (unsigned char)k;
    int rc = send_with_fds(pair[1], NULL, 0, &count, 1, fds, k);
    if (rc < 0) err = -rc;
  }
  close(pair[1]);
  if (err) {
    close(pair[0]);
    return int_result(env, -err);
  }
  /* Blocking again for the reader: its recvmsg waits for nothing, everything is queued. */
  fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) & ~O_NONBLOCK);
  return int_result(env, pair[0]);
}

/* unbundle(fd): the fds a bundle carries, in order (an array; a negative last
   element is the -errno that ended the reading early). Closes the bundle. */
static napi_value js_unbundle(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd = int_arg(env, argv[0]);
  napi_value arr, v;
  napi_create_array(env, &arr);
  uint32_t at = 0;
  for (;;) {
    char count;
    struct iovec iov = { .iov_base = &count, .iov_len = 1 };
    char control[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
    ssize_t rc;
    do rc = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (rc < 0 && errno == EINTR);
    if (rc <= 0) {
      if (rc < 0) {
        napi_create_int32(env, -errno, &v);
        napi_set_element(env, arr, at++, v);
      }
      break;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int fds[FDS_PER_MESSAGE];
      memcpy(fds, CMSG_DATA(cm), sizeof(int) * (k < FDS_PER_MESSAGE ? k : FDS_PER_MESSAGE));
      for (size_t i = 0; i < k && i < FDS_PER_MESSAGE; i++) {
        napi_create_int32(env, fds[i], &v);
        napi_set_element(env, arr, at++, v);
      }
    }
  }
  close(fd);
  return arr;
}

/* peerGone(fd): whether a connection is over for good (POLLHUP or POLLERR:
   reset, or shut down both ways), as systemd would have dropped it from the
   store. A client that only half-closed still waits for its answer. */
static napi_value js_peer_gone(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct pollfd p = { .fd = int_arg(env, argv[0]), .events = 0 };
  bool gone = poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
  napi_value v;
  napi_get_boolean(env, gone, &v);
  return v;
}

/* memfd(name, bytes): a memory file holding bytes (the handover state), or -errno. */
static napi_value js_memfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  char name[64];
  size_t nlen, len;
  char *data;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nlen) != napi_ok || !buffer_arg(env, argv[1], &data, &len)) return int_result(env, -EINVAL);
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return int_result(env, -errno);
  for (size_t off = 0; off < len;) {
    ssize_t w = pwrite(fd, data + off, len - off, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int err = w < 0 ? errno : EIO;
      close(fd);
      return int_result(env, -err);
    }
    off += (size_t)w;
  }
  return int_result(env, fd);
}

/* counters(): [bytes from clients, bytes to clients, open sessions], over all threads, live. */
static napi_value js_counters(napi_env env, napi_callback_info info) {
  (void)info;
  double in = 0, out = 0, active = 0;
  for (int i = 0; i < relay.nthreads; i++) {
    in += (double)atomic_load_explicit(&relay.threads[i].bytes_in, memory_order_relaxed);
    out += (double)atomic_load_explicit(&relay.threads[i].bytes_out, memory_order_relaxed);
    active += (double)atomic_load_explicit(&relay.threads[i].active, memory_order_relaxed);
  }
  napi_value arr, v;
  napi_create_array_with_length(env, 3, &arr);
  napi_create_double(env, in, &v);
  napi_set_element(env, arr, 0, v);
  napi_create_double(env, out, &v);
  napi_set_element(env, arr, 1, v);
  napi_create_double(env, active, &v);
  napi_set_element(env, arr, 2, v);
  return arr;
}

/* alive(): whether every thread ran the previous ping (for the systemd
   watchdog: a stuck thread stops it); sends the next one. */
static napi_value js_alive(napi_env env, napi_callback_info info) {
  (void)info;
  bool all = true;
  for (int i = 0; i < relay.nthreads; i++)
    if (atomic_load(&relay.threads[i].answered) != relay.ping) all = false;
  relay.ping++;
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) continue;
    cmd->kind = C_PING;
    cmd->arg = relay.ping;
    send_command(&relay.threads[i], cmd);
  }
  napi_value v;
  napi_get_boolean(env, all, &v);
  return v;
}

/* stop(): end the threads (after the sessions were drained or closed), close the listeners, let Node exit. */
static napi_value js_stop(napi_env env, napi_callback_info info) {
  (void)info;
  if (!relay.running) return undefined_result(env);
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (cmd) {
      cmd->kind = C_STOP;
      send_command(&relay.threads[i], cmd);
    }
  }
  for (int i = 0; i < relay.nthreads; i++) {
    struct thread *t = &relay.threads[i];
    pthread_join(t->tid, NULL);
    free_dead(t);
    for (struct command *cmd = t->head, *next; cmd; cmd = next) {
      next = cmd->next;
      if (cmd->kind == C_START) {
        close(cmd->conn->client.fd);
        close(cmd->conn->server.fd);
        free_conn(cmd->conn);
      }
      if (cmd->kind == C_CLOSE_ALL) free(cmd->ids);
      free(cmd);
    }
    close(t->epfd);
    close(t->wakeup_fd);
    free(t->readbuf);
    pthread_mutex_destroy(&t->lock);
  }
  for (int i = 0; i < relay.nlisteners; i++) close_listener(&relay.listeners[i]);
  pthread_mutex_lock(&relay.events_lock);
  struct event *ev = relay.events_head;
  relay.events_head = relay.events_tail = NULL;
  pthread_mutex_unlock(&relay.events_lock);
  while (ev) {
    struct event *next = ev->next;
    if (ev->kind == EV_RETRY || ev->kind == EV_HANDED) close(ev->a);
    if (ev->kind == EV_HANDED) close(ev->b);
    free(ev->data);
    free(ev);
    ev = next;
  }
  relay.nthreads = 0;
  relay.running = false;
  napi_async_destroy(env, relay.async);
  napi_delete_reference(env, relay.resource);
  napi_delete_reference(env, relay.on_event);
  napi_release_threadsafe_function(relay.tsfn, napi_tsfn_release);
  return undefined_result(env);
}

static napi_value init_module(napi_env env, napi_value exports) {
  const struct { const char *name; napi_callback fn; } fns[] = {
    { "init", js_init }, { "bindTcp", js_bind_tcp }, { "listen", js_listen }, { "localAddress", js_local_address },
    { "unlisten", js_unlisten }, { "connectUnix", js_connect_unix },
    { "closeFd", js_close_fd }, { "start", js_start }, { "resume", js_resume }, { "closeAll", js_close_all },
    { "counters", js_counters }, { "alive", js_alive }, { "stop", js_stop }, { "handover", js_handover },
    { "notifyWithFds", js_notify_with_fds }, { "barrier", js_barrier }, { "memfd", js_memfd },
    { "bundle", js_bundle }, { "unbundle", js_unbundle }, { "peerGone", js_peer_gone },
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init_module)
