/* The PROXY protocol (HAProxy's spec, versions 1 and 2), both ways.
 *
 * Sent (--send-proxy), it tells the program behind the UNIX socket who the
 * client is: the same bytes as src/session/proxy-protocol.ts writes
 * (test/differential.test.ts compares them). Both ends IPv4 (or
 * IPv4-mapped) make a TCP4 header, anything else a TCP6 one with IPv4
 * written as ::ffff:a.b.c.d; a client without an IP address is UNKNOWN (v1)
 * or LOCAL (v2). A v2 header also carries TLVs, in this order: the SNI
 * (PP2_TYPE_AUTHORITY), the TLS facts (PP2_TYPE_SSL with its sub-TLVs
 * version, CN, cipher), a UNIX listener's client's credentials (0xE0, ours:
 * pid, uid, gid as 32-bit big-endian numbers). HAProxy reads TLVs after a
 * LOCAL header too, so the credentials reach it.
 *
 * Received (--accept-proxy), from a trusted front: proxy_parse reads a
 * header as HAProxy's conn_recv_proxy does, but strictly (canonical
 * addresses, decimal ports without leading zeros), and says as soon as the
 * bytes so far cannot be one, so that a stranger's bytes fail at once
 * instead of at the deadline.
 */
#include "dataplane.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PP2_TYPE_AUTHORITY 0x02
#define PP2_TYPE_SSL 0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CN 0x22
#define PP2_SUBTYPE_SSL_CIPHER 0x23
#define PP2_TYPE_SOCKBRIDGE_CRED 0xE0

static const unsigned char V2_SIGNATURE[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

static int port_of(const struct sockaddr_storage *sa) {
  if (sa->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  if (sa->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  return -1;
}

/* As 16 bytes, IPv4 mapped. */
static void as_v6(const uint8_t *bytes, int family, uint8_t out[16]) {
  if (family == 6) {
    memcpy(out, bytes, 16);
    return;
  }
  memset(out, 0, 10);
  out[10] = out[11] = 0xff;
  memcpy(out + 12, bytes, 4);
}

static size_t text_len(const char *text) {
  return text ? strlen(text) : 0;
}

/* The room the header needs at most, TLVs included. */
size_t proxy_header_room(const struct proxy_tlvs *t) {
  size_t n = 16 + 36 + 232; /* v2 with IPv6 addresses, or v1 */
  if (t) n += 3 + text_len(t->authority) + 3 + 5 + 3 * 3 + text_len(t->version) + text_len(t->cn) + text_len(t->cipher) + 3 + 12;
  return n;
}

static uint8_t *put_tlv(uint8_t *o, uint8_t type, const void *value, size_t len) {
  o[0] = type;
  o[1] = (uint8_t)(len >> 8);
  o[2] = (uint8_t)len;
  memcpy(o + 3, value, len);
  return o + 3 + len;
}

static uint8_t *put_text(uint8_t *o, uint8_t type, const char *text) {
  return text ? put_tlv(o, type, text, text_len(text)) : o;
}

static uint8_t *put_u32(uint8_t *o, uint32_t v) {
  o[0] = (uint8_t)(v >> 24);
  o[1] = (uint8_t)(v >> 16);
  o[2] = (uint8_t)(v >> 8);
  o[3] = (uint8_t)v;
  return o + 4;
}

/* The TLVs at o; returns where they end. */
static uint8_t *put_tlvs(uint8_t *o, const struct proxy_tlvs *t) {
  if (!t) return o;
  if (t->authority && t->authority[0]) o = put_text(o, PP2_TYPE_AUTHORITY, t->authority);
  if (t->ssl) {
    uint8_t *head = o;
    o += 3;
    *o++ = t->client;
    o = put_u32(o, t->verify);
    o = put_text(o, PP2_SUBTYPE_SSL_VERSION, t->version);
    o = put_text(o, PP2_SUBTYPE_SSL_CN, t->cn);
    o = put_text(o, PP2_SUBTYPE_SSL_CIPHER, t->cipher);
    size_t len = (size_t)(o - head) - 3;
    head[0] = PP2_TYPE_SSL;
    head[1] = (uint8_t)(len >> 8);
    head[2] = (uint8_t)len;
  }
  if (t->cred) {
    uint8_t v[12];
    put_u32(put_u32(put_u32(v, t->pid), t->uid), t->gid);
    o = put_tlv(o, PP2_TYPE_SOCKBRIDGE_CRED, v, sizeof v);
  }
  return o;
}

/* The header into out (cap at least proxy_header_room(tlvs)); returns its length. */
size_t proxy_header(int version, const struct sockaddr_storage *src, const struct sockaddr_storage *dst, const struct proxy_tlvs *tlvs, char *out, size_t cap) {
  uint8_t s[16], d[16];
  int sf = address_bytes(src, s), df = address_bytes(dst, d);
  int sp = port_of(src), dp = port_of(dst);
  bool known = sf && df && sp >= 0 && dp >= 0;
  bool four = known && sf == 4 && df == 4;
  if (version == 1) {
    if (!known) return (size_t)snprintf(out, cap, "PROXY UNKNOWN\r\n");
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    if (four) {
      inet_ntop(AF_INET, s, a, sizeof a);
      inet_ntop(AF_INET, d, b, sizeof b);
    } else {
      uint8_t s6[16], d6[16];
      as_v6(s, sf, s6);
      as_v6(d, df, d6);
      inet_ntop(AF_INET6, s6, a, sizeof a);
      inet_ntop(AF_INET6, d6, b, sizeof b);
    }
    return (size_t)snprintf(out, cap, "PROXY TCP%c %s %s %d %d\r\n", four ? '4' : '6', a, b, sp, dp);
  }
  uint8_t *o = (uint8_t *)out;
  memcpy(o, V2_SIGNATURE, 12);
  uint8_t *at = o + 16;
  if (!known) {
    o[12] = 0x20; /* version 2, LOCAL */
    o[13] = 0x00;
  } else {
    o[12] = 0x21; /* version 2, PROXY */
    o[13] = four ? 0x11 : 0x21; /* TCP over IPv4 or IPv6 */
    size_t alen = four ? 4 : 16;
    if (four) {
      memcpy(at, s, 4);
      memcpy(at + 4, d, 4);
    } else {
      as_v6(s, sf, at);
      as_v6(d, df, at + 16);
    }
    at += alen * 2;
    *at++ = (uint8_t)(sp >> 8);
    *at++ = (uint8_t)sp;
    *at++ = (uint8_t)(dp >> 8);
    *at++ = (uint8_t)dp;
  }
  at = put_tlvs(at, tlvs);
  size_t body = (size_t)(at - o) - 16;
  o[14] = (uint8_t)(body >> 8);
  o[15] = (uint8_t)body;
  return (size_t)(at - o);
}

/* ---- reading one -------------------------------------------------------------------------- */

/* The checks and their words are those of src/session/proxy-protocol.ts's
   parseProxyHeader, in the same order, so that both relays refuse a header
   for the same reason and say it the same way. */

static const char V1_PREFIX[] = "PROXY ";
#define V1_MAX 107 /* the spec's longest line, CRLF included */

/* Whether the bytes so far agree with `whole` (as far as either goes). */
static bool starts_like(const uint8_t *buf, size_t len, const void *whole, size_t whole_len) {
  return memcmp(buf, whole, len < whole_len ? len : whole_len) == 0;
}

__attribute__((format(printf, 2, 3))) static int bad(struct proxy_info *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out->why, sizeof out->why, fmt, ap);
  va_end(ap);
  return -1;
}

/* A decimal port, 0 to 65535, without leading zeros. */
static bool port_text(const char *s, size_t n, int *port) {
  if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return false;
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  if (v > 65535) return false;
  *port = v;
  return true;
}

/* An address of the family (inet_pton: IPv4 without leading zeros; IPv6 without a zone). */
static bool address_text(int family, const char *s, size_t n, struct sockaddr_storage *sa, socklen_t *len) {
  char text[64];
  if (n == 0 || n >= sizeof text) return false;
  memcpy(text, s, n);
  text[n] = '\0';
  memset(sa, 0, sizeof *sa);
  if (family == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    if (inet_pton(AF_INET, text, &in->sin_addr) != 1) return false;
    in->sin_family = AF_INET;
    *len = sizeof *in;
  } else {
    struct sockaddr_in6 *in = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET6, text, &in->sin6_addr) != 1) return false;
    in->sin6_family = AF_INET6;
    *len = sizeof *in;
  }
  return true;
}

static void set_port(struct sockaddr_storage *sa, int port) {
  if (sa->ss_family == AF_INET) ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
  else ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
}

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n", "PROXY TCP6 …", "PROXY UNKNOWN …\r\n". */
static int parse_v1(const uint8_t *buf, size_t len, struct proxy_info *out) {
  size_t window = len < V1_MAX ? len : V1_MAX;
  const uint8_t *crp = memchr(buf, '\r', window), *lfp = memchr(buf, '\n', window);
  long cr = crp ? crp - buf : -1, lf = lfp ? lfp - buf : -1;
  if (lf >= 0 && lf != cr + 1) return bad(out, "a v1 line ended by a lone LF (CRLF expected)");
  if (cr >= 0 && (size_t)cr + 1 < window && buf[cr + 1] != '\n') return bad(out, "a lone CR in a v1 line (CRLF expected)");
  if (cr < 0 || (size_t)cr + 1 >= window) {
    if (len >= V1_MAX) return bad(out, "no CRLF within %d bytes: a v1 line too long", V1_MAX);
    return 0;
  }
  int length = (int)cr + 2;
  /* The fields, split on every space as the TypeScript twin's split(' '). */
  const char *line = (const char *)buf, *end = line + cr;
  const char *field[8];
  size_t flen[8];
  int nfields = 0;
  for (const char *p = line;; ) {
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    const char *stop = sp ? sp : end;
    if (nfields < 8) {
      field[nfields] = p;
      flen[nfields] = (size_t)(stop - p);
    }
    nfields++;
    if (!sp) break;
    p = sp + 1;
  }
  if (nfields >= 2 && flen[1] == 7 && memcmp(field[1], "UNKNOWN", 7) == 0) {
    out->local = true;
    return length;
  }
  int family = nfields >= 2 && flen[1] == 4 && memcmp(field[1], "TCP4", 4) == 0 ? 4 : nfields >= 2 && flen[1] == 4 && memcmp(field[1], "TCP6", 4) == 0 ? 6 : 0;
  if (!family) {
    /* At most 16 characters as the twin shows them: JSON.stringify of the
       line read as latin1 (\" \\ \b \t \n \f \r, \u00xx for other controls,
       every other byte the character of that code, in UTF-8). */
    char shown[16 * 6 + 3];
    size_t at = 0, n = nfields >= 2 ? (flen[1] < 16 ? flen[1] : 16) : 0;
    shown[at++] = '"';
    for (size_t i = 0; i < n; i++) {
      unsigned char ch = (unsigned char)field[1][i];
      const char *shorts = "\"\"\\\\\bb\tt\nn\ff\rr"; /* a character, then the letter of its short escape */
      const char *esc = ch ? strchr(shorts, ch) : NULL;
      if (esc && (esc - shorts) % 2 == 0) at += (size_t)snprintf(shown + at, sizeof shown - at, "\\%c", esc[1]);
      else if (ch < 0x20) at += (size_t)snprintf(shown + at, sizeof shown - at, "\\u%04x", ch);
      else if (ch >= 0x80) shown[at++] = (char)(0xc0 | ch >> 6), shown[at++] = (char)(0x80 | (ch & 0x3f));
      else shown[at++] = (char)ch;
    }
    shown[at++] = '"';
    shown[at] = '\0';
    return bad(out, "an unknown v1 protocol %s (TCP4, TCP6 or UNKNOWN)", shown);
  }
  if (nfields != 6) return bad(out, "a v1 line needs exactly two addresses and two ports, one space apart");
  if (!address_text(family, field[2], flen[2], &out->src, &out->src_len) || !address_text(family, field[3], flen[3], &out->dst, &out->dst_len))
    return bad(out, "a v1 address that is not IPv%d (TCP%d)", family, family);
  int sport, dport;
  if (!port_text(field[4], flen[4], &sport) || !port_text(field[5], flen[5], &dport))
    return bad(out, "a v1 port that is not a number from 0 to 65535 without leading zeros");
  set_port(&out->src, sport);
  set_port(&out->dst, dport);
  return length;
}

/* What is wrong with the version/command byte and the family/protocol byte (false: nothing). */
static bool v2_fixed(const uint8_t *buf, size_t len, struct proxy_info *out) {
  if (len <= 12) return false;
  if (buf[12] >> 4 != 2) return bad(out, "a v2 signature with version %d (2 expected)", buf[12] >> 4), true;
  if ((buf[12] & 0x0f) > 1) return bad(out, "an unknown v2 command %d (LOCAL 0 or PROXY 1)", buf[12] & 0x0f), true;
  if (len <= 13) return false;
  if (buf[13] >> 4 > 3) return bad(out, "an unknown v2 address family %d", buf[13] >> 4), true;
  if ((buf[13] & 0x0f) > 2) return bad(out, "an unknown v2 transport protocol %d", buf[13] & 0x0f), true;
  return false;
}

/* LOCAL, or a family or protocol without addresses (UNSPEC, UNIX): the
   front's own connection; PROXY over INET or INET6 with STREAM: addresses;
   with DGRAM: an error. Its TLVs are skipped unread: the spec makes them
   optional, and what a front says of its client beyond the address is not
   passed on. */
static int parse_v2(const uint8_t *buf, size_t len, struct proxy_info *out) {
  if (v2_fixed(buf, len, out)) return -1;
  if (len < 16) return 0;
  int command = buf[12] & 0x0f, family = buf[13] >> 4, protocol = buf[13] & 0x0f;
  size_t declared = ((size_t)buf[14] << 8) | buf[15], total = 16 + declared;
  if (total > PROXY_MAX) return bad(out, "a v2 header of %zu bytes, longer than %d", total, PROXY_MAX);
  size_t need = family == 1 ? 12 : family == 2 ? 36 : family == 3 ? 216 : 0;
  if (command == 1 && protocol != 0 && need && declared < need)
    return bad(out, "a v2 length of %zu, shorter than the %zu bytes of its addresses", declared, need);
  if (len < total) return 0;
  if (command == 0 || family == 0 || protocol == 0 || family == 3) {
    out->local = true;
    return (int)total;
  }
  if (protocol == 2) return bad(out, "a v2 header for a datagram (UDP) connection");
  const uint8_t *a = buf + 16;
  size_t alen = family == 1 ? 4 : 16;
  memset(&out->src, 0, sizeof out->src);
  memset(&out->dst, 0, sizeof out->dst);
  if (family == 1) {
    struct sockaddr_in *sa = (struct sockaddr_in *)&out->src, *da = (struct sockaddr_in *)&out->dst;
    sa->sin_family = da->sin_family = AF_INET;
    memcpy(&sa->sin_addr, a, 4);
    memcpy(&da->sin_addr, a + 4, 4);
    out->src_len = out->dst_len = sizeof *sa;
  } else {
    struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&out->src, *da = (struct sockaddr_in6 *)&out->dst;
    sa->sin6_family = da->sin6_family = AF_INET6;
    memcpy(&sa->sin6_addr, a, 16);
    memcpy(&da->sin6_addr, a + 16, 16);
    out->src_len = out->dst_len = sizeof *sa;
  }
  set_port(&out->src, (a[2 * alen] << 8) | a[2 * alen + 1]);
  set_port(&out->dst, (a[2 * alen + 2] << 8) | a[2 * alen + 3]);
  return (int)total;
}

/* A PROXY header at the start of buf (len bytes so far), as `accept` allows
   (1 v1, 2 v2, 3 either): its length when complete (out says who), 0 when
   more bytes are needed, -1 when it cannot be one (out->why). */
int proxy_parse(const uint8_t *buf, size_t len, int accept, struct proxy_info *out) {
  memset(out, 0, sizeof *out);
  if (len == 0) return 0;
  bool v1 = starts_like(buf, len, V1_PREFIX, 6), v2 = starts_like(buf, len, V2_SIGNATURE, 12);
  if (v1 && (accept & 1)) return parse_v1(buf, len, out);
  if (v2 && (accept & 2)) return parse_v2(buf, len, out);
  if (v1 || v2) return bad(out, "a PROXY %s header, but only %s is accepted (--accept-proxy)", v1 ? "v1" : "v2", accept == 1 ? "v1" : accept == 2 ? "v2" : "any");
  return bad(out, "not a PROXY protocol header");
}
