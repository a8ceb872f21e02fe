/* Per-source limits (--max-conn-per-source, --rate-per-source), HAProxy
 * stick-table style, shared by every relay thread.
 *
 * A source is a client's IPv4 address, or its IPv6 address cut to
 * --source-prefix-v6 bits (IPv4-mapped IPv6 counts as IPv4). Each source
 * seen has an entry: its open sessions (always counted, whether a limit is
 * set or not, so that a reload that sets one starts from the truth; a
 * restart's carried sessions are counted again as the next process takes
 * them) and its connections let in during the current and the previous
 * window of the rate's period. The rules, exactly as the TypeScript twin
 * (src/listen/source-limits.ts) words them: the concurrent limit first,
 * then the rate; a refused connection counts for nothing, so at most N are
 * let in per period however hard a source knocks, and it gets back in as
 * soon as it is under again. The rate is a sliding estimate, as HAProxy's
 * freq_ctr: this window's count plus the previous one's weighted by how
 * much of it the last period still covers.
 *
 * Memory stays bounded: an entry with open sessions lives as long as they
 * do (their number is bounded by the descriptors the process has); without
 * a rate limit an entry goes with its last session; with one it stays,
 * idle, in a least-recently-seen list (its release, or a refused attempt),
 * dropped once its windows lapse (two periods) or, past SOURCE_IDLE_MAX
 * idle entries, when it is the oldest. So the table holds at most the live
 * sources plus SOURCE_IDLE_MAX, and a flood from more sources than that
 * only makes the oldest idle sources' rates start again from zero, never
 * a live source's count.
 *
 * The table is split into stripes, each with its lock, by the key's hash:
 * threads admitting clients of different sources rarely meet. The rules
 * have a TypeScript twin (src/listen/source-limits.ts);
 * test/differential.test.ts runs both on the same sequence of events.
 */
#include "dataplane.h"

#include <stdlib.h>
#include <string.h>

#define STRIPES 64
#define BUCKETS 256 /* per stripe */

struct source {
  struct source_key key;
  int live;               /* sessions open now */
  int64_t window;         /* the current rate window's start (monotonic ms) */
  uint32_t cur, prev;     /* connections let in during the current and the previous window */
  struct source *hnext;   /* its bucket */
  struct source *older, *newer; /* the stripe's idle list, while live == 0 */
};

struct stripe {
  pthread_mutex_t lock;
  struct source *buckets[BUCKETS];
  struct source *oldest, *newest; /* idle entries, least recently used first */
  int idle, live;
};

static struct stripe stripes[STRIPES];
static const int idle_max_per_stripe = SOURCE_IDLE_MAX / STRIPES;

void sources_init(void) {
  static bool done;
  if (done) return;
  done = true;
  for (int i = 0; i < STRIPES; i++) pthread_mutex_init(&stripes[i].lock, NULL);
}

/* The source of an address: false for a client without an IP address (a UNIX listener's). */
bool source_key_of(const struct sockaddr_storage *sa, int prefix_v6, struct source_key *k) {
  memset(k, 0, sizeof *k);
  int family = address_bytes(sa, k->bytes);
  if (!family) return false;
  k->family = (uint8_t)family;
  if (family == 6) {
    int bits = prefix_v6 < 1 ? 1 : prefix_v6 > 128 ? 128 : prefix_v6;
    for (int i = 0; i < 16; i++) {
      int keep = bits - i * 8;
      k->bytes[i] &= keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
    }
  }
  return true;
}

static uint32_t hash_key(const struct source_key *k) {
  uint32_t h = 2166136261u ^ k->family; /* FNV-1a */
  for (int i = 0; i < 16; i++) h = (h ^ k->bytes[i]) * 16777619u;
  return h;
}

static struct stripe *stripe_of(uint32_t h) {
  return &stripes[h % STRIPES];
}

static struct source **bucket_of(struct stripe *s, uint32_t h) {
  return &s->buckets[(h / STRIPES) % BUCKETS];
}

static struct source *find(struct stripe *s, uint32_t h, const struct source_key *k) {
  for (struct source *e = *bucket_of(s, h); e; e = e->hnext)
    if (memcmp(&e->key, k, sizeof *k) == 0) return e;
  return NULL;
}

static void idle_unlink(struct stripe *s, struct source *e) {
  if (e->older) e->older->newer = e->newer;
  else s->oldest = e->newer;
  if (e->newer) e->newer->older = e->older;
  else s->newest = e->older;
  e->older = e->newer = NULL;
  s->idle--;
}

static void idle_push(struct stripe *s, struct source *e) {
  e->older = s->newest;
  e->newer = NULL;
  if (s->newest) s->newest->newer = e;
  else s->oldest = e;
  s->newest = e;
  s->idle++;
}

static void forget(struct stripe *s, uint32_t h, struct source *e) {
  for (struct source **link = bucket_of(s, h); *link; link = &(*link)->hnext) {
    if (*link != e) continue;
    *link = e->hnext;
    break;
  }
  free(e);
}

/* The two fixed windows moved on to now: the next one after one period, a
   fresh start after two or more (quiet for a whole window: as new). */
static void roll(struct source *e, int64_t period, int64_t now) {
  int64_t k = (now - e->window) / period;
  if (k == 1) {
    e->prev = e->cur;
    e->cur = 0;
    e->window += period;
  } else if (k >= 2) {
    e->prev = e->cur = 0;
    e->window = now;
  }
}

/* Whether one more connection would be over N per period: this window's
   count plus the previous one's, weighted by how much of it the last period
   still covers, compared in integers so that C and TypeScript agree to the
   millisecond (every term stays below 2^53). */
static bool over_rate(const struct source *e, int64_t n, int64_t period, int64_t now) {
  int64_t elapsed = now - e->window < 0 ? 0 : now - e->window;
  return (int64_t)e->cur * period + (int64_t)e->prev * (period - elapsed) >= n * period;
}

/* Idle entries whose windows lapsed are the same as none: dropped from the oldest end. */
static void drop_lapsed(struct stripe *s, int64_t period, int64_t now) {
  while (s->oldest && now - s->oldest->window >= 2 * period) {
    struct source *old = s->oldest;
    idle_unlink(s, old);
    forget(s, hash_key(&old->key), old);
  }
}

enum source_verdict source_admit(const struct source_key *k, const struct source_limits *l, int64_t now) {
  uint32_t h = hash_key(k);
  struct stripe *s = stripe_of(h);
  bool rate = l->rate_count && l->rate_period;
  pthread_mutex_lock(&s->lock);
  if (rate) drop_lapsed(s, l->rate_period, now);
  struct source *e = find(s, h, k);
  enum source_verdict v = SV_OK;
  bool fresh = false;
  if (e) {
    if (rate) roll(e, l->rate_period, now);
    if (l->max_conn && e->live >= l->max_conn) {
      v = SV_CONN;
    } else if (rate && over_rate(e, l->rate_count, l->rate_period, now)) {
      v = SV_RATE;
      if (e->live == 0) { /* seen again: the recent end of the idle list */
        idle_unlink(s, e);
        idle_push(s, e);
      }
    }
  } else {
    e = calloc(1, sizeof *e);
    if (!e) {
      pthread_mutex_unlock(&s->lock);
      return SV_NOMEM;
    }
    e->key = *k;
    e->window = now;
    struct source **b = bucket_of(s, h);
    e->hnext = *b;
    *b = e;
    fresh = true;
  }
  if (v == SV_OK) {
    if (e->live == 0 && !fresh) idle_unlink(s, e);
    if (e->live++ == 0) s->live++;
    if (rate) e->cur++;
  }
  pthread_mutex_unlock(&s->lock);
  return v;
}

/* A carried session (a restart's): counted, never refused. */
void source_add(const struct source_key *k, int64_t now) {
  struct source_limits none = { 0 };
  source_admit(k, &none, now);
}

/* A session of this source ended: without a rate its entry goes with its
   last session; with one it stays, idle, for its windows. */
void source_release(const struct source_key *k, const struct source_limits *l) {
  uint32_t h = hash_key(k);
  struct stripe *s = stripe_of(h);
  pthread_mutex_lock(&s->lock);
  struct source *e = find(s, h, k);
  if (e && e->live > 0 && --e->live == 0) {
    s->live--;
    if (!l->rate_count || !l->rate_period) {
      forget(s, h, e);
    } else {
      idle_push(s, e);
      while (s->idle > idle_max_per_stripe) {
        struct source *old = s->oldest;
        idle_unlink(s, old);
        forget(s, hash_key(&old->key), old);
      }
    }
  }
  pthread_mutex_unlock(&s->lock);
}

/* How many entries the table holds: with open sessions, and idle. */
void source_table_size(int *live, int *idle) {
  *live = *idle = 0;
  for (int i = 0; i < STRIPES; i++) {
    pthread_mutex_lock(&stripes[i].lock);
    *live += stripes[i].live;
    *idle += stripes[i].idle;
    pthread_mutex_unlock(&stripes[i].lock);
  }
}

int source_idle_budget(void) {
  return idle_max_per_stripe * STRIPES;
}

/* Everything, at stop (no thread runs) and for a test's fresh table. */
void sources_clear(void) {
  for (int i = 0; i < STRIPES; i++) {
    struct stripe *s = &stripes[i];
    pthread_mutex_lock(&s->lock);
    for (int b = 0; b < BUCKETS; b++) {
      for (struct source *e = s->buckets[b], *next; e; e = next) {
        next = e->hnext;
        free(e);
      }
      s->buckets[b] = NULL;
    }
    s->oldest = s->newest = NULL;
    s->idle = s->live = 0;
    pthread_mutex_unlock(&s->lock);
  }
}
