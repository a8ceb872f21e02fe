// What main.ts runs: one process that does everything, or a primary with
// workers (workers.ts). Both answer reload (SIGHUP) and stop (SIGTERM).

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

export interface Service {
  start(): Promise<void>;
  reload(next: Config): void;
  stop(): Promise<void>;
  report(): StatusReport;
}

/** The control socket and the metrics endpoint, for whichever process speaks for the service. */
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

export class SingleProcess implements Service {
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
    logListening(this.logger, this.bridge.listening, this.cfg.target, 1);
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

  report(): StatusReport {
    return buildReport({
      version: VERSION, startedAt: this.startedAt, workers: 1, health: this.health, totals: this.bridge.snapshot(), cfg: this.cfg,
      listeners: this.bridge.listening,
    });
  }
}
