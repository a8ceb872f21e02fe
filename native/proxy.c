/* The PROXY protocol header (HAProxy's spec, versions 1 and 2) that tells the
 * program behind the UNIX socket who the client is. The same bytes as
 * src/session/proxy-protocol.ts writes (test/differential.test.ts compares
 * them): both ends IPv4 (or IPv4-mapped) make a TCP4 header, anything else a
 * TCP6 one with IPv4 written as ::ffff:a.b.c.d; a client without an IP
 * address is UNKNOWN (v1) or LOCAL (v2).
 */
#include "dataplane.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

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

/* The header into out (cap bytes at least 232); returns its length. */
size_t proxy_header(int version, const struct sockaddr_storage *src, const struct sockaddr_storage *dst, char *out, size_t cap) {
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
  unsigned char *o = (unsigned char *)out;
  memcpy(o, V2_SIGNATURE, 12);
  if (!known) {
    o[12] = 0x20; /* version 2, LOCAL */
    o[13] = 0x00;
    o[14] = o[15] = 0;
    return 16;
  }
  o[12] = 0x21; /* version 2, PROXY */
  o[13] = four ? 0x11 : 0x21; /* TCP over IPv4 or IPv6 */
  size_t alen = four ? 4 : 16, at = 16;
  uint16_t body = (uint16_t)(alen * 2 + 4);
  o[14] = (uint8_t)(body >> 8);
  o[15] = (uint8_t)body;
  if (four) {
    memcpy(o + at, s, 4);
    memcpy(o + at + 4, d, 4);
  } else {
    as_v6(s, sf, o + at);
    as_v6(d, df, o + at + 16);
  }
  at += alen * 2;
  o[at++] = (uint8_t)(sp >> 8);
  o[at++] = (uint8_t)sp;
  o[at++] = (uint8_t)(dp >> 8);
  o[at++] = (uint8_t)dp;
  return at;
}
