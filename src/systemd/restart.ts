// A restart without a gap, both halves: handOver() in the process that
// stops (SIGUSR2, the units' RestartKillSignal=) and takeOver() in the one
// that starts. The relay gives back what it can carry (Relay.giveBack: plain
// sessions with their buffers emptied, waiting clients); fd-store.ts puts
// them into systemd's fd store with the state; the next process finds them
// in LISTEN_FDS and its relay adopts them. Every wait here is bounded: a
// relay that does not finish within restart-grace (and a margin) is drained
// instead, logged once.

import { HandoverError } from '../errors';
import type { Logger } from '../log';
import type { Relay } from '../session/contract';
import {
  Adopted, CarriedTotals, closeQuietly, decodeState, FD_NAME, FdStoreCalls, readState, STATE_NAME, store, storeCapacity, StoreOutcome, unbundleAll,
} from './fd-store';
import type { Notifier } from './notify';

export interface RestartParts {
  relay: Relay;
  /** The data plane's fd-store calls; undefined for the TypeScript relay, which carries nothing. */
  fdStore: FdStoreCalls | undefined;
  notifier: Notifier;
  logger: Logger;
  restartGrace: number;
  totals(): CarriedTotals;
}

/**
 * What a previous process left in systemd's fd store, decoded for the relay
 * to adopt; undefined when there is none, or when it cannot be taken over
 * (a state this version cannot read, or a relay that cannot adopt): then
 * its connections are closed cleanly, and that is said once.
 */
export function takeOver(bundles: number[], stateFd: number | undefined, parts: Pick<RestartParts, 'fdStore' | 'notifier' | 'logger' | 'relay'>): Adopted | undefined {
  if (bundles.length === 0 && stateFd === undefined) return undefined;
  const { fdStore, notifier, logger, relay } = parts;
  // systemd keeps what it stored until told: each connection would stay open after its session ended.
  notifier.forgetStored([FD_NAME, STATE_NAME]);
  const refuse = (why: string, code: string, fds: number[]): undefined => {
    for (const fd of fds) closeQuietly(fd);
    if (stateFd !== undefined) closeQuietly(stateFd);
    logger.error(`${why}: closed the ${fds.length} connections a previous process handed over`, { EVENT: 'handover-refused', CODE: code });
    return undefined;
  };
  // Closing a bundle unread closes what it carries.
  if (!fdStore) return refuse(`${relay.info.why}, and only the native data plane takes sessions over`, 'EHANDOVER_RELAY', bundles);
  const fds = unbundleAll(fdStore, bundles);
  if (stateFd === undefined) return refuse('the fd store holds connections but no state for them', 'EHANDOVER_STATE', fds);
  try {
    const adopted = decodeState(readState(stateFd), fds);
    closeQuietly(stateFd);
    return adopted;
  } catch (err) {
    if (!(err instanceof HandoverError)) throw err;
    return refuse(err.message, err.code, fds);
  }
}

/** After the relay adopted them: one line in the journal. */
export function logTakeOver(logger: Logger, adopted: { resumed: number; admitted: number; gone: number }, lost: number): void {
  const gone = adopted.gone + lost;
  logger.notice(`took over ${adopted.resumed} sessions and ${adopted.admitted} waiting clients from the previous process` +
    (gone > 0 ? `; ${gone} stored connections had closed meanwhile (their peer went away) and were dropped` : ''),
  { EVENT: 'handover-adopted', SESSIONS: adopted.resumed, WAITING: adopted.admitted, DROPPED: gone });
}

/**
 * A restart: the listeners are closed (new clients wait in the socket
 * unit's queue); the relay gives back what it can carry within
 * restart-grace; it goes into systemd's fd store; resolves once systemd
 * holds it. What could not be carried is for the caller to drain.
 */
export async function handOver(parts: RestartParts, notifySocket: string): Promise<void> {
  const { relay, fdStore, notifier, logger } = parts;
  notifier.stopping();
  // Two fds per session; whatever room is left goes to the waiting clients.
  const capacity = storeCapacity(process.env);
  const back = await relay.giveBack(parts.restartGrace, Math.floor(capacity / 2));
  const { sessions, waiting } = back;
  if (!back.complete) {
    logger.error(`restart: the data plane did not give the sessions back within restart-grace (${parts.restartGrace} ms) and a margin; ` +
      'storing what it gave, draining the rest', { EVENT: 'handover-incomplete' });
  }
  const refused = waiting.splice(Math.max(0, capacity - 2 * sessions.length));
  for (const c of refused) closeQuietly(c.clientFd);
  let outcome: StoreOutcome = { stored: true, confirmed: true };
  if (fdStore && sessions.length + waiting.length > 0) {
    outcome = store(fdStore, notifySocket, { sessions, waiting, totals: parts.totals() });
    // systemd holds its own copies now: closing ours closes no connection (unless nothing reached it).
    for (const c of [...sessions, ...waiting]) closeQuietly(c.clientFd);
    for (const c of sessions) closeQuietly(c.serverFd);
  }
  const counts = { SESSIONS: sessions.length, WAITING: waiting.length };
  if (!outcome.stored) {
    logger.error(`restart: the sessions could not be put into the fd store (${outcome.error}): closed ${sessions.length} sessions and ${waiting.length} waiting clients`,
      { EVENT: 'handover-failed', ERRNO: outcome.error, ...counts });
    return;
  }
  if (!outcome.confirmed) {
    logger.warning(`restart: systemd did not confirm it holds the ${sessions.length} sessions and ${waiting.length} waiting clients (${outcome.error}); ` +
      'the next process takes over what reached the store', { EVENT: 'handover-unconfirmed', ERRNO: outcome.error, ...counts });
  }
  // TLS sessions cannot be carried, nor any of the TypeScript relay's (it carries none).
  const closed = [
    ...(back.closedTls > 0 || back.closedFull === 0 ? [`closed ${back.closedTls} ${fdStore ? 'TLS sessions' : 'sessions of the TypeScript relay'}`] : []),
    ...(back.closedFull > 0 ? [`closed ${back.closedFull} sessions whose peer took none of their bytes within restart-grace`] : []),
    ...(refused.length > 0 ? [`${refused.length} waiting clients beyond the fd store`] : []),
  ];
  logger.notice(`handed over ${sessions.length} sessions, ${waiting.length} held clients; ${closed.join(', ')}`,
    { EVENT: 'handover', ...counts, CLOSED_TLS: back.closedTls, CLOSED_FULL: back.closedFull, CLOSED_WAITING: refused.length });
}
