/* sockbridge's data plane: what its C files share.
 *
 * TypeScript owns the policy; the data plane enforces it on the fast path;
 * everything unusual goes back to TypeScript. TypeScript compiles the
 * configuration into an immutable policy snapshot (policy.c) that the relay
 * threads read without locks; with it each thread accepts on the shared
 * listening sockets (accept.c), admits or refuses, terminates TLS (tls.c),
 * connects to the chosen target, writes the PROXY header (proxy.c) and
 * relays (relay.c), in one struct per connection and one function per
 * step, after systemd's socket-proxyd.c. What is not routine is handed to
 * TypeScript as an event and waits, parked, for its answer: a client over
 * max-conn (the queue), a target that refused (hold-and-retry), a request
 * dropped before any reply (a retry). The restart hand-over (threads.c),
 * systemd's fd store (fdstore.c) and the Node-API surface (addon.c) are the
 * rest.
 *
 * Threads own their connections: other threads (the JavaScript one) talk to
 * a thread only through its command queue and eventfd, and hear from it
 * only through the event queue (addon.c). OpenSSL is the process's own
 * (Node's): this addon is compiled against OpenSSL 3.0 headers and not
 * linked with libssl, so its symbols bind to the one copy already loaded.
 * Everything here is hidden (-fvisibility=hidden, -Bsymbolic): the process
 * exports OpenSSL's internals too (Node 22's has a tls_free of its own), and
 * a call to one of ours must never land in one of theirs.
 */
#ifndef SOCKBRIDGE_DATAPLANE_H
#define SOCKBRIDGE_DATAPLANE_H

#define _GNU_SOURCE
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#define READ_SIZE (64 * 1024)
/* The same limit as the TypeScript relay: a longer request is not retried. */
#define REPLAY_LIMIT (64 * 1024)
#define MAX_THREADS 64
#define MAX_LISTENERS 16
/* Targets are numbered by slots that live as long as TypeScript's Target objects. */
#define MAX_SLOTS 4096
/* Targets in one snapshot (a --target-dir may hold many sockets). */
#define MAX_TARGETS 1024
#define EVENTS_PER_WAIT 64
#define PARKED_BUCKETS 1024
/* Idle entries the per-source table keeps for their rates (limits.c). */
#define SOURCE_IDLE_MAX 4096
/* The longest PROXY header read (v1's is 107 bytes; v2's TLVs can carry a certificate's names). */
#define PROXY_MAX 4096

/* Accepts per readiness event, so that one busy listener cannot starve the thread's sessions. */
#define ACCEPT_BATCH 16
/* After EMFILE and friends: stop accepting for a while instead of spinning on
   a listening socket that stays readable. */
#define ACCEPT_PAUSE_MS 100
#define KEEPALIVE_IDLE_S 60
/* A TLS handshake without a client timeout still ends (as Node's handshakeTimeout). */
#define DEFAULT_HANDSHAKE_MS 30000
/* A front's PROXY header without a client timeout still has a deadline (as the TypeScript relay's). */
#define PROXY_DEFAULT_MS 5000

/* Why a session ended, in the order of CLOSE_REASONS in src/dataplane/events.ts. */
enum reason {
  R_DONE, R_CLIENT_TIMEOUT, R_SERVER_TIMEOUT, R_CLIENT_ERROR, R_SERVER_ERROR, R_MARKED_DOWN, R_SHUTDOWN,
  R_CONNECT_TIMEOUT, R_TARGET_DENIED, R_TARGET_ERROR,
  R_DROPPED, /* a queued client closed unserved (queue full, stop): not a session, not logged */
};

/* Why a client was refused before anything of it was read (EV_DENIED), in the
   order of DENY_REASONS in src/dataplane/events.ts. */
enum deny_reason { DENY_ACCESS, DENY_CONN_PER_SOURCE, DENY_RATE_PER_SOURCE, DENY_CREDENTIALS, DENY_PROXY, DENY_KINDS };

/* Events for JavaScript, in the order of EventKind in src/dataplane/events.ts. */
enum event_kind {
  EV_END = 1,          /* a session ended */
  EV_PARKED,           /* a client waits for TypeScript: queued, held for a target, or a retry */
  EV_DIALED,           /* a connect TypeScript asked for (dial) finished */
  EV_DENIED,           /* refused by the access list before anything was read */
  EV_TLS_REFUSED,      /* its TLS handshake failed, or its certificate was refused */
  EV_ACCEPT_ERROR,     /* accept(2) failed on a listener */
  EV_UNLISTENED,       /* a thread stopped accepting on a listener */
  EV_HANDED,           /* a restart: a connection given back, open, for the fd store */
  EV_HANDOVER_DONE,    /* a restart: this thread gave back all it could */
};

/* Why a client is parked (EV_PARKED), in the order of ParkedWhy in src/dataplane/events.ts. */
enum parked_why { PK_QUEUED, PK_HELD, PK_RETRY, PK_HELD_BEFORE_TLS };

/* What an epoll entry points at: each of these structs starts with its kind. */
enum pollable_kind { P_SIDE, P_WAKEUP, P_LISTENER };

struct conn;
struct thread;
struct side;

/* How bytes move on one side: a plain socket, or TLS over it (tls.c), as
   HAProxy's xprt_ops. The relay core above it is written once. */
struct xprt {
  /* >0 bytes read; 0 end of stream; -1 with errno (EAGAIN: would block). */
  ssize_t (*recv)(struct side *s, char *buf, size_t len);
  /* >=0 bytes taken (0: would block); -1 with errno. */
  ssize_t (*send)(struct side *s, const char *buf, size_t len);
  /* End our writing towards this side (half-close). */
  void (*shut_wr)(struct side *s);
  /* Whether a read that returned less than asked has emptied the source
     (a socket: yes; TLS returns one record at a time: no). */
  bool short_read_drains;
};

extern const struct xprt xprt_raw;
extern const struct xprt xprt_tls;

/* One socket of a session. */
struct side {
  enum pollable_kind kind; /* P_SIDE; first, as in every pollable */
  int fd;
  uint32_t interest;       /* what epoll watches for; meaningful while registered */
  bool registered;
  bool hup;                /* EPOLLHUP seen: reads never block now, and epoll would report it forever */
  const struct xprt *xprt;
  SSL *ssl;                /* xprt_tls only */
  /* What the last blocked TLS read and write wait for (EPOLLIN or EPOLLOUT):
     a TLS read may need to write, and a write to read. Raw: IN and OUT. */
  uint32_t read_wants, write_wants;
  int outq;                /* the kernel's send queue at the last idle check (SIOCOUTQ) */
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

enum phase {
  PH_PROXY,     /* from a trusted front: its PROXY header being read; not admitted yet */
  PH_HANDSHAKE, /* TLS listener: the client's handshake; no target yet */
  PH_PARKED,    /* waiting for TypeScript (enum parked_why); not polled */
  PH_DIALING,   /* a TCP connect to the target in progress (its own deadline) */
  PH_TARGET_TLS, /* connected; the TLS handshake with the target in progress */
  PH_RELAY,     /* both sides open, bytes moving */
};

/* A client's source for the per-source limits: an IPv4 address, or an IPv6 prefix. */
struct source_key {
  uint8_t family; /* 4 or 6 */
  uint8_t bytes[16];
};

struct conn {
  struct side client, server;
  struct direction up, down;
  enum phase phase;
  enum parked_why parked;
  uint64_t id;               /* thread index in the low bits (see conn_id) */
  struct thread *thread;
  /* Where it comes from, for the log entry and the PROXY header. */
  struct sockaddr_storage peer, local;
  socklen_t peer_len, local_len;
  struct ucred cred;         /* a UNIX listener's client: who it is (SO_PEERCRED); pid 0 when unknown */
  struct source_key source;  /* its source for the per-source limits (limits.c) */
  bool source_counted;       /* counted there as an open session */
  bool proxied;              /* its address came from a PROXY header (peer and local are the header's) */
  char *proxy_buf;           /* PH_PROXY: the header's bytes read so far (PROXY_MAX) */
  size_t proxy_len;
  int listener;
  int slot;                  /* the target it is (or was last) connected to, -1 none */
  int64_t started_at;        /* wall clock ms, for the log entry's duration */
  int64_t last_active;       /* monotonic ms */
  int64_t deadline;          /* monotonic ms: the handshake's or the connect attempt's end, 0 none */
  int dial_slot;             /* PH_DIALING, PH_TARGET_TLS: the target being connected to */
  bool dial_for_js;          /* that connect was asked for by TypeScript (dial): it hears how it went */
  uint32_t client_timeout, server_timeout; /* ms, 0 = none */
  uint64_t bytes_in, bytes_out;
  /* The client's bytes until the target's first byte, for a retry. */
  char *replay;
  size_t replay_len;
  int retries_left;
  bool replaying;
  bool client_spoke_last;    /* who owes the next byte, for the timeout's name */
  bool admitted;             /* counted against max-conn (shared.admitted) */
  bool counted_active;       /* counted in the thread's relaying sessions */
  bool tls_done;             /* a TLS client whose handshake completed: cannot be carried */
  bool before_tls;           /* a TLS listener's client whose handshake has not started */
  SSL_CTX *tls_ctx;          /* the TLS in force when it was accepted (or adopted): its handshake's, even after a reload */
  char *peer_cn, *peer_san;  /* a TLS peer's certificate: its CN and SANs as text, for the log and the PROXY header */
  char *refusal;             /* why verification refused a certificate, when OpenSSL's reason says too little */
  bool closed;               /* ended: only waits to be freed at the end of the loop turn */
  bool handing;              /* a restart takes it: not read any more, handed back once its buffers are empty */
  uint8_t send_proxy;        /* 0 none, 1 v1, 2 v2: taken from the snapshot when the session starts */
  struct conn *prev, *next;  /* the thread's connections */
  struct conn *hnext;        /* its thread's index of parked connections, by id */
  bool indexed;
};

/* ---- the policy snapshot (policy.c) ---------------------------------------------- */

/* Who a certificate must name to pass (identity.c): empty lists, any verified one. */
struct identity_rules {
  char **cn, **dns, **uri;
  int ncn, ndns, nuri;
};

/* Who a certificate names: its subject's CN and its SAN DNS names and URIs. */
struct identity {
  char *cn;
  char **dns, **uri;
  int ndns, nuri;
};

/* A CIDR, as an address range of one family. */
struct prefix {
  uint8_t family; /* 4 or 6 */
  uint8_t bits;
  uint8_t addr[16];
};

/* --max-conn-per-source, --rate-per-source, --source-prefix-v6. */
struct source_limits {
  int max_conn;          /* 0: none */
  uint32_t rate_count;   /* 0: none */
  uint32_t rate_period;  /* ms */
  int prefix_v6;
};

enum source_verdict { SV_OK, SV_CONN, SV_RATE, SV_NOMEM };

/* A PROXY header read (proxy.c): who the front says the client is. */
struct proxy_info {
  bool local;                    /* LOCAL, UNKNOWN or a family without addresses: the front's own connection */
  struct sockaddr_storage src, dst;
  socklen_t src_len, dst_len;
  char why[160];                 /* a bad header: why */
};

/* What a v2 PROXY header carries beyond the addresses (--send-proxy v2):
   for a TLS client the SSL TLV and the SNI, for a UNIX listener's client its
   credentials. Strings are NULL when absent. */
struct proxy_tlvs {
  const char *authority;    /* PP2_TYPE_AUTHORITY: the SNI */
  bool ssl;                 /* PP2_TYPE_SSL */
  uint8_t client;           /* PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS */
  uint32_t verify;          /* 0: the client's certificate was verified */
  const char *version, *cn, *cipher; /* its sub-TLVs */
  bool cred;                /* PP2_TYPE_SOCKBRIDGE_CRED (0xE0): pid, uid, gid */
  uint32_t pid, uid, gid;
};

enum target_state { TS_INIT, TS_UP, TS_DOWN };
enum balance { BAL_FIRST, BAL_ROUNDROBIN, BAL_LEASTCONN };

struct target_ref {
  int slot;
  struct sockaddr_storage addr;
  socklen_t addr_len;
  uint8_t state;   /* enum target_state */
  bool backup;
  bool drained;
  int retries;     /* requests dropped unanswered sent again on this target, at most */
  char tls_name[256]; /* TCP with TLS: the name its certificate must carry, sent as SNI; "" no TLS */
};

struct policy {
  uint64_t gen;
  /* The access list: an allowed address wins over a denied one (AccessList's rule). */
  struct prefix *allow, *deny;
  int nallow, ndeny;
  struct target_ref *targets; /* regular ones first, in their order, then backups */
  int ntargets;
  enum balance balance;
  uint8_t send_proxy;         /* 0, 1 or 2 */
  uint32_t client_timeout, server_timeout, handshake_timeout;
  uint32_t attempt_timeout;   /* one TCP connect attempt (and its TLS handshake) at most */
  int max_conn;
  SSL_CTX *tls;               /* TLS on every listener, or NULL */
  SSL_CTX *target_tls;        /* TLS towards TCP targets, or NULL */
  struct identity_rules client_identity, target_identity; /* --tls-allow-*, --target-tls-allow-* */
  uid_t *allow_uid;           /* --allow-uid, --allow-gid: a UNIX listener's clients */
  gid_t *allow_gid;
  int nallow_uid, nallow_gid;
  struct source_limits limits;
  uint8_t accept_proxy;       /* 0 none, 1 v1, 2 v2, 3 either */
  struct prefix *proxy_from;  /* --accept-proxy-from */
  int nproxy_from;
  bool crl_allow_stale;       /* --tls-crl-allow-stale */
  struct policy *retired_next;
};

/* What changes per session: shared by all threads, outside the snapshot. */
struct shared {
  _Atomic(struct policy *) policy;
  atomic_uint_fast64_t gen;          /* the newest snapshot's generation */
  atomic_int admitted;               /* sessions counted against max-conn (relaying, held, retrying) */
  atomic_int queued;                 /* clients TypeScript holds in its max-conn queue: new ones go behind them */
  atomic_uint turn;                  /* roundrobin's turn */
  /* Per target: open sessions (leastconn, status) and connects that
     succeeded (TypeScript's error-limit counts only consecutive failures). */
  struct { atomic_int active; atomic_uint ok; } slots[MAX_SLOTS];
};

extern struct shared shared;

/* What TypeScript passes for TLS (src/dataplane/policy.ts): the PEM files it
   read and checked, and Node's own defaults, so that both relays offer the
   same TLS. Borrowed from JavaScript's Buffers while the context is built. */
struct tls_settings {
  const char *cert, *key, *ca; /* a client context (towards targets): cert and key may be absent, ca is what to trust */
  const char *crl;             /* --tls-crl's CRLs (PEM), or NULL */
  size_t cert_len, key_len, ca_len, crl_len;
  const char *ciphers, *suites; /* TLS 1.2 cipher list, TLS 1.3 suites ("" = OpenSSL's) */
  int min_version, max_version; /* TLS1_2_VERSION … */
  bool honor_cipher_order;
};

/* ---- threads (threads.c) ------------------------------------------------------------- */

enum command_kind {
  C_START,     /* relay a connected pair (resume: a previous process's session) */
  C_ADOPT,     /* park a client (a previous process's waiting one, or a queued one) */
  C_DIAL,      /* connect a parked client to a target */
  C_PROCEED,   /* a client held before its TLS handshake: start it */
  C_ADMIT,     /* a queued client's turn has come: hold it (PK_HELD) for TypeScript's dial */
  C_CLOSE,     /* close one parked client */
  C_CLOSE_ALL, /* close every session, or those on some targets */
  C_LISTEN, C_UNLISTEN,
  C_PING, C_STOP, C_HANDOVER,
  C_ACCEPTED,  /* a client another thread accepted, for this less loaded one */
};

struct command {
  enum command_kind kind;
  struct conn *conn;   /* C_START, C_ADOPT */
  uint64_t id;         /* C_DIAL, C_PROCEED, C_ADMIT, C_CLOSE */
  int arg;             /* C_DIAL: slot; C_CLOSE(_ALL): reason; C_PING: its number; C_HANDOVER: grace ms; C_(UN)LISTEN: index */
  int arg2;            /* C_CLOSE: errno; C_DIAL: retries left */
  int *slots;          /* C_CLOSE_ALL: only sessions on these targets (owned), or all when NULL */
  int nslots;
  struct sockaddr_storage peer; /* C_ACCEPTED: the client's address (arg: its fd, arg2: the listener) */
  socklen_t peer_len;
  struct command *next;
};

/* A listening socket as one thread polls it. */
struct thread_listener {
  enum pollable_kind kind; /* P_LISTENER */
  int index;
  bool polled;             /* in this thread's epoll set */
  int64_t paused_until;    /* after EMFILE: added again then */
};

struct thread {
  pthread_t tid;
  int epfd;
  enum pollable_kind wakeup_kind; /* P_WAKEUP: the eventfd's epoll entry points here */
  int wakeup_fd;
  pthread_mutex_t lock;
  struct command *head, *tail;
  struct conn *conns;
  struct conn *parked[PARKED_BUCKETS]; /* parked connections by id: TypeScript names them in its commands */
  struct conn *dead;          /* ended this turn; freed after the turn's events */
  char *readbuf;
  int64_t now;
  uint32_t sweep_ms;          /* idle sweep interval, 0 while no session has a timeout */
  int64_t next_sweep;
  int64_t next_resume;        /* the earliest paused listener's resume time, 0 none */
  bool lazy_owner;            /* it queued the oldest lazy event: it wakes when that batch is due */
  const struct policy *policy; /* the snapshot this turn reads */
  atomic_uint_fast64_t reading_gen; /* 0 while it holds no snapshot (see policy.c) */
  struct thread_listener listeners[MAX_LISTENERS];
  bool stopping;
  bool handing_over;          /* C_HANDOVER ran: sessions still emptying their buffers */
  int64_t handover_deadline;
  int handover_closed_tls, handover_closed_full;
  struct event *handover_done; /* allocated when the handover starts, so that it can always be sent */
  int index;
  atomic_uint_fast64_t next_seq; /* also read by the JavaScript thread (adopt, resume) */
  atomic_int_fast64_t active;        /* relaying sessions */
  atomic_uint_fast64_t bytes_in, bytes_out;
  atomic_uint_fast64_t accepted, handshakes; /* clients this thread accepted, TLS handshakes it completed */
  atomic_int answered;         /* the last C_PING this thread ran (see js_alive) */
};

/* A message for JavaScript (addon.c delivers them in batches). */
struct event {
  enum event_kind kind;
  uint64_t id;
  int reason, err, slot, listener, why;
  int client_fd, server_fd;
  int directions_done, retries_left;
  bool flag;                 /* END: reset sent; PARKED/HANDED: the client ended its writing; HANDED: before TLS */
  bool tls;                  /* END/PARKED: a TLS session */
  bool before_tls;           /* PARKED/HANDED: a TLS listener's client whose handshake has not started */
  uint64_t bytes_in, bytes_out;
  int64_t started_at;
  int64_t ended_at;          /* END: wall clock ms (it may wait for its batch: push_event_lazy) */
  struct sockaddr_storage peer;
  socklen_t peer_len;
  struct ucred cred;
  char *data;                /* HANDED: replay bytes; TLS_REFUSED: the reason (owned) */
  char *cn, *san;            /* END, TLS_REFUSED: the client certificate's CN and SANs (owned), or NULL */
  size_t len;
  struct event *next;
};

/* The listening sockets, shared by all threads (accept.c). */
struct listener {
  int fd;
  atomic_bool used;          /* written by the JavaScript thread only */
  bool passed;               /* from systemd: shared with it, so never shut down */
  atomic_int acks;           /* threads that stopped polling it (C_UNLISTEN) */
};

extern struct listener listeners[MAX_LISTENERS];
extern int nlisteners;

struct relay_state {
  int nthreads;
  struct thread threads[MAX_THREADS];
  atomic_uint cursor;          /* where the next least-loaded search starts (every thread searches) */
  int ping;
  atomic_int handover_budget;  /* sessions the fd store can still take (C_HANDOVER) */
  bool running;
};

extern struct relay_state relay;

/* ---- functions each file offers the others ------------------------------------------ */

/* threads.c */
int64_t now_ms(void);
int64_t wall_ms(void);
void send_command(struct thread *t, struct command *cmd);
struct thread *least_loaded(void);
void dialed(uint64_t id, int err, int slot, char *why);
struct thread *thread_of(uint64_t id);
uint64_t conn_id(struct thread *t);
void conn_link(struct thread *t, struct conn *c);
struct conn *conn_find(struct thread *t, uint64_t id);
void park_index(struct thread *t, struct conn *c, bool on);
int thread_start_all(int n);
void thread_stop_all(void);

/* relay.c */
struct conn *conn_new(struct thread *t, int client_fd);
void conn_hand_back(struct thread *t, struct conn *c);
void conn_unpark(struct thread *t, struct conn *c);
void free_conn(struct conn *c);
void read_peer_cred(struct conn *c);
void conn_end(struct thread *t, struct conn *c, enum reason reason, int err, bool forced);
void conn_park(struct thread *t, struct conn *c, enum parked_why why, int err, int slot, char *reason);
void relay_begin(struct thread *t, struct conn *c, int server_fd, int slot);
void side_event(struct thread *t, struct side *s, uint32_t events);
void update_interest(struct thread *t, struct conn *c);
void set_interest(struct thread *t, struct side *s, uint32_t want);
void sweep(struct thread *t);
void note_timeouts(struct thread *t, struct conn *c);
void count_active(struct thread *t, struct conn *c, bool on);
void source_carried(struct thread *t, struct conn *c);

/* accept.c */
void accept_ready(struct thread *t, struct thread_listener *tl);
void admit_new(struct thread *t, int index, int fd, const struct sockaddr_storage *sa, socklen_t len);
void listener_poll(struct thread *t, int index, bool on);
void resume_listeners(struct thread *t);
void admit_to_target(struct thread *t, struct conn *c);
void proxy_step(struct thread *t, struct conn *c);
void proxy_timeout(struct thread *t, struct conn *c);
void continue_admitted(struct thread *t, struct conn *c);
int dial_start(struct thread *t, struct conn *c, int slot, bool for_js, int *err);
void dial_step(struct thread *t, struct conn *c, uint32_t events);
void dial_timeout(struct thread *t, struct conn *c);
int bind_tcp(const char *host, int port);
int bind_unix(const char *path, size_t len);
int listener_open(int fd, int backlog, bool passed);
void listener_close(int index);
void listener_unpolled(int index);

/* policy.c */
const struct policy *policy_enter(struct thread *t);
void policy_leave(struct thread *t);
bool access_permits(const struct policy *p, const struct sockaddr_storage *sa);
bool in_prefixes(const struct prefix *list, int n, const struct sockaddr_storage *sa);
bool credentials_permit(const struct policy *p, int fd, const struct ucred *cred);
int candidates(const struct policy *p, int avoid_slot, int *out, int max);
bool take_admission(const struct policy *p);
void release_admission(struct conn *c);
void policy_reclaim(void);
void policy_free(struct policy *p);
void policy_publish(struct policy *p);
void policy_release_all(void);
int address_bytes(const struct sockaddr_storage *sa, uint8_t out[16]);
bool access_check(const struct prefix *allow, int nallow, const struct prefix *deny, int ndeny, const struct sockaddr_storage *sa);
int order_targets(const struct target_ref *targets, int n, enum balance balance, int avoid, unsigned turn,
                  int (*active)(int slot), int *out, int max);
const struct target_ref *policy_target(const struct policy *p, int slot);

/* tls.c */
bool tls_begin(struct thread *t, struct conn *c, SSL_CTX *ctx);
void tls_handshake_step(struct thread *t, struct conn *c);
void tls_handshake_timeout(struct thread *t, struct conn *c);
bool tls_target_begin(struct thread *t, struct conn *c, const struct target_ref *target);
int tls_target_step(struct thread *t, struct conn *c, char **why, int *err);
SSL_CTX *tls_client_context(const struct tls_settings *s, char **error);
void tls_free(struct side *s);
char *tls_error_text(unsigned long err);
SSL_CTX *tls_context(const struct tls_settings *s, char **error);
bool tls_rotate_ticket_keys(void);
unsigned long tls_library_version(void);

/* identity.c */
bool name_matches(const char *pattern, const char *name);
bool uri_matches(const char *pattern, const char *uri);
bool identity_rules_empty(const struct identity_rules *r);
bool identity_permits(const struct identity_rules *r, const struct identity *id);
void identity_rules_free(struct identity_rules *r);
void identity_of(X509 *cert, struct identity *id);
void identity_free(struct identity *id);
char *identity_san_text(const struct identity *id);
void identity_refusal_text(char *out, size_t size, const char *what, const struct identity *id, const char *san, const struct identity_rules *rules, const char *prefix);

/* proxy.c */
size_t proxy_header(int version, const struct sockaddr_storage *src, const struct sockaddr_storage *dst, const struct proxy_tlvs *tlvs, char *out, size_t cap);
int proxy_parse(const uint8_t *buf, size_t len, int accept, struct proxy_info *out);
size_t proxy_header_room(const struct proxy_tlvs *tlvs);

/* limits.c */
void sources_init(void);
bool source_key_of(const struct sockaddr_storage *sa, int prefix_v6, struct source_key *k);
enum source_verdict source_admit(const struct source_key *k, const struct source_limits *l, int64_t now);
void source_add(const struct source_key *k, int64_t now);
void source_release(const struct source_key *k, const struct source_limits *l);
void source_table_size(int *live, int *idle);
int source_idle_budget(void);
void sources_clear(void);

/* addon.c */
struct event *new_event(enum event_kind kind);
void push_event(struct event *ev);
void push_event_lazy(struct thread *t, struct event *ev);
int events_due_in(int64_t now);
void events_due(int64_t now);
void event_from_conn(struct event *ev, const struct conn *c);


/* Test builds (-DSOCKBRIDGE_TEST_HOOKS, the sanitizer build of make test-asan)
   can make named steps fail on purpose (SOCKBRIDGE_FAILPOINTS=name:count,...),
   so that tests reach the paths only out-of-memory or a teardown would;
   elsewhere a failpoint is the constant false. */
#ifdef SOCKBRIDGE_TEST_HOOKS
bool failpoint(const char *name);
void failpoints_load(void);
#else
static inline bool failpoint(const char *name) { (void)name; return false; }
static inline void failpoints_load(void) {}
#endif

#endif
