// The policy snapshot: the configuration and the targets' states compiled
// into what the data plane's threads read on every connection (native/
// policy.c). A reload, a target changing state, joining, leaving or being
// drained publishes a new one; sessions keep what they started with.

import { Config, retriesFor } from '../options';
import type { TlsMaterial } from '../session/tls';
import { nodeTlsDefaults, verificationDigest } from '../session/tls';
import { TargetTlsMaterial, tlsNameOf } from '../targets/connector';
import type { Target } from '../targets/pool';

/** A target as the snapshot names it (state: 0 INIT, 1 UP, 2 DOWN, as enum target_state). */
export interface PolicyTarget {
  slot: number;
  /** A UNIX socket's path, an abstract socket's name, or a TCP target's resolved address. */
  path?: string;
  abstract?: string;
  ip?: string;
  port?: number;
  state: number;
  backup: boolean;
  drained: boolean;
  /** Times a request dropped unanswered may be sent again on this target (--retries, by its kind). */
  retries?: number;
  /** A TCP target over TLS: the name its certificate must carry (and the SNI); '' without TLS. */
  tlsName?: string;
}

/** What native/addon.c's setPolicy reads (the TLS part: tls_settings in native/dataplane.h). */
export interface PolicyInput {
  allow: string[];
  deny: string[];
  targets: PolicyTarget[];
  /** 0 first, 1 roundrobin, 2 leastconn (enum balance). */
  balance: number;
  /** 0 none, 1 v1, 2 v2. */
  sendProxy: number;
  clientTimeout: number;
  serverTimeout: number;
  handshakeTimeout: number;
  maxConn: number;
  /** One TCP connect attempt's deadline (--connect-attempt-timeout). */
  attemptTimeout: number;
  tls: TlsInput | undefined;
  /** TLS towards TCP targets: the CAs to trust, this end's certificate if any. */
  targetTls: TlsInput | undefined;
  /** --tls-allow-cn/-dns/-uri and --target-tls-allow-* (native/identity.c). */
  clientIdentity: IdentityLists;
  targetIdentity: IdentityLists;
  crlAllowStale: boolean;
  /** --allow-uid, --allow-gid, as numbers. */
  allowUid: number[];
  allowGid: number[];
  /** Per-source limits (native/limits.c); rateCount 0: no rate limit. */
  sourceLimits: { maxConn: number; rateCount: number; ratePeriodMs: number; prefixV6: number };
  /** 0 none, 1 v1, 2 v2, 3 either; and the fronts it is read from. */
  acceptProxy: number;
  acceptProxyFrom: string[];
  /**
   * A digest of what verifying a client depends on (CAs, CRLs, allow-lists):
   * when it changes, the data plane forgets every session ticket, since a
   * resumption skips verification.
   */
  verification: string;
}

export interface IdentityLists {
  cn: string[];
  dns: string[];
  uri: string[];
}

/** The TLS part of the snapshot (native/dataplane.h: struct tls_settings), with Node's defaults spelled out. */
export interface TlsInput {
  cert: Buffer | undefined;
  key: Buffer | undefined;
  ca: Buffer | undefined;
  /** --tls-crl's CRLs (PEM), for a server context. */
  crl?: Buffer | undefined;
  ciphers: string;
  cipherSuites: string;
  minVersion: number;
  maxVersion: number;
  honorCipherOrder: boolean;
}

const STATES = { INIT: 0, UP: 1, DOWN: 2 } as const;
const BALANCES = { first: 0, roundrobin: 1, leastconn: 2 } as const;
const PROXY = { none: 0, v1: 1, v2: 2 } as const;
const ACCEPT_PROXY = { none: 0, v1: 1, v2: 2, any: 3 } as const;
const TLS_VERSIONS: Record<string, number> = { 'TLSv1': 0x0301, 'TLSv1.1': 0x0302, 'TLSv1.2': 0x0303, 'TLSv1.3': 0x0304 };

export function policyTarget(t: Target, retries: Config['retries'], targetTls: TargetTlsMaterial | undefined): PolicyTarget {
  const e = t.endpoint;
  const where = e.kind === 'unix' ? { path: e.path } : e.kind === 'abstract' ? { abstract: e.name } : { ip: t.address ?? '', port: e.port };
  const tlsName = e.kind === 'tcp' && targetTls ? tlsNameOf(t, targetTls) : '';
  return { slot: t.slot, ...where, state: STATES[t.state], backup: t.role === 'backup', drained: t.drained, retries: retriesFor(retries, e.kind), tlsName };
}

/** TLS files with Node's own defaults (session/tls.ts: nodeTlsDefaults), so that both relays offer the same TLS. */
function tlsInput(files: { cert: Buffer | undefined; key: Buffer | undefined; ca: Buffer | undefined; crl?: Buffer | undefined }): TlsInput {
  const d = nodeTlsDefaults();
  return {
    cert: files.cert, key: files.key, ca: files.ca, crl: files.crl, ciphers: d.ciphers, cipherSuites: d.cipherSuites,
    minVersion: TLS_VERSIONS[d.minVersion] ?? 0x0303, maxVersion: TLS_VERSIONS[d.maxVersion] ?? 0x0304, honorCipherOrder: d.honorCipherOrder,
  };
}

/** The snapshot for this configuration, these targets (the pool's current ones, in its order) and TLS files. */
export function compilePolicy(cfg: Config, targets: readonly Target[], tls: TlsMaterial | undefined, targetTls: TargetTlsMaterial | undefined,
  ids: { uid: number[]; gid: number[] } = { uid: [], gid: [] }): PolicyInput {
  return {
    allow: cfg.allow,
    deny: cfg.deny,
    targets: targets.map((t) => policyTarget(t, cfg.retries, targetTls)),
    balance: BALANCES[cfg.balance],
    sendProxy: PROXY[cfg.sendProxy],
    clientTimeout: cfg.clientTimeout,
    serverTimeout: cfg.serverTimeout,
    // As the TypeScript relay's handshake (tls.ts): bounded by the client timeout.
    handshakeTimeout: cfg.clientTimeout,
    maxConn: cfg.maxConn,
    attemptTimeout: cfg.connectAttemptTimeout,
    tls: tls && tlsInput(tls),
    targetTls: targetTls && tlsInput(targetTls),
    clientIdentity: { cn: cfg.tlsAllowCn, dns: cfg.tlsAllowDns, uri: cfg.tlsAllowUri },
    targetIdentity: { cn: cfg.targetTlsAllowCn, dns: cfg.targetTlsAllowDns, uri: cfg.targetTlsAllowUri },
    crlAllowStale: cfg.tlsCrlAllowStale === 'on',
    allowUid: ids.uid,
    allowGid: ids.gid,
    sourceLimits: {
      maxConn: cfg.maxConnPerSource, rateCount: cfg.ratePerSource?.count ?? 0, ratePeriodMs: cfg.ratePerSource?.periodMs ?? 0,
      prefixV6: cfg.sourcePrefixV6,
    },
    acceptProxy: ACCEPT_PROXY[cfg.acceptProxy],
    acceptProxyFrom: cfg.acceptProxyFrom,
    verification: verificationDigest(cfg, tls),
  };
}
