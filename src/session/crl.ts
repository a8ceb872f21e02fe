// What a --tls-crl file says about itself: for each CRL its issuer, its
// last and next update, and how many certificates it revokes, read from the
// DER inside the PEM (RFC 5280, 5.1). OpenSSL enforces the CRLs (in Node's
// secure context, or in the data plane); this is for the operator: the
// status, the log line at start and reload, and the moment a CRL goes stale
// (past its next update every client of that CA is refused, as in HAProxy,
// nginx and stunnel, unless --tls-crl-allow-stale).
//
// With --tls-crl-allow-stale the TypeScript relay checks revocation here
// (chainRevocation), not in Node's secure context: Node reports only the last
// of OpenSSL's verification errors, and a stale CRL's CRL_HAS_EXPIRED, raised
// again for the root, comes after (and would hide) a revocation, a
// certificate issued by one that is no CA, or one of the wrong purpose.

import { createHash, KeyObject, verify, X509Certificate } from 'node:crypto';
import { ConfigError } from '../errors';

export interface CrlInfo {
  /** The issuer's CN, or its whole name's first value when it has none. */
  issuer: string;
  thisUpdate: Date;
  /** Absent in a CRL that never expires (rare; RFC 5280 requires it). */
  nextUpdate: Date | undefined;
  revoked: number;
  /** The issuer's Name as DER: matched against a certificate's issuer field. */
  issuerDer: Buffer;
  /** The serial numbers it revokes, as hex of each INTEGER's content bytes. */
  serials: Set<string>;
  /** What its signature covers, the algorithm's OID (DER content, hex) and the signature. */
  signed: { tbs: Buffer; algorithm: string; signature: Buffer };
}

interface Der {
  tag: number;
  /** Where the element (its tag) starts. */
  at: number;
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
  return { tag, at, start, end: start + len };
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

const BIT_STRING = 0x03;
const OID = 0x06;

function parseOne(der: Buffer): CrlInfo {
  const list = element(der, 0, der.length);
  const [tbs, algorithm, signature] = children(der, list);
  if (list.tag !== SEQUENCE || !tbs || tbs.tag !== SEQUENCE) throw new Error('not a CertificateList');
  const oid = algorithm ? children(der, algorithm)[0] : undefined;
  if (!oid || oid.tag !== OID || !signature || signature.tag !== BIT_STRING || signature.end <= signature.start) throw new Error('no signature');
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
  const entries = revokedList ? children(der, revokedList) : [];
  const serials = new Set<string>();
  for (const entry of entries) {
    const [serial] = children(der, entry);
    if (!serial || serial.tag !== INTEGER) throw new Error('a revoked entry without a serial number');
    serials.add(der.toString('hex', serial.start, serial.end));
  }
  return {
    issuer: nameOf(der, issuer),
    thisUpdate: time(der, thisUpdate),
    nextUpdate: hasNext ? time(der, next) : undefined,
    revoked: entries.length,
    issuerDer: Buffer.from(der.subarray(issuer.at, issuer.end)),
    serials,
    signed: {
      tbs: Buffer.from(der.subarray(tbs.at, tbs.end)), algorithm: der.toString('hex', oid.start, oid.end),
      signature: Buffer.from(der.subarray(signature.start + 1, signature.end)), // after the unused-bits byte
    },
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

// ---- revocation checked here (--tls-crl-allow-stale, TypeScript relay) ----------------------------

/** A CRL's signature algorithm (its OID, DER content in hex) → the hash crypto.verify takes (null: the key's own, EdDSA). */
const SIGNATURE_HASHES: Record<string, string | null> = {
  '2a8648ce3d040302': 'sha256', '2a8648ce3d040303': 'sha384', '2a8648ce3d040304': 'sha512', '2a8648ce3d0401': 'sha1', // ecdsa-with-*
  '2a864886f70d01010b': 'sha256', '2a864886f70d01010c': 'sha384', '2a864886f70d01010d': 'sha512', '2a864886f70d01010e': 'sha224', // sha*WithRSAEncryption
  '2a864886f70d010105': 'sha1',
  '2b6570': null, '2b6571': null, // Ed25519, Ed448
};

/** A certificate's issuer Name (DER) and serial number (hex of the INTEGER's content bytes). */
function certificateIds(der: Buffer): { issuer: Buffer; serial: string } {
  const cert = element(der, 0, der.length);
  const [tbs] = children(der, cert);
  if (!tbs) throw new Error('not a certificate');
  const parts = children(der, tbs);
  let i = parts[0]?.tag === 0xa0 ? 1 : 0; // [0] version, when present
  const serial = parts[i++];
  i++; // the signature algorithm
  const issuer = parts[i];
  if (!serial || serial.tag !== INTEGER || !issuer) throw new Error('not a certificate');
  return { issuer: der.subarray(issuer.at, issuer.end), serial: der.toString('hex', serial.start, serial.end) };
}

/** Whether `crl` is signed by `key` (remembered: one verification per CRL and issuer key). */
const signatures = new WeakMap<CrlInfo, Map<string, boolean>>();
function signedBy(crl: CrlInfo, issuerRaw: Buffer, key: () => KeyObject): boolean {
  const id = createHash('sha256').update(issuerRaw).digest('hex');
  let known = signatures.get(crl);
  if (!known) signatures.set(crl, known = new Map());
  let ok = known.get(id);
  if (ok === undefined) {
    const hash = SIGNATURE_HASHES[crl.signed.algorithm];
    try {
      ok = hash !== undefined && verify(hash, crl.signed.tbs, key(), crl.signed.signature);
    } catch {
      ok = false;
    }
    known.set(id, ok);
  }
  return ok;
}

/**
 * OpenSSL's CRL check of a chain Node verified without the CRLs (leaf first,
 * each certificate's issuer after it, the root last), as
 * X509_V_FLAG_CRL_CHECK_ALL makes it for every certificate: the newest CRL
 * of its issuer that the issuer signed and that is in force already must not
 * list its serial; a CRL past its next update counts (that is what
 * --tls-crl-allow-stale is for). '' when the chain passes, else why not, in
 * the words of the log ("certificate revoked (serial 1A2B)", or OpenSSL's
 * error name).
 */
export function chainRevocation(crls: readonly CrlInfo[], chain: readonly { raw: Buffer; serialNumber: string }[], now = new Date()): string {
  for (const [n, cert] of chain.entries()) {
    const issuerCert = chain[n + 1] ?? cert; // the root issued itself
    let ids: { issuer: Buffer; serial: string };
    try {
      ids = certificateIds(cert.raw);
    } catch {
      return 'UNABLE_TO_GET_CRL';
    }
    const ofIssuer = crls.filter((c) => c.issuerDer.equals(ids.issuer));
    if (ofIssuer.length === 0) return 'UNABLE_TO_GET_CRL';
    const signed = ofIssuer.filter((c) => signedBy(c, issuerCert.raw, () => new X509Certificate(issuerCert.raw).publicKey));
    if (signed.length === 0) return 'CRL_SIGNATURE_FAILURE';
    const inForce = signed.filter((c) => c.thisUpdate.getTime() <= now.getTime());
    if (inForce.length === 0) return 'CRL_NOT_YET_VALID';
    const newest = inForce.reduce((a, b) => (b.thisUpdate.getTime() > a.thisUpdate.getTime() ? b : a));
    if (newest.serials.has(ids.serial)) return `certificate revoked (serial ${cert.serialNumber.toUpperCase()})`;
  }
  return '';
}
