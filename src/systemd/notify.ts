// The sd_notify(3) protocol: READY, STATUS, RELOADING, STOPPING, WATCHDOG.
// Every method is a no-op outside systemd (no NOTIFY_SOCKET), and the native
// addon is only loaded when systemd asked for notifications.

import { loadAddon } from './addons';

type SdNotify = typeof import('sd-notify');

export class Notifier {
  private lastStatus = '';
  private watchdogTimer: NodeJS.Timeout | undefined;

  /** socket: NOTIFY_SOCKET, where the fd store is reached too (handover.ts). */
  private constructor(private readonly sd: SdNotify | undefined, readonly socket: string | undefined) {}

  /** Throws InstallError when systemd wants notifications and the addon cannot load. */
  static fromEnv(env: NodeJS.ProcessEnv): Notifier {
    const socket = env['NOTIFY_SOCKET'] || undefined;
    return new Notifier(socket ? loadAddon<SdNotify>('sd-notify') : undefined, socket);
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

  /** FDSTOREREMOVE: systemd keeps stored fds until told, and a connection closes only when its last holder closes it. */
  forgetStored(names: string[]): void {
    for (const name of names) this.sd?.sendState(`FDSTOREREMOVE=1\nFDNAME=${name}`);
  }

  /**
   * Ping WATCHDOG=1 at half of WatchdogSec= when systemd set one for us, as
   * long as `healthy()` holds (withheld while a data-plane thread does not answer).
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
