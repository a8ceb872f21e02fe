// The service's totals for STATUS=, `sockbridge status` and the metrics,
// counted where sessions end (session/contract.ts: recordSessionEnd) and
// where clients are refused. What is live (open sessions, waiting clients,
// bytes) each relay counts itself (Relay.counts()).

export class Stats {
  /** Sessions that ended, whatever the reason. */
  total = 0;
  /** Sessions that never reached the target or ended on an error. */
  failed = 0;
  /** Clients refused by --allow/--deny or a failed TLS handshake. */
  denied = 0;
}
