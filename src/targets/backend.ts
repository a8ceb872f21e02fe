// Reaching a target UNIX socket for clients, holding them while none can
// take them. (Which targets there are, and in which order to try them, is
// targets.ts's; health checks, which mark each UP or DOWN, are in health.ts.)
//
// Every client gets its own fresh connect(2), so a socket file that was deleted
// and recreated is picked up by the very next attempt. One attempt is a round
// over the targets in the pool's order: the first that accepts gets the
// client. While every one is missing or refusing, the client is held: the
// round is retried with a short capped backoff, and at once when a socket
// file appears in a targets' directory or a target comes UP, until
// connect-timeout.

import { FSWatcher, watch } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { classifyConnectError } from '../errors';
import type { BackendState } from './health';
import type { Logger } from '../log';
import type { Config } from '../options';
import { Target, TargetPool, TargetSettings } from './pool';

export type BackendSettings = Pick<Config, 'connectTimeout'> & TargetSettings;

/** Why a client never reached a target. */
export type ConnectFailure = 'connect-timeout' | 'target-denied' | 'target-error' | 'cancelled';

export interface ConnectCallback<C> {
  (failure: ConnectFailure, conn: undefined, error: NodeJS.ErrnoException | undefined, target: undefined): void;
  (failure: undefined, conn: C, error: undefined, target: Target): void;
}

/**
 * One connect(2) attempt to a target, however the relay holds connections:
 * a net.Socket (the TypeScript relay), or a connection the data plane makes
 * for a client it keeps (native-relay.ts). Exactly one of ok and fail is
 * called, always asynchronously, unless the returned function cancelled the
 * attempt first.
 */
export interface Dialer<C> {
  attempt(target: Target, ok: (conn: C) => void, fail: (err: NodeJS.ErrnoException) => void): () => void;
}

const BACKOFF_FIRST_MS = 5;
/** A local socket answers at once: retry it often. */
const BACKOFF_MAX_MS = 200;
/** A remote end: a SYN storm towards a host that is away helps nobody. */
const BACKOFF_MAX_TCP_MS = 2000;

/** One client's way to a target: a round over the targets, wait, again, until the deadline. */
export class PendingConnect<C> {
  private timer: NodeJS.Timeout | undefined;
  private delay = BACKOFF_FIRST_MS;
  private cancelAttempt: (() => void) | undefined;
  /** A socket file changed or a target came UP while a round was in flight: if it fails, go again at once. */
  private wokenDuringAttempt = false;
  private done = false;
  private readonly deadline: number;
  private lastError: NodeJS.ErrnoException | undefined;

  constructor(
    private readonly backend: Backend,
    timeoutMs: number,
    private readonly callback: ConnectCallback<C>,
    private readonly dialer: Dialer<C>,
    private readonly avoid: Target | undefined,
  ) {
    this.deadline = Date.now() + timeoutMs;
    this.attempt();
  }

  /** Something changed: try now instead of at the end of the backoff. */
  wake(): void {
    if (this.done) return;
    if (this.cancelAttempt) {
      this.wokenDuringAttempt = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.delay = BACKOFF_FIRST_MS;
    this.attempt();
  }

  /** The client went away while waiting. */
  cancel(): void {
    if (this.done) return;
    this.cancelAttempt?.();
    this.finish('cancelled', undefined);
  }

  private attempt(): void {
    this.round(this.backend.pool.candidates(this.avoid), 0, true);
  }

  /** Try targets[i], then the next; `other`: every failure so far was of no kind worth waiting for. */
  private round(targets: readonly Target[], i: number, other: boolean): void {
    const target = targets[i];
    if (target === undefined) return this.roundFailed(targets.length > 0 && other);
    this.cancelAttempt = this.dialer.attempt(target, (conn) => {
      this.cancelAttempt = undefined;
      target.liveResult(undefined, undefined);
      this.finishOk(conn, target);
    }, (err) => {
      this.cancelAttempt = undefined;
      this.lastError = err;
      const kind = classifyConnectError(err.code);
      target.liveResult(kind, err);
      this.round(targets, i + 1, other && kind === 'other');
    });
  }

  private roundFailed(onlyOther: boolean): void {
    if (onlyOther) return this.finish('target-error', this.lastError);
    if (this.wokenDuringAttempt && Date.now() < this.deadline) {
      this.wokenDuringAttempt = false;
      this.delay = BACKOFF_FIRST_MS;
      return this.attempt();
    }
    // Absent, exhausted and denied all pass: a program that binds and then
    // chmods its socket (socat's mode=, group=) is root-only for a moment.
    this.retryLater();
  }
  private retryLater(): void {
    const remaining = this.deadline - Date.now();
    if (remaining <= 0) {
      const denied = classifyConnectError(this.lastError?.code) === 'denied';
      return this.finish(denied ? 'target-denied' : 'connect-timeout', this.lastError);
    }
    // Exponential, capped, with jitter so held clients do not retry in lockstep.
    const wait = Math.min(remaining, this.delay * (0.8 + Math.random() * 0.4));
    this.delay = Math.min(this.delay * 2, this.backend.pool.current.some((t) => t.endpoint.kind === 'tcp') ? BACKOFF_MAX_TCP_MS : BACKOFF_MAX_MS);
    // A waiter until connected or given up, attempts included: the directory
    // watch stays open (closed between attempts, it could miss the file
    // appearing, and the client would wait for its next backoff step).
    this.backend.addWaiter(this);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.attempt();
    }, wait);
  }

  private finishOk(conn: C, target: Target): void {
    this.done = true;
    this.backend.removeWaiter(this);
    this.callback(undefined, conn, undefined, target);
  }

  private finish(failure: ConnectFailure, err: NodeJS.ErrnoException | undefined): void {
    if (this.done) return;
    this.done = true;
    if (this.timer) clearTimeout(this.timer);
    this.backend.removeWaiter(this);
    this.callback(failure, undefined, err, undefined);
  }
}

export interface BackendEvents {
  /** A target changed state (health checks, --error-limit). */
  onTargetState(target: Target, state: BackendState): void;
  /** The set of targets changed (reload, --target-dir), or one was drained or enabled. */
  onTargetsChanged(): void;
}

export class Backend {
  readonly pool: TargetPool;
  private settings: BackendSettings;
  private readonly waiters = new Set<{ wake(): void }>();
  /** While clients are held: a watch on each directory holding a configured target. */
  private watchers = new Map<string, FSWatcher>();

  constructor(settings: BackendSettings, private readonly logger: Logger, private readonly events: BackendEvents) {
    this.settings = settings;
    this.pool = new TargetPool(settings, logger, {
      onState: (target, state) => {
        if (state === 'UP') this.wakeAll();
        this.events.onTargetState(target, state);
      },
      onChange: () => {
        this.events.onTargetsChanged();
        if (this.waiters.size > 0) this.openWatchers();
        this.wakeAll();
      },
    });
  }

  start(): void {
    this.pool.start();
  }

  /** New settings (SIGHUP) apply to new connections. */
  configure(settings: BackendSettings): void {
    this.settings = settings;
    this.closeWatchers();
    this.pool.configure(settings);
  }

  stop(): void {
    this.closeWatchers();
    this.pool.stop();
  }

  /** Reach a target for one client, holding it while none can take it; `dialer` makes each attempt. */
  connect<C>(callback: ConnectCallback<C>, dialer: Dialer<C>, avoid?: Target): PendingConnect<C> {
    return new PendingConnect(this, this.settings.connectTimeout, callback, dialer, avoid);
  }

  // ---- waiting for socket files ---------------------------------------------

  addWaiter(p: { wake(): void }): void {
    this.waiters.add(p);
    if (this.watchers.size === 0) this.openWatchers();
  }

  removeWaiter(p: { wake(): void }): void {
    if (this.waiters.delete(p) && this.waiters.size === 0) this.closeWatchers();
  }

  /** A directory watch sees a socket file being created, which a watch on the (deleted) file itself cannot. (--target-dir watches its own.) */
  private openWatchers(): void {
    const byDir = new Map<string, Set<string>>();
    for (const t of this.pool.current) {
      // Only a socket file appears in a directory (an abstract socket or a TCP target has none to watch).
      if (t.fromDir || t.endpoint.kind !== 'unix') continue;
      const names = byDir.get(dirname(t.path)) ?? new Set<string>();
      names.add(basename(t.path));
      byDir.set(dirname(t.path), names);
    }
    for (const [dir, names] of byDir) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, (_event, file) => {
          if (file !== null && !names.has(String(file))) return;
          if (this.logger.enabled('debug')) this.logger.debug(`${file === null ? dir : join(dir, String(file))} changed: retrying ${this.waiters.size} held clients now`);
          this.wakeAll();
        });
        w.on('error', () => {
          w.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch {
        // directory missing too: the backoff alone finds it
      }
    }
  }

  private closeWatchers(): void {
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  private wakeAll(): void {
    for (const p of [...this.waiters]) p.wake();
  }
}
