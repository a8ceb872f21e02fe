// What the data plane's threads tell TypeScript (native/addon.c delivers them
// in batches): one typed event per kind, numbered as native/dataplane.h
// numbers them.

import type { CloseReason } from '../session/contract';

export const enum EventKind {
  End = 1,
  Parked,
  Dialed,
  Denied,
  TlsRefused,
  AcceptError,
  Unlistened,
  Handed,
  HandoverDone,
}

/** enum reason in native/dataplane.h, in its order; 'dropped' is a queued client closed unserved (no session). */
export const CLOSE_REASONS: readonly (CloseReason | 'dropped')[] = [
  'done', 'client-timeout', 'server-timeout', 'client-error', 'server-error', 'marked-down', 'shutdown',
  'connect-timeout', 'target-denied', 'target-error', 'dropped',
];

export function reasonCode(reason: CloseReason | 'dropped'): number {
  return CLOSE_REASONS.indexOf(reason);
}

/** Why a client waits for TypeScript (enum parked_why). */
export const enum ParkedWhy {
  /** Over max-conn: it waits in the queue, in arrival order. */
  Queued,
  /** The first target of its round refused (or there is none): hold-and-retry. */
  Held,
  /** The target reset before answering: send the request again. */
  Retry,
  /** A TLS listener's client while every target is DOWN: held before its handshake, so a restart can carry it. */
  HeldBeforeTls,
}

/**
 * A session ended: everything its log entry needs. resets: 1 the client got
 * a reset, 2 the target. A UNIX listener's client has no address ("", 0) but
 * credentials (pid 0 when there are none). endedAt: wall clock ms (an end
 * waits up to 10 ms for others to share its batch: native/addon.c).
 */
export type EndEvent = [kind: EventKind.End, id: number, reason: number, errno: number, bytesIn: number, bytesOut: number,
  addr: string, port: number, startedAt: number, slot: number, resets: number, tls: boolean, pid: number, uid: number, gid: number,
  cn: string, endedAt: number];
/** reason: why the connect failed, where errno alone does not say (a TLS handshake with the target). */
export type ParkedEvent = [kind: EventKind.Parked, id: number, why: ParkedWhy, errno: number, slot: number, addr: string, port: number,
  startedAt: number, tls: boolean, bytesIn: number, reason: string];
/** errno 0: connected (and relaying). */
export type DialedEvent = [kind: EventKind.Dialed, id: number, errno: number, slot: number, reason: string];
/** Why a client was refused before anything was read (enum deny_reason), as Stats counts it. */
export const DENY_REASONS = ['access', 'concurrent', 'rate', 'uid', 'proxy'] as const;
/** detail: a bad PROXY header's fault; pid 0 when the client is not a UNIX listener's (uid, gid -1). */
export type DeniedEvent = [kind: EventKind.Denied, addr: string, port: number, listener: number, why: number, detail: string,
  pid: number, uid: number, gid: number];
/**
 * verify: OpenSSL's X509_V_ERR_* (0 when the certificate was not the
 * reason; 50, APPLICATION_VERIFICATION, when its identity is on no
 * allow-list); cn and san: the certificate's names ("" when unknown).
 */
export type TlsRefusedEvent = [kind: EventKind.TlsRefused, addr: string, port: number, verify: number, reason: string, cn: string, san: string];
export type AcceptErrorEvent = [kind: EventKind.AcceptError, listener: number, errno: number];
export type UnlistenedEvent = [kind: EventKind.Unlistened, listener: number];
/** serverFd -1: a waiting client (parkedWhy says how it waited). directionsDone: 1 client → target, 2 target → client. */
export type HandedEvent = [kind: EventKind.Handed, id: number, clientFd: number, serverFd: number, directionsDone: number,
  replay: Buffer | undefined, bytesIn: number, bytesOut: number, addr: string, port: number, startedAt: number, slot: number,
  retriesLeft: number, clientEnded: boolean, beforeTls: boolean, parkedWhy: number];
export type HandoverDoneEvent = [kind: EventKind.HandoverDone, thread: number, closedTls: number, closedFull: number];

export type DataPlaneEvent = EndEvent | ParkedEvent | DialedEvent | DeniedEvent | TlsRefusedEvent | AcceptErrorEvent | UnlistenedEvent
  | HandedEvent | HandoverDoneEvent;
