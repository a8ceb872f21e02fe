/* Accepting: every relay thread polls the shared listening sockets and
 * admits its own clients, under the policy snapshot.
 *
 * systemd passes one fd per port, so SO_REUSEPORT is out: each thread adds
 * each listening socket to its epoll set with EPOLLEXCLUSIVE, and the
 * kernel wakes one waiting thread per new connection instead of all. An
 * exclusive entry cannot be modified (EPOLL_CTL_MOD), so pausing after
 * EMFILE is a DEL and, ACCEPT_PAUSE_MS later, an ADD. A listener closes
 * only after every thread has taken it out of its set; one passed by
 * systemd is never shut down, since systemd keeps listening on it.
 *
 * A client's steps, in order: accept → from a trusted front, its PROXY
 * header (--accept-proxy) → the access list, a UNIX client's credentials
 * (--allow-uid/-gid) and its source's limits (limits.c) → a place under
 * max-conn (or TypeScript's queue, behind those already waiting) → the TLS
 * handshake, on a TLS listener, with the certificate's identity checked in
 * it (identity.c) → connect to the first target of the round → relay.
 * Whatever is not routine parks the client for TypeScript.
 */
#include "dataplane.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct listener listeners[MAX_LISTENERS];
int nlisteners;

/* Add a listening socket to this thread's epoll set, or take it out. */
void listener_poll(struct thread *t, int index, bool on) {
  struct thread_listener *tl = &t->listeners[index];
  if (tl->polled == on) return;
  if (on) {
    struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = tl };
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, listeners[index].fd, &ev) != 0) return;
  } else {
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, listeners[index].fd, NULL);
  }
  tl->polled = on;
}

/* Listeners paused after EMFILE whose pause is over go back into the set. */
void resume_listeners(struct thread *t) {
  t->next_resume = 0;
  for (int i = 0; i < nlisteners; i++) {
    struct thread_listener *tl = &t->listeners[i];
    if (!tl->paused_until) continue;
    if (t->now >= tl->paused_until) {
      tl->paused_until = 0;
      if (atomic_load(&listeners[i].used)) listener_poll(t, i, true);
    } else if (!t->next_resume || tl->paused_until < t->next_resume) {
      t->next_resume = tl->paused_until;
    }
  }
}

static void pause_listener(struct thread *t, struct thread_listener *tl) {
  listener_poll(t, tl->index, false);
  tl->paused_until = t->now + ACCEPT_PAUSE_MS;
  if (!t->next_resume || tl->paused_until < t->next_resume) t->next_resume = tl->paused_until;
}

/* The connect to a target ended: relaying, or why not. A connect TypeScript
   asked for (dial) is told either way and stays parked on failure; the fast
   path's first try parks the client for TypeScript to hold. */
static void dial_done(struct thread *t, struct conn *c, int err, char *why) {
  int slot = c->dial_slot;
  if (!err) {
    atomic_fetch_add_explicit(&shared.slots[slot].ok, 1, memory_order_relaxed);
    if (c->dial_for_js) dialed(c->id, 0, slot, NULL); /* before any END of the session it starts */
    conn_unpark(t, c);
    c->deadline = 0;
    return relay_begin(t, c, c->server.fd, slot);
  }
  set_interest(t, &c->server, 0);
  tls_free(&c->server);
  if (c->server.fd >= 0) close(c->server.fd);
  c->server.fd = -1;
  c->deadline = 0;
  if (c->dial_for_js) {
    c->phase = PH_PARKED;
    dialed(c->id, err, slot, why);
    return;
  }
  conn_park(t, c, PK_HELD, err, slot, why);
}

/* Whether sessions to this target speak TLS to it (--target-tls, TCP targets only). */
static bool speaks_tls(const struct thread *t, const struct target_ref *target) {
  return target && target->tls_name[0] && t->policy->target_tls;
}

/* Connected at the socket level: over TLS its handshake comes next. */
static void connected(struct thread *t, struct conn *c) {
  const struct target_ref *target = policy_target(t->policy, c->dial_slot);
  if (speaks_tls(t, target)) {
    if (!tls_target_begin(t, c, target)) return dial_done(t, c, ENOMEM, NULL);
    return dial_step(t, c, EPOLLOUT);
  }
  dial_done(t, c, 0, NULL);
}

/* Over loopback (or a very near host) a TCP connect has usually finished by
   the time connect(2) returns EINPROGRESS: the handshake's packets are
   processed before the call returns. One poll(2) then saves the round
   through epoll (two epoll_ctl, a wake-up, a getsockopt). Anything but a
   clean POLLOUT (still in SYN_SENT: none; refused: POLLERR) takes the usual
   way. Only for plain targets: a TLS handshake goes through epoll anyway,
   under the attempt's deadline that the usual way sets. */
static bool connect_finished(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLOUT };
  return poll(&p, 1, 0) == 1 && p.revents == POLLOUT;
}

/* Start connecting c to a target of the snapshot: 1 done (relaying, or parked
   again if that failed at once for a dial), 0 under way (PH_DIALING or
   PH_TARGET_TLS, with the attempt's deadline), -1 failed at once (*err). */
int dial_start(struct thread *t, struct conn *c, int slot, bool for_js, int *err) {
  const struct target_ref *target = t->policy ? policy_target(t->policy, slot) : NULL;
  if (!target) {
    *err = ENOENT; /* removed by a reload, gone from its directory, or a name not resolved yet */
    return -1;
  }
  if (failpoint("dial")) {
    *err = ECONNREFUSED;
    return -1;
  }
  int fd = socket(target->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  if (target->addr.ss_family != AF_UNIX) {
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  }
  int rc;
  do rc = connect(fd, (const struct sockaddr *)&target->addr, target->addr_len);
  while (rc < 0 && errno == EINTR);
  if (rc < 0 && errno != EINPROGRESS) {
    /* A UNIX connect(2) completes or fails at once (EAGAIN: its queue is full). */
    *err = errno;
    close(fd);
    return -1;
  }
  if (rc < 0 && !speaks_tls(t, target) && connect_finished(fd)) rc = 0;
  c->server.fd = fd;
  c->server.hup = false;
  c->dial_slot = slot;
  c->dial_for_js = for_js;
  if (rc == 0) {
    connected(t, c);
    return 1;
  }
  /* TCP: under way. Its own deadline, so that a host dropping SYNs costs one attempt. */
  c->phase = PH_DIALING;
  c->deadline = t->now + (t->policy->attempt_timeout ? t->policy->attempt_timeout : 2000);
  note_timeouts(t, c);
  set_interest(t, &c->client, 0);
  set_interest(t, &c->server, EPOLLOUT);
  return 0;
}

/* The target's socket is ready: the connect finished, or the TLS handshake moved. */
void dial_step(struct thread *t, struct conn *c, uint32_t events) {
  (void)events;
  if (c->phase == PH_DIALING) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->server.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == EINPROGRESS) return;
    if (err) return dial_done(t, c, err, NULL);
    return connected(t, c);
  }
  char *why = NULL;
  int err = 0;
  int rc = tls_target_step(t, c, &why, &err);
  if (rc > 0) dial_done(t, c, 0, NULL);
  else if (rc < 0) dial_done(t, c, err, why);
}

/* The attempt's deadline passed (threads.c's sweep). */
void dial_timeout(struct thread *t, struct conn *c) {
  dial_done(t, c, ETIMEDOUT, NULL);
}

/* Admitted (and through its handshake, on a TLS listener): the first target of
   a round, or parked for TypeScript to hold and try the others. */
void admit_to_target(struct thread *t, struct conn *c) {
  const struct policy *p = t->policy;
  int order[MAX_TARGETS];
  int n = candidates(p, -1, order, MAX_TARGETS);
  if (n == 0) return conn_park(t, c, PK_HELD, ENOENT, -1, NULL);
  int err = 0;
  if (dial_start(t, c, order[0], false, &err) < 0) conn_park(t, c, PK_HELD, err, order[0], NULL);
}

/* Whether any target may take a client now (not every one marked DOWN). */
static bool target_likely(const struct policy *p) {
  for (int i = 0; i < p->ntargets; i++)
    if (!p->targets[i].drained && p->targets[i].state != TS_DOWN) return true;
  return false;
}

/* Refused before anything of it was read (what for, and the why of a bad
   PROXY header: owned): told to TypeScript, which counts it and logs it
   within its limits, and closed. */
static void refuse(struct thread *t, struct conn *c, enum deny_reason why, char *text) {
  struct event *ev = new_event(EV_DENIED);
  if (ev) {
    event_from_conn(ev, c);
    ev->why = (int)why;
    ev->data = text;
    ev->len = text ? strlen(text) : 0;
    push_event(ev);
  } else {
    free(text);
  }
  conn_end(t, c, R_DROPPED, 0, false);
}

/* Who the client is is known now (its own address, or the one its front's
   PROXY header named): the access list, a UNIX client's credentials, its
   source's limits, then a place under max-conn. */
static void admit_client(struct thread *t, struct conn *c) {
  const struct policy *p = t->policy;
  if (!access_permits(p, &c->peer)) return refuse(t, c, DENY_ACCESS, NULL);
  if (c->peer.ss_family == AF_UNIX && !credentials_permit(p, c->client.fd, &c->cred)) return refuse(t, c, DENY_CREDENTIALS, NULL);
  if (source_key_of(&c->peer, p->limits.prefix_v6, &c->source)) {
    enum source_verdict v = source_admit(&c->source, &p->limits, t->now);
    if (v == SV_NOMEM) return conn_end(t, c, R_DROPPED, ENOMEM, false);
    if (v != SV_OK) return refuse(t, c, v == SV_CONN ? DENY_CONN_PER_SOURCE : DENY_RATE_PER_SOURCE, NULL);
    c->source_counted = true;
  }
  /* Its TLS is decided now: a reload that turns TLS on or off while it waits changes new clients only. */
  if (p->tls && SSL_CTX_up_ref(p->tls) == 1) {
    c->tls_ctx = p->tls;
    c->before_tls = true;
  }
  /* Taken now: a reload changes new sessions only. */
  c->client_timeout = p->client_timeout;
  c->server_timeout = p->server_timeout;
  c->retries_left = -1; /* the target's, once it has one (relay_begin) */
  if (!take_admission(p)) return conn_park(t, c, PK_QUEUED, 0, -1, NULL);
  c->admitted = true;
  continue_admitted(t, c);
}

/* ---- a PROXY header from a trusted front (--accept-proxy) --------------------------------- */

static void proxy_refuse(struct thread *t, struct conn *c, const char *why) {
  refuse(t, c, DENY_PROXY, strdup(why));
}

/* The front's socket is readable. Only the header's own bytes are taken out
   of the socket: peeked first, then as many read as belong to it (all of
   them until it ends), so that what follows (the client's first bytes, or
   its TLS ClientHello) stays for the relay or OpenSSL. */
void proxy_step(struct thread *t, struct conn *c) {
  uint8_t *buf = (uint8_t *)c->proxy_buf;
  ssize_t n;
  do n = recv(c->client.fd, buf + c->proxy_len, PROXY_MAX - c->proxy_len, MSG_PEEK);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  if (n <= 0) {
    char why[96];
    if (n < 0) snprintf(why, sizeof why, "%s while reading a PROXY header", strerrorname_np(errno) ? strerrorname_np(errno) : strerror(errno));
    else if (c->proxy_len == 0) snprintf(why, sizeof why, "closed before sending a PROXY header");
    else snprintf(why, sizeof why, "closed after %zu bytes of a PROXY header: truncated", c->proxy_len);
    return proxy_refuse(t, c, why);
  }
  size_t seen = c->proxy_len + (size_t)n;
  struct proxy_info info;
  int rc = proxy_parse(buf, seen, t->policy->accept_proxy, &info);
  if (rc < 0) return proxy_refuse(t, c, info.why);
  /* (a v1 line ends within 107 bytes and a v2 header says its length: proxy_parse refuses either before PROXY_MAX) */
  size_t take = rc > 0 ? (size_t)rc - c->proxy_len : (size_t)n;
  ssize_t got;
  do got = recv(c->client.fd, buf + c->proxy_len, take, 0);
  while (got < 0 && errno == EINTR);
  if (got != (ssize_t)take) return proxy_refuse(t, c, "the PROXY header's bytes could not be read back");
  c->proxy_len += take;
  if (rc == 0) return; /* more to come */
  free(c->proxy_buf);
  c->proxy_buf = NULL;
  c->deadline = 0;
  set_interest(t, &c->client, 0);
  if (!info.local) {
    memcpy(&c->peer, &info.src, info.src_len);
    c->peer_len = info.src_len;
    memcpy(&c->local, &info.dst, info.dst_len);
    c->local_len = info.dst_len;
    c->proxied = true;
  }
  admit_client(t, c);
}

/* Its header is read first, before anything else, within the client timeout (5 s without one: HAProxy's timeout client). */
static void proxy_begin(struct thread *t, struct conn *c) {
  c->proxy_buf = malloc(PROXY_MAX);
  if (!c->proxy_buf) return conn_end(t, c, R_DROPPED, ENOMEM, false);
  c->phase = PH_PROXY;
  uint32_t limit = t->policy->handshake_timeout;
  c->deadline = t->now + (limit ? limit : PROXY_DEFAULT_MS);
  note_timeouts(t, c);
  set_interest(t, &c->client, EPOLLIN);
  proxy_step(t, c);
}

/* No complete header within the deadline (threads.c's sweep). */
void proxy_timeout(struct thread *t, struct conn *c) {
  char why[96];
  uint32_t limit = t->policy->handshake_timeout;
  snprintf(why, sizeof why, "no complete PROXY header within %u ms (%zu bytes): late", limit ? limit : PROXY_DEFAULT_MS, c->proxy_len);
  proxy_refuse(t, c, why);
}

/* A new client on this thread, under the snapshot of this turn. */
void admit_new(struct thread *t, int index, int fd, const struct sockaddr_storage *sa, socklen_t len) {
  const struct policy *p = t->policy;
  struct conn *c = p ? conn_new(t, fd) : NULL;
  if (!c) {
    close(fd); /* out of memory, or no policy yet: nothing can be done for it */
    return;
  }
  memcpy(&c->peer, sa, len);
  c->peer_len = len;
  c->listener = index;
  if (sa->ss_family == AF_UNIX) read_peer_cred(c);
  conn_link(t, c);
  /* A front's clients are judged by the address its header names; anyone
     else by its own, and its bytes are relayed as they are. */
  if (p->accept_proxy && in_prefixes(p->proxy_from, p->nproxy_from, sa)) return proxy_begin(t, c);
  admit_client(t, c);
}

/* Under max-conn: on a TLS listener its handshake, then a target. */
void continue_admitted(struct thread *t, struct conn *c) {
  const struct policy *p = t->policy;
  if (c->tls_ctx && !c->tls_done) {
    /* Held before its handshake while no target can take it, so that a
       restart can carry it (a TLS session cannot be carried). */
    if (!target_likely(p)) return conn_park(t, c, PK_HELD_BEFORE_TLS, ENOENT, -1, NULL);
    if (!tls_begin(t, c, c->tls_ctx)) conn_end(t, c, R_DROPPED, ENOMEM, true);
    return;
  }
  admit_to_target(t, c);
}

/* The kernel wakes one waiting thread per connection, and an idle thread
   keeps winning: long sessions would pile up on it. So, as HAProxy's
   listeners do, a thread that has clearly more sessions than the least
   loaded one hands the new client over (one wake-up of that thread); in
   the common, balanced case the client stays where it was accepted. */
static struct thread *thread_for_new_client(struct thread *t) {
  int64_t mine = atomic_load_explicit(&t->active, memory_order_relaxed);
  struct thread *least = t;
  int64_t fewest = mine;
  /* Read-only, and from the next thread on: no shared cursor bounced between cores per accept. */
  for (int i = 1; i < relay.nthreads; i++) {
    struct thread *o = &relay.threads[(t->index + i) % relay.nthreads];
    int64_t n = atomic_load_explicit(&o->active, memory_order_relaxed);
    if (n < fewest) {
      fewest = n;
      least = o;
    }
  }
  return fewest + 1 < mine ? least : t;
}

static void hand_to(struct thread *dest, int index, int fd, const struct sockaddr_storage *sa, socklen_t len) {
  struct command *cmd = calloc(1, sizeof *cmd);
  if (!cmd) {
    close(fd);
    return;
  }
  cmd->kind = C_ACCEPTED;
  cmd->arg = fd;
  cmd->arg2 = index;
  memcpy(&cmd->peer, sa, len);
  cmd->peer_len = len;
  /* Counted now, so that the next accepts see it there. */
  atomic_fetch_add_explicit(&dest->active, 1, memory_order_relaxed);
  send_command(dest, cmd);
}

/* A listening socket is readable: accept what waits, up to ACCEPT_BATCH. */
void accept_ready(struct thread *t, struct thread_listener *tl) {
  struct listener *l = &listeners[tl->index];
  for (int i = 0; i < ACCEPT_BATCH && tl->polled; i++) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int fd = failpoint("accept-emfile") ? (errno = EMFILE, -1) : accept4(l->fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      atomic_fetch_add_explicit(&t->accepted, 1, memory_order_relaxed);
      struct thread *dest = thread_for_new_client(t);
      if (dest == t) admit_new(t, tl->index, fd, &sa, len);
      else hand_to(dest, tl->index, fd, &sa, len);
      continue;
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) break;
    if (err == EINTR || err == ECONNABORTED) continue;
    struct event *ev = new_event(EV_ACCEPT_ERROR);
    if (ev) {
      ev->listener = tl->index;
      ev->err = err;
      push_event(ev);
    }
    /* Out of descriptors or memory: the socket stays readable, so pause
       instead of spinning on it; the other threads do the same. */
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) pause_listener(t, tl);
    break;
  }
}

/* ---- listening sockets, set up from JavaScript ------------------------------------------ */

/* A bound (not yet listening) TCP socket for --listen: the fd, or -errno. No
   host: the IPv6 wildcard with IPv4 mapped in, as Node binds, or IPv4 alone. */
int bind_tcp(const char *host, int port) {
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints = { .ai_family = host[0] ? AF_UNSPEC : AF_INET6, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
  struct addrinfo *res;
  int rc = getaddrinfo(host[0] ? host : NULL, service, &hints, &res);
  if (rc != 0 && !host[0]) {
    hints.ai_family = AF_INET;
    rc = getaddrinfo(NULL, service, &hints, &res);
  }
  if (rc != 0) return rc == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;
  int err = EADDRNOTAVAIL, fd = -1;
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
  return fd >= 0 ? fd : -err;
}

/* A bound (not yet listening) UNIX stream socket: at `path`, or in the
   abstract namespace when path starts with NUL (len counts it). The fd, or -errno. */
int bind_unix(const char *path, size_t len) {
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (len == 0 || len > sizeof sa.sun_path - 1) return -ENAMETOOLONG;
  memcpy(sa.sun_path, path, len);
  socklen_t salen = path[0] ? (socklen_t)sizeof sa : (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (bind(fd, (struct sockaddr *)&sa, salen) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

/* Listen on fd (bound here, or passed by systemd) and let every thread accept
   on it: the listener's index, or -errno. */
int listener_open(int fd, int backlog, bool passed) {
  if (nlisteners >= MAX_LISTENERS) return -EMFILE;
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && (sa.ss_family == AF_INET || sa.ss_family == AF_INET6)) {
    int on = 1, idle = KEEPALIVE_IDLE_S;
    /* Set on the listening socket, Linux copies them to every accepted one:
       no setsockopt(2) per connection. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  }
  if (listen(fd, backlog) < 0) return -errno;
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  int index = nlisteners++;
  listeners[index] = (struct listener){ .fd = fd, .passed = passed };
  atomic_store(&listeners[index].used, true);
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) continue; /* that thread does not accept here; the others do */
    cmd->kind = C_LISTEN;
    cmd->arg = index;
    send_command(&relay.threads[i], cmd);
  }
  return index;
}

/* Stop accepting there: every thread takes it out of its set (C_UNLISTEN), and
   the last one closes it and tells JavaScript (EV_UNLISTENED). */
void listener_close(int index) {
  if (index < 0 || index >= nlisteners || !atomic_load(&listeners[index].used)) return;
  atomic_store(&listeners[index].used, false);
  atomic_store(&listeners[index].acks, 0);
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) {
      listener_unpolled(index); /* counted as done: it cannot accept after used = false anyway */
      continue;
    }
    cmd->kind = C_UNLISTEN;
    cmd->arg = index;
    send_command(&relay.threads[i], cmd);
  }
}

/* One thread no longer polls the listener; the last one closes it. */
void listener_unpolled(int index) {
  if (atomic_fetch_add(&listeners[index].acks, 1) + 1 != relay.nthreads) return;
  close(listeners[index].fd);
  struct event *ev = new_event(EV_UNLISTENED);
  if (!ev) return;
  ev->listener = index;
  push_event(ev);
}
