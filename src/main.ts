// Entry point: parse the command line, then run one command. Operator errors
// end as one line on stderr and a sysexits code, never as a stack trace.

import { CommandLine, loadConfig, parseCommandLine, validate, validateFrom } from './config';
import { renderConfigFile, renderHelp, renderMan, renderMarkdownTable } from './docs';
import { instanceControlPath, queryControl } from './operator/control';
import { EXIT_OK, EXIT_SOFTWARE, SockbridgeError, UnavailableError, UsageError } from './errors';
import { takeSystemdSockets } from './systemd/passed-sockets';
import { createLogger, Logger } from './log';
import { Notifier } from './systemd/notify';
import { formatValue, OPTIONS } from './options';
import { exposure, HOW_TO_CLOSE } from './listen/exposure';
import { listenSpecs } from './listen/listeners';
import { Service } from './service';
import { renderStatus, StatusReport } from './operator/status';
import { VERSION } from './version';

/** One command to the running service through its control socket (control.ts). */
async function ask(cli: CommandLine, command: string): Promise<unknown> {
  const setting = cli.values.get('control-socket')?.[0];
  const path = setting && setting !== 'auto' ? setting : instanceControlPath(cli.instance ?? 'bridge');
  try {
    return await queryControl(path, command);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint = code === 'ENOENT' ? 'is the service running (systemctl status bridge.service)? name another with --instance or --control-socket'
      : code === 'EACCES' ? 'the control socket is for root and the service user: use sudo' : 'is the service healthy?';
    throw new UnavailableError('ESTATUS', `cannot ask ${path}: ${code ?? (err as Error).message} — ${hint}`);
  }
}

async function status(cli: CommandLine): Promise<void> {
  const report = await ask(cli, 'status') as StatusReport;
  process.stdout.write(cli.json ? JSON.stringify(report, null, 2) + '\n' : renderStatus(report));
}

/** `sockbridge drain TARGET` / `enable TARGET`: no new sessions on it (open ones finish), or again. */
async function setDrained(cli: CommandLine, verb: 'drain' | 'enable'): Promise<void> {
  const path = cli.args[0];
  if (path === undefined || cli.args.length > 1) throw new UsageError('EUSAGE_TARGET', `${verb} needs one target, the socket's path as "sockbridge status" lists it`);
  const reply = await ask(cli, `${verb} ${path}`) as { ok?: boolean; error?: string };
  if (!reply.ok) throw new UsageError('EUSAGE_TARGET', reply.error ?? `the service did not ${verb} ${path}`);
  process.stdout.write(`${path}: ${verb === 'drain' ? 'drained (no new sessions; open ones finish)' : 'enabled'}\n`);
}

function checkConfig(cli: CommandLine): void {
  const cfg = loadConfig(cli);
  validateFrom(cli, cfg);
  const width = Math.max(...OPTIONS.map((o) => o.name.length));
  for (const o of OPTIONS) {
    // One line per value, so the output is itself a valid config file.
    const value = cfg[o.key];
    const values = Array.isArray(value) ? value.map(String) : [formatValue(o, cfg)];
    for (const v of values) process.stdout.write(`${o.name.padEnd(width)} = ${v}\n`);
  }
  // As a comment, so that the output stays a valid config file (sockets systemd would pass are not known here).
  const e = exposure(listenSpecs([], cfg), cfg, cfg.tlsCert !== '' && cfg.tlsCa !== '');
  process.stdout.write(`# exposure: ${e.openToAll ? `OPEN TO ALL: ${e.why}; close it: ${HOW_TO_CLOSE}` : `closed: ${e.why}`}\n`);
}

function generate(what: string | undefined): void {
  switch (what) {
    case 'config': return void process.stdout.write(renderConfigFile());
    case 'man': return void process.stdout.write(renderMan(VERSION));
    case 'markdown': return void process.stdout.write(renderMarkdownTable());
    default: throw new UsageError('EUSAGE_GENERATE', `generate needs one of: config, man, markdown (got ${what ?? 'nothing'})`);
  }
}

async function run(cli: CommandLine): Promise<void> {
  const cfg = loadConfig(cli);
  validateFrom(cli, cfg);
  const logger = createLogger(cfg);
  const notifier = Notifier.fromEnv(process.env);
  const passed = takeSystemdSockets(process.env, process.pid);
  const service = new Service(cfg, passed, logger, notifier);
  installProcessHandlers(service, cli, logger);
  await service.start();
}

function installProcessHandlers(service: Service, cli: CommandLine, logger: Logger): void {
  let stopRequests = 0;
  const stop = (signal: string): void => {
    if (++stopRequests > 1) {
      logger.warning(`${signal} again while draining: exiting now`);
      process.exit(EXIT_OK);
    }
    logger.notice(`${signal} received: draining`, { EVENT: 'signal', SIGNAL: signal });
    void service.stop().then(() => process.exit(EXIT_OK));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // The units' RestartKillSignal=: systemctl restart, a package upgrade.
  process.on('SIGUSR2', () => {
    if (++stopRequests > 1) return logger.warning('SIGUSR2 while stopping: ignored');
    logger.notice('SIGUSR2 received: restarting, handing the sessions to the next process', { EVENT: 'signal', SIGNAL: 'SIGUSR2' });
    void service.restart().then(() => process.exit(EXIT_OK));
  });
  process.on('SIGHUP', () => {
    if (cli.configPath === undefined) {
      logger.notice('SIGHUP received but no --config file was given: nothing to reload');
      return;
    }
    try {
      const next = loadConfig(cli);
      validate(next);
      service.reload(next);
    } catch (err) {
      if (!(err instanceof SockbridgeError)) throw err;
      logger.error(`reload failed, keeping the running configuration: ${err.message}`, { EVENT: 'reload-failed', CODE: err.code });
    }
  });
  process.on('uncaughtException', (err) => {
    logger.error(`internal error, exiting: ${err.stack ?? err.message}`, { EVENT: 'crash' });
    process.exit(EXIT_SOFTWARE);
  });
}

function fail(err: unknown): never {
  if (err instanceof SockbridgeError) {
    process.stderr.write(`sockbridge: ${err.message} [${err.code}]\n`);
    process.exit(err.exitCode);
  }
  process.stderr.write(`sockbridge: internal error (please report): ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(EXIT_SOFTWARE);
}

function main(argv: string[]): void {
  let cli: CommandLine;
  try {
    cli = parseCommandLine(argv);
    if (cli.help) return void process.stdout.write(renderHelp());
    if (cli.version) return void process.stdout.write(`sockbridge ${VERSION}\n`);
    if (cli.command === 'check-config') return checkConfig(cli);
    if (cli.command === 'generate') return generate(cli.args[0]);
    if (cli.command === 'status') return void status(cli).catch(fail);
    if (cli.command === 'drain' || cli.command === 'enable') return void setDrained(cli, cli.command).catch(fail);
  } catch (err) {
    fail(err);
  }
  run(cli).catch(fail);
}

main(process.argv.slice(2));
