// The accepting side of the service: listeners → sessions → backend, with
// max-conn, STATUS=, reload and drain. One per process: the only process, or
// each worker (see workers.ts). Health checks and exit-idle-time belong to the
// caller, which reports the target's state through onBackendState() and hears
// about sessions coming and going through onBusyChange().

import type net from 'node:net';
import { AccessList } from './access';
import { addressLabel, plainAddress } from './address';
import { Backend, Reporter } from './backend';
import type { BackendState } from './health';
import { checkDescriptorBudget, Listener, ListenerInfo, openListeners, PassedSocket } from './listeners';
import type { Logger } from './log';
import type { Notifier } from './notify';
import { Config, formatValue, OPTIONS } from './options';
import { idleSweepInterval, READS, Session, SessionContext } from './session';
import { Stats } from './stats';
import { TlsTerminator } from './tls';

const STATUS_EVERY_MS = 1000;

export interface BridgeHooks {
  /** Log listening and reloads (false in workers: the primary logs them once). */
  announce?: boolean;
  /** --error-limit reached: whoever runs the health checks marks the target DOWN. */
  onErrorLimit(reason: string): void;
  /** Sessions went from none to some, or back (exit-idle-time; workers tell the primary at once). */
  onBusyChange(busy: boolean): void;
}

/** The counters a worker reports to the primary. */
export interface BridgeSnapshot {
  active: number;
  waiting: number;
  total: number;
  failed: number;
  denied: number;
  bytesIn: number;
  bytesOut: number;
}

export const NO_SESSIONS: Readonly<BridgeSnapshot> = { active: 0, waiting: 0, total: 0, failed: 0, denied: 0, bytesIn: 0, bytesOut: 0 };

/** Counters of several workers added up. */
export function addSnapshots(a: BridgeSnapshot, b: BridgeSnapshot): BridgeSnapshot {
  return {
    active: a.active + b.active, waiting: a.waiting + b.waiting, total: a.total + b.total, failed: a.failed + b.failed,
    denied: a.denied + b.denied, bytesIn: a.bytesIn + b.bytesIn, bytesOut: a.bytesOut + b.bytesOut,
  };
}

export class Bridge {
  readonly stats = new Stats();
  readonly backend: Backend;
  private listeners: Listener[] = [];
  private readonly sessions = new Set<Session>();
  /** Clients accepted while max-conn sessions run: they wait, unread, in arrival order. */
  private readonly queued: net.Socket[] = [];
  private readonly ctx: SessionContext;
  private statusTimer: NodeJS.Timeout | undefined;
  private idleSweep: { timer: NodeJS.Timeout; every: number } | undefined;
  private stopping: Promise<void> | undefined;
  private queueFullReported = false;
  private backendState: BackendState = 'INIT';
  private access: AccessList;
  private tls: TlsTerminator | undefined;

  constructor(
    private cfg: Config,
    private readonly logger: Logger,
    private readonly notifier: Notifier,
    problems: Reporter,
    private readonly hooks: BridgeHooks,
  ) {
    this.backend = new Backend(cfg, logger, problems, { onErrorLimit: hooks.onErrorLimit });
    this.access = new AccessList(cfg.allow, cfg.deny);
    this.tls = TlsTerminator.load(cfg);
    this.ctx = {
      backend: this.backend,
      logger,
      stats: this.stats,
      settings: cfg,
      onClosed: (session) => this.onSessionClosed(session),
    };
  }

  /** Where clients connect, and how each listener takes them. */
  get listening(): ListenerInfo[] {
    return this.listeners.map((l) => ({ address: l.label, accept: l.accept }));
  }

  /** The counters now; bytes include those of open sessions, so a long session shows up before it ends. */
  snapshot(): BridgeSnapshot {
    const s = this.stats;
    let { bytesIn, bytesOut } = s;
    for (const session of this.sessions) {
      bytesIn += session.bytesIn;
      bytesOut += session.bytesOut;
    }
    return { active: s.active, waiting: s.held + this.queued.length, total: s.total, failed: s.failed, denied: s.denied, bytesIn, bytesOut };
  }

  /** Start accepting; the caller logs where (once per service, not per worker). */
  async start(passed: PassedSocket[]): Promise<void> {
    this.listeners = await openListeners({ passed, listen: this.cfg.listen, backlog: this.cfg.backlog }, this.logger, (socket) => this.accept(socket), READS);
    checkDescriptorBudget(this.cfg.maxConn, this.logger);
    this.statusTimer = setInterval(() => this.publishStatus(), STATUS_EVERY_MS);
    this.statusTimer.unref();
    this.publishStatus();
    this.sweepIdleSessions(this.cfg);
    this.notifier.ready();
    this.notifier.startWatchdog(() => true);
  }

  // ---- accepting -----------------------------------------------------------

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    if (!this.access.permits(socket.remoteAddress ?? '')) return this.refuse(socket);
    if (!this.tls) return this.admit(socket);
    // Read now: the address is gone from the socket once the handshake failed.
    const addr = plainAddress(socket.remoteAddress ?? '?');
    const port = socket.remotePort ?? 0;
    this.tls.wrap(socket, (secure) => this.admit(secure), (reason) => {
      this.stats.denied++;
      this.logger.warning(`TLS handshake with ${addressLabel(addr, port)} failed, client refused: ${reason}`, { EVENT: 'tls-refused', CLIENT_ADDR: addr, CLIENT_PORT: port, ERROR: reason });
    });
  }

  /** A client that may use the service: a session now, or a place in the queue over max-conn. */
  private admit(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    if (this.sessions.size === 0 && this.queued.length === 0) this.hooks.onBusyChange(true);
    if (this.sessions.size < this.cfg.maxConn) {
      this.sessions.add(new Session(socket, this.ctx));
      return;
    }
    // Over max-conn. Node cannot stop polling a listening socket, so the client
    // waits here instead of in the kernel queue: accepted, unread, not reset,
    // and started in order as sessions end. Bounded by the backlog, as the
    // kernel queue would be.
    if (this.queued.length >= this.cfg.backlog) {
      if (!this.queueFullReported) {
        this.logger.warning(`max-conn (${this.cfg.maxConn}) reached and ${this.queued.length} clients already queued: closing new ones; raise --max-conn`, { EVENT: 'queue-full' });
        this.queueFullReported = true;
      }
      socket.destroy();
      return;
    }
    socket.on('error', noop);
    this.queued.push(socket);
  }

  /** Not on --allow, or on --deny: closed before a byte is read. */
  private refuse(socket: net.Socket): void {
    this.stats.denied++;
    if (this.logger.enabled('info')) {
      const addr = plainAddress(socket.remoteAddress ?? '?');
      const port = socket.remotePort ?? 0;
      this.logger.info(`client ${addressLabel(addr, port)} refused by --allow/--deny`, { EVENT: 'denied', CLIENT_ADDR: addr, CLIENT_PORT: port });
    }
    socket.destroy();
  }

  private onSessionClosed(session: Session): void {
    this.sessions.delete(session);
    while (this.queued.length > 0 && this.sessions.size < this.cfg.maxConn && !this.stopping) {
      const next = this.queued.shift()!;
      if (next.destroyed) continue;
      next.off('error', noop);
      this.sessions.add(new Session(next, this.ctx));
    }
    if (this.queued.length === 0) this.queueFullReported = false;
    if (this.sessions.size === 0) this.hooks.onBusyChange(false);
  }

  /**
   * client-timeout and server-timeout: one timer for all sessions instead of
   * two per session refreshed on every chunk (less memory per connection, less
   * work per chunk), at the price of closing up to a tenth of the timeout (2 s at most) late.
   * After a reload it keeps the shorter interval, as older sessions keep theirs.
   */
  private sweepIdleSessions(cfg: Config): void {
    const every = idleSweepInterval(cfg);
    if (every === undefined || (this.idleSweep && this.idleSweep.every <= every)) return;
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
    const timer = setInterval(() => {
      const now = Date.now();
      for (const s of this.sessions) s.closeIfIdle(now);
    }, every);
    timer.unref();
    this.idleSweep = { timer, every };
  }

  // ---- backend state ---------------------------------------------------------

  onBackendState(state: BackendState): void {
    this.backendState = state;
    this.publishStatus();
    if (state === 'DOWN' && this.cfg.onMarkedDown === 'shutdown-sessions') {
      let closed = 0;
      for (const s of this.sessions) {
        if (!s.connecting) {
          s.abort('marked-down');
          closed++;
        }
      }
      if (closed > 0) this.logger.warning(`closed ${closed} sessions because the target was marked DOWN (on-marked-down shutdown-sessions)`, { EVENT: 'shutdown-sessions' });
    }
  }

  private publishStatus(): void {
    this.notifier.status(statusLine(this.backendState, this.snapshot()));
  }

  // ---- reload and stop -----------------------------------------------------------

  /** SIGHUP: new settings for new sessions; open sessions keep running untouched. */
  reload(next: Config): void {
    this.notifier.reloading();
    if (this.hooks.announce !== false) announceReload(this.logger, this.cfg, next);
    this.cfg = next;
    this.ctx.settings = next;
    this.sweepIdleSessions(next);
    this.access = new AccessList(next.allow, next.deny);
    try {
      this.tls = TlsTerminator.load(next);
    } catch (err) {
      // The files changed between the primary's check and ours: keep serving with the old ones.
      this.logger.error(`TLS files not reloaded, keeping the previous certificate: ${(err as Error).message}`, { EVENT: 'reload-failed' });
    }
    this.backend.configure(next);
    this.logger.setLevel(next.logLevel);
    this.publishStatus();
    this.notifier.ready();
  }

  /** SIGTERM: stop accepting, let sessions finish up to drain-timeout, then close them. */
  stop(): Promise<void> {
    this.stopping ??= this.drain();
    return this.stopping;
  }

  private async drain(): Promise<void> {
    this.notifier.stopping();
    for (const l of this.listeners) l.server.close();
    for (const socket of this.queued.splice(0)) socket.destroy();
    if (this.sessions.size > 0) {
      this.logger.notice(`stopping: waiting up to ${this.cfg.drainTimeout} ms for ${this.sessions.size} sessions to finish`, { EVENT: 'draining' });
      const finished = await this.waitForSessions(this.cfg.drainTimeout);
      if (!finished) {
        this.logger.warning(`drain-timeout reached: closing ${this.sessions.size} sessions`, { EVENT: 'drain-timeout' });
        for (const s of [...this.sessions]) s.abort('shutdown');
        await this.waitForSessions(1000);
      }
    }
    this.backend.stop();
    this.notifier.stopWatchdog();
    if (this.statusTimer) clearInterval(this.statusTimer);
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
    if (this.hooks.announce !== false) this.logger.notice(`stopped after ${this.stats.total} sessions`, { EVENT: 'stopped' });
  }

  private waitForSessions(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const poll = (): void => {
        if (this.sessions.size === 0) return resolve(true);
        if (Date.now() >= deadline) return resolve(false);
        setTimeout(poll, 20);
      };
      poll();
    });
  }
}

function noop(): void {}

/** The STATUS= line, shared by a single process and the primary of several workers. */
export function statusLine(state: BackendState, s: BridgeSnapshot, workers?: number): string {
  const target = state === 'INIT' ? 'checking' : state;
  const tail = workers === undefined ? '' : `; ${workers} workers`;
  return `target ${target}; ${s.active} active, ${s.waiting} waiting, ${s.total} served, ${s.failed} failed${tail}`;
}

export function logListening(logger: Logger, listeners: ListenerInfo[], target: string, processes: number): void {
  const how = processes > 1 ? ` (${processes} workers)` : '';
  const addresses = listeners.map((l) => l.address).join(', ');
  logger.notice(`listening on ${addresses}, forwarding to ${target}${how}`,
    { EVENT: 'listening', TARGET: target, ACCEPT_PATH: listeners.map((l) => l.accept).join(' ') });
  // The fast path missing is worth a line of its own: it costs throughput, and only a Node upgrade causes it.
  const slow = listeners.filter((l) => l.accept !== 'onread').map((l) => l.address);
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
