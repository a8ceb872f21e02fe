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

const TARGET_TEXT: Record<TargetKind, string> = {
  'ge-haproxy': '≥ 1.0× haproxy',
  'le-haproxy': '≤ 1.0× haproxy',
  zero: '= 0',
  yes: 'yes',
};

export const SUBJECT = 'sockbridge';
export const REFERENCE = 'haproxy';
export const FLOOR = 'direct';

export interface Verdict {
  metric: string;
  target: string;
  result: 'PASS' | 'FAIL' | 'n/a';
}

function judge(def: MetricDef, sb: Value, ref: Value): Verdict['result'] {
  if (!def.target || sb === null) return 'n/a';
  switch (def.target) {
    case 'zero':
      return sb === 0 ? 'PASS' : 'FAIL';
    case 'yes':
      return sb === 1 ? 'PASS' : 'FAIL';
    case 'ge-haproxy':
      return ref === null ? 'n/a' : sb >= ref ? 'PASS' : 'FAIL';
    case 'le-haproxy':
      return ref === null ? 'n/a' : sb <= ref ? 'PASS' : 'FAIL';
  }
}

export function verdicts(results: Record<string, Metrics>): Verdict[] {
  const sb = results[SUBJECT] ?? {};
  const ref = results[REFERENCE] ?? {};
  return METRICS.filter((d) => d.target).map((d) => ({
    metric: d.key,
    target: TARGET_TEXT[d.target as TargetKind],
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

/** Header and rows of the table: metrics × bridges, ratios, target, verdict. */
export function tableRows(bridges: string[], results: Record<string, Metrics>): string[][] {
  const header = ['metric', ...bridges, 'sb/haproxy', 'sb/direct', 'target', 'sockbridge'];
  const rows = METRICS.map((def) => {
    const val = (b: string): Value => results[b]?.[def.key] ?? null;
    const sb = val(SUBJECT);
    return [
      def.label,
      ...bridges.map((b) => cell(def, val(b))),
      ratio(def, sb, val(REFERENCE)),
      ratio(def, sb, val(FLOOR)),
      def.target ? TARGET_TEXT[def.target] : '',
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
