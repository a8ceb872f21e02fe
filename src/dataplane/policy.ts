// The policy snapshot: the configuration and the targets' states compiled
// into what the data plane's threads read on every connection (native/
// policy.c). A reload, a target changing state, joining, leaving or being
// drained publishes a new one; sessions keep what they started with.

import type { Config } from '../options';
import type { TlsMaterial } from '../session/tls';
import { nodeTlsDefaults } from '../session/tls';
import type { Target } from '../targets/pool';

/** A target as the snapshot names it (state: 0 INIT, 1 UP, 2 DOWN, as enum target_state). */
export interface PolicyTarget {
  slot: number;
  path?: string;
  state: number;
  backup: boolean;
  drained: boolean;
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
  retries: number;
  maxConn: number;
  tls: {
    cert: Buffer;
    key: Buffer;
    ca: Buffer | undefined;
    ciphers: string;
    cipherSuites: string;
    minVersion: number;
    maxVersion: number;
    honorCipherOrder: boolean;
  } | undefined;
}

const STATES = { INIT: 0, UP: 1, DOWN: 2 } as const;
const BALANCES = { first: 0, roundrobin: 1, leastconn: 2 } as const;
const PROXY = { none: 0, v1: 1, v2: 2 } as const;
const TLS_VERSIONS: Record<string, number> = { 'TLSv1': 0x0301, 'TLSv1.1': 0x0302, 'TLSv1.2': 0x0303, 'TLSv1.3': 0x0304 };

export function policyTarget(t: Target): PolicyTarget {
  return { slot: t.slot, path: t.path, state: STATES[t.state], backup: t.role === 'backup', drained: t.drained };
}

/** The snapshot for this configuration, these targets (the pool's current ones, in its order) and TLS files. */
export function compilePolicy(cfg: Config, targets: readonly Target[], tls: TlsMaterial | undefined): PolicyInput {
  return {
    allow: cfg.allow,
    deny: cfg.deny,
    targets: targets.map(policyTarget),
    balance: BALANCES[cfg.balance],
    sendProxy: PROXY[cfg.sendProxy],
    clientTimeout: cfg.clientTimeout,
    serverTimeout: cfg.serverTimeout,
    // As the TypeScript relay's handshake (tls.ts): bounded by the client timeout.
    handshakeTimeout: cfg.clientTimeout,
    retries: cfg.retries,
    maxConn: cfg.maxConn,
    tls: tls && (() => {
      const d = nodeTlsDefaults();
      return {
        cert: tls.cert, key: tls.key, ca: tls.ca, ciphers: d.ciphers, cipherSuites: d.cipherSuites,
        minVersion: TLS_VERSIONS[d.minVersion] ?? 0x0303, maxVersion: TLS_VERSIONS[d.maxVersion] ?? 0x0304, honorCipherOrder: d.honorCipherOrder,
      };
    })(),
  };
}
