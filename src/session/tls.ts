// TLS termination (--tls-cert, --tls-key) with optional client-certificate
// authentication (--tls-ca: a certificate signed by it is required) and
// identity allow-lists (--tls-allow-cn/-dns/-uri: listen/identity.ts). The
// files are read and checked here, whichever relay terminates: the data
// plane (native/tls.c) gets the PEM bytes and Node's own defaults, so that
// both offer the same TLS; the TypeScript relay hands accepted sockets to a
// Node tls.Server built with the same. A client whose handshake fails never
// reaches the target; the failure is logged with its address, in the same
// words for both. Reload reads the files again: certificate rotation
// without a restart.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { isAbsolute, join } from 'node:path';
import tls from 'node:tls';
import { ConfigError } from '../errors';
import { describeSan, IdentityRules, identityAllowed, identityOf, noRules, unmatched } from '../listen/identity';
import type { Config } from '../options';
import type { TargetTlsMaterial } from '../targets/connector';
import type { TlsRefusalDetail } from './contract';
import { chainRevocation, CrlInfo, describeCrl, readCrls, staleCrls } from './crl';
import type { ProxyExtra } from './proxy-protocol';

export type TlsSettings = Pick<Config, 'tlsCert' | 'tlsKey' | 'tlsCa' | 'tlsCrl' | 'tlsCrlAllowStale' | 'clientTimeout' | 'tlsAllowCn' | 'tlsAllowDns' | 'tlsAllowUri'>;

/** The files of a TLS configuration, read and checked. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer | undefined;
  /** --tls-crl's CRLs (PEM), and what they say of themselves (crl.ts). */
  crl: Buffer | undefined;
  crls: CrlInfo[];
}

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

/**
 * Node's defaults for a TLS server, spelled out so that the data plane offers
 * exactly what Node's tls.Server offers: the versions, the TLS 1.2 cipher
 * list and TLS 1.3 suites (split as Node splits tls.DEFAULT_CIPHERS), and the
 * server's cipher order (honorCipherOrder, on by default for servers).
 */
export function nodeTlsDefaults(): { ciphers: string; cipherSuites: string; minVersion: string; maxVersion: string; honorCipherOrder: boolean } {
  const all = tls.DEFAULT_CIPHERS.split(':').filter((c) => c.length > 0);
  return {
    ciphers: all.filter((c) => !c.startsWith('TLS_')).join(':'),
    cipherSuites: all.filter((c) => c.startsWith('TLS_')).join(':'),
    minVersion: tls.DEFAULT_MIN_VERSION,
    maxVersion: tls.DEFAULT_MAX_VERSION,
    honorCipherOrder: true,
  };
}

/**
 * Relative paths name systemd credentials (LoadCredential=tls.key:/etc/…):
 * the dynamic user can read $CREDENTIALS_DIRECTORY, not the original file.
 */
function credentialPath(path: string, env: NodeJS.ProcessEnv): string {
  const dir = env['CREDENTIALS_DIRECTORY'];
  return !isAbsolute(path) && dir ? join(dir, path) : path;
}

function readPem(option: string, path: string, env: NodeJS.ProcessEnv): Buffer {
  const full = credentialPath(path, env);
  try {
    return readFileSync(full);
  } catch (err) {
    throw new ConfigError('ECONFIG_TLS_FILE', `cannot read ${option} ${full} (${(err as NodeJS.ErrnoException).code}); check the path (relative paths are looked up in $CREDENTIALS_DIRECTORY)`,
      option.startsWith('--') ? option.slice(2) : undefined);
  }
}

/** undefined when TLS is off. Throws ConfigError for missing, unreadable or mismatched files. */
export function loadTlsMaterial(cfg: TlsSettings, env: NodeJS.ProcessEnv = process.env): TlsMaterial | undefined {
  if (!cfg.tlsCert && !cfg.tlsKey && !cfg.tlsCa) return undefined;
  if (!cfg.tlsCert || !cfg.tlsKey) {
    throw new ConfigError('ECONFIG_TLS', 'TLS needs both --tls-cert and --tls-key (--tls-ca alone is not enough)');
  }
  if (cfg.tlsCrl && !cfg.tlsCa) {
    throw new ConfigError('ECONFIG_TLS_CRL', '--tls-crl needs --tls-ca: without client certificates there is nothing to revoke', 'tls-crl');
  }
  const crl = cfg.tlsCrl ? readPem('--tls-crl', cfg.tlsCrl, env) : undefined;
  const material: TlsMaterial = {
    cert: readPem('--tls-cert', cfg.tlsCert, env), key: readPem('--tls-key', cfg.tlsKey, env), ca: cfg.tlsCa ? readPem('--tls-ca', cfg.tlsCa, env) : undefined,
    crl, crls: crl ? readCrls(crl, cfg.tlsCrl) : [],
  };
  try {
    tls.createSecureContext({ cert: material.cert, key: material.key, ...(material.ca ? { ca: material.ca } : {}), ...(crl ? { crl } : {}) });
  } catch (err) {
    throw new ConfigError('ECONFIG_TLS', `cannot use --tls-cert ${cfg.tlsCert} with --tls-key ${cfg.tlsKey}${material.ca ? ` and --tls-ca ${cfg.tlsCa}` : ''}${crl ? ` and --tls-crl ${cfg.tlsCrl}` : ''}: ${(err as Error).message}`);
  }
  return material;
}

/**
 * A digest of what verifying a client depends on (the CAs, the CRLs, the
 * allow-lists, the stale switch). Both relays forget their session tickets
 * when it changes: a resumption skips verification.
 */
export function verificationDigest(cfg: Pick<TlsSettings, 'tlsAllowCn' | 'tlsAllowDns' | 'tlsAllowUri' | 'tlsCrlAllowStale'>, material: TlsMaterial | undefined): string {
  const h = createHash('sha256');
  h.update(material?.ca ?? '');
  h.update('\0');
  h.update(material?.crl ?? '');
  h.update(JSON.stringify([cfg.tlsAllowCn, cfg.tlsAllowDns, cfg.tlsAllowUri, cfg.tlsCrlAllowStale]));
  return h.digest('hex');
}

/** The system's CA bundle, read explicitly: Node builds differ in their default paths. */
export const SYSTEM_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

/**
 * TLS towards TCP targets (--target-tls on): the CAs to verify them against
 * (--target-tls-ca, or the system's bundle) and this end's certificate, read
 * and checked; undefined when it is off. Throws ConfigError.
 */
export function loadTargetTls(
  cfg: Pick<Config, 'targetTls' | 'targetTlsCa' | 'targetTlsCert' | 'targetTlsKey' | 'targetTlsName' | 'targetTlsAllowCn' | 'targetTlsAllowDns' | 'targetTlsAllowUri'>,
  env: NodeJS.ProcessEnv = process.env,
): TargetTlsMaterial | undefined {
  if (cfg.targetTls === 'off') return undefined;
  if (Boolean(cfg.targetTlsCert) !== Boolean(cfg.targetTlsKey)) {
    throw new ConfigError('ECONFIG_TARGET_TLS', 'a client certificate needs both --target-tls-cert and --target-tls-key');
  }
  const ca = cfg.targetTlsCa ? readPem('--target-tls-ca', cfg.targetTlsCa, env) : readPem('the system CA bundle (no --target-tls-ca)', SYSTEM_CA_BUNDLE, {});
  const material: TargetTlsMaterial = {
    ca, cert: cfg.targetTlsCert ? readPem('--target-tls-cert', cfg.targetTlsCert, env) : undefined,
    key: cfg.targetTlsKey ? readPem('--target-tls-key', cfg.targetTlsKey, env) : undefined, name: cfg.targetTlsName,
    allow: { cn: cfg.targetTlsAllowCn, dns: cfg.targetTlsAllowDns, uri: cfg.targetTlsAllowUri },
  };
  try {
    tls.createSecureContext({ ca: material.ca, ...(material.cert ? { cert: material.cert, key: material.key } : {}) });
  } catch (err) {
    throw new ConfigError('ECONFIG_TARGET_TLS', `cannot use ${cfg.targetTlsCert ? `--target-tls-cert ${cfg.targetTlsCert} with --target-tls-key ${cfg.targetTlsKey}` : '--target-tls-ca'}: ${(err as Error).message}`);
  }
  return material;
}

/** What `sockbridge status` says is in force; `crls` says which are stale and what that means. */
export function tlsInForce(cfg: TlsSettings, material: TlsMaterial | undefined, now = new Date()): {
  enabled: boolean; clientCertificates: boolean; cert: string; crls: { crl: string; stale: boolean }[]; crlProblem: string;
} {
  const crls = (material?.crls ?? []).map((c) => ({ crl: describeCrl(c), stale: staleCrls([c], now).length > 0 }));
  return {
    enabled: material !== undefined, clientCertificates: material?.ca !== undefined, cert: material ? cfg.tlsCert : '',
    crls, crlProblem: material ? crlProblem(cfg, material.crls, now) : '',
  };
}

/** What stale CRLs mean now ("" when none is): the status line and the log line at start, reload and when one goes stale. */
export function crlProblem(cfg: Pick<TlsSettings, 'tlsCrlAllowStale'>, crls: readonly CrlInfo[], now = new Date()): string {
  const stale = staleCrls(crls, now);
  if (stale.length === 0) return '';
  const names = stale.map(describeCrl).join('; ');
  return cfg.tlsCrlAllowStale === 'on'
    ? `past its next update, used anyway (--tls-crl-allow-stale): ${names}`
    : `past its next update, so every client certificate of that CA is refused until a newer CRL is in the file: ${names}`;
}

/** OpenSSL 3's X509_V_ERR_* numbers (Node's and the data plane's OpenSSL) as Node names them (authorizationError), for the log. */
const VERIFY_ERRORS: Record<number, string> = {
  2: 'UNABLE_TO_GET_ISSUER_CERT', 3: 'UNABLE_TO_GET_CRL', 4: 'UNABLE_TO_DECRYPT_CERT_SIGNATURE', 5: 'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  6: 'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY', 7: 'CERT_SIGNATURE_FAILURE', 8: 'CRL_SIGNATURE_FAILURE', 9: 'CERT_NOT_YET_VALID',
  10: 'CERT_HAS_EXPIRED', 11: 'CRL_NOT_YET_VALID', 12: 'CRL_HAS_EXPIRED', 13: 'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  14: 'ERROR_IN_CERT_NOT_AFTER_FIELD', 15: 'ERROR_IN_CRL_LAST_UPDATE_FIELD', 16: 'ERROR_IN_CRL_NEXT_UPDATE_FIELD', 17: 'OUT_OF_MEM',
  18: 'DEPTH_ZERO_SELF_SIGNED_CERT', 19: 'SELF_SIGNED_CERT_IN_CHAIN', 20: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  21: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 22: 'CERT_CHAIN_TOO_LONG', 23: 'CERT_REVOKED', 24: 'NO_ISSUER_PUBLIC_KEY', 25: 'PATH_LENGTH_EXCEEDED',
  26: 'INVALID_PURPOSE', 27: 'CERT_UNTRUSTED', 28: 'CERT_REJECTED', 62: 'HOSTNAME_MISMATCH', 79: 'INVALID_CA', // (24 was INVALID_CA before OpenSSL 3)
};

/** Why the data plane refused a handshake, in the words the TypeScript relay uses. */
export function refusalReason(verify: number, reason: string): string {
  if (verify !== 0) return `client certificate refused: ${VERIFY_ERRORS[verify] ?? `X509_V_ERR ${verify}`}`;
  return reason;
}

interface Pending {
  onSecure(socket: tls.TLSSocket): void;
  onFail(reason: string, detail?: TlsRefusalDetail): void;
}

/** A certificate Node returned, or undefined when none was presented (Node gives null or an empty object). */
function presented(socket: tls.TLSSocket): tls.PeerCertificate | undefined {
  const cert = socket.getPeerCertificate() as tls.PeerCertificate | null;
  return cert !== null && Object.keys(cert).length > 0 ? cert : undefined;
}

/** The peer's certificate and its issuers up to the root, as Node found them (leaf first). */
function peerChain(socket: tls.TLSSocket): tls.DetailedPeerCertificate[] {
  const chain: tls.DetailedPeerCertificate[] = [];
  let cert = socket.getPeerCertificate(true) as tls.DetailedPeerCertificate | null;
  while (cert && cert.raw && chain.length < 16) {
    chain.push(cert);
    const next = cert.issuerCertificate;
    if (!next || next === cert || next.fingerprint256 === cert.fingerprint256) break; // the root names itself
    cert = next;
  }
  return chain;
}

/** The certificate's names for the refusal's log entry (CLIENT_CN, CLIENT_SAN). */
function namesOf(cert: tls.PeerCertificate | undefined): TlsRefusalDetail {
  if (!cert) return {};
  const peer = identityOf(cert);
  return { cn: peer.cn, san: describeSan(peer) };
}

/** What a --send-proxy v2 header says of a TLS client (PP2_TYPE_SSL, PP2_TYPE_AUTHORITY): Node's names are OpenSSL's. */
export function tlsClientInfo(socket: tls.TLSSocket): NonNullable<ProxyExtra['ssl']> {
  const cert = presented(socket);
  const servername = (socket as tls.TLSSocket & { servername?: string | false | null }).servername;
  return {
    verified: cert !== undefined && socket.authorized,
    certificate: cert !== undefined,
    resumed: socket.isSessionReused(),
    cn: cert ? identityOf(cert).cn : undefined,
    version: socket.getProtocol() ?? '',
    cipher: socket.getCipher()?.name ?? '',
    sni: typeof servername === 'string' && servername !== '' ? servername : undefined,
  };
}

/**
 * The raw socket a server-side TLSSocket wraps. Node keeps it as `_parent`;
 * there is no public accessor, and the tls.Server events give only the TLSSocket.
 */
function rawOf(socket: tls.TLSSocket): net.Socket | undefined {
  return (socket as unknown as { _parent?: net.Socket })._parent;
}

/** The TypeScript relay's TLS: Node's own handshake, client-certificate check and handshake timeout. */
export class TlsTerminator {
  private readonly pending = new WeakMap<net.Socket, Pending>();

  /**
   * A tls.Server that never listens: accepted sockets are handed to it with
   * emit('connection'), after the allow/deny check, so that Node's own server
   * logic does the handshake, the client-certificate verification and the
   * handshake timeout.
   */
  private constructor(
    private readonly server: tls.Server,
    verifyClients: boolean,
    rules: IdentityRules,
    /** The CRLs checked here rather than by OpenSSL (--tls-crl-allow-stale), or undefined. */
    crls: readonly CrlInfo[] | undefined,
    /** What verifying a client depends on: tickets survive a reload only while it stays the same. */
    readonly verification: string,
  ) {
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const raw = rawOf(socket);
      const p = raw && this.pending.get(raw);
      if (!p) return void socket.destroy();
      this.pending.delete(raw!);
      // Verified here rather than by rejectUnauthorized, which would close the
      // connection without telling us why (expired, unknown issuer, none sent).
      if (verifyClients && !socket.authorized) {
        const cert = presented(socket);
        socket.destroy();
        const error = String(socket.authorizationError);
        const why = !cert ? 'no certificate sent' : error === 'CERT_REVOKED' ? `certificate revoked (serial ${cert.serialNumber.toUpperCase()})` : error;
        return p.onFail(`client certificate refused: ${why}`, namesOf(cert));
      }
      // --tls-crl-allow-stale: Node verified without the CRLs (it reports only
      // OpenSSL's last error, and a stale CRL's would hide the others); revocation is checked here.
      if (verifyClients && crls) {
        const why = chainRevocation(crls, peerChain(socket));
        if (why !== '') {
          const cert = presented(socket);
          socket.destroy();
          return p.onFail(`client certificate refused: ${why}`, namesOf(cert));
        }
      }
      // The allow-lists, once the certificate verified: a refused identity never reaches the program.
      if (!noRules(rules)) {
        const cert = presented(socket);
        const peer = cert ? identityOf(cert) : { cn: undefined, dns: [], uri: [] };
        if (!identityAllowed(rules, peer)) {
          socket.destroy();
          // Without --tls-ca no certificate is asked for, so no identity can match (config.ts should refuse that configuration).
          const why = verifyClients ? unmatched(rules, '--tls-allow') : `${unmatched(rules, '--tls-allow')} (no client certificate is asked for without --tls-ca)`;
          return p.onFail(why, { kind: 'identity', cn: peer.cn, san: describeSan(peer) });
        }
      }
      socket.allowHalfOpen = true; // as the raw socket: a client's FIN is relayed as a half-close
      p.onSecure(socket);
    });
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      const raw = rawOf(socket);
      const p = raw && this.pending.get(raw);
      socket.destroy();
      if (!p) return;
      this.pending.delete(raw!);
      p.onFail(err.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[a-z0-9_]*:/, '').replace(/:\.\.\/deps\/.*$/s, '').trim());
    });
  }

  /** undefined when TLS is off. `previous`: the one it replaces (a reload), whose ticket keys it keeps, so that its tickets still resume. */
  static create(material: TlsMaterial | undefined, cfg: TlsSettings, previous?: TlsTerminator): TlsTerminator | undefined {
    if (!material) return undefined;
    const d = nodeTlsDefaults();
    const verification = verificationDigest(cfg, material);
    // A resumed session skips the certificate's verification: after a change
    // to the CAs, CRLs or allow-lists, tickets issued before are not honoured.
    const keep = previous && previous.verification === verification;
    // With --tls-crl-allow-stale revocation is checked after the handshake (crl.ts, chainRevocation), not by OpenSSL.
    const crlsHere = material.crl && cfg.tlsCrlAllowStale === 'on' ? material.crls : undefined;
    return new TlsTerminator(tls.createServer({
      cert: material.cert, key: material.key, ...(material.ca ? { ca: material.ca } : {}), ...(material.crl && !crlsHere ? { crl: material.crl } : {}),
      ciphers: tls.DEFAULT_CIPHERS, minVersion: d.minVersion as tls.SecureVersion, maxVersion: d.maxVersion as tls.SecureVersion,
      honorCipherOrder: d.honorCipherOrder,
      requestCert: material.ca !== undefined,
      rejectUnauthorized: false,
      handshakeTimeout: cfg.clientTimeout || DEFAULT_HANDSHAKE_TIMEOUT_MS,
      ...(keep ? { ticketKeys: previous.server.getTicketKeys() } : {}),
    }), material.ca !== undefined, { cn: cfg.tlsAllowCn, dns: cfg.tlsAllowDns, uri: cfg.tlsAllowUri }, crlsHere, verification);
  }

  /**
   * Handshake on a freshly accepted socket (bytes a front's PROXY header
   * was followed by put back on it: the TLS server reads those first);
   * exactly one of the callbacks is called.
   */
  wrap(raw: net.Socket, onSecure: (socket: tls.TLSSocket) => void, onFail: (reason: string, detail?: TlsRefusalDetail) => void): void {
    this.pending.set(raw, { onSecure, onFail });
    // A client that goes away mid-handshake may not produce a tlsClientError.
    raw.once('close', () => {
      const p = this.pending.get(raw);
      if (!p) return;
      this.pending.delete(raw);
      p.onFail('closed during the TLS handshake');
    });
    // The TLSSocket copies it: during the handshake a FIN must end the connection, not leave it half-open until handshakeTimeout.
    raw.allowHalfOpen = false;
    this.server.emit('connection', raw);
    raw.resume(); // accepted paused (pauseOnConnect); the handshake must read
  }
}
