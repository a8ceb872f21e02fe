// `make bench-clients`: real clients we did not write, through the bridges.
//
// redis-benchmark against redis-server and pgbench against PostgreSQL, both
// servers on UNIX sockets only, started here as child processes in a
// temporary directory. Every bridge gets one listener per server, started
// fresh and kept for the whole run; each client then runs on all bridges back
// to back (and directly on the UNIX socket), in alternating order, three
// passes in a full run (median). As in run.ts the point is the ratios
// (sockbridge / HAProxy, each / direct), measured seconds apart on the same
// machine; absolute numbers on a shared 2-core box are noise.
//
// TLS: `redis-benchmark --tls` through the bridges that terminate TLS
// (run.ts's TLS section: sockbridge --tls-cert, HAProxy `ssl crt`, stunnel4,
// socat OPENSSL-LISTEN) to the same redis-server UNIX socket, a table of its own.
//
// QUICK=1: one pass of shorter runs (under 2 minutes; a full run is under 6).
// BRIDGES=a,b,c runs only those columns (for development).
// SECTIONS=plain or SECTIONS=tls runs only that part (default both).

import { ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { allBridges, Bridge, installMissing, sockbridgeHasOption, tlsBridges, TlsFiles } from './bridges';
import { basePlan, BasePlan, combine, freePort, machine, replies, runAsMain, runTool, startLogged, stop, ToolResult } from './common';
import { delay, treeCpuSeconds, waitUntil } from './proc';
import { Metrics, renderMarkdown, renderText, Value } from './report';
import { makeCertificates, tlsReplies } from './tls';

const ROOT = resolve(__dirname, '..', '..');
const OUT = join(ROOT, 'bench', 'out');
const SOCKBRIDGE = join(ROOT, 'bin', 'sockbridge');
const REDIS_SERVER = '/usr/bin/redis-server';
const REDIS_BENCHMARK = '/usr/bin/redis-benchmark';
/** Debian installs each PostgreSQL major under /usr/lib/postgresql/N/bin. */
const PG_LIB = '/usr/lib/postgresql';
const PG_USER = 'postgres';
const PG_DB = 'postgres';
const PG_SCALE = 1;
const REDIS_TESTS = ['ping_inline', 'set', 'get'];
/** The columns compared (run.ts's bridges of the same names, same options). */
const COMPARED = ['direct', 'sockbridge', 'haproxy'];
const JS_RELAY = 'sockbridge-js';

interface Plan extends BasePlan {
  /** redis-benchmark -n: requests per test. */
  redisRequests: number;
  /** redis-benchmark --tls -n: fewer, as TLS makes every column slower. */
  redisTlsRequests: number;
  /** pgbench -T: seconds per pgbench run. */
  pgSeconds: number;
}

function makePlan(): Plan {
  const base = basePlan();
  return { ...base, redisRequests: base.quick ? 50_000 : 100_000, redisTlsRequests: base.quick ? 20_000 : 50_000, pgSeconds: base.quick ? 4 : 8 };
}

// ---- the servers -------------------------------------------------------------------

type ServiceName = 'redis' | 'postgres';

interface Service {
  name: ServiceName;
  /** The UNIX socket the bridges target. */
  socket: string;
  child: ChildProcess;
  /** Does `address` (the socket or a bridge's 127.0.0.1:PORT) reach the server? */
  answers(address: string): Promise<boolean>;
  stop(): Promise<void>;
}

/** An inline PING answered by +PONG: the server (or a bridge in front of it) relays. */
function redisAnswers(address: string): Promise<boolean> {
  return replies(address, 'PING\r\n', (got) => got.toString().startsWith('+PONG'), 1000);
}

/**
 * PostgreSQL's SSLRequest (length 8, code 80877103) answered by one byte, 'N'
 * with SSL off: a protocol round trip that needs no login. A client that
 * closes right after it is not logged as an error by the server.
 */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
function postgresAnswers(address: string): Promise<boolean> {
  return replies(address, SSL_REQUEST, (got) => got.length >= 1 && got[0] === 0x4e, 1000);
}

async function startRedis(dir: string): Promise<Service> {
  const socket = join(dir, 'redis.sock');
  // No TCP port, no persistence: only the UNIX socket, only memory.
  const args = ['--port', '0', '--unixsocket', socket, '--unixsocketperm', '777', '--save', '', '--appendonly', 'no', '--dir', dir];
  const child = startLogged({ cmd: REDIS_SERVER, args }, join(OUT, 'clients-redis.log'), { cwd: dir });
  const service: Service = { name: 'redis', socket, child, answers: redisAnswers, stop: () => stop(child) };
  if (!(await waitUntil(() => child.exitCode === null && redisAnswers(socket), 15_000, 50))) {
    await service.stop();
    throw new Error(`redis-server did not answer within 15 s (see ${join(OUT, 'clients-redis.log')})`);
  }
  return service;
}

/** The newest PostgreSQL server installed, e.g. /usr/lib/postgresql/15/bin; null if none. */
function postgresBin(): string | null {
  const majors = existsSync(PG_LIB) ? readdirSync(PG_LIB).filter((n) => /^\d+$/.test(n)).map(Number) : [];
  const dirs = majors.sort((a, b) => b - a).map((m) => join(PG_LIB, `${m}`, 'bin'));
  return dirs.find((d) => existsSync(join(d, 'postgres')) && existsSync(join(d, 'pgbench'))) ?? null;
}

/** uid and gid of a system user, from /etc/passwd; null when there is none. */
function userIds(name: string): { uid: number; gid: number } | null {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${name}:`));
  const f = line?.split(':');
  return f && f.length > 3 ? { uid: Number(f[2]), gid: Number(f[3]) } : null;
}

/** A directory the postgres user owns (PostgreSQL refuses to run as root). */
function ownedDir(path: string, ids: { uid: number; gid: number }): string {
  mkdirSync(path, { mode: 0o700 });
  chownSync(path, ids.uid, ids.gid);
  return path;
}

async function mustRun(what: string, cmd: string, args: string[], timeoutMs: number): Promise<ToolResult> {
  const r = await runTool(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code ?? 'killed'}): ${lastLine(r.stderr || r.stdout)}`);
  return r;
}

function lastLine(text: string): string {
  return text.trim().split('\n').pop() ?? '';
}

async function startPostgres(dir: string, bin: string): Promise<Service> {
  const ids = userIds(PG_USER);
  if (!ids) throw new Error(`no ${PG_USER} user`);
  const data = ownedDir(join(dir, 'pgdata'), ids);
  const sockDir = ownedDir(join(dir, 'pgsock'), ids);
  // trust: the benchmark measures the relay, not a password exchange.
  // --no-sync and fsync=off: a throw-away cluster whose durability does not matter.
  const initdb = [join(bin, 'initdb'), '-D', data, '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C', '-U', PG_USER];
  await mustRun('initdb', 'runuser', ['-u', PG_USER, '--', ...initdb], 120_000);
  const log = join(OUT, 'clients-postgres.log');
  const args = ['-D', data, '-k', sockDir, '-c', 'listen_addresses=', '-c', 'fsync=off'];
  // Started with the postgres uid by spawn itself rather than through runuser,
  // so the PID we hold is the postmaster's and a SIGINT to it is a fast shutdown.
  const child = startLogged({ cmd: join(bin, 'postgres'), args }, log, { cwd: dir, uid: ids.uid, gid: ids.gid });
  const service: Service = { name: 'postgres', socket: join(sockDir, '.s.PGSQL.5432'), child, answers: postgresAnswers, stop: () => stopPostgres(child) };
  const isReady = async (): Promise<boolean> =>
    child.exitCode !== null || (await runTool(join(bin, 'pg_isready'), ['-q', '-h', sockDir, '-U', PG_USER], 5000)).code === 0;
  try {
    if (!(await waitUntil(isReady, 30_000, 200)) || child.exitCode !== null) throw new Error(`postgres did not start within 30 s (see ${log})`);
    await mustRun('pgbench -i', join(bin, 'pgbench'), ['-i', '-q', '-s', `${PG_SCALE}`, '-h', sockDir, '-U', PG_USER, PG_DB], 180_000);
  } catch (e) {
    await service.stop();
    throw e;
  }
  return service;
}

/**
 * SIGINT to the postmaster alone (fast shutdown: it stops its own children in
 * order); a SIGTERM to every process of the tree, as stopTree sends, would
 * look like crashed backends to it. stopTree is the fallback.
 */
async function stopPostgres(child: ChildProcess): Promise<void> {
  if (child.pid !== undefined && child.exitCode === null) {
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      process.kill(child.pid, 'SIGINT');
      await Promise.race([exited, delay(20_000)]);
    } catch {
      // already gone
    }
  }
  await stop(child);
}

// ---- bridges in front of them ------------------------------------------------------

/** One bridge's listener in front of one server; for direct, the socket itself. */
interface Endpoint {
  child: ChildProcess | null;
  /** Root of the listener's process tree, for its CPU time; null for direct. */
  pid: number | null;
  /** 127.0.0.1 port; null for direct. */
  port: number | null;
}

interface Lane {
  bridge: Bridge;
  endpoints: Map<ServiceName, Endpoint>;
  raw: Record<string, unknown>[];
  /** The TLS part: the certificate clients verify; null for plain TCP. */
  tls: TlsFiles | null;
}

/** sockbridge with the TypeScript relay, for builds whose --help has --relay. */
function jsRelay(base: Bridge): Bridge {
  return {
    name: JS_RELAY,
    unavailable: base.unavailable,
    command: (ctx) => {
      const cmd = base.command(ctx);
      return cmd && { cmd: cmd.cmd, args: [...cmd.args, '--relay', 'js'] };
    },
  };
}

function comparedBridges(): Bridge[] {
  const all = allBridges(SOCKBRIDGE);
  const bridges = COMPARED.map((n) => all.find((b) => b.name === n)).filter((b): b is Bridge => b !== undefined);
  const at = bridges.findIndex((b) => b.name === 'sockbridge');
  // The TypeScript relay is being added in parallel: a column only where this build has it.
  if (at >= 0 && sockbridgeHasOption(SOCKBRIDGE, '--relay')) bridges.splice(at + 1, 0, jsRelay(bridges[at]));
  const only = process.env.BRIDGES?.split(',').filter(Boolean);
  return bridges.filter((b) => !only || only.includes(b.name));
}

/** An inline PING answered by +PONG over TLS, the certificate verified. */
function redisAnswersTls(address: string, ca: string): Promise<boolean> {
  return tlsReplies(address, ca, 'PING\r\n', (got) => got.toString().startsWith('+PONG'), 1000);
}

async function startEndpoint(bridge: Bridge, service: Service, plan: Plan, tmp: string, tls: TlsFiles | null): Promise<Endpoint> {
  const port = await freePort();
  const label = `${tls ? 'tls-' : ''}${bridge.name}-${service.name}`;
  const stderrFile = join(OUT, `clients-${label}.stderr.log`);
  const dir = join(tmp, label);
  const cmd = bridge.command({ listen: `127.0.0.1:${port}`, target: service.socket, dir, threads: plan.threads, stderrFile, tls: tls ?? undefined });
  if (!cmd) return { child: null, pid: null, port: null };
  mkdirSync(dir, { recursive: true });
  const child = startLogged(cmd, stderrFile, { cwd: dir });
  const answers = (): Promise<boolean> => (tls ? redisAnswersTls(`127.0.0.1:${port}`, tls.ca) : service.answers(`127.0.0.1:${port}`));
  if (!(await waitUntil(answers, 15_000, 50))) {
    await stop(child);
    throw new Error(`did not relay to ${service.name} within 15 s (see ${stderrFile})`);
  }
  return { child, pid: child.pid ?? null, port };
}

async function startLane(bridge: Bridge, services: Service[], plan: Plan, tmp: string, tls: TlsFiles | null = null): Promise<Lane> {
  const why = bridge.unavailable();
  if (why) throw new Error(why);
  const lane: Lane = { bridge, endpoints: new Map(), raw: [], tls };
  try {
    for (const s of services) lane.endpoints.set(s.name, await startEndpoint(bridge, s, plan, tmp, tls));
  } catch (e) {
    await stopLane(lane);
    throw e;
  }
  return lane;
}

async function stopLane(lane: Lane): Promise<void> {
  for (const ep of lane.endpoints.values()) await stop(ep.child);
}

// ---- the clients -------------------------------------------------------------------

interface Client {
  name: string;
  service: ServiceName;
  run(lane: Lane, ep: Endpoint, ctx: ClientContext): Promise<Metrics>;
}

interface ClientContext {
  plan: Plan;
  /** The servers, for their UNIX sockets (the direct runs). */
  services: Map<ServiceName, Service>;
  /** PostgreSQL's bin directory, for the pgbench of the same major. */
  pgBin: string;
  pass: number;
}

/** Run a client; the bridge listener's CPU seconds meanwhile (null for direct); raw output kept. */
async function measured(lane: Lane, ep: Endpoint, ctx: ClientContext, cmd: string, args: string[], timeoutMs: number): Promise<{ out: string; cpu: Value }> {
  const before = ep.pid === null ? 0 : treeCpuSeconds(ep.pid);
  // A TCP client of libpq would first ask for SSL (one more round trip per
  // connection) where a UNIX socket client does not: off, so a bridge is
  // compared with direct on the relay alone.
  const env = { ...process.env, PGSSLMODE: 'disable', PGGSSENCMODE: 'disable' };
  const r = await runTool(cmd, args, timeoutMs, { env });
  const cpu = ep.pid === null ? null : treeCpuSeconds(ep.pid) - before;
  lane.raw.push({ pass: ctx.pass, cmd, args, code: r.code, stdout: r.stdout, stderr: r.stderr, bridge_cpu_s: cpu });
  if (r.code !== 0) throw new Error(`exit ${r.code ?? 'killed'}: ${lastLine(r.stderr || r.stdout)}`);
  return { out: r.stdout, cpu };
}

/** The CSV of `redis-benchmark --csv`: test name → column → number. */
function parseRedisCsv(text: string): Map<string, Record<string, number>> {
  const rows = text
    .split('\n')
    .map((l) => [...l.matchAll(/"([^"]*)"/g)].map((m) => m[1]))
    .filter((f) => f.length > 1);
  const header = rows.find((f) => f[0] === 'test') ?? [];
  const out = new Map<string, Record<string, number>>();
  for (const f of rows.filter((r) => r[0] !== 'test')) {
    const rec: Record<string, number> = {};
    for (let i = 1; i < header.length; i++) rec[header[i]] = Number(f[i]);
    out.set(f[0].toLowerCase(), rec);
  }
  return out;
}

const perUnit = (cpu: Value, n: number | null): Value => (cpu === null || !n ? null : (cpu * 1e6) / n);

/** redis-benchmark with `args` (n requests per test): requests/s per test and the bridge's CPU per request. */
async function redisMetrics(lane: Lane, ep: Endpoint, ctx: ClientContext, args: string[], n: number): Promise<Metrics> {
  const { out, cpu } = await measured(lane, ep, ctx, REDIS_BENCHMARK, args, 300_000);
  const csv = parseRedisCsv(out);
  const m: Metrics = {};
  for (const t of REDIS_TESTS) m[`redis_${t}_rps`] = csv.get(t)?.rps ?? null;
  if (REDIS_TESTS.some((t) => !csv.has(t))) throw new Error(`no result for every test in: ${lastLine(out)}`);
  m.redis_cpu_us_per_req = perUnit(cpu, n * REDIS_TESTS.length);
  return m;
}

const redisBenchmark: Client = {
  name: 'redis-benchmark',
  service: 'redis',
  async run(lane, ep, ctx) {
    const n = ctx.plan.redisRequests;
    const where = ep.port === null ? ['-s', ctx.services.get('redis')?.socket ?? ''] : ['-h', '127.0.0.1', '-p', `${ep.port}`];
    const args = [...where, '-q', '--csv', '-t', REDIS_TESTS.join(','), '-n', `${n}`, '-c', '50'];
    return redisMetrics(lane, ep, ctx, args, n);
  },
};

/** The figures pgbench prints at the end of a run. */
function parsePgbench(text: string): { tps: Value; transactions: Value; connectMs: Value } {
  const get = (re: RegExp): Value => {
    const m = re.exec(text);
    return m ? Number(m[1]) : null;
  };
  return {
    tps: get(/^tps = ([\d.]+)/m),
    transactions: get(/number of transactions actually processed: (\d+)/),
    connectMs: get(/average connection time = ([\d.]+) ms/),
  };
}

/** pgbench -S (select only); with -C a new connection for every transaction. */
function pgbench(name: string, key: string, connectEach: boolean): Client {
  return {
    name,
    service: 'postgres',
    async run(lane, ep, ctx) {
      const sockDir = dirname(ctx.services.get('postgres')?.socket ?? '');
      const where = ep.port === null ? ['-h', sockDir] : ['-h', '127.0.0.1', '-p', `${ep.port}`];
      // -n: no vacuum before each run; pgbench -i left the tables vacuumed.
      const args = ['-S', '-n', ...(connectEach ? ['-C'] : []), ...where, '-U', PG_USER, '-c', '8', '-j', '2', '-T', `${ctx.plan.pgSeconds}`, PG_DB];
      const { out, cpu } = await measured(lane, ep, ctx, join(ctx.pgBin, 'pgbench'), args, (ctx.plan.pgSeconds + 60) * 1000);
      const r = parsePgbench(out);
      if (r.tps === null) throw new Error(`no tps in: ${lastLine(out)}`);
      const m: Metrics = { [`${key}_tps`]: r.tps, [`${key}_cpu_us_per_tx`]: perUnit(cpu, r.transactions) };
      if (connectEach) m[`${key}_conn_ms`] = r.connectMs;
      return m;
    },
  };
}

const CLIENTS: Client[] = [redisBenchmark, pgbench('pgbench -S', 'pg_select', false), pgbench('pgbench -S -C', 'pg_connect', true)];

/** Does this redis-benchmark speak TLS (built with it, as Debian's 7.x is)? */
function redisBenchmarkHasTls(): boolean {
  const r = spawnSync(REDIS_BENCHMARK, ['--help'], { encoding: 'utf8', timeout: 20_000 });
  return /--tls\b/.test(`${r.stdout ?? ''}${r.stderr ?? ''}`);
}

/**
 * The same redis-benchmark run over TLS through a TLS-terminating bridge: its
 * 50 connections each shake hands once (verifying the certificate with
 * --cacert), then the requests. Same keys as the plain run, in a table of its own.
 */
const redisBenchmarkTls: Client = {
  name: 'redis-benchmark --tls',
  service: 'redis',
  async run(lane, ep, ctx) {
    const n = ctx.plan.redisTlsRequests;
    if (ep.port === null || !lane.tls) {
      // direct: the plain UNIX socket, with as many requests as the TLS columns
      return redisBenchmark.run(lane, ep, { ...ctx, plan: { ...ctx.plan, redisRequests: n } });
    }
    const args = ['--tls', '--cacert', lane.tls.ca, '-h', '127.0.0.1', '-p', `${ep.port}`, '-q', '--csv', '-t', REDIS_TESTS.join(','), '-n', `${n}`, '-c', '50'];
    return redisMetrics(lane, ep, ctx, args, n);
  },
};

// ---- the table ---------------------------------------------------------------------

interface Row {
  key: string;
  label: string;
  digits: number;
}

const TLS_ROWS: Row[] = [
  { key: 'redis_ping_inline_rps', label: 'redis-benchmark --tls PING_INLINE requests/s', digits: 0 },
  { key: 'redis_set_rps', label: 'redis-benchmark --tls SET requests/s', digits: 0 },
  { key: 'redis_get_rps', label: 'redis-benchmark --tls GET requests/s', digits: 0 },
  { key: 'redis_cpu_us_per_req', label: 'redis over TLS: bridge CPU µs per request', digits: 2 },
];

const ROWS: Row[] = [
  { key: 'redis_ping_inline_rps', label: 'redis-benchmark PING_INLINE requests/s', digits: 0 },
  { key: 'redis_set_rps', label: 'redis-benchmark SET requests/s', digits: 0 },
  { key: 'redis_get_rps', label: 'redis-benchmark GET requests/s', digits: 0 },
  { key: 'redis_cpu_us_per_req', label: 'redis: bridge CPU µs per request', digits: 2 },
  { key: 'pg_select_tps', label: 'pgbench -S transactions/s (8 conns)', digits: 0 },
  { key: 'pg_select_cpu_us_per_tx', label: 'pgbench -S: bridge CPU µs per transaction', digits: 2 },
  { key: 'pg_connect_tps', label: 'pgbench -S -C transactions/s (connection each)', digits: 0 },
  { key: 'pg_connect_conn_ms', label: 'pgbench -S -C average connection time (ms)', digits: 3 },
  { key: 'pg_connect_cpu_us_per_tx', label: 'pgbench -S -C: bridge CPU µs per connection', digits: 1 },
];

function ratio(a: Value | undefined, b: Value | undefined): string {
  return a == null || b == null || b === 0 ? '' : `${(a / b).toFixed(2)}×`;
}

/** Header and rows: each client figure × bridge, then the ratios. */
function tableRows(names: string[], results: Record<string, Metrics>, rowDefs: Row[] = ROWS): string[][] {
  const bridges = names.filter((n) => n !== 'direct');
  const vsHaproxy = bridges.filter((n) => n.startsWith('sockbridge'));
  const header = ['client', ...names, ...vsHaproxy.map((n) => `${n}/haproxy`), ...bridges.map((n) => `${n}/direct`)];
  const rows = rowDefs.map((row) => {
    const val = (n: string): Value | undefined => results[n]?.[row.key];
    const cell = (n: string): string => (val(n) == null ? 'n/a' : (val(n) as number).toFixed(row.digits));
    return [
      row.label,
      ...names.map(cell),
      ...vsHaproxy.map((n) => ratio(val(n), val('haproxy'))),
      ...bridges.map((n) => ratio(val(n), val('direct'))),
    ];
  });
  return [header, ...rows];
}

function commandLine(): string {
  const env = ['QUICK', 'SECTIONS', 'BRIDGES'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('');
  return process.env.MAKELEVEL ? `${env}make bench-clients` : `${env}node ${process.argv.slice(1).join(' ')}`;
}

interface Report {
  plan: Plan;
  names: string[];
  results: Record<string, Metrics>;
  /** The TLS part: its columns (direct = plain UNIX socket, no TLS) and results; names empty when not run. */
  tlsNames: string[];
  tlsResults: Record<string, Metrics>;
  tlsNotes: string[];
  notes: string[];
  started: Date;
  seconds: number;
  raw: Record<string, unknown>;
}

function writeReports(r: Report): string {
  const rows = tableRows(r.names, r.results);
  const tlsRows = r.tlsNames.length > 0 ? tableRows(r.tlsNames, r.tlsResults, TLS_ROWS) : null;
  const p = r.plan;
  const md = [
    '# sockbridge with real clients',
    '',
    `- date: ${r.started.toISOString()} (${r.seconds.toFixed(0)} s)`,
    `- machine: ${machine()}`,
    `- command: \`${commandLine()}\``,
    `- plan: ${p.passes} pass(es), median; \`redis-benchmark -q --csv -t ${REDIS_TESTS.join(',')} -n ${p.redisRequests} -c 50\`; ` +
      `\`pgbench -S -n -c 8 -j 2 -T ${p.pgSeconds}\` and the same with \`-C\` (scale ${PG_SCALE}); HAProxy nbthread = ${p.threads}`,
    '- method: redis-server and PostgreSQL on UNIX sockets only; each bridge has one listener per server, started fresh; every client runs on all bridges back to back in alternating order; bridge CPU (user+sys) is the listener\'s whole process tree; direct = the client on the UNIX socket itself',
    '- read: requests/s and transactions/s higher is better; CPU and connection time lower is better',
    ...r.notes.map((n) => `- ${n}`),
    '',
    ...(r.names.length > 0 ? [renderMarkdown(rows), ''] : []),
    ...(tlsRows
      ? [
          '## TLS',
          '',
          `- \`redis-benchmark --tls --cacert CERT -h 127.0.0.1 -p PORT -q --csv -t ${REDIS_TESTS.join(',')} -n ${p.redisTlsRequests} -c 50\` through each TLS-terminating bridge (the bridges of \`make bench\`'s TLS section, same options; P-256 ECDSA certificate made for the run) to the same redis-server UNIX socket; direct = plain \`redis-benchmark -s SOCKET\` without TLS, for what TLS and the bridge cost together`,
          ...r.tlsNotes.map((n) => `- ${n}`),
          '',
          renderMarkdown(tlsRows),
          '',
        ]
      : []),
  ].join('\n');
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'clients.md'), md);
  const file = join(OUT, `clients-${r.started.toISOString().replace(/[:.]/g, '-')}.json`);
  const json = {
    date: r.started.toISOString(), seconds: r.seconds, machine: machine(), command: commandLine(), plan: p, results: r.results, notes: r.notes, raw: r.raw,
    tls: { results: r.tlsResults, notes: r.tlsNotes },
  };
  writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  const tlsText = tlsRows ? ['', 'TLS:', renderText(tlsRows), ...r.tlsNotes] : [];
  return [...(r.names.length > 0 ? [renderText(rows)] : []), ...r.notes, ...tlsText, `bench-clients: wrote ${join(OUT, 'clients.md')} and ${file}`].join('\n');
}

// ---- main --------------------------------------------------------------------------

function installClients(): void {
  const pg = postgresBin();
  installMissing([
    ['/usr/sbin/haproxy', 'haproxy'],
    [REDIS_SERVER, 'redis-server'],
    [REDIS_BENCHMARK, 'redis-tools'],
    // The TLS part's peers and the tool that makes its certificate.
    ['/usr/bin/stunnel4', 'stunnel4'],
    ['/usr/bin/socat', 'socat'],
    ['/usr/bin/openssl', 'openssl'],
    // Any major will do; a path that cannot exist asks for the package.
    [pg ? join(pg, 'postgres') : join(PG_LIB, 'none'), 'postgresql'],
  ]);
}

/** Start each server; one that cannot run costs its rows, with a note saying why. */
async function startServices(tmp: string, notes: string[], withPostgres = true): Promise<{ services: Service[]; pgBin: string }> {
  const services: Service[] = [];
  const pgBin = postgresBin();
  const start = async (name: string, f: () => Promise<Service>): Promise<void> => {
    try {
      services.push(await f());
    } catch (e) {
      notes.push(`${name}: n/a (${(e as Error).message})`);
    }
  };
  await start('redis', async () => {
    if (!existsSync(REDIS_SERVER) || !existsSync(REDIS_BENCHMARK)) throw new Error(`${REDIS_SERVER} or ${REDIS_BENCHMARK} not installed`);
    return startRedis(tmp);
  });
  if (withPostgres) await start('postgres', async () => {
    if (!pgBin) throw new Error(`no PostgreSQL server with pgbench under ${PG_LIB}`);
    return startPostgres(tmp, pgBin);
  });
  return { services, pgBin: pgBin ?? '' };
}

async function runPasses(lanes: Lane[], ctx: ClientContext, notes: string[], all: Client[] = CLIENTS): Promise<Map<Lane, Metrics[]>> {
  const passes = new Map<Lane, Metrics[]>(lanes.map((l) => [l, []]));
  const clients = all.filter((c) => ctx.services.has(c.service));
  for (let p = 0; p < ctx.plan.passes; p++) {
    ctx.pass = p + 1;
    // Alternate the order, so no bridge always runs right after the same neighbour.
    const order = p % 2 === 1 ? [...lanes].reverse() : lanes;
    const current = new Map<Lane, Metrics>(lanes.map((l) => [l, {}]));
    for (const c of clients) {
      const t0 = Date.now();
      for (const lane of order) {
        const ep = lane.endpoints.get(c.service) as Endpoint;
        try {
          Object.assign(current.get(lane) as Metrics, await c.run(lane, ep, ctx));
        } catch (e) {
          notes.push(`${lane.bridge.name}: ${c.name} pass ${ctx.pass} failed: ${(e as Error).message}`);
        }
      }
      console.log(`bench-clients: pass ${ctx.pass}/${ctx.plan.passes}: ${c.name}: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    }
    for (const l of lanes) passes.get(l)?.push(current.get(l) as Metrics);
  }
  return passes;
}

/** The run's temporary directory, removed on an interrupt too. */
let tmpDir: string | null = null;

/** The TLS part's columns: direct (plain UNIX socket, no TLS) and run.ts's TLS bridges. */
function tlsComparedBridges(): Bridge[] {
  const only = process.env.BRIDGES?.split(',').filter(Boolean);
  const direct = allBridges(SOCKBRIDGE).filter((b) => b.name === 'direct');
  return [...direct, ...tlsBridges(SOCKBRIDGE)].filter((b) => !only || only.includes(b.name));
}

/**
 * redis-benchmark --tls through each TLS bridge, in front of the redis-server
 * already running; its own lanes, started after the plain ones stopped.
 * Results and notes go into `out`.
 */
async function runTls(plan: Plan, redis: Service | undefined, tmp: string, out: { names: string[]; results: Record<string, Metrics>; notes: string[]; raw: Record<string, unknown> }): Promise<void> {
  const bridges = tlsComparedBridges();
  out.names = bridges.map((b) => b.name);
  const skip = (why: string): void => {
    out.notes.push(`redis-benchmark --tls: n/a (${why})`);
  };
  if (!redis) return skip('no redis-server');
  if (!redisBenchmarkHasTls()) return skip(`${REDIS_BENCHMARK} --help lists no --tls: built without TLS`);
  let tls: TlsFiles;
  try {
    tls = makeCertificates(tmp);
  } catch (e) {
    return skip((e as Error).message);
  }
  const lanes: Lane[] = [];
  try {
    for (const b of bridges) {
      try {
        lanes.push(await startLane(b, [redis], plan, tmp, b.name === 'direct' ? null : tls));
      } catch (e) {
        out.notes.push(`${b.name}: n/a (${(e as Error).message})`);
      }
    }
    console.log(`bench-clients: TLS side by side: ${lanes.map((l) => l.bridge.name).join(', ')}`);
    const ctx: ClientContext = { plan, services: new Map([['redis', redis]]), pgBin: '', pass: 0 };
    const passes = await runPasses(lanes, ctx, out.notes, [redisBenchmarkTls]);
    for (const l of lanes) {
      out.results[l.bridge.name] = combine(passes.get(l) ?? []);
      out.raw[`tls-${l.bridge.name}`] = l.raw;
    }
  } finally {
    for (const l of lanes) await stopLane(l);
  }
}

async function main(): Promise<number> {
  const started = new Date();
  const plan = makePlan();
  const which = (process.env.SECTIONS ?? 'plain,tls').split(',').filter(Boolean);
  // `SECTIONS=mirror make bench` reaches here too: run.ts's mirror section has
  // no real-client twin, and an empty run would overwrite clients.md.
  if (!which.includes('plain') && !which.includes('tls')) {
    console.log(`bench-clients: nothing to run for SECTIONS=${which.join(',')} (its parts are plain and tls)`);
    return 0;
  }
  installClients();
  mkdirSync(OUT, { recursive: true });
  const tmp = mkdtempSync(join(os.tmpdir(), 'sockbridge-clients-'));
  tmpDir = tmp;
  chmodSync(tmp, 0o755); // PostgreSQL runs as its own user and must reach its directories
  const notes: string[] = [];
  const bridges = which.includes('plain') ? comparedBridges() : [];
  const results: Record<string, Metrics> = {};
  const raw: Record<string, unknown> = {};
  const tlsOut = { names: [] as string[], results: {} as Record<string, Metrics>, notes: [] as string[], raw };
  let services: Service[] = [];
  const lanes: Lane[] = [];
  console.log(`bench-clients: ${plan.quick ? 'QUICK ' : ''}run, ${plan.passes} pass(es), ${which.join(', ')}, output in ${OUT}`);
  try {
    const up = await startServices(tmp, notes, which.includes('plain'));
    services = up.services;
    if (which.includes('plain')) {
      for (const b of bridges) {
        try {
          lanes.push(await startLane(b, services, plan, tmp));
        } catch (e) {
          notes.push(`${b.name}: n/a (${(e as Error).message})`);
        }
      }
      console.log(`bench-clients: side by side: ${lanes.map((l) => l.bridge.name).join(', ')}; servers: ${services.map((s) => s.name).join(', ')}`);
      const ctx: ClientContext = { plan, services: new Map(services.map((s) => [s.name, s])), pgBin: up.pgBin, pass: 0 };
      const passes = await runPasses(lanes, ctx, notes);
      for (const l of lanes) {
        results[l.bridge.name] = combine(passes.get(l) ?? []);
        raw[l.bridge.name] = l.raw;
      }
      for (const l of lanes.splice(0)) await stopLane(l);
    }
    if (which.includes('tls')) await runTls(plan, services.find((s) => s.name === 'redis'), tmp, tlsOut);
  } finally {
    for (const l of lanes) await stopLane(l);
    for (const s of services) await s.stop();
    rmSync(tmp, { recursive: true, force: true });
    tmpDir = null;
  }
  const seconds = (Date.now() - started.getTime()) / 1000;
  console.log(
    writeReports({
      plan, names: bridges.map((b) => b.name), results, tlsNames: tlsOut.names, tlsResults: tlsOut.results, tlsNotes: tlsOut.notes, notes, started, seconds, raw,
    }),
  );
  return 0;
}

runAsMain('bench-clients', main, () => {
  if (tmpDir) rmSync(tmpDir, { recursive: true, force: true });
});
