// The TypeScript relay: Node's event loop accepts, decides and moves the
// bytes, in one thread. It runs where the data plane cannot load (the
// startup log says why) and with `--relay js`, and passes the same tests:
// the access list, TLS (Node's tls module, with the same settings as the
// data plane's), max-conn and its queue, holding, retries, timeouts. Each
// client's life is session/js-session.ts's. A restart cannot carry its
// sessions: they get restart-grace, then close.

import net from 'node:net';
import { ConfigError } from '../errors';
import { AccessList } from '../listen/access';
import { plainAddress } from '../listen/address';
import { Listener, ListenerInfo, ListenSpec, openListeners } from '../listen/listeners';
import type { Handover } from '../systemd/fd-store';
import type { Target } from '../targets/pool';
import { BridgedSession, HandedBack, idleSweepInterval, Relay, RelayContext, RelayCounts, SessionContext } from './contract';
import { noop, Session, socketDialer } from './js-session';
import { TlsMaterial, TlsTerminator } from './tls';

export class JsRelay implements Relay {
  private listeners: Listener[] = [];
  private readonly sessions = new Set<Session>();
  /** Clients accepted while max-conn sessions run: they wait, unread, in arrival order. */
  private readonly queued: net.Socket[] = [];
  private queueFullReported = false;
  private idleSweep: { timer: NodeJS.Timeout; every: number } | undefined;
  private access: AccessList;
  private tls: TlsTerminator | undefined;
  private stopping = false;
  private readonly sessionCtx: SessionContext;
  private bytes = { bytesIn: 0, bytesOut: 0 };
  readonly adopted = undefined;

  constructor(
    readonly info: { kind: 'js'; threads: number; why: string },
    private readonly ctx: RelayContext,
  ) {
    const cfg = ctx.cfg();
    this.access = new AccessList(cfg.allow, cfg.deny);
    this.sessionCtx = {
      backend: ctx.backend, logger: ctx.logger, stats: ctx.stats, settings: cfg,
      dialer: socketDialer(() => ({ tls: ctx.targetTls(), attemptMs: ctx.cfg().connectAttemptTimeout })),
      onClosed: (s) => this.onSessionClosed(s as Session),
    };
  }

  async start(specs: ListenSpec[], _handover: Handover | undefined, tls: TlsMaterial | undefined): Promise<ListenerInfo[]> {
    const abstract = this.ctx.backend.pool.current.find((t) => t.endpoint.kind === 'abstract');
    if (abstract) {
      throw new ConfigError('ECONFIG_ABSTRACT', `target ${abstract.path} is an abstract socket, which only the native data plane reaches ` +
        `(Node.js's own sockets cannot name one): ${this.info.why}; use a socket path instead, or the native data plane`);
    }
    this.tls = TlsTerminator.create(tls, this.ctx.cfg());
    this.listeners = await openListeners(specs, this.ctx.cfg().backlog, this.ctx.logger, (socket) => this.accept(socket));
    this.sweepIdleSessions();
    return this.listeners.map((l) => ({ address: l.label, accept: l.accept }));
  }

  configure(tls: TlsMaterial | undefined): string {
    const cfg = this.ctx.cfg();
    this.sessionCtx.settings = cfg;
    this.access = new AccessList(cfg.allow, cfg.deny);
    this.tls = TlsTerminator.create(tls, cfg, this.tls);
    this.sweepIdleSessions();
    return '';
  }

  targetsChanged(): void {
    // Each connect round asks the pool: nothing is compiled ahead.
  }

  closeListeners(): Promise<void> {
    // Accepting happens in this thread: nobody is accepted after this.
    for (const l of this.listeners) l.close();
    this.listeners = [];
    return Promise.resolve();
  }

  dropWaiting(): void {
    this.stopping = true;
    for (const client of this.queued.splice(0)) client.destroy();
  }

  counts(): RelayCounts {
    let { bytesIn, bytesOut } = this.bytes;
    let active = 0;
    let held = 0;
    for (const s of this.sessions) {
      bytesIn += s.bytesIn;
      bytesOut += s.bytesOut;
      if (s.connecting) held++;
      else active++;
    }
    return { active, waiting: held + this.queued.length, bytesIn, bytesOut };
  }

  threadCounts(): [] {
    return [];
  }

  get busy(): boolean {
    return this.sessions.size + this.queued.length > 0;
  }

  closeAll(reason: 'shutdown'): void {
    for (const s of [...this.sessions]) s.abort(reason);
  }

  closeOn(target: Target, reason: 'marked-down'): number {
    const on = [...this.sessions].filter((s) => !s.connecting && s.target === target);
    for (const s of on) s.abort(reason);
    return on.length;
  }

  /** Nothing can be carried (TLS state lives in Node's OpenSSL objects, plain sockets in libuv's): restart-grace, then close. */
  async giveBack(graceMs: number): Promise<HandedBack> {
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const open = [...this.sessions];
    for (const s of open) s.abort('shutdown');
    return { sessions: [], waiting: [], closedTls: open.length, closedFull: 0, complete: true };
  }

  alive(): boolean {
    return true;
  }

  stop(): void {
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
  }

  // ---- accepting -----------------------------------------------------------------

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    // Read now: the address is gone from the socket once it closed.
    const addr = plainAddress(socket.remoteAddress ?? '');
    const port = socket.remotePort ?? 0;
    if (!this.access.permits(addr)) {
      this.ctx.refused(addr, port, 'refused by --allow/--deny');
      socket.destroy();
      return;
    }
    if (!this.tls) return this.admit(socket);
    this.tls.wrap(socket, (secure) => this.admit(secure), (reason) => this.ctx.tlsRefused(addr, port, reason));
  }

  /** A client that may use the service: a session now, or a place in the queue over max-conn. */
  private admit(client: net.Socket): void {
    if (this.stopping) return void client.destroy();
    this.ctx.onBusy();
    if (this.sessions.size < this.ctx.cfg().maxConn) return this.open(client);
    // Over max-conn. The client waits here instead of in the kernel queue
    // (Node cannot stop polling a listening socket): accepted, unread, not
    // reset, and started in order as sessions end. Bounded by the backlog,
    // as the kernel queue would be.
    const cfg = this.ctx.cfg();
    if (this.queued.length >= cfg.backlog) {
      if (!this.queueFullReported) {
        this.ctx.logger.warning(`max-conn (${cfg.maxConn}) reached and ${this.queued.length} clients already queued: closing new ones; raise --max-conn`, { EVENT: 'queue-full' });
        this.queueFullReported = true;
      }
      return void client.destroy();
    }
    client.on('error', noop);
    this.queued.push(client);
  }

  private open(client: net.Socket): void {
    client.off('error', noop);
    this.sessions.add(new Session(client, this.sessionCtx));
  }

  private onSessionClosed(session: Session): void {
    this.sessions.delete(session);
    this.bytes.bytesIn += session.finalBytes.bytesIn;
    this.bytes.bytesOut += session.finalBytes.bytesOut;
    while (this.queued.length > 0 && this.sessions.size < this.ctx.cfg().maxConn && !this.stopping) {
      const next = this.queued.shift()!;
      if (next.destroyed) continue;
      this.open(next);
    }
    if (this.queued.length === 0) this.queueFullReported = false;
    this.ctx.onSessionEnded();
  }

  /**
   * client-timeout and server-timeout: one timer for all sessions instead of
   * two per session refreshed on every chunk (less memory per connection,
   * less work per chunk), at the price of closing up to a tenth of the
   * timeout (2 s at most) late. After a reload it keeps the shorter interval,
   * as older sessions keep theirs.
   */
  private sweepIdleSessions(): void {
    const every = idleSweepInterval(this.ctx.cfg());
    if (every === undefined || (this.idleSweep && this.idleSweep.every <= every)) return;
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
    const timer = setInterval(() => {
      const now = Date.now();
      for (const s of this.sessions) s.closeIfIdle(now);
    }, every);
    timer.unref();
    this.idleSweep = { timer, every };
  }
}


export type { BridgedSession };
