/* Who a verified certificate names, and whether that identity may pass:
 * --tls-allow-cn/-dns/-uri for clients, --target-tls-allow-* for targets.
 *
 * The check runs inside OpenSSL's verification (verify_peer, the callback
 * of every context), once the chain, the name check and the CRLs have
 * passed, at the leaf: a refused identity fails the handshake with an
 * alert, as a certificate of another CA does, and never reaches a target.
 * The rules have a TypeScript twin (src/listen/identity.ts) that the
 * TypeScript relay uses; test/differential.test.ts feeds both the same
 * names and checks that they agree.
 *
 *  - a CN or DNS pattern is a name, or "*." then a name, the star standing
 *    for exactly one whole leftmost label; case is ignored (ASCII);
 *  - a URI pattern is exact and case-sensitive, or ends in a slash and a star and then
 *    matches any non-empty remainder after that prefix;
 *  - any match of any list lets the certificate in; no lists, any verified one.
 * A name with a NUL in it (a forged certificate's trick) matches nothing.
 */
#include "dataplane.h"

#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char lower(char ch) {
  return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

static bool same_ascii_case(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

bool name_matches(const char *pattern, const char *name) {
  size_t plen = strlen(pattern), nlen = strlen(name);
  if (plen >= 2 && pattern[0] == '*' && pattern[1] == '.') {
    const char *dot = strchr(name, '.');
    if (!dot || dot == name) return false; /* the leftmost label: one, not empty */
    size_t rest = nlen - (size_t)(dot - name);
    return rest == plen - 1 && same_ascii_case(dot, pattern + 1, rest);
  }
  return plen == nlen && same_ascii_case(pattern, name, nlen);
}

bool uri_matches(const char *pattern, const char *uri) {
  size_t plen = strlen(pattern), ulen = strlen(uri);
  if (plen >= 2 && pattern[plen - 1] == '*' && pattern[plen - 2] == '/')
    return ulen > plen - 1 && memcmp(uri, pattern, plen - 1) == 0;
  return strcmp(pattern, uri) == 0;
}

bool identity_rules_empty(const struct identity_rules *r) {
  return !r || (r->ncn == 0 && r->ndns == 0 && r->nuri == 0);
}

bool identity_permits(const struct identity_rules *r, const struct identity *id) {
  if (identity_rules_empty(r)) return true;
  for (int i = 0; i < r->ncn; i++)
    if (id->cn && name_matches(r->cn[i], id->cn)) return true;
  for (int i = 0; i < r->ndns; i++)
    for (int j = 0; j < id->ndns; j++)
      if (name_matches(r->dns[i], id->dns[j])) return true;
  for (int i = 0; i < r->nuri; i++)
    for (int j = 0; j < id->nuri; j++)
      if (uri_matches(r->uri[i], id->uri[j])) return true;
  return false;
}

void identity_rules_free(struct identity_rules *r) {
  char **lists[] = { r->cn, r->dns, r->uri };
  int counts[] = { r->ncn, r->ndns, r->nuri };
  for (int l = 0; l < 3; l++) {
    for (int i = 0; i < counts[l]; i++) free(lists[l][i]);
    free(lists[l]);
  }
  memset(r, 0, sizeof *r);
}

void identity_free(struct identity *id) {
  free(id->cn);
  for (int i = 0; i < id->ndns; i++) free(id->dns[i]);
  for (int i = 0; i < id->nuri; i++) free(id->uri[i]);
  free(id->dns);
  free(id->uri);
  memset(id, 0, sizeof *id);
}

/* An ASN.1 string as a C string, or NULL when it holds a NUL. */
static char *text_of(const unsigned char *data, int len) {
  if (len < 0 || memchr(data, 0, (size_t)len)) return NULL;
  char *s = malloc((size_t)len + 1);
  if (!s) return NULL;
  memcpy(s, data, (size_t)len);
  s[len] = '\0';
  return s;
}

static void add_name(char ***list, int *n, char *name) {
  if (!name) return;
  char **grown = realloc(*list, sizeof **list * (size_t)(*n + 1));
  if (!grown) {
    free(name);
    return;
  }
  *list = grown;
  (*list)[(*n)++] = name;
}

/* The subject's CN (the last one, as HAProxy's ssl_c_s_dn(CN) takes) and the
   SAN DNS names and URIs of a certificate. */
void identity_of(X509 *cert, struct identity *id) {
  memset(id, 0, sizeof *id);
  if (!cert) return;
  X509_NAME *subject = X509_get_subject_name(cert);
  int at = -1, last = -1;
  while ((at = X509_NAME_get_index_by_NID(subject, NID_commonName, at)) >= 0) last = at;
  if (last >= 0) {
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last)));
    if (len >= 0 && utf8) id->cn = text_of(utf8, len);
    OPENSSL_free(utf8);
  }
  GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
    if (g->type == GEN_DNS) add_name(&id->dns, &id->ndns, text_of(ASN1_STRING_get0_data(g->d.dNSName), ASN1_STRING_length(g->d.dNSName)));
    else if (g->type == GEN_URI)
      add_name(&id->uri, &id->nuri, text_of(ASN1_STRING_get0_data(g->d.uniformResourceIdentifier), ASN1_STRING_length(g->d.uniformResourceIdentifier)));
  }
  GENERAL_NAMES_free(names);
}

/* The SANs for a log line: "DNS:a.example.org, URI:spiffe://…", as OpenSSL prints them. */
char *identity_san_text(const struct identity *id) {
  size_t len = 1;
  for (int i = 0; i < id->ndns; i++) len += strlen(id->dns[i]) + 6;
  for (int i = 0; i < id->nuri; i++) len += strlen(id->uri[i]) + 6;
  char *out = malloc(len);
  if (!out) return NULL;
  out[0] = '\0';
  size_t at = 0;
  for (int i = 0; i < id->ndns; i++) at += (size_t)snprintf(out + at, len - at, "%sDNS:%s", at ? ", " : "", id->dns[i]);
  for (int i = 0; i < id->nuri; i++) at += (size_t)snprintf(out + at, len - at, "%sURI:%s", at ? ", " : "", id->uri[i]);
  return out;
}

/* Appends to a bounded buffer; what does not fit is cut (a log line, not data). */
static void put(char *out, size_t size, size_t *at, const char *text) {
  size_t n = strlen(text);
  if (*at + 1 >= size) return;
  if (n > size - 1 - *at) n = size - 1 - *at;
  memcpy(out + *at, text, n);
  *at += n;
  out[*at] = '\0';
}

/* A CN quoted as JavaScript's JSON.stringify quotes it, so both relays log the same words. */
static void put_quoted(char *out, size_t size, size_t *at, const char *s) {
  put(out, size, at, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char one[8];
    switch (*p) {
    case '"': put(out, size, at, "\\\""); continue;
    case '\\': put(out, size, at, "\\\\"); continue;
    case '\b': put(out, size, at, "\\b"); continue;
    case '\f': put(out, size, at, "\\f"); continue;
    case '\n': put(out, size, at, "\\n"); continue;
    case '\r': put(out, size, at, "\\r"); continue;
    case '\t': put(out, size, at, "\\t"); continue;
    default:
      if (*p < 0x20) snprintf(one, sizeof one, "\\u%04x", *p);
      else snprintf(one, sizeof one, "%c", *p);
      put(out, size, at, one);
    }
  }
  put(out, size, at, "\"");
}

static void put_list(char *out, size_t size, size_t *at, bool *first, const char *prefix, const char *kind, char **names, int n) {
  if (n == 0) return;
  put(out, size, at, *first ? " " : ", ");
  *first = false;
  put(out, size, at, prefix);
  put(out, size, at, kind);
  for (int i = 0; i < n; i++) {
    put(out, size, at, " ");
    put(out, size, at, names[i]);
  }
}

/* Why a certificate was refused, in the TypeScript relay's words
   (identity.ts describeNames + unmatched): 'target certificate CN "x", SAN
   DNS:y matches none of --target-tls-allow-cn a b, --target-tls-allow-uri …'. */
void identity_refusal_text(char *out, size_t size, const char *what, const struct identity *id, const char *san, const struct identity_rules *rules, const char *prefix) {
  size_t at = 0;
  out[0] = '\0';
  put(out, size, &at, what);
  put(out, size, &at, " ");
  if (id->cn) {
    put(out, size, &at, "CN ");
    put_quoted(out, size, &at, id->cn);
  } else {
    put(out, size, &at, "no CN");
  }
  put(out, size, &at, san && san[0] ? ", SAN " : ", no SAN DNS name or URI");
  if (san && san[0]) put(out, size, &at, san);
  put(out, size, &at, " matches none of");
  bool first = true;
  put_list(out, size, &at, &first, prefix, "-cn", rules->cn, rules->ncn);
  put_list(out, size, &at, &first, prefix, "-dns", rules->dns, rules->ndns);
  put_list(out, size, &at, &first, prefix, "-uri", rules->uri, rules->nuri);
}
