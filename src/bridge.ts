// The accepting side of the service: listeners → sessions → backend (the
// targets, their health checks and the holding of clients: backend.ts,
// targets.ts), with max-conn, STATUS=, reload and drain. Exit-idle-time
// belongs to the caller (service.ts), which hears about sessions coming and
// going through onBusyChange().
//
// One of two relays moves the bytes, chosen once at start (chooseRelay):
// the native one (native-relay.ts: C threads accept and relay; sessions in
// native-session.ts) or the TypeScript one (Node's event loop; sessions in
// session.ts), which TLS sessions always use. Every decision is made here
// either way. A restart hands the native relay's sessions to the next
// process through systemd's fd store (handover(), adopt(); handover.ts).

import net from 'node:net';
import { AccessList } from './listen/access';
import { addressLabel, plainAddress } from './listen/address';
import { Backend } from './targets/backend';
import { HandoverError, InstallError } from './errors';
import {
  Adopted, CarriedClient, CarriedSession, closeQuietly, decodeState, FD_NAME, readState, splitPassed, STATE_NAME, store, storeCapacity, storeNeeded, StoreOutcome, unbundleAll,
} from './systemd/fd-store';
import type { BackendState } from './targets/health';
import type { Target, TargetPool } from './targets/pool';
import { checkDescriptorBudget, Listener, ListenerInfo, listenSpecs, openListeners } from './listen/listeners';
import type { PassedSocket } from './systemd/passed-sockets';
import type { Logger } from './log';
import { AcceptedClient, defaultThreads, LOAD_FAILED, loadRelayAddon, NativeRelay, RelayAddon } from './dataplane/native-relay';
import { NativeContext, NativeSession } from './session/native-session';
import type { Notifier } from './systemd/notify';
import { applyReload, Config, formatValue, OPTIONS } from './options';
import { BridgedSession, idleSweepInterval, SessionContext } from './session/contract';
import { Session, socketDialer } from './session/js-session';
import { Stats } from './operator/stats';
import { TlsTerminator } from './session/tls';

const STATUS_EVERY_MS = 1000;

export interface BridgeHooks {
  /** Sessions went from none to some, or back (exit-idle-time). */
  onBusyChange(busy: boolean): void;
}

/** The service's counters at one moment. */
export interface BridgeSnapshot {
  active: number;
  waiting: number;
  total: number;
  failed: number;
  denied: number;
  bytesIn: number;
  bytesOut: number;
}

/** Which relay moves the bytes, and why (status, the startup log). */
export interface RelayInfo {
  kind: 'native' | 'js';
  threads: number;
  /** Why the TypeScript relay runs where the native one could ("" when it does not). */
  why: string;
}

/**
 * --relay and the config decide; a missing or broken addon falls back to the
 * TypeScript relay with a reason (logged once), unless --relay native asked for it.
 */
export function chooseRelay(cfg: Config): { info: RelayInfo; addon?: RelayAddon } {
  const threads = cfg.relayThreads || defaultThreads();
  // TLS is terminated by Node's tls module, so those sessions stay in JavaScript, whatever relay says.
  if (cfg.tlsCert !== '') return { info: { kind: 'js', threads: 1, why: 'TLS sessions use the TypeScript relay' } };
  if (cfg.relay === 'js') return { info: { kind: 'js', threads: 1, why: 'relay = js' } };
  const addon = loadRelayAddon();
  if (typeof addon !== 'string') return { info: { kind: 'native', threads, why: '' }, addon };
  if (cfg.relay === 'native') {
    throw new InstallError('ERELAY_LOAD', `relay = native, but ${LOAD_FAILED} (${addon}): rebuild it (npm ci, or make build) or set relay = auto`);
  }
  return { info: { kind: 'js', threads: 1, why: `${LOAD_FAILED} (${addon})` } };
}

/** A client waiting for a free slot under max-conn: a socket (TypeScript relay) or an fd (native). */
type Client = net.Socket | AcceptedClient;

export class Bridge {
  readonly stats = new Stats();
  readonly backend: Backend;
  readonly relayInfo: RelayInfo;
  private listeners: Listener[] = [];
  private readonly sessions = new Set<BridgedSession>();
  /** Clients accepted while max-conn sessions run: they wait, unread, in arrival order. */
  private readonly queued: Client[] = [];
  /** The sessions' context: the TypeScript relay's (no native), or the native relay's. */
  private readonly ctx: SessionContext | NativeContext;
  private readonly native: { relay: NativeRelay; ctx: NativeContext } | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private idleSweep: { timer: NodeJS.Timeout; every: number } | undefined;
  private stopping: Promise<void> | undefined;
  private queueFullReported = false;
  private access: AccessList;
  private tls: TlsTerminator | undefined;
  /** Bytes counted by the processes before this one (a restart's handover): the counters go on from there. */
  private carriedBytes = { bytesIn: 0, bytesOut: 0 };

  constructor(
    private cfg: Config,
    private readonly logger: Logger,
    private readonly notifier: Notifier,
    private readonly hooks: BridgeHooks,
  ) {
    this.backend = new Backend(cfg, logger, { onTargetState: (target, state) => this.onTargetState(target, state) });
    this.access = new AccessList(cfg.allow, cfg.deny);
    this.tls = TlsTerminator.load(cfg);
    const { info, addon } = chooseRelay(cfg);
    this.relayInfo = info;
    const shared = { backend: this.backend, logger, stats: this.stats, settings: cfg, onClosed: (s: BridgedSession) => this.onSessionClosed(s) };
    if (addon) {
      const relay = new NativeRelay(addon, info.threads, logger, (client) => this.acceptNative(client));
      this.native = { relay, ctx: { ...shared, dialer: relay.dialer, relay } };
      this.ctx = this.native.ctx;
    } else {
      this.ctx = { ...shared, dialer: socketDialer };
    }
  }

  /** Where clients connect, and how each listener takes them. */
  get listening(): ListenerInfo[] {
    return this.listeners.map((l) => ({ address: l.label, accept: l.accept }));
  }

  /** The counters now; bytes include those of open sessions, so a long session shows up before it ends. */
  snapshot(): BridgeSnapshot {
    const s = this.stats;
    let { bytesIn, bytesOut } = s;
    if (this.native) {
      ({ bytesIn, bytesOut } = this.native.relay.counters());
      bytesIn += this.carriedBytes.bytesIn;
      bytesOut += this.carriedBytes.bytesOut;
    } else {
      for (const session of this.sessions) {
        const live = session as Session;
        bytesIn += live.bytesIn;
        bytesOut += live.bytesOut;
      }
    }
    return { active: s.active, waiting: s.held + this.queued.length, total: s.total, failed: s.failed, denied: s.denied, bytesIn, bytesOut };
  }

  /** Start accepting; the caller logs where. */
  async start(passed: PassedSocket[]): Promise<void> {
    this.backend.start();
    const { listeners, carried, state } = splitPassed(passed);
    const specs = listenSpecs(listeners, this.cfg.listen);
    if (this.native) {
      this.native.relay.start();
      // Before the listeners: the clients a previous process held go first.
      this.adopt(carried, state);
      this.listeners = this.native.relay.openListeners(specs, this.cfg.backlog);
    } else {
      this.adopt(carried, state);
      this.listeners = await openListeners(specs, this.cfg.backlog, this.logger, (socket) => this.accept(socket));
      this.sweepIdleSessions(this.cfg);
    }
    checkDescriptorBudget(this.cfg.maxConn, this.logger);
    this.checkStoreBudget(this.cfg);
    this.statusTimer = setInterval(() => this.publishStatus(), STATUS_EVERY_MS);
    this.statusTimer.unref();
    this.publishStatus();
    this.notifier.ready();
    // WATCHDOG=1 only while the event loop runs (this is called from it) and every relay thread answers.
    this.notifier.startWatchdog(() => this.native?.relay.alive() ?? true);
  }

  // ---- accepting -----------------------------------------------------------

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    if (!this.access.permits(socket.remoteAddress ?? '')) {
      this.refused(socket.remoteAddress, socket.remotePort);
      socket.destroy();
      return;
    }
    if (!this.tls) return this.admit(socket);
    // Read now: the address is gone from the socket once the handshake failed.
    const addr = plainAddress(socket.remoteAddress ?? '?');
    const port = socket.remotePort ?? 0;
    this.tls.wrap(socket, (secure) => this.admit(secure), (reason) => {
      this.stats.denied++;
      this.logger.warning(`TLS handshake with ${addressLabel(addr, port)} failed, client refused: ${reason}`, { EVENT: 'tls-refused', CLIENT_ADDR: addr, CLIENT_PORT: port, ERROR: reason });
    });
  }

  // ---- a restart: handing over, taking over ----------------------------------------------

  /**
   * What a previous process left in systemd's fd store (handover.ts): its
   * sessions relayed on, its waiting clients admitted first, its counters
   * continued. A state this version cannot read closes those connections
   * cleanly, and says so once; the service itself goes on.
   */
  private adopt(bundles: number[], stateFd: number | undefined): void {
    if (bundles.length === 0 && stateFd === undefined) return;
    // systemd keeps what it stored until told: each connection would stay open after its session ended.
    this.notifier.forgetStored([FD_NAME, STATE_NAME]);
    const refuse = (why: string, code: string, fds: number[]): void => {
      for (const fd of fds) closeQuietly(fd);
      if (stateFd !== undefined) closeQuietly(stateFd);
      this.logger.error(`${why}: closed the ${fds.length} connections a previous process handed over`, { EVENT: 'handover-refused', CODE: code });
    };
    // Closing a bundle unread closes what it carries.
    if (!this.native) return refuse(`${this.relayInfo.why}, and only the native relay takes sessions over`, 'EHANDOVER_RELAY', bundles);
    const calls = this.native.relay.fdStore;
    const fds = unbundleAll(calls, bundles);
    if (stateFd === undefined) return refuse('the fd store holds connections but no state for them', 'EHANDOVER_STATE', fds);
    let adopted: Adopted;
    try {
      adopted = decodeState(readState(stateFd), fds);
    } catch (err) {
      if (!(err instanceof HandoverError)) throw err;
      return refuse(err.message, err.code, fds);
    }
    closeQuietly(stateFd);
    const { handover: { sessions, waiting, totals } } = adopted;
    let gone = adopted.lost;
    Object.assign(this.stats, { total: totals.total, failed: totals.failed, denied: totals.denied });
    this.carriedBytes = { bytesIn: totals.bytesIn, bytesOut: totals.bytesOut };
    let resumed = 0;
    for (const carried of sessions) {
      const session = new NativeSession({ fd: carried.clientFd, addr: carried.addr, port: carried.port }, this.native.ctx, carried);
      // A connection reset (or shut down both ways) while no process ran is dropped, as systemd drops such stored fds.
      if (calls.peerGone(carried.clientFd) || session.resume(carried)) {
        gone++;
        closeQuietly(carried.clientFd);
        closeQuietly(carried.serverFd);
        continue;
      }
      resumed++;
      this.sessions.add(session);
    }
    let admitted = 0;
    for (const carried of waiting) {
      if (calls.peerGone(carried.clientFd)) {
        gone++;
        closeQuietly(carried.clientFd);
        continue;
      }
      admitted++;
      this.admit({ fd: carried.clientFd, addr: carried.addr, port: carried.port, carried });
    }
    if (this.sessions.size > 0 || this.queued.length > 0) this.hooks.onBusyChange(true);
    this.logger.notice(`took over ${resumed} sessions and ${admitted} waiting clients from the previous process` +
      (gone > 0 ? `; ${gone} stored connections had closed meanwhile (their peer went away) and were dropped` : ''),
    { EVENT: 'handover-adopted', SESSIONS: resumed, WAITING: admitted, DROPPED: gone });
  }

  /** A service that could not carry everything across a restart says so at start and reload (handover.ts: storeCapacity). */
  private checkStoreBudget(cfg: Config): void {
    if (!this.notifier.active || !this.native) return;
    const needed = storeNeeded(cfg.maxConn, cfg.backlog);
    const capacity = storeCapacity(process.env);
    if (needed <= capacity) return;
    this.logger.warning(`max-conn ${cfg.maxConn} and backlog ${cfg.backlog} may need ${needed} connections carried across a restart, ` +
      `but systemd's fd store carries ${capacity} (8096 per entry of FileDescriptorStoreMax= but one): raise FileDescriptorStoreMax= ` +
      '(systemctl edit bridge.service); on a restart, sessions beyond it are drained',
    { EVENT: 'fdstore-too-small', NEEDED: needed, CAPACITY: capacity });
  }

  /**
   * A restart (SIGUSR2, the units' RestartKillSignal=): stop accepting, let
   * every plain session empty its buffers (restart-grace at most), put its
   * fds and those of the waiting clients into systemd's fd store with the
   * state, and resolve once systemd holds them: the next process goes on
   * with them. The TypeScript relay's sessions (TLS: their state lives in
   * OpenSSL) cannot be carried: they get restart-grace, then close, as
   * systemd starts the next process, and new clients are served, only once
   * this one has exited. Not under systemd (no fd store), this is a stop.
   */
  handover(): Promise<void> {
    if (this.stopping) return this.stopping;
    const socket = this.notifier.socket;
    if (socket === undefined) {
      this.logger.notice('restart requested, but not run by systemd (no fd store to hand sessions to): draining as on a stop', { EVENT: 'handover-unavailable' });
      return this.stop();
    }
    for (const l of this.listeners) l.close();
    this.stopping = this.handOver(socket);
    return this.stopping;
  }

  private async handOver(socket: string): Promise<void> {
    this.notifier.stopping();
    const grace = this.cfg.restartGrace;
    const deadline = Date.now() + grace;
    const relay = this.native?.relay;
    // Two fds per session; whatever room is left goes to the waiting clients.
    const capacity = storeCapacity(process.env);
    const full = relay ? await relay.handover(grace, Math.floor(capacity / 2)) : 0;
    const { sessions, waiting } = this.carryAll();
    const refused = waiting.splice(Math.max(0, capacity - 2 * sessions.length));
    for (const c of refused) closeQuietly(c.clientFd);
    const closed = await this.closeUncarried(deadline);
    let outcome: StoreOutcome = { stored: true, confirmed: true };
    if (relay && sessions.length + waiting.length > 0) {
      const { total, failed, denied } = this.stats;
      const { bytesIn, bytesOut } = this.snapshot();
      outcome = store(relay.fdStore, socket, { sessions, waiting, totals: { total, failed, denied, bytesIn, bytesOut } });
      // systemd holds its own copies now: closing ours closes no connection (unless nothing reached it).
      for (const c of [...sessions, ...waiting]) closeQuietly(c.clientFd);
      for (const c of sessions) closeQuietly(c.serverFd);
    }
    const counts = { SESSIONS: sessions.length, WAITING: waiting.length };
    if (!outcome.stored) {
      this.logger.error(`restart: the sessions could not be put into the fd store (${outcome.error}): closed ${sessions.length} sessions and ${waiting.length} waiting clients`,
        { EVENT: 'handover-failed', ERRNO: outcome.error, ...counts });
    } else if (!outcome.confirmed) {
      this.logger.warning(`restart: systemd did not confirm it holds the ${sessions.length} sessions and ${waiting.length} waiting clients (${outcome.error}); ` +
        'the next process takes over what reached the store', { EVENT: 'handover-unconfirmed', ERRNO: outcome.error, ...counts });
    }
    if (outcome.stored) {
      // Only TLS sessions live in the TypeScript relay, unless relay = js (or the addon could not load) put every session there.
      const what = this.tls || closed === 0 ? 'TLS sessions' : 'sessions of the TypeScript relay';
      const extra = [full > 0 ? `${full} sessions whose peer took no bytes for restart-grace` : '', refused.length > 0 ? `${refused.length} waiting clients beyond the fd store` : '']
        .filter(Boolean);
      this.logger.notice(`handed over ${sessions.length} sessions, ${waiting.length} held clients; closed ${closed} ${what}` +
        (extra.length ? `, ${extra.join(', ')}` : ''),
      { EVENT: 'handover', ...counts, CLOSED_TLS: closed, CLOSED_FULL: full, CLOSED_WAITING: refused.length });
    }
    // What the store had no room for is drained, as on a stop.
    await this.drain();
  }

  /** After the relay's handover: every native session it gave back, every waiting client, as the next process needs them. */
  private carryAll(): { sessions: CarriedSession[]; waiting: CarriedClient[] } {
    const sessions: CarriedSession[] = [];
    const waiting: CarriedClient[] = [];
    for (const s of [...this.sessions]) {
      if (!(s instanceof NativeSession)) continue;
      const carried = s.carry();
      if (!carried) continue;
      this.sessions.delete(s);
      if ('serverFd' in carried) sessions.push(carried);
      else waiting.push(carried);
    }
    for (const client of this.queued.splice(0)) {
      if (client instanceof net.Socket) {
        client.destroy();
        continue;
      }
      waiting.push(client.carried ?? {
        clientFd: client.fd, addr: client.addr, port: client.port, startedAt: Date.now(), bytesIn: 0, replay: undefined,
        clientEnded: false, retriesLeft: this.cfg.retries,
      });
    }
    return { sessions, waiting };
  }

  /** The TypeScript relay's sessions go on until the deadline, then close; returns how many were closed. */
  private async closeUncarried(deadline: number): Promise<number> {
    const uncarried = [...this.sessions].filter((s) => !(s instanceof NativeSession));
    await this.waitFor(() => uncarried.every((s) => !this.sessions.has(s)), deadline - Date.now());
    const open = uncarried.filter((s) => this.sessions.has(s));
    for (const s of open) s.abort('shutdown');
    return open.length;
  }

  /** A client the native relay accepted: the same policy, on an fd. */
  private acceptNative(client: AcceptedClient): void {
    if (!this.access.permits(client.addr)) {
      this.refused(client.addr, client.port);
      return this.drop(client);
    }
    this.admit(client);
  }

  /** A client that may use the service: a session now, or a place in the queue over max-conn. */
  private admit(client: Client): void {
    if (this.stopping) return this.drop(client);
    if (this.sessions.size === 0 && this.queued.length === 0) this.hooks.onBusyChange(true);
    if (this.sessions.size < this.cfg.maxConn) return this.open(client);
    // Over max-conn. The client waits here instead of in the kernel queue
    // (Node cannot stop polling a listening socket, and the native relay does
    // as the TypeScript one does): accepted, unread, not reset, and started
    // in order as sessions end. Bounded by the backlog, as the kernel queue would be.
    if (this.queued.length >= this.cfg.backlog) {
      if (!this.queueFullReported) {
        this.logger.warning(`max-conn (${this.cfg.maxConn}) reached and ${this.queued.length} clients already queued: closing new ones; raise --max-conn`, { EVENT: 'queue-full' });
        this.queueFullReported = true;
      }
      return this.drop(client);
    }
    if (client instanceof net.Socket) client.on('error', noop);
    this.queued.push(client);
  }

  /** Counted first, then started: a native session can end before start() returns. */
  private open(client: Client): void {
    if (client instanceof net.Socket) {
      client.off('error', noop);
      this.sessions.add(new Session(client, this.ctx as SessionContext));
      return;
    }
    const session = new NativeSession(client, this.native!.ctx, client.carried);
    this.sessions.add(session);
    session.start();
  }

  private drop(client: Client): void {
    if (client instanceof net.Socket) client.destroy();
    else this.native?.relay.closeFd(client.fd);
  }

  /** Not on --allow, or on --deny: closed before a byte is read. */
  private refused(remoteAddress: string | undefined, remotePort: number | undefined): void {
    this.stats.denied++;
    if (this.logger.enabled('info')) {
      const addr = plainAddress(remoteAddress ?? '?');
      const port = remotePort ?? 0;
      this.logger.info(`client ${addressLabel(addr, port)} refused by --allow/--deny`, { EVENT: 'denied', CLIENT_ADDR: addr, CLIENT_PORT: port });
    }
  }

  private onSessionClosed(session: BridgedSession): void {
    this.sessions.delete(session);
    while (this.queued.length > 0 && this.sessions.size < this.cfg.maxConn && !this.stopping) {
      const next = this.queued.shift()!;
      if (next instanceof net.Socket && next.destroyed) continue;
      this.open(next);
    }
    if (this.queued.length === 0) this.queueFullReported = false;
    if (this.sessions.size === 0) this.hooks.onBusyChange(false);
  }

  /**
   * The TypeScript relay's client-timeout and server-timeout (the native
   * relay's threads sweep their own sessions the same way): one timer for all
   * sessions instead of two per session refreshed on every chunk (less memory
   * per connection, less work per chunk), at the price of closing up to a
   * tenth of the timeout (1 s at most) late. After a reload it keeps the
   * shorter interval, as older sessions keep theirs.
   */
  private sweepIdleSessions(cfg: Config): void {
    if (this.native) return;
    const every = idleSweepInterval(cfg);
    if (every === undefined || (this.idleSweep && this.idleSweep.every <= every)) return;
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
    const timer = setInterval(() => {
      const now = Date.now();
      for (const s of this.sessions) (s as Session).closeIfIdle(now);
    }, every);
    timer.unref();
    this.idleSweep = { timer, every };
  }

  /** Close every session (drain timeout), connecting ones too. */
  private closeSessions(reason: 'shutdown'): void {
    for (const s of [...this.sessions]) s.abort(reason); // a native session closes here only while connecting: the relay closes the open ones
    this.native?.relay.closeAll(reason);
  }

  /** --on-marked-down shutdown-sessions: close the sessions on one target; returns how many. */
  private closeSessionsOn(target: Target): number {
    const on = [...this.sessions].filter((s) => !s.connecting && s.target === target);
    for (const s of on) s.abort('marked-down');
    this.native?.relay.closeWhere('marked-down', (s) => (s as NativeSession).target === target);
    return on.length;
  }

  // ---- targets ---------------------------------------------------------------

  private onTargetState(target: Target, state: BackendState): void {
    this.publishStatus();
    if (state === 'DOWN' && this.cfg.onMarkedDown === 'shutdown-sessions') {
      const closed = this.closeSessionsOn(target);
      if (closed > 0) {
        const which = this.backend.pool.several ? `target ${target.path}` : 'the target';
        this.logger.warning(`closed ${closed} sessions because ${which} was marked DOWN (on-marked-down shutdown-sessions)`,
          { EVENT: 'shutdown-sessions', TARGET: target.path });
      }
    }
  }

  /** `sockbridge drain TARGET` and `enable`: the target, or undefined when there is none by that path. */
  setDrained(path: string, drained: boolean): Target | undefined {
    const t = this.backend.pool.setDrained(path, drained);
    this.publishStatus();
    return t;
  }

  private publishStatus(): void {
    this.notifier.status(statusLine(this.backend.pool, this.snapshot()));
  }

  // ---- reload and stop -----------------------------------------------------------

  /**
   * SIGHUP: new settings for new sessions; open sessions keep running
   * untouched. Options that need a restart keep their running values (and
   * say so): returns the configuration now in effect.
   */
  reload(requested: Config): Config {
    this.notifier.reloading();
    announceReload(this.logger, this.cfg, requested);
    const next = applyReload(this.cfg, requested);
    this.cfg = next;
    this.ctx.settings = next;
    this.sweepIdleSessions(next);
    this.access = new AccessList(next.allow, next.deny);
    try {
      this.tls = TlsTerminator.load(next);
    } catch (err) {
      // The files changed since the check: keep serving with the old ones.
      this.logger.error(`TLS files not reloaded, keeping the previous certificate: ${(err as Error).message}`, { EVENT: 'reload-failed' });
    }
    this.backend.configure(next);
    this.checkStoreBudget(next);
    this.logger.setLevel(next.logLevel);
    this.publishStatus();
    this.notifier.ready();
    return next;
  }

  /** SIGTERM: stop accepting, let sessions finish up to drain-timeout, then close them. */
  stop(): Promise<void> {
    if (!this.stopping) {
      // Listeners first: both relays accept in this thread, so nobody is accepted after this.
      for (const l of this.listeners) l.close();
      this.stopping = this.drain();
    }
    return this.stopping;
  }

  private async drain(): Promise<void> {
    this.notifier.stopping();
    for (const client of this.queued.splice(0)) this.drop(client);
    if (this.sessions.size > 0) {
      this.logger.notice(`stopping: waiting up to ${this.cfg.drainTimeout} ms for ${this.sessions.size} sessions to finish`, { EVENT: 'draining' });
      const finished = await this.waitForSessions(this.cfg.drainTimeout);
      if (!finished) {
        this.logger.warning(`drain-timeout reached: closing ${this.sessions.size} sessions`, { EVENT: 'drain-timeout' });
        this.closeSessions('shutdown');
        await this.waitForSessions(1000);
      }
    }
    this.native?.relay.stop();
    this.backend.stop();
    this.notifier.stopWatchdog();
    if (this.statusTimer) clearInterval(this.statusTimer);
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
    this.logger.notice(`stopped after ${this.stats.total} sessions`, { EVENT: 'stopped' });
  }

  private waitForSessions(timeoutMs: number): Promise<boolean> {
    return this.waitFor(() => this.sessions.size === 0, timeoutMs);
  }

  private waitFor(done: () => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const poll = (): void => {
        if (done()) return resolve(true);
        if (Date.now() >= deadline) return resolve(false);
        setTimeout(poll, 20);
      };
      poll();
    });
  }
}

function noop(): void {}

/** The STATUS= line: "target UP; …" with one target, "2/3 targets UP; …" with several. */
export function statusLine(pool: Pick<TargetPool, 'current' | 'several'>, s: BridgeSnapshot): string {
  const targets = pool.current;
  let head: string;
  if (!pool.several && targets.length === 1) {
    const state = targets[0]!.state;
    head = `target ${state === 'INIT' ? 'checking' : state}`;
  } else {
    head = `${targets.filter((t) => t.state === 'UP').length}/${targets.length} targets UP`;
  }
  return `${head}; ${s.active} active, ${s.waiting} waiting, ${s.total} served, ${s.failed} failed`;
}

export function logListening(logger: Logger, listeners: ListenerInfo[], target: string, relay: RelayInfo): void {
  const addresses = listeners.map((l) => l.address).join(', ');
  const how = relay.kind === 'native' ? `native relay, ${relay.threads} thread${relay.threads === 1 ? '' : 's'}` : 'TypeScript relay';
  logger.notice(`listening on ${addresses}, forwarding to ${target} (${how})`,
    { EVENT: 'listening', TARGET: target, RELAY: relay.kind, RELAY_THREADS: relay.threads, ACCEPT_PATH: listeners.map((l) => l.accept).join(' ') });
  // Falling back costs every core but one: worth a line of its own, unless asked for (relay = js) or needed (TLS).
  if (relay.kind === 'js' && relay.why.startsWith(LOAD_FAILED)) {
    logger.warning(`plain sessions use the TypeScript relay, in one thread: ${relay.why}; set relay = js to silence this, or rebuild it (npm ci)`,
      { EVENT: 'relay-fallback', ERROR: relay.why });
  }
  // The TypeScript relay's fast path missing is worth a line too: only a Node upgrade causes it.
  const slow = listeners.filter((l) => l.accept === 'stream').map((l) => l.address);
  if (slow.length > 0) {
    logger.warning(`clients on ${slow.join(', ')} are read through Node's stream machinery, which is slower: Node.js ${process.version} ` +
      'lacks the internal sockbridge takes over to read into its own buffers (the listening handle\'s onconnection)', { EVENT: 'accept-fallback', NODE_VERSION: process.version });
  }
}

/** One notice naming what changed, and a warning for what needs a restart. */
export function announceReload(logger: Logger, before: Config, next: Config): void {
  const changed = OPTIONS.filter((o) => formatValue(o, before) !== formatValue(o, next));
  const names = changed.map((o) => `${o.name}=${formatValue(o, next)}`);
  logger.notice(`configuration reloaded: ${names.length ? names.join(', ') : 'no changes'}`, { EVENT: 'reloaded', CHANGED: names.join(' ') });
  const restartOnly = changed.filter((o) => !o.reloadable).map((o) => o.name);
  if (restartOnly.length > 0) {
    logger.warning(`changes to ${restartOnly.join(', ')} take effect only after a restart`, { EVENT: 'reload-needs-restart' });
  }
}
