// Counters for STATUS=, `sockbridge status` and the metrics.
// Plain fields bumped by their owners: cheap enough for the hot path.

export class Stats {
  /** Sessions connected to the target right now. */
  active = 0;
  /** Clients accepted and waiting for the target (missing, restarting, being retried). */
  held = 0;
  /** Sessions that ended, whatever the reason. */
  total = 0;
  /** Sessions that never reached the target or ended on an error. */
  failed = 0;
  /** Clients refused by --allow/--deny or a failed TLS handshake. */
  denied = 0;
  bytesIn = 0;
  bytesOut = 0;
}
