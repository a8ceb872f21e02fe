// Refusals that can repeat by the thousand (a client retrying an identity
// it does not have, a source over its limit, a misconfigured front) are
// logged rate-limited: one line per key per interval, the next saying how
// many were not logged meanwhile, as accept errors are (listeners.ts:
// acceptErrorLog). Every refusal is still counted (stats.ts: deniedBy).

/** What a permitted line should add: refusals of this key not logged since its last line, and of any key over the global cap. */
export interface Permit {
  suppressed: number;
  overCap: number;
}

interface Seen {
  at: number;
  suppressed: number;
}

export class RepeatLimiter {
  /** Keys last logged, oldest first (a Map keeps insertion order); at most maxKeys. */
  private readonly keys = new Map<string, Seen>();
  private windowStart = -Infinity;
  private lines = 0;
  private overCap = 0;

  /**
   * At most one line per key per `everyMs`, and at most `globalMax` lines
   * per `everyMs` whatever the key (so that a flood of distinct keys cannot
   * flood the log). Beyond `maxKeys` keys the least recently logged one is
   * forgotten: the memory stays bounded, at the price of a forgotten key
   * logging again early.
   */
  constructor(
    private readonly everyMs: number,
    private readonly globalMax = Infinity,
    private readonly maxKeys = 4096,
  ) {}

  /** undefined: stay quiet now (counted); else log, with what the Permit says was not logged. */
  permit(key: string, now: number): Permit | undefined {
    const seen = this.keys.get(key);
    if (seen && now - seen.at < this.everyMs) {
      seen.suppressed++;
      return undefined;
    }
    if (now - this.windowStart >= this.everyMs) {
      this.windowStart = now;
      this.lines = 0;
    }
    if (this.lines >= this.globalMax) {
      this.overCap++;
      return undefined;
    }
    this.lines++;
    const permit = { suppressed: seen?.suppressed ?? 0, overCap: this.overCap };
    this.overCap = 0;
    this.keys.delete(key);
    this.keys.set(key, { at: now, suppressed: 0 });
    if (this.keys.size > this.maxKeys) this.keys.delete(this.keys.keys().next().value as string);
    return permit;
  }
}

/** The tail of a permitted line: " (3 more since the last report; 12 other refusals not logged)", or "". */
export function notLogged(p: Permit, what = 'refusals'): string {
  const parts: string[] = [];
  if (p.suppressed > 0) parts.push(`${p.suppressed} more since the last report`);
  if (p.overCap > 0) parts.push(`${p.overCap} other ${what} not logged`);
  return parts.length > 0 ? ` (${parts.join('; ')})` : '';
}
