// The target UNIX socket: connecting clients to it (holding them while it is
// missing or restarting), and health checks that mark it UP or DOWN.
//
// Every client gets its own fresh connect(2), so a socket file that was deleted
// and recreated is picked up by the very next attempt. While the file is gone
// or refusing, a client is held: retried with a short capped backoff, and woken
// at once when the file reappears in its directory, until connect-timeout.

import { FSWatcher, watch } from 'node:fs';
import net from 'node:net';
import { basename, dirname } from 'node:path';
import { BackendFailure, classifyConnectError } from './errors';
import type { Logger } from './log';
import type { Config } from './options';

export type BackendState = 'INIT' | 'UP' | 'DOWN';

export type BackendSettings = Pick<Config, 'target' | 'connectTimeout' | 'checkInterval' | 'rise' | 'fall' | 'errorLimit'>;

/** Why a client never reached the target. */
export type ConnectFailure = 'connect-timeout' | 'target-denied' | 'target-error' | 'cancelled';

export interface ConnectCallback {
  (failure: ConnectFailure, socket: undefined, error: NodeJS.ErrnoException | undefined): void;
  (failure: undefined, socket: net.Socket, error: undefined): void;
}

const BACKOFF_FIRST_MS = 5;
const BACKOFF_MAX_MS = 200;
const REPORT_AGAIN_AFTER_MS = 10_000;

/** One client's way to the target: attempt, wait, attempt again, until the deadline. */
export class PendingConnect {
  private timer: NodeJS.Timeout | undefined;
  private delay = BACKOFF_FIRST_MS;
  private socket: net.Socket | undefined;
  private done = false;
  private readonly deadline: number;
  private lastError: NodeJS.ErrnoException | undefined;

  constructor(
    private readonly backend: Backend,
    private readonly target: string,
    timeoutMs: number,
    private readonly callback: ConnectCallback,
  ) {
    this.deadline = Date.now() + timeoutMs;
    this.attempt();
  }

  /** The socket file changed: try now instead of at the end of the backoff. */
  wake(): void {
    if (this.done || this.socket) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.delay = BACKOFF_FIRST_MS;
    this.attempt();
  }

  /** The client went away while waiting. */
  cancel(): void {
    if (this.done) return;
    this.socket?.destroy();
    this.finish('cancelled', undefined);
  }

  private attempt(): void {
    const socket = net.createConnection({ path: this.target, allowHalfOpen: true });
    this.socket = socket;
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      this.socket = undefined;
      this.backend.liveResult(undefined, undefined);
      this.finishOk(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      socket.destroy();
      this.socket = undefined;
      this.lastError = err;
      const kind = classifyConnectError(err);
      this.backend.liveResult(kind, err);
      if (kind === 'denied') return this.finish('target-denied', err);
      if (kind === 'other') return this.finish('target-error', err);
      this.retryLater(); // absent or exhausted: both pass
    });
  }

  private retryLater(): void {
    const remaining = this.deadline - Date.now();
    if (remaining <= 0) return this.finish('connect-timeout', this.lastError);
    // Exponential, capped, with jitter so held clients do not retry in lockstep.
    const wait = Math.min(remaining, this.delay * (0.8 + Math.random() * 0.4));
    this.delay = Math.min(this.delay * 2, BACKOFF_MAX_MS);
    this.backend.addWaiter(this);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.backend.removeWaiter(this);
      this.attempt();
    }, wait);
  }

  private finishOk(socket: net.Socket): void {
    this.done = true;
    this.backend.removeWaiter(this);
    this.callback(undefined, socket, undefined);
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
  /** The target was marked UP or DOWN (not called for repeated results in the same state). */
  onStateChange(state: BackendState, reason: string): void;
}

export class Backend {
  state: BackendState = 'INIT';
  stateSince = Date.now();
  lastCheck: { ok: boolean; detail: string; at: number } | undefined;

  private settings: BackendSettings;
  private readonly waiters = new Set<PendingConnect>();
  private watcher: FSWatcher | undefined;
  private checkTimer: NodeJS.Timeout | undefined;
  private checkSocket: net.Socket | undefined;
  private okStreak = 0;
  private failStreak = 0;
  private liveErrors = 0;
  /** The last problem reported, so each problem is logged once per change, not per client. */
  private reported: string | undefined;
  private readonly reportedAt = new Map<string, number>();
  private stopped = true;

  constructor(
    settings: BackendSettings,
    private readonly logger: Logger,
    private readonly events: BackendEvents,
  ) {
    this.settings = settings;
  }

  get target(): string {
    return this.settings.target;
  }

  /** Clients currently held waiting for the target. */
  get waiting(): number {
    return this.waiters.size;
  }

  /** New settings (SIGHUP) apply to new connections and the next check. */
  configure(settings: BackendSettings): void {
    const moved = settings.target !== this.settings.target;
    this.settings = settings;
    if (moved) {
      this.closeWatcher();
      this.reported = undefined;
      if (this.waiters.size > 0) this.openWatcher();
    }
    if (!this.stopped) this.scheduleCheck(0);
  }

  start(): void {
    this.stopped = false;
    this.scheduleCheck(0);
  }

  stop(): void {
    this.stopped = true;
    if (this.checkTimer) clearTimeout(this.checkTimer);
    this.checkTimer = undefined;
    this.checkSocket?.destroy();
    this.closeWatcher();
  }

  connect(callback: ConnectCallback): PendingConnect {
    return new PendingConnect(this, this.settings.target, this.settings.connectTimeout, callback);
  }

  // ---- waiting for the socket file ------------------------------------------

  addWaiter(p: PendingConnect): void {
    this.waiters.add(p);
    if (!this.watcher) this.openWatcher();
  }

  removeWaiter(p: PendingConnect): void {
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

  // ---- results and state ----------------------------------------------------

  /** Outcome of a connect attempt made for a client (error-limit, problem reports). */
  liveResult(kind: BackendFailure | undefined, err: NodeJS.ErrnoException | undefined): void {
    if (kind === undefined) {
      this.liveErrors = 0;
      this.reportProblem(undefined);
      return;
    }
    this.reportProblem(err);
    if (this.settings.errorLimit > 0 && ++this.liveErrors >= this.settings.errorLimit && this.state !== 'DOWN') {
      this.liveErrors = 0;
      this.okStreak = 0;
      this.setState('DOWN', `${this.settings.errorLimit} consecutive connect errors from client traffic (${err?.code ?? 'error'})`);
    }
  }

  private reportProblem(err: NodeJS.ErrnoException | undefined): void {
    const code = err?.code;
    if (code === this.reported) return;
    this.reported = code;
    if (code === undefined) return;
    // Problems can alternate (EMFILE, ECONNREFUSED, EMFILE…): each code at most once per interval.
    const now = Date.now();
    if (now - (this.reportedAt.get(code) ?? -Infinity) < REPORT_AGAIN_AFTER_MS) return;
    this.reportedAt.set(code, now);
    const target = this.settings.target;
    const kind = classifyConnectError(err!);
    if (kind === 'denied') {
      this.logger.error(
        `EBACKEND_PERM: cannot connect to ${target}: permission denied (${code}) — give the service the socket's group ` +
        `(SupplementaryGroups= in bridge.service, or run sockbridge as a member of it) and make the socket group-writable`,
        { TARGET: target, ERRNO: code },
      );
    } else if (kind === 'absent') {
      const why = code === 'ENOENT' ? 'does not exist' : code === 'ECONNREFUSED' ? 'refuses connections (no program listening)'
        : code === 'ECONNRESET' ? 'reset the connection (restarting)' : 'has a full accept queue';
      this.logger.warning(`target ${target} ${why} (${code}); clients are held up to connect-timeout while waiting for it`, { TARGET: target, ERRNO: code });
    } else if (kind === 'exhausted') {
      this.logger.error(`cannot connect to ${target}: out of file descriptors or memory (${code}); clients are held and retried — raise LimitNOFILE= or lower --max-conn`, { TARGET: target, ERRNO: code });
    } else {
      this.logger.error(`cannot connect to ${target} (${code}: ${err!.message}); check the target option`, { TARGET: target, ERRNO: String(code) });
    }
  }

  private scheduleCheck(delay: number): void {
    if (this.checkTimer) clearTimeout(this.checkTimer);
    this.checkTimer = undefined;
    if (this.stopped) return;
    if (this.settings.checkInterval === 0) {
      if (this.state !== 'UP') this.setState('UP', 'health checks are off');
      return;
    }
    this.checkTimer = setTimeout(() => this.runCheck(), delay);
    this.checkTimer.unref();
  }

  /** One probe: connect and close. A UNIX connect answers at once; the timer is a safety net. */
  private runCheck(): void {
    this.checkTimer = undefined;
    this.checkSocket?.destroy();
    const socket = net.createConnection({ path: this.settings.target });
    this.checkSocket = socket;
    const timeout = setTimeout(() => socket.destroy(Object.assign(new Error('check timed out'), { code: 'ETIMEDOUT' })), Math.min(this.settings.connectTimeout || 1000, this.settings.checkInterval));
    const settle = (err: NodeJS.ErrnoException | undefined): void => {
      clearTimeout(timeout);
      socket.removeAllListeners();
      socket.on('error', noop);
      socket.destroy();
      if (this.checkSocket === socket) this.checkSocket = undefined;
      this.checkResult(err);
      this.scheduleCheck(this.settings.checkInterval);
    };
    socket.once('connect', () => settle(undefined));
    socket.once('error', (err: NodeJS.ErrnoException) => settle(err));
  }

  private checkResult(err: NodeJS.ErrnoException | undefined): void {
    const ok = err === undefined;
    this.lastCheck = { ok, detail: ok ? 'connected' : (err.code ?? err.message), at: Date.now() };
    if (ok) {
      this.okStreak++;
      this.failStreak = 0;
      this.reportProblem(undefined);
    } else {
      this.failStreak++;
      this.okStreak = 0;
      this.reportProblem(err);
    }
    const { rise, fall } = this.settings;
    if (this.state === 'INIT') {
      // The first check decides the initial state, as HAProxy's does.
      this.setState(ok ? 'UP' : 'DOWN', ok ? 'first check passed' : `first check failed (${this.lastCheck.detail})`);
    } else if (this.state === 'DOWN' && this.okStreak >= rise) {
      this.setState('UP', `${this.okStreak} consecutive checks passed`);
    } else if (this.state === 'UP' && this.failStreak >= fall) {
      this.setState('DOWN', `${this.failStreak} consecutive checks failed (${this.lastCheck.detail})`);
    }
  }

  private setState(state: BackendState, reason: string): void {
    if (state === this.state) return;
    this.state = state;
    this.stateSince = Date.now();
    const fields = { TARGET: this.settings.target, BACKEND_STATE: state, EVENT: 'backend-state' };
    if (state === 'UP') this.logger.notice(`target ${this.settings.target} is UP: ${reason}`, fields);
    else this.logger.warning(`target ${this.settings.target} is DOWN: ${reason}`, fields);
    this.events.onStateChange(state, reason);
  }
}

function noop(): void {}
