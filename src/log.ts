// Logging: structured journal entries under systemd, readable lines on a terminal.
// Callers check `logger.enabled(level)` before building fields on hot paths.

import { loadAddon } from './systemd/addons';
import type { Config, LogLevel } from './options';

export type Fields = Record<string, string | number>;

const RANK: Record<LogLevel, number> = { debug: 7, info: 6, notice: 5, warning: 4, error: 3 };

interface Sink {
  write(level: LogLevel, message: string, fields: Fields): void;
}

/**
 * "2026-01-01T00:00:00.000Z notice target /x is UP: …" on stderr. Messages are
 * written to be complete on their own; the fields are for the journal.
 *
 * Lines written in one turn of the event loop go out in one write(2) at its
 * end: with a line per session, one write per line cost ~5 % of the
 * connections/s of a churn. Nothing is held longer than that turn, and
 * whatever is pending when the process exits is written first.
 */
class StderrSink implements Sink {
  private pending = '';
  private scheduled = false;

  constructor() {
    process.on('exit', this.flush);
  }

  write(level: LogLevel, message: string): void {
    this.pending += `${new Date().toISOString()} ${level} ${message}\n`;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    if (this.pending === '') return;
    const text = this.pending;
    this.pending = '';
    process.stderr.write(text);
  };
}

type JournalFn = (message: string, fields?: Fields) => void;

/** sd_journal_send() with our fields (CLIENT_ADDR=…), filterable with journalctl. */
class JournalSink implements Sink {
  private readonly fns: Record<LogLevel, JournalFn>;
  constructor(journald: typeof import('systemd-journald')) {
    this.fns = {
      debug: journald.debug, info: journald.info, notice: journald.notice,
      warning: journald.warning, error: journald.err,
    };
  }
  write(level: LogLevel, message: string, fields: Fields): void {
    this.fns[level](message, { SYSLOG_IDENTIFIER: 'sockbridge', ...fields });
  }
}

/** True when systemd started us with the journal as our log destination. */
export function underSystemd(env: NodeJS.ProcessEnv): boolean {
  return env['JOURNAL_STREAM'] !== undefined || env['INVOCATION_ID'] !== undefined;
}

export class Logger {
  private rank: number;
  constructor(private readonly sink: Sink, level: LogLevel) {
    this.rank = RANK[level];
  }

  setLevel(level: LogLevel): void {
    this.rank = RANK[level];
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] <= this.rank;
  }

  log(level: LogLevel, message: string, fields: Fields = {}): void {
    if (RANK[level] > this.rank) return;
    try {
      this.sink.write(level, message, fields);
    } catch {
      // A full or closed log destination must never take a session down.
    }
  }

  debug(message: string, fields?: Fields): void { this.log('debug', message, fields); }
  info(message: string, fields?: Fields): void { this.log('info', message, fields); }
  notice(message: string, fields?: Fields): void { this.log('notice', message, fields); }
  warning(message: string, fields?: Fields): void { this.log('warning', message, fields); }
  error(message: string, fields?: Fields): void { this.log('error', message, fields); }
}

/** Pick the sink from --log-target. Throws InstallError when the journal addon cannot load. */
export function createLogger(cfg: Pick<Config, 'logLevel' | 'logTarget'>, env: NodeJS.ProcessEnv = process.env): Logger {
  const wantJournal = cfg.logTarget === 'journal' || (cfg.logTarget === 'auto' && underSystemd(env));
  const sink = wantJournal ? new JournalSink(loadAddon<typeof import('systemd-journald')>('systemd-journald')) : new StderrSink();
  return new Logger(sink, cfg.logLevel);
}
