/* The data plane as JavaScript sees it (Node-API, one build for every Node):
 * the functions of src/dataplane/addon.ts, and the events the threads send
 * back, in batches, through one thread-safe function.
 *
 * Events wait in one queue; the first event of a batch asks Node's event
 * loop to call deliver(), which takes the whole queue. Should that request
 * fail (only at teardown or out of memory), the next event asks again, and
 * JavaScript's own timer (flushEvents) delivers whatever waits meanwhile:
 * no event is ever stranded.
 *
 * The end of a session is only news for its log entry and counters, unless
 * clients are queued for its place: it waits up to LAZY_MS for others
 * (push_event_lazy), and the relay threads ask for the batch when it is due
 * (events_due). Asking per session cost Node's thread a wake-up per
 * connection: under churn it spent about a quarter of its time being
 * scheduled in and out (bench/README.md).
 */
#include "dataplane.h"
#include "napi.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static struct {
  napi_threadsafe_function tsfn;
  napi_env env;
  napi_ref on_event;
  pthread_mutex_t lock;
  struct event *head, *tail;
  atomic_bool call_pending;
  _Atomic int64_t lazy_since; /* now_ms() of the oldest undelivered lazy event; 0: none */
} events = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* How long a session's end may wait for others before Node's thread is woken for the batch. */
#define LAZY_MS 10

/* ---- test hooks ------------------------------------------------------------------------ */

#ifdef SOCKBRIDGE_TEST_HOOKS
#define MAX_FAILPOINTS 8
static struct {
  char name[32];
  atomic_int skip, fail;
} failpoints[MAX_FAILPOINTS];

/* SOCKBRIDGE_FAILPOINTS=name[:fails[:after]],...: the named step fails `fails`
   times (default 1) after succeeding `after` times (default 0). */
void failpoints_load(void) {
  const char *spec = getenv("SOCKBRIDGE_FAILPOINTS");
  char copy[256];
  snprintf(copy, sizeof copy, "%s", spec ? spec : "");
  char *save = NULL;
  int n = 0;
  for (char *item = strtok_r(copy, ",", &save); item && n < MAX_FAILPOINTS; item = strtok_r(NULL, ",", &save), n++) {
    int fails = 1, after = 0;
    char *colon = strchr(item, ':');
    if (colon) {
      *colon = '\0';
      sscanf(colon + 1, "%d:%d", &fails, &after);
    }
    snprintf(failpoints[n].name, sizeof failpoints[n].name, "%s", item);
    atomic_store(&failpoints[n].fail, fails);
    atomic_store(&failpoints[n].skip, after);
  }
}

bool failpoint(const char *name) {
  for (int i = 0; i < MAX_FAILPOINTS && failpoints[i].name[0]; i++) {
    if (strcmp(failpoints[i].name, name) != 0) continue;
    if (atomic_fetch_sub(&failpoints[i].skip, 1) > 0) return false;
    return atomic_fetch_sub(&failpoints[i].fail, 1) > 0;
  }
  return false;
}
#endif

/* ---- events ---------------------------------------------------------------------------- */

struct event *new_event(enum event_kind kind) {
  struct event *ev = calloc(1, sizeof *ev);
  if (ev) {
    ev->kind = kind;
    ev->slot = -1;
    ev->listener = -1;
    ev->client_fd = ev->server_fd = -1;
  }
  return ev;
}

/* What every event about a connection says of it. */
void event_from_conn(struct event *ev, const struct conn *c) {
  ev->id = c->id;
  ev->slot = c->slot;
  ev->listener = c->listener;
  ev->started_at = c->started_at;
  ev->bytes_in = c->bytes_in;
  ev->bytes_out = c->bytes_out;
  ev->tls = c->tls_done;
  ev->before_tls = c->before_tls;
  ev->flag = c->up.eof;
  ev->retries_left = c->retries_left;
  memcpy(&ev->peer, &c->peer, c->peer_len);
  ev->peer_len = c->peer_len;
  ev->cred = c->cred;
  if (c->peer_cn && (ev->kind == EV_END || ev->kind == EV_TLS_REFUSED)) ev->cn = strdup(c->peer_cn);
}

static void enqueue_event(struct event *ev) {
  pthread_mutex_lock(&events.lock);
  if (events.tail) events.tail->next = ev;
  else events.head = ev;
  events.tail = ev;
  pthread_mutex_unlock(&events.lock);
}

/* One call per batch: deliver() takes the whole queue. */
static void ask_for_delivery(void) {
  if (atomic_exchange(&events.call_pending, true)) return;
  if (failpoint("tsfn") || napi_call_threadsafe_function(events.tsfn, NULL, napi_tsfn_nonblocking) != napi_ok)
    atomic_store(&events.call_pending, false); /* the next event asks again; flushEvents() delivers meanwhile */
}

void push_event(struct event *ev) {
  enqueue_event(ev);
  ask_for_delivery();
}

/* From relay thread t: if its event is the oldest lazy one, t wakes when the batch is due (wait_timeout). */
void push_event_lazy(struct thread *t, struct event *ev) {
  enqueue_event(ev);
  /* Read first: under churn it is set, and a read leaves the cache line shared. */
  int64_t none = 0;
  if (atomic_load_explicit(&events.lazy_since, memory_order_relaxed) == 0 &&
      atomic_compare_exchange_strong(&events.lazy_since, &none, now_ms()))
    t->lazy_owner = true;
}

/* Milliseconds until lazy events are due (0: now), or -1 when none wait or
   their batch is already asked for (a relay thread would spin on a 0 timeout
   until Node's thread takes it). */
int events_due_in(int64_t now) {
  int64_t since = atomic_load(&events.lazy_since);
  if (!since || atomic_load_explicit(&events.call_pending, memory_order_relaxed)) return -1;
  return since + LAZY_MS > now ? (int)(since + LAZY_MS - now) : 0;
}

/* A relay thread's turn ended: the lazy events that are due are asked for. */
void events_due(int64_t now) {
  if (events_due_in(now) == 0) ask_for_delivery();
}

static struct event *take_events(void) {
  atomic_store(&events.call_pending, false);
  /* Before taking: a lazy event queued after this sets it again (push_event_lazy). */
  atomic_store(&events.lazy_since, 0);
  pthread_mutex_lock(&events.lock);
  struct event *ev = events.head;
  events.head = events.tail = NULL;
  pthread_mutex_unlock(&events.lock);
  return ev;
}

static void free_event(struct event *ev) {
  free(ev->data);
  free(ev->cn);
  free(ev->san);
  free(ev);
}

/* The peer as text ("" for a peer without an IP address) and its port. */
static void peer_values(napi_env env, const struct event *ev, napi_value *addr, napi_value *port) {
  char text[INET6_ADDRSTRLEN] = "";
  int p = 0;
  uint8_t bytes[16];
  int family = address_bytes(&ev->peer, bytes);
  if (family) inet_ntop(family == 4 ? AF_INET : AF_INET6, bytes, text, sizeof text);
  if (ev->peer.ss_family == AF_INET) p = ntohs(((const struct sockaddr_in *)&ev->peer)->sin_port);
  if (ev->peer.ss_family == AF_INET6) p = ntohs(((const struct sockaddr_in6 *)&ev->peer)->sin6_port);
  napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, addr);
  napi_create_int32(env, p, port);
}

static napi_value num(napi_env env, double x) {
  napi_value v;
  napi_create_double(env, x, &v);
  return v;
}

static napi_value boolean(napi_env env, bool x) {
  napi_value v;
  napi_get_boolean(env, x, &v);
  return v;
}

static napi_value bytes_or_undefined(napi_env env, const char *data, size_t len, bool present) {
  if (!present) return undefined_result(env);
  napi_value v;
  void *copy;
  napi_create_buffer_copy(env, len, len ? data : "", &copy, &v);
  return v;
}

/* A C string as a JavaScript one ("" for NULL). */
static napi_value text_value(napi_env env, const char *text) {
  napi_value v;
  napi_create_string_utf8(env, text ? text : "", NAPI_AUTO_LENGTH, &v);
  return v;
}

/* One event as the arguments of the JavaScript handler, as src/dataplane/events.ts types them. */
static size_t event_args(napi_env env, const struct event *ev, napi_value *a) {
  size_t n = 0;
  a[n++] = num(env, ev->kind);
  napi_value addr, port;
  switch (ev->kind) {
  case EV_END: /* id, reason, errno, bytesIn, bytesOut, addr, port, startedAt, slot, resets, tls, pid, uid, gid, cn, endedAt */
    peer_values(env, ev, &addr, &port);
    a[n++] = num(env, (double)ev->id);
    a[n++] = num(env, ev->reason);
    a[n++] = num(env, ev->err);
    a[n++] = num(env, (double)ev->bytes_in);
    a[n++] = num(env, (double)ev->bytes_out);
    a[n++] = addr;
    a[n++] = port;
    a[n++] = num(env, (double)ev->started_at);
    a[n++] = num(env, ev->slot);
    a[n++] = num(env, ev->directions_done);
    a[n++] = boolean(env, ev->tls);
    a[n++] = num(env, ev->cred.pid);
    a[n++] = num(env, ev->cred.pid ? (double)ev->cred.uid : -1);
    a[n++] = num(env, ev->cred.pid ? (double)ev->cred.gid : -1);
    a[n++] = text_value(env, ev->cn);
    a[n++] = num(env, (double)ev->ended_at);
    break;
  case EV_PARKED: /* id, why, errno, slot, addr, port, startedAt, tls, bytesIn, reason */
    peer_values(env, ev, &addr, &port);
    a[n++] = num(env, (double)ev->id);
    a[n++] = num(env, ev->why);
    a[n++] = num(env, ev->err);
    a[n++] = num(env, ev->slot);
    a[n++] = addr;
    a[n++] = port;
    a[n++] = num(env, (double)ev->started_at);
    a[n++] = boolean(env, ev->tls);
    a[n++] = num(env, (double)ev->bytes_in);
    napi_create_string_utf8(env, ev->data ? ev->data : "", NAPI_AUTO_LENGTH, &a[n++]);
    break;
  case EV_DIALED: /* id, errno, slot, reason */
    a[n++] = num(env, (double)ev->id);
    a[n++] = num(env, ev->err);
    a[n++] = num(env, ev->slot);
    napi_create_string_utf8(env, ev->data ? ev->data : "", NAPI_AUTO_LENGTH, &a[n++]);
    break;
  case EV_DENIED: /* addr, port, listener, why (DENY_REASONS), detail, pid, uid, gid */
    peer_values(env, ev, &addr, &port);
    a[n++] = addr;
    a[n++] = port;
    a[n++] = num(env, ev->listener);
    a[n++] = num(env, ev->why);
    a[n++] = text_value(env, ev->data);
    a[n++] = num(env, ev->cred.pid);
    a[n++] = num(env, ev->cred.pid ? (double)ev->cred.uid : -1);
    a[n++] = num(env, ev->cred.pid ? (double)ev->cred.gid : -1);
    break;
  case EV_TLS_REFUSED: /* addr, port, verify result, reason, cn, san */
    peer_values(env, ev, &addr, &port);
    a[n++] = addr;
    a[n++] = port;
    a[n++] = num(env, ev->err);
    a[n++] = text_value(env, ev->data);
    a[n++] = text_value(env, ev->cn);
    a[n++] = text_value(env, ev->san);
    break;
  case EV_ACCEPT_ERROR: /* listener, errno */
    a[n++] = num(env, ev->listener);
    a[n++] = num(env, ev->err);
    break;
  case EV_UNLISTENED: /* listener */
    a[n++] = num(env, ev->listener);
    break;
  case EV_HANDED: /* id, clientFd, serverFd, directionsDone, replay, bytesIn, bytesOut, addr, port, startedAt, slot, retriesLeft, clientEnded, beforeTls, parkedWhy */
    peer_values(env, ev, &addr, &port);
    a[n++] = num(env, (double)ev->id);
    a[n++] = num(env, ev->client_fd);
    a[n++] = num(env, ev->server_fd);
    a[n++] = num(env, ev->directions_done);
    a[n++] = bytes_or_undefined(env, ev->data, ev->len, ev->data != NULL);
    a[n++] = num(env, (double)ev->bytes_in);
    a[n++] = num(env, (double)ev->bytes_out);
    a[n++] = addr;
    a[n++] = port;
    a[n++] = num(env, (double)ev->started_at);
    a[n++] = num(env, ev->slot);
    a[n++] = num(env, ev->retries_left);
    a[n++] = boolean(env, ev->flag);
    a[n++] = boolean(env, ev->before_tls);
    a[n++] = num(env, ev->why);
    break;
  case EV_HANDOVER_DONE: /* thread, TLS sessions closed, plain ones closed (their peer took none of their bytes) */
    a[n++] = num(env, ev->listener);
    a[n++] = num(env, ev->reason);
    a[n++] = num(env, ev->why);
    break;
  }
  return n;
}

/* Hand a batch to the JavaScript handler; its exceptions go to the process's uncaughtException handler. */
static void deliver_batch(napi_env env, napi_value callback, struct event *ev) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  while (ev) {
    struct event *next = ev->next;
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    napi_value argv[24], result;
    size_t argc = event_args(env, ev, argv);
    napi_status status = napi_call_function(env, undefined, callback, argc, argv, &result);
    napi_close_handle_scope(env, scope);
    free_event(ev);
    if (status == napi_pending_exception) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
    ev = next;
  }
}

static void deliver(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  (void)data;
  if (env == NULL) return; /* the function is being released */
  deliver_batch(env, callback, take_events());
}

/* flushEvents(): deliver what waits now (JavaScript's timer; see the top of this file). */
static napi_value js_flush_events(napi_env env, napi_callback_info info) {
  (void)info;
  if (!relay.running) return undefined_result(env);
  napi_value callback;
  napi_get_reference_value(env, events.on_event, &callback);
  deliver_batch(env, callback, take_events());
  return undefined_result(env);
}

static void drop_events(void) {
  for (struct event *ev = take_events(), *next; ev; ev = next) {
    next = ev->next;
    if (ev->client_fd >= 0) close(ev->client_fd); /* HANDED after the stop: nobody takes it now */
    if (ev->server_fd >= 0) close(ev->server_fd);
    free_event(ev);
  }
}

/* ---- start and stop ---------------------------------------------------------------------- */

static void release_js(napi_env env) {
  if (events.on_event) napi_delete_reference(env, events.on_event);
  events.on_event = NULL;
  if (events.tsfn) napi_release_threadsafe_function(events.tsfn, napi_tsfn_release);
  events.tsfn = NULL;
}

/* init(threads, onEvent): start the threads. Returns 0 or -errno; on an error nothing is left running. */
static napi_value js_init(napi_env env, napi_callback_info info) {
  ARGS(2);
  if (relay.running) return int_result(env, -EALREADY);
  failpoints_load();
  sources_init();
  int n = int_arg(env, argv[0]);
  if (n < 1) n = 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  napi_value name;
  napi_create_string_utf8(env, "sockbridge-dataplane", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, deliver, &events.tsfn) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &events.on_event) != napi_ok) {
    release_js(env);
    return int_result(env, -EINVAL);
  }
  events.env = env;
  if (!tls_rotate_ticket_keys()) {
    release_js(env);
    return int_result(env, -EIO);
  }
  int rc = thread_start_all(n);
  if (rc < 0) {
    release_js(env);
    return int_result(env, rc);
  }
  relay.running = true;
  return int_result(env, 0);
}

/* stop(): end the threads (after the sessions were drained or closed), close the listeners, let Node exit. */
static napi_value js_stop(napi_env env, napi_callback_info info) {
  (void)info;
  if (!relay.running) return undefined_result(env);
  thread_stop_all();
  relay.running = false;
  for (int i = 0; i < nlisteners; i++) {
    if (atomic_load(&listeners[i].used)) close(listeners[i].fd);
    atomic_store(&listeners[i].used, false);
  }
  /* The threads' last words (the ends of sessions closed at drain-timeout) still get their log lines. */
  napi_value callback;
  if (napi_get_reference_value(env, events.on_event, &callback) == napi_ok && callback) deliver_batch(env, callback, take_events());
  drop_events();
  policy_release_all();
  release_js(env);
  return undefined_result(env);
}

static napi_value js_openssl_version(napi_env env, napi_callback_info info) {
  (void)info;
  return num(env, (double)tls_library_version());
}

/* ---- listening --------------------------------------------------------------------------- */

static napi_value js_bind_tcp(napi_env env, napi_callback_info info) {
  ARGS(2);
  char host[256] = "";
  size_t hlen;
  napi_get_value_string_utf8(env, argv[0], host, sizeof host, &hlen);
  return int_result(env, bind_tcp(host, int_arg(env, argv[1])));
}

/* bindUnix(path): a bound UNIX socket ("\0name": abstract), or -errno. */
static napi_value js_bind_unix(napi_env env, napi_callback_info info) {
  ARGS(1);
  /* Room for one byte more than sun_path holds, so that a name too long is refused, never cut short. */
  char path[sizeof ((struct sockaddr_un *)0)->sun_path + 2];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok) return int_result(env, -EINVAL);
  return int_result(env, bind_unix(path, len));
}

/* probeAbstract(name): connect(2) to an abstract UNIX socket and close: 0 or
   -errno. Node's own sockets cannot name one (its path is padded to the
   full sun_path), so health checks of @name targets come here. A UNIX
   connect answers at once. */
static napi_value js_probe_abstract(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], sa.sun_path + 1, sizeof sa.sun_path - 1, &len) != napi_ok || len == 0) return int_result(env, -EINVAL);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_result(env, -errno);
  int rc = connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len));
  int err = rc < 0 ? errno : 0;
  close(fd);
  return int_result(env, -err);
}

/* listen(fd, backlog, passed): the listener's index or -errno. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  ARGS(3);
  if (!relay.running) return int_result(env, -ENOTCONN);
  return int_result(env, listener_open(int_arg(env, argv[0]), int_arg(env, argv[1]), bool_arg(env, argv[2])));
}

/* unlisten(index): every thread stops accepting there; EV_UNLISTENED says when the socket is closed. */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  ARGS(1);
  listener_close(int_arg(env, argv[0]));
  return undefined_result(env);
}

/* localAddress(fd): "address port" of a socket's own end, or "". */
static napi_value js_local_address(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  char text[INET6_ADDRSTRLEN + 8] = "";
  if (getsockname(int_arg(env, argv[0]), (struct sockaddr *)&sa, &len) == 0) {
    uint8_t bytes[16];
    char addr[INET6_ADDRSTRLEN];
    int family = address_bytes(&sa, bytes);
    int port = sa.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&sa)->sin_port) : sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&sa)->sin6_port) : 0;
    if (family) {
      inet_ntop(family == 4 ? AF_INET : AF_INET6, bytes, addr, sizeof addr);
      snprintf(text, sizeof text, "%s %d", addr, port);
    }
  }
  napi_value v;
  napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, &v);
  return v;
}

/* ---- the policy snapshot ------------------------------------------------------------------ */

/* obj[name], or undefined (also when obj is not an object: an optional part left out). */
static napi_value prop(napi_env env, napi_value obj, const char *name) {
  napi_value v;
  napi_valuetype type;
  if (napi_typeof(env, obj, &type) != napi_ok || type != napi_object || napi_get_named_property(env, obj, name, &v) != napi_ok) napi_get_undefined(env, &v);
  return v;
}

static bool is_undefined(napi_env env, napi_value v) {
  napi_valuetype type;
  return napi_typeof(env, v, &type) != napi_ok || type == napi_undefined || type == napi_null;
}

static size_t string_prop(napi_env env, napi_value obj, const char *name, char *out, size_t cap) {
  size_t len = 0;
  out[0] = '\0';
  napi_get_value_string_utf8(env, prop(env, obj, name), out, cap, &len);
  return len;
}

/* "10.0.0.0/8", "2001:db8::/32": TypeScript has checked and normalized them. */
static bool parse_prefix(const char *text, struct prefix *p) {
  char addr[64];
  snprintf(addr, sizeof addr, "%s", text);
  char *slash = strchr(addr, '/');
  int bits = -1;
  if (slash) {
    *slash = '\0';
    bits = atoi(slash + 1);
  }
  char *zone = strchr(addr, '%'); /* an interface, not addresses: as access.ts, the rule is about the address */
  if (zone) *zone = '\0';
  memset(p, 0, sizeof *p);
  if (inet_pton(AF_INET, addr, p->addr) == 1) p->family = 4;
  else if (inet_pton(AF_INET6, addr, p->addr) == 1) p->family = 6;
  else return false;
  int max = p->family == 4 ? 32 : 128;
  p->bits = (uint8_t)(bits < 0 || bits > max ? max : bits);
  return true;
}

/* The prefixes of an array of CIDR strings; -1 when one does not parse (TypeScript checked them: a bug). */
static int prefixes(napi_env env, napi_value arr, struct prefix **out) {
  uint32_t n = 0;
  napi_get_array_length(env, arr, &n);
  *out = n ? calloc(n, sizeof **out) : NULL;
  int count = 0;
  for (uint32_t i = 0; i < n && *out; i++) {
    napi_value v;
    char text[64] = "";
    size_t len;
    napi_get_element(env, arr, i, &v);
    napi_get_value_string_utf8(env, v, text, sizeof text, &len);
    if (!parse_prefix(text, &(*out)[count])) return -1;
    count++;
  }
  return count;
}

/* A target's address: {slot, path} (a UNIX socket), {slot, abstract} (a name in the abstract namespace)
   or {slot, ip, port} (TCP, resolved by TypeScript); a target without one
   (a name not resolved yet) is left out: connects to it fail with ENOENT. */
static bool target_ref(napi_env env, napi_value obj, struct target_ref *t) {
  memset(t, 0, sizeof *t);
  t->slot = int_arg(env, prop(env, obj, "slot"));
  t->state = (uint8_t)int_arg(env, prop(env, obj, "state"));
  t->backup = bool_arg(env, prop(env, obj, "backup"));
  t->drained = bool_arg(env, prop(env, obj, "drained"));
  t->retries = int_arg(env, prop(env, obj, "retries"));
  string_prop(env, obj, "tlsName", t->tls_name, sizeof t->tls_name);
  if (t->slot < 0 || t->slot >= MAX_SLOTS) return false;
  struct sockaddr_un *un = (struct sockaddr_un *)&t->addr;
  size_t len = string_prop(env, obj, "path", un->sun_path, sizeof un->sun_path);
  if (len > 0 && len < sizeof un->sun_path - 1) {
    un->sun_family = AF_UNIX;
    t->addr_len = (socklen_t)sizeof *un;
    return true;
  }
  /* An abstract socket: a NUL, then the name; the address's length is the name's (no NUL ends it). */
  len = string_prop(env, obj, "abstract", un->sun_path + 1, sizeof un->sun_path - 1);
  if (len > 0 && len < sizeof un->sun_path - 1) {
    un->sun_family = AF_UNIX;
    un->sun_path[0] = '\0';
    t->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    return true;
  }
  char ip[INET6_ADDRSTRLEN] = "";
  string_prop(env, obj, "ip", ip, sizeof ip);
  int port = int_arg(env, prop(env, obj, "port"));
  struct sockaddr_in *in4 = (struct sockaddr_in *)&t->addr;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t->addr;
  if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    t->addr_len = sizeof *in4;
    return true;
  }
  if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    t->addr_len = sizeof *in6;
    return true;
  }
  return false;
}

static bool tls_settings_of(napi_env env, napi_value obj, struct tls_settings *s);

/* An array of strings, copied; -1 when out of memory. */
static int strings(napi_env env, napi_value arr, char ***out) {
  uint32_t n = 0;
  *out = NULL;
  if (is_undefined(env, arr) || napi_get_array_length(env, arr, &n) != napi_ok || n == 0) return 0;
  *out = calloc(n, sizeof **out);
  if (!*out) return -1;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    size_t len = 0;
    napi_get_element(env, arr, i, &v);
    napi_get_value_string_utf8(env, v, NULL, 0, &len);
    (*out)[i] = malloc(len + 1);
    if (!(*out)[i]) return -1; /* the caller frees the n entries (calloc: the rest are NULL) */
    napi_get_value_string_utf8(env, v, (*out)[i], len + 1, &len);
  }
  return (int)n;
}

/* An array of numbers (uids, gids), copied; -1 when out of memory. */
static int ids(napi_env env, napi_value arr, unsigned **out) {
  uint32_t n = 0;
  *out = NULL;
  if (is_undefined(env, arr) || napi_get_array_length(env, arr, &n) != napi_ok || n == 0) return 0;
  *out = calloc(n, sizeof **out);
  if (!*out) return -1;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, arr, i, &v);
    (*out)[i] = (unsigned)number_arg(env, v);
  }
  return (int)n;
}

/* {cn, dns, uri}: the allow-lists of identity.c; false when out of memory. */
static bool identity_rules_of(napi_env env, napi_value obj, struct identity_rules *r) {
  memset(r, 0, sizeof *r);
  if (is_undefined(env, obj)) return true;
  int a = strings(env, prop(env, obj, "cn"), &r->cn);
  r->ncn = a < 0 ? 0 : a;
  int b = strings(env, prop(env, obj, "dns"), &r->dns);
  r->ndns = b < 0 ? 0 : b;
  int c = strings(env, prop(env, obj, "uri"), &r->uri);
  r->nuri = c < 0 ? 0 : c;
  if (a >= 0 && b >= 0 && c >= 0) return true;
  identity_rules_free(r);
  return false;
}

/* A ticket carries the client's certificate, and resuming with it skips
   verification: when what verification checks changes (TypeScript sums up
   the CAs, CRLs and allow-lists as `verification`), every ticket issued
   before is forgotten, as if both keys had rotated. */
static void forget_tickets_if_changed(napi_env env, napi_value verification) {
  static char last[128];
  char now[128] = "";
  size_t len = 0;
  napi_get_value_string_utf8(env, verification, now, sizeof now, &len);
  if (strcmp(now, last) == 0) return;
  bool first = last[0] == '\0';
  memcpy(last, now, sizeof last);
  if (first) return;
  tls_rotate_ticket_keys();
  tls_rotate_ticket_keys();
}

/* setPolicy(policy): compile and publish a new snapshot (src/dataplane/policy.ts
   says what it holds). Returns "" or why it was refused (the old one stays). */
static napi_value js_set_policy(napi_env env, napi_callback_info info) {
  ARGS(1);
  napi_value obj = argv[0], result;
  struct policy *p = calloc(1, sizeof *p);
  const char *why = "out of memory";
  char *tls_error = NULL;
  if (!p) goto fail;
  p->nallow = prefixes(env, prop(env, obj, "allow"), &p->allow);
  p->ndeny = prefixes(env, prop(env, obj, "deny"), &p->deny);
  why = "an address in --allow or --deny that the data plane cannot read";
  if (p->nallow < 0 || p->ndeny < 0) goto fail;
  why = "out of memory";
  napi_value targets = prop(env, obj, "targets");
  uint32_t n = 0;
  napi_get_array_length(env, targets, &n);
  if (n > MAX_TARGETS) n = MAX_TARGETS;
  p->targets = n ? calloc(n, sizeof *p->targets) : NULL;
  if (n && !p->targets) goto fail;
  for (uint32_t i = 0; i < n; i++) {
    napi_value t;
    napi_get_element(env, targets, i, &t);
    if (target_ref(env, t, &p->targets[p->ntargets])) p->ntargets++;
  }
  p->balance = (enum balance)int_arg(env, prop(env, obj, "balance"));
  p->send_proxy = (uint8_t)int_arg(env, prop(env, obj, "sendProxy"));
  p->client_timeout = (uint32_t)int_arg(env, prop(env, obj, "clientTimeout"));
  p->server_timeout = (uint32_t)int_arg(env, prop(env, obj, "serverTimeout"));
  p->handshake_timeout = (uint32_t)int_arg(env, prop(env, obj, "handshakeTimeout"));
  p->attempt_timeout = (uint32_t)int_arg(env, prop(env, obj, "attemptTimeout"));
  p->max_conn = int_arg(env, prop(env, obj, "maxConn"));
  p->crl_allow_stale = bool_arg(env, prop(env, obj, "crlAllowStale"));
  p->nallow_uid = ids(env, prop(env, obj, "allowUid"), (unsigned **)&p->allow_uid);
  p->nallow_gid = ids(env, prop(env, obj, "allowGid"), (unsigned **)&p->allow_gid);
  if (p->nallow_uid < 0 || p->nallow_gid < 0) goto fail;
  napi_value limits = prop(env, obj, "sourceLimits");
  p->limits.max_conn = int_arg(env, prop(env, limits, "maxConn"));
  p->limits.rate_count = (uint32_t)int_arg(env, prop(env, limits, "rateCount"));
  p->limits.rate_period = (uint32_t)int_arg(env, prop(env, limits, "ratePeriodMs"));
  p->limits.prefix_v6 = int_arg(env, prop(env, limits, "prefixV6"));
  if (!p->limits.rate_period) p->limits.rate_count = 0;
  p->accept_proxy = (uint8_t)int_arg(env, prop(env, obj, "acceptProxy"));
  p->nproxy_from = prefixes(env, prop(env, obj, "acceptProxyFrom"), &p->proxy_from);
  why = "an address in --accept-proxy-from that the data plane cannot read";
  if (p->nproxy_from < 0) goto fail;
  why = "out of memory";
  why = "out of memory";
  if (!identity_rules_of(env, prop(env, obj, "clientIdentity"), &p->client_identity) ||
      !identity_rules_of(env, prop(env, obj, "targetIdentity"), &p->target_identity))
    goto fail;
  napi_value tls = prop(env, obj, "tls");
  if (!is_undefined(env, tls)) {
    struct tls_settings s;
    why = "invalid TLS settings";
    if (!tls_settings_of(env, tls, &s)) goto fail;
    p->tls = tls_context(&s, &tls_error);
    free((void *)s.ciphers);
    free((void *)s.suites);
    if (!p->tls) {
      why = tls_error ? tls_error : "cannot build the TLS context";
      goto fail;
    }
  }
  napi_value target_tls = prop(env, obj, "targetTls");
  if (!is_undefined(env, target_tls)) {
    struct tls_settings s;
    why = "invalid target TLS settings";
    if (!tls_settings_of(env, target_tls, &s)) goto fail;
    p->target_tls = tls_client_context(&s, &tls_error);
    free((void *)s.ciphers);
    free((void *)s.suites);
    if (!p->target_tls) {
      why = tls_error ? tls_error : "cannot build the target TLS context";
      goto fail;
    }
  }
  forget_tickets_if_changed(env, prop(env, obj, "verification"));
  policy_publish(p);
  napi_create_string_utf8(env, "", 0, &result);
  return result;
fail:
  napi_create_string_utf8(env, why, NAPI_AUTO_LENGTH, &result);
  free(tls_error);
  policy_free(p);
  return result;
}

static char *string_copy(napi_env env, napi_value obj, const char *name) {
  size_t len = 0;
  napi_get_value_string_utf8(env, prop(env, obj, name), NULL, 0, &len);
  char *s = malloc(len + 1);
  if (s) napi_get_value_string_utf8(env, prop(env, obj, name), s, len + 1, &len);
  return s;
}

static bool tls_settings_of(napi_env env, napi_value obj, struct tls_settings *s) {
  memset(s, 0, sizeof *s);
  char *ca;
  if (!buffer_arg(env, prop(env, obj, "cert"), (char **)&s->cert, &s->cert_len) ||
      !buffer_arg(env, prop(env, obj, "key"), (char **)&s->key, &s->key_len) || !buffer_arg(env, prop(env, obj, "ca"), &ca, &s->ca_len))
    return false;
  s->ca = ca;
  char *crl = NULL;
  if (!is_undefined(env, prop(env, obj, "crl"))) {
    if (!buffer_arg(env, prop(env, obj, "crl"), &crl, &s->crl_len)) return false;
    s->crl = crl;
  }
  s->ciphers = string_copy(env, obj, "ciphers");
  s->suites = string_copy(env, obj, "cipherSuites");
  s->min_version = int_arg(env, prop(env, obj, "minVersion"));
  s->max_version = int_arg(env, prop(env, obj, "maxVersion"));
  s->honor_cipher_order = bool_arg(env, prop(env, obj, "honorCipherOrder"));
  return s->ciphers && s->suites;
}

static napi_value js_rotate_ticket_keys(napi_env env, napi_callback_info info) {
  (void)info;
  return boolean(env, tls_rotate_ticket_keys());
}

static napi_value js_reclaim(napi_env env, napi_callback_info info) {
  (void)info;
  policy_reclaim();
  return undefined_result(env);
}

static napi_value int_array(napi_env env, const int *values, int n) {
  napi_value arr;
  napi_create_array_with_length(env, (size_t)n, &arr);
  for (int i = 0; i < n; i++) napi_set_element(env, arr, (uint32_t)i, num(env, values[i]));
  return arr;
}

/* candidates(avoidSlot): the slots one connect round tries, in order (for TypeScript's rounds). */
static napi_value js_candidates(napi_env env, napi_callback_info info) {
  ARGS(1);
  const struct policy *p = atomic_load(&shared.policy); /* the JavaScript thread publishes: it reads its own */
  int order[MAX_TARGETS];
  int n = p ? candidates(p, int_arg(env, argv[0]), order, MAX_TARGETS) : 0;
  return int_array(env, order, n);
}

/* ---- parked clients ------------------------------------------------------------------------ */

static struct command *command_for(uint64_t id, enum command_kind kind) {
  struct command *cmd = calloc(1, sizeof *cmd);
  if (cmd) {
    cmd->kind = kind;
    cmd->id = id;
  }
  return cmd;
}

static bool send_to_owner(struct command *cmd) {
  struct thread *t = thread_of(cmd->id);
  if (!t || !relay.running) {
    free(cmd);
    return false;
  }
  send_command(t, cmd);
  return true;
}

static uint64_t id_arg(napi_env env, napi_value v) {
  return (uint64_t)number_arg(env, v);
}

/* dial(id, slot): connect a parked client to that target; EV_DIALED says how it went. */
static napi_value js_dial(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct command *cmd = command_for(id_arg(env, argv[0]), C_DIAL);
  if (!cmd) return boolean(env, false);
  cmd->arg = int_arg(env, argv[1]);
  return boolean(env, send_to_owner(cmd));
}

/* proceed(id): a client held before its TLS handshake may start it. */
static napi_value js_proceed(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct command *cmd = command_for(id_arg(env, argv[0]), C_PROCEED);
  return boolean(env, cmd && send_to_owner(cmd));
}

/* admit(id): a queued client's turn; counted against max-conn now, so no new client takes its place. */
static napi_value js_admit(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct command *cmd = command_for(id_arg(env, argv[0]), C_ADMIT);
  if (!cmd) return boolean(env, false);
  atomic_fetch_add(&shared.admitted, 1);
  if (send_to_owner(cmd)) return boolean(env, true);
  atomic_fetch_sub(&shared.admitted, 1);
  return boolean(env, false);
}

/* close(id, reason, errno): a parked client given up (connect-timeout, the queue full, a stop). */
static napi_value js_close(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct command *cmd = command_for(id_arg(env, argv[0]), C_CLOSE);
  if (!cmd) return boolean(env, false);
  cmd->arg = int_arg(env, argv[1]);
  cmd->arg2 = int_arg(env, argv[2]);
  return boolean(env, send_to_owner(cmd));
}

/* What adopt and resume share: a previous process's connection, as TypeScript read it from the state. */
static struct conn *carried_conn(napi_env env, napi_value obj) {
  struct conn *c = conn_new(NULL, int_arg(env, prop(env, obj, "clientFd")));
  if (!c) return NULL;
  char addr[INET6_ADDRSTRLEN] = "";
  string_prop(env, obj, "addr", addr, sizeof addr);
  int port = int_arg(env, prop(env, obj, "port"));
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&c->peer;
  struct sockaddr_in *in4 = (struct sockaddr_in *)&c->peer;
  if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    c->peer_len = sizeof *in4;
  } else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    c->peer_len = sizeof *in6;
  }
  c->started_at = (int64_t)number_arg(env, prop(env, obj, "startedAt"));
  c->bytes_in = (uint64_t)number_arg(env, prop(env, obj, "bytesIn"));
  c->bytes_out = (uint64_t)number_arg(env, prop(env, obj, "bytesOut"));
  c->retries_left = int_arg(env, prop(env, obj, "retriesLeft"));
  c->client_timeout = (uint32_t)int_arg(env, prop(env, obj, "clientTimeout"));
  c->server_timeout = (uint32_t)int_arg(env, prop(env, obj, "serverTimeout"));
  c->slot = int_arg(env, prop(env, obj, "slot"));
  if (!c->peer_len) read_peer_cred(c); /* a UNIX listener's client: its credentials are the socket's, still */
  char *replay;
  size_t len;
  if (buffer_arg(env, prop(env, obj, "replay"), &replay, &len) && replay && len) {
    c->replay = malloc(len);
    if (!c->replay) {
      c->client.fd = -1; /* the caller still owns the fds */
      free_conn(c);
      return NULL;
    }
    memcpy(c->replay, replay, len);
    c->replay_len = len;
  }
  return c;
}

/* adopt(client): a waiting client a previous process handed over, parked
   (queued or held) on the least loaded thread; its id, or -errno. */
static napi_value js_adopt(napi_env env, napi_callback_info info) {
  ARGS(1);
  if (!relay.running) return int_result(env, -ENOTCONN);
  struct thread *t = least_loaded();
  struct conn *c = carried_conn(env, argv[0]);
  struct command *cmd = calloc(1, sizeof *cmd);
  if (!c || !cmd) {
    if (c) c->client.fd = -1;
    if (c) free_conn(c);
    free(cmd);
    return int_result(env, -ENOMEM);
  }
  c->up.eof = bool_arg(env, prop(env, argv[0], "clientEnded"));
  c->before_tls = bool_arg(env, prop(env, argv[0], "beforeTls"));
  bool queued = bool_arg(env, prop(env, argv[0], "queued"));
  c->parked = queued ? PK_QUEUED : c->before_tls ? PK_HELD_BEFORE_TLS : PK_HELD;
  /* Counted now, before any thread accepts a new client that could go past it. */
  if (queued) atomic_fetch_add(&shared.queued, 1);
  else {
    c->admitted = true;
    atomic_fetch_add(&shared.admitted, 1);
  }
  /* The id is the thread's to give; it is known before the thread runs the command. */
  c->id = conn_id(t);
  uint64_t id = c->id;
  cmd->kind = C_ADOPT;
  cmd->conn = c;
  send_command(t, cmd);
  return num(env, (double)id);
}

/* resume(session): relay on a session a previous process handed over; its id, or -errno. */
static napi_value js_resume(napi_env env, napi_callback_info info) {
  ARGS(1);
  if (!relay.running) return int_result(env, -ENOTCONN);
  struct thread *t = least_loaded();
  struct conn *c = carried_conn(env, argv[0]);
  struct command *cmd = calloc(1, sizeof *cmd);
  if (!c || !cmd) {
    if (c) c->client.fd = -1;
    if (c) free_conn(c);
    free(cmd);
    return int_result(env, -ENOMEM);
  }
  c->server.fd = int_arg(env, prop(env, argv[0], "serverFd"));
  int done = int_arg(env, prop(env, argv[0], "directionsDone"));
  /* A direction already done stays done: its shutdown(2) was sent. */
  c->up.eof = c->up.shut = (done & 1) != 0;
  c->down.eof = c->down.shut = (done & 2) != 0;
  c->replaying = c->replay != NULL;
  c->admitted = true;
  atomic_fetch_add(&shared.admitted, 1);
  c->id = conn_id(t);
  uint64_t id = c->id;
  cmd->kind = C_START;
  cmd->conn = c;
  send_command(t, cmd);
  return num(env, (double)id);
}

/* closeAll(reason, slots): every connection, or the sessions on those targets. */
static napi_value js_close_all(napi_env env, napi_callback_info info) {
  ARGS(2);
  bool is_array = false;
  napi_is_array(env, argv[1], &is_array);
  uint32_t n = 0;
  if (is_array) napi_get_array_length(env, argv[1], &n);
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    int *slots = is_array ? calloc(n ? n : 1, sizeof *slots) : NULL;
    if (!cmd || (is_array && !slots)) {
      free(cmd);
      free(slots);
      return int_result(env, -ENOMEM);
    }
    if (slots) ints_arg(env, argv[1], 0, n, slots);
    cmd->kind = C_CLOSE_ALL;
    cmd->arg = int_arg(env, argv[0]);
    cmd->slots = slots;
    cmd->nslots = (int)n;
    send_command(&relay.threads[i], cmd);
  }
  return int_result(env, 0);
}

/* handover(graceMs, sessions): a restart (threads.c); returns the number of EV_HANDOVER_DONE to expect. */
static napi_value js_handover(napi_env env, napi_callback_info info) {
  ARGS(2);
  atomic_store(&relay.handover_budget, int_arg(env, argv[1]));
  for (int i = 0; i < relay.nthreads; i++) {
    struct command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return int_result(env, -ENOMEM); /* JavaScript's deadline ends the wait for the others */
    cmd->kind = C_HANDOVER;
    cmd->arg = int_arg(env, argv[0]);
    send_command(&relay.threads[i], cmd);
  }
  return int_result(env, relay.nthreads);
}

/* ---- counters and health ------------------------------------------------------------------- */

/* counters(): [bytes from clients, bytes to clients, relaying sessions, admitted, queued], live. */
static napi_value js_counters(napi_env env, napi_callback_info info) {
  (void)info;
  double in = 0, out = 0, active = 0;
  for (int i = 0; i < relay.nthreads; i++) {
    in += (double)atomic_load_explicit(&relay.threads[i].bytes_in, memory_order_relaxed);
    out += (double)atomic_load_explicit(&relay.threads[i].bytes_out, memory_order_relaxed);
    active += (double)atomic_load_explicit(&relay.threads[i].active, memory_order_relaxed);
  }
  napi_value arr;
  napi_create_array_with_length(env, 5, &arr);
  napi_set_element(env, arr, 0, num(env, in));
  napi_set_element(env, arr, 1, num(env, out));
  napi_set_element(env, arr, 2, num(env, active));
  napi_set_element(env, arr, 3, num(env, atomic_load(&shared.admitted)));
  napi_set_element(env, arr, 4, num(env, atomic_load(&shared.queued)));
  return arr;
}

/* threadCounters(): [relaying sessions, clients accepted, TLS handshakes completed] per thread. */
static napi_value js_thread_counters(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value arr;
  napi_create_array_with_length(env, (size_t)relay.nthreads, &arr);
  for (int i = 0; i < relay.nthreads; i++) {
    struct thread *t = &relay.threads[i];
    int values[3] = { (int)atomic_load(&t->active), (int)atomic_load(&t->accepted), (int)atomic_load(&t->handshakes) };
    napi_set_element(env, arr, (uint32_t)i, int_array(env, values, 3));
  }
  return arr;
}

/* sourceTable(): [entries with open sessions, idle entries, the idle budget] of the per-source table. */
static napi_value js_source_table(napi_env env, napi_callback_info info) {
  (void)info;
  int values[3];
  source_table_size(&values[0], &values[1]);
  values[2] = source_idle_budget();
  return int_array(env, values, 3);
}

/* slotCounts(slot): [open sessions, connects that succeeded] of one target. */
static napi_value js_slot_counts(napi_env env, napi_callback_info info) {
  ARGS(1);
  int slot = int_arg(env, argv[0]);
  int values[2] = { 0, 0 };
  if (slot >= 0 && slot < MAX_SLOTS) {
    values[0] = atomic_load(&shared.slots[slot].active);
    values[1] = (int)atomic_load(&shared.slots[slot].ok);
  }
  return int_array(env, values, 2);
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
  return boolean(env, all);
}

/* ---- the differential tests' view of the rules ------------------------------------------- */

static struct sockaddr_storage sockaddr_of(napi_env env, napi_value v, int port) {
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  char text[INET6_ADDRSTRLEN] = "";
  size_t len;
  napi_get_value_string_utf8(env, v, text, sizeof text, &len);
  struct sockaddr_in *in4 = (struct sockaddr_in *)&sa;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
  if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
  } else if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
  } else {
    sa.ss_family = AF_UNIX;
  }
  return sa;
}

/* testAccess(allow, deny, addresses): access_check on each address. */
static napi_value js_test_access(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct prefix *allow, *deny;
  int na = prefixes(env, argv[0], &allow), nd = prefixes(env, argv[1], &deny);
  if (na < 0) na = 0;
  if (nd < 0) nd = 0;
  uint32_t n = 0;
  napi_get_array_length(env, argv[2], &n);
  napi_value out;
  napi_create_array_with_length(env, n, &out);
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, argv[2], i, &v);
    struct sockaddr_storage sa = sockaddr_of(env, v, 0);
    napi_set_element(env, out, i, boolean(env, access_check(allow, na, deny, nd, &sa)));
  }
  free(allow);
  free(deny);
  return out;
}

static int test_actives[MAX_SLOTS];
static int test_active(int slot) {
  return slot >= 0 && slot < MAX_SLOTS ? test_actives[slot] : 0;
}

/* testOrder(targets, balance, avoid, turn, actives): order_targets with explicit state. */
static napi_value js_test_order(napi_env env, napi_callback_info info) {
  ARGS(5);
  uint32_t n = 0;
  napi_get_array_length(env, argv[0], &n);
  if (n > MAX_TARGETS) n = MAX_TARGETS;
  struct target_ref *targets = calloc(n ? n : 1, sizeof *targets);
  if (!targets) return undefined_result(env);
  memset(test_actives, 0, sizeof test_actives);
  for (uint32_t i = 0; i < n; i++) {
    napi_value t;
    napi_get_element(env, argv[0], i, &t);
    targets[i].slot = int_arg(env, prop(env, t, "slot"));
    targets[i].state = (uint8_t)int_arg(env, prop(env, t, "state"));
    targets[i].backup = bool_arg(env, prop(env, t, "backup"));
    targets[i].drained = bool_arg(env, prop(env, t, "drained"));
    napi_value active;
    napi_get_element(env, argv[4], i, &active);
    if (targets[i].slot >= 0 && targets[i].slot < MAX_SLOTS) test_actives[targets[i].slot] = int_arg(env, active);
  }
  int order[MAX_TARGETS];
  int count = order_targets(targets, (int)n, (enum balance)int_arg(env, argv[1]), int_arg(env, argv[2]), (unsigned)int_arg(env, argv[3]),
                            test_active, order, MAX_TARGETS);
  free(targets);
  return int_array(env, order, count);
}

/* testProxyHeader(version, srcAddr, srcPort, dstAddr, dstPort, tlvs?): the header's bytes;
   tlvs: {authority, ssl: {client, verify, version, cn, cipher}, cred: {pid, uid, gid}}, each optional. */
static napi_value js_test_proxy_header(napi_env env, napi_callback_info info) {
  ARGS(6);
  struct sockaddr_storage src = sockaddr_of(env, argv[1], int_arg(env, argv[2]));
  struct sockaddr_storage dst = sockaddr_of(env, argv[3], int_arg(env, argv[4]));
  struct proxy_tlvs t = { 0 };
  char *authority = NULL, *version = NULL, *cn = NULL, *cipher = NULL;
  bool with_tlvs = !is_undefined(env, argv[5]);
  if (with_tlvs) {
    if (!is_undefined(env, prop(env, argv[5], "authority"))) t.authority = authority = string_copy(env, argv[5], "authority");
    napi_value ssl = prop(env, argv[5], "ssl");
    if (!is_undefined(env, ssl)) {
      t.ssl = true;
      t.client = (uint8_t)int_arg(env, prop(env, ssl, "client"));
      t.verify = (uint32_t)number_arg(env, prop(env, ssl, "verify"));
      if (!is_undefined(env, prop(env, ssl, "version"))) t.version = version = string_copy(env, ssl, "version");
      if (!is_undefined(env, prop(env, ssl, "cn"))) t.cn = cn = string_copy(env, ssl, "cn");
      if (!is_undefined(env, prop(env, ssl, "cipher"))) t.cipher = cipher = string_copy(env, ssl, "cipher");
    }
    napi_value cred = prop(env, argv[5], "cred");
    if (!is_undefined(env, cred)) {
      t.cred = true;
      t.pid = (uint32_t)number_arg(env, prop(env, cred, "pid"));
      t.uid = (uint32_t)number_arg(env, prop(env, cred, "uid"));
      t.gid = (uint32_t)number_arg(env, prop(env, cred, "gid"));
    }
  }
  size_t room = proxy_header_room(with_tlvs ? &t : NULL);
  char *out = malloc(room);
  napi_value result = undefined_result(env);
  if (out) {
    size_t len = proxy_header(int_arg(env, argv[0]), &src, &dst, with_tlvs ? &t : NULL, out, room);
    result = bytes_or_undefined(env, out, len, true);
  }
  free(out);
  free(authority);
  free(version);
  free(cn);
  free(cipher);
  return result;
}

/* A sockaddr as [address text, port], or [] for none. */
static napi_value address_pair(napi_env env, const struct sockaddr_storage *sa) {
  napi_value arr;
  napi_create_array(env, &arr);
  char text[INET6_ADDRSTRLEN] = "";
  int port = 0;
  if (sa->ss_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, text, sizeof text);
    port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
  } else if (sa->ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, text, sizeof text);
    port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  } else {
    return arr;
  }
  napi_set_element(env, arr, 0, text_value(env, text));
  napi_set_element(env, arr, 1, num(env, port));
  return arr;
}

/* testParseProxy(bytes, accept): proxy_parse as [length (0 more needed, -1 bad), local, src, dst, why]. */
static napi_value js_test_parse_proxy(napi_env env, napi_callback_info info) {
  ARGS(2);
  char *data;
  size_t len;
  if (!buffer_arg(env, argv[0], &data, &len)) return undefined_result(env);
  struct proxy_info out;
  int rc = proxy_parse((const uint8_t *)data, len, int_arg(env, argv[1]), &out);
  napi_value arr;
  napi_create_array_with_length(env, 5, &arr);
  napi_set_element(env, arr, 0, num(env, rc));
  napi_set_element(env, arr, 1, boolean(env, rc > 0 && out.local));
  napi_set_element(env, arr, 2, address_pair(env, rc > 0 && !out.local ? &out.src : &(struct sockaddr_storage){ 0 }));
  napi_set_element(env, arr, 3, address_pair(env, rc > 0 && !out.local ? &out.dst : &(struct sockaddr_storage){ 0 }));
  napi_set_element(env, arr, 4, text_value(env, rc < 0 ? out.why : ""));
  return arr;
}

/* testIdentity(rules {cn, dns, uri}, identities [{cn, dns, uri}]): identity_permits on each. */
static napi_value js_test_identity(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct identity_rules rules;
  if (!identity_rules_of(env, argv[0], &rules)) return undefined_result(env);
  uint32_t n = 0;
  napi_get_array_length(env, argv[1], &n);
  napi_value out;
  napi_create_array_with_length(env, n, &out);
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, argv[1], i, &v);
    struct identity_rules names; /* the same shape: a CN list of one, the DNS names, the URIs */
    struct identity id = { 0 };
    if (!identity_rules_of(env, v, &names)) continue;
    id.cn = names.ncn ? names.cn[0] : NULL;
    id.dns = names.dns;
    id.ndns = names.ndns;
    id.uri = names.uri;
    id.nuri = names.nuri;
    napi_set_element(env, out, i, boolean(env, identity_permits(&rules, &id)));
    identity_rules_free(&names);
  }
  identity_rules_free(&rules);
  return out;
}

/* testSources(limits {maxConn, rateCount, ratePeriodMs, prefixV6}, steps [[op, address, now]]):
   a fresh table run through admits ("admit": its verdict 0 ok, 1 per-source
   connections, 2 rate) and ends ("end"); returns each admit's verdict, then
   [live entries, idle entries]. Only while the relay is not running (the table is the process's). */
static napi_value js_test_sources(napi_env env, napi_callback_info info) {
  ARGS(2);
  if (relay.running) return undefined_result(env);
  sources_init();
  sources_clear();
  struct source_limits l = {
    .max_conn = int_arg(env, prop(env, argv[0], "maxConn")),
    .rate_count = (uint32_t)int_arg(env, prop(env, argv[0], "rateCount")),
    .rate_period = (uint32_t)int_arg(env, prop(env, argv[0], "ratePeriodMs")),
    .prefix_v6 = int_arg(env, prop(env, argv[0], "prefixV6")),
  };
  uint32_t n = 0;
  napi_get_array_length(env, argv[1], &n);
  napi_value verdicts;
  napi_create_array(env, &verdicts);
  uint32_t count = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value step, op, addr, now;
    napi_get_element(env, argv[1], i, &step);
    napi_get_element(env, step, 0, &op);
    napi_get_element(env, step, 1, &addr);
    napi_get_element(env, step, 2, &now);
    char kind[8] = "";
    size_t klen;
    napi_get_value_string_utf8(env, op, kind, sizeof kind, &klen);
    struct sockaddr_storage sa = sockaddr_of(env, addr, 0);
    struct source_key k;
    if (!source_key_of(&sa, l.prefix_v6, &k)) continue;
    int64_t at = (int64_t)number_arg(env, now);
    if (strcmp(kind, "admit") == 0) napi_set_element(env, verdicts, count++, num(env, source_admit(&k, &l, at)));
    else source_release(&k, &l);
  }
  int live, idle;
  source_table_size(&live, &idle);
  int sizes[2] = { live, idle };
  napi_set_element(env, verdicts, count, int_array(env, sizes, 2));
  sources_clear();
  return verdicts;
}

static napi_value init_module(napi_env env, napi_value exports) {
  const struct { const char *name; napi_callback fn; } fns[] = {
    { "init", js_init }, { "stop", js_stop }, { "opensslVersion", js_openssl_version },
    { "bindTcp", js_bind_tcp }, { "bindUnix", js_bind_unix }, { "probeAbstract", js_probe_abstract }, { "listen", js_listen }, { "unlisten", js_unlisten }, { "localAddress", js_local_address },
    { "setPolicy", js_set_policy }, { "rotateTicketKeys", js_rotate_ticket_keys }, { "reclaim", js_reclaim },
    { "candidates", js_candidates },
    { "dial", js_dial }, { "proceed", js_proceed }, { "admit", js_admit }, { "close", js_close },
    { "adopt", js_adopt }, { "resume", js_resume }, { "closeAll", js_close_all },
    { "handover", js_handover }, { "flushEvents", js_flush_events },
    { "counters", js_counters }, { "threadCounters", js_thread_counters }, { "slotCounts", js_slot_counts }, { "alive", js_alive },
    { "sourceTable", js_source_table },
    { "testAccess", js_test_access }, { "testOrder", js_test_order }, { "testProxyHeader", js_test_proxy_header },
    { "testParseProxy", js_test_parse_proxy }, { "testIdentity", js_test_identity }, { "testSources", js_test_sources },
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  fdstore_register(env, exports);
  napi_value hooks;
#ifdef SOCKBRIDGE_TEST_HOOKS
  napi_get_boolean(env, true, &hooks);
#else
  napi_get_boolean(env, false, &hooks);
#endif
  napi_set_named_property(env, exports, "testHooks", hooks);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init_module)
