// Reaching the target UNIX socket for clients, holding them while it is
// missing or restarting. (Health checks, which mark it UP or DOWN, are in health.ts.)
//
// Every client gets its own fresh connect(2), so a socket file that was deleted
// and recreated is picked up by the very next attempt. While the file is gone
// or refusing, a client is held: retried with a short capped backoff, and woken
// at once when the file reappears in its directory, until connect-timeout.

import { FSWatcher, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import { BackendFailure, classifyConnectError } from './errors';
import type { Logger } from './log';
import type { Config } from './options';

export type BackendSettings = Pick<Config, 'target' | 'connectTimeout' | 'errorLimit'>;

/** Why a client never reached the target. */
export type ConnectFailure = 'connect-timeout' | 'target-denied' | 'target-error' | 'cancelled';

export interface ConnectCallback<C> {
  (failure: ConnectFailure, conn: undefined, error: NodeJS.ErrnoException | undefined): void;
  (failure: undefined, conn: C, error: undefined): void;
}

/**
 * One connect(2) attempt to the target, however the relay holds connections:
 * a net.Socket (the TypeScript relay) or a bare fd (the native one). Exactly
 * one of ok and fail is called, always asynchronously, unless the returned
 * function cancelled the attempt first.
 */
export interface Dialer<C> {
  attempt(path: string, ok: (conn: C) => void, fail: (err: NodeJS.ErrnoException) => void): () => void;
}

const BACKOFF_FIRST_MS = 5;
const BACKOFF_MAX_MS = 200;
const REPORT_AGAIN_AFTER_MS = 10_000;

/** One client's way to the target: attempt, wait, attempt again, until the deadline. */
export class PendingConnect<C> {
  private timer: NodeJS.Timeout | undefined;
  private delay = BACKOFF_FIRST_MS;
  private cancelAttempt: (() => void) | undefined;
  /** The socket file changed while an attempt was in flight: if it fails, try again at once. */
  private wokenDuringAttempt = false;
  private done = false;
  private readonly deadline: number;
  private lastError: NodeJS.ErrnoException | undefined;

  constructor(
    private readonly backend: Backend,
    private readonly target: string,
    timeoutMs: number,
    private readonly callback: ConnectCallback<C>,
    private readonly dialer: Dialer<C>,
  ) {
    this.deadline = Date.now() + timeoutMs;
    this.attempt();
  }

  /** The socket file changed: try now instead of at the end of the backoff. */
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
    this.cancelAttempt = this.dialer.attempt(this.target, (conn) => {
      this.cancelAttempt = undefined;
      this.backend.liveResult(undefined, undefined);
      this.finishOk(conn);
    }, (err) => {
      this.cancelAttempt = undefined;
      this.lastError = err;
      const kind = classifyConnectError(err.code);
      this.backend.liveResult(kind, err);
      if (kind === 'other') return this.finish('target-error', err);
      if (this.wokenDuringAttempt && Date.now() < this.deadline) {
        this.wokenDuringAttempt = false;
        this.delay = BACKOFF_FIRST_MS;
        return this.attempt();
      }
      // Absent, exhausted and denied all pass: a program that binds and then
      // chmods its socket (socat's mode=, group=) is root-only for a moment.
      this.retryLater();
    });
  }

  private retryLater(): void {
    const remaining = this.deadline - Date.now();
    if (remaining <= 0) {
      const denied = classifyConnectError(this.lastError?.code) === 'denied';
      return this.finish(denied ? 'target-denied' : 'connect-timeout', this.lastError);
    }
    // Exponential, capped, with jitter so held clients do not retry in lockstep.
    const wait = Math.min(remaining, this.delay * (0.8 + Math.random() * 0.4));
    this.delay = Math.min(this.delay * 2, BACKOFF_MAX_MS);
    // A waiter until connected or given up, attempts included: the directory
    // watch stays open (closed between attempts, it could miss the file
    // appearing, and the client would wait for its next backoff step).
    this.backend.addWaiter(this);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.attempt();
    }, wait);
  }

  private finishOk(conn: C): void {
    this.done = true;
    this.backend.removeWaiter(this);
    this.callback(undefined, conn, undefined);
  }

  private finish(failure: ConnectFailure, err: NodeJS.ErrnoException | undefined): void {
    if (this.done) return;
    this.done = true;
    if (this.timer) clearTimeout(this.timer);
    this.backend.removeWaiter(this);
    this.callback(failure, undefined, err);
  }
}

export interface BackendEvents {
  /** --error-limit consecutive connect errors from client traffic: the target should be marked DOWN. */
  onErrorLimit(reason: string): void;
}

export class Backend {
  private settings: BackendSettings;
  private readonly waiters = new Set<{ wake(): void }>();
  private watcher: FSWatcher | undefined;
  private liveErrors = 0;

  constructor(
    settings: BackendSettings,
    private readonly logger: Logger,
    private readonly problems: Reporter,
    private readonly events: BackendEvents,
  ) {
    this.settings = settings;
  }

  get target(): string {
    return this.settings.target;
  }

  /** New settings (SIGHUP) apply to new connections. */
  configure(settings: BackendSettings): void {
    const moved = settings.target !== this.settings.target;
    this.settings = settings;
    if (moved) {
      this.closeWatcher();
      this.problems.reset();
      if (this.waiters.size > 0) this.openWatcher();
    }
  }

  stop(): void {
    this.closeWatcher();
  }

  /**
   * One attempt now, for a relay whose connect answers on the spot (the
   * native relay: a UNIX connect(2) completes or fails at once): the
   * connection, or undefined, and then connect() holds and retries as usual
   * and reports the error. The common case needs no PendingConnect.
   */
  connectNow<C>(attempt: (path: string) => C | undefined): C | undefined {
    const conn = attempt(this.settings.target);
    if (conn !== undefined) this.liveResult(undefined, undefined);
    return conn;
  }

  /** Reach the target for one client, holding it while the target is away; `dialer` makes each attempt. */
  connect<C>(callback: ConnectCallback<C>, dialer: Dialer<C>): PendingConnect<C> {
    return new PendingConnect(this, this.settings.target, this.settings.connectTimeout, callback, dialer);
  }

  // ---- waiting for the socket file ------------------------------------------

  addWaiter(p: { wake(): void }): void {
    this.waiters.add(p);
    if (!this.watcher) this.openWatcher();
  }

  removeWaiter(p: { wake(): void }): void {
    if (this.waiters.delete(p) && this.waiters.size === 0) this.closeWatcher();
  }

  private openWatcher(): void {
    const name = basename(this.settings.target);
    try {
      // A directory watch sees the file being created, which a watch on the
      // (deleted) file itself cannot.
      this.watcher = watch(dirname(this.settings.target), { persistent: false }, (_event, file) => {
        if (file === null || String(file) === name) this.wakeAll();
      });
      this.watcher.on('error', () => this.closeWatcher());
    } catch {
      this.watcher = undefined; // directory missing too: the backoff alone finds it
    }
  }

  private closeWatcher(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  private wakeAll(): void {
    if (this.logger.enabled('debug')) this.logger.debug(`${this.settings.target} changed: retrying ${this.waiters.size} held clients now`);
    for (const p of [...this.waiters]) p.wake();
  }

  /** Outcome of a connect attempt made for a client: problem reports and --error-limit. */
  liveResult(kind: BackendFailure | undefined, err: NodeJS.ErrnoException | undefined): void {
    if (kind === undefined) {
      this.liveErrors = 0;
      this.problems.report(this.settings.target, undefined);
      return;
    }
    this.problems.report(this.settings.target, err);
    if (this.settings.errorLimit > 0 && ++this.liveErrors >= this.settings.errorLimit) {
      this.liveErrors = 0;
      this.events.onErrorLimit(`${this.settings.errorLimit} consecutive connect errors from client traffic (${err?.code ?? 'error'})`);
    }
  }
}

/** Where connect problems go: logged here, or (in a worker) sent to the primary. */
export interface Reporter {
  report(target: string, err: Pick<NodeJS.ErrnoException, 'code' | 'message'> | undefined): void;
  reset(): void;
}

/**
 * Connect problems are logged once per change (and each code at most once per
 * interval, as they can alternate), never once per client or per retry.
 */
export class ProblemReporter implements Reporter {
  private reported: string | undefined;
  private readonly reportedAt = new Map<string, number>();

  constructor(private readonly logger: Logger) {}

  reset(): void {
    this.reported = undefined;
  }

  report(target: string, err: Pick<NodeJS.ErrnoException, 'code' | 'message'> | undefined): void {
    const code = err?.code;
    if (code === this.reported) return;
    this.reported = code;
    if (code === undefined) return;
    const now = Date.now();
    if (now - (this.reportedAt.get(code) ?? -Infinity) < REPORT_AGAIN_AFTER_MS) return;
    this.reportedAt.set(code, now);
    const fields = { TARGET: target, ERRNO: code };
    switch (classifyConnectError(code)) {
      case 'denied':
        this.logger.error(
          `EBACKEND_PERM: cannot connect to ${target}: permission denied (${code}) — give the service the socket's group ` +
          `(SupplementaryGroups= in bridge.service, or run sockbridge as a member of it) and make the socket group-writable`, fields);
        return;
      case 'absent': {
        const why = code === 'ENOENT' ? 'does not exist' : code === 'ECONNREFUSED' ? 'refuses connections (no program listening)'
          : code === 'ECONNRESET' ? 'reset the connection (restarting)' : 'has a full accept queue';
        this.logger.warning(`target ${target} ${why} (${code}); clients are held up to connect-timeout while waiting for it`, fields);
        return;
      }
      case 'exhausted':
        this.logger.error(`cannot connect to ${target}: out of file descriptors or memory (${code}); clients are held and retried — raise LimitNOFILE= or lower --max-conn`, fields);
        return;
      case 'other':
        this.logger.error(`cannot connect to ${target} (${code}: ${err!.message}); check the target option`, fields);
    }
  }
}
