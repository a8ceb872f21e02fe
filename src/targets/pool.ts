// The targets a bridge reaches, and which one a new session tries first:
// every --target (in the order given), every socket of --target-dir (ordered
// by name, joining and leaving as their files come and go), and the
// --backup-target sockets, used while no regular target can take a client.
// Each target has its own health check (health.ts), its own connect-problem
// log and --error-limit count, its own counters, and may be drained by the
// operator (`sockbridge drain`). Holding and retrying clients is backend.ts's;
// this file only says, for one connect round, in which order to try.

import { Dirent, FSWatcher, readdirSync, statSync, watch } from 'node:fs';
import { join } from 'node:path';
import { lookup } from 'node:dns';
import net from 'node:net';
import { Endpoint, parseTarget } from '../endpoint';
import { connectTarget, errnoError, TargetTlsMaterial } from './connector';
import { ProblemReporter } from './problems';
import type { BackendFailure } from '../errors';
import { HealthCheck } from './health';
import type { BackendState, CheckResult } from './health';
import type { Logger } from '../log';
import { Config, parseTargetDir } from '../options';

export type TargetRole = 'regular' | 'backup';
export type TargetSettings = Pick<Config, 'target' | 'backupTarget' | 'targetDir' | 'balance' | 'connectTimeout' | 'connectAttemptTimeout' | 'checkInterval' | 'rise' | 'fall' | 'errorLimit'>
  & { /** TLS towards TCP targets (--target-tls on), read and checked. */ targetTlsMaterial: TargetTlsMaterial | undefined };

/** A TCP target's name is resolved again this often when health checks are off (else every check interval). */
const RESOLVE_EVERY_MS = 2000;

/** How often a --target-dir's directory itself is looked at (see TargetDir). */
const DIR_CHECK_MS = 1000;

/** Where a native data plane keeps a target's live counts (native/policy.c: shared.slots). */
export interface SlotCounts {
  /** [open sessions, connects that succeeded] */
  (slot: number): [number, number];
}

/** What the native data plane offers targets once it runs: live counts, and a way to reach abstract sockets. */
export interface LiveHooks {
  counts?: SlotCounts;
  /** connect(2) to an abstract socket and close: 0 or -errno (Node's own sockets cannot name one). */
  probeAbstract?: (name: string) => number;
}

/** One socket sessions can be sent to. */
export class Target {
  /** Sessions open here that the TypeScript relay moves (the data plane counts its own: slotCounts). */
  private ownActive = 0;
  total = 0;
  failed = 0;
  drained = false;
  /** Still configured (a removed target keeps its open sessions until they end). */
  current = true;
  private readonly problems: ProblemReporter;
  private liveErrors = 0;
  /** The data plane's count of connects that succeeded here, when the last failure was counted. */
  private successesSeen = 0;
  private errorLimit: number;
  private readonly health: HealthCheck;
  private settings: TargetSettings;
  private resolver: NodeJS.Timeout | undefined;

  /** What path says: a UNIX socket, an abstract one, or a TCP address. */
  readonly endpoint: Endpoint;
  /** A TCP target's address: its IP address as written, or what its name last resolved to. */
  address: string | undefined;
  /** Why its name does not resolve (now), for the connects that cannot be made. */
  resolveError: NodeJS.ErrnoException | undefined;

  constructor(
    /** The target as written (status and logs call it its path, for every kind). */
    readonly path: string,
    readonly role: TargetRole,
    readonly fromDir: boolean,
    /** Its number in the data plane's policy snapshot, while it exists. */
    readonly slot: number,
    settings: TargetSettings,
    logger: Logger,
    private readonly live: LiveHooks,
    private readonly onState: (t: Target, state: BackendState) => void,
    /** Its address changed: the data plane's snapshot must say so. */
    private readonly onAddress: (t: Target) => void,
  ) {
    this.settings = settings;
    this.endpoint = parseTarget(path);
    if (this.endpoint.kind === 'tcp' && net.isIP(this.endpoint.host)) this.address = this.endpoint.host;
    this.problems = new ProblemReporter(logger);
    this.health = new HealthCheck({ ...settings, target: path }, logger, this.problems, (state) => this.onState(this, state),
      (ok, fail) => this.probe(ok, fail));
    this.errorLimit = settings.errorLimit;
  }

  /**
   * One probe connect, closed at once (a health check, or a held TLS
   * client's test of the target): over TLS with its handshake; an abstract
   * socket through the data plane, which can name one.
   */
  probe(ok: () => void, fail: (err: NodeJS.ErrnoException) => void, tls = true): () => void {
    if (this.endpoint.kind === 'abstract') {
      const rc = this.live.probeAbstract?.(this.endpoint.name) ?? -97; // EAFNOSUPPORT: no data plane
      process.nextTick(() => (rc === 0 ? ok() : fail(errnoError(rc, 'connect', this.path))));
      return () => {};
    }
    return connectTarget(this, { tls: tls ? this.settings.targetTlsMaterial : undefined, attemptMs: this.probeMs() }, (s) => {
      // Over TLS a clean close (close_notify, then FIN), so that the far end sees a finished handshake, not a refused one.
      s.on('error', () => {});
      s.setTimeout(2000, () => s.destroy());
      s.end();
      s.resume();
      ok();
    }, fail);
  }

  /** How long a health check's connect may take. */
  private probeMs(): number {
    const { connectTimeout, checkInterval, connectAttemptTimeout } = this.settings;
    return Math.min(connectTimeout || 1000, checkInterval || Infinity, connectAttemptTimeout || Infinity);
  }

  /** A TCP target's name, resolved now and again every check interval, so that a DNS change is followed (and no lookup is made per connect). */
  private resolve(): void {
    const e = this.endpoint;
    if (e.kind !== 'tcp' || net.isIP(e.host)) return;
    lookup(e.host, (err, address) => {
      if (err) {
        this.resolveError = err;
        if (this.address === undefined) this.problems.report(this.path, err);
        return;
      }
      this.resolveError = undefined;
      if (address === this.address) return;
      this.address = address;
      this.onAddress(this);
    });
  }

  get state(): BackendState {
    return this.health.state;
  }

  get stateSince(): number {
    return this.health.stateSince;
  }

  get lastCheck(): CheckResult | undefined {
    return this.health.lastCheck;
  }

  start(): void {
    this.health.start();
    if (this.endpoint.kind !== 'tcp' || net.isIP(this.endpoint.host)) return;
    this.resolve();
    this.resolver = setInterval(() => this.resolve(), this.settings.checkInterval || RESOLVE_EVERY_MS);
    this.resolver.unref();
  }

  stop(): void {
    this.health.stop();
    if (this.resolver) clearInterval(this.resolver);
    this.resolver = undefined;
  }

  configure(settings: TargetSettings): void {
    this.settings = settings;
    this.errorLimit = settings.errorLimit;
    this.health.configure({ ...settings, target: this.path });
    if (this.resolver) {
      this.stop();
      this.start();
    }
  }

  /** Sessions open on it now. */
  get active(): number {
    return this.ownActive + (this.live.counts?.(this.slot)[0] ?? 0);
  }

  /**
   * The outcome of a connect made for a client: problem reports, and
   * --error-limit for this target. The data plane's own connects that
   * succeeded since the last failure break a run of failures too.
   */
  liveResult(kind: BackendFailure | undefined, err: NodeJS.ErrnoException | undefined): void {
    this.problems.report(this.path, err);
    if (kind === undefined) {
      this.liveErrors = 0;
      return;
    }
    const successes = this.live.counts?.(this.slot)[1];
    if (successes !== undefined && successes !== this.successesSeen) {
      this.successesSeen = successes;
      this.liveErrors = 0;
    }
    if (this.errorLimit > 0 && ++this.liveErrors >= this.errorLimit) {
      this.liveErrors = 0;
      this.health.markDown(`${this.errorLimit} consecutive connect errors from client traffic (${err?.code ?? 'error'})`);
    }
  }

  /** A session of the TypeScript relay connected to it started relaying; released() when it no longer does. */
  opened(): void {
    this.ownActive++;
  }

  released(): void {
    this.ownActive--;
  }

  /** A session that reached it ended. */
  ended(failed: boolean): void {
    this.total++;
    if (failed) this.failed++;
  }
}

/**
 * The sockets of a --target-dir, watched: `onChange` gets the sorted paths
 * whenever they may have changed. A watch on a directory that is removed and
 * created again (an instance's RuntimeDirectory=) would watch the old one
 * forever, so the directory itself is looked at every second too: missing,
 * it is waited for; a new one is watched.
 */
class TargetDir {
  private watcher: FSWatcher | undefined;
  private watchedInode: number | undefined;
  private check: NodeJS.Timeout | undefined;
  private scheduled = false;
  private readonly dir: string;
  private readonly match: (name: string) => boolean;

  constructor(readonly pattern: string, private readonly onChange: (paths: string[]) => void) {
    ({ dir: this.dir, match: this.match } = parseTargetDir(pattern));
  }

  start(): void {
    this.look();
    this.check = setInterval(() => this.look(), DIR_CHECK_MS);
    this.check.unref();
  }

  stop(): void {
    this.unwatch();
    if (this.check) clearInterval(this.check);
    this.check = undefined;
  }

  /** Watch the directory there now (if it is not the one watched), and read it. */
  private look(): void {
    let inode: number | undefined;
    try {
      inode = statSync(this.dir).ino;
    } catch {
      inode = undefined;
    }
    if (inode !== this.watchedInode) {
      this.unwatch();
      if (inode !== undefined) {
        try {
          this.watcher = watch(this.dir, { persistent: false }, () => this.scheduleScan());
          this.watcher.on('error', () => this.unwatch());
          this.watchedInode = inode;
        } catch {
          // gone again meanwhile: the next look
        }
      }
    }
    this.scan();
  }

  private unwatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watchedInode = undefined;
  }

  private scheduleScan(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.scan();
    });
  }

  private scan(): void {
    let entries: Dirent[];
    try {
      entries = readdirSync(this.dir, { withFileTypes: true });
    } catch {
      return this.onChange([]); // missing: clients are held until it is back
    }
    this.onChange(entries.filter((e) => e.isSocket() && this.match(e.name)).map((e) => join(this.dir, e.name)).sort());
  }
}

export interface PoolEvents {
  /** A target changed state (health checks, --error-limit). */
  onState(target: Target, state: BackendState): void;
  /** The set of targets, or a target's usability, changed: held clients should try again now. */
  onChange(): void;
}

/** What ordering a round looks at of a target. */
export interface Orderable {
  readonly state: BackendState;
  readonly role: TargetRole;
  readonly active: number;
}

/** Whether a round uses roundrobin's or leastconn's turn: with two usable regular targets or more. */
export function turnMatters(usable: readonly Orderable[], balance: Config['balance']): boolean {
  return balance !== 'first' && usable.filter((t) => t.role === 'regular' && t.state !== 'DOWN').length >= 2;
}

/**
 * The order one connect round tries the usable targets (current, not
 * drained) in: the regular ones not marked DOWN, by --balance (`turn` is
 * roundrobin's); then the backups, those not DOWN first; then the regular
 * targets marked DOWN (a mark can be stale, and a held client is better
 * served late than never). `avoid` (the target that just dropped a retried
 * request) goes last. The data plane orders the same way in C
 * (native/policy.c: order_targets); test/differential.test.ts checks it.
 */
export function orderTargets<T extends Orderable>(usable: readonly T[], balance: Config['balance'], turn: number, avoid?: T): T[] {
  const regular = usable.filter((t) => t.role === 'regular');
  let up = regular.filter((t) => t.state !== 'DOWN');
  if (up.length >= 2 && balance !== 'first') {
    const start = turn % up.length;
    up = [...up.slice(start), ...up.slice(0, start)];
    // leastconn: fewest active sessions first; equals in turn, as HAProxy does (a stable sort).
    if (balance === 'leastconn') up.sort((a, b) => a.active - b.active);
  }
  const backups = usable.filter((t) => t.role === 'backup');
  const order = [...up, ...backups.filter((t) => t.state !== 'DOWN'), ...backups.filter((t) => t.state === 'DOWN'), ...regular.filter((t) => t.state === 'DOWN')];
  if (avoid === undefined || order.length < 2 || !order.includes(avoid)) return order;
  return [...order.filter((t) => t !== avoid), avoid];
}

/** Slot numbers for targets, reused once a target is gone (native/dataplane.h: MAX_SLOTS). */
class Slots {
  private readonly free: number[] = [];
  private next = 0;

  take(): number {
    return this.free.pop() ?? this.next++;
  }

  give(slot: number): void {
    this.free.push(slot);
  }
}

/** The order one connect round tries the targets in, when the data plane keeps its own (native/policy.c: candidates). */
export type TargetOrder = (avoid: Target | undefined) => readonly Target[];

export class TargetPool {
  /** Every target by path: the configured ones first (in order), then those of --target-dir, then the backups. */
  private targets: Target[] = [];
  private readonly slots = new Slots();
  /** Shared with every target: where their live counts are, once the data plane runs. */
  private readonly live: LiveHooks = {};
  private order: TargetOrder | undefined;
  private readonly drained = new Set<string>();
  private dir: TargetDir | undefined;
  private dirPaths: string[] = [];
  private turn = 0;
  /** candidates() of a pool of one target, built once. */
  private onlyRound: readonly Target[] | undefined;
  private running = false;
  private settings: TargetSettings;

  constructor(settings: TargetSettings, private readonly logger: Logger, private readonly events: PoolEvents) {
    this.settings = settings;
    this.rebuild();
  }

  /** The targets now configured, regular ones first (for status, STATUS=, metrics). */
  get current(): Target[] {
    return this.targets.filter((t) => t.current);
  }

  /** Also removed targets that still have open sessions. */
  get all(): Target[] {
    return this.targets;
  }

  get several(): boolean {
    return this.settings.targetDir !== '' || this.current.length > 1;
  }

  /** A short name of what is reached, for logs: the one path, or the list. */
  describe(): string {
    const s = this.settings;
    return [...s.target, ...(s.targetDir ? [s.targetDir] : []), ...s.backupTarget.map((b) => `${b} (backup)`)].join(', ');
  }

  find(path: string): Target | undefined {
    return this.targets.find((t) => t.path === path);
  }

  bySlot(slot: number): Target | undefined {
    return this.targets.find((t) => t.slot === slot);
  }

  /**
   * The native data plane keeps the live counts and the balancer's state
   * (its fast path picks targets too): rounds ask it, and targets read their
   * counts from it. Before start().
   */
  useDataPlane(counts: SlotCounts, order: (avoid: Target | undefined) => number[], probeAbstract: (name: string) => number): void {
    this.live.counts = counts;
    this.live.probeAbstract = probeAbstract;
    this.order = (avoid) => order(avoid).map((slot) => this.bySlot(slot)).filter((t): t is Target => t !== undefined);
  }

  start(): void {
    this.running = true;
    for (const t of this.current) t.start();
    this.dir?.start();
  }

  stop(): void {
    this.running = false;
    this.dir?.stop();
    for (const t of this.targets) t.stop();
  }

  /** SIGHUP: the new set of targets for new sessions; sessions on a removed one run on. */
  configure(settings: TargetSettings): void {
    const dirChanged = settings.targetDir !== this.settings.targetDir;
    this.settings = settings;
    if (dirChanged) {
      this.dir?.stop();
      this.dir = undefined;
      this.dirPaths = [];
    }
    this.rebuild();
    for (const t of this.current) t.configure(settings);
    if (dirChanged && this.running) this.dir?.start();
    this.events.onChange();
  }

  /** `sockbridge drain TARGET` (true) and `enable` (false): kept across reloads. Returns the target, if there is one by that path. */
  setDrained(path: string, drained: boolean): Target | undefined {
    const t = this.find(path);
    if (!t || !t.current) return undefined;
    if (drained) this.drained.add(path);
    else this.drained.delete(path);
    t.drained = drained;
    this.logger.notice(`target ${path} ${drained ? 'drained: no new sessions, open ones finish' : 'enabled again'}`,
      { EVENT: drained ? 'target-drained' : 'target-enabled', TARGET: path });
    this.events.onChange();
    return t;
  }

  /**
   * The order one connect round tries the targets in. The usable regular
   * targets (not DOWN, not drained), by --balance; then the backups; then the
   * regular targets marked DOWN (a mark can be stale, and a client held is
   * better served late than never). When every regular target is DOWN, the
   * backups come first. `avoid` (the target that just dropped a retried
   * request) goes last.
   */
  candidates(avoid?: Target): readonly Target[] {
    if (this.order) return this.order(avoid);
    // One target (the common case, on every connection): no arrays to build.
    const only = this.targets.length === 1 ? this.targets[0]! : undefined;
    if (only && only.current && !only.drained) return (this.onlyRound ??= [only]);
    const usable = this.targets.filter((t) => t.current && !t.drained);
    const balance = this.settings.balance;
    const turn = turnMatters(usable, balance) ? this.turn++ : 0;
    return orderTargets(usable, balance, turn, avoid);
  }

  /** The configured targets, in their order, keeping the objects (state, counters) of those that stay. */
  private rebuild(): void {
    const s = this.settings;
    if (s.targetDir && !this.dir) this.dir = new TargetDir(s.targetDir, (paths) => this.onDirScan(paths));
    const wanted: { path: string; role: TargetRole; fromDir: boolean }[] = [
      ...s.target.map((path) => ({ path, role: 'regular' as const, fromDir: false })),
      ...this.dirPaths.filter((p) => !s.target.includes(p)).map((path) => ({ path, role: 'regular' as const, fromDir: true })),
      ...s.backupTarget.map((path) => ({ path, role: 'backup' as const, fromDir: false })),
    ];
    const next: Target[] = [];
    for (const w of wanted) {
      let t = this.targets.find((x) => x.path === w.path && x.role === w.role && x.current);
      if (!t) {
        t = new Target(w.path, w.role, w.fromDir, this.slots.take(), s, this.logger, this.live,
          (target, state) => this.events.onState(target, state), () => this.events.onChange());
        t.drained = this.drained.has(w.path);
        if (this.running) t.start();
      }
      next.push(t);
    }
    for (const old of this.targets) {
      if (next.includes(old)) continue;
      old.current = false;
      old.stop();
      if (old.active > 0) next.push(old); // shown until its last session ends
    }
    this.targets = next;
    this.onlyRound = undefined;
  }

  private onDirScan(paths: string[]): void {
    const before = this.dirPaths.join('\n');
    this.dirPaths = paths;
    if (paths.join('\n') === before) return;
    const added = paths.filter((p) => !before.split('\n').includes(p));
    const removed = before === '' ? [] : before.split('\n').filter((p) => !paths.includes(p));
    this.rebuild();
    for (const p of added) this.logger.notice(`target ${p} joined (${this.settings.targetDir})`, { EVENT: 'target-added', TARGET: p });
    for (const p of removed) this.logger.notice(`target ${p} left (${this.settings.targetDir}): its socket is gone`, { EVENT: 'target-removed', TARGET: p });
    this.events.onChange();
  }

  /** A session on a removed target ended: forget the target once it has none (its slot is free again). */
  prune(): void {
    const [keep, gone] = [this.targets.filter((t) => t.current || t.active > 0), this.targets.filter((t) => !t.current && t.active === 0)];
    this.targets = keep;
    for (const t of gone) this.slots.give(t.slot);
  }
}
