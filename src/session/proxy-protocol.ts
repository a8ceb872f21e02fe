// The PROXY protocol (HAProxy's spec, doc/proxy-protocol.txt, versions 1
// and 2), both ways: proxyHeader() writes the header that tells the program
// behind the UNIX socket who the client really is (over a UNIX socket it
// otherwise sees only sockbridge), with TLVs naming a TLS client and a UNIX
// client's credentials; parseProxyHeader() reads the one a trusted front
// sends (--accept-proxy, --accept-proxy-from). The data plane writes and
// reads the same bytes in C (native/proxy.c); the differential tests compare.

import net from 'node:net';
import { plainAddress } from '../listen/address';

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_LOCAL_COMMAND = 0x20; // version 2, LOCAL
const V2_PROXY_COMMAND = 0x21; // version 2, PROXY
const V2_UNSPEC = 0x00;
const V2_TCP4 = 0x11;
const V2_TCP6 = 0x21;

/** TLV types (the spec's section 2.2) and sockbridge's own, in the range the spec leaves to applications. */
export const PP2_TYPE_AUTHORITY = 0x02;
export const PP2_TYPE_SSL = 0x20;
export const PP2_SUBTYPE_SSL_VERSION = 0x21;
export const PP2_SUBTYPE_SSL_CN = 0x22;
export const PP2_SUBTYPE_SSL_CIPHER = 0x23;
export const PP2_CLIENT_SSL = 0x01;
export const PP2_CLIENT_CERT_CONN = 0x02;
export const PP2_CLIENT_CERT_SESS = 0x04;
/** sockbridge's: a UNIX listener's client, as SO_PEERCRED gives it: pid, uid, gid, each a 32-bit big-endian number (12 bytes). */
export const PP2_TYPE_SOCKBRIDGE_CRED = 0xe0;

interface Endpoints {
  family: 4 | 6;
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
}

/** The client connection's two ends: a net.Socket, what the native relay knows of one, or what a front's PROXY header said. */
export interface ClientEnds {
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
  readonly localAddress?: string | undefined;
  readonly localPort?: number | undefined;
}

/** What a v2 header carries beyond the addresses (v1 has no room for it and ignores it). */
export interface ProxyExtra {
  /** A TLS client: PP2_TYPE_AUTHORITY (the SNI, when one was sent) and PP2_TYPE_SSL. */
  ssl?: {
    /** The client presented a certificate and it verified: the SSL TLV's verify field is 0, else 1 (the spec: "zero if the client presented a certificate and it was successfully verified, non-zero otherwise"). */
    verified: boolean;
    /** The client presented a certificate (PP2_CLIENT_CERT_SESS; and PP2_CLIENT_CERT_CONN unless `resumed`); default: `verified`. */
    certificate?: boolean;
    /** The TLS session was resumed: the certificate was presented on an earlier connection of the session. */
    resumed?: boolean;
    /** The certificate's subject CN (identity.ts: identityOf), if any. */
    cn?: string | undefined;
    /** "TLSv1.3", as OpenSSL's SSL_get_version() and Node's getProtocol() name it. */
    version: string;
    /** OpenSSL's name of the cipher ("TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"), as HAProxy sends it. */
    cipher: string;
    /** The server name the client asked for (SNI), if any. */
    sni?: string | undefined;
  };
  /** A UNIX listener's client (SO_PEERCRED): TLV 0xE0. */
  cred?: { pid: number; uid: number; gid: number };
}

/** Both ends in one family: IPv4 when both are (possibly mapped) IPv4, else IPv6. */
function endpoints(client: ClientEnds): Endpoints | undefined {
  const { remoteAddress, localAddress, remotePort, localPort } = client;
  if (!remoteAddress || !localAddress || remotePort === undefined || localPort === undefined) return undefined;
  // A link-local peer comes with its zone (fe80::1%eth0): no PROXY receiver takes one, and the data plane writes none.
  const src = plainAddress(remoteAddress).replace(/%.*$/, '');
  const dst = plainAddress(localAddress).replace(/%.*$/, '');
  if (net.isIPv4(src) && net.isIPv4(dst)) return { family: 4, src, dst, srcPort: remotePort, dstPort: localPort };
  const six = (a: string): string => (net.isIPv4(a) ? `::ffff:${a}` : a);
  return { family: 6, src: six(src), dst: six(dst), srcPort: remotePort, dstPort: localPort };
}

/**
 * The header for one connection to the target. v2 with `extra` appends TLVs
 * after the addresses, always in this order, which the data plane's encoder
 * (native/proxy.c) follows byte for byte:
 *
 *   1. PP2_TYPE_AUTHORITY 0x02 — only for a TLS client that sent an SNI:
 *      the name's bytes.
 *   2. PP2_TYPE_SSL 0x20 — a TLS client: client (1 byte: PP2_CLIENT_SSL
 *      0x01, | PP2_CLIENT_CERT_SESS 0x04 when it presented a certificate,
 *      | PP2_CLIENT_CERT_CONN 0x02 when on this connection: not resumed),
 *      verify (uint32 big-endian: 0 when the certificate verified, else 1),
 *      then the sub-TLVs PP2_SUBTYPE_SSL_VERSION 0x21 ("TLSv1.3"),
 *      PP2_SUBTYPE_SSL_CN 0x22 (only when the certificate has a CN),
 *      PP2_SUBTYPE_SSL_CIPHER 0x23 (OpenSSL's cipher name).
 *   3. 0xE0 (sockbridge's) — a UNIX listener's client: pid, uid, gid, each
 *      uint32 big-endian (12 bytes).
 *
 * Every TLV is type (1 byte), length (uint16 big-endian), value; strings
 * are their UTF-8 bytes, no terminating zero; the header's length field
 * counts the TLVs. A client with no address (a UNIX listener's) gets the
 * LOCAL command with family UNSPEC, and then its TLVs directly (the address
 * block is empty): no address, but its credentials.
 */
export function proxyHeader(version: 'v1' | 'v2', client: ClientEnds, extra?: ProxyExtra): Buffer {
  const e = endpoints(client);
  if (version === 'v1') {
    if (!e) return Buffer.from('PROXY UNKNOWN\r\n');
    return Buffer.from(`PROXY TCP${e.family} ${e.src} ${e.dst} ${e.srcPort} ${e.dstPort}\r\n`);
  }
  const tlvs = extra ? encodeTlvs(extra) : Buffer.alloc(0);
  if (!e) return Buffer.concat([V2_SIGNATURE, v2Head(V2_LOCAL_COMMAND, V2_UNSPEC, tlvs.length), tlvs]); // LOCAL, no address
  const addrLen = e.family === 4 ? 4 : 16;
  const body = Buffer.alloc(addrLen * 2 + 4);
  (e.family === 4 ? ipv4Bytes(e.src) : ipv6Bytes(e.src)).copy(body, 0);
  (e.family === 4 ? ipv4Bytes(e.dst) : ipv6Bytes(e.dst)).copy(body, addrLen);
  body.writeUInt16BE(e.srcPort, addrLen * 2);
  body.writeUInt16BE(e.dstPort, addrLen * 2 + 2);
  return Buffer.concat([V2_SIGNATURE, v2Head(V2_PROXY_COMMAND, e.family === 4 ? V2_TCP4 : V2_TCP6, body.length + tlvs.length), body, tlvs]);
}

function v2Head(command: number, family: number, length: number): Buffer {
  const head = Buffer.from([command, family, 0, 0]);
  head.writeUInt16BE(length, 2);
  return head;
}

function tlv(type: number, value: Buffer): Buffer {
  const head = Buffer.from([type, 0, 0]);
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

/** The TLVs of `extra`, in the order proxyHeader documents. */
function encodeTlvs(extra: ProxyExtra): Buffer {
  const out: Buffer[] = [];
  const { ssl, cred } = extra;
  if (ssl) {
    if (ssl.sni) out.push(tlv(PP2_TYPE_AUTHORITY, Buffer.from(ssl.sni, 'utf8')));
    const fixed = Buffer.alloc(5);
    const certificate = ssl.certificate ?? ssl.verified;
    fixed[0] = PP2_CLIENT_SSL | (certificate ? PP2_CLIENT_CERT_SESS : 0) | (certificate && !ssl.resumed ? PP2_CLIENT_CERT_CONN : 0);
    fixed.writeUInt32BE(ssl.verified ? 0 : 1, 1);
    const subs = [tlv(PP2_SUBTYPE_SSL_VERSION, Buffer.from(ssl.version, 'utf8'))];
    if (ssl.cn !== undefined) subs.push(tlv(PP2_SUBTYPE_SSL_CN, Buffer.from(ssl.cn, 'utf8')));
    subs.push(tlv(PP2_SUBTYPE_SSL_CIPHER, Buffer.from(ssl.cipher, 'utf8')));
    out.push(tlv(PP2_TYPE_SSL, Buffer.concat([fixed, ...subs])));
  }
  if (cred) {
    const v = Buffer.alloc(12);
    v.writeUInt32BE(cred.pid >>> 0, 0);
    v.writeUInt32BE(cred.uid >>> 0, 4);
    v.writeUInt32BE(cred.gid >>> 0, 8);
    out.push(tlv(PP2_TYPE_SOCKBRIDGE_CRED, v));
  }
  return Buffer.concat(out);
}

function ipv4Bytes(a: string): Buffer {
  return Buffer.from(a.split('.').map(Number));
}

/** "2001:db8::1" or "::ffff:192.0.2.1" → 16 bytes. */
export function ipv6Bytes(a: string): Buffer {
  const out = Buffer.alloc(16);
  let text = a.replace(/%.*$/, ''); // no zone id
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [b0, b1, b2, b3] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, -v4[1]!.length) + `${((b0 << 8) | b1).toString(16)}:${((b2 << 8) | b3).toString(16)}`;
  }
  const [left, right] = text.split('::') as [string, string | undefined];
  const head = left ? left.split(':') : [];
  const tail = right ? right.split(':') : [];
  const groups = [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/**
 * 16 bytes as inet_ntop(3) writes them (glibc's, and libuv's, which writes
 * Node's remoteAddress): RFC 5952, an IPv4-mapped address as
 * ::ffff:a.b.c.d, and one in ::/96 whose seventh group is not zero (the
 * old IPv4-compatible form) as ::a.b.c.d ("::2" and "::100" stay as they
 * are, "::1:2" is "::0.1.0.2").
 */
export function formatIPv6(b: Uint8Array): string {
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  if (b.subarray(0, 12).every((x) => x === 0) && (b[12] !== 0 || b[13] !== 0)) return `::${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i]! << 8) | b[i + 1]!);
  let best = -1;
  let bestLen = 1; // a single zero group is written out
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (g: number[]): string => g.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(groups) : `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

// ---- reading a front's header -------------------------------------------------------------

/** An address and port named by a front's header. */
export interface ProxyAddress {
  address: string;
  port: number;
}

export type ProxyParse =
  | { kind: 'incomplete' }
  | { kind: 'error'; why: string }
  /**
   * `length`: the header's bytes (what follows is the client's); `local`:
   * use the connection's own ends (v1 UNKNOWN, v2 LOCAL, a v2 family or
   * protocol without addresses: UNSPEC, UNIX); else `src` and `dst` are the
   * client and the address it reached, as the front saw them.
   */
  | { kind: 'ok'; length: number; local: boolean; src?: ProxyAddress; dst?: ProxyAddress };

/** The longest v1 line, CRLF included (the spec: "PROXY UNKNOWN" with two full IPv6 addresses). */
export const V1_MAX_LENGTH = 107;
/** The longest v2 header taken (its TLVs included): a front's TLVs name a client, they do not carry megabytes. */
export const PROXY_MAX_LENGTH = 4096;
const V1_PREFIX = Buffer.from('PROXY ');
const V2_FAMILY_LENGTH: Record<number, number> = { 0x1: 12, 0x2: 36, 0x3: 216 };

/**
 * A front's PROXY header at the start of `buf`: 'incomplete' while more
 * bytes could still make it valid, 'error' as soon as they cannot (before
 * the deadline or the EOF that a caller also treats as an error: late,
 * truncated). `accept` says which versions are taken: with 'v1' a v2
 * signature is an error, and so on. The checks, as the spec words them:
 *
 * v1: "PROXY " then TCP4, TCP6 or UNKNOWN; TCP4/TCP6 then exactly one space
 * before each of source address, destination address, source port and
 * destination port, then CRLF. Addresses in the family named (IPv4: four
 * decimal numbers 0-255 without leading zeros; IPv6: as inet_pton takes it,
 * no zone, not IPv4-mapped-IPv4 trickery beyond what inet_pton takes), ports
 * decimal 0-65535 without leading zeros. UNKNOWN: anything up to the CRLF,
 * ignored. No CRLF within the first 107 bytes: too long. A lone CR or LF
 * is not a line end: an error.
 *
 * v2: the 12-byte signature; the 13th byte's high nibble (version) must be
 * 2 and its low nibble (command) LOCAL 0 or PROXY 1; the 14th byte's family
 * (high nibble) UNSPEC 0, INET 1, INET6 2 or UNIX 3 and protocol (low
 * nibble) UNSPEC 0, STREAM 1 or DGRAM 2; bytes 15-16 the length of what
 * follows (the whole header at most PROXY_MAX_LENGTH: TLVs are skipped,
 * counted, not checked). LOCAL: local
 * whatever the rest says. PROXY: INET/INET6 with STREAM give addresses (the
 * length at least 12, 36); UNSPEC family or protocol, and UNIX (length at
 * least 216), are local; DGRAM with INET/INET6 is an error (a datagram's
 * addresses for a stream).
 */
export function parseProxyHeader(buf: Buffer, accept: 'v1' | 'v2' | 'any'): ProxyParse {
  if (buf.length === 0) return { kind: 'incomplete' };
  const v1 = startsLike(buf, V1_PREFIX);
  const v2 = startsLike(buf, V2_SIGNATURE);
  if (v1 && accept !== 'v2') return parseV1(buf);
  if (v2 && accept !== 'v1') return parseV2(buf);
  if (v1 || v2) return { kind: 'error', why: `a PROXY ${v1 ? 'v1' : 'v2'} header, but only ${accept} is accepted (--accept-proxy)` };
  return { kind: 'error', why: 'not a PROXY protocol header' };
}

/** Whether buf's bytes so far agree with `prefix` (as far as either goes). */
function startsLike(buf: Buffer, prefix: Buffer): boolean {
  const n = Math.min(buf.length, prefix.length);
  return buf.subarray(0, n).equals(prefix.subarray(0, n));
}

const DECIMAL = /^(0|[1-9]\d{0,4})$/;

function parseV1(buf: Buffer): ProxyParse {
  const window = buf.subarray(0, V1_MAX_LENGTH);
  const cr = window.indexOf(0x0d);
  const lf = window.indexOf(0x0a);
  if (lf >= 0 && lf !== cr + 1) return { kind: 'error', why: 'a v1 line ended by a lone LF (CRLF expected)' };
  if (cr >= 0 && cr + 1 < window.length && window[cr + 1] !== 0x0a) return { kind: 'error', why: 'a lone CR in a v1 line (CRLF expected)' };
  if (cr < 0 || cr + 1 >= window.length) {
    if (buf.length >= V1_MAX_LENGTH) return { kind: 'error', why: `no CRLF within ${V1_MAX_LENGTH} bytes: a v1 line too long` };
    return { kind: 'incomplete' };
  }
  const length = cr + 2;
  const line = window.subarray(0, cr).toString('latin1');
  const fields = line.split(' ');
  const proto = fields[1];
  if (proto === 'UNKNOWN') return { kind: 'ok', length, local: true };
  if (proto !== 'TCP4' && proto !== 'TCP6') return { kind: 'error', why: `an unknown v1 protocol ${JSON.stringify((proto ?? '').slice(0, 16))} (TCP4, TCP6 or UNKNOWN)` };
  if (fields.length !== 6) return { kind: 'error', why: 'a v1 line needs exactly two addresses and two ports, one space apart' };
  const [, , srcText, dstText, srcPort, dstPort] = fields as [string, string, string, string, string, string];
  const family = proto === 'TCP4' ? 4 : 6;
  const src = v1Address(srcText, family);
  const dst = v1Address(dstText, family);
  if (src === undefined || dst === undefined) return { kind: 'error', why: `a v1 address that is not IPv${family} (${proto})` };
  if (!DECIMAL.test(srcPort) || !DECIMAL.test(dstPort) || Number(srcPort) > 65535 || Number(dstPort) > 65535) {
    return { kind: 'error', why: 'a v1 port that is not a number from 0 to 65535 without leading zeros' };
  }
  return { kind: 'ok', length, local: false, src: { address: src, port: Number(srcPort) }, dst: { address: dst, port: Number(dstPort) } };
}

/** A v1 address in its family, written as inet_ntop would; undefined if it is not one. */
function v1Address(text: string, family: 4 | 6): string | undefined {
  if (family === 4) {
    const parts = text.split('.');
    if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255)) return undefined;
    return text;
  }
  if (!net.isIPv6(text) || text.includes('%')) return undefined;
  return formatIPv6(ipv6Bytes(text));
}

function parseV2(buf: Buffer): ProxyParse {
  if (buf.length < 16) {
    // Judge what is there already: a wrong version or command need not wait.
    if (buf.length > 12) {
      const early = v2Fixed(buf[12]!, buf[13]);
      if (early) return { kind: 'error', why: early };
    }
    return { kind: 'incomplete' };
  }
  const bad = v2Fixed(buf[12]!, buf[13]);
  if (bad) return { kind: 'error', why: bad };
  const command = buf[12]! & 0x0f;
  const family = buf[13]! >> 4;
  const protocol = buf[13]! & 0x0f;
  const declared = buf.readUInt16BE(14);
  const length = 16 + declared;
  if (length > PROXY_MAX_LENGTH) return { kind: 'error', why: `a v2 header of ${length} bytes, longer than ${PROXY_MAX_LENGTH}` };
  const needs = V2_FAMILY_LENGTH[family];
  if (command === 1 && protocol !== 0 && needs !== undefined && declared < needs) {
    return { kind: 'error', why: `a v2 length of ${declared}, shorter than the ${needs} bytes of its addresses` };
  }
  if (buf.length < length) return { kind: 'incomplete' };
  if (command === 0 || family === 0 || protocol === 0 || family === 3) return { kind: 'ok', length, local: true };
  if (protocol === 2) return { kind: 'error', why: 'a v2 header for a datagram (UDP) connection' };
  if (family === 1) {
    return {
      kind: 'ok', length, local: false,
      src: { address: Array.from(buf.subarray(16, 20)).join('.'), port: buf.readUInt16BE(24) },
      dst: { address: Array.from(buf.subarray(20, 24)).join('.'), port: buf.readUInt16BE(26) },
    };
  }
  return {
    kind: 'ok', length, local: false,
    src: { address: formatIPv6(buf.subarray(16, 32)), port: buf.readUInt16BE(48) },
    dst: { address: formatIPv6(buf.subarray(32, 48)), port: buf.readUInt16BE(50) },
  };
}

/** What is wrong with a v2 header's version/command byte and family/protocol byte (undefined: nothing; the latter may be unknown yet). */
function v2Fixed(verCmd: number, famProto: number | undefined): string | undefined {
  if (verCmd >> 4 !== 2) return `a v2 signature with version ${verCmd >> 4} (2 expected)`;
  if ((verCmd & 0x0f) > 1) return `an unknown v2 command ${verCmd & 0x0f} (LOCAL 0 or PROXY 1)`;
  if (famProto === undefined) return undefined;
  if (famProto >> 4 > 3) return `an unknown v2 address family ${famProto >> 4}`;
  if ((famProto & 0x0f) > 2) return `an unknown v2 transport protocol ${famProto & 0x0f}`;
  return undefined;
}
