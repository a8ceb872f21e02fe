// What `sockbridge status` and the Prometheus metrics report: one snapshot of
// the whole service, in a stable JSON shape, a table for people, and the
// Prometheus text format.

import type { BridgeSnapshot, RelayInfo, WhoReport } from '../bridge';
import type { SourceTableInfo, ThreadCounts } from '../session/contract';
import { DENIED_REASONS, DeniedReason } from './stats';
import type { Target, TargetPool } from '../targets/pool';
import type { ListenerInfo } from '../listen/listeners';
import { Config, formatValue, OPTIONS } from '../options';

/** The stable shape of `sockbridge status --json` (documented in README; add fields, never rename). */
export interface StatusReport {
  version: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  /** Processes serving: always 1 since the native relay (kept for scripts that read it). */
  workers: number;
  /** The first target (with several, each is in `targets`). */
  target: TargetRow;
  /** Every target: configured ones (regular first, then backups), and removed ones with sessions left. */
  targets: (TargetRow & TargetCounters)[];
  /** `denied` counts every refusal (also a previous process's, after a restart); `deniedBy` this process's, by reason. */
  sessions: { active: number; waiting: number; total: number; failed: number; denied: number; deniedBy: Record<DeniedReason, number> };
  bytes: { in: number; out: number };
  config: Record<string, string>;
  /**
   * Where clients connect, and how they are accepted and read: 'native' (the
   * data plane's threads), or with the TypeScript relay 'onread' (its fast
   * path: sockbridge's own accept, reading into its buffers) or 'stream'
   * (Node's own, when this Node lacks the internal the fast path needs).
   */
  listeners: ListenerInfo[];
  /** What moves the bytes: 'native' (with its thread count and what each thread did) or 'js'; `why` says why js runs, "" otherwise. */
  relay: RelayInfo & { perThread: ThreadCounts[] };
  /** TLS as it is in force now (a reload changes it for new clients): on or off, client certificates required or not. */
  /** `crls`: each CRL in force (issuer, next update) and whether it is past its next update; `crlProblem`: what that means now ("" when none is). */
  tls: { enabled: boolean; clientCertificates: boolean; cert: string; crls?: { crl: string; stale: boolean }[]; crlProblem?: string };
  /** Whether a TCP listener beyond loopback has neither client certificates nor an allow list (listen/exposure.ts), and why, or what closes it. */
  exposure: { openToAll: boolean; why: string };
  /** The per-source limits' table: entries, sources with a session open, and the most it may hold now; null when no limit applies (or the relay keeps none). */
  sources: SourceTableInfo | null;
}

export interface TargetRow {
  path: string;
  state: 'INIT' | 'UP' | 'DOWN';
  stateSince: string;
  secondsInState: number;
  lastCheck: { ok: boolean; detail: string; at: string } | null;
}

export interface TargetCounters {
  /** What path names: a UNIX socket, an abstract one (@name), or TCP (host:port). */
  kind: 'unix' | 'abstract' | 'tcp';
  /** A TCP target's address now (its name resolved), null for the others or while unresolved. */
  address: string | null;
  role: 'regular' | 'backup';
  /** `sockbridge drain`: no new sessions. */
  drained: boolean;
  /** Still configured (false: removed by a reload or gone from --target-dir, its sessions finishing). */
  current: boolean;
  active: number;
  total: number;
  failed: number;
}

function targetRow(t: Target, now: number): TargetRow & TargetCounters {
  return {
    path: t.path, state: t.state, stateSince: new Date(t.stateSince).toISOString(), secondsInState: Math.round((now - t.stateSince) / 1000),
    lastCheck: t.lastCheck ? { ok: t.lastCheck.ok, detail: t.lastCheck.detail, at: new Date(t.lastCheck.at).toISOString() } : null,
    kind: t.endpoint.kind, address: t.endpoint.kind === 'tcp' ? t.address ?? null : null,
    role: t.role, drained: t.drained, current: t.current, active: t.active, total: t.total, failed: t.failed,
  };
}

export function buildReport(opts: {
  version: string;
  startedAt: number;
  targets: Pick<TargetPool, 'all' | 'describe'>;
  totals: BridgeSnapshot;
  cfg: Config;
  listeners: ListenerInfo[];
  relay: StatusReport['relay'];
  tls: StatusReport['tls'];
  who?: WhoReport;
}): StatusReport {
  const now = Date.now();
  const { totals, cfg } = opts;
  const targets = opts.targets.all.map((t) => targetRow(t, now));
  const first = targets[0];
  const config: Record<string, string> = {};
  for (const o of OPTIONS) config[o.name] = formatValue(o, cfg);
  return {
    version: opts.version,
    pid: process.pid,
    startedAt: new Date(opts.startedAt).toISOString(),
    uptimeSeconds: Math.round((now - opts.startedAt) / 1000),
    workers: 1,
    // (A --target-dir without sockets yet has no first target: the pattern, nothing to check.)
    target: first
      ? { path: first.path, state: first.state, stateSince: first.stateSince, secondsInState: first.secondsInState, lastCheck: first.lastCheck }
      : { path: opts.targets.describe(), state: 'DOWN', stateSince: new Date(opts.startedAt).toISOString(), secondsInState: Math.round((now - opts.startedAt) / 1000), lastCheck: null },
    targets,
    sessions: {
      active: totals.active, waiting: totals.waiting, total: totals.total, failed: totals.failed, denied: totals.denied,
      deniedBy: opts.who?.deniedBy ?? { access: 0, tls: 0, identity: 0, uid: 0, concurrent: 0, rate: 0, proxy: 0 },
    },
    bytes: { in: totals.bytesIn, out: totals.bytesOut },
    config,
    listeners: opts.listeners,
    relay: opts.relay,
    tls: opts.tls,
    exposure: opts.who?.exposure ?? { openToAll: false, why: 'unknown' },
    sources: opts.who?.sources ?? null,
  };
}

/** "concurrent 3, rate 12" for the reasons with refusals; "" when none. */
function refusedBy(r: StatusReport): string {
  return DENIED_REASONS.filter((k) => r.sessions.deniedBy[k] > 0).map((k) => `${k} ${r.sessions.deniedBy[k]}`).join(', ');
}

function duration(seconds: number): string {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return d > 0 ? `${d}d ${h}h ${m}m` : h > 0 ? `${h}h ${m}m ${s}s` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}

/** The human form: aligned "name  value" rows. */
export function renderStatus(r: StatusReport): string {
  const check = r.target.lastCheck ? `${r.target.lastCheck.ok ? 'ok' : 'failed'} (${r.target.lastCheck.detail}) at ${r.target.lastCheck.at}` : 'none yet';
  const head: [string, string][] = [
    ['target', r.target.path],
    ['state', `${r.target.state} for ${duration(r.target.secondsInState)}`],
    ['last check', check],
    ['sessions', `${r.sessions.active} active, ${r.sessions.waiting} waiting, ${r.sessions.total} served, ${r.sessions.failed} failed, ${r.sessions.denied} refused`],
    ['bytes', `${r.bytes.in} in (client → target), ${r.bytes.out} out`],
    ['relay', r.relay.kind === 'native' ? `native, ${r.relay.threads} threads` : `js (${r.relay.why})`],
    ['tls', r.tls.enabled ? `on (${r.tls.cert})${r.tls.clientCertificates ? ', client certificates required' : ''}` : 'off'],
    ...(r.tls.crls ?? []).map((c): [string, string] => ['crl', `${c.crl}${c.stale ? ' — STALE' : ''}`]),
    ...(r.tls.crlProblem ? [['crl problem', r.tls.crlProblem] as [string, string]] : []),
    ['exposure', r.exposure.openToAll ? `OPEN TO ALL: ${r.exposure.why}` : `closed: ${r.exposure.why}`],
    ...(refusedBy(r) ? [['refused by', refusedBy(r)] as [string, string]] : []),
    ...(r.sources ? [['sources', `${r.sources.tracked} tracked (${r.sources.live} with sessions open), at most ${r.sources.bound} now`] as [string, string]] : []),
    ['uptime', `${duration(r.uptimeSeconds)} (pid ${r.pid}, sockbridge ${r.version})`],
  ];
  const config = Object.entries(r.config).map(([k, v]): [string, string] => [`  ${k}`, v]);
  // One row per target, as HAProxy's "show stat", when there are several.
  const several = r.targets.length > 1 || r.targets.some((t) => t.role === 'backup' || !t.current);
  const targets = several ? r.targets.map((t): [string, string] => [`  ${t.path}`, [
    `${t.state}${t.drained ? ' (drained)' : ''}${t.role === 'backup' ? ' backup' : ''}${t.current ? '' : ' (removed)'} for ${duration(t.secondsInState)}`,
    `${t.active} active, ${t.total} served, ${t.failed} failed`,
  ].join(', ')]) : [];
  const width = Math.max(...[...head, ...targets, ...config].map(([k]) => k.length)) + 2;
  const line = ([k, v]: [string, string]): string => `${k.padEnd(width)}${v}`;
  return [...head.map(line), ...(several ? ['targets', ...targets.map(line)] : []), 'configuration', ...config.map(line)].join('\n') + '\n';
}

/** Prometheus text exposition format, version 0.0.4. */
export function renderMetrics(r: StatusReport): string {
  const out: string[] = [];
  const metric = (name: string, type: 'gauge' | 'counter', help: string, value: number): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${value}`);
  };
  metric('sockbridge_backend_up', 'gauge', 'Whether the target is marked UP by health checks (1) or not (0).', r.target.state === 'UP' ? 1 : 0);
  metric('sockbridge_backend_state_seconds', 'gauge', 'Seconds since the target entered its current state.', r.target.secondsInState);
  metric('sockbridge_backend_last_check_success', 'gauge', 'Whether the last health check succeeded.', r.target.lastCheck?.ok ? 1 : 0);
  metric('sockbridge_sessions_active', 'gauge', 'Sessions connected to the target now.', r.sessions.active);
  metric('sockbridge_sessions_waiting', 'gauge', 'Clients held waiting for the target or for a free slot under max-conn.', r.sessions.waiting);
  metric('sockbridge_sessions_total', 'counter', 'Sessions ended, whatever the reason.', r.sessions.total);
  metric('sockbridge_sessions_failed_total', 'counter', 'Sessions that never reached the target or ended on an error or timeout.', r.sessions.failed);
  // One family: the sample without a label is every refusal (kept for what already reads it, and it includes a
  // previous process's after a restart); those labelled by reason are this process's. Sum the labelled ones, not all.
  // Two families, not one with and without a label: sum() over one family would count every refusal twice.
  out.push('# HELP sockbridge_connections_denied_total Clients refused before reaching the target (also those a previous process refused, after a restart).',
    '# TYPE sockbridge_connections_denied_total counter', `sockbridge_connections_denied_total ${r.sessions.denied}`,
    '# HELP sockbridge_connections_denied_by_reason_total Clients this process refused, by reason (access, tls, identity, uid, concurrent, rate, proxy).',
    '# TYPE sockbridge_connections_denied_by_reason_total counter',
    ...DENIED_REASONS.map((k) => `sockbridge_connections_denied_by_reason_total{reason="${k}"} ${r.sessions.deniedBy[k]}`));
  metric('sockbridge_received_bytes_total', 'counter', 'Bytes received from clients (and sent to the target).', r.bytes.in);
  metric('sockbridge_sent_bytes_total', 'counter', 'Bytes sent to clients (received from the target).', r.bytes.out);
  metric('sockbridge_workers', 'gauge', 'Processes serving (always 1: the data plane uses threads).', r.workers);
  metric('sockbridge_relay_native', 'gauge', 'Whether the native relay moves the bytes (1) or the TypeScript one (0).', r.relay.kind === 'native' ? 1 : 0);
  metric('sockbridge_relay_threads', 'gauge', 'Threads relaying sessions.', r.relay.threads);
  metric('sockbridge_tls_enabled', 'gauge', 'Whether new clients must speak TLS (1) or not (0), as now in force.', r.tls.enabled ? 1 : 0);
  metric('sockbridge_tls_crls_stale', 'gauge', 'CRLs in force past their next update (each refuses its CA\'s clients unless --tls-crl-allow-stale).', (r.tls.crls ?? []).filter((c) => c.stale).length);
  metric('sockbridge_open_to_all', 'gauge', 'Whether a TCP listener beyond loopback has neither client certificates nor an allow list (1): anyone who can reach it can use the program.', r.exposure.openToAll ? 1 : 0);
  if (r.sources) metric('sockbridge_source_table_entries', 'gauge', 'Sources the per-source limits track now (live and idle).', r.sources.tracked);
  const perTarget = (name: string, type: 'gauge' | 'counter', help: string, value: (t: StatusReport['targets'][number]) => number): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const t of r.targets) out.push(`${name}{target="${t.path.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"} ${value(t)}`);
  };
  perTarget('sockbridge_target_up', 'gauge', 'Whether each target is marked UP (1) or not (0).', (t) => (t.state === 'UP' ? 1 : 0));
  perTarget('sockbridge_target_drained', 'gauge', 'Whether each target is drained (sockbridge drain): no new sessions.', (t) => (t.drained ? 1 : 0));
  perTarget('sockbridge_target_sessions_active', 'gauge', 'Sessions connected to each target now.', (t) => t.active);
  perTarget('sockbridge_target_sessions_total', 'counter', 'Sessions ended on each target.', (t) => t.total);
  perTarget('sockbridge_target_sessions_failed_total', 'counter', 'Sessions on each target that ended on an error or timeout.', (t) => t.failed);
  metric('sockbridge_start_time_seconds', 'gauge', 'Start time of the service, in seconds since the epoch.', Math.floor(Date.parse(r.startedAt) / 1000));
  return out.join('\n') + '\n';
}
