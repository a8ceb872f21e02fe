// The accepting side of the service: listeners → sessions → targets. The
// bridge owns what both relays share: the targets (backend.ts, pool.ts),
// the totals, the TLS files in force, reload, stop and the drain, STATUS=,
// and what a target marked DOWN means for its sessions. The relay chosen at
// start admits clients and moves their bytes: the native data plane
// (dataplane/native-relay.ts: C threads accept, admit, terminate TLS and
// relay under the policy compiled here) or the TypeScript relay
// (session/js-relay.ts). A restart hands the sessions to the next process
// (systemd/restart.ts). Exit-idle-time belongs to the caller (service.ts),
// which hears about sessions coming and going through onBusyChange().

import { performance } from 'node:perf_hooks';
import { addressLabel } from './listen/address';
import { Exposure, exposure, openToAllWarning, procLocalAddress } from './listen/exposure';
import { describeNames } from './listen/identity';
import { checkDescriptorBudget, ListenerInfo, ListenSpec, listenSpecs, warnAccessListsNotApplied } from './listen/listeners';
import { notLogged, RepeatLimiter } from './listen/refusals';
import { sourceKey } from './listen/source-limits';
import type { Logger } from './log';
import { applyReload, Config, formatValue, OPTIONS } from './options';
import { DeniedReason, Stats } from './operator/stats';
import { InstallError, SockbridgeError } from './errors';
import { defaultThreads, LOAD_FAILED, loadDataPlane, type DataPlaneAddon } from './dataplane/addon';
import { NativeRelay } from './dataplane/native-relay';
import type { Relay, RelayContext, RelayInfo, SourceTableInfo, ThreadCounts, TlsRefusalDetail } from './session/contract';
import { JsRelay } from './session/js-relay';
import { crlProblem, loadTargetTls, loadTlsMaterial, TlsMaterial, tlsInForce } from './session/tls';
import { TlsFileWatch } from './session/tls-watch';
import type { TargetTlsMaterial } from './targets/connector';
import { splitPassed, storeCapacity, storeNeeded } from './systemd/fd-store';
import type { Notifier } from './systemd/notify';
import type { PassedSocket } from './systemd/passed-sockets';
import { handOver, logTakeOver, takeOver } from './systemd/restart';
import { Backend } from './targets/backend';
import type { BackendState } from './targets/health';
import type { Target, TargetPool } from './targets/pool';

export type { RelayInfo };

const STATUS_EVERY_MS = 1000;
/** Repeated refusals of one kind and key: one line per this interval (refusals.ts). */
const REPEAT_LOG_MS = 10_000;
/** A source over a per-source limit: one line per source per minute, and at most this many such lines a minute. */
const SOURCE_LOG_MS = 60_000;
const SOURCE_LOG_MAX = 20;

/** Who may connect, as `status` reports it. */
export interface WhoReport {
  deniedBy: Record<DeniedReason, number>;
  exposure: Exposure;
  sources: SourceTableInfo | null;
}

export interface BridgeHooks {
  /** Sessions may have gone from none to some (true), or back (false). */
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

/**
 * --relay and the addon decide: the data plane, or the TypeScript relay with
 * a reason (logged once by logListening) where it cannot load, unless
 * --relay native asked for it.
 */
export function chooseRelay(cfg: Config, ctx: RelayContext): { relay: Relay; addon: DataPlaneAddon | undefined } {
  const js = (why: string): { relay: Relay; addon: undefined } => ({ relay: new JsRelay({ kind: 'js', threads: 1, why }, ctx), addon: undefined });
  if (cfg.relay === 'js') return js('relay = js');
  const addon = loadDataPlane();
  if (typeof addon !== 'string') {
    return { relay: new NativeRelay(addon, { kind: 'native', threads: cfg.relayThreads || defaultThreads(), why: '' }, ctx), addon };
  }
  if (cfg.relay === 'native') {
    throw new InstallError('ERELAY_LOAD', `relay = native, but ${LOAD_FAILED} (${addon}): rebuild it (npm ci, or make build) or set relay = auto`);
  }
  return js(`${LOAD_FAILED} (${addon})`);
}

export class Bridge {
  readonly stats = new Stats();
  readonly backend: Backend;
  private readonly relay: Relay;
  private readonly fdStore: DataPlaneAddon | undefined;
  private cfg: Config;
  private tls: TlsMaterial | undefined;
  /** TLS towards TCP targets, as in force. */
  private targetTls: TargetTlsMaterial | undefined;
  private listeners: ListenerInfo[] = [];
  private statusTimer: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  /** Bytes counted by the processes before this one (a restart's handover): the counters go on from there. */
  private carriedBytes = { bytesIn: 0, bytesOut: 0 };
  /** What clients connect to (exposure is judged on them at start and reload). */
  private specs: ListenSpec[] = [];
  private exposed: Exposure = { openToAll: false, why: 'not listening yet' };
  private readonly identityLog = new RepeatLimiter(REPEAT_LOG_MS);
  private readonly sourceLog = new RepeatLimiter(SOURCE_LOG_MS, SOURCE_LOG_MAX);
  private readonly repeatLog = new RepeatLimiter(REPEAT_LOG_MS);
  /** Renewed certificates, keys and CRLs are put in force without a reload (tls-watch.ts). */
  private readonly tlsWatch: TlsFileWatch;
  /** What stale CRLs mean, as last said ("" when none is stale): said again only when it changes. */
  private crlSaid = '';

  constructor(
    cfg: Config,
    private readonly logger: Logger,
    private readonly notifier: Notifier,
    private readonly hooks: BridgeHooks,
  ) {
    this.cfg = cfg;
    this.targetTls = loadTargetTls(cfg);
    this.backend = new Backend({ ...cfg, targetTlsMaterial: this.targetTls }, logger, {
      onTargetState: (target, state) => this.onTargetState(target, state),
      onTargetsChanged: () => this.relay.targetsChanged(),
    });
    this.tls = loadTlsMaterial(cfg);
    const ctx: RelayContext = {
      backend: this.backend, logger, stats: this.stats, cfg: () => this.cfg, targetTls: () => this.targetTls,
      refused: (addr, port, why, reason) => this.refused(addr, port, why, reason),
      tlsRefused: (addr, port, reason, detail) => this.tlsRefused(addr, port, reason, detail),
      onBusy: () => this.hooks.onBusyChange(true),
      onSessionEnded: () => {
        if (!this.relay.busy) this.hooks.onBusyChange(false);
      },
    };
    ({ relay: this.relay, addon: this.fdStore } = chooseRelay(cfg, ctx));
    this.tlsWatch = new TlsFileWatch(logger, (files) => this.tlsFilesChanged(files));
  }

  /** Sessions or waiting clients exist now. */
  get busy(): boolean {
    return this.relay.busy;
  }

  get relayInfo(): RelayInfo & { perThread: ThreadCounts[] } {
    return { ...this.relay.info, perThread: this.relay.threadCounts() };
  }

  /** Where clients connect, and how each listener takes them. */
  get listening(): ListenerInfo[] {
    return this.listeners;
  }

  /** Refusals by reason, whether the port is open to all, the per-source table (status). */
  get who(): WhoReport {
    return { deniedBy: { ...this.stats.deniedBy }, exposure: this.exposed, sources: this.relay.sources?.() ?? null };
  }

  /** TLS as it is in force now (status). */
  get tlsInForce(): ReturnType<typeof tlsInForce> {
    return tlsInForce(this.cfg, this.tls);
  }

  /** The counters now; bytes include those of open sessions, so a long session shows up before it ends. */
  snapshot(): BridgeSnapshot {
    const live = this.relay.counts();
    const { total, failed, denied } = this.stats;
    return {
      active: live.active, waiting: live.waiting, total, failed, denied,
      bytesIn: live.bytesIn + this.carriedBytes.bytesIn, bytesOut: live.bytesOut + this.carriedBytes.bytesOut,
    };
  }

  /** Start accepting; the caller logs where. */
  async start(passed: PassedSocket[]): Promise<void> {
    this.backend.start();
    const { listeners, carried, state } = splitPassed(passed);
    const adopted = takeOver(carried, state, { fdStore: this.fdStore, notifier: this.notifier, logger: this.logger, relay: this.relay });
    if (adopted) {
      const { totals } = adopted.handover;
      Object.assign(this.stats, { total: totals.total, failed: totals.failed, denied: totals.denied });
      this.carriedBytes = { bytesIn: totals.bytesIn, bytesOut: totals.bytesOut };
    }
    const specs = listenSpecs(listeners, this.cfg);
    warnAccessListsNotApplied(specs, this.cfg, this.logger);
    this.listeners = await this.relay.start(specs, adopted?.handover, this.tls);
    this.specs = specs;
    this.judgeExposure(this.cfg);
    if (adopted && this.relay.adopted) {
      logTakeOver(this.logger, this.relay.adopted, adopted.lost);
      if (this.relay.busy) this.hooks.onBusyChange(true);
    }
    this.checkBudgets(this.cfg);
    this.tlsWatch.configure(this.cfg);
    this.checkCrls(true);
    this.statusTimer = setInterval(() => {
      this.publishStatus();
      this.checkCrls(false);
    }, STATUS_EVERY_MS);
    this.statusTimer.unref();
    this.publishStatus();
    this.notifier.ready();
    // WATCHDOG=1 only while the event loop runs (this is called from it) and every relay thread answers.
    this.notifier.startWatchdog(() => this.relay.alive());
  }

  // ---- clients refused ----------------------------------------------------------------

  /**
   * Closed before a byte is read: not on --allow or on --deny (one info
   * line each, as ever), over a per-source limit (one line per source per
   * minute, at most SOURCE_LOG_MAX such lines a minute), a bad PROXY header
   * from a front or a UNIX client --allow-uid/--allow-gid refuse (one line
   * per front, or per reason, every 10 s). Every one is counted.
   */
  private refused(addr: string, port: number, why: string, reason: DeniedReason = 'access'): void {
    this.stats.deny(reason);
    const fields = { EVENT: 'denied', REASON: reason, CLIENT_ADDR: addr, CLIENT_PORT: port };
    // "client 192.0.2.7:5555 refused …"; a UNIX listener's client: "local client pid 42 (uid …) refused …".
    const who = addr === '' ? 'local client' : `client ${addressLabel(addr, port)}`;
    if (reason === 'access' || reason === 'tls' || reason === 'identity') {
      if (this.logger.enabled('info')) this.logger.info(`${who} ${why}`, fields);
      return;
    }
    const now = performance.now();
    if (reason === 'concurrent' || reason === 'rate') {
      const source = sourceKey(addr, this.cfg.sourcePrefixV6) ?? addr;
      const p = this.sourceLog.permit(source, now);
      if (p) this.logger.warning(`${who} ${why}${notLogged(p, 'per-source refusals')}`, { ...fields, EVENT: 'source-limit', SOURCE: source });
      return;
    }
    const p = this.repeatLog.permit(reason === 'proxy' ? `proxy ${addr}` : `${reason} ${why}`, now);
    if (p) this.logger.warning(`${who} ${why}${notLogged(p)}`, fields);
  }

  /**
   * A failed handshake: one warning line each, as ever. A refused identity:
   * one line per identity and reason every 10 s, saying which identity
   * (CLIENT_CN, CLIENT_SAN) and why.
   */
  private tlsRefused(addr: string, port: number, reason: string, detail: TlsRefusalDetail = {}): void {
    const kind = detail.kind ?? 'tls';
    this.stats.deny(kind);
    const fields: Record<string, string | number> = { EVENT: 'tls-refused', REASON: kind, CLIENT_ADDR: addr, CLIENT_PORT: port, ERROR: reason };
    if (detail.cn !== undefined) fields['CLIENT_CN'] = detail.cn;
    if (detail.san) fields['CLIENT_SAN'] = detail.san;
    if (kind === 'tls') {
      this.logger.warning(`TLS handshake with ${addressLabel(addr, port)} failed, client refused: ${reason}`, fields);
      return;
    }
    const p = this.identityLog.permit(`${detail.cn ?? ''}\0${detail.san ?? ''}\0${reason}`, performance.now());
    if (!p) return;
    this.logger.warning(`TLS client ${addressLabel(addr, port)} refused: certificate ${describeNames(detail.cn, detail.san)} ${reason}${notLogged(p)}`, fields);
  }

  /** Whether the port is open to everyone, said at every start and reload (exposure.ts). */
  private judgeExposure(cfg: Config): void {
    // A passed socket's address by getsockname(2) through the data plane: in
    // the packaged unit's private network namespace (PrivateNetwork=yes) the
    // host's /proc/net/tcp is not visible, and every such socket would look
    // open. Without the data plane, /proc is all there is.
    const addon = this.fdStore;
    const localAddressOf = (fd: number): string | undefined => addon?.localAddress(fd) || procLocalAddress(fd);
    this.exposed = exposure(this.specs, cfg, this.tls?.ca !== undefined, localAddressOf);
    if (this.exposed.openToAll) this.logger.warning(openToAllWarning(this.exposed), { EVENT: 'open-to-all' });
  }

  // ---- targets ---------------------------------------------------------------------------

  private onTargetState(target: Target, state: BackendState): void {
    this.relay.targetsChanged();
    this.publishStatus();
    if (state === 'DOWN' && this.cfg.onMarkedDown === 'shutdown-sessions') {
      const closed = this.relay.closeOn(target, 'marked-down');
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

  /** What a full service needs, checked at start and on every reload (max-conn may have grown). */
  private checkBudgets(cfg: Config): void {
    checkDescriptorBudget(cfg.maxConn, cfg.backlog, this.logger);
    if (!this.notifier.active || !this.fdStore) return;
    const needed = storeNeeded(cfg.maxConn, cfg.backlog);
    const capacity = storeCapacity(process.env);
    if (needed <= capacity) return;
    this.logger.warning(`max-conn ${cfg.maxConn} and backlog ${cfg.backlog} may need ${needed} connections carried across a restart, ` +
      `but systemd's fd store carries ${capacity} (8096 per entry of FileDescriptorStoreMax= but one): raise FileDescriptorStoreMax= ` +
      '(systemctl edit bridge.service); on a restart, sessions beyond it are drained',
    { EVENT: 'fdstore-too-small', NEEDED: needed, CAPACITY: capacity });
  }

  // ---- reload, stop, restart -----------------------------------------------------------------

  /**
   * SIGHUP: new settings for new sessions; open sessions keep running
   * untouched. Options that need a restart keep their running values (and
   * say so): returns the configuration now in effect. TLS files are read
   * again; if they cannot be used, the previous ones stay (logged).
   */
  reload(requested: Config): Config {
    this.notifier.reloading();
    announceReload(this.logger, this.cfg, requested);
    const next = applyReload(this.cfg, requested);
    this.cfg = next;
    this.applyTls(next, 'reloaded');
    this.tlsWatch.configure(next);
    this.checkCrls(true);
    this.checkBudgets(next);
    warnAccessListsNotApplied(this.specs, next, this.logger);
    this.judgeExposure(next);
    this.logger.setLevel(next.logLevel);
    this.publishStatus();
    this.notifier.ready();
    return next;
  }

  /**
   * Reads the TLS files `cfg` names (both ends) and puts them in force for
   * new sessions; a file that cannot be read or used leaves the previous
   * material in force, said in one line. Whether everything was taken.
   */
  private applyTls(cfg: Config, done: string): boolean {
    let taken = true;
    const kept = (what: string, why: string): void => {
      taken = false;
      this.logger.error(`${what} not ${done}, keeping the previous ones: ${why}`, { EVENT: 'reload-failed', ERROR: why });
    };
    let tls = this.tls;
    try {
      tls = loadTlsMaterial(cfg);
    } catch (err) {
      if (!(err instanceof SockbridgeError)) throw err;
      kept('TLS files', err.message);
    }
    try {
      this.targetTls = loadTargetTls(cfg);
    } catch (err) {
      if (!(err instanceof SockbridgeError)) throw err;
      kept('target TLS files', err.message);
    }
    this.backend.configure({ ...cfg, targetTlsMaterial: this.targetTls });
    const refused = this.relay.configure(tls);
    if (refused) kept('TLS files', refused);
    else this.tls = tls;
    return taken;
  }

  /** A certificate, key or CRL file changed on disk (renewed): read them all again, as a reload would. */
  private tlsFilesChanged(files: string[]): void {
    if (this.stopping) return;
    if (!this.applyTls(this.cfg, 're-read after a change')) return;
    this.logger.notice(`TLS files re-read after a change to ${files.join(', ')}: in force for new sessions`, { EVENT: 'tls-files-reloaded', FILES: files.join(' ') });
    this.checkCrls(true);
    this.publishStatus();
  }

  /**
   * A stale CRL (past its nextUpdate) refuses every certificate of its CA,
   * or, with --tls-crl-allow-stale, is used anyway: said at every start,
   * reload and re-read (`always`), and otherwise once when it happens.
   */
  private checkCrls(always: boolean): void {
    const problem = this.tls ? crlProblem(this.cfg, this.tls.crls) : '';
    if (problem === this.crlSaid && !always) return;
    this.crlSaid = problem;
    if (!problem) return;
    const fields = { EVENT: 'crl-stale', CRL: this.cfg.tlsCrl };
    if (this.cfg.tlsCrlAllowStale === 'on') this.logger.warning(`--tls-crl ${this.cfg.tlsCrl}: ${problem}`, fields);
    else this.logger.error(`--tls-crl ${this.cfg.tlsCrl}: ${problem}`, fields);
  }

  /** SIGTERM: stop accepting, let sessions finish up to drain-timeout, then close them. */
  stop(): Promise<void> {
    this.stopping ??= this.relay.closeListeners().then(() => this.drain());
    return this.stopping;
  }

  /**
   * A restart (SIGUSR2, the units' RestartKillSignal=): the sessions go to the
   * next process through systemd's fd store (systemd/restart.ts); what could
   * not be carried is drained, as on a stop. Not under systemd (no fd store),
   * this is a stop.
   */
  restart(): Promise<void> {
    if (this.stopping) return this.stopping;
    const socket = this.notifier.socket;
    if (socket === undefined) {
      this.logger.notice('restart requested, but not run by systemd (no fd store to hand sessions to): draining as on a stop', { EVENT: 'handover-unavailable' });
      return this.stop();
    }
    this.stopping = this.relay.closeListeners()
      .then(() => handOver({
        relay: this.relay, fdStore: this.fdStore, notifier: this.notifier, logger: this.logger, restartGrace: this.cfg.restartGrace,
        totals: () => {
          const { total, failed, denied, bytesIn, bytesOut } = this.snapshot();
          return { total, failed, denied, bytesIn, bytesOut };
        },
      }, socket))
      .then(() => this.drain());
    return this.stopping;
  }

  private async drain(): Promise<void> {
    this.notifier.stopping();
    this.relay.dropWaiting();
    if (this.relay.busy) {
      const open = this.relay.counts();
      this.logger.notice(`stopping: waiting up to ${this.cfg.drainTimeout} ms for ${open.active + open.waiting} sessions to finish`, { EVENT: 'draining' });
      if (!await this.idleWithin(this.cfg.drainTimeout)) {
        this.logger.warning(`drain-timeout reached: closing ${this.relay.counts().active} sessions`, { EVENT: 'drain-timeout' });
        this.relay.closeAll('shutdown');
        await this.idleWithin(1000);
      }
    }
    this.tlsWatch.stop();
    this.relay.stop();
    this.backend.stop();
    this.notifier.stopWatchdog();
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.logger.notice(`stopped after ${this.stats.total} sessions`, { EVENT: 'stopped' });
  }

  /** Whether the relay had no session left within timeoutMs (polled: the data plane's counts are live). */
  private idleWithin(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const poll = (): void => {
        if (!this.relay.busy) return resolve(true);
        if (Date.now() >= deadline) return resolve(false);
        setTimeout(poll, 20);
      };
      poll();
    });
  }
}

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
  const how = relay.kind === 'native' ? `native data plane, ${relay.threads} thread${relay.threads === 1 ? '' : 's'}` : 'TypeScript relay';
  logger.notice(`listening on ${addresses}, forwarding to ${target} (${how})`,
    { EVENT: 'listening', TARGET: target, RELAY: relay.kind, RELAY_THREADS: relay.threads, ACCEPT_PATH: listeners.map((l) => l.accept).join(' ') });
  // Falling back costs every core but one: worth a line of its own, unless asked for (relay = js).
  if (relay.kind === 'js' && relay.why.startsWith(LOAD_FAILED)) {
    logger.warning(`sessions use the TypeScript relay, in one thread: ${relay.why}; set relay = js to silence this, or rebuild it (npm ci)`,
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
