// Health checks as in HAProxy's `check inter 2000 rise 2 fall 3`: a probe
// connect every check-interval; `rise` consecutive successes mark the target
// UP, `fall` consecutive failures mark it DOWN. --error-limit can mark it DOWN
// from client traffic too (markDown). One per target (targets.ts).

import type { Reporter } from './problems';
import type { Logger } from '../log';
import type { Config } from '../options';

export type BackendState = 'INIT' | 'UP' | 'DOWN';

/** One target's path, and the checks' settings. */
export type HealthSettings = Pick<Config, 'connectTimeout' | 'checkInterval' | 'rise' | 'fall'> & { target: string };

export interface CheckResult {
  ok: boolean;
  /** "connected" or the errno code. */
  detail: string;
  at: number;
}

export class HealthCheck {
  state: BackendState = 'INIT';
  stateSince = Date.now();
  lastCheck: CheckResult | undefined;

  private settings: HealthSettings;
  private timer: NodeJS.Timeout | undefined;
  private probe: (() => void) | undefined;
  private okStreak = 0;
  private failStreak = 0;
  private stopped = true;

  constructor(
    settings: HealthSettings,
    private readonly logger: Logger,
    private readonly problems: Reporter,
    private readonly onStateChange: (state: BackendState, reason: string) => void,
    /** One probe: connect (and, over TLS, handshake), then close; returns a cancel. */
    private readonly connect: (ok: () => void, fail: (err: NodeJS.ErrnoException) => void) => () => void,
  ) {
    this.settings = settings;
  }

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.probe?.();
    this.probe = undefined;
  }

  /** New settings (SIGHUP): check again now with them. */
  configure(settings: HealthSettings): void {
    this.settings = settings;
    if (!this.stopped) this.schedule(0);
  }

  /** --error-limit reached in client traffic. */
  markDown(reason: string): void {
    this.okStreak = 0;
    this.setState('DOWN', reason);
  }

  private schedule(delay: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.stopped) return;
    if (this.settings.checkInterval === 0) {
      this.setState('UP', 'health checks are off');
      return;
    }
    this.timer = setTimeout(() => this.runCheck(), delay);
    this.timer.unref();
  }

  /** One probe: connect and close (over TLS: the handshake too). A UNIX connect answers at once; a TCP one has a deadline. */
  private runCheck(): void {
    this.timer = undefined;
    this.probe?.();
    const settle = (err: NodeJS.ErrnoException | undefined): void => {
      this.probe = undefined;
      this.record(err);
      this.schedule(this.settings.checkInterval);
    };
    this.probe = this.connect(() => settle(undefined), settle);
  }

  private record(err: NodeJS.ErrnoException | undefined): void {
    const ok = err === undefined;
    this.lastCheck = { ok, detail: ok ? 'connected' : (err.code ?? err.message), at: Date.now() };
    this.problems.report(this.settings.target, err);
    if (ok) {
      this.okStreak++;
      this.failStreak = 0;
    } else {
      this.failStreak++;
      this.okStreak = 0;
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
    this.onStateChange(state, reason);
  }
}
