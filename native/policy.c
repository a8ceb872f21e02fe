/* The policy snapshot: what TypeScript decided, in the form the relay
 * threads read on every connection without a lock.
 *
 * TypeScript compiles the configuration and the targets' states into an
 * immutable snapshot (addon.c builds it) and publishes it with one atomic
 * store; a reload or a target changing state publishes a new one. A thread
 * reads the newest snapshot at the start of each loop turn and holds it
 * until the turn ends; an old snapshot is freed once every thread has moved
 * past it (quiescent-state reclamation: a thread announces the generation it
 * may be reading before it loads the pointer, and 0 while it sleeps).
 *
 * The rules here have TypeScript twins (src/listen/access.ts,
 * src/targets/pool.ts's candidates()); test/differential.test.ts feeds both
 * the same inputs and checks that they agree.
 */
#include "dataplane.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

struct shared shared;

/* Snapshots replaced but perhaps still read (only the JavaScript thread touches this list). */
static struct policy *retired;

const struct policy *policy_enter(struct thread *t) {
  atomic_store(&t->reading_gen, atomic_load(&shared.gen));
  t->policy = atomic_load(&shared.policy);
  return t->policy;
}

void policy_leave(struct thread *t) {
  t->policy = NULL;
  atomic_store(&t->reading_gen, 0);
}

void policy_free(struct policy *p) {
  if (!p) return;
  if (p->tls) SSL_CTX_free(p->tls); /* sessions that use it hold their own reference */
  if (p->target_tls) SSL_CTX_free(p->target_tls);
  free(p->allow_uid);
  free(p->allow_gid);
  free(p->proxy_from);
  identity_rules_free(&p->client_identity);
  identity_rules_free(&p->target_identity);
  free(p->allow);
  free(p->deny);
  free(p->targets);
  free(p);
}

/* Publish a new snapshot (the JavaScript thread only); the old one is retired. */
void policy_publish(struct policy *p) {
  static uint64_t generation;
  p->gen = ++generation;
  struct policy *old = atomic_exchange(&shared.policy, p);
  atomic_store(&shared.gen, p->gen);
  if (old) {
    old->retired_next = retired;
    retired = old;
  }
  policy_reclaim();
}

/* Free the retired snapshots no thread can still be reading. */
void policy_reclaim(void) {
  uint64_t oldest = UINT64_MAX;
  for (int i = 0; i < relay.nthreads; i++) {
    uint64_t g = atomic_load(&relay.threads[i].reading_gen);
    if (g && g < oldest) oldest = g;
  }
  struct policy **link = &retired;
  while (*link) {
    struct policy *p = *link;
    /* A thread announcing generation g may hold any snapshot from g on. */
    if (p->gen < oldest) {
      *link = p->retired_next;
      policy_free(p);
    } else {
      link = &p->retired_next;
    }
  }
}

/* Everything, at stop (no thread runs). */
void policy_release_all(void) {
  policy_free(atomic_exchange(&shared.policy, NULL));
  while (retired) {
    struct policy *p = retired;
    retired = p->retired_next;
    policy_free(p);
  }
}

const struct target_ref *policy_target(const struct policy *p, int slot) {
  for (int i = 0; i < p->ntargets; i++)
    if (p->targets[i].slot == slot) return &p->targets[i];
  return NULL;
}

/* ---- the access list ------------------------------------------------------------------ */

/* An address as (family, bytes): IPv4-mapped IPv6 (a dual-stack listener's
   IPv4 clients) is IPv4, as operators write it. Returns 0 for other families. */
int address_bytes(const struct sockaddr_storage *sa, uint8_t out[16]) {
  if (sa->ss_family == AF_INET) {
    memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return 4;
  }
  if (sa->ss_family == AF_INET6) {
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(b, mapped, 12) == 0) {
      memcpy(out, b + 12, 4);
      return 4;
    }
    memcpy(out, b, 16);
    return 6;
  }
  return 0;
}

static bool in_prefix(const struct prefix *p, int family, const uint8_t *addr) {
  if (p->family != family) return false;
  int whole = p->bits / 8, rest = p->bits % 8;
  if (memcmp(p->addr, addr, (size_t)whole) != 0) return false;
  if (!rest) return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (p->addr[whole] & mask) == (addr[whole] & mask);
}

static bool any_match(const struct prefix *list, int n, int family, const uint8_t *addr) {
  for (int i = 0; i < n; i++)
    if (in_prefix(&list[i], family, addr)) return true;
  return false;
}

/* An allowed address is let in; otherwise a denied one is refused; otherwise
   it is let in (systemd's IPAddressAllow=/IPAddressDeny= rule). Clients of
   other families (a UNIX listener's) are not judged by addresses. */
bool access_check(const struct prefix *allow, int nallow, const struct prefix *deny, int ndeny, const struct sockaddr_storage *sa) {
  if (!nallow && !ndeny) return true;
  uint8_t addr[16];
  int family = address_bytes(sa, addr);
  if (!family) return true;
  if (any_match(allow, nallow, family, addr)) return true;
  return !any_match(deny, ndeny, family, addr);
}

bool access_permits(const struct policy *p, const struct sockaddr_storage *sa) {
  return access_check(p->allow, p->nallow, p->deny, p->ndeny, sa);
}

/* Whether the address is in one of the prefixes (--accept-proxy-from). */
bool in_prefixes(const struct prefix *list, int n, const struct sockaddr_storage *sa) {
  uint8_t addr[16];
  int family = address_bytes(sa, addr);
  return family && any_match(list, n, family, addr);
}

/* --allow-uid, --allow-gid: a UNIX listener's client runs as one of the
   users, or has one of the groups as its primary group (SO_PEERCRED) or a
   supplementary one (SO_PEERGROUPS, the groups it had when it connected).
   Without either list, anyone who may open the socket gets in. */
bool credentials_permit(const struct policy *p, int fd, const struct ucred *cred) {
  if (!p->nallow_uid && !p->nallow_gid) return true;
  if (!cred->pid) return false; /* unknown: refused, never waved through */
  for (int i = 0; i < p->nallow_uid; i++)
    if (p->allow_uid[i] == cred->uid) return true;
  for (int i = 0; i < p->nallow_gid; i++)
    if (p->allow_gid[i] == cred->gid) return true;
  if (!p->nallow_gid) return false;
  gid_t groups[256];
  socklen_t len = sizeof groups;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) return false; /* more than 256: refused */
  for (size_t g = 0; g < len / sizeof *groups; g++)
    for (int i = 0; i < p->nallow_gid; i++)
      if (p->allow_gid[i] == groups[g]) return true;
  return false;
}

/* ---- the targets a connect round tries, in order ---------------------------------------- */

/* The usable regular targets (not DOWN, not drained) by --balance; then the
   backups, those not DOWN first; then the regular targets marked DOWN (a
   mark can be stale, and a held client is better served late than never).
   `avoid` (the target that just dropped a retried request) goes last. The
   same order as TargetPool.candidates(). `turn` is roundrobin's; `active`
   gives each slot's open sessions (leastconn). Returns how many. */
int order_targets(const struct target_ref *targets, int n, enum balance balance, int avoid, unsigned turn,
                  int (*active)(int slot), int *out, int max) {
  int up[MAX_TARGETS], nup = 0, count = 0;
  for (int i = 0; i < n && nup < MAX_TARGETS; i++)
    if (!targets[i].backup && !targets[i].drained && targets[i].state != TS_DOWN) up[nup++] = targets[i].slot;
  if (nup >= 2 && balance != BAL_FIRST) {
    unsigned start = turn % (unsigned)nup;
    int rotated[MAX_TARGETS];
    for (int i = 0; i < nup; i++) rotated[i] = up[(start + (unsigned)i) % (unsigned)nup];
    memcpy(up, rotated, sizeof(int) * (size_t)nup);
    if (balance == BAL_LEASTCONN) {
      /* A stable insertion sort by open sessions: equals keep their turn, as HAProxy's do. */
      for (int i = 1; i < nup; i++) {
        int s = up[i], a = active(s), j = i - 1;
        while (j >= 0 && active(up[j]) > a) {
          up[j + 1] = up[j];
          j--;
        }
        up[j + 1] = s;
      }
    }
  }
  for (int i = 0; i < nup && count < max; i++) out[count++] = up[i];
  for (int pass = 0; pass < 2; pass++) /* backups: not DOWN, then DOWN */
    for (int i = 0; i < n && count < max; i++)
      if (targets[i].backup && !targets[i].drained && (targets[i].state == TS_DOWN) == (pass == 1)) out[count++] = targets[i].slot;
  for (int i = 0; i < n && count < max; i++)
    if (!targets[i].backup && !targets[i].drained && targets[i].state == TS_DOWN) out[count++] = targets[i].slot;
  if (avoid >= 0 && count >= 2) {
    for (int i = 0; i < count - 1; i++) {
      if (out[i] != avoid) continue;
      memmove(&out[i], &out[i + 1], sizeof(int) * (size_t)(count - 1 - i));
      out[count - 1] = avoid;
      break;
    }
  }
  return count;
}

static int slot_active(int slot) {
  return slot >= 0 && slot < MAX_SLOTS ? atomic_load_explicit(&shared.slots[slot].active, memory_order_relaxed) : 0;
}

/* The order for one round now: the shared turn advances only when it matters. */
int candidates(const struct policy *p, int avoid_slot, int *out, int max) {
  int regular_up = 0;
  for (int i = 0; i < p->ntargets; i++)
    if (!p->targets[i].backup && !p->targets[i].drained && p->targets[i].state != TS_DOWN) regular_up++;
  unsigned turn = regular_up >= 2 && p->balance != BAL_FIRST ? atomic_fetch_add_explicit(&shared.turn, 1, memory_order_relaxed) : 0;
  return order_targets(p->targets, p->ntargets, p->balance, avoid_slot, turn, slot_active, out, max);
}

/* ---- max-conn --------------------------------------------------------------------------- */

/* A slot under max-conn, unless someone waits in the queue: a new client
   never goes past the clients queued before it. */
bool take_admission(const struct policy *p) {
  if (atomic_load(&shared.queued) > 0) return false;
  if (atomic_fetch_add(&shared.admitted, 1) >= p->max_conn) {
    atomic_fetch_sub(&shared.admitted, 1);
    return false;
  }
  return true;
}

void release_admission(struct conn *c) {
  if (!c->admitted) return;
  c->admitted = false;
  atomic_fetch_sub(&shared.admitted, 1);
}
