// The one table of options. The command-line parser, the config file, --help,
// `check-config`, the generated conffile, man page and README table are all
// derived from OPTIONS below: add an option here and nowhere else.

import { parseCidrs } from './listen/access';
import { statSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { parseListenAddress, parseTarget } from './endpoint';
import { BadValue } from './errors';

export type LogLevel = 'debug' | 'info' | 'notice' | 'warning' | 'error';
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'notice', 'warning', 'error'];

/** New connections per source per period (--rate-per-source N/PERIOD). */
export interface RateLimit {
  count: number;
  periodMs: number;
}

/** The effective configuration. Durations are milliseconds; 0 means "off" where the help says so. */
export interface Config {
  listen: string[];
  listenMode: number;
  listenOwner: string;
  listenGroup: string;
  target: string[];
  backupTarget: string[];
  targetDir: string;
  balance: 'first' | 'roundrobin' | 'leastconn';
  connectTimeout: number;
  /** 'auto': 3 for UNIX targets, none for TCP ones. */
  retries: number | 'auto';
  clientTimeout: number;
  serverTimeout: number;
  maxConn: number;
  backlog: number;
  checkInterval: number;
  rise: number;
  fall: number;
  onMarkedDown: 'none' | 'shutdown-sessions';
  errorLimit: number;
  drainTimeout: number;
  restartGrace: number;
  exitIdleTime: number;
  logLevel: LogLevel;
  logTarget: 'auto' | 'journal' | 'stderr';
  workers: number;
  relay: 'auto' | 'native' | 'js';
  relayThreads: number;
  controlSocket: string;
  allow: string[];
  deny: string[];
  allowUid: string[];
  allowGid: string[];
  maxConnPerSource: number;
  ratePerSource: RateLimit | undefined;
  sourcePrefixV6: number;
  acceptProxy: 'none' | 'v1' | 'v2' | 'any';
  acceptProxyFrom: string[];
  sendProxy: 'none' | 'v1' | 'v2';
  tlsCert: string;
  tlsKey: string;
  tlsCa: string;
  tlsCrl: string;
  tlsCrlAllowStale: 'off' | 'on';
  tlsAllowCn: string[];
  tlsAllowDns: string[];
  tlsAllowUri: string[];
  targetTls: 'off' | 'on';
  targetTlsAllowCn: string[];
  targetTlsAllowDns: string[];
  targetTlsAllowUri: string[];
  targetTlsCa: string;
  targetTlsCert: string;
  targetTlsKey: string;
  targetTlsName: string;
  connectAttemptTimeout: number;
  metricsListen: string;
}


export interface OptionSpec<K extends keyof Config> {
  /** Long option name, also the config-file key. */
  readonly name: string;
  readonly key: K;
  /** What the value looks like, for help and errors: "duration", "count", "path", … */
  readonly type: string;
  readonly default: Config[K];
  readonly help: string;
  /** Only for options that may be given more than once: how the values of one source add up. */
  combine?(values: Config[K][]): Config[K];
  /** Applied on SIGHUP to new sessions; the others need a restart. */
  readonly reloadable: boolean;
  parse(raw: string): Config[K];
  format(value: Config[K]): string;
}

export type AnyOption = { [K in keyof Config]: OptionSpec<K> }[keyof Config];

function keep<K extends keyof Config>(to: Config, from: Config, key: K): void {
  to[key] = from[key];
}

/** A reloaded configuration as it runs: the new values of reloadable options, the running values of the others. */
export function applyReload(running: Config, requested: Config): Config {
  const next: Config = { ...requested };
  for (const o of OPTIONS) if (!o.reloadable) keep(next, running, o.key);
  return next;
}

// ---- value types ----------------------------------------------------------

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "5000" (milliseconds, HAProxy style), "500ms", "5s", "2m", "1h"; "0" = off. */
export function parseDuration(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(raw.trim());
  if (!m) throw new BadValue('expected a duration such as 5000 (ms), 500ms, 5s or 2m');
  const ms = Math.round(Number(m[1]) * UNITS[m[2] ?? 'ms']!);
  if (ms > 2_147_483_647) throw new BadValue('duration too long (at most 24 days)');
  return ms;
}

export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

function parseCount(raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw.trim())) throw new BadValue(`expected a whole number from ${min} to ${max}`);
  const n = Number(raw);
  if (n < min || n > max) throw new BadValue(`expected a whole number from ${min} to ${max}`);
  return n;
}

function oneOf<T extends string>(values: readonly T[], raw: string): T {
  const found = values.find((v) => v === raw.trim());
  if (found === undefined) throw new BadValue(`expected one of ${values.join(', ')}`);
  return found;
}

/** "HOST:PORT", "[v6]:PORT", "*:PORT" or "PORT"; host "*" or none = all interfaces. */
export function parseListen(raw: string): { host: string | undefined; port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):)?(\d+)$/.exec(raw.trim());
  if (!m) throw new BadValue('expected HOST:PORT, [IPv6]:PORT, *:PORT or PORT');
  const port = Number(m[2]);
  if (port > 65535) throw new BadValue('port must be from 0 to 65535');
  const host = m[1] === undefined || m[1] === '*' ? undefined : m[1].replace(/^\[|\]$/g, '');
  return { host, port };
}

/** --target-dir: a directory (every socket in it) or a glob on the file name ("/run/app/*.sock"). */
export function parseTargetDir(pattern: string): { dir: string; match: (name: string) => boolean } {
  const name = basename(pattern);
  if (pattern.endsWith('/') || !/[*?[]/.test(name)) return { dir: pattern.replace(/\/+$/, '') || '/', match: () => true };
  const re = new RegExp(`^${name.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
  return { dir: dirname(pattern), match: (n) => re.test(n) };
}

/** Retries for a target: --retries as given, or for "auto" 3 to a UNIX socket and none over TCP (see its help). */
export function retriesFor(retries: Config['retries'], targetKind: 'unix' | 'abstract' | 'tcp'): number {
  if (retries !== 'auto') return retries;
  return targetKind === 'tcp' ? 0 : 3;
}

/** What the bridge reaches when neither --target nor --target-dir is given. */
export const DEFAULT_TARGET = '/var/program/program.cmd';
const BALANCES = ['first', 'roundrobin', 'leastconn'] as const;

/** A target as written, once it parses (endpoint.ts). */
function target(raw: string): string {
  parseTarget(raw);
  return raw.trim();
}

/** "10/1s", "600/1m": N new connections per PERIOD; "" = no limit. */
export function parseRate(raw: string): RateLimit | undefined {
  const v = raw.trim();
  if (v === '') return undefined;
  const m = /^(\d+)\/(.+)$/.exec(v);
  if (!m) throw new BadValue('expected COUNT/PERIOD such as 10/1s or 600/1m');
  const count = Number(m[1]);
  const periodMs = parseDuration(m[2]!);
  if (count < 1 || count > 1_000_000) throw new BadValue('the count must be from 1 to 1000000');
  if (periodMs < 100 || periodMs > 3_600_000) throw new BadValue('the period must be from 100ms to 1h');
  return { count, periodMs };
}

/**
 * A certificate name pattern (--tls-allow-cn, --tls-allow-dns): a name, or
 * "*." then a name: the star stands for exactly one whole leftmost label.
 */
export function namePattern(raw: string): string[] {
  const v = raw.trim();
  if (v === '' || /\s/.test(v)) throw new BadValue('expected a name such as backup.ops.example.org, or *.ops.example.org');
  if (v.includes('*') && !(/^\*\.[^*]+$/.test(v))) throw new BadValue('"*" may only stand for the whole leftmost label: *.ops.example.org');
  return [v];
}

/** A SAN URI pattern (--tls-allow-uri): exact, or a prefix ending in "/*" (spiffe://example.org/ns/prod/*). */
export function uriPattern(raw: string): string[] {
  const v = raw.trim();
  if (!/^[a-z][a-z0-9+.-]*:\S+$/i.test(v)) throw new BadValue('expected a URI such as spiffe://example.org/ns/prod/sa/backup');
  if (v.includes('*') && !(/\/\*$/.test(v) && !v.slice(0, -1).includes('*'))) throw new BadValue('"*" may only end a URI pattern, after a "/": spiffe://example.org/ns/prod/*');
  return [v];
}

/** A user or group for a UNIX listener: a name, or a number. */
function principal(raw: string): string {
  const v = raw.trim();
  if (v !== '' && !/^(\d+|[a-z_][a-z0-9_.-]*\$?)$/i.test(v)) throw new BadValue('expected a user or group name, or a number');
  return v;
}

/** A directory (or a glob's directory) that exists must be one: a typo an operator wants to hear about at once. */
function parseTargetDirOption(raw: string): string {
  const pattern = raw.trim();
  if (pattern === '') return '';
  if (!pattern.startsWith('/')) throw new BadValue('expected an absolute directory ("/run/app/") or a glob on the file name ("/run/app/*.sock")');
  const { dir } = parseTargetDir(pattern);
  let isDir = true;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    // missing: waited for
  }
  if (!isDir) throw new BadValue(`${dir} exists but is not a directory; name the directory holding the sockets`);
  return pattern;
}

/**
 * A --listen value. A UNIX path's directory must exist: sockbridge makes the
 * socket, not its directory (RuntimeDirectory= or the package does), and a
 * typo there is better heard at once than as a bind error.
 */
function parseListenOption(raw: string): string[] {
  const e = parseListenAddress(raw);
  if (e.kind === 'unix') checkListenDirectory(dirname(e.path));
  return [raw.trim()];
}

function checkListenDirectory(dir: string): void {
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'ENOENT') throw new BadValue(`the directory ${dir} does not exist: create it (RuntimeDirectory= in the unit) or choose another path`);
    throw new BadValue(`cannot reach the directory ${dir} (${code})`);
  }
  if (!isDir) throw new BadValue(`${dir} is not a directory`);
}

const optionalPath = { type: 'path', parse: (raw: string) => raw.trim(), format: String } as const;
const durationOpt = { type: 'duration', parse: parseDuration, format: formatDuration } as const;
const countOpt = (min: number, max: number) =>
  ({ type: 'count', parse: (raw: string) => parseCount(raw, min, max), format: String }) as const;

// ---- the table --------------------------------------------------------------

export const OPTIONS: readonly AnyOption[] = [
  {
    name: 'listen', key: 'listen', type: 'host:port|path|@name', default: ['*:12345'], reloadable: false,
    help: 'Where to accept clients; repeat for several. TCP: HOST:PORT, [IPv6]:PORT, *:PORT or PORT ("*" = all interfaces, IPv4 and IPv6). A UNIX socket: a path (/run/app-remote.sock, ./x.sock), its directory must exist; made with --listen-mode, --listen-owner and --listen-group, a stale file from a crashed run replaced (one that still answers is another instance: refused), removed on a clean stop; or @name (abstract, no file; it lives in a network namespace: a unit with PrivateNetwork=yes has its own). Its clients have no address: --allow and --deny do not apply to them. Ignored when systemd passes sockets (LISTEN_FDS).',
    parse: parseListenOption,
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'listen-mode', key: 'listenMode', type: 'octal mode', default: 0o660, reloadable: false,
    help: 'File mode of the UNIX sockets sockbridge binds for --listen (as HAProxy\'s "mode" and systemd\'s SocketMode=); who may write the socket may use it. An abstract socket (@name) has no file, hence no mode or owner: any process in the network namespace may connect.',
    parse: (raw) => {
      const v = raw.trim();
      if (!/^0?[0-7]{3,4}$/.test(v)) throw new BadValue('expected an octal file mode such as 0660');
      return parseInt(v, 8);
    },
    format: (v) => `0${v.toString(8).padStart(3, '0')}`,
  },
  {
    name: 'listen-owner', key: 'listenOwner', type: 'user', default: '', reloadable: false,
    help: 'Owner of the UNIX sockets sockbridge binds for --listen (a name or a number; empty = the user sockbridge runs as). Giving them to another user needs CAP_CHOWN.',
    parse: principal, format: String,
  },
  {
    name: 'listen-group', key: 'listenGroup', type: 'group', default: '', reloadable: false,
    help: 'Group of the UNIX sockets sockbridge binds for --listen (a name or a number): with --listen-mode 0660, its members may use the socket. Needs CAP_CHOWN unless sockbridge is a member.',
    parse: principal, format: String,
  },
  {
    name: 'target', key: 'target', type: 'path|@name|host:port', default: [DEFAULT_TARGET], reloadable: true,
    help: 'What each client is connected to: a UNIX stream socket (a path with a "/", or @name for an abstract one, reached only by the native data plane and only within the network namespace: not from a unit with PrivateNetwork=yes) or a TCP address (HOST:PORT, [IPv6]:PORT; a name is resolved again every check interval); repeat for several (each health-checked on its own, chosen by --balance). It may be missing, refusing or unreachable for a while: clients wait for it. Not used by default when --target-dir is given.',
    parse: (raw) => [target(raw)],
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'backup-target', key: 'backupTarget', type: 'path|@name|host:port', default: [], reloadable: true,
    help: 'A socket used only while no regular target can take a client (all marked DOWN, or a client\'s connects to every one just failed), as HAProxy\'s "backup"; repeat for several. New sessions go back to the regular targets as soon as one accepts.',
    parse: (raw) => [target(raw)],
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'target-dir', key: 'targetDir', type: 'directory or glob', default: '', reloadable: true,
    help: 'Every UNIX socket in this directory ("/run/app/") or matching this glob on the file name ("/run/app/*.sock") is a target, joining when its file appears and leaving when it goes; ordered by name. A missing directory is waited for.',
    parse: parseTargetDirOption,
    format: String,
  },
  {
    name: 'balance', key: 'balance', type: BALANCES.join('|'), default: 'roundrobin', reloadable: true,
    help: 'How new sessions are spread over the UP targets: "roundrobin" in turn (the default, as in HAProxy: instances of one program share the load), "leastconn" to the one with the fewest open sessions (for long sessions), "first" to the first UP one in the order given (the others are spares).',
    parse: (raw) => oneOf(BALANCES, raw),
    format: String,
  },
  {
    name: 'allow', key: 'allow', type: 'cidr', default: [], reloadable: true,
    help: 'Let clients from this address or CIDR in (repeatable; also any, localhost). As systemd\'s IPAddressAllow=: an allowed address is let in even if --deny matches it. IP clients only: a UNIX listener\'s clients have no address and are let in (a warning at start says so); its socket\'s mode and owner decide who may connect.',
    parse: parseCidrs,
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'deny', key: 'deny', type: 'cidr', default: [], reloadable: true,
    help: 'Refuse clients from this address or CIDR (repeatable; "any" with --allow makes an allow list). Refused clients are closed before anything is read. IP clients only, as --allow.',
    parse: parseCidrs,
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'allow-uid', key: 'allowUid', type: 'user', default: [], reloadable: true,
    help: 'Let a UNIX listener\'s clients in only if they run as this user (a name or a number, from SO_PEERCRED; repeatable). With --allow-gid, either lets a client in. Refused clients are closed before anything is read. Needs the native data plane (Node cannot read a client\'s credentials).',
    parse: (raw) => [principal(raw)],
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'allow-gid', key: 'allowGid', type: 'group', default: [], reloadable: true,
    help: 'Let a UNIX listener\'s clients in if this group is their primary one or one of their supplementary groups (SO_PEERCRED, SO_PEERGROUPS; repeatable).',
    parse: (raw) => [principal(raw)],
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'max-conn-per-source', key: 'maxConnPerSource', ...countOpt(0, 1_000_000), default: 0, reloadable: true,
    help: 'Most sessions at once from one source (an IPv4 address, or an IPv6 prefix of --source-prefix-v6); beyond it new ones are refused, closed before anything is read (0 = no limit). As HAProxy\'s sc_conn_cur, nginx\'s limit_conn.',
  },
  {
    name: 'rate-per-source', key: 'ratePerSource', type: 'count/period', default: undefined, reloadable: true,
    help: 'Most new connections from one source per period, e.g. 20/1s or 600/1m (empty = no limit); beyond it refused, closed before anything is read. As HAProxy\'s sc_conn_rate.',
    parse: parseRate,
    format: (v) => (v ? `${v.count}/${formatDuration(v.periodMs)}` : ''),
  },
  {
    name: 'source-prefix-v6', key: 'sourcePrefixV6', ...countOpt(1, 128), default: 64, reloadable: true,
    help: 'How IPv6 clients are grouped into one source for the per-source limits: by this prefix length (one site usually has a /64). IPv4 clients, and IPv4-mapped IPv6 ones, are one source per address.',
  },
  {
    name: 'accept-proxy', key: 'acceptProxy', type: 'none|v1|v2|any', default: 'none', reloadable: true,
    help: 'Read a PROXY protocol header (HAProxy\'s v1 text, v2 binary, or either) from clients connecting from --accept-proxy-from, a load balancer in front: the access list, the per-source limits, the journal and --send-proxy then use the client address it names. A header that is malformed, truncated, too long or late closes that connection.',
    parse: (raw) => oneOf(['none', 'v1', 'v2', 'any'] as const, raw),
    format: String,
  },
  {
    name: 'accept-proxy-from', key: 'acceptProxyFrom', type: 'cidr', default: [], reloadable: true,
    help: 'The fronts trusted to send a PROXY header (repeatable). A client from anywhere else is judged by its own address and must not send one: its connection is relayed as it is.',
    parse: parseCidrs,
    format: (v) => v.join(', '),
    combine: (values) => values.flat(),
  },
  {
    name: 'tls-cert', key: 'tlsCert', ...optionalPath, default: '', reloadable: true,
    help: 'Terminate TLS with this certificate chain (PEM); needs --tls-key. Re-read on reload, which also turns TLS on or off for new clients, and when the file changes (renewal needs no reload). A relative path is looked up in $CREDENTIALS_DIRECTORY (LoadCredential=): such a copy is not watched; systemctl restart renews it.',
  },
  {
    name: 'tls-key', key: 'tlsKey', ...optionalPath, default: '', reloadable: true,
    help: 'The private key of --tls-cert (PEM). Under systemd pass it with LoadCredential= and give its name here.',
  },
  {
    name: 'tls-ca', key: 'tlsCa', ...optionalPath, default: '', reloadable: true,
    help: 'Require client certificates signed by these CAs (PEM); clients without one never reach the target.',
  },
  {
    name: 'tls-crl', key: 'tlsCrl', ...optionalPath, default: '', reloadable: true,
    help: 'Refuse client certificates these CRLs revoke (PEM; several in one file). Re-read on reload and when the file changes. A CRL past its next update fails closed: that CA\'s clients are refused, and status says why.',
  },
  {
    name: 'tls-crl-allow-stale', key: 'tlsCrlAllowStale', type: 'off|on', default: 'off', reloadable: true,
    help: 'Go on with a CRL past its next update instead of refusing its CA\'s clients (warned at every start and reload).',
    parse: (raw) => oneOf(['off', 'on'] as const, raw),
    format: String,
  },
  {
    name: 'tls-allow-cn', key: 'tlsAllowCn', type: 'name', default: [], reloadable: true,
    help: 'Let in only verified client certificates whose subject CN matches (repeatable; "*" stands for exactly one whole leftmost label, case is ignored). With --tls-allow-dns and --tls-allow-uri, any match lets a client in; none of them: any verified certificate.',
    parse: namePattern, format: (v) => v.join(', '), combine: (values) => values.flat(),
  },
  {
    name: 'tls-allow-dns', key: 'tlsAllowDns', type: 'name', default: [], reloadable: true,
    help: 'Let in client certificates with a SAN DNS name that matches (repeatable; as --tls-allow-cn).',
    parse: namePattern, format: (v) => v.join(', '), combine: (values) => values.flat(),
  },
  {
    name: 'tls-allow-uri', key: 'tlsAllowUri', type: 'uri', default: [], reloadable: true,
    help: 'Let in client certificates with a SAN URI that matches, such as a SPIFFE ID (repeatable; exact and case-sensitive, or a prefix ending in "/*" that matches anything after it: spiffe://example.org/ns/prod/*).',
    parse: uriPattern, format: (v) => v.join(', '), combine: (values) => values.flat(),
  },
  {
    name: 'target-tls', key: 'targetTls', type: 'off|on', default: 'off', reloadable: true,
    help: 'Speak TLS to TCP targets (the client end of remote access, towards a server end\'s TLS port), verifying their certificate against --target-tls-ca (or the system\'s CAs) for --target-tls-name (or the target\'s host). Verification cannot be turned off.',
    parse: (raw) => oneOf(['off', 'on'] as const, raw),
    format: String,
  },
  {
    name: 'target-tls-ca', key: 'targetTlsCa', ...optionalPath, default: '', reloadable: true,
    help: 'Verify TCP targets\' certificates against these CAs (PEM); empty: the system\'s bundle, /etc/ssl/certs/ca-certificates.crt. A relative path is looked up in $CREDENTIALS_DIRECTORY (LoadCredential=).',
  },
  {
    name: 'target-tls-cert', key: 'targetTlsCert', ...optionalPath, default: '', reloadable: true,
    help: 'This end\'s client certificate chain (PEM) for TCP targets that require one; needs --target-tls-key. A relative path is looked up in $CREDENTIALS_DIRECTORY.',
  },
  {
    name: 'target-tls-key', key: 'targetTlsKey', ...optionalPath, default: '', reloadable: true,
    help: 'The private key of --target-tls-cert (PEM). Under systemd pass it with LoadCredential= and give its name here.',
  },
  {
    name: 'target-tls-name', key: 'targetTlsName', type: 'name', default: '', reloadable: true,
    help: 'The name to verify in TCP targets\' certificates and to send as SNI (empty: each target\'s host as written).',
    parse: (raw) => raw.trim(), format: String,
  },
  {
    name: 'target-tls-allow-cn', key: 'targetTlsAllowCn', type: 'name', default: [], reloadable: true,
    help: 'Beyond the name check, reach only TCP targets whose certificate\'s subject CN matches (as --tls-allow-cn).',
    parse: namePattern, format: (v) => v.join(', '), combine: (values) => values.flat(),
  },
  {
    name: 'target-tls-allow-dns', key: 'targetTlsAllowDns', type: 'name', default: [], reloadable: true,
    help: 'Beyond the name check, reach only TCP targets with a SAN DNS name that matches (as --tls-allow-dns).',
    parse: namePattern, format: (v) => v.join(', '), combine: (values) => values.flat(),
  },
  {
    name: 'target-tls-allow-uri', key: 'targetTlsAllowUri', type: 'uri', default: [], reloadable: true,
    help: 'Beyond the name check, reach only TCP targets with a SAN URI that matches (as --tls-allow-uri).',
    parse: uriPattern, format: (v) => v.join(', '), combine: (values) => values.flat(),
  },
  {
    name: 'send-proxy', key: 'sendProxy', type: 'none|v1|v2', default: 'none', reloadable: true,
    help: "Send a PROXY protocol header (HAProxy's v1 text or v2 binary) to the target on each connection, so the program learns the client's address. v2 also carries, for a TLS client, the verified certificate's CN, the TLS version and cipher (PP2_TYPE_SSL) and the SNI (PP2_TYPE_AUTHORITY), and for a UNIX listener's client its pid, uid and gid (TLV 0xE0: three 32-bit big-endian numbers).",
    parse: (raw) => oneOf(['none', 'v1', 'v2'] as const, raw),
    format: String,
  },
  {
    name: 'connect-timeout', key: 'connectTimeout', ...durationOpt, default: 5000, reloadable: true,
    help: 'How long a client is held while the target is missing or refusing (restarting) before it is closed.',
  },
  {
    name: 'connect-attempt-timeout', key: 'connectAttemptTimeout', ...durationOpt, default: 2000, reloadable: true,
    help: 'How long one TCP connect attempt may take (at most what is left of connect-timeout), so that a host that drops SYNs costs one attempt, not the whole connect-timeout, and the next target (or a backup) gets the client. UNIX connects answer at once.',
  },
  {
    name: 'retries', key: 'retries', type: 'count|auto', default: 'auto', reloadable: true,
    help: "Times a request is sent again on a new connection when the target resets the connection before answering (a restart dropped it from the old socket's queue). Only while the client has sent at most 64 KiB; 0 = never. \"auto\": 3 for UNIX targets, none for TCP targets: over TCP a reset before the first reply byte does not prove that the far end did not act on the request, so retries there must be asked for.",
    parse: (raw) => (raw.trim() === 'auto' ? 'auto' : parseCount(raw, 0, 100)),
    format: String,
  },
  {
    name: 'client-timeout', key: 'clientTimeout', ...durationOpt, default: 50_000, reloadable: true,
    help: 'Close a session idle this long: no byte either way (0 = never); bytes a slow reader takes count as traffic. With both timeouts set the shorter one closes it and names the reason; equal ones name the side that owes the next byte (server-timeout after a request the program has not answered). Up to a tenth of it (at most 2 s) late. A side still owed bytes gets a reset, not a FIN.',
  },
  {
    name: 'server-timeout', key: 'serverTimeout', ...durationOpt, default: 50_000, reloadable: true,
    help: 'Close a session idle this long, logged as server-timeout (0 = never); see client-timeout.',
  },
  {
    name: 'max-conn', key: 'maxConn', ...countOpt(1, 1_000_000), default: 4096, reloadable: true,
    help: 'Most sessions at once. Beyond it new clients wait, connected but unread, and start in arrival order as sessions end; nobody is reset.',
  },
  {
    name: 'backlog', key: 'backlog', ...countOpt(1, 65535), default: 4096, reloadable: false,
    help: "Listen queue length, also applied to sockets passed by systemd (keep it equal to the socket unit's Backlog=). The kernel caps it at net.core.somaxconn.",
  },
  {
    name: 'check-interval', key: 'checkInterval', ...durationOpt, default: 2000, reloadable: true,
    help: 'Health check period: a probe connect to the target (0 = no checks; the target is assumed up).',
  },
  {
    name: 'rise', key: 'rise', ...countOpt(1, 1000), default: 2, reloadable: true,
    help: 'Consecutive successful checks that mark the target UP.',
  },
  {
    name: 'fall', key: 'fall', ...countOpt(1, 1000), default: 3, reloadable: true,
    help: 'Consecutive failed checks that mark the target DOWN.',
  },
  {
    name: 'on-marked-down', key: 'onMarkedDown', type: 'none|shutdown-sessions', default: 'none', reloadable: true,
    help: 'What happens to established sessions when the target is marked DOWN.',
    parse: (raw) => oneOf(['none', 'shutdown-sessions'] as const, raw),
    format: String,
  },
  {
    name: 'error-limit', key: 'errorLimit', ...countOpt(0, 1_000_000), default: 0, reloadable: true,
    help: 'Consecutive connect errors from live traffic that mark the target DOWN, like failed checks (0 = off).',
  },
  {
    name: 'drain-timeout', key: 'drainTimeout', ...durationOpt, default: 10_000, reloadable: true,
    help: 'On SIGTERM, how long active sessions may finish before they are closed.',
  },
  {
    name: 'restart-grace', key: 'restartGrace', ...durationOpt, default: 1000, reloadable: true,
    help: 'On a restart (SIGUSR2, the unit\'s RestartKillSignal=), how long sessions may take to empty their buffers before they are handed to the next process, and how long TLS sessions, which cannot be handed over, may go on before they are closed. New clients wait this long at most.',
  },
  {
    name: 'exit-idle-time', key: 'exitIdleTime', ...durationOpt, default: 0, reloadable: true,
    help: 'Exit after this long without any session, for on-demand socket activation (0 = never).',
  },
  {
    name: 'log-level', key: 'logLevel', type: LOG_LEVELS.join('|'), default: 'info', reloadable: true,
    help: 'Least important messages logged. "info" logs one line per session; "notice" only state changes and errors.',
    parse: (raw) => oneOf(LOG_LEVELS, raw),
    format: String,
  },
  {
    name: 'log-target', key: 'logTarget', type: 'auto|journal|stderr', default: 'auto', reloadable: false,
    help: 'Where logs go. "auto": the journal (structured fields) under systemd, readable lines on stderr otherwise.',
    parse: (raw) => oneOf(['auto', 'journal', 'stderr'] as const, raw),
    format: String,
  },
  {
    name: 'relay', key: 'relay', type: 'auto|native|js', default: 'auto', reloadable: false,
    help: 'What accepts clients and moves their bytes: "native", the data plane (C threads on every core accept, admit, terminate TLS and relay; native/); "js", Node\'s event loop in one thread. "auto": native, or js with one warning where the data plane cannot load.',
    parse: (raw) => oneOf(['auto', 'native', 'js'] as const, raw),
    format: String,
  },
  {
    name: 'relay-threads', key: 'relayThreads', ...countOpt(0, 64), default: 0, reloadable: false,
    help: 'Threads of the data plane (0 = one per CPU, at most 64). Each accepts and relays its own clients; the kernel wakes one waiting thread per new connection.',
  },
  {
    name: 'workers', key: 'workers', ...countOpt(0, 64), default: 0, reloadable: false,
    help: 'Obsolete, accepted and ignored (logged once): one process now uses every core through the native relay\'s threads (relay-threads).',
  },
  {
    name: 'control-socket', key: 'controlSocket', type: 'path|auto|off', default: 'auto', reloadable: false,
    help: 'UNIX socket (mode 0600) answering "sockbridge status". "auto": bridge.ctl in systemd\'s RuntimeDirectory= (/run/sockbridge), none outside systemd.',
    parse: (raw) => {
      const v = raw.trim();
      if (v === '') throw new BadValue('expected a path, auto or off');
      return v;
    },
    format: String,
  },
  {
    name: 'metrics-listen', key: 'metricsListen', type: 'host:port', default: '', reloadable: false,
    help: 'Serve Prometheus metrics at http://HOST:PORT/metrics (empty = off). Bind it to a private address.',
    parse: (raw) => {
      if (raw.trim() === '') return '';
      parseListen(raw);
      return raw.trim();
    },
    format: String,
  },
];

/** Flags that only make sense on the command line. */
export const CLI_FLAGS: readonly { name: string; type: string; help: string }[] = [
  { name: 'config', type: 'file', help: 'Read options from FILE ("name = value" lines, "#" comments); the command line wins.' },
  { name: 'instance', type: 'name', help: 'status, drain, enable: the instance to ask: NAME for bridge@NAME.service (/run/sockbridge@NAME/bridge.ctl), connect-NAME for the client end bridge-connect@NAME.service (/run/sockbridge-connect-NAME/bridge.ctl); default bridge.service (/run/sockbridge/bridge.ctl).' },
  { name: 'json', type: '', help: 'status: print the report as JSON (a stable, documented shape).' },
  { name: 'help', type: '', help: 'Show this help and exit.' },
  { name: 'version', type: '', help: 'Show the version and exit.' },
];

export function defaults(): Config {
  const cfg: Partial<Record<keyof Config, unknown>> = {};
  for (const o of OPTIONS) cfg[o.key] = o.default;
  return cfg as Config;
}

export function findOption(name: string): AnyOption | undefined {
  return OPTIONS.find((o) => o.name === name);
}

/** Render one option's current value the way it would be written in the config file. */
export function formatValue<K extends keyof Config>(spec: OptionSpec<K>, cfg: Config): string {
  return spec.format(cfg[spec.key]);
}
