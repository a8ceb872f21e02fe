// What main.ts runs: the bridge (its targets' health checks included),
// exit-idle-time and operator endpoints, one process whatever the CPU count
// (the data plane's threads use the cores). It answers reload (SIGHUP), stop (SIGTERM) and
// restart (SIGUSR2: hand the sessions to the next process).

import type http from 'node:http';
import type net from 'node:net';
import { Bridge, logListening } from './bridge';
import { IdleExit } from './systemd/idle-exit';
import type { PassedSocket } from './systemd/passed-sockets';
import type { Logger } from './log';
import type { Notifier } from './systemd/notify';
import type { Config } from './options';
import { ControlActions, controlPath, startControlServer, startMetricsServer } from './operator/control';
import { buildReport, StatusReport } from './operator/status';
import { VERSION } from './version';

/** The control socket and the metrics endpoint. */
export class OperatorEndpoints {
  private servers: (net.Server | http.Server)[] = [];

  async start(cfg: Config, actions: ControlActions, logger: Logger): Promise<void> {
    const control = controlPath(cfg.controlSocket, process.env);
    if (control) this.servers.push(await startControlServer(control, actions, logger));
    if (cfg.metricsListen) this.servers.push(await startMetricsServer(cfg.metricsListen, () => actions.report(), logger));
  }

  stop(): void {
    for (const s of this.servers) s.close();
    this.servers = [];
  }
}

export class Service {
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
    this.bridge = new Bridge(cfg, logger, notifier, {
      onBusyChange: (busy) => this.idle.setBusy(busy),
    });
    this.idle = new IdleExit(cfg.exitIdleTime, logger, () => this.bridge.busy, () => void this.stop().then(() => process.exit(0)));
  }

  async start(): Promise<void> {
    await this.bridge.start(this.passed);
    await this.endpoints.start(this.cfg, {
      report: () => this.report(),
      setDrained: (path, drained) => this.bridge.setDrained(path, drained) !== undefined,
    }, this.logger);
    logListening(this.logger, this.bridge.listening, this.bridge.backend.pool.describe(), this.bridge.relayInfo);
    if (this.cfg.workers !== 0) {
      this.logger.notice(`workers = ${this.cfg.workers} is obsolete and ignored: one process uses every core through the native relay's threads (relay-threads)`, { EVENT: 'obsolete-option', OPTION: 'workers' });
    }
    this.idle.start();
  }

  /** SIGHUP: `requested` is what the file says; what runs keeps the restart-only options as they are. */
  reload(requested: Config): void {
    this.cfg = this.bridge.reload(requested);
    this.idle.configure(this.cfg.exitIdleTime);
  }

  async stop(): Promise<void> {
    this.idle.stop();
    await this.bridge.stop();
    this.endpoints.stop();
  }

  /** A restart: the sessions go to the next process (Bridge.handover). */
  async restart(): Promise<void> {
    this.idle.stop();
    await this.bridge.restart();
    this.endpoints.stop();
  }

  report(): StatusReport {
    return buildReport({
      version: VERSION, startedAt: this.startedAt, targets: this.bridge.backend.pool, totals: this.bridge.snapshot(), cfg: this.cfg,
      listeners: this.bridge.listening, relay: this.bridge.relayInfo, tls: this.bridge.tlsInForce, who: this.bridge.who,
    });
  }
}
