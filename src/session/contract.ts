// What every session shares, whichever relay moves its bytes: why it ended,
// what it needs from the bridge, and its one log entry and counters.

import type net from 'node:net';
import type { Backend, ConnectFailure, Dialer } from '../targets/backend';
import type { Fields, Logger } from '../log';
import type { Config } from '../options';
import type { Stats } from '../operator/stats';
import type { Target } from '../targets/pool';
import { addressLabel } from '../listen/address';

export type SessionSettings = Pick<Config, 'clientTimeout' | 'serverTimeout' | 'retries' | 'sendProxy'>;

export type CloseReason =
  | 'done' // both directions finished
  | ConnectFailure
  | 'client-timeout'
  | 'server-timeout'
  | 'client-error'
  | 'server-error'
  | 'marked-down' // --on-marked-down shutdown-sessions
  | 'shutdown'; // drain timeout on stop

/** What a session needs from the bridge; one object shared by all sessions. */
export interface SessionContext<C = net.Socket> {
  readonly backend: Backend;
  readonly logger: Logger;
  readonly stats: Stats;
  /** How connections to the target are made. */
  readonly dialer: Dialer<C>;
  settings: SessionSettings;
  onClosed(session: BridgedSession): void;
}

/** What the bridge sees of a session, whichever relay moves its bytes. */
export interface BridgedSession {
  /** Still waiting for a target. */
  readonly connecting: boolean;
  /** The target it is connected to, once it is. */
  readonly target: Target | undefined;
  /** Close it now: only while connecting for a native session (the relay closes open ones all at once). */
  abort(reason: CloseReason): void;
}

/** How a session went, for its log entry and the counters. */
export interface SessionEnd {
  clientAddr: string;
  clientPort: number;
  startedAt: number;
  reason: CloseReason;
  error: string | undefined;
  bytesIn: number;
  bytesOut: number;
  /** It reached the target (so it counted as active). */
  wasOpen: boolean;
  /** The target it reached (the one it was last on, after retries), if any. */
  target: Target | undefined;
}

/** The counters and the one log entry of every session, whichever relay ran it. */
export function recordSessionEnd(ctx: Pick<SessionContext<unknown>, 'stats' | 'logger' | 'backend'>, end: SessionEnd, countBytes: boolean): void {
  const { stats, logger } = ctx;
  const { reason, bytesIn, bytesOut, error } = end;
  if (end.wasOpen) stats.active--;
  stats.total++;
  if (end.wasOpen && end.target) {
    end.target.ended(end.reason !== 'done');
    if (!end.target.current) ctx.backend.pool.prune();
  }
  // The native relay counts its bytes live, in its threads (see Bridge.snapshot).
  if (countBytes) {
    stats.bytesIn += bytesIn;
    stats.bytesOut += bytesOut;
  }
  if (reason !== 'done') stats.failed++;
  const level = reason === 'connect-timeout' || reason === 'target-denied' || reason === 'target-error' ? 'warning' : 'info';
  if (!logger.enabled(level)) return;
  const fields: Fields = {
    EVENT: 'session-end',
    CLIENT_ADDR: end.clientAddr,
    CLIENT_PORT: end.clientPort,
    BYTES_IN: bytesIn,
    BYTES_OUT: bytesOut,
    DURATION_MS: Date.now() - end.startedAt,
    REASON: reason,
    TARGET: end.target?.path ?? ctx.backend.pool.describe(),
  };
  if (error) fields['ERRNO'] = error;
  const why = reason === 'connect-timeout' ? ': the target did not accept within connect-timeout' : '';
  logger.log(level, `session ${addressLabel(end.clientAddr, end.clientPort)} closed (${reason}${error ? ' ' + error : ''})${why}, ${bytesIn} bytes in, ${bytesOut} bytes out, ${fields['DURATION_MS']} ms`, fields);
}

/**
 * How often the bridge calls closeIfIdle: a twentieth of the shorter timeout
 * (within 10 ms–1 s), so that a session closes at most a tenth late.
 */
export function idleSweepInterval({ clientTimeout, serverTimeout }: SessionSettings): number | undefined {
  const shortest = Math.min(clientTimeout || Infinity, serverTimeout || Infinity);
  return shortest === Infinity ? undefined : Math.min(1000, Math.max(10, Math.floor(shortest / 20)));
}


/** Most client bytes kept for a retry; a longer request is not retried (native/relay.c keeps the same). */
export const REPLAY_LIMIT = 64 * 1024;
