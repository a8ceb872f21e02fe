/* The relay core: one session's bytes, both ways, until it ends.
 *
 * Shape, after systemd's socket-proxyd.c: one struct per connection, one
 * function per step. A read goes into the thread's buffer and straight out
 * to the other side; only what the other side cannot take right now is
 * copied into a per-direction pending buffer, and while one is pending the
 * source is not read (backpressure). The epoll interest of each side is
 * derived from that state in one place (update_interest). EOF on one side
 * becomes a half-close of the other; a session is done when both directions
 * are. Each side moves its bytes through a transport (struct xprt: a plain
 * socket or TLS), so the code here is the same for both.
 *
 * A session that ends before all its bytes were delivered (an idle timeout,
 * a drain, a restart's grace, a target marked DOWN, the other side's reset)
 * ends the side still owed bytes with a reset, never with a FIN a client
 * could take for the end of a complete reply.
 */
#include "dataplane.h"

#include <errno.h>
#include <linux/sockios.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* ---- the plain transport ------------------------------------------------------------- */

static ssize_t raw_recv(struct side *s, char *buf, size_t len) {
  ssize_t n;
  do n = recv(s->fd, buf, len, 0);
  while (n < 0 && errno == EINTR);
  return n;
}

static ssize_t raw_send(struct side *s, const char *buf, size_t len) {
  ssize_t w;
  do w = send(s->fd, buf, len, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  return w;
}

static void raw_shut_wr(struct side *s) {
  shutdown(s->fd, SHUT_WR); /* ENOTCONN once the peer is gone changes nothing */
}

const struct xprt xprt_raw = { .recv = raw_recv, .send = raw_send, .shut_wr = raw_shut_wr, .short_read_drains = true };

/* ---- a connection's life ------------------------------------------------------------- */

/* A connection for a thread's client (t), or for JavaScript to hand to a thread (NULL). */
struct conn *conn_new(struct thread *t, int client_fd) {
  struct conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->thread = t;
  c->client = (struct side){ .kind = P_SIDE, .fd = client_fd, .xprt = &xprt_raw, .read_wants = EPOLLIN, .write_wants = EPOLLOUT, .outq = -1, .conn = c };
  c->server = (struct side){ .kind = P_SIDE, .fd = -1, .xprt = &xprt_raw, .read_wants = EPOLLIN, .write_wants = EPOLLOUT, .outq = -1, .conn = c };
  c->slot = -1;
  c->listener = -1;
  c->last_active = t ? t->now : now_ms();
  c->started_at = wall_ms();
  return c;
}

/* A client of a UNIX listener has no address: its credentials say who it is. */
void read_peer_cred(struct conn *c) {
  socklen_t len = sizeof c->cred;
  if (getsockopt(c->client.fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) != 0) c->cred = (struct ucred){ 0 };
}

void free_conn(struct conn *c) {
  if (c->tls_ctx) SSL_CTX_free(c->tls_ctx);
  tls_free(&c->client);
  tls_free(&c->server);
  free(c->up.pending.data);
  free(c->down.pending.data);
  free(c->replay);
  free(c->peer_cn);
  free(c->peer_san);
  free(c->refusal);
  free(c->proxy_buf);
  free(c);
}

void set_interest(struct thread *t, struct side *s, uint32_t want) {
  if (s->fd < 0) return;
  if (s->hup || want == 0) {
    /* Level-triggered EPOLLHUP cannot be masked: leave the set, and let the
       other side's events drive this one (its reads never block now). A
       side nobody waits on leaves it too (a parked client). */
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

/* Read a side while its direction has nothing pending; write a side while it
   has. A parked client is not read: its bytes wait in the kernel. */
void update_interest(struct thread *t, struct conn *c) {
  if (c->phase == PH_PARKED) {
    set_interest(t, &c->client, 0);
    return;
  }
  if (c->phase != PH_RELAY) return; /* a handshake or a connect: derived from what it waits for */
  bool reads = !c->handing;
  struct side *cl = &c->client, *sv = &c->server;
  set_interest(t, cl, (reads && !c->up.eof && !c->up.pending.len ? cl->read_wants : 0) | (c->down.pending.len ? cl->write_wants : 0));
  set_interest(t, sv, (reads && !c->down.eof && !c->down.pending.len ? sv->read_wants : 0) | (c->up.pending.len ? sv->write_wants : 0));
}

static void unlink_conn(struct thread *t, struct conn *c) {
  if (c->prev) c->prev->next = c->next;
  else t->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = NULL;
  c->next = t->dead; /* freed at the end of this turn: events already fetched may point at it */
  t->dead = c;
  c->closed = true;
}

void count_active(struct thread *t, struct conn *c, bool on) {
  if (c->counted_active == on) return;
  c->counted_active = on;
  atomic_fetch_add_explicit(&t->active, on ? 1 : -1, memory_order_relaxed);
  if (c->slot >= 0 && c->slot < MAX_SLOTS) atomic_fetch_add_explicit(&shared.slots[c->slot].active, on ? 1 : -1, memory_order_relaxed);
}

/* Bytes this side's peer has not received yet: ours, or in the kernel's send queue. */
static bool owed(const struct side *s, const struct pending *towards) {
  if (s->fd < 0) return false;
  if (towards->len > towards->off) return true;
  int outq = 0;
  return ioctl(s->fd, SIOCOUTQ, &outq) == 0 && outq > 0;
}

/* A reset instead of a FIN (SO_LINGER 0), on a socket that has one (TCP). */
static bool reset_side(struct side *s) {
  struct linger hard = { .l_onoff = 1, .l_linger = 0 };
  return setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard) == 0;
}

static void close_side(struct side *s) {
  if (s->fd < 0) return;
  close(s->fd);
  s->fd = -1;
}

/* Its session no longer counts for its source (limits.c). */
static void source_done(struct thread *t, struct conn *c) {
  if (!c->source_counted) return;
  c->source_counted = false;
  static const struct source_limits none;
  const struct policy *p = t ? t->policy : NULL;
  source_release(&c->source, p ? &p->limits : &none);
}

/* A previous process's session or waiting client, taken on: counted for its source again. */
void source_carried(struct thread *t, struct conn *c) {
  const struct policy *p = t->policy;
  if (c->source_counted || !source_key_of(&c->peer, p ? p->limits.prefix_v6 : 64, &c->source)) return;
  source_add(&c->source, t->now);
  c->source_counted = true;
}

/* The one way a connection ends: both sockets closed, its counts released,
   and one EV_END for its log entry (a dropped queued client has none). A
   forced end resets each side still owed bytes; an error on one side is
   passed on to the other as a reset. */
void conn_end(struct thread *t, struct conn *c, enum reason reason, int err, bool forced) {
  if (c->closed) return;
  int resets = 0;
  if (reason == R_SERVER_ERROR && c->server.fd >= 0) {
    if (reset_side(&c->client)) resets |= 1;
  } else if (reason == R_CLIENT_ERROR) {
    if (c->server.fd >= 0 && reset_side(&c->server)) resets |= 2;
  } else if (forced) {
    if (owed(&c->client, &c->down.pending) && reset_side(&c->client)) resets |= 1;
    if (owed(&c->server, &c->up.pending) && reset_side(&c->server)) resets |= 2;
  }
  close_side(&c->client);
  close_side(&c->server);
  count_active(t, c, false);
  release_admission(c);
  source_done(t, c);
  conn_unpark(t, c);
  unlink_conn(t, c);
  if (reason == R_DROPPED) return;
  struct event *ev = new_event(EV_END);
  if (!ev) return; /* out of memory: the session is gone, only its log line is lost */
  event_from_conn(ev, c);
  ev->reason = (int)reason;
  ev->err = err;
  ev->flag = resets != 0;
  ev->directions_done = resets; /* END: which sides got a reset (1 client, 2 target) */
  ev->ended_at = wall_ms();
  /* Urgent only when clients queue for the place it freed (release_admission above). */
  if (atomic_load(&shared.queued) > 0) push_event(ev);
  else push_event_lazy(t, ev);
}

/* Waiting for TypeScript: not polled, its bytes wait in the kernel. */
void conn_park(struct thread *t, struct conn *c, enum parked_why why, int err, int slot, char *reason) {
  c->phase = PH_PARKED;
  c->parked = why;
  count_active(t, c, false);
  if (why == PK_QUEUED) atomic_fetch_add(&shared.queued, 1);
  park_index(t, c, true);
  update_interest(t, c);
  struct event *ev = new_event(EV_PARKED);
  if (!ev) {
    free(reason);
    return conn_end(t, c, R_SHUTDOWN, ENOMEM, true);
  }
  event_from_conn(ev, c);
  ev->why = (int)why;
  ev->err = err;
  ev->slot = slot;
  ev->data = reason;
  ev->len = reason ? strlen(reason) : 0;
  push_event(ev);
}

/* No longer waiting for TypeScript (it goes on, ends or leaves). */
void conn_unpark(struct thread *t, struct conn *c) {
  if (c->phase == PH_PARKED && c->parked == PK_QUEUED) {
    atomic_fetch_sub(&shared.queued, 1);
    c->parked = PK_HELD;
  }
  park_index(t, c, false);
}

/* A restart takes it: its buffers are empty, every byte in flight sits in
   the kernel, and its fds go back to JavaScript, open, with what the next
   process needs to go on (a waiting client: server_fd -1). */
void conn_hand_back(struct thread *t, struct conn *c) {
  struct event *ev = new_event(EV_HANDED);
  if (!ev) return conn_end(t, c, R_SHUTDOWN, ENOMEM, true);
  set_interest(t, &c->client, 0);
  set_interest(t, &c->server, 0);
  event_from_conn(ev, c);
  ev->client_fd = c->client.fd;
  ev->server_fd = c->server.fd;
  ev->why = c->phase == PH_PARKED ? (int)c->parked : -1;
  ev->directions_done = (c->up.shut ? 1 : 0) | (c->down.shut ? 2 : 0);
  ev->flag = c->up.eof;
  ev->retries_left = c->retries_left;
  ev->before_tls = c->before_tls;
  /* Not answered yet: the next process may still send the request again
     (a session), or sends it first (a client between retries). */
  if (c->replaying || c->phase == PH_PARKED) {
    ev->data = c->replay;
    ev->len = c->replay_len;
    c->replay = NULL;
  }
  c->client.fd = c->server.fd = -1;
  count_active(t, c, false);
  release_admission(c);
  source_done(t, c);
  conn_unpark(t, c);
  unlink_conn(t, c);
  push_event(ev);
}

/* The target reset before answering (what a restart does to the requests
   still queued on its old socket): park the client with its bytes so far,
   for TypeScript to send them again on a new connection. */
static void conn_retry(struct thread *t, struct conn *c, int err) {
  int slot = c->slot;
  count_active(t, c, false);
  if (c->server.registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->server.fd, NULL);
  c->server.registered = false;
  tls_free(&c->server);
  close_side(&c->server);
  free(c->up.pending.data);
  c->up.pending = (struct pending){ 0 };
  c->retries_left--;
  conn_park(t, c, PK_RETRY, err, slot, NULL);
}

static void side_failed(struct thread *t, struct conn *c, struct side *s, int err) {
  bool server = s == &c->server;
  if (server && c->replaying && c->retries_left > 0 && !c->handing && (err == ECONNRESET || err == EPIPE)) return conn_retry(t, c, err);
  conn_end(t, c, server ? R_SERVER_ERROR : R_CLIENT_ERROR, err, true);
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

/* Write to side s; returns the bytes taken (0 when full), or -1 after ending
   the session. Bytes taken are activity: a reader slower than the idle
   timeout that keeps reading is not idle. */
static ssize_t write_side(struct thread *t, struct conn *c, struct side *s, const char *data, size_t n) {
  ssize_t w = s->xprt->send(s, data, n);
  if (w < 0) {
    side_failed(t, c, s, errno);
    return -1;
  }
  if (w > 0) {
    c->last_active = t->now;
    s->outq = -1; /* its queue grew: a quiet sweep takes a new baseline */
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
    conn_end(t, c, c->client_spoke_last ? R_SERVER_ERROR : R_CLIENT_ERROR, ENOMEM, true);
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
    ssize_t n = src->xprt->recv(src, t->readbuf, READ_SIZE);
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
       socket out of the set (hup) is read until EOF instead; TLS returns
       one record at a time, so it is read until it would block. */
    if (n < READ_SIZE && !src->hup && src->xprt->short_read_drains) break;
  }
  if (d->eof && !d->pending.len && !d->shut) {
    /* The last direction to finish ends the session, and close(2) sends
       that FIN itself: one system call less per session. (Its source is
       read to EOF, so no unread byte turns the close into a reset.) */
    struct direction *other = d == &c->up ? &c->down : &c->up;
    if (!other->shut || dst->ssl) dst->xprt->shut_wr(dst);
    d->shut = true;
  }
  return true;
}

/* After the moves: done when both directions are, else watch what the state needs. */
static void settle(struct thread *t, struct conn *c) {
  if (c->up.shut && c->down.shut) return conn_end(t, c, R_DONE, 0, false);
  update_interest(t, c);
}

/* Both directions: at the start of a session, when both may have work. */
static void pump(struct thread *t, struct conn *c) {
  if (!move(t, c, &c->client, &c->server, &c->up)) return;
  if (!move(t, c, &c->server, &c->client, &c->down)) return;
  settle(t, c);
}

/* What a v2 PROXY header tells of the client beyond its address (proxy.c):
   its TLS, as HAProxy's send-proxy-v2-ssl-cn says it, or its credentials. */
static void proxy_tlvs_of(const struct conn *c, struct proxy_tlvs *t) {
  memset(t, 0, sizeof *t);
  SSL *ssl = c->client.ssl;
  if (c->tls_done && ssl) {
    t->ssl = true;
    t->client = 0x01; /* PP2_CLIENT_SSL */
    t->verify = 1;
    t->authority = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    t->version = SSL_get_version(ssl);
    t->cipher = SSL_get_cipher_name(ssl);
    if (SSL_get0_peer_certificate(ssl)) {
      t->client |= 0x04; /* PP2_CLIENT_CERT_SESS */
      if (!SSL_session_reused(ssl)) t->client |= 0x02; /* PP2_CLIENT_CERT_CONN */
      t->verify = SSL_get_verify_result(ssl) == X509_V_OK ? 0 : 1;
      t->cn = c->peer_cn;
    }
  }
  if (c->cred.pid) {
    t->cred = true;
    t->pid = (uint32_t)c->cred.pid;
    t->uid = c->cred.uid;
    t->gid = c->cred.gid;
  }
}

/* The target is connected: relay, sending the PROXY header and a retried
   request's bytes first. */
void relay_begin(struct thread *t, struct conn *c, int server_fd, int slot) {
  const struct policy *p = t->policy;
  const struct target_ref *target = policy_target(p, slot);
  int allowed = target ? target->retries : 0;
  if (c->retries_left < 0) c->retries_left = allowed;
  c->server.fd = server_fd;
  c->server.hup = false;
  c->slot = slot;
  c->phase = PH_RELAY;
  /* A retry starts the target's side afresh; a client that ended before it
     stays ended, and the new connection gets that EOF after the replay. */
  c->up.shut = false;
  c->down = (struct direction){ 0 };
  c->send_proxy = p->send_proxy;
  count_active(t, c, true);
  struct proxy_tlvs tlvs;
  if (c->send_proxy) {
    if (!c->local_len) {
      c->local_len = sizeof c->local;
      if (getsockname(c->client.fd, (struct sockaddr *)&c->local, &c->local_len) != 0) c->local_len = 0;
    }
    proxy_tlvs_of(c, &tlvs);
  }
  size_t room = c->send_proxy ? proxy_header_room(&tlvs) : 0;
  if (room + c->replay_len) {
    char *data = malloc(room + c->replay_len);
    if (!data) return conn_end(t, c, R_SERVER_ERROR, ENOMEM, true);
    size_t header_len = c->send_proxy ? proxy_header(c->send_proxy, &c->peer, &c->local, &tlvs, data, room) : 0;
    if (c->replay_len) memcpy(data + header_len, c->replay, c->replay_len);
    c->up.pending = (struct pending){ .data = data, .len = header_len + c->replay_len };
  }
  /* Kept for a retry only while one is allowed (on this target), and only until it answers. */
  c->replaying = c->retries_left > 0 && allowed > 0;
  if (!c->replaying) stop_replay(c);
  c->last_active = t->now;
  note_timeouts(t, c);
  pump(t, c);
}

/* Only the directions an event concerns: readable s feeds the direction s is
   the source of, writable s drains the one it is the destination of. Pumping
   both would cost a recv(2) that returns EAGAIN on the other side per event.
   A TLS side may need to write to read, or read to write: both, then. */
void side_event(struct thread *t, struct side *s, uint32_t events) {
  struct conn *c = s->conn;
  if (c->closed) return;
  if (c->phase == PH_PROXY) return proxy_step(t, c);
  if (c->phase == PH_HANDSHAKE) return tls_handshake_step(t, c);
  if (c->phase == PH_DIALING || c->phase == PH_TARGET_TLS) {
    if (s == &c->server) dial_step(t, c, events);
    return;
  }
  if (c->phase != PH_RELAY) return;
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) return side_failed(t, c, s, err);
  }
  if (events & EPOLLHUP) s->hup = true; /* its reads never block now: read it to EOF below */
  bool client = s == &c->client;
  struct side *peer = client ? &c->server : &c->client;
  uint32_t out = s->ssl ? ~0u : (EPOLLOUT | EPOLLHUP | EPOLLERR);
  uint32_t in = s->ssl ? ~0u : (EPOLLIN | EPOLLHUP | EPOLLERR);
  if (events & out) {
    /* Drains what waits for s, then reads the peer, which was paused for it
       (and is the only way a peer out of the epoll set (hup) is read again). */
    if (!move(t, c, peer, s, client ? &c->down : &c->up)) return;
  }
  if (events & in) {
    if (!move(t, c, s, peer, client ? &c->up : &c->down)) return;
  }
  settle(t, c);
}

/* ---- idle timeouts --------------------------------------------------------------------- */

/* A session's timeouts set how often its thread sweeps: a twentieth of the
   shorter one within 10 ms–1 s, as the TypeScript relay does, so that a
   session closes at most a tenth late. The interval only shrinks, as older
   sessions keep their timeouts after a reload. */
void note_timeouts(struct thread *t, struct conn *c) {
  uint32_t cl = c->client_timeout, sv = c->server_timeout;
  uint32_t shortest = cl && sv ? (cl < sv ? cl : sv) : cl | sv;
  if (c->deadline) {
    uint32_t left = (uint32_t)(c->deadline > t->now ? c->deadline - t->now : 0);
    if (!shortest || left < shortest) shortest = left ? left : 1;
  }
  if (!shortest) return;
  uint32_t every = shortest / 20 < 10 ? 10 : shortest / 20 > 1000 ? 1000 : shortest / 20;
  if (!t->sweep_ms || every < t->sweep_ms) {
    t->sweep_ms = every;
    t->next_sweep = t->now + every;
  }
}

static enum reason idle_reason(const struct conn *c) {
  uint32_t cl = c->client_timeout, sv = c->server_timeout;
  if (cl == sv) return c->client_spoke_last ? R_SERVER_TIMEOUT : R_CLIENT_TIMEOUT;
  if (!cl) return R_SERVER_TIMEOUT;
  if (!sv) return R_CLIENT_TIMEOUT;
  return sv < cl ? R_SERVER_TIMEOUT : R_CLIENT_TIMEOUT;
}

/* The send queue once the session went quiet after a write: what draining() compares with. */
static void baseline(struct side *s) {
  int outq = 0;
  if (s->fd >= 0 && s->outq < 0 && ioctl(s->fd, SIOCOUTQ, &outq) == 0) s->outq = outq;
}

/* Whether a peer took bytes out of the kernel's send queue since the last
   look (emptying it counts): a reader draining what was already written is
   not idle either. */
static bool draining(struct side *s) {
  if (s->fd < 0) return false;
  int outq = 0;
  if (ioctl(s->fd, SIOCOUTQ, &outq) != 0) return false;
  bool progress = s->outq > 0 && outq < s->outq;
  s->outq = outq;
  return progress;
}

/* client-timeout and server-timeout: every byte read on one side is written
   to the other, so both sides are active at the same moments and the
   shorter timeout decides; equal ones name the side that owes the next
   byte. A handshake that outlives its deadline ends too. */
void sweep(struct thread *t) {
  for (struct conn *c = t->conns, *next; c; c = next) {
    next = c->next;
    if (c->phase == PH_PROXY || c->phase == PH_HANDSHAKE || c->phase == PH_DIALING || c->phase == PH_TARGET_TLS) {
      if (!c->deadline || t->now < c->deadline) continue;
      if (c->phase == PH_PROXY) proxy_timeout(t, c);
      else if (c->phase == PH_HANDSHAKE) tls_handshake_timeout(t, c);
      else dial_timeout(t, c);
      continue;
    }
    if (c->phase != PH_RELAY) continue;
    uint32_t cl = c->client_timeout, sv = c->server_timeout;
    uint32_t limit = cl && sv ? (cl < sv ? cl : sv) : cl | sv;
    if (!limit) continue;
    /* Quiet since at least a sweep: the queue as the last write left it (a busy session costs no ioctl). */
    if (t->now - c->last_active >= t->sweep_ms) {
      baseline(&c->client);
      baseline(&c->server);
    }
    if (t->now - c->last_active < limit) continue;
    bool a = draining(&c->client), b = draining(&c->server);
    if (a || b) {
      c->last_active = t->now;
      continue;
    }
    conn_end(t, c, idle_reason(c), 0, true);
  }
  t->next_sweep = t->now + t->sweep_ms;
}
