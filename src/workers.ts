// Several worker processes sharing the listening sockets, so sockbridge uses
// every core as HAProxy's threads do, while behaving as one service.
//
// The primary holds the sockets (from systemd or bound for --listen) without
// accepting on them: Node's cluster module in SCHED_NONE mode hands each worker
// a copy and the kernel spreads new connections over the workers. The primary
// is the one voice of the service: it runs the health checks, speaks sd_notify
// (NotifyAccess=main), sums the workers' counters for STATUS=, reloads and
// stops them, replaces one that dies, and pings the watchdog only while every
// worker is alive and reporting.

import cluster, { Worker } from 'node:cluster';
import os from 'node:os';
import { Reporter, ProblemReporter } from './backend';
import { addSnapshots, announceReload, Bridge, BridgeSnapshot, logListening, NO_SESSIONS, statusLine } from './bridge';
import { EXIT_SOFTWARE, SockbridgeError } from './errors';
import { BackendState, HealthCheck } from './health';
import { IdleExit } from './idle';
import type { ListenerInfo, PassedSocket } from './listeners';
import { createLogger, Logger } from './log';
import { Notifier } from './notify';
import type { Config } from './options';
import { OperatorEndpoints, Service } from './service';
import { buildReport, StatusReport } from './status';
import { VERSION } from './version';

const REPORT_EVERY_MS = 1000;
/** A worker silent this long is considered hung: the watchdog stops being fed. */
const WORKER_SILENT_MS = 3000;
const RESPAWN_DELAY_MS = 1000;
/** How long a reload waits for every worker to confirm before it reports anyway. */
const RELOAD_ACK_MS = 5000;
const MAX_CRASHES = 5;
const CRASH_WINDOW_MS = 60_000;

const ENV_CONFIG = 'SOCKBRIDGE_WORKER_CONFIG';
const ENV_SOCKETS = 'SOCKBRIDGE_WORKER_SOCKETS';

// ---- messages ---------------------------------------------------------------------

type ToPrimary =
  | { t: 'listening'; listeners: ListenerInfo[] }
  | { t: 'reloaded'; generation: number }
  | { t: 'fatal'; message: string; code: string; exitCode: number }
  | { t: 'stats'; stats: BridgeSnapshot; busy: boolean }
  | { t: 'error-limit'; reason: string }
  | { t: 'problem'; target: string; code: string | undefined; message: string };

type ToWorker =
  | { t: 'state'; state: BackendState }
  | { t: 'reload'; config: Config; generation: number }
  | { t: 'stop' };

function availableParallelism(): number {
  // os.availableParallelism() arrived in Node 18.14; Debian 12 has 18.19, but be kind to older ones.
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

function isMessage<T extends { t: string }>(msg: unknown): msg is T {
  return typeof msg === 'object' && msg !== null && typeof (msg as { t?: unknown }).t === 'string';
}

export function isWorkerProcess(env: NodeJS.ProcessEnv): boolean {
  return cluster.isWorker && env[ENV_CONFIG] !== undefined;
}

/** Each worker's share of --max-conn. */
function perWorker(cfg: Config, workers: number): Config {
  return { ...cfg, maxConn: Math.ceil(cfg.maxConn / workers) };
}

// ---- the primary -------------------------------------------------------------------

interface WorkerState {
  worker: Worker;
  stats: BridgeSnapshot;
  busy: boolean;
  lastSeen: number;
  listening: boolean;
  /** The last reload it confirmed (see Primary.reload). */
  reloaded: number;
}

export class Primary implements Service {
  private readonly workers = new Map<number, WorkerState>();
  private readonly endpoints = new OperatorEndpoints();
  private readonly startedAt = Date.now();
  private readonly problems: ProblemReporter;
  private readonly health: HealthCheck;
  /** As the workers report them; the same in every worker (one Node, one program). */
  private listening: ListenerInfo[] = [];
  private stopping: Promise<void> | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private readonly idle: IdleExit;
  private crashes: number[] = [];
  /** Set once start() has every worker listening: from then on a worker that dies is replaced. */
  private started = false;
  /** Reloads so far; a worker forked now starts with the latest configuration. */
  private reloads = 0;
  /** The reload waiting for its confirmations, if any. */
  private pendingReload: { generation: number; done: () => void; timer: NodeJS.Timeout } | undefined;
  /** Counters of workers that have exited, so totals never go backwards. */
  private retired: BridgeSnapshot = NO_SESSIONS;

  constructor(
    private cfg: Config,
    private readonly count: number,
    private readonly passed: PassedSocket[],
    private readonly logger: Logger,
    private readonly notifier: Notifier,
  ) {
    this.problems = new ProblemReporter(logger);
    this.health = new HealthCheck(cfg, logger, this.problems, (state) => {
      this.broadcast({ t: 'state', state });
      this.publishStatus();
    });
    this.idle = new IdleExit(cfg.exitIdleTime, logger, () => void this.stop().then(() => process.exit(0)));
  }

  async start(): Promise<void> {
    // SCHED_NONE: workers accept on their own copy of the socket. The default
    // round-robin would make the primary accept and pass every connection on.
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({ args: process.argv.slice(2) });
    this.health.start();
    await Promise.all(Array.from({ length: this.count }, () => this.fork()));
    this.started = true;
    await this.endpoints.start(this.cfg, () => this.report(), this.logger);
    logListening(this.logger, this.listening, this.cfg.target, this.count);
    this.statusTimer = setInterval(() => this.publishStatus(), REPORT_EVERY_MS);
    this.publishStatus();
    this.notifier.ready();
    this.notifier.startWatchdog(() => this.allWorkersAlive());
    this.idle.start();
  }

  /** Workers to start: --workers, or one per CPU. */
  static count(cfg: Config): number {
    return cfg.workers > 0 ? cfg.workers : Math.min(64, availableParallelism());
  }

  /** Start one worker; resolves once it listens, rejects with its fatal error or when it dies before. */
  private fork(): Promise<void> {
    const env: NodeJS.ProcessEnv = {
      [ENV_CONFIG]: JSON.stringify(perWorker(this.cfg, this.count)),
      [ENV_SOCKETS]: JSON.stringify(this.passed),
      // Only the main process may talk to systemd (NotifyAccess=main).
      NOTIFY_SOCKET: '',
      WATCHDOG_USEC: '',
    };
    const worker = cluster.fork(env);
    const state: WorkerState = { worker, stats: NO_SESSIONS, busy: false, lastSeen: Date.now(), listening: false, reloaded: this.reloads };
    this.workers.set(worker.id, state);
    return new Promise((resolve, reject) => {
      worker.on('message', (msg: unknown) => {
        if (!isMessage<ToPrimary>(msg)) return;
        state.lastSeen = Date.now();
        switch (msg.t) {
          case 'listening':
            state.listening = true;
            this.listening = msg.listeners;
            resolve();
            break;
          case 'fatal':
            reject(new WorkerFatal(msg.code, msg.message, msg.exitCode));
            break;
          case 'stats':
            state.stats = msg.stats;
            state.busy = msg.busy;
            this.idle.setBusy([...this.workers.values()].some((w) => w.busy));
            break;
          case 'error-limit':
            this.health.markDown(msg.reason);
            break;
          case 'reloaded':
            state.reloaded = msg.generation;
            this.checkReloaded();
            break;
          case 'problem':
            this.problems.report(msg.target, msg.code === undefined ? undefined : { code: msg.code, message: msg.message });
            break;
        }
      });
      worker.on('exit', (code, signal) => {
        // (After a 'fatal' message this rejection is a no-op: that one came first.)
        if (!state.listening) {
          reject(new WorkerFatal('EWORKER', `worker ${worker.process.pid} exited (${signal ?? `code ${code}`}) before it listened`, EXIT_SOFTWARE));
        }
        this.onWorkerExit(state, code, signal);
      });
    });
  }

  private onWorkerExit(state: WorkerState, code: number | null, signal: string | null): void {
    this.workers.delete(state.worker.id);
    // Its sessions ended with it; what it served still counts.
    this.retired = addSnapshots(this.retired, { ...state.stats, active: 0, waiting: 0 });
    this.checkReloaded(); // it will not confirm a reload any more
    // During start() its failure fails the start (see fork); after it, a
    // replacement that dies before listening counts as a crash like any other.
    if (this.stopping || !this.started) return;
    const now = Date.now();
    this.crashes = this.crashes.filter((t) => now - t < CRASH_WINDOW_MS);
    this.crashes.push(now);
    this.logger.error(`worker ${state.worker.process.pid} exited (${signal ?? `code ${code}`}); starting a new one`, { EVENT: 'worker-exit' });
    if (this.crashes.length >= MAX_CRASHES) {
      this.logger.error(`${MAX_CRASHES} worker crashes within ${CRASH_WINDOW_MS / 1000} s: exiting so that systemd restarts the service`, { EVENT: 'crash-loop' });
      void this.stop().then(() => process.exit(EXIT_SOFTWARE));
      return;
    }
    setTimeout(() => {
      if (!this.stopping) this.fork().catch((err: Error) => this.logger.error(`cannot start a worker: ${err.message}`));
    }, RESPAWN_DELAY_MS);
  }

  private allWorkersAlive(): boolean {
    const now = Date.now();
    for (const w of this.workers.values()) if (now - w.lastSeen > WORKER_SILENT_MS) return false;
    return this.workers.size > 0;
  }

  private totals(): BridgeSnapshot {
    let t = this.retired;
    for (const w of this.workers.values()) t = addSnapshots(t, w.stats);
    return t;
  }

  report(): StatusReport {
    return buildReport({
      version: VERSION, startedAt: this.startedAt, workers: this.workers.size, health: this.health, totals: this.totals(), cfg: this.cfg,
      listeners: this.listening,
    });
  }

  private publishStatus(): void {
    this.notifier.status(statusLine(this.health.state, this.totals(), this.workers.size));
  }

  /**
   * A worker that just died can still look connected until its 'exit': the
   * callback takes the EPIPE that send would otherwise raise as an uncaught
   * 'error' (its exit is handled in onWorkerExit).
   */
  private broadcast(msg: ToWorker): void {
    for (const { worker } of this.workers.values()) if (worker.isConnected()) worker.send(msg, noop);
  }

  /**
   * Reported (the log line, READY=1 after RELOADING=1, so `systemctl reload`
   * returns) only once every worker confirmed it, or after RELOAD_ACK_MS: a
   * client right after the reload must not reach a worker still on the old
   * configuration.
   */
  reload(next: Config): void {
    this.notifier.reloading();
    const before = this.cfg;
    this.cfg = next;
    this.health.configure(next);
    this.idle.configure(next.exitIdleTime);
    const generation = ++this.reloads;
    if (this.pendingReload) clearTimeout(this.pendingReload.timer); // superseded: this one reports
    const done = (): void => {
      if (this.pendingReload?.generation !== generation) return;
      clearTimeout(this.pendingReload.timer);
      this.pendingReload = undefined;
      announceReload(this.logger, before, next);
      this.notifier.ready();
    };
    this.pendingReload = { generation, done, timer: setTimeout(done, RELOAD_ACK_MS) };
    this.broadcast({ t: 'reload', config: perWorker(next, this.count), generation });
    this.checkReloaded();
  }

  private checkReloaded(): void {
    const pending = this.pendingReload;
    if (pending && [...this.workers.values()].every((w) => w.reloaded >= pending.generation)) pending.done();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.idle.stop();
      this.notifier.stopping();
      if (this.statusTimer) clearInterval(this.statusTimer);
      this.broadcast({ t: 'stop' });
      this.endpoints.stop();
      // Each worker drains for up to drain-timeout; give them that and a margin.
      const deadline = Date.now() + this.cfg.drainTimeout + 3000;
      while (this.workers.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const { worker } of this.workers.values()) worker.process.kill('SIGKILL');
      this.health.stop();
      this.notifier.stopWatchdog();
      this.logger.notice(`stopped after ${this.totals().total} sessions`, { EVENT: 'stopped' });
    })();
    return this.stopping;
  }
}

class WorkerFatal extends SockbridgeError {
  constructor(code: string, message: string, readonly exitCode: number) {
    super(code, message);
  }
}

// ---- a worker ---------------------------------------------------------------------------

function send(msg: ToPrimary): void {
  if (process.connected) process.send?.(msg);
}

/** Connect problems go to the primary, which logs each once for the whole service. */
class ForwardingReporter implements Reporter {
  private last: string | undefined;
  report(target: string, err: Pick<NodeJS.ErrnoException, 'code' | 'message'> | undefined): void {
    if (err?.code === this.last) return;
    this.last = err?.code;
    send({ t: 'problem', target, code: err?.code, message: err?.message ?? '' });
  }
  reset(): void {
    this.last = undefined;
  }
}

/** The worker's side: a Bridge that accepts on the shared sockets and reports to the primary. */
export async function runWorker(env: NodeJS.ProcessEnv): Promise<void> {
  const cfg = JSON.parse(env[ENV_CONFIG]!) as Config;
  const passed = JSON.parse(env[ENV_SOCKETS] ?? '[]') as PassedSocket[];
  const logger = createLogger(cfg);
  const notifier = Notifier.fromEnv({}); // silent: the primary speaks for the service
  let busy = false;
  const report = (): void => { send({ t: 'stats', stats: bridge.snapshot(), busy }); };
  const bridge = new Bridge(cfg, logger, notifier, new ForwardingReporter(), {
    announce: false,
    onErrorLimit: (reason) => send({ t: 'error-limit', reason }),
    onBusyChange: (b) => { busy = b; report(); },
  });
  const stop = (): void => { void bridge.stop().then(() => process.exit(0)); };
  process.on('message', (msg: unknown) => {
    if (!isMessage<ToWorker>(msg)) return;
    if (msg.t === 'state') bridge.onBackendState(msg.state);
    else if (msg.t === 'reload') {
      bridge.reload(msg.config);
      send({ t: 'reloaded', generation: msg.generation });
    }
    else if (msg.t === 'stop') stop();
  });
  // systemd signals the whole cgroup, a terminal the whole process group: drain too.
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', () => {}); // the primary reloads and tells us
  process.on('disconnect', stop); // the primary is gone
  process.on('uncaughtException', (err) => {
    logger.error(`internal error in worker ${process.pid}, exiting (the primary starts another): ${err.stack ?? err.message}`, { EVENT: 'crash' });
    process.exit(EXIT_SOFTWARE);
  });
  try {
    await bridge.start(passed);
  } catch (err) {
    if (!(err instanceof SockbridgeError)) throw err;
    // The primary reports it (once) and exits with its code.
    process.send?.({ t: 'fatal', message: err.message, code: err.code, exitCode: err.exitCode } satisfies ToPrimary, () => process.exit(err.exitCode));
    return;
  }
  send({ t: 'listening', listeners: bridge.listening });
  setInterval(report, REPORT_EVERY_MS).unref();
}

function noop(): void {}
