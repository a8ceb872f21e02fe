// What a --tls-crl file says about itself: for each CRL its issuer, its
// last and next update, and how many certificates it revokes, read from the
// DER inside the PEM (RFC 5280, 5.1). OpenSSL enforces the CRLs (in Node's
// secure context, or in the data plane); this is for the operator: the
// status, the log line at start and reload, and the moment a CRL goes stale
// (past its next update every client of that CA is refused, as in HAProxy,
// nginx and stunnel, unless --tls-crl-allow-stale).

import { ConfigError } from '../errors';

export interface CrlInfo {
  /** The issuer's CN, or its whole name's first value when it has none. */
  issuer: string;
  thisUpdate: Date;
  /** Absent in a CRL that never expires (rare; RFC 5280 requires it). */
  nextUpdate: Date | undefined;
  revoked: number;
}

interface Der {
  tag: number;
  /** Where the content starts and ends (the element ends there too). */
  start: number;
  end: number;
}

function element(buf: Buffer, at: number, limit: number): Der {
  if (at + 2 > limit) throw new Error('truncated');
  const tag = buf[at]!;
  let len = buf[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const bytes = len & 0x7f;
    if (bytes < 1 || bytes > 4 || start + bytes > limit) throw new Error('bad length');
    len = 0;
    for (let i = 0; i < bytes; i++) len = len * 256 + buf[start + i]!;
    start += bytes;
  }
  if (start + len > limit) throw new Error('truncated');
  return { tag, start, end: start + len };
}

/** The elements directly inside a constructed one. */
function children(buf: Buffer, parent: Der): Der[] {
  const out: Der[] = [];
  for (let at = parent.start; at < parent.end;) {
    const e = element(buf, at, parent.end);
    out.push(e);
    at = e.end;
  }
  return out;
}

const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;
const SEQUENCE = 0x30;
const INTEGER = 0x02;
const CN_OID = Buffer.from([0x55, 0x04, 0x03]);

function time(buf: Buffer, e: Der): Date {
  const text = buf.toString('latin1', e.start, e.end);
  const m = e.tag === UTC_TIME ? /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text) : /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text);
  if (!m) throw new Error(`a time that is not UTC: ${text}`);
  let year = Number(m[1]);
  if (e.tag === UTC_TIME) year += year < 50 ? 2000 : 1900; // RFC 5280, 4.1.2.5.1
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

/** The CN of a Name (SEQUENCE OF SET OF {OID, value}), else its first value. */
function nameOf(buf: Buffer, name: Der): string {
  let first: string | undefined;
  let cn: string | undefined;
  for (const set of children(buf, name)) {
    for (const attr of children(buf, set)) {
      const [oid, value] = children(buf, attr);
      if (!oid || !value) continue;
      const text = buf.toString('utf8', value.start, value.end);
      first ??= text;
      if (buf.subarray(oid.start, oid.end).equals(CN_OID)) cn = text;
    }
  }
  return cn ?? first ?? '(no name)';
}

function parseOne(der: Buffer): CrlInfo {
  const list = element(der, 0, der.length);
  const [tbs] = children(der, list);
  if (list.tag !== SEQUENCE || !tbs || tbs.tag !== SEQUENCE) throw new Error('not a CertificateList');
  const parts = children(der, tbs);
  let i = parts[0]?.tag === INTEGER ? 1 : 0; // the version, when present
  i++; // the signature algorithm
  const issuer = parts[i++];
  const thisUpdate = parts[i++];
  if (!issuer || !thisUpdate) throw new Error('no issuer or thisUpdate');
  const next = parts[i];
  const hasNext = next !== undefined && (next.tag === UTC_TIME || next.tag === GENERALIZED_TIME);
  if (hasNext) i++;
  const revokedList = parts[i]?.tag === SEQUENCE ? parts[i] : undefined;
  return {
    issuer: nameOf(der, issuer),
    thisUpdate: time(der, thisUpdate),
    nextUpdate: hasNext ? time(der, next) : undefined,
    revoked: revokedList ? children(der, revokedList).length : 0,
  };
}

/** Every CRL of a PEM file. Throws ConfigError naming the option when there is none, or one cannot be read. */
export function readCrls(pem: Buffer, path: string): CrlInfo[] {
  const blocks = [...pem.toString('latin1').matchAll(/-----BEGIN X509 CRL-----([\s\S]*?)-----END X509 CRL-----/g)];
  if (blocks.length === 0) {
    throw new ConfigError('ECONFIG_TLS_CRL', `--tls-crl ${path} holds no CRL (expected PEM blocks "-----BEGIN X509 CRL-----")`, 'tls-crl');
  }
  return blocks.map((b, n) => {
    try {
      return parseOne(Buffer.from(b[1]!.replace(/\s+/g, ''), 'base64'));
    } catch (err) {
      throw new ConfigError('ECONFIG_TLS_CRL', `--tls-crl ${path}: CRL ${n + 1} cannot be read (${(err as Error).message}); check the file`, 'tls-crl');
    }
  });
}

/** The CRLs past their next update at `now`. */
export function staleCrls(crls: readonly CrlInfo[], now = new Date()): CrlInfo[] {
  return crls.filter((c) => c.nextUpdate !== undefined && c.nextUpdate.getTime() <= now.getTime());
}

/** "CRL of Example CA (3 revoked, next update 2026-12-10T00:00:00Z)". */
export function describeCrl(c: CrlInfo): string {
  const next = c.nextUpdate ? c.nextUpdate.toISOString().replace(/\.000Z$/, 'Z') : 'none';
  return `CRL of ${c.issuer} (${c.revoked} revoked, next update ${next})`;
}
