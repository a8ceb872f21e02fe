// exit-idle-time: exit after that long without a session, so that systemd's
// socket activation starts sockbridge again on the next connection. The
// bridge tells it when sessions come and go; when its timer runs out it asks
// once more (a data plane's sessions start without telling anyone).

import type { Logger } from '../log';

export class IdleExit {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private running = false;

  constructor(
    private ms: number,
    private readonly logger: Logger,
    /** Whether any session or waiting client exists right now. */
    private readonly busyNow: () => boolean,
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
      // A session the data plane started after the last end: busy after all, until it ends.
      if (this.busyNow()) return this.setBusy(true);
      this.logger.notice(`no session for ${this.ms} ms (exit-idle-time): exiting; systemd starts sockbridge again on the next connection`, { EVENT: 'idle-exit' });
      this.exit();
    }, this.ms);
  }
}
