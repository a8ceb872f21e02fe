/* The relay threads: each one an epoll loop over its own connections, the
 * shared listening sockets, and its command queue.
 *
 * A thread owns its connections; the JavaScript thread reaches them only by
 * queueing commands (send_command) that the thread runs at its next turn,
 * and names a connection by its id, whose low bits say which thread has it.
 * Each turn reads the newest policy snapshot (policy.c) and lets go of it
 * before sleeping. Frees are deferred to the end of a turn, since events
 * already fetched may point at a connection that ended.
 */
#include "dataplane.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define THREAD_BITS 6 /* MAX_THREADS = 64 */

struct relay_state relay;

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void send_command(struct thread *t, struct command *cmd) {
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

/* The thread with the fewest sessions, for a session started from JavaScript
   (a previous process's, or a waiting client's): threads share the load. */
struct thread *least_loaded(void) {
  struct thread *best = &relay.threads[0];
  int64_t fewest = INT64_MAX;
  unsigned start = atomic_fetch_add_explicit(&relay.cursor, 1, memory_order_relaxed);
  for (int i = 0; i < relay.nthreads; i++) {
    struct thread *t = &relay.threads[(start + (unsigned)i) % (unsigned)relay.nthreads];
    int64_t n = atomic_load_explicit(&t->active, memory_order_relaxed);
    if (n < fewest) {
      fewest = n;
      best = t;
    }
  }
  return best;
}

uint64_t conn_id(struct thread *t) {
  return ((atomic_fetch_add_explicit(&t->next_seq, 1, memory_order_relaxed) + 1) << THREAD_BITS) | (uint64_t)t->index;
}

struct thread *thread_of(uint64_t id) {
  unsigned index = (unsigned)(id & ((1u << THREAD_BITS) - 1));
  return index < (unsigned)relay.nthreads ? &relay.threads[index] : NULL;
}

/* A new connection of this thread: its id, and a place in the thread's list. */
void conn_link(struct thread *t, struct conn *c) {
  if (!c->id) c->id = conn_id(t); /* adopted and resumed ones got theirs from JavaScript's call */
  c->thread = t;
  c->next = t->conns;
  if (t->conns) t->conns->prev = c;
  t->conns = c;
}

void park_index(struct thread *t, struct conn *c, bool on) {
  if (c->indexed == on) return;
  struct conn **bucket = &t->parked[(c->id >> THREAD_BITS) % PARKED_BUCKETS];
  if (on) {
    c->hnext = *bucket;
    *bucket = c;
  } else {
    while (*bucket && *bucket != c) bucket = &(*bucket)->hnext;
    if (*bucket) *bucket = c->hnext;
    c->hnext = NULL;
  }
  c->indexed = on;
}

/* A parked connection by id, or NULL (it ended, or a restart took it). */
struct conn *conn_find(struct thread *t, uint64_t id) {
  for (struct conn *c = t->parked[(id >> THREAD_BITS) % PARKED_BUCKETS]; c; c = c->hnext)
    if (c->id == id && !c->closed) return c;
  return NULL;
}

/* EV_DIALED: how a connect TypeScript asked for went (why: owned, or NULL). */
void dialed(uint64_t id, int err, int slot, char *why) {
  struct event *ev = new_event(EV_DIALED);
  if (!ev) return free(why);
  ev->id = id;
  ev->err = err;
  ev->slot = slot;
  ev->data = why;
  ev->len = why ? strlen(why) : 0;
  push_event(ev);
}

/* C_DIAL: TypeScript's hold-and-retry chose a target for a parked client. */
static void run_dial(struct thread *t, struct conn *c, uint64_t id, int slot) {
  if (!c || c->phase != PH_PARKED || c->parked == PK_QUEUED) return dialed(id, ECANCELED, slot, NULL);
  int err = 0;
  if (dial_start(t, c, slot, true, &err) < 0) dialed(id, err, slot, NULL);
}

/* C_START: a previous process's session, relayed on from where it was. */
static void run_start(struct thread *t, struct conn *c) {
  conn_link(t, c);
  source_carried(t, c);
  c->phase = PH_RELAY;
  c->last_active = t->now;
  count_active(t, c, true);
  note_timeouts(t, c);
  update_interest(t, c);
  /* Its directions may have data waiting in the kernel: read both now. */
  side_event(t, &c->client, EPOLLIN | EPOLLOUT);
}

/* C_CLOSE_ALL: every connection (drain-timeout), or the sessions on some targets (marked DOWN). */
static void run_close_all(struct thread *t, const struct command *cmd) {
  for (struct conn *c = t->conns, *n; c; c = n) {
    n = c->next;
    if (cmd->slots) {
      bool on = false;
      for (int i = 0; i < cmd->nslots && !on; i++) on = c->slot == cmd->slots[i];
      if (!on || c->phase != PH_RELAY) continue;
    }
    conn_end(t, c, (enum reason)cmd->arg, 0, true);
  }
}

/* ---- a restart --------------------------------------------------------------------------- */

/* TLS state lives in OpenSSL, in this process: such a connection cannot be carried. */
static bool conn_is_tls(const struct conn *c) {
  return c->tls_done || c->phase == PH_HANDSHAKE || c->server.ssl != NULL;
}

/* C_HANDOVER: stop reading the plain sessions the fd store has room for,
   and hand back at once the clients waiting for TypeScript. TLS sessions
   (their state lives in OpenSSL, in this process) go on until the grace
   ends, then close; so do the sessions beyond the store's room (TypeScript
   drains them). */
static void begin_handover(struct thread *t, int grace_ms) {
  t->handing_over = true;
  t->handover_deadline = t->now + grace_ms;
  t->handover_closed_tls = t->handover_closed_full = 0;
  /* Allocated now, so that the end of the handover can always be told. */
  t->handover_done = failpoint("handover-done") ? NULL : new_event(EV_HANDOVER_DONE);
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    if (c->phase == PH_PROXY) {
      /* Half a PROXY header (microseconds' worth) is not worth carrying: its front connects again. */
      conn_end(t, c, R_DROPPED, 0, true);
      continue;
    }
    if (c->phase == PH_DIALING || c->phase == PH_TARGET_TLS) {
      /* A connect under way is given up: the client waits again, for the next process. */
      set_interest(t, &c->server, 0);
      tls_free(&c->server);
      close(c->server.fd);
      c->server.fd = -1;
      c->deadline = 0;
      c->phase = PH_PARKED;
    }
    bool tls = conn_is_tls(c);
    if (c->phase == PH_PARKED && !tls) {
      conn_hand_back(t, c);
    } else if (c->phase == PH_RELAY && !tls && atomic_fetch_sub(&relay.handover_budget, 1) > 0) {
      c->handing = true;
      update_interest(t, c);
    }
  }
}

/* After each turn of a handover: hand back every session whose buffers are
   empty; at the deadline close those whose peer would not take their bytes,
   and the TLS ones. Then tell JavaScript this thread is done. */
static void handover_step(struct thread *t) {
  bool late = t->now >= t->handover_deadline, waiting = false;
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    bool tls = conn_is_tls(c);
    if (!c->handing && !tls) continue;
    if (c->handing && !c->up.pending.len && !c->down.pending.len) {
      conn_hand_back(t, c);
    } else if (late) {
      conn_end(t, c, R_SHUTDOWN, 0, true);
      if (tls) t->handover_closed_tls++;
      else t->handover_closed_full++;
    } else {
      waiting = true;
    }
  }
  if (waiting) return;
  t->handing_over = false;
  struct event *ev = t->handover_done;
  t->handover_done = NULL;
  if (!ev) return; /* not allocated: JavaScript's deadline ends the wait */
  ev->listener = t->index;
  ev->reason = t->handover_closed_tls;
  ev->why = t->handover_closed_full;
  push_event(ev);
}

/* ---- a thread's own work ----------------------------------------------------------------- */

static void run_commands(struct thread *t) {
  uint64_t count;
  ssize_t unused = read(t->wakeup_fd, &count, sizeof count);
  (void)unused;
  pthread_mutex_lock(&t->lock);
  struct command *cmd = t->head;
  t->head = t->tail = NULL;
  pthread_mutex_unlock(&t->lock);
  policy_enter(t); /* what JavaScript published before it sent these */
  while (cmd) {
    struct command *next = cmd->next;
    struct conn *c = cmd->id ? conn_find(t, cmd->id) : NULL;
    switch (cmd->kind) {
    case C_START:
      run_start(t, cmd->conn);
      break;
    case C_ADOPT:
      conn_link(t, cmd->conn);
      source_carried(t, cmd->conn);
      /* A previous process's client accepted on a TLS listener: this process's TLS for its handshake. */
      if (cmd->conn->before_tls && t->policy && t->policy->tls && SSL_CTX_up_ref(t->policy->tls) == 1) cmd->conn->tls_ctx = t->policy->tls;
      /* js_adopt counted a queued one already; conn_park counts it again. */
      if (cmd->conn->parked == PK_QUEUED) atomic_fetch_sub(&shared.queued, 1);
      conn_park(t, cmd->conn, cmd->conn->parked, 0, -1, NULL);
      break;
    case C_DIAL:
      run_dial(t, c, cmd->id, cmd->arg);
      break;
    case C_PROCEED:
      if (c && c->phase == PH_PARKED && c->parked == PK_HELD_BEFORE_TLS) {
        conn_unpark(t, c);
        continue_admitted(t, c);
      }
      break;
    case C_ADMIT:
      if (c && c->phase == PH_PARKED && c->parked == PK_QUEUED) {
        conn_unpark(t, c);
        c->admitted = true; /* JavaScript counted it in shared.admitted (js_admit) */
        continue_admitted(t, c);
      } else {
        atomic_fetch_sub(&shared.admitted, 1); /* it ended meanwhile: the place is free again */
      }
      break;
    case C_CLOSE:
      if (c && c->phase == PH_PARKED) conn_end(t, c, (enum reason)cmd->arg, cmd->arg2, true);
      break;
    case C_CLOSE_ALL:
      run_close_all(t, cmd);
      free(cmd->slots);
      break;
    case C_LISTEN:
      listener_poll(t, cmd->arg, true);
      break;
    case C_UNLISTEN:
      t->listeners[cmd->arg].paused_until = 0;
      listener_poll(t, cmd->arg, false);
      listener_unpolled(cmd->arg);
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
    case C_ACCEPTED:
      atomic_fetch_sub_explicit(&t->active, 1, memory_order_relaxed); /* (hand_to counted it ahead) */
      if (t->handing_over || !t->policy) close(cmd->arg);
      else admit_new(t, cmd->arg2, cmd->arg, &cmd->peer, cmd->peer_len);
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

static int wait_timeout(struct thread *t) {
  int64_t wake = 0;
  if (t->sweep_ms) wake = t->next_sweep;
  if (t->handing_over && (!wake || t->handover_deadline < wake)) wake = t->handover_deadline;
  if (t->next_resume && (!wake || t->next_resume < wake)) wake = t->next_resume;
  if (t->lazy_owner) {
    int lazy = events_due_in(t->now);
    if (lazy < 0) t->lazy_owner = false; /* delivered or asked for: nothing to wake for */
    else if (!wake || t->now + lazy < wake) wake = t->now + lazy;
  }
  if (!wake) return -1;
  return wake > t->now ? (int)(wake - t->now) : 0;
}

static void *thread_main(void *arg) {
  struct thread *t = arg;
  struct epoll_event events[EVENTS_PER_WAIT];
  t->now = now_ms();
  while (!t->stopping) {
    int timeout = wait_timeout(t);
    policy_leave(t); /* asleep, it reads no snapshot */
    int n = epoll_wait(t->epfd, events, EVENTS_PER_WAIT, timeout);
    t->now = now_ms();
    policy_enter(t);
    for (int i = 0; i < n; i++) {
      enum pollable_kind *kind = events[i].data.ptr;
      switch (*kind) {
      case P_WAKEUP: run_commands(t); break;
      case P_SIDE: side_event(t, (struct side *)kind, events[i].events); break;
      case P_LISTENER: accept_ready(t, (struct thread_listener *)kind); break;
      }
    }
    if (t->next_resume && t->now >= t->next_resume) resume_listeners(t);
    if (t->handing_over) handover_step(t);
    free_dead(t);
    if (t->sweep_ms && t->now >= t->next_sweep) {
      sweep(t);
      free_dead(t);
    }
    events_due(t->now);
  }
  policy_leave(t);
  /* Stopped: JavaScript has drained or closed every session; whatever is left goes silently. */
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    if (c->client.fd >= 0) close(c->client.fd);
    if (c->server.fd >= 0) close(c->server.fd);
    c->client.fd = c->server.fd = -1;
    free_conn(c);
  }
  t->conns = NULL;
  return NULL;
}

static void thread_cleanup(struct thread *t) {
  free_dead(t);
  for (struct command *cmd = t->head, *next; cmd; cmd = next) {
    next = cmd->next;
    if (cmd->kind == C_ACCEPTED) close(cmd->arg);
    if (cmd->conn) {
      if (cmd->conn->client.fd >= 0) close(cmd->conn->client.fd);
      if (cmd->conn->server.fd >= 0) close(cmd->conn->server.fd);
      cmd->conn->client.fd = cmd->conn->server.fd = -1;
      free_conn(cmd->conn);
    }
    free(cmd->slots);
    free(cmd);
  }
  t->head = t->tail = NULL;
  free(t->handover_done);
  t->handover_done = NULL;
  if (t->epfd >= 0) close(t->epfd);
  if (t->wakeup_fd >= 0) close(t->wakeup_fd);
  free(t->readbuf);
  pthread_mutex_destroy(&t->lock);
}

/* Start n threads; on any failure the ones started are stopped again and
   everything is released. Returns 0 or -errno. */
int thread_start_all(int n) {
  for (int i = 0; i < n; i++) {
    struct thread *t = &relay.threads[i];
    memset(t, 0, sizeof *t);
    t->index = i;
    t->wakeup_kind = P_WAKEUP;
    for (int k = 0; k < MAX_LISTENERS; k++) t->listeners[k] = (struct thread_listener){ .kind = P_LISTENER, .index = k };
    pthread_mutex_init(&t->lock, NULL);
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->wakeup_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    t->readbuf = malloc(READ_SIZE);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &t->wakeup_kind };
    int err = 0;
    if (t->epfd < 0 || t->wakeup_fd < 0 || !t->readbuf || epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wakeup_fd, &ev) < 0) err = ENOMEM;
    else if (failpoint("thread-start") || pthread_create(&t->tid, NULL, thread_main, t) != 0) err = EAGAIN;
    if (err) {
      thread_cleanup(t);
      relay.nthreads = i;
      thread_stop_all();
      return -err;
    }
    relay.nthreads = i + 1;
  }
  return 0;
}

/* End every thread and free what they own (their sessions were drained or closed). */
void thread_stop_all(void) {
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (cmd) {
      cmd->kind = C_STOP;
      send_command(&relay.threads[i], cmd);
    } else {
      relay.threads[i].stopping = true; /* read at its next turn; the eventfd wakes it */
      uint64_t one = 1;
      ssize_t unused = write(relay.threads[i].wakeup_fd, &one, sizeof one);
      (void)unused;
    }
  }
  for (int i = 0; i < relay.nthreads; i++) {
    pthread_join(relay.threads[i].tid, NULL);
    thread_cleanup(&relay.threads[i]);
  }
  relay.nthreads = 0;
}
