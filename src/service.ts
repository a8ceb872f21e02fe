// What main.ts runs: the bridge with its health checks, exit-idle-time and
// operator endpoints, one process whatever the CPU count (the native relay's
// threads use the cores). It answers reload (SIGHUP), stop (SIGTERM) and
// restart (SIGUSR2: hand the sessions to the next process).

import type http from 'node:http';
import type net from 'node:net';
import { ProblemReporter } from './backend';
import { Bridge, logListening } from './bridge';
import { HealthCheck } from './health';
import { IdleExit } from './idle';
import type { PassedSocket } from './listeners';
import type { Logger } from './log';
import type { Notifier } from './notify';
import type { Config } from './options';
import { controlPath, startControlServer, startMetricsServer } from './control';
import { buildReport, StatusReport } from './status';
import { VERSION } from './version';

/** The control socket and the metrics endpoint. */
export class OperatorEndpoints {
  private servers: (net.Server | http.Server)[] = [];

  async start(cfg: Config, report: () => StatusReport, logger: Logger): Promise<void> {
    const control = controlPath(cfg.controlSocket, process.env);
    if (control) this.servers.push(await startControlServer(control, report, logger));
    if (cfg.metricsListen) this.servers.push(await startMetricsServer(cfg.metricsListen, report, logger));
  }

  stop(): void {
    for (const s of this.servers) s.close();
    this.servers = [];
  }
}

export class Service {
  private readonly health: HealthCheck;
  private readonly bridge: Bridge;
  private readonly endpoints = new OperatorEndpoints();
  private readonly startedAt = Date.now();
  private readonly idle: IdleExit;
  private cfg: Config;

  constructor(
    cfg: Config,
    private readonly passed: PassedSocket[],
    private readonly logger: Logger,
    notifier: Notifier,
  ) {
    this.cfg = cfg;
    const problems = new ProblemReporter(logger);
    this.health = new HealthCheck(cfg, logger, problems, (state) => this.bridge.onBackendState(state));
    this.bridge = new Bridge(cfg, logger, notifier, problems, {
      onErrorLimit: (reason) => this.health.markDown(reason),
      onBusyChange: (busy) => this.idle.setBusy(busy),
    });
    this.idle = new IdleExit(cfg.exitIdleTime, logger, () => void this.stop().then(() => process.exit(0)));
  }

  async start(): Promise<void> {
    this.health.start();
    await this.bridge.start(this.passed);
    await this.endpoints.start(this.cfg, () => this.report(), this.logger);
    logListening(this.logger, this.bridge.listening, this.cfg.target, this.bridge.relayInfo);
    if (this.cfg.workers !== 0) {
      this.logger.notice(`workers = ${this.cfg.workers} is obsolete and ignored: one process uses every core through the native relay's threads (relay-threads)`, { EVENT: 'obsolete-option', OPTION: 'workers' });
    }
    this.idle.start();
  }

  reload(next: Config): void {
    this.cfg = next;
    this.health.configure(next);
    this.bridge.reload(next);
    this.idle.configure(next.exitIdleTime);
  }

  async stop(): Promise<void> {
    this.idle.stop();
    await this.bridge.stop();
    this.endpoints.stop();
    this.health.stop();
  }

  /** A restart: the sessions go to the next process (Bridge.handover). */
  async handover(): Promise<void> {
    this.idle.stop();
    await this.bridge.handover();
    this.endpoints.stop();
    this.health.stop();
  }

  report(): StatusReport {
    return buildReport({
      version: VERSION, startedAt: this.startedAt, health: this.health, totals: this.bridge.snapshot(), cfg: this.cfg,
      listeners: this.bridge.listening, relay: this.bridge.relayInfo,
    });
  }
}
