// The benchmark's table: which metrics, sockbridge's targets (ratios against
// HAProxy measured in the same run), and rendering as text and Markdown.

/** A measured value; null when the bridge did not run or the metric does not apply. */
export type Value = number | null;
export type Metrics = Record<string, Value>;

type TargetKind = 'ge-haproxy' | 'le-haproxy' | 'zero' | 'yes';

export interface MetricDef {
  key: string;
  label: string;
  digits: number;
  /** Shown as yes/no (1/0). */
  bool?: boolean;
  target?: TargetKind;
  /** ge/le-haproxy: the factor of HAProxy's figure allowed (default 1.0; 1.05 = within 5 %). */
  factor?: number;
}

export const METRICS: MetricDef[] = [
  { key: 'halfclose_ok', label: 'half-close: reply delivered (10 trials)', digits: 0, bool: true, target: 'yes' },
  { key: 'pp1_p50_us', label: 'ping-pong 1 conn p50 latency (µs)', digits: 0, target: 'le-haproxy' },
  { key: 'pp1_p99_us', label: 'ping-pong 1 conn p99 latency (µs)', digits: 0 },
  { key: 'pp1_rtps', label: 'ping-pong 1 conn round trips/s', digits: 0 },
  { key: 'pp32_rtps', label: 'ping-pong 32 conns round trips/s', digits: 0, target: 'ge-haproxy' },
  { key: 'pp32_p99_us', label: 'ping-pong 32 conns p99 latency (µs)', digits: 0 },
  { key: 'cpu_us_per_rt', label: 'CPU µs per round trip (32 conns)', digits: 2, target: 'le-haproxy' },
  { key: 'bulk_up_mbps', label: 'bulk TCP→UNIX MB/s', digits: 0, target: 'ge-haproxy' },
  { key: 'bulk_down_mbps', label: 'bulk UNIX→TCP MB/s', digits: 0, target: 'ge-haproxy' },
  { key: 'cpu_s_per_gib', label: 'CPU s per GiB (bulk, both ways)', digits: 3, target: 'le-haproxy' },
  { key: 'rr_16k_mbps', label: 'request/response 16 KB MB/s', digits: 0 },
  { key: 'rr_64k_mbps', label: 'request/response 64 KB MB/s', digits: 0 },
  { key: 'rr_256k_mbps', label: 'request/response 256 KB MB/s', digits: 0 },
  { key: 'rr_1m_mbps', label: 'request/response 1 MB MB/s', digits: 0 },
  { key: 'rr_worst_mbps', label: 'request/response worst MB/s', digits: 0, target: 'ge-haproxy' },
  { key: 'churn_cps', label: 'connections/s (16 workers)', digits: 0, target: 'ge-haproxy' },
  { key: 'cpu_us_per_conn', label: 'CPU µs per connection (churn)', digits: 1 },
  { key: 'churn_errors', label: 'connection errors (churn)', digits: 0, target: 'zero' },
  { key: 'idle_kib_per_conn', label: 'memory per idle conn (KiB PSS)', digits: 1, target: 'le-haproxy' },
  { key: 'idle_failures', label: 'idle conns failed after hold', digits: 0 },
  { key: 'verify_bad_bytes', label: 'verified echo: mismatched bytes', digits: 0, target: 'zero' },
];

/**
 * The TLS section (run.ts, SECTIONS=tls): the same keys where a workload is
 * the plain one over TLS, so the workloads are shared; sockbridge with
 * --tls-cert against HAProxy with `bind ... ssl crt`.
 */
export const TLS_METRICS: MetricDef[] = [
  { key: 'halfclose_ok', label: 'TLS half-close: reply delivered (10 trials)', digits: 0, bool: true, target: 'yes' },
  { key: 'hs_full_per_s', label: 'full handshakes/s', digits: 0, target: 'ge-haproxy' },
  { key: 'cpu_us_per_full_hs', label: 'CPU µs per full handshake', digits: 0, target: 'le-haproxy' },
  { key: 'hs_full_p50_us', label: 'full handshake p50, client side (µs)', digits: 0 },
  { key: 'hs_resume_per_s', label: 'handshakes/s offering the last ticket', digits: 0 },
  { key: 'hs_resumed_pct', label: '  of which resumed (%)', digits: 0 },
  { key: 'cpu_us_per_resume_hs', label: '  CPU µs per handshake', digits: 0 },
  { key: 'hs_errors', label: 'handshake errors (full + resumed runs)', digits: 0, target: 'zero' },
  { key: 'pp1_p50_us', label: 'TLS ping-pong 1 conn p50 latency (µs)', digits: 0, target: 'le-haproxy', factor: 1.05 },
  { key: 'pp1_p99_us', label: 'TLS ping-pong 1 conn p99 latency (µs)', digits: 0 },
  { key: 'pp32_rtps', label: 'TLS ping-pong 32 conns round trips/s', digits: 0, target: 'ge-haproxy' },
  { key: 'pp32_p99_us', label: 'TLS ping-pong 32 conns p99 latency (µs)', digits: 0 },
  { key: 'cpu_us_per_rt', label: 'CPU µs per round trip (TLS, 32 conns)', digits: 2 },
  { key: 'bulk_up_mbps', label: 'TLS bulk TCP→UNIX MB/s', digits: 0, target: 'ge-haproxy' },
  { key: 'bulk_down_mbps', label: 'TLS bulk UNIX→TCP MB/s', digits: 0, target: 'ge-haproxy' },
  { key: 'cpu_s_per_gib', label: 'CPU s per GiB (TLS bulk, both ways)', digits: 3, target: 'le-haproxy' },
  { key: 'idle_kib_per_conn', label: 'memory per idle TLS conn (KiB PSS)', digits: 1, target: 'le-haproxy' },
  { key: 'idle_failures', label: 'idle TLS conns failed after hold', digits: 0 },
  { key: 'verify_bad_bytes', label: 'verified TLS echo: mismatched bytes', digits: 0, target: 'zero' },
];

/** What the bulk rows are called in the mirror direction, where the client is on the UNIX side. */
const MIRROR_LABELS: Record<string, string> = {
  bulk_up_mbps: 'bulk UNIX→TCP MB/s',
  bulk_down_mbps: 'bulk TCP→UNIX MB/s',
};

/**
 * The mirror section (run.ts, SECTIONS=mirror: a client on a UNIX socket,
 * the bridge, a TCP server): the plain workloads and targets, with the bulk
 * rows named for the way the bytes go here (up = client → program).
 */
export const MIRROR_METRICS: MetricDef[] = METRICS.map((d) => ({ ...d, label: MIRROR_LABELS[d.key] ?? d.label }));

const TARGET_TEXT: Record<TargetKind, string> = {
  'ge-haproxy': '≥ 1.0× haproxy',
  'le-haproxy': '≤ 1.0× haproxy',
  zero: '= 0',
  yes: 'yes',
};

export const SUBJECT = 'sockbridge';
/** sockbridge with an allow list and per-source limits configured (bridges.ts WHO_OPTIONS). */
export const WHO = 'sockbridge-who';
export const REFERENCE = 'haproxy';
export const FLOOR = 'direct';

export interface Verdict {
  metric: string;
  target: string;
  result: 'PASS' | 'FAIL' | 'n/a';
}

function targetText(def: MetricDef): string {
  const text = TARGET_TEXT[def.target as TargetKind];
  return def.factor && def.factor !== 1 ? text.replace('1.0×', `${def.factor.toFixed(2)}×`) : text;
}

function judge(def: MetricDef, sb: Value, ref: Value): Verdict['result'] {
  if (!def.target || sb === null) return 'n/a';
  const f = def.factor ?? 1;
  switch (def.target) {
    case 'zero':
      return sb === 0 ? 'PASS' : 'FAIL';
    case 'yes':
      return sb === 1 ? 'PASS' : 'FAIL';
    case 'ge-haproxy':
      return ref === null ? 'n/a' : sb >= ref * f ? 'PASS' : 'FAIL';
    case 'le-haproxy':
      return ref === null ? 'n/a' : sb <= ref * f ? 'PASS' : 'FAIL';
  }
}

export function verdicts(results: Record<string, Metrics>, metrics: MetricDef[] = METRICS): Verdict[] {
  const sb = results[SUBJECT] ?? {};
  const ref = results[REFERENCE] ?? {};
  return metrics.filter((d) => d.target).map((d) => ({
    metric: d.key,
    target: targetText(d),
    result: judge(d, sb[d.key] ?? null, ref[d.key] ?? null),
  }));
}

function cell(def: MetricDef, v: Value): string {
  if (v === null || Number.isNaN(v)) return 'n/a';
  if (def.bool) return v === 1 ? 'yes' : 'no';
  return v.toFixed(def.digits);
}

function ratio(def: MetricDef, a: Value, b: Value): string {
  if (def.bool || a === null || b === null || b === 0 || Number.isNaN(a) || Number.isNaN(b)) return '';
  return `${(a / b).toFixed(2)}×`;
}

/**
 * Header and rows of the table: metrics × bridges, ratios, target, verdict.
 * floor: the column of the second ratio (direct), or null for none (TLS).
 */
export function tableRows(bridges: string[], results: Record<string, Metrics>, metrics: MetricDef[] = METRICS, floor: string | null = FLOOR): string[][] {
  // The cost of who-may-connect: the same sockbridge with an allow list and per-source limits, against itself.
  const who = bridges.includes(WHO) ? ['who/sb'] : [];
  const header = ['metric', ...bridges, 'sb/haproxy', ...(floor ? ['sb/direct'] : []), ...who, 'target', 'sockbridge'];
  const rows = metrics.map((def) => {
    const val = (b: string): Value => results[b]?.[def.key] ?? null;
    const sb = val(SUBJECT);
    return [
      def.label,
      ...bridges.map((b) => cell(def, val(b))),
      ratio(def, sb, val(REFERENCE)),
      ...(floor ? [ratio(def, sb, val(floor))] : []),
      ...(who.length ? [ratio(def, val(WHO), sb)] : []),
      def.target ? targetText(def) : '',
      judge(def, sb, val(REFERENCE)).replace('n/a', def.target ? 'n/a' : ''),
    ];
  });
  return [header, ...rows];
}

export function renderText(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => [...r[i]].length)));
  const line = (r: string[]): string =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}

export function renderMarkdown(rows: string[][]): string {
  const line = (r: string[]): string => `| ${r.join(' | ')} |`;
  const align = rows[0].map((_, i) => (i === 0 ? '---' : '---:'));
  return [line(rows[0]), line(align), ...rows.slice(1).map(line)].join('\n');
}
