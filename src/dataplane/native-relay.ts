// The native data plane as the bridge drives it: its threads accept, admit,
// terminate TLS, connect and relay on their own, under the policy snapshot
// published from here (policy.ts); what is not routine comes back as an
// event and is decided here: a client over max-conn waits in the queue, a
// client whose target refused is held and retried (held-client.ts), a
// request dropped unanswered is sent again. Every session's end comes back
// for its log entry. A restart takes the sessions back (handOver) for the
// next process, which adopts them.

import { getSystemErrorName } from 'node:util';
import type { RelayInfo } from '../bridge';
import { addressLabel } from '../listen/address';
import { acceptErrorLog, Listener, ListenerInfo, listenError, ListenSpec } from '../listen/listeners';
import { addonBindUnix, bindUnixListener, removeSocketFile, SocketFile, unixListenError } from '../listen/unix-listener';
import { BridgedSessionEnd, HandedBack, recordSessionEnd, Relay, RelayContext, RelayCounts, SourceTableInfo, ThreadCounts } from '../session/contract';
import { refusalReason, TlsMaterial } from '../session/tls';
import { resolveIds, unmatched } from '../listen/identity';
import { overLimit, SourceLimits } from '../listen/source-limits';
import { CarriedClient, CarriedSession, closeQuietly, Handover } from '../systemd/fd-store';
import type { Target } from '../targets/pool';
import { BackendFailure, classifyConnectError, ConfigError, ResourceError } from '../errors';
import { connectError, DataPlaneAddon, errnoError } from './addon';
import { CLOSE_REASONS, DataPlaneEvent, DENY_REASONS, DeniedEvent, EndEvent, EventKind, HandedEvent, ParkedEvent, ParkedWhy, reasonCode, TlsRefusedEvent } from './events';
import { HeldClient } from './held-client';
import { compilePolicy } from './policy';

/** OpenSSL's verify results the refusals name (x509_vfy.h). */
const X509_V_ERR_CERT_REVOKED = 23;
const X509_V_ERR_APPLICATION_VERIFICATION = 50;
/** Events not yet delivered are fetched this often anyway (see native/addon.c: flushEvents). */
const FLUSH_EVERY_MS = 1000;
/** TLS session-ticket keys are replaced this often; tickets of the previous key still resume. */
const TICKET_KEYS_EVERY_MS = 3_600_000;
/** Beyond restart-grace, how long a restart waits for the threads before it drains instead. */
const HANDOVER_MARGIN_MS = 2000;
/** How long closing the listeners waits for every thread to let go of them. */
const UNLISTEN_WAIT_MS = 2000;

export class NativeRelay implements Relay {
  private readonly held = new Map<number, HeldClient>();
  /** Clients over max-conn, by id, in arrival order. */
  private readonly queue: number[] = [];
  private queueFullReported = false;
  private listeners: { listener: Listener; acceptFailed: (err: NodeJS.ErrnoException) => void }[] = [];
  private unlistening: { left: number; done: () => void } | undefined;
  private givingBack: { threadsLeft: number; closedTls: number; closedFull: number; handed: HandedEvent[]; done: () => void } | undefined;
  private timers: NodeJS.Timeout[] = [];
  private running = false;
  private stopping = false;
  private tls: TlsMaterial | undefined;
  private ids = { uid: [] as number[], gid: [] as number[] };

  constructor(
    private readonly addon: DataPlaneAddon,
    readonly info: RelayInfo,
    private readonly ctx: RelayContext,
  ) {}

  // ---- start, reload, stop ------------------------------------------------------

  async start(specs: ListenSpec[], handover: Handover | undefined, tls: TlsMaterial | undefined): Promise<ListenerInfo[]> {
    const rc = this.addon.init(this.info.threads, (...event) => this.onEvent(event));
    if (rc < 0) {
      throw new ResourceError('EDATAPLANE_START', `cannot start the data plane's ${this.info.threads} threads (${getSystemErrorName(rc)}): ` +
        'lower --relay-threads, or raise the tasks limit (TasksMax= in the unit, ulimit -u)');
    }
    this.running = true;
    this.ctx.backend.pool.useDataPlane((slot) => this.addon.slotCounts(slot), (avoid) => this.addon.candidates(avoid?.slot ?? -1),
      (name) => this.addon.probeAbstract(name));
    this.tls = tls;
    this.resolveIds();
    const refused = this.publish();
    if (refused) throw new ConfigError('ECONFIG_TLS', `the data plane cannot use the TLS files: ${refused}`);
    const every = (fn: () => void, ms: number): void => {
      const timer = setInterval(fn, ms);
      timer.unref();
      this.timers.push(timer);
    };
    every(() => {
      this.addon.flushEvents();
      this.addon.reclaim();
    }, FLUSH_EVERY_MS);
    every(() => this.addon.rotateTicketKeys(), TICKET_KEYS_EVERY_MS);
    // Before the listeners: the clients a previous process held go first.
    if (handover) this.adopt(handover);
    return this.openListeners(specs, this.ctx.cfg().backlog);
  }

  /**
   * Compile and publish the snapshot for the configuration now in force; ""
   * or why the data plane refused it (then the previous one stays).
   */
  private publish(): string {
    return this.addon.setPolicy(compilePolicy(this.ctx.cfg(), this.ctx.backend.pool.current, this.tls, this.ctx.targetTls(), this.ids));
  }

  /** --allow-uid and --allow-gid as numbers: looked up at start and reload only (getent), not at every publish. */
  private resolveIds(): void {
    const cfg = this.ctx.cfg();
    this.ids = { uid: resolveIds(cfg.allowUid, 'passwd'), gid: resolveIds(cfg.allowGid, 'group') };
  }

  /** A reload: the new settings and TLS files for new clients; open sessions keep theirs. */
  configure(tls: TlsMaterial | undefined): string {
    const before = { tls: this.tls, ids: this.ids };
    try {
      this.resolveIds();
    } catch (err) {
      if (err instanceof ConfigError) return err.message;
      throw err;
    }
    this.tls = tls;
    const refused = this.publish();
    if (refused) ({ tls: this.tls, ids: this.ids } = before);
    return refused;
  }

  /** The per-source table (native/limits.c), when a per-source limit is in force. */
  sources(): SourceTableInfo | undefined {
    const cfg = this.ctx.cfg();
    if (!SourceLimits.needed(cfg.maxConnPerSource, cfg.ratePerSource)) return undefined;
    const [live, idle, budget] = this.addon.sourceTable();
    return { tracked: live + idle, live, bound: live + budget };
  }

  /** The targets' set, states or drained flags changed. */
  targetsChanged(): void {
    if (this.running) this.publish();
  }

  private async openListeners(specs: ListenSpec[], backlog: number): Promise<ListenerInfo[]> {
    try {
      for (const spec of specs) await this.openListener(spec, backlog);
    } catch (err) {
      // Those already open close now: their socket files go with them.
      for (const l of this.listeners) l?.listener.close();
      this.listeners = [];
      throw err;
    }
    return this.listeners.map((l) => ({ address: l.listener.label, accept: l.listener.accept }));
  }

  /** Bind (unless systemd passed it), then let every thread accept there. */
  private async openListener(spec: ListenSpec, backlog: number): Promise<void> {
    const target = spec.target;
    let fd: number;
    let file: SocketFile | undefined;
    let label = spec.label;
    if ('fd' in target) {
      fd = target.fd;
    } else if ('unix' in target) {
      ({ handle: fd, file } = await bindUnixListener(target.unix, spec.label, {
        bind: async (address) => addonBindUnix(this.addon, address, spec.label),
        discard: closeQuietly,
      }));
    } else {
      fd = this.addon.bindTcp(target.host ?? '', target.port);
      if (fd < 0) throw listenError(spec.label, getSystemErrorName(fd));
      label = `${hostLabel(target.host)}:${this.addon.localAddress(fd).split(' ')[1] ?? ''}`;
    }
    const index = this.addon.listen(fd, backlog, 'fd' in target);
    if (index < 0) {
      if (!('fd' in target)) closeQuietly(fd);
      if (file) removeSocketFile(file);
      throw ('unix' in target ? unixListenError : listenError)(spec.label, getSystemErrorName(index));
    }
    const close = (): void => {
      this.addon.unlisten(index);
      if (file) removeSocketFile(file);
    };
    this.listeners[index] = { listener: { label, accept: 'native', close }, acceptFailed: acceptErrorLog(label, this.ctx.logger) };
  }

  /** Stop accepting: resolves once every thread has let go of every listener (or a bounded wait ran out). */
  closeListeners(): Promise<void> {
    const open = this.listeners.filter(Boolean);
    this.listeners = [];
    if (open.length === 0 || !this.running) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.ctx.logger.warning('the data plane did not confirm that it stopped accepting; going on', { EVENT: 'unlisten-unconfirmed' });
        finish();
      }, UNLISTEN_WAIT_MS);
      const finish = (): void => {
        clearTimeout(timer);
        this.unlistening = undefined;
        resolve();
      };
      this.unlistening = { left: open.length, done: finish };
      for (const l of open) l.listener.close();
    });
  }

  /** The waiting clients are closed (a stop): the queued ones unserved, the held ones as shutdown. */
  dropWaiting(): void {
    this.stopping = true;
    for (const id of this.queue.splice(0)) this.addon.close(id, reasonCode('dropped'), 0);
  }

  stop(): void {
    if (!this.running) return;
    this.running = false;
    for (const t of this.timers) clearInterval(t);
    for (const h of this.held.values()) h.forget();
    this.held.clear();
    this.addon.stop();
  }

  // ---- what the bridge asks ------------------------------------------------------

  counts(): RelayCounts {
    const [bytesIn, bytesOut, active] = this.addon.counters();
    return { active, waiting: this.held.size + this.queue.length, bytesIn, bytesOut };
  }

  threadCounts(): ThreadCounts[] {
    return this.addon.threadCounters().map(([sessions, accepted, handshakes]) => ({ sessions, accepted, handshakes }));
  }

  get busy(): boolean {
    const [, , active, admitted, queued] = this.addon.counters();
    return active + admitted + queued + this.held.size + this.queue.length > 0;
  }

  closeAll(reason: 'shutdown'): void {
    this.addon.closeAll(reasonCode(reason), undefined);
  }

  /** Close the sessions on one target; how many there were. */
  closeOn(target: Target, reason: 'marked-down'): number {
    const open = target.active;
    if (open > 0) this.addon.closeAll(reasonCode(reason), [target.slot]);
    return open;
  }

  alive(): boolean {
    return !this.running || this.addon.alive();
  }

  // ---- events ---------------------------------------------------------------------

  private onEvent(e: DataPlaneEvent): void {
    switch (e[0]) {
      case EventKind.End: return this.ended(e);
      case EventKind.Parked: return this.parked(e);
      case EventKind.Dialed: return this.held.get(e[1])?.dialed(e[2], e[3], e[4]);
      case EventKind.Denied: return this.denied(e);
      case EventKind.TlsRefused: return this.tlsRefused(e);
      case EventKind.AcceptError: return this.listeners[e[1]]?.acceptFailed(errnoError(-e[2], 'accept', this.listeners[e[1]]!.listener.label));
      case EventKind.Unlistened: {
        const u = this.unlistening;
        if (u && --u.left === 0) u.done();
        return;
      }
      case EventKind.Handed: {
        if (this.givingBack) return void this.givingBack.handed.push(e);
        // Late, after the restart stopped waiting: nobody carries it now.
        closeQuietly(e[2]);
        if (e[3] >= 0) closeQuietly(e[3]);
        return;
      }
      case EventKind.HandoverDone: {
        const h = this.givingBack;
        if (!h) return;
        h.closedTls += e[2];
        h.closedFull += e[3];
        if (--h.threadsLeft === 0) h.done();
      }
    }
  }

  /** Refused before anything was read: in the TypeScript relay's words (js-relay.ts). */
  private denied(e: DeniedEvent): void {
    const [, addr, port, , whyNo, detail, pid, uid, gid] = e;
    const reason = DENY_REASONS[whyNo] ?? 'access';
    const cfg = this.ctx.cfg();
    switch (reason) {
      case 'access': return this.ctx.refused(addr, port, 'refused by --allow/--deny');
      case 'concurrent':
      case 'rate': return this.ctx.refused(addr, port, overLimit(reason, addr, cfg), reason);
      case 'uid': return this.ctx.refused(addr, port, pid > 0
        ? `pid ${pid} (uid ${uid}, gid ${gid}) refused by --allow-uid/--allow-gid` : 'refused by --allow-uid/--allow-gid: its credentials cannot be read', 'uid');
      case 'proxy': return this.ctx.refused(addr, port, `(a trusted front) sent a PROXY header that was refused, connection closed: ${detail}`, 'proxy');
    }
  }

  /** A TLS client refused: its handshake failed, or its certificate's identity is on no allow-list. */
  private tlsRefused(e: TlsRefusedEvent): void {
    const [, addr, port, verify, reason, cn, san] = e;
    const names = { ...(cn !== '' ? { cn } : {}), ...(san !== '' ? { san } : {}) };
    if (verify === X509_V_ERR_APPLICATION_VERIFICATION) {
      const cfg = this.ctx.cfg();
      return this.ctx.tlsRefused(addr, port, unmatched({ cn: cfg.tlsAllowCn, dns: cfg.tlsAllowDns, uri: cfg.tlsAllowUri }, '--tls-allow'), { kind: 'identity', ...names });
    }
    // A revocation says which certificate (its serial) in reason; OpenSSL's code alone would not.
    const why = verify === X509_V_ERR_CERT_REVOKED && reason !== '' ? `client certificate refused: ${reason}` : refusalReason(verify, reason);
    this.ctx.tlsRefused(addr, port, why, names);
  }

  /** A session (or a client that never reached a target) ended: its log entry and counters. */
  private ended(e: EndEvent): void {
    const [, id, reasonNo, errno, bytesIn, bytesOut, addr, port, startedAt, slot, resets, , pid, uid, gid, cn, endedAt] = e;
    const held = this.held.get(id);
    held?.forget();
    this.held.delete(id);
    const queued = this.queue.indexOf(id);
    if (queued >= 0) this.queue.splice(queued, 1);
    const reason = CLOSE_REASONS[reasonNo] ?? 'server-error';
    if (reason !== 'dropped') {
      const end: BridgedSessionEnd = {
        clientAddr: addr, clientPort: port, startedAt, endedAt, reason, error: errno ? getSystemErrorName(-errno) : undefined,
        bytesIn, bytesOut, target: slot >= 0 ? this.ctx.backend.pool.bySlot(slot) : undefined, resets,
        ...(pid > 0 ? { cred: { pid, uid, gid } } : {}),
        ...(cn !== '' ? { cn } : {}),
      };
      recordSessionEnd(this.ctx, end);
    }
    this.admitQueued();
    this.ctx.onSessionEnded();
  }

  /** A client waits for a decision: the queue, or hold-and-retry. */
  private parked(e: ParkedEvent): void {
    const [, id, why, errno, slot, addr, port, startedAt, , , reason] = e;
    this.held.get(id)?.forget();
    this.held.delete(id);
    this.ctx.onBusy();
    if (why === ParkedWhy.Queued) return this.enqueue(id);
    const failed = slot >= 0 ? this.ctx.backend.pool.bySlot(slot) : undefined;
    // A refused connect counts for the target's problem log and error-limit; a dropped request does not.
    if (failed && errno !== 0 && why !== ParkedWhy.Retry) failed.liveResult(errnoKind(errno), connectError(errno, failed.path, reason));
    if (why === ParkedWhy.Retry && this.ctx.logger.enabled('debug')) {
      this.ctx.logger.debug(`session ${addressLabel(addr, port)}: target dropped the connection unanswered (${getSystemErrorName(-errno)}); sending the request again on a new one`);
    }
    const client = new HeldClient(id, { addr, port, startedAt }, why, failed, this.addon, this.ctx);
    this.held.set(id, client);
    client.start();
  }

  /** Over max-conn: it waits, connected but unread, bounded by the backlog as the kernel queue would be. */
  private enqueue(id: number): void {
    const cfg = this.ctx.cfg();
    if (this.stopping || this.queue.length >= cfg.backlog) {
      if (!this.stopping && !this.queueFullReported) {
        this.ctx.logger.warning(`max-conn (${cfg.maxConn}) reached and ${this.queue.length} clients already queued: closing new ones; raise --max-conn`, { EVENT: 'queue-full' });
        this.queueFullReported = true;
      }
      this.addon.close(id, reasonCode('dropped'), 0);
      return;
    }
    this.queue.push(id);
    this.admitQueued();
  }

  /** Queued clients start in arrival order as places under max-conn free up. */
  private admitQueued(): void {
    if (this.queue.length === 0) {
      this.queueFullReported = false;
      return;
    }
    const max = this.ctx.cfg().maxConn;
    let [, , , admitted] = this.addon.counters();
    while (this.queue.length > 0 && admitted < max && !this.stopping) {
      const id = this.queue.shift()!;
      if (this.addon.admit(id)) admitted++;
    }
  }

  // ---- a restart ----------------------------------------------------------------------

  /**
   * The threads stop reading up to `sessionBudget` plain sessions and give
   * each back once its buffers are empty, and give back every waiting client
   * at once; TLS sessions get `graceMs`, then close. Resolves with what was
   * given back, once every thread is done — or at graceMs plus a margin,
   * whatever arrived by then (the rest is drained: logged once).
   */
  giveBack(graceMs: number, sessionBudget: number): Promise<HandedBack> {
    for (const h of this.held.values()) h.forget(); // given back by the threads, with their state
    this.held.clear();
    this.queue.length = 0;
    return new Promise((resolve) => {
      const handed: HandedEvent[] = [];
      let timer: NodeJS.Timeout | undefined;
      const finish = (complete: boolean): void => {
        if (timer) clearTimeout(timer);
        const h = this.givingBack;
        this.givingBack = undefined;
        resolve({ ...this.carried(handed), closedTls: h?.closedTls ?? 0, closedFull: h?.closedFull ?? 0, complete });
      };
      const threads = this.addon.handover(graceMs, sessionBudget);
      if (threads < 0) return finish(false);
      this.givingBack = { threadsLeft: threads, closedTls: 0, closedFull: 0, handed, done: () => finish(true) };
      timer = setTimeout(() => finish(false), graceMs + HANDOVER_MARGIN_MS);
    });
  }

  /** The threads' HANDED events as the fd store's records. */
  private carried(handed: HandedEvent[]): { sessions: CarriedSession[]; waiting: CarriedClient[] } {
    const sessions: CarriedSession[] = [];
    const waiting: CarriedClient[] = [];
    for (const e of handed) {
      const [, , clientFd, serverFd, directionsDone, replay, bytesIn, bytesOut, addr, port, startedAt, slot, retriesLeft, clientEnded, beforeTls, why] = e;
      const client: CarriedClient = {
        clientFd, addr, port, startedAt, bytesIn, replay, clientEnded, retriesLeft, beforeTls, queued: why === ParkedWhy.Queued,
      };
      if (serverFd < 0) waiting.push(client);
      else sessions.push({ ...client, serverFd, bytesOut, directionsDone, target: this.ctx.backend.pool.bySlot(slot)?.path });
    }
    return { sessions, waiting };
  }

  /** What a previous process handed over: its sessions relayed on, its waiting clients parked here (their events follow). */
  private adopt(h: Handover): { resumed: number; admitted: number; gone: number } {
    const { clientTimeout, serverTimeout } = this.ctx.cfg();
    let resumed = 0;
    let admitted = 0;
    let gone = 0;
    for (const s of h.sessions) {
      // A connection reset (or shut down both ways) while no process ran is dropped, as systemd drops such stored fds.
      const slot = s.target === undefined ? -1 : this.ctx.backend.pool.find(s.target)?.slot ?? -1;
      if (this.addon.peerGone(s.clientFd) || this.addon.resume({ ...s, clientTimeout, serverTimeout, slot, beforeTls: false, queued: false }) < 0) {
        gone++;
        closeQuietly(s.clientFd);
        closeQuietly(s.serverFd);
        continue;
      }
      resumed++;
    }
    for (const c of h.waiting) {
      if (this.addon.peerGone(c.clientFd) || this.addon.adopt({ ...c, bytesOut: 0, clientTimeout, serverTimeout, slot: -1 }) < 0) {
        gone++;
        closeQuietly(c.clientFd);
        continue;
      }
      admitted++;
    }
    this.adopted = { resumed, admitted, gone };
    return this.adopted;
  }

  /** What adopt() did, for the bridge's log line. */
  adopted: { resumed: number; admitted: number; gone: number } | undefined;
}

/** How the connect error of a parked client counts for its target (errors.ts: classifyConnectError). */
function errnoKind(errno: number): BackendFailure {
  return classifyConnectError(getSystemErrorName(-errno));
}

/** As Node's server.address() would name it: the bound port with the host as given. */
function hostLabel(host: string | undefined): string {
  if (host === undefined) return '*';
  return host.includes(':') ? `[${host}]` : host;
}
