// `make bench`: sockbridge against its alternatives, side by side in one run.
//
// Every bridge is started fresh on its own loopback port in front of the same
// test server socket and kept until the end; each workload (bench/bin/load)
// then runs on all bridges back to back, reading each bridge's process-tree
// CPU time and memory from /proc. Absolute numbers on a shared 2-core box are
// noise, so the table's point is the ratios (sockbridge / HAProxy,
// sockbridge / direct), measured seconds apart and, in a full run, the median
// of three passes in alternating bridge order. Every process is stopped by PID.
//
// Three sections, each with its own bridges and table: plain TCP → UNIX;
// TLS (the bridge terminates TLS in front of the same UNIX servers: full and
// resumed handshakes, bulk, ping-pong, idle memory, half-close, a verified
// echo; sockbridge --tls-cert against HAProxy `bind ... ssl crt`, stunnel4
// and socat OPENSSL-LISTEN); and mirror, UNIX → TCP (the plain workloads with
// the client on each bridge's UNIX socket and the test server on a loopback
// port: sockbridge --listen PATH, HAProxy `bind /path`, nginx `listen unix:`,
// socat UNIX-LISTEN, socket-proxyd behind a UNIX socket; direct = the client
// on the TCP server).
//
// QUICK=1 shortens every workload (about 2 minutes per section instead of about 6).
// BRIDGES=a,b,c runs only those columns (for development).
// SECTIONS=plain, tls or mirror (or a list: SECTIONS=plain,mirror) runs only
// those sections (default all three).

import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { allBridges, Bridge, installPeers, isUnixPath, tlsBridges, TlsFiles } from './bridges';
import { basePlan, BasePlan, canConnect, combine, freeFixedPort, freePort, machine, replies, runAsMain, runTool, startLogged, stop, track } from './common';
import { delay, stopTree, treeCpuSeconds, treePssKiB, waitUntil } from './proc';
import { MetricDef, METRICS, Metrics, MIRROR_METRICS, renderMarkdown, renderText, tableRows, TLS_METRICS, Value, verdicts } from './report';
import { makeCertificates, perThreadHandshakes, tlsReplies } from './tls';

const ROOT = resolve(__dirname, '..', '..');
const BENCH = join(ROOT, 'bench');
const OUT = join(BENCH, 'out');
const LOAD = join(BENCH, 'bin', 'load');
const SERVER = join(BENCH, 'bin', 'server');
const SOCKBRIDGE = join(ROOT, 'bin', 'sockbridge');

interface Plan extends BasePlan {
  /** Seconds per ping-pong, bulk and churn workload, per pass. */
  seconds: number;
  /** Seconds per request/response size. */
  reqSeconds: number;
  idleConns: number;
  verifyBytes: number;
  /** Ping-pong message size in bytes. */
  pingSize: number;
  /** TLS: seconds per handshake workload (full, resumed). */
  hsSeconds: number;
  /** TLS: load client threads for handshakes and the 32-connection ping-pong. */
  tlsWorkers: number;
  /** TLS: connections in flight per handshake thread. */
  tlsConnsPerWorker: number;
  /** TLS: the version the load client pins (1.3 unless TLS_VERSION=1.2). */
  tlsVersion: string;
}

function makePlan(): Plan {
  const base = basePlan();
  return {
    ...base, seconds: 2, reqSeconds: 1, idleConns: base.quick ? 500 : 2000, verifyBytes: (base.quick ? 32 : 256) * 1024 * 1024, pingSize: 64,
    hsSeconds: 3, tlsWorkers: base.threads, tlsConnsPerWorker: 8, tlsVersion: process.env.TLS_VERSION === '1.2' ? '1.2' : '1.3',
  };
}

// ---- the load client ---------------------------------------------------------------

type Json = Record<string, unknown>;

function parseLines(text: string): Json[] {
  const out: Json[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Json);
    } catch {
      // not one of ours
    }
  }
  return out;
}

function str(j: Json | undefined, key: string): string | null {
  const v = j?.[key];
  return typeof v === 'string' ? v : null;
}

function num(j: Json | undefined, key: string): Value {
  const v = j?.[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : typeof v === 'boolean' ? Number(v) : null;
}

/** Run bench/bin/load to completion (killed after timeoutMs); its last JSON line. */
async function runLoad(args: string[], timeoutMs: number): Promise<Json> {
  const { stdout, stderr } = await runTool(LOAD, args, timeoutMs);
  const lines = parseLines(stdout);
  if (lines.length > 0) return lines[lines.length - 1];
  throw new Error(`load ${args[0]} gave no result: ${stderr.trim() || 'killed after timeout'}`);
}

// ---- the test server behind every bridge ------------------------------------------

type ServerMode = 'echo' | 'sink' | 'source';

/**
 * bench/bin/server on one fixed address, a UNIX path or 127.0.0.1:PORT (the
 * mirror section); restarted in another mode when a workload needs it.
 */
class TestServer {
  private child: ChildProcess | null = null;
  private mode: ServerMode | null = null;
  constructor(readonly address: string) {}

  async use(mode: ServerMode): Promise<void> {
    if (this.mode === mode) return;
    await this.stop();
    this.child = track(spawn(SERVER, [mode, this.address], { stdio: ['ignore', 'ignore', 'inherit'] }));
    if (!(await waitUntil(() => canConnect(this.address), 5000))) {
      await this.stop(); // the next lane tries again instead of taking it for running
      throw new Error(`test server (${mode}) did not start`);
    }
    this.mode = mode;
  }

  async stop(): Promise<void> {
    await stop(this.child);
    this.child = null;
    this.mode = null;
  }
}

/** One 16-byte echo round trip through the bridge: it accepts and relays. */
function echoesOnce(address: string, timeoutMs: number): Promise<boolean> {
  const msg = 'ready-check-0123';
  return replies(address, msg, (got) => got.toString() === msg, timeoutMs);
}

/** The same over TLS, the certificate verified: it also terminates TLS. */
function tlsEchoesOnce(address: string, ca: string, timeoutMs: number): Promise<boolean> {
  const msg = 'ready-check-0123';
  return tlsReplies(address, ca, msg, (got) => got.toString() === msg, timeoutMs);
}

// ---- one bridge, one workload ------------------------------------------------------

/** One bridge, started once and kept for the whole run. */
interface Lane {
  bridge: Bridge;
  plan: Plan;
  server: TestServer;
  child: ChildProcess | null;
  /** What the load client connects to: the bridge's listen address, or for "direct" the test server's. */
  address: string;
  /** The TLS section: the certificate the client verifies; null for plain TCP. */
  tls: TlsFiles | null;
  /** Root PID of the bridge's process tree; null for "direct". */
  pid: number | null;
  /** Every load result, for the JSON file. */
  raw: Json[];
  /** Seconds spent on this bridge's workloads. */
  seconds: number;
}

type Workload = (lane: Lane, m: Metrics) => Promise<void>;

/** The load client's mode: the TLS twin ("tls-pingpong") on a TLS lane. */
const mode = (lane: Lane, name: string): string => (lane.tls ? `tls-${name}` : name);

/** What every load run on this lane gets besides its workload's options. */
function laneArgs(lane: Lane): string[] {
  const args = ['--target', lane.address];
  // TLS: the client verifies the certificate and the address it connects to.
  if (lane.tls) args.push('--ca', lane.tls.ca, '--tls-version', lane.plan.tlsVersion);
  return args;
}

/** Run the load client and the bridge's CPU seconds spent meanwhile (null for direct). */
async function measured(lane: Lane, args: string[], timeoutMs: number): Promise<{ res: Json; cpu: Value }> {
  const before = lane.pid === null ? 0 : treeCpuSeconds(lane.pid);
  const res = await runLoad([...args, ...laneArgs(lane)], timeoutMs);
  const cpu = lane.pid === null ? null : treeCpuSeconds(lane.pid) - before;
  lane.raw.push({ ...res, bridge_cpu_s: cpu });
  return { res, cpu };
}

const limit = (seconds: number): number => (seconds + 60) * 1000;

async function halfClose(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  const { res } = await measured(lane, [mode(lane, 'halfclose'), '--size', '16384', '--trials', '10'], limit(10));
  m.halfclose_ok = num(res, 'ok');
}

async function pingPong1(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  const { seconds, pingSize } = lane.plan;
  const { res } = await measured(lane, [mode(lane, 'pingpong'), '--conns', '1', '--size', `${pingSize}`, '--duration', `${seconds}`], limit(seconds));
  m.pp1_p50_us = num(res, 'p50_us');
  m.pp1_p99_us = num(res, 'p99_us');
  m.pp1_rtps = num(res, 'rt_per_s');
}

async function pingPong32(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  const { seconds, pingSize } = lane.plan;
  // TLS: the client's threads share the connections (its records cost it CPU too).
  const workers = lane.tls ? ['--workers', `${lane.plan.tlsWorkers}`] : [];
  const { res, cpu } = await measured(lane, [mode(lane, 'pingpong'), '--conns', '32', '--size', `${pingSize}`, '--duration', `${seconds}`, ...workers], limit(seconds));
  m.pp32_rtps = num(res, 'rt_per_s');
  m.pp32_p99_us = num(res, 'p99_us');
  const rts = num(res, 'all_round_trips'); // CPU was measured over the warm-up too
  m.cpu_us_per_rt = cpu === null || !rts ? null : (cpu * 1e6) / rts;
}

// Bulk CPU and bytes are kept ("_" keys: in the JSON, not in the table) so
// CPU s per GiB can be derived over both directions once both ran.
/** One way for the whole duration: up = client → program (sink), down = program → client (source). */
async function bulk(lane: Lane, m: Metrics, way: 'up' | 'down'): Promise<void> {
  await lane.server.use(way === 'up' ? 'sink' : 'source');
  const { res, cpu } = await measured(lane, [mode(lane, `bulk-${way}`), '--duration', `${lane.plan.seconds}`], limit(lane.plan.seconds));
  m[`bulk_${way}_mbps`] = num(res, 'mb_per_s');
  m[`_bulk_${way}_bytes`] = num(res, 'bytes');
  m[`_bulk_${way}_cpu_s`] = cpu;
}
const bulkUp = (lane: Lane, m: Metrics): Promise<void> => bulk(lane, m, 'up');
const bulkDown = (lane: Lane, m: Metrics): Promise<void> => bulk(lane, m, 'down');

const RR_SIZES: [string, number][] = [['rr_16k_mbps', 16384], ['rr_64k_mbps', 65536], ['rr_256k_mbps', 262144], ['rr_1m_mbps', 1048576]];

async function reqResp(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  for (const [key, size] of RR_SIZES) {
    const { res } = await measured(lane, ['reqresp', '--size', `${size}`, '--duration', `${lane.plan.reqSeconds}`], limit(lane.plan.reqSeconds));
    // A size that failed counts as 0 MB/s, so the worst case shows it.
    m[key] = num(res, 'errors') ? 0 : num(res, 'mb_per_s');
  }
}

async function churn(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  const { seconds } = lane.plan;
  const { res, cpu } = await measured(lane, ['churn', '--workers', '16', '--duration', `${seconds}`], limit(seconds));
  m.churn_cps = num(res, 'conn_per_s');
  m.churn_errors = num(res, 'errors');
  const conns = num(res, 'conns');
  m.cpu_us_per_conn = cpu === null || !conns ? null : (cpu * 1e6) / conns;
}

/**
 * Memory per idle connection: the tree's PSS with N connections held open,
 * minus its PSS just before (the idle process), divided by N.
 */
async function idle(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  const n = lane.plan.idleConns;
  const base = lane.pid === null ? null : treePssKiB(lane.pid);
  const child = track(spawn(LOAD, [mode(lane, 'idle'), '--conns', `${n}`, '--hold-max', '120', ...laneArgs(lane)], { stdio: ['pipe', 'pipe', 'inherit'] }));
  let stdout = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  try {
    const ready = await waitUntil(() => parseLines(stdout).some((j) => j.phase === 'ready'), 120_000, 50);
    if (!ready) throw new Error('connections were not opened within 120 s');
    // Not a readiness wait: give lazily allocated buffers and GC a moment to
    // settle so the figure is the steady idle cost, not a transient peak.
    await delay(1000);
    const held = lane.pid === null ? null : treePssKiB(lane.pid);
    m.idle_kib_per_conn = base === null || held === null ? null : (held - base) / n;
    child.stdin?.end(); // the client now checks every connection still echoes
    await Promise.race([exited, delay(30_000)]);
  } finally {
    if (child.exitCode === null) await stopTree(child);
  }
  const lines = parseLines(stdout);
  const done = lines.find((j) => j.phase === 'done');
  const ready = lines.find((j) => j.phase === 'ready');
  lane.raw.push({ ...(done ?? ready ?? {}), pss_base_kib: base, idle_kib_per_conn: m.idle_kib_per_conn });
  const f = (num(done, 'failures') ?? NaN) + (num(done, 'open_failures') ?? NaN);
  m.idle_failures = Number.isNaN(f) ? null : f;
}

async function verify(lane: Lane, m: Metrics): Promise<void> {
  await lane.server.use('echo');
  const { res } = await measured(lane, [mode(lane, 'verify'), '--bytes', `${lane.plan.verifyBytes}`], limit(60 + lane.plan.verifyBytes / 1e7));
  const bad = (num(res, 'mismatched') ?? NaN) + (num(res, 'missing') ?? NaN);
  m.verify_bad_bytes = Number.isNaN(bad) ? null : bad;
}

/**
 * TLS handshakes as fast as tlsWorkers threads × tlsConnsPerWorker connections
 * in flight allow: each connects, shakes hands, echoes 16 bytes and closes
 * (close_notify). Resumed: each connection offers the newest ticket its slot
 * received on its previous connection (a ticket is offered once, as RFC 8446
 * C.4 asks of clients and OpenSSL's client does), so a server that issues no
 * new ticket on a resumption gets a full handshake every other time.
 */
async function handshakes(lane: Lane, m: Metrics, resume: boolean): Promise<void> {
  await lane.server.use('echo');
  const { hsSeconds, tlsWorkers, tlsConnsPerWorker } = lane.plan;
  const args = [resume ? 'tls-resume' : 'tls-handshake', '--workers', `${tlsWorkers}`, '--conns', `${tlsConnsPerWorker}`, '--duration', `${hsSeconds}`];
  const { res, cpu } = await measured(lane, args, limit(hsSeconds));
  const hs = num(res, 'handshakes');
  const perHs = cpu === null || !hs ? null : (cpu * 1e6) / hs;
  const errors = num(res, 'errors');
  if (resume) {
    m.hs_resume_per_s = num(res, 'hs_per_s');
    const resumed = num(res, 'resumed');
    m.hs_resumed_pct = resumed === null || !hs ? null : (100 * resumed) / hs;
    m.cpu_us_per_resume_hs = perHs;
    m.hs_resume_errors = errors;
  } else {
    m.hs_full_per_s = num(res, 'hs_per_s');
    m.hs_full_p50_us = num(res, 'hs_p50_us');
    m.cpu_us_per_full_hs = perHs;
    m.hs_full_errors = errors;
    // The client's own CPU per handshake ("_": JSON only): it shares the machine.
    const clientCpu = num(res, 'client_cpu_s');
    m._client_us_per_full_hs = clientCpu === null || !hs ? null : (clientCpu * 1e6) / hs;
  }
}
async function fullHandshakes(lane: Lane, m: Metrics): Promise<void> {
  return handshakes(lane, m, false);
}
async function resumedHandshakes(lane: Lane, m: Metrics): Promise<void> {
  return handshakes(lane, m, true);
}

/** One table: its bridges and workloads, run side by side. */
interface Section {
  name: 'plain' | 'tls' | 'mirror';
  /**
   * Which way it crosses: clients on a loopback port, the test server on a
   * UNIX socket (plain, TLS), or clients on a UNIX socket in the lane's
   * directory, the test server on a loopback port (mirror).
   */
  clients: 'tcp' | 'unix';
  bridges: Bridge[];
  /** Run once, before anything else: the bridges are fresh, so idle's baseline is the idle process. */
  first: Workload[];
  /** Run plan.passes times (alternating the bridge order); the median is reported. */
  repeated: Workload[];
  last: Workload[];
  metrics: MetricDef[];
  /** The column of the second ratio (direct), or null. */
  floor: string | null;
}

function sections(only: string[] | undefined, which: string[]): Section[] {
  const pick = (bs: Bridge[]): Bridge[] => bs.filter((b) => !only || only.includes(b.name));
  const plainWorkloads = { first: [idle, halfClose], repeated: [pingPong1, pingPong32, bulkUp, bulkDown, reqResp, churn], last: [verify] };
  const all: Section[] = [
    { name: 'plain', clients: 'tcp', bridges: pick(allBridges(SOCKBRIDGE)), metrics: METRICS, floor: 'direct', ...plainWorkloads },
    {
      name: 'tls', clients: 'tcp', bridges: pick(tlsBridges(SOCKBRIDGE)), metrics: TLS_METRICS, floor: null,
      first: [idle, halfClose], repeated: [fullHandshakes, resumedHandshakes, pingPong1, pingPong32, bulkUp, bulkDown], last: [verify],
    },
    // The same bridges and workloads as plain, the other way round.
    { name: 'mirror', clients: 'unix', bridges: pick(allBridges(SOCKBRIDGE)), metrics: MIRROR_METRICS, floor: 'direct', ...plainWorkloads },
  ];
  return all.filter((s) => which.includes(s.name));
}

/** The section's prefix for a bridge's files ("tls-haproxy"); none for plain, as before there were sections. */
const laneLabel = (section: Section, bridge: Bridge): string => (section.name === 'plain' ? bridge.name : `${section.name}-${bridge.name}`);

async function startLane(section: Section, bridge: Bridge, plan: Plan, server: TestServer, tmp: string, tls: TlsFiles | null): Promise<Lane> {
  await server.use('echo');
  const label = laneLabel(section, bridge);
  const dir = join(tmp, label);
  const listen = section.clients === 'unix' ? join(dir, 'bridge.sock') : `127.0.0.1:${await freePort()}`;
  const stderrFile = join(OUT, `${label}.stderr.log`);
  const ctx = { listen, target: server.address, dir, threads: plan.threads, stderrFile, tls: tls ?? undefined };
  const cmd = bridge.command(ctx);
  let child: ChildProcess | null = null;
  if (cmd) {
    mkdirSync(ctx.dir, { recursive: true });
    child = startLogged(cmd, stderrFile, { cwd: ctx.dir });
  }
  const lane: Lane = { bridge, plan, server, child, address: cmd ? listen : server.address, tls, pid: child?.pid ?? null, raw: [], seconds: 0 };
  // Ready = it accepts and relays one echo (socket-proxyd only starts then).
  const ready = (): Promise<boolean> => (tls ? tlsEchoesOnce(lane.address, tls.ca, 1000) : echoesOnce(lane.address, 1000));
  if (!(await waitUntil(ready, 15_000, 50))) {
    await stop(child);
    throw new Error(`did not relay within 15 s (see ${stderrFile})`);
  }
  return lane;
}

/** One workload on one bridge; a failure costs that cell, not the run. */
async function runWorkload(lane: Lane, w: Workload, m: Metrics): Promise<void> {
  const t0 = Date.now();
  try {
    await w(lane, m);
  } catch (e) {
    console.log(`bench: ${lane.bridge.name}: ${w.name} failed: ${(e as Error).message}`);
  }
  lane.seconds += (Date.now() - t0) / 1000;
}

/** Metrics computed from others once everything ran. */
function derive(m: Metrics): void {
  const rr = RR_SIZES.map(([key]) => m[key]);
  if (rr.some((v) => v !== undefined)) m.rr_worst_mbps = rr.some((v) => v === null || v === undefined) ? null : Math.min(...(rr as number[]));
  if (m.hs_full_errors !== undefined || m.hs_resume_errors !== undefined) {
    m.hs_errors = m.hs_full_errors == null || m.hs_resume_errors == null ? null : m.hs_full_errors + m.hs_resume_errors;
  }
  const [upB, downB, upC, downC] = [m._bulk_up_bytes, m._bulk_down_bytes, m._bulk_up_cpu_s, m._bulk_down_cpu_s];
  const gib = ((upB ?? 0) + (downB ?? 0)) / 2 ** 30;
  m.cpu_s_per_gib = upC == null || downC == null || upB == null || downB == null || gib === 0 ? null : (upC + downC) / gib;
}

// ---- reporting ---------------------------------------------------------------------

function commandLine(): string {
  const env = ['QUICK', 'SECTIONS', 'BRIDGES', 'TLS_VERSION'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('');
  if (process.env.MAKELEVEL) return `${env}make bench`;
  return `${env}node ${process.argv.slice(1).join(' ')}`;
}

interface Column {
  status: 'ok' | 'n/a';
  reason?: string;
  seconds?: number;
  metrics: Metrics;
  raw: Json[];
}

/** One section's outcome: its columns in order, and notes for under its table. */
interface SectionResult {
  section: Section;
  names: string[];
  cols: Record<string, Column>;
  notes: string[];
}

function judgedSummary(r: SectionResult): { rows: string[][]; summary: string; results: Record<string, Metrics> } {
  const results: Record<string, Metrics> = {};
  for (const n of r.names) results[n] = r.cols[n].metrics;
  const rows = tableRows(r.names, results, r.section.metrics, r.section.floor);
  const judged = verdicts(results, r.section.metrics).filter((v) => v.result !== 'n/a');
  const failed = judged.filter((v) => v.result === 'FAIL').map((v) => v.metric);
  const what = { plain: 'targets', tls: 'TLS targets', mirror: 'targets in the mirror direction' }[r.section.name];
  const summary =
    `sockbridge meets ${judged.length - failed.length} of ${judged.length} judged ${what}` + (failed.length > 0 ? `; FAIL: ${failed.join(', ')}` : '');
  return { rows, summary, results };
}

function naNotes(r: SectionResult): string[] {
  return r.names.filter((n) => r.cols[n].status === 'n/a').map((n) => `- ${n}: n/a (${r.cols[n].reason ?? 'not run'})`);
}

/** What the TLS table needs said beside its numbers: what was negotiated, resumption, the client's cost, sockbridge's threads. */
function tlsNotes(r: SectionResult, plan: Plan): string[] {
  const notes: string[] = [];
  const negotiated: string[] = [];
  const clientCost: string[] = [];
  for (const n of r.names) {
    const col = r.cols[n];
    if (col.status !== 'ok') continue;
    const first = col.raw.find((j) => typeof j.version === 'string');
    if (first) negotiated.push(`${n} ${str(first, 'version')} ${str(first, 'cipher')} ${str(first, 'group')}`);
    const c = col.metrics._client_us_per_full_hs;
    if (c != null) clientCost.push(`${n} ${c.toFixed(0)}`);
  }
  notes.push(`- negotiated (load client pins TLS ${plan.tlsVersion}): ${negotiated.join('; ') || 'n/a'}`);
  if (clientCost.length > 0) {
    notes.push(`- the load client's own CPU µs per full handshake (it shares the ${plan.threads} CPUs with the bridge): ${clientCost.join(', ')}`);
  }
  return [...notes, ...r.notes];
}

function sectionPlanText(s: Section, plan: Plan): string {
  const plain =
    `${plan.passes} pass(es) of ${plan.seconds} s per ping-pong/bulk/churn workload and ${plan.reqSeconds} s per request/response size, ` +
    `${plan.pingSize} B ping-pong messages, ${plan.idleConns} idle connections, ` +
    `${plan.verifyBytes / 2 ** 20} MiB verified; HAProxy nbthread and nginx worker_processes = ${plan.threads}`;
  if (s.name === 'plain') return plain;
  if (s.name === 'mirror') {
    return (
      `the plain workloads the other way: the load client on each bridge's UNIX socket (bridge.sock in its directory, made by the bridge), ` +
      `the bridge connecting to the test server on a loopback port (which sets TCP_NODELAY on its side); direct = the client on that TCP port itself; ${plain}`
    );
  }
  return (
    `${plan.passes} pass(es) of ${plan.hsSeconds} s per handshake workload (${plan.tlsWorkers} client threads × ${plan.tlsConnsPerWorker} connections in flight; ` +
    `connect, handshake, 16 B echo, close_notify, close) and ${plan.seconds} s per ping-pong/bulk workload (32-connection ping-pong on ${plan.tlsWorkers} client threads), ` +
    `${plan.pingSize} B ping-pong messages, ${plan.idleConns} idle TLS connections, ${plan.verifyBytes / 2 ** 20} MiB verified; ` +
    `TLS ${plan.tlsVersion} pinned by the client, which verifies the certificate (P-256 ECDSA, self-signed, SAN IP:127.0.0.1); HAProxy nbthread = ${plan.threads}`
  );
}

/** The headings of the sections after the plain one (which comes first, under the report's title). */
const SECTION_TITLES: Record<Exclude<Section['name'], 'plain'>, string> = { tls: 'TLS', mirror: 'Mirror: UNIX → TCP' };

function writeReports(plan: Plan, done: SectionResult[], started: Date, seconds: number): string {
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const md = [
    `# sockbridge benchmark`,
    '',
    `- date: ${started.toISOString()} (${seconds.toFixed(0)} s)`,
    `- machine: ${machine()}`,
    `- command: \`${commandLine()}\``,
    `- method: every bridge started fresh, each workload run on all of them back to back; CPU (user+sys) and memory (PSS) are the bridge's whole process tree; direct = the client on the test server itself (its UNIX socket; in the mirror section its TCP port), no bridge: CPU and memory n/a`,
    `- PASS/FAIL: sockbridge (default options) against HAProxy in the same run`,
  ];
  const text: string[] = [];
  const json: Record<string, unknown> = { date: started.toISOString(), seconds, machine: machine(), command: commandLine(), plan };
  for (const r of done) {
    const { rows, summary, results } = judgedSummary(r);
    const notes = [...naNotes(r), ...(r.section.name === 'tls' ? tlsNotes(r, plan) : r.notes)];
    const name = r.section.name;
    if (name === 'plain') {
      md.push(`- plan: ${sectionPlanText(r.section, plan)}`, ...notes, '', renderMarkdown(rows), '', summary, '');
      json.bridges = r.cols;
      json.verdicts = verdicts(results, r.section.metrics);
    } else {
      md.push('', `## ${SECTION_TITLES[name]}`, '', `- plan: ${sectionPlanText(r.section, plan)}`, ...notes, '', renderMarkdown(rows), '', summary, '');
      json[name] = { bridges: r.cols, verdicts: verdicts(results, r.section.metrics), notes };
    }
    text.push(...(name === 'plain' ? [] : ['', `${SECTION_TITLES[name]}:`]), renderText(rows), ...notes, '', summary);
  }
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'latest.md'), `${md.join('\n')}\n`);
  const file = join(OUT, `results-${stamp}.json`);
  writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  return [...text, `bench: wrote ${file} and ${join(OUT, 'latest.md')}`].join('\n');
}

// ---- main --------------------------------------------------------------------------

function buildHelpers(): void {
  const r = spawnSync('make', ['-s', '-C', BENCH], { stdio: 'inherit', timeout: 120_000 });
  if (r.status !== 0) throw new Error('building bench/bin/server and bench/bin/load failed');
}

/**
 * The test server a section's bridges connect to: plain and TLS share one on
 * a UNIX socket (as before the mirror section existed); mirror gets one on a
 * loopback port picked as it starts (one picked earlier might since be taken),
 * outside the ephemeral range (see freeFixedPort). The one no longer needed is stopped.
 */
async function serverFor(section: Section, current: TestServer | null, tmp: string): Promise<TestServer> {
  const onUnix = section.clients === 'tcp';
  if (current && isUnixPath(current.address) === onUnix) return current;
  await current?.stop();
  return new TestServer(onUnix ? join(tmp, 'target.sock') : `127.0.0.1:${await freeFixedPort()}`);
}

/** The run's temporary directory, removed on an interrupt too. */
let tmpDir: string | null = null;

/**
 * Every bridge of the section is started fresh up front and kept: each
 * workload then runs on all of them back to back, so the sockbridge and
 * HAProxy figures of a row are measured seconds apart, not minutes, on this
 * shared machine. Stopped by PID at the end of the section.
 */
async function runSection(section: Section, plan: Plan, server: TestServer, tmp: string): Promise<SectionResult> {
  const cols: Record<string, Column> = {};
  const notes: string[] = [];
  const lanes: Lane[] = [];
  const names = section.bridges.map((b) => b.name);
  let tls: TlsFiles | null = null;
  if (section.name === 'tls') {
    try {
      tls = makeCertificates(tmp);
    } catch (e) {
      for (const n of names) cols[n] = { status: 'n/a', reason: (e as Error).message, metrics: {}, raw: [] };
      return { section, names, cols, notes };
    }
  }
  const tag = section.name === 'plain' ? '' : `${section.name}: `;
  try {
    for (const b of section.bridges) {
      const why = b.unavailable();
      try {
        if (why) throw new Error(why);
        lanes.push(await startLane(section, b, plan, server, tmp, tls));
      } catch (e) {
        const reason = (e as Error).message;
        console.log(`bench: ${tag}${b.name}: n/a (${reason})`);
        cols[b.name] = { status: 'n/a', reason, metrics: {}, raw: [] };
      }
    }
    console.log(`bench: ${tag}side by side: ${lanes.map((l) => l.bridge.name).join(', ')}`);
    const once = new Map<Lane, Metrics>(lanes.map((l) => [l, {}]));
    const passes = new Map<Lane, Metrics[]>(lanes.map((l) => [l, []]));
    const runAll = async (label: string, ws: Workload[], order: Lane[], into: (l: Lane) => Metrics): Promise<void> => {
      for (const w of ws) {
        const t0 = Date.now();
        for (const lane of order) await runWorkload(lane, w, into(lane));
        console.log(`bench: ${tag}${label}${w.name}: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      }
    };
    await runAll('', section.first, lanes, (l) => once.get(l) as Metrics);
    for (let p = 0; p < plan.passes; p++) {
      // Alternate the order, so no bridge always runs right after the same neighbour.
      const order = p % 2 === 1 ? [...lanes].reverse() : lanes;
      const current = new Map<Lane, Metrics>(lanes.map((l) => [l, {}]));
      await runAll(`pass ${p + 1}/${plan.passes}: `, section.repeated, order, (l) => current.get(l) as Metrics);
      for (const l of lanes) passes.get(l)?.push(current.get(l) as Metrics);
    }
    await runAll('', section.last, lanes, (l) => once.get(l) as Metrics);
    for (const l of lanes) {
      const metrics = { ...combine(passes.get(l) ?? []), ...once.get(l) };
      derive(metrics);
      cols[l.bridge.name] = { status: 'ok', seconds: l.seconds, metrics, raw: l.raw };
      // How the relay threads shared the handshakes (sockbridge's status, over the whole section).
      if (tls && l.bridge.name.startsWith('sockbridge')) {
        const spread = perThreadHandshakes(SOCKBRIDGE, join(tmp, `tls-${l.bridge.name}`, 'bridge.ctl'));
        l.raw.push({ status_per_thread_handshakes: spread });
        if (spread && spread.length > 0) notes.push(`- ${l.bridge.name}: TLS handshakes per relay thread (status): ${spread.join(' / ')}`);
      }
    }
  } finally {
    for (const l of lanes) await stop(l.child);
  }
  return { section, names, cols, notes };
}

async function main(): Promise<number> {
  const started = new Date();
  const plan = makePlan();
  buildHelpers();
  installPeers();
  mkdirSync(OUT, { recursive: true });
  const only = process.env.BRIDGES?.split(',').filter(Boolean);
  const which = (process.env.SECTIONS ?? 'plain,tls,mirror').split(',').filter(Boolean);
  const tmp = mkdtempSync(join(os.tmpdir(), 'sockbridge-bench-'));
  tmpDir = tmp;
  let server: TestServer | null = null;
  const done: SectionResult[] = [];
  console.log(`bench: ${plan.quick ? 'QUICK ' : ''}run, ${plan.passes} pass(es), sections ${which.join(', ')}, output in ${OUT}`);
  try {
    for (const section of sections(only, which)) {
      server = await serverFor(section, server, tmp);
      done.push(await runSection(section, plan, server, tmp));
    }
  } finally {
    await server?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
  const seconds = (Date.now() - started.getTime()) / 1000;
  console.log(writeReports(plan, done, started, seconds));
  return 0;
}

runAsMain('bench', main, () => {
  if (tmpDir) rmSync(tmpDir, { recursive: true, force: true });
});
