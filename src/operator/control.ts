// The control socket, HAProxy's "stats socket": a UNIX socket in the service's
// runtime directory (mode 0600) answering one command per connection, in
// JSON: `status` (the StatusReport), `drain TARGET` and `enable TARGET` (as
// HAProxy's `set server … state drain|ready`). `sockbridge status`, `drain`
// and `enable` are its clients. Also the optional Prometheus endpoint
// (--metrics-listen), serving the same report as metrics.

import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { ConfigError } from '../errors';
import type { Logger } from '../log';
import { parseListen } from '../options';
import { renderMetrics, StatusReport } from './status';

const COMMAND_TIMEOUT_MS = 2000;
const MAX_COMMAND_BYTES = 512;

/** What the control socket can do besides reporting. */
export interface ControlActions {
  report(): StatusReport;
  /** drain (true) or enable (false) a target; false when there is no target by that path. */
  setDrained(path: string, drained: boolean): boolean;
}

/** One command line → its JSON answer. */
export function answer(command: string, actions: ControlActions): string {
  if (command === 'status') return JSON.stringify(actions.report());
  const m = /^(drain|enable) (.+)$/.exec(command);
  if (m) {
    const [, verb, path] = m as unknown as [string, string, string];
    if (actions.setDrained(path, verb === 'drain')) return JSON.stringify({ ok: true, target: path, drained: verb === 'drain' });
    const known = actions.report().targets.filter((t) => t.current).map((t) => t.path);
    return JSON.stringify({ error: `no target ${path}; the targets are: ${known.join(', ') || 'none yet'}` });
  }
  return JSON.stringify({ error: `unknown command "${command}"; the commands are "status", "drain TARGET" and "enable TARGET"` });
}

/** --control-socket "auto": systemd's RuntimeDirectory= (/run/sockbridge) if set, else none. */
export function controlPath(setting: string, env: NodeJS.ProcessEnv): string | undefined {
  if (setting === 'off') return undefined;
  if (setting !== 'auto') return setting;
  const runtime = env['RUNTIME_DIRECTORY']?.split(':')[0];
  return runtime ? join(runtime, 'bridge.ctl') : undefined;
}

/**
 * Where `sockbridge status --instance NAME` looks. bridge.service has
 * RuntimeDirectory=sockbridge; each bridge@NAME.service its own
 * sockbridge@NAME, since systemd removes a runtime directory when its unit stops.
 */
export function instanceControlPath(instance: string): string {
  if (instance === 'bridge') return '/run/sockbridge/bridge.ctl';
  // The client end's template (bridge-connect@NAME.service) has RuntimeDirectory=sockbridge-connect-NAME.
  if (instance.startsWith('connect-')) return `/run/sockbridge-${instance}/bridge.ctl`;
  return `/run/sockbridge@${instance}/bridge.ctl`;
}

export async function startControlServer(path: string, actions: ControlActions, logger: Logger): Promise<net.Server> {
  removeStaleSocket(path);
  const server = net.createServer((conn) => {
    conn.setTimeout(COMMAND_TIMEOUT_MS, () => conn.destroy());
    conn.on('error', () => {});
    let input = '';
    conn.setEncoding('utf8');
    conn.on('data', (chunk: string) => {
      input += chunk;
      const nl = input.indexOf('\n');
      if (nl < 0 && input.length < MAX_COMMAND_BYTES) return;
      const command = input.slice(0, nl < 0 ? MAX_COMMAND_BYTES : nl).trim();
      conn.removeAllListeners('data');
      conn.end(answer(command, actions) + '\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new ConfigError('ECONTROL', `cannot create the control socket ${path}: ${err.code ?? err.message} — check its directory or set --control-socket`)));
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600); // the service's own user (and root) only
  logger.debug(`control socket at ${path}`);
  return server;
}

/** A socket file left by a crashed run would make listen() fail with EADDRINUSE. */
function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // not there
  }
}

/** The client side, for `sockbridge status`, `drain` and `enable`: the parsed JSON answer. */
export function queryControl(path: string, command: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection({ path });
    let out = '';
    conn.setEncoding('utf8');
    conn.setTimeout(COMMAND_TIMEOUT_MS, () => conn.destroy(new Error('no answer within 2 s')));
    conn.on('connect', () => conn.write(`${command}\n`));
    conn.on('data', (d: string) => { out += d; });
    conn.on('end', () => {
      try {
        resolve(JSON.parse(out) as unknown);
      } catch {
        reject(new Error(`unexpected answer: ${out.slice(0, 200)}`));
      }
    });
    conn.on('error', reject);
  });
}

export async function startMetricsServer(address: string, report: () => StatusReport, logger: Logger): Promise<http.Server> {
  const { host, port } = parseListen(address);
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(renderMetrics(report()));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new ConfigError('EMETRICS', `cannot listen for metrics on ${address}: ${err.code ?? err.message} — choose another --metrics-listen`)));
    server.listen(host === undefined ? { port } : { port, host }, () => resolve());
  });
  const a = server.address() as net.AddressInfo;
  logger.notice(`Prometheus metrics on http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics`, { EVENT: 'metrics-listening' });
  return server;
}
