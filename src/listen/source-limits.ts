// Per-source limits (--max-conn-per-source, --rate-per-source), checked
// after the access list and before TLS: a client over a limit is closed
// before anything is read. The data plane keeps the same table in C
// (native/limits.c); this is its twin for the TypeScript relay and the
// reference both are tested against. The semantics, exactly:
//
// Source. An IPv4 client (also one a dual-stack listener reports as
// ::ffff:a.b.c.d) is one source per address (/32). An IPv6 client is one
// source per --source-prefix-v6 prefix (default /64). A client with no IP
// address (a UNIX listener's) is not limited by source.
//
// Order. Concurrent first, then rate: a source with --max-conn-per-source
// sessions open is refused 'concurrent' (its rate is not looked at); else a
// source over its rate is refused 'rate'; else it is let in and counted
// (live + 1, and + 1 in the current rate window). Refused attempts count for
// nothing, so a client hammering a limit gets back in as soon as it is under
// it again, not locked out by its own retries.
//
// Concurrent. live counts the source's sessions from admit() to release():
// the TypeScript relay releases when the client's socket closes, so clients
// queued over max-conn, held for a target and mid-handshake count.
//
// Rate: a sliding window approximated with two fixed windows, as HAProxy's
// freq_ctr. Each source has its own windows of P ms (the period), the first
// starting at its first admitted connection. Every attempt from a source
// already in the table (let in or refused, for either limit) first rolls
// its windows to now (ms, monotonic, whole milliseconds); a release does
// not. Rolling, with k = floor((now - start) / P):
//     k == 1: prev = cur, cur = 0, start += P    (the next window)
//     k >= 2: prev = 0,   cur = 0, start = now   (quiet for a whole window: as new)
// then
//     rate = cur + prev * (P - (now - start)) / P
// and a connection is refused when rate >= N, compared in integers as
//     cur * P + prev * (P - (now - start)) >= N * P
// so that C and TypeScript agree to the millisecond (all terms stay below
// 2^53: N <= 10^6, P <= 3.6 * 10^6). N connections are let in per window;
// just after a full window the previous one weighs nearly all of N and new
// connections trickle in at about N per P, as with HAProxy.
//
// Memory. The table holds every source with a session open (live entries:
// at most max-conn plus the queue) and at most IDLE_MAX idle ones (no
// session open, kept only while a rate limit applies, for their windows).
// Idle entries are ordered by their last event (the release that made them
// idle, or a refused attempt); past IDLE_MAX the least recently seen one is
// dropped (that source starts afresh: a flood of many sources can cost the
// oldest idle sources their history, never the live ones their count). An
// idle entry whose window lapsed (now - start >= 2P) is the same as no entry,
// so those are dropped from the oldest end at every admit. So:
//     size <= live sources + IDLE_MAX.

import { BadValue } from '../errors';
import { type Config, formatDuration, type RateLimit } from '../options';
import { addressBytes } from './access';

/** Idle sources kept for their rate windows (the C twin uses the same number). */
export const IDLE_MAX = 4096;

export type SourceVerdict = 'ok' | 'concurrent' | 'rate';

interface Entry {
  /** Sessions open now. */
  live: number;
  /** Start of the current rate window (ms). */
  start: number;
  /** Connections let in during the current window and the one before it. */
  cur: number;
  prev: number;
}

/** The key of a source: "192.0.2.7", or for IPv6 its prefix "2001:db8:1:2::/64"; undefined for a client with no IP address. */
export function sourceKey(address: string, prefixV6: number): string | undefined {
  const bytes = addressBytes(address);
  if (bytes === undefined) return undefined;
  if (bytes.length === 4) return bytes.join('.');
  const masked = bytes.map((b, i) => {
    const bits = Math.min(8, Math.max(0, prefixV6 - i * 8));
    return b & ((0xff << (8 - bits)) & 0xff);
  });
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((masked[i]! << 8) | masked[i + 1]!).toString(16));
  return `${compressGroups(groups)}/${prefixV6}`;
}

/** RFC 5952: the longest run (two or more) of zero groups as "::", the first of equal runs. */
function compressGroups(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < groups.length;) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

export class SourceLimits {
  private readonly entries = new Map<string, Entry>();
  /** Keys of the idle entries, least recently seen first (a Set keeps insertion order). */
  private readonly idle = new Set<string>();

  constructor(
    private maxConcurrent: number,
    private rate: RateLimit | undefined,
    readonly prefixV6: number,
    private readonly idleMax = IDLE_MAX,
  ) {
    if (prefixV6 < 1 || prefixV6 > 128) throw new BadValue('the IPv6 source prefix must be from 1 to 128');
  }

  /** Whether a limit applies at all (without one the relay need not track sources). */
  static needed(maxConcurrent: number, rate: RateLimit | undefined): boolean {
    return maxConcurrent > 0 || rate !== undefined;
  }

  /** A reload with the same prefix: new limits, counts kept (a changed period applies to the windows as they are). */
  configure(maxConcurrent: number, rate: RateLimit | undefined): void {
    this.maxConcurrent = maxConcurrent;
    this.rate = rate;
    if (!rate) {
      for (const key of this.idle) this.entries.delete(key);
      this.idle.clear();
    }
  }

  /** Entries in the table (live and idle). */
  get size(): number {
    return this.entries.size;
  }

  /** Sources with a session open. */
  get live(): number {
    return this.entries.size - this.idle.size;
  }

  /** What the table may hold now: live sources plus IDLE_MAX. */
  get bound(): number {
    return this.live + this.idleMax;
  }

  /** Let a new connection from `address` in (and count it), or say which limit it is over. `now`: monotonic ms. */
  admit(address: string, now: number): SourceVerdict {
    const key = sourceKey(address, this.prefixV6);
    if (key === undefined) return 'ok';
    now = Math.floor(now);
    this.dropLapsed(now);
    let e = this.entries.get(key);
    if (e) {
      if (this.rate) roll(e, now, this.rate.periodMs);
      if (this.maxConcurrent > 0 && e.live >= this.maxConcurrent) return 'concurrent'; // live > 0: never idle
      if (this.rate && this.overRate(e, now, this.rate)) {
        this.seen(key, e);
        return 'rate';
      }
    } else {
      e = { live: 0, start: now, cur: 0, prev: 0 };
      this.entries.set(key, e);
    }
    if (e.live === 0) this.idle.delete(key);
    e.live++;
    if (this.rate) e.cur++;
    return 'ok';
  }

  /** A session admitted for `address` ended. */
  release(address: string): void {
    const key = sourceKey(address, this.prefixV6);
    if (key === undefined) return;
    const e = this.entries.get(key);
    if (!e || e.live === 0) return;
    if (--e.live > 0) return;
    if (!this.rate) {
      this.entries.delete(key);
      return;
    }
    this.idle.add(key);
    if (this.idle.size > this.idleMax) {
      const oldest = this.idle.values().next().value as string;
      this.idle.delete(oldest);
      this.entries.delete(oldest);
    }
  }

  /** Whether one more connection would be over the rate (the windows rolled to `now`). */
  private overRate(e: Entry, now: number, { count: n, periodMs: p }: RateLimit): boolean {
    const elapsed = Math.max(0, now - e.start);
    return e.cur * p + e.prev * (p - elapsed) >= n * p;
  }

  /** An idle entry seen again (a refused attempt) moves to the recent end. */
  private seen(key: string, e: Entry): void {
    if (e.live > 0) return;
    this.idle.delete(key);
    this.idle.add(key);
  }

  /** Idle entries whose windows lapsed are the same as none: dropped from the oldest end. */
  private dropLapsed(now: number): void {
    const p = this.rate?.periodMs;
    if (p === undefined) return;
    for (const key of this.idle) {
      const e = this.entries.get(key)!;
      if (now - e.start < 2 * p) return;
      this.idle.delete(key);
      this.entries.delete(key);
    }
  }
}

/** The two fixed windows moved on to `now` (see the rule at the top). */
function roll(e: Entry, now: number, p: number): void {
  const k = Math.floor((now - e.start) / p);
  if (k === 1) {
    e.prev = e.cur;
    e.cur = 0;
    e.start += p;
  } else if (k >= 2) {
    e.prev = 0;
    e.cur = 0;
    e.start = now;
  }
}

/** The end of a refusal's log line: which limit, for which source (both relays). */
export function overLimit(verdict: 'concurrent' | 'rate', addr: string, cfg: Pick<Config, 'sourcePrefixV6' | 'maxConnPerSource' | 'ratePerSource'>): string {
  const source = sourceKey(addr, cfg.sourcePrefixV6) ?? addr;
  if (verdict === 'concurrent') {
    return `refused: ${cfg.maxConnPerSource} sessions from ${source} are open already (--max-conn-per-source ${cfg.maxConnPerSource})`;
  }
  const r = cfg.ratePerSource ?? { count: 0, periodMs: 0 };
  return `refused: ${source} opened ${r.count} connections in the last ${formatDuration(r.periodMs)} (--rate-per-source ${r.count}/${formatDuration(r.periodMs)})`;
}
