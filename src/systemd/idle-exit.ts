// exit-idle-time: exit after that long without a session, so that systemd's
// socket activation starts sockbridge again on the next connection. Whoever
// sees all sessions (the only process, or the primary over its workers) tells
// it when sessions come and go.

import type { Logger } from '../log';

export class IdleExit {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private running = false;

  constructor(
    private ms: number,
    private readonly logger: Logger,
    private readonly exit: () => void,
  ) {}

  start(): void {
    this.running = true;
    this.rearm();
  }

  /** Sessions went from none to some (true) or back to none (false); repeats are ignored. */
  setBusy(busy: boolean): void {
    if (busy === this.busy) return;
    this.busy = busy;
    this.rearm();
  }

  /** A reloaded exit-idle-time counts from now. */
  configure(ms: number): void {
    this.ms = ms;
    this.rearm();
  }

  stop(): void {
    this.running = false;
    this.rearm();
  }

  private rearm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.running || this.busy || this.ms === 0) return;
    this.timer = setTimeout(() => {
      this.logger.notice(`no session for ${this.ms} ms (exit-idle-time): exiting; systemd starts sockbridge again on the next connection`, { EVENT: 'idle-exit' });
      this.exit();
    }, this.ms);
  }
}
