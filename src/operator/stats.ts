// The service's totals for STATUS=, `sockbridge status` and the metrics,
// counted where sessions end (session/contract.ts: recordSessionEnd) and
// where clients are refused. What is live (open sessions, waiting clients,
// bytes) each relay counts itself (Relay.counts()).

/**
 * Why a client was refused before it reached the target: the access list,
 * a failed TLS handshake (no, a foreign or an expired certificate), an
 * identity allow-list, --allow-uid/--allow-gid, the per-source concurrent
 * and rate limits, a bad PROXY header from a front.
 */
export const DENIED_REASONS = ['access', 'tls', 'identity', 'uid', 'concurrent', 'rate', 'proxy'] as const;
export type DeniedReason = (typeof DENIED_REASONS)[number];

export class Stats {
  /** Sessions that ended, whatever the reason. */
  total = 0;
  /** Sessions that never reached the target or ended on an error. */
  failed = 0;
  /** Clients refused, for any reason (the sum of deniedBy, plus what a previous process counted). */
  denied = 0;
  /** Clients refused, by reason (this process only: a restart carries the total, not this). */
  readonly deniedBy: Record<DeniedReason, number> = { access: 0, tls: 0, identity: 0, uid: 0, concurrent: 0, rate: 0, proxy: 0 };

  deny(reason: DeniedReason): void {
    this.denied++;
    this.deniedBy[reason]++;
  }
}
