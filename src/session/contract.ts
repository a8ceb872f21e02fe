// What the bridge and both relays agree on: why a session ended, its one log
// entry and counters, and what a relay does for the bridge (Relay). The
// native data plane (dataplane/native-relay.ts) and the TypeScript relay
// (session/js-relay.ts) each implement Relay.

import type net from 'node:net';
import { addressLabel } from '../listen/address';
import type { ListenerInfo, ListenSpec } from '../listen/listeners';
import type { Fields, Logger } from '../log';
import type { DeniedReason, Stats } from '../operator/stats';
import type { Config } from '../options';
import type { CarriedClient, CarriedSession, Handover } from '../systemd/fd-store';
import type { Backend, ConnectFailure, Dialer } from '../targets/backend';
import type { TargetTlsMaterial } from '../targets/connector';
import type { Target } from '../targets/pool';
import type { TlsMaterial } from './tls';

export type SessionSettings = Pick<Config, 'clientTimeout' | 'serverTimeout' | 'retries' | 'sendProxy'>;

export type CloseReason =
  | 'done' // both directions finished
  | ConnectFailure
  | 'client-timeout'
  | 'server-timeout'
  | 'client-error'
  | 'server-error'
  | 'marked-down' // --on-marked-down shutdown-sessions
  | 'shutdown'; // drain timeout on stop, or restart-grace on a restart

/** Which relay moves the bytes, and why (status, the startup log). */
export interface RelayInfo {
  kind: 'native' | 'js';
  threads: number;
  /** Why the TypeScript relay runs where the native one could ("" when it does not). */
  why: string;
}

/** What each of the data plane's threads has done (status: they share the load). */
export interface ThreadCounts {
  sessions: number;
  accepted: number;
  handshakes: number;
}

/**
 * What a TLS refusal knows beyond its reason: whether the handshake failed
 * ('tls': no certificate, a foreign or expired one, garbage) or the
 * certificate verified but its identity is on no allow-list ('identity');
 * and the certificate's names, when one was presented: its subject CN and
 * its SAN DNS names and URIs as one field ("DNS:a.example, URI:spiffe://…").
 */
export interface TlsRefusalDetail {
  kind?: 'tls' | 'identity';
  cn?: string | undefined;
  san?: string | undefined;
}

/** A relay's table of sources for the per-source limits (status). */
export interface SourceTableInfo {
  /** Entries now: sources with a session open, and idle ones kept for their rate windows. */
  tracked: number;
  /** Sources with a session open. */
  live: number;
  /** What the table may hold now: live sources plus the idle ones kept at most (source-limits.ts: IDLE_MAX). */
  bound: number;
}

/** What a relay needs from the bridge. */
export interface RelayContext {
  readonly backend: Backend;
  readonly logger: Logger;
  readonly stats: Stats;
  /** The configuration in force now (a reload replaces it for new sessions). */
  cfg(): Config;
  /** TLS towards TCP targets as in force now (--target-tls), or none. */
  targetTls(): TargetTlsMaterial | undefined;
  /**
   * A client refused before anything was read (a front's: before anything
   * after its PROXY header): counted by reason (default 'access') and
   * logged; `why` follows "client ADDR:PORT " in the line ("refused by
   * --allow/--deny"). Repeated concurrent, rate, proxy and uid refusals are
   * logged rate-limited.
   */
  refused(addr: string, port: number, why: string, reason?: DeniedReason): void;
  /**
   * A TLS client refused: its handshake failed, or (detail.kind
   * 'identity') its certificate's identity is on no allow-list, `reason`
   * then saying why in words that follow its names ("matches none of
   * --tls-allow-cn *.ops.example.org"). Counted and logged, with the
   * certificate's CN and SAN when known (identity refusals rate-limited).
   */
  tlsRefused(addr: string, port: number, reason: string, detail?: TlsRefusalDetail): void;
  /** Sessions or waiting clients may have appeared. */
  onBusy(): void;
  /** A session or waiting client ended. */
  onSessionEnded(): void;
}

/** A relay's live numbers. */
export interface RelayCounts {
  active: number;
  waiting: number;
  bytesIn: number;
  bytesOut: number;
}

/** What a restart took back from a relay, for the fd store. */
export interface HandedBack {
  sessions: CarriedSession[];
  waiting: CarriedClient[];
  /** Sessions closed at restart-grace: TLS ones (never carried), and plain ones whose peer took none of their bytes. */
  closedTls: number;
  closedFull: number;
  /** false: the relay did not finish within restart-grace and a margin; what is still open is drained. */
  complete: boolean;
}

/** What the bridge asks of a relay, whichever moves the bytes. */
export interface Relay {
  readonly info: RelayInfo;
  /** Start accepting on these sockets; the clients a previous process handed over go first. */
  start(specs: ListenSpec[], handover: Handover | undefined, tls: TlsMaterial | undefined): Promise<ListenerInfo[]>;
  /** A reload: the configuration now in force (ctx.cfg()) and these TLS files, for new clients; "" or why they were refused. */
  configure(tls: TlsMaterial | undefined): string;
  /** The targets' set, states or drained flags changed. */
  targetsChanged(): void;
  /** Stop accepting; resolves once nobody is accepted any more. */
  closeListeners(): Promise<void>;
  /** A stop: clients waiting for a place under max-conn are closed unserved. */
  dropWaiting(): void;
  counts(): RelayCounts;
  /** Per thread of the data plane (none for the TypeScript relay). */
  threadCounts(): ThreadCounts[];
  /** Sessions or waiting clients exist. */
  readonly busy: boolean;
  /** Close everything (drain-timeout). */
  closeAll(reason: 'shutdown'): void;
  /** Close the sessions on one target (marked DOWN); how many. */
  closeOn(target: Target, reason: 'marked-down'): number;
  /** A restart: what can be carried to the next process, given back. */
  giveBack(graceMs: number, sessionBudget: number): Promise<HandedBack>;
  /** What start() took over from a previous process. */
  readonly adopted: { resumed: number; admitted: number; gone: number } | undefined;
  /** Whether its threads answer (the systemd watchdog). */
  alive(): boolean;
  /** Its table of sources, when a per-source limit is in force and it keeps one (status). */
  sources?(): SourceTableInfo | undefined;
  /** After the drain: let the process exit. */
  stop(): void;
}

/** What a session of the TypeScript relay needs; one object shared by all sessions. */
export interface SessionContext<C = net.Socket> {
  readonly backend: Backend;
  readonly logger: Logger;
  readonly stats: Stats;
  /** How connections to the target are made. */
  readonly dialer: Dialer<C>;
  settings: SessionSettings;
  onClosed(session: BridgedSession): void;
}

/** What the TypeScript relay sees of one of its sessions. */
export interface BridgedSession {
  /** Still waiting for a target. */
  readonly connecting: boolean;
  /** The target it is connected to, once it is. */
  readonly target: Target | undefined;
  /** Close it now. */
  abort(reason: CloseReason): void;
}

/** How a session went, for its log entry and the counters. */
export interface BridgedSessionEnd {
  clientAddr: string;
  clientPort: number;
  startedAt: number;
  /** When it ended (ms since the epoch): the data plane reports ends in batches, so this is not when they arrive. */
  endedAt: number;
  reason: CloseReason;
  error: string | undefined;
  bytesIn: number;
  bytesOut: number;
  /** The target it reached (the one it was last on, after retries), if any. */
  target: Target | undefined;
  /** Bytes were still owed, so the end was a reset, not a FIN: 1 to the client, 2 to the target. */
  resets: number;
  /** A UNIX listener's client (no address): who it is (SO_PEERCRED). */
  cred?: { pid: number; uid: number; gid: number };
  /** A TLS client's certificate: its subject CN (CLIENT_CN). */
  cn?: string | undefined;
}

/** How a client is named in logs: its address, or for a UNIX listener's client its credentials. */
export function clientLabel(addr: string, port: number, cred?: { pid: number; uid: number; gid: number }): string {
  if (addr !== '') return addressLabel(addr, port);
  return cred ? `pid ${cred.pid} (uid ${cred.uid}, gid ${cred.gid})` : 'a local client';
}

/** The counters and the one log entry of every session, whichever relay ran it. */
export function recordSessionEnd(ctx: { readonly stats: Stats; readonly logger: Logger; readonly backend: Backend }, end: BridgedSessionEnd): void {
  const { stats, logger } = ctx;
  const { reason, bytesIn, bytesOut, error } = end;
  stats.total++;
  if (end.target) {
    end.target.ended(reason !== 'done');
    if (!end.target.current) ctx.backend.pool.prune();
  }
  if (reason !== 'done') stats.failed++;
  // A session that carried nothing either way (a health check, a port probe) is logged at debug, as HAProxy's "option dontlognull".
  const empty = reason === 'done' && bytesIn === 0 && bytesOut === 0;
  const level = reason === 'connect-timeout' || reason === 'target-denied' || reason === 'target-error' ? 'warning' : empty ? 'debug' : 'info';
  if (!logger.enabled(level)) return;
  const fields: Fields = {
    EVENT: 'session-end',
    ...(end.cred ? { CLIENT_PID: end.cred.pid, CLIENT_UID: end.cred.uid, CLIENT_GID: end.cred.gid } : { CLIENT_ADDR: end.clientAddr, CLIENT_PORT: end.clientPort }),
    ...(end.cn !== undefined ? { CLIENT_CN: end.cn } : {}),
    BYTES_IN: bytesIn,
    BYTES_OUT: bytesOut,
    DURATION_MS: end.endedAt - end.startedAt,
    REASON: reason,
    TARGET: end.target?.path ?? ctx.backend.pool.describe(),
  };
  if (error) fields['ERRNO'] = error;
  let reset = '';
  if (end.resets !== 0) {
    const who = end.resets === 1 ? 'client' : end.resets === 2 ? 'target' : 'both';
    fields['RESET'] = who;
    const whom = who === 'both' ? 'the client and the target' : `the ${who}`;
    reset = reason === 'server-error' || reason === 'client-error' ? `; ${whom} got a reset (the other side's error, passed on)`
      : `; ${whom} got a reset, not a FIN: bytes were still undelivered`;
  }
  const why = reason === 'connect-timeout' ? ': the target did not accept within connect-timeout' : '';
  logger.log(level, `session ${clientLabel(end.clientAddr, end.clientPort, end.cred)} closed (${reason}${error ? ' ' + error : ''})${why}, ${bytesIn} bytes in, ${bytesOut} bytes out, ${fields['DURATION_MS']} ms${reset}`, fields);
}

/**
 * How often the TypeScript relay looks for idle sessions: a twentieth of the
 * shorter timeout (within 10 ms–1 s), so that a session closes at most a
 * tenth late (the data plane's threads sweep the same way).
 */
export function idleSweepInterval({ clientTimeout, serverTimeout }: SessionSettings): number | undefined {
  const shortest = Math.min(clientTimeout || Infinity, serverTimeout || Infinity);
  return shortest === Infinity ? undefined : Math.min(1000, Math.max(10, Math.floor(shortest / 20)));
}

/** Most client bytes kept for a retry; a longer request is not retried (native/dataplane.h keeps the same). */
export const REPLAY_LIMIT = 64 * 1024;
