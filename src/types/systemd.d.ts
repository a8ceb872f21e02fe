// Just the parts of the two native systemd packages that sockbridge calls.

declare module 'sd-notify' {
  /** sd_pid_notify(pid, "READY=1"). */
  export function ready(): void;
  /** sd_notify(0, state): any "KEY=value\n…" message. No-op without NOTIFY_SOCKET. */
  export function sendState(state: string): void;
  /** sd_notify(0, "WATCHDOG=1"). */
  export function watchdog(): void;
  /** sd_watchdog_enabled(): the watchdog period in ms, or 0 when there is none for this process. */
  export function watchdogInterval(): number;
}

declare module 'systemd-journald' {
  type Fields = Record<string, string | number>;
  type LogFn = (message: string, fields?: Fields) => void;
  const Journald: {
    emerg: LogFn; alert: LogFn; crit: LogFn; err: LogFn;
    warning: LogFn; notice: LogFn; info: LogFn; debug: LogFn;
  };
  export = Journald;
}
