// What main.ts runs: one process that does everything, or a primary with
// workers (workers.ts). Both answer reload (SIGHUP) and stop (SIGTERM).

import { ProblemReporter } from './backend';
import { Bridge, logListening } from './bridge';
import { HealthCheck } from './health';
import type { PassedSocket } from './listeners';
import type { Logger } from './log';
import type { Notifier } from './notify';
import type { Config } from './options';

export interface Service {
  start(): Promise<void>;
  reload(next: Config): void;
  stop(): Promise<void>;
}

export class SingleProcess implements Service {
  private readonly health: HealthCheck;
  private readonly bridge: Bridge;

  constructor(
    private readonly cfg: Config,
    private readonly passed: PassedSocket[],
    private readonly logger: Logger,
    notifier: Notifier,
  ) {
    const problems = new ProblemReporter(logger);
    this.health = new HealthCheck(cfg, logger, problems, (state) => this.bridge.onBackendState(state));
    this.bridge = new Bridge(cfg, logger, notifier, problems, { onErrorLimit: (reason) => this.health.markDown(reason) });
  }

  async start(): Promise<void> {
    this.health.start();
    await this.bridge.start(this.passed);
    logListening(this.logger, this.bridge.addresses, this.cfg.target, 1);
  }

  reload(next: Config): void {
    this.health.configure(next);
    this.bridge.reload(next);
  }

  async stop(): Promise<void> {
    await this.bridge.stop();
    this.health.stop();
  }
}
