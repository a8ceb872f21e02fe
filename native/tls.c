/* TLS in the relay threads, with the OpenSSL Node itself runs with.
 *
 * Used the way HAProxy (src/ssl_sock.c) and nginx use it: OpenSSL is driven,
 * never waited on. Sockets are non-blocking; a handshake is one more phase
 * of a connection, with its deadline, whose epoll interest is whatever
 * OpenSSL last asked for (WANT_READ, WANT_WRITE); after it, TLS is a
 * transport (xprt_tls) under the one relay core. A context (SSL_CTX) is
 * built once per certificate set, shared read-only by every thread, and
 * replaced whole on reload: a session keeps the context it started with.
 * Each connection's errors are drained from the thread's error queue into
 * its own log line.
 *
 * Session tickets are encrypted with keys every context shares (ticket_cb),
 * so a ticket issued before a reload still resumes after it. The keys are
 * rotated (tls_rotate_ticket_keys); the previous ones are still accepted
 * for a rotation, then forgotten.
 */
#include "dataplane.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* ---- ticket keys ---------------------------------------------------------------------- */

struct ticket_key {
  unsigned char name[16];
  unsigned char aes[32];
  unsigned char hmac[32];
  bool set;
};

static struct {
  pthread_rwlock_t lock;
  struct ticket_key current, previous;
} tickets = { .lock = PTHREAD_RWLOCK_INITIALIZER };

/* A new current key; the old one still decrypts until the next rotation. Returns false on failure. */
bool tls_rotate_ticket_keys(void) {
  struct ticket_key k = { .set = true };
  if (RAND_bytes(k.name, sizeof k.name) != 1 || RAND_bytes(k.aes, sizeof k.aes) != 1 || RAND_bytes(k.hmac, sizeof k.hmac) != 1) return false;
  pthread_rwlock_wrlock(&tickets.lock);
  tickets.previous = tickets.current;
  tickets.current = k;
  pthread_rwlock_unlock(&tickets.lock);
  OPENSSL_cleanse(&k, sizeof k);
  return true;
}

static int ticket_init(const struct ticket_key *k, unsigned char *iv, EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int enc) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end() };
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  if (EVP_MAC_init(mac, k->hmac, sizeof k->hmac, NULL) != 1) return -1;
  int ok = enc ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, k->aes, iv) : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, k->aes, iv);
  return ok == 1 ? 1 : -1;
}

/* SSL_CTX_set_tlsext_ticket_key_evp_cb(3): 1 ok, 2 ok and issue a new
   ticket, 0 unknown key (a full handshake), -1 error. A resumption always
   gets a new ticket (2): TLS 1.3 clients use each ticket once (RFC 8446,
   C.4), and without one every other connection would be a full handshake. */
static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int enc) {
  (void)ssl;
  int rc = 0;
  pthread_rwlock_rdlock(&tickets.lock);
  if (enc) {
    if (!tickets.current.set || RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) rc = -1;
    else {
      memcpy(name, tickets.current.name, sizeof tickets.current.name);
      rc = ticket_init(&tickets.current, iv, cipher, mac, 1);
    }
  } else if (tickets.current.set && memcmp(name, tickets.current.name, 16) == 0) {
    rc = ticket_init(&tickets.current, iv, cipher, mac, 0) == 1 ? 2 : -1;
  } else if (tickets.previous.set && memcmp(name, tickets.previous.name, 16) == 0) {
    rc = ticket_init(&tickets.previous, iv, cipher, mac, 0) == 1 ? 2 : -1;
  }
  pthread_rwlock_unlock(&tickets.lock);
  return rc;
}

/* ---- verification ------------------------------------------------------------------------ */

/* A refusal's words, kept on the connection for its log line. */
static void refusal(struct conn *c, const char *text) {
  free(c->refusal);
  c->refusal = strdup(text);
}

/* Whether a peer's leaf certificate passes the identity allow-lists of
   policy p (the client's, or the target's at the client end); a refusal's
   words go to c->refusal. A client's names are kept for its log lines. */
static bool judge_identity(struct conn *c, const struct policy *p, X509 *cert, bool towards_target) {
  const struct identity_rules *rules = towards_target ? &p->target_identity : &p->client_identity;
  struct identity id;
  identity_of(cert, &id);
  char *san = identity_san_text(&id);
  bool allowed = identity_permits(rules, &id);
  if (!allowed) {
    char text[1024];
    identity_refusal_text(text, sizeof text, towards_target ? "target certificate" : "client certificate", &id, san, rules,
                          towards_target ? "--target-tls-allow" : "--tls-allow");
    refusal(c, text);
  }
  if (!towards_target) {
    free(c->peer_cn);
    free(c->peer_san);
    c->peer_cn = id.cn ? strdup(id.cn) : NULL;
    c->peer_san = san;
    san = NULL;
  }
  free(san);
  identity_free(&id);
  return allowed;
}

/* OpenSSL's verify callback, for clients (server contexts) and for targets
   (client contexts): called for each certificate of the chain, the leaf
   (depth 0) last, with ok saying whether it passed so far. Here: a stale CRL
   passes when --tls-crl-allow-stale says so; a revoked certificate's serial
   is kept for the log; and the leaf's identity must pass the allow-lists of
   the snapshot this thread reads (identity.c). */
static int verify_peer(int ok, X509_STORE_CTX *store) {
  SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
  struct conn *c = ssl ? SSL_get_app_data(ssl) : NULL;
  const struct policy *p = c && c->thread ? c->thread->policy : NULL;
  if (!c || !p) return ok;
  bool towards_target = ssl == c->server.ssl;
  X509 *cert = X509_STORE_CTX_get_current_cert(store);
  if (!ok) {
    int err = X509_STORE_CTX_get_error(store);
    if (err == X509_V_ERR_CRL_HAS_EXPIRED && p->crl_allow_stale && !towards_target) return 1;
    if (err == X509_V_ERR_CERT_REVOKED && cert) {
      char *serial = NULL;
      BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
      if (bn) serial = BN_bn2hex(bn);
      BN_free(bn);
      char text[160];
      snprintf(text, sizeof text, "certificate revoked (serial %s)", serial ? serial : "?");
      refusal(c, text);
      OPENSSL_free(serial);
    }
    return 0;
  }
  if (X509_STORE_CTX_get_error_depth(store) != 0 || !cert) return 1;
  if (judge_identity(c, p, cert, towards_target)) return 1;
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  return 0;
}

/* ---- contexts --------------------------------------------------------------------------- */

/* The reason of OpenSSL's first queued error, as its library says it ("no start line"), cleared. */
char *tls_error_text(unsigned long err) {
  const char *reason = err ? ERR_reason_error_string(err) : NULL;
  char buf[256];
  if (reason) snprintf(buf, sizeof buf, "%s", reason);
  else if (err) ERR_error_string_n(err, buf, sizeof buf);
  else snprintf(buf, sizeof buf, "unknown error");
  ERR_clear_error();
  return strdup(buf);
}

static BIO *pem_bio(const char *pem, size_t len) {
  return BIO_new_mem_buf(pem, (int)len);
}

/* The certificate chain: the first certificate is the server's, the others its chain. */
static bool use_chain(SSL_CTX *ctx, const char *pem, size_t len) {
  BIO *bio = pem_bio(pem, len);
  if (!bio) return false;
  X509 *leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  bool ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1;
  X509_free(leaf);
  X509 *extra;
  while (ok && (extra = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    ok = SSL_CTX_add0_chain_cert(ctx, extra) == 1; /* takes it */
    if (!ok) X509_free(extra);
  }
  BIO_free(bio);
  if (ok) ERR_clear_error(); /* the end of the PEM ("no start line") is not an error */
  return ok;
}

static bool use_key(SSL_CTX *ctx, const char *pem, size_t len) {
  BIO *bio = pem_bio(pem, len);
  if (!bio) return false;
  EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  BIO_free(bio);
  bool ok = key && SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
  EVP_PKEY_free(key);
  return ok;
}

/* Clients must present a certificate these CAs signed; they are also named
   to clients in the CertificateRequest, as Node's addCACert does. */
static bool use_client_cas(SSL_CTX *ctx, const char *pem, size_t len) {
  BIO *bio = pem_bio(pem, len);
  if (!bio) return false;
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  int n = 0;
  X509 *ca;
  while ((ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    X509_STORE_add_cert(store, ca);
    SSL_CTX_add_client_CA(ctx, ca);
    X509_free(ca);
    n++;
  }
  BIO_free(bio);
  ERR_clear_error();
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_peer);
  return n > 0;
}

/* --tls-crl: every CRL of the file, checked for the whole chain, as Node's
   crl option, HAProxy's crl-file and nginx's ssl_crl do (a CA of the chain
   without a CRL fails too). */
static bool use_crls(SSL_CTX *ctx, const char *pem, size_t len) {
  BIO *bio = pem_bio(pem, len);
  if (!bio) return false;
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  int n = 0;
  X509_CRL *crl;
  while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL) {
    if (X509_STORE_add_crl(store, crl) == 1) n++;
    X509_CRL_free(crl);
  }
  BIO_free(bio);
  ERR_clear_error();
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
  return n > 0;
}

/* A server context, or NULL with *error (owned) saying why. */
SSL_CTX *tls_context(const struct tls_settings *s, char **error) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  const char *step = "SSL_CTX_new";
  if (!ctx) goto fail;
  /* Node's: no SSLv2/3 (OpenSSL 3 has neither), its versions and ciphers,
     the server's cipher order. Client renegotiation stays off (OpenSSL 3's
     default), as in HAProxy: Node allows it and then limits it in
     JavaScript. A peer's FIN without close_notify is an EOF, as for a plain
     socket. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_IGNORE_UNEXPECTED_EOF |
                           (s->honor_cipher_order ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
  /* Buffers only while a record is in flight (memory per idle connection);
     partial writes, and a pending buffer that moves, as the relay core has. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  step = "protocol versions";
  if (SSL_CTX_set_min_proto_version(ctx, s->min_version) != 1 || SSL_CTX_set_max_proto_version(ctx, s->max_version) != 1) goto fail;
  step = "ciphers";
  if (s->ciphers[0] && SSL_CTX_set_cipher_list(ctx, s->ciphers) != 1) goto fail;
  if (s->suites[0] && SSL_CTX_set_ciphersuites(ctx, s->suites) != 1) goto fail;
  step = "tls-cert";
  if (!use_chain(ctx, s->cert, s->cert_len)) goto fail;
  step = "tls-key";
  if (!use_key(ctx, s->key, s->key_len)) goto fail;
  step = "tls-ca";
  if (s->ca && !use_client_cas(ctx, s->ca, s->ca_len)) goto fail;
  step = "tls-crl";
  if (s->crl && !use_crls(ctx, s->crl, s->crl_len)) goto fail;
  /* Resumption by tickets only (no per-process session cache), as Node's. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
  static const unsigned char sid_ctx[] = "sockbridge";
  SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
  return ctx;
fail: {
    char *why = tls_error_text(ERR_peek_last_error());
    size_t n = strlen(step) + strlen(why) + 3;
    *error = malloc(n);
    if (*error) snprintf(*error, n, "%s: %s", step, why);
    free(why);
    SSL_CTX_free(ctx);
    return NULL;
  }
}

/* A client context for TCP targets: verification always on (SSL_VERIFY_PEER
   against the CAs TypeScript read: --target-tls-ca or the system's bundle),
   this end's certificate when one is given, Node's versions and ciphers. */
SSL_CTX *tls_client_context(const struct tls_settings *s, char **error) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  const char *step = "SSL_CTX_new";
  if (!ctx) goto fail;
  SSL_CTX_set_options(ctx, SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  step = "protocol versions";
  if (SSL_CTX_set_min_proto_version(ctx, s->min_version) != 1 || SSL_CTX_set_max_proto_version(ctx, s->max_version) != 1) goto fail;
  step = "ciphers";
  if (s->ciphers[0] && SSL_CTX_set_cipher_list(ctx, s->ciphers) != 1) goto fail;
  if (s->suites[0] && SSL_CTX_set_ciphersuites(ctx, s->suites) != 1) goto fail;
  step = "target-tls-ca";
  BIO *bio = s->ca ? pem_bio(s->ca, s->ca_len) : NULL;
  if (!bio) goto fail;
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  int n = 0;
  X509 *ca;
  while ((ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    X509_STORE_add_cert(store, ca);
    X509_free(ca);
    n++;
  }
  BIO_free(bio);
  ERR_clear_error();
  if (n == 0) goto fail;
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_peer);
  if (s->cert && s->cert_len) {
    step = "target-tls-cert";
    if (!use_chain(ctx, s->cert, s->cert_len)) goto fail;
    step = "target-tls-key";
    if (!use_key(ctx, s->key, s->key_len)) goto fail;
  }
  return ctx;
fail: {
    char *why = tls_error_text(ERR_peek_last_error());
    size_t len = strlen(step) + strlen(why) + 3;
    *error = malloc(len);
    if (*error) snprintf(*error, len, "%s: %s", step, why);
    free(why);
    SSL_CTX_free(ctx);
    return NULL;
  }
}

/* ---- the transport ----------------------------------------------------------------------- */

/* What an SSL_ERROR_* means for the relay core: -1 with errno (EAGAIN: wait for *wants). */
static ssize_t tls_failed(struct side *s, int rc, uint32_t *wants) {
  int e = SSL_get_error(s->ssl, rc);
  switch (e) {
  case SSL_ERROR_WANT_READ:
    *wants = EPOLLIN;
    errno = EAGAIN;
    return -1;
  case SSL_ERROR_WANT_WRITE:
    *wants = EPOLLOUT;
    errno = EAGAIN;
    return -1;
  case SSL_ERROR_ZERO_RETURN:
    return 0;
  case SSL_ERROR_SYSCALL:
    ERR_clear_error();
    if (errno == 0) return 0; /* EOF without close_notify: an end of stream, as for a plain socket */
    return -1;
  default:
    ERR_clear_error();
    errno = EPROTO;
    return -1;
  }
}

static ssize_t tls_recv(struct side *s, char *buf, size_t len) {
  size_t n = 0;
  ERR_clear_error();
  errno = 0;
  int rc = SSL_read_ex(s->ssl, buf, len, &n);
  if (rc == 1) {
    s->read_wants = EPOLLIN;
    return (ssize_t)n;
  }
  return tls_failed(s, rc, &s->read_wants);
}

static ssize_t tls_send(struct side *s, const char *buf, size_t len) {
  size_t n = 0;
  ERR_clear_error();
  errno = 0;
  int rc = SSL_write_ex(s->ssl, buf, len, &n);
  if (rc == 1) {
    s->write_wants = EPOLLOUT;
    return (ssize_t)n;
  }
  ssize_t r = tls_failed(s, rc, &s->write_wants);
  if (r < 0 && errno == EAGAIN) return 0;
  if (r == 0) {
    errno = EPIPE; /* the peer closed: nothing more can be written */
    return -1;
  }
  return r;
}

/* The TLS form of half-close: close_notify, never waiting for the peer's
   (it may go on sending), then the socket's own. */
static void tls_shut_wr(struct side *s) {
  ERR_clear_error();
  SSL_shutdown(s->ssl);
  ERR_clear_error();
  shutdown(s->fd, SHUT_WR);
}

const struct xprt xprt_tls = { .recv = tls_recv, .send = tls_send, .shut_wr = tls_shut_wr, .short_read_drains = false };

void tls_free(struct side *s) {
  if (!s->ssl) return;
  SSL_free(s->ssl);
  s->ssl = NULL;
  s->xprt = &xprt_raw;
}

/* ---- the handshake --------------------------------------------------------------------- */

bool tls_begin(struct thread *t, struct conn *c, SSL_CTX *ctx) {
  SSL *ssl = SSL_new(ctx);
  if (!ssl) return false;
  if (SSL_set_fd(ssl, c->client.fd) != 1) {
    SSL_free(ssl);
    return false;
  }
  SSL_set_accept_state(ssl);
  SSL_set_app_data(ssl, c); /* for verify_peer */
  c->client.ssl = ssl;
  c->client.xprt = &xprt_tls;
  c->before_tls = false;
  c->phase = PH_HANDSHAKE;
  uint32_t limit = t->policy->handshake_timeout;
  c->deadline = t->now + (limit ? limit : DEFAULT_HANDSHAKE_MS);
  note_timeouts(t, c);
  tls_handshake_step(t, c);
  return true;
}

/* A refused handshake: logged with the reason (TypeScript's tls-refused), and
   the client closed; it never reached a target. */
static void tls_refuse(struct thread *t, struct conn *c, long verify, char *reason) {
  struct event *ev = new_event(EV_TLS_REFUSED);
  if (ev) {
    event_from_conn(ev, c);
    ev->err = (int)verify;
    ev->data = reason;
    ev->len = reason ? strlen(reason) : 0;
    ev->san = c->peer_san;
    c->peer_san = NULL;
    push_event(ev);
  } else {
    free(reason);
  }
  /* A FIN after OpenSSL's alert, so that the client can read why; a
     half-read ClientHello makes the kernel send a reset anyway. */
  conn_end(t, c, R_DROPPED, 0, false);
}

/* A resumed session skips verification: its identity (kept in the ticket) is
   judged again by the rules of now. (A reload that changes the CAs, the CRLs
   or the rules also forgets every ticket: see js_set_policy.) */
static bool resumed_identity(struct thread *t, struct conn *c) {
  X509 *cert = SSL_get0_peer_certificate(c->client.ssl);
  if (!cert || judge_identity(c, t->policy, cert, false)) return true;
  char *why = c->refusal;
  c->refusal = NULL;
  tls_refuse(t, c, X509_V_ERR_APPLICATION_VERIFICATION, why);
  return false;
}

void tls_handshake_step(struct thread *t, struct conn *c) {
  struct side *s = &c->client;
  ERR_clear_error();
  errno = 0;
  int rc = SSL_do_handshake(s->ssl);
  if (rc == 1) {
    if (SSL_session_reused(s->ssl) && !resumed_identity(t, c)) return;
    atomic_fetch_add_explicit(&t->handshakes, 1, memory_order_relaxed);
    c->tls_done = true;
    c->deadline = 0;
    c->last_active = t->now;
    s->read_wants = EPOLLIN;
    s->write_wants = EPOLLOUT;
    set_interest(t, s, 0);
    return admit_to_target(t, c);
  }
  int e = SSL_get_error(s->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    set_interest(t, s, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
    return;
  }
  long verify = SSL_get_verify_result(s->ssl);
  unsigned long err = ERR_peek_last_error();
  char *reason;
  if (c->refusal) {
    reason = c->refusal;
    c->refusal = NULL;
  } else if (err) reason = tls_error_text(err);
  else reason = strdup(e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "closed during the TLS handshake");
  ERR_clear_error();
  tls_refuse(t, c, verify, reason);
}

void tls_handshake_timeout(struct thread *t, struct conn *c) {
  tls_refuse(t, c, X509_V_OK, strdup("no TLS handshake within the client timeout"));
}

/* ---- towards a target ----------------------------------------------------------------------- */

/* Connected to a TCP target that speaks TLS: the client side of a handshake,
   checking that its certificate names target->tls_name (an IP address is
   checked as one, and sent as no SNI). */
bool tls_target_begin(struct thread *t, struct conn *c, const struct target_ref *target) {
  SSL *ssl = SSL_new(t->policy->target_tls);
  if (!ssl) return false;
  struct in6_addr ip;
  bool literal = inet_pton(AF_INET, target->tls_name, &ip) == 1 || inet_pton(AF_INET6, target->tls_name, &ip) == 1;
  bool ok = SSL_set_fd(ssl, c->server.fd) == 1;
  if (ok && literal) ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), target->tls_name) == 1;
  if (ok && !literal) ok = SSL_set_tlsext_host_name(ssl, target->tls_name) == 1 && SSL_set1_host(ssl, target->tls_name) == 1;
  if (!ok) {
    SSL_free(ssl);
    ERR_clear_error();
    return false;
  }
  SSL_set_connect_state(ssl);
  SSL_set_app_data(ssl, c); /* for verify_peer */
  c->server.ssl = ssl;
  c->server.xprt = &xprt_tls;
  c->phase = PH_TARGET_TLS;
  return true;
}

/* 1 done, 0 waiting (interest set), -1 failed: *err EPROTO when TLS refused
   (*why, owned, says why), or the socket's own error (a reset, an EOF: the
   target went away mid-handshake, and the client is held as for a refused
   connect: nothing reached the program). */
int tls_target_step(struct thread *t, struct conn *c, char **why, int *err) {
  struct side *s = &c->server;
  ERR_clear_error();
  errno = 0;
  int rc = SSL_do_handshake(s->ssl);
  if (rc == 1) {
    s->read_wants = EPOLLIN;
    s->write_wants = EPOLLOUT;
    return 1;
  }
  int e = SSL_get_error(s->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    set_interest(t, s, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
    return 0;
  }
  long verify = SSL_get_verify_result(s->ssl);
  unsigned long queued = ERR_peek_last_error();
  /* Nothing says TLS refused (no error queued, the certificate not refused):
     the connection went away under the handshake (an EOF, a reset, a
     close_notify from a server being stopped). */
  if (!queued && verify == X509_V_OK && !c->refusal) {
    *err = errno ? errno : ECONNRESET;
    ERR_clear_error();
    return -1;
  }
  char buf[1100];
  /* An identity refusal is said in the TypeScript relay's words (identity_refusal_text). */
  if (verify == X509_V_ERR_APPLICATION_VERIFICATION && c->refusal) snprintf(buf, sizeof buf, "%s", c->refusal);
  else if (verify != X509_V_OK) snprintf(buf, sizeof buf, "TLS: the target's certificate was refused: %s", c->refusal ? c->refusal : X509_verify_cert_error_string(verify));
  else {
    char *text = tls_error_text(queued);
    snprintf(buf, sizeof buf, "TLS: %s", text);
    free(text);
  }
  ERR_clear_error();
  free(c->refusal);
  c->refusal = NULL;
  *why = strdup(buf);
  *err = EPROTO;
  return -1;
}

/* The OpenSSL this addon runs with: the process's, whichever it is. */
unsigned long tls_library_version(void) {
  return OpenSSL_version_num();
}
