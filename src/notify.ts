// The sd_notify(3) protocol: READY, STATUS, RELOADING, STOPPING, WATCHDOG.
// Every method is a no-op outside systemd (no NOTIFY_SOCKET), and the native
// addon is only loaded when systemd asked for notifications.

import type { Logger } from './log';

type SdNotify = typeof import('sd-notify');

export class Notifier {
  private lastStatus = '';
  private watchdogTimer: NodeJS.Timeout | undefined;

  private constructor(private readonly sd: SdNotify | undefined) {}

  static fromEnv(env: NodeJS.ProcessEnv, logger: Logger): Notifier {
    if (!env['NOTIFY_SOCKET']) return new Notifier(undefined);
    try {
      return new Notifier(require('sd-notify') as SdNotify);
    } catch (err) {
      logger.error(`NOTIFY_SOCKET is set but the sd-notify addon cannot load (${(err as Error).message}); systemd will not see READY=1`);
      return new Notifier(undefined);
    }
  }

  get active(): boolean {
    return this.sd !== undefined;
  }

  ready(): void {
    this.sd?.sendState('READY=1');
  }

  status(text: string): void {
    if (text === this.lastStatus) return;
    this.lastStatus = text;
    this.sd?.sendState(`STATUS=${text}`);
  }

  /** systemd ≥ 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones ignore it. */
  reloading(): void {
    const usec = process.hrtime.bigint() / 1000n;
    this.sd?.sendState(`RELOADING=1\nMONOTONIC_USEC=${usec}`);
  }

  stopping(): void {
    this.sd?.sendState('STOPPING=1');
  }

  /**
   * Ping WATCHDOG=1 at half of WatchdogSec= when systemd set one for us, as
   * long as `healthy()` holds (the primary withholds it while a worker hangs).
   */
  startWatchdog(healthy: () => boolean): number {
    const periodMs = this.sd?.watchdogInterval() ?? 0;
    if (periodMs <= 0 || this.watchdogTimer) return 0;
    const every = Math.max(1, Math.floor(periodMs / 2));
    const sd = this.sd!;
    sd.watchdog();
    this.watchdogTimer = setInterval(() => { if (healthy()) sd.watchdog(); }, every);
    this.watchdogTimer.unref(); // never the reason the process stays alive
    return every;
  }

  stopWatchdog(): void {
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    this.watchdogTimer = undefined;
  }
}
