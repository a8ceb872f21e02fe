// The TypeScript relay: Node's event loop accepts, decides and moves the
// bytes, in one thread. It runs where the data plane cannot load (the
// startup log says why) and with `--relay js`, and passes the same tests:
// the access list, per-source limits, PROXY headers from trusted fronts,
// TLS (Node's tls module, with the same settings as the data plane's) and
// identity allow-lists, max-conn and its queue, holding, retries,
// timeouts. Each client's life is session/js-session.ts's. A restart
// cannot carry its sessions: they get restart-grace, then close.
//
// A new client, in order (the data plane's order too):
//   1. From a trusted front (--accept-proxy-from, with --accept-proxy): its
//      PROXY header, read before anything else, with a deadline; from then
//      on the client is the one the header names. Anyone else is judged by
//      its own address and its bytes are relayed as they are.
//   2. The access list (--allow/--deny), on that address.
//   3. --allow-uid/--allow-gid: a UNIX listener's client is refused (the
//      relay cannot read SO_PEERCRED: start refuses such a configuration,
//      a reload to one fails closed).
//   4. The per-source limits (listen/source-limits.ts), counted until the
//      client's socket closes.
//   5. TLS, then the identity allow-lists (session/tls.ts).
//   6. A session, or a place in the queue over max-conn.

import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { ConfigError } from '../errors';
import { AccessList } from '../listen/access';
import { plainAddress } from '../listen/address';
import { Listener, ListenerInfo, ListenSpec, openListeners } from '../listen/listeners';
import { overLimit, SourceLimits } from '../listen/source-limits';
import type { Config } from '../options';
import type { Handover } from '../systemd/fd-store';
import type { Target } from '../targets/pool';
import { BridgedSession, HandedBack, idleSweepInterval, Relay, RelayContext, RelayCounts, SessionContext, SourceTableInfo } from './contract';
import { noop, readProxyHeader, Session, SessionOrigin, socketDialer } from './js-session';
import type { ClientEnds } from './proxy-protocol';
import { tlsClientInfo, TlsMaterial, TlsTerminator } from './tls';

/**
 * How long a trusted front has to send its PROXY header when client-timeout
 * is 0 (never); otherwise client-timeout, as HAProxy's accept-proxy waits
 * its "timeout client". A front sends it with its first packet: a header
 * this late is a broken front or someone posing as one.
 */
export const PROXY_HEADER_TIMEOUT_MS = 5000;

/** Every address, as a deny list: with the fronts as the allow list, an AccessList that permits the fronts only. */
const EVERYONE = ['0.0.0.0/0', '::/0'];

/** A client waiting for a place under max-conn, with who it is. */
interface Queued {
  client: net.Socket;
  origin: SessionOrigin;
}

export class JsRelay implements Relay {
  private listeners: Listener[] = [];
  private readonly sessions = new Set<Session>();
  /** Clients accepted while max-conn sessions run: they wait, unread, in arrival order. */
  private readonly queued: Queued[] = [];
  private queueFullReported = false;
  private idleSweep: { timer: NodeJS.Timeout; every: number } | undefined;
  private access!: AccessList;
  /** The fronts whose PROXY header is read (--accept-proxy-from), while --accept-proxy is on. */
  private fronts: AccessList | undefined;
  /** The per-source limits in force, if any (a session releases into the table that admitted it). */
  private limits: SourceLimits | undefined;
  /** --allow-uid/--allow-gid set: a UNIX listener's client cannot be judged here and is refused. */
  private peerCredRequired = false;
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
    // Refused here, before the bridge starts anything (or logs): a rule that cannot be enforced must not run unenforced.
    if (cfg.allowUid.length > 0 || cfg.allowGid.length > 0) {
      const option = cfg.allowUid.length > 0 ? 'allow-uid' : 'allow-gid';
      throw new ConfigError('ECONFIG_PEERCRED', `--${option} needs the native data plane, which reads a UNIX client's credentials (SO_PEERCRED); ` +
        `the TypeScript relay runs (${info.why}) and cannot: use relay = native, or remove --${option}`, option);
    }
    this.applyPolicy(cfg);
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
    const wasRequired = this.peerCredRequired;
    this.applyPolicy(cfg);
    if (this.peerCredRequired && !wasRequired) {
      this.ctx.logger.error('--allow-uid/--allow-gid need the native data plane (SO_PEERCRED), which is not running: ' +
        'clients of UNIX listeners are refused until they are removed or sockbridge restarts with relay = native', { EVENT: 'peercred-unavailable' });
    }
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
    for (const { client } of this.queued.splice(0)) client.destroy();
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

  sources(): SourceTableInfo | undefined {
    const l = this.limits;
    return l ? { tracked: l.size, live: l.live, bound: l.bound } : undefined;
  }

  stop(): void {
    if (this.idleSweep) clearInterval(this.idleSweep.timer);
  }

  // ---- accepting -----------------------------------------------------------------

  /** The access list, the fronts, the per-source limits and the credential rule in force (start, reload). */
  private applyPolicy(cfg: Config): void {
    this.access = new AccessList(cfg.allow, cfg.deny);
    this.fronts = cfg.acceptProxy === 'none' ? undefined : new AccessList(cfg.acceptProxyFrom, EVERYONE);
    this.peerCredRequired = cfg.allowUid.length > 0 || cfg.allowGid.length > 0;
    if (!SourceLimits.needed(cfg.maxConnPerSource, cfg.ratePerSource)) this.limits = undefined;
    else if (this.limits && this.limits.prefixV6 === cfg.sourcePrefixV6) this.limits.configure(cfg.maxConnPerSource, cfg.ratePerSource);
    // Counted afresh (sources group differently); open sessions release into the table that admitted them.
    else this.limits = new SourceLimits(cfg.maxConnPerSource, cfg.ratePerSource, cfg.sourcePrefixV6);
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    // Read now: the address is gone from the socket once it closed.
    const addr = plainAddress(socket.remoteAddress ?? '');
    const port = socket.remotePort ?? 0;
    const cfg = this.ctx.cfg();
    if (this.fronts === undefined || addr === '' || !this.fronts.permits(addr) || cfg.acceptProxy === 'none') return this.judge(socket, addr, port, undefined, 0);
    readProxyHeader(socket, cfg.acceptProxy, cfg.clientTimeout || PROXY_HEADER_TIMEOUT_MS, (r) => {
      if (this.stopping) return void socket.destroy();
      if (r.kind === 'error') {
        this.ctx.refused(addr, port, `(a trusted front) sent a PROXY header that was refused, connection closed: ${r.why}`, 'proxy');
        return void socket.destroy();
      }
      if (r.local || !r.src || !r.dst) return this.judge(socket, addr, port, undefined, r.length);
      const ends: ClientEnds = { remoteAddress: r.src.address, remotePort: r.src.port, localAddress: r.dst.address, localPort: r.dst.port };
      this.judge(socket, plainAddress(r.src.address), r.src.port, ends, r.length);
    });
  }

  /**
   * A client as it really is, `addr` and `port` (`ends`: both ends as a
   * front's PROXY header of `headerBytes` bytes named them; undefined: the
   * socket's own): the access list, the credential rule, the per-source
   * limits, then TLS or admission.
   */
  private judge(socket: net.Socket, addr: string, port: number, ends: ClientEnds | undefined, headerBytes: number): void {
    if (!this.access.permits(addr)) {
      this.ctx.refused(addr, port, 'refused by --allow/--deny');
      socket.destroy();
      return;
    }
    if (addr === '' && this.peerCredRequired) {
      this.ctx.refused(addr, port, 'refused: --allow-uid/--allow-gid need the native data plane to read its credentials', 'uid');
      socket.destroy();
      return;
    }
    let release: (() => void) | undefined;
    const limits = this.limits;
    if (limits && addr !== '') {
      const verdict = limits.admit(addr, performance.now());
      if (verdict !== 'ok') {
        this.ctx.refused(addr, port, overLimit(verdict, addr, this.ctx.cfg()), verdict);
        socket.destroy();
        return;
      }
      // Until the client's socket closes, however its life ends (queued, held, refused by TLS, a session).
      let released = false;
      release = () => {
        if (released) return;
        released = true;
        limits.release(addr);
      };
      socket.once('close', release);
    }
    const origin: SessionOrigin = ends ? { ends } : {};
    if (!this.tls) return this.admit(socket, headerBytes > 0 ? { ...origin, headerBytes } : origin);
    this.tls.wrap(socket, (secure) => {
      if (release) secure.once('close', release);
      // (The header was read from the raw socket: the TLS socket's byte counts never held it.)
      this.admit(secure, this.ctx.cfg().sendProxy === 'v2' ? { ...origin, extra: { ssl: tlsClientInfo(secure) } } : origin);
    }, (reason, detail) => this.ctx.tlsRefused(addr, port, reason, detail));
  }

  /** A client that may use the service: a session now, or a place in the queue over max-conn. */
  private admit(client: net.Socket, origin: SessionOrigin): void {
    if (this.stopping) return void client.destroy();
    this.ctx.onBusy();
    if (this.sessions.size < this.ctx.cfg().maxConn) return this.open(client, origin);
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
    this.queued.push({ client, origin });
  }

  private open(client: net.Socket, origin: SessionOrigin): void {
    client.off('error', noop);
    this.sessions.add(new Session(client, this.sessionCtx, origin));
  }

  private onSessionClosed(session: Session): void {
    this.sessions.delete(session);
    this.bytes.bytesIn += session.finalBytes.bytesIn;
    this.bytes.bytesOut += session.finalBytes.bytesOut;
    while (this.queued.length > 0 && this.sessions.size < this.ctx.cfg().maxConn && !this.stopping) {
      const next = this.queued.shift()!;
      if (next.client.destroyed) continue;
      this.open(next.client, next.origin);
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
