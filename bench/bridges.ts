// The bridges the benchmark compares, how to install the peers, and how to
// start each one between a listen address and the test server: a loopback
// port in front of the server's UNIX socket (plain, TLS), or the mirror
// direction, a UNIX socket in front of the server's loopback port.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WHO } from './report';

export interface BridgeContext {
  /** Where the bridge accepts clients: 127.0.0.1:PORT, or a UNIX path (the mirror section). */
  listen: string;
  /** The test server: its UNIX path, or 127.0.0.1:PORT (the mirror section). */
  target: string;
  /** A private directory for the bridge's config, pid and logs. */
  dir: string;
  /** Worker threads/processes for peers that have the knob (matched to sockbridge). */
  threads: number;
  /** Where the bridge's stderr goes. */
  stderrFile: string;
  /** The TLS section's certificate and key (tlsBridges only). */
  tls?: TlsFiles;
}

/** A P-256 ECDSA key and a self-signed certificate for 127.0.0.1 (tls.ts makes them). */
export interface TlsFiles {
  cert: string;
  key: string;
  /** Certificate and key in one PEM file, as HAProxy's `crt` wants them. */
  pem: string;
  /** What clients verify the bridge's certificate with (the certificate itself). */
  ca: string;
}

/** The benchmark's one rule for its addresses: a UNIX path starts with '/', anything else is 127.0.0.1:PORT. */
export function isUnixPath(address: string): boolean {
  return address.startsWith('/');
}

/** The port of a 127.0.0.1:PORT address; a bridge that can only listen on TCP (the TLS ones) refuses a path. */
function tcpPort(address: string): string {
  if (isUnixPath(address)) throw new Error(`needs a TCP address, got the path ${address}`);
  return address.slice(address.lastIndexOf(':') + 1);
}

export interface Command {
  cmd: string;
  args: string[];
}

export interface Bridge {
  name: string;
  /** Why it cannot run on this machine, or null when it can. */
  unavailable(): string | null;
  /** The process to start; null for "direct" (the client talks to the test server itself). */
  command(ctx: BridgeContext): Command | null;
}

const HAPROXY = '/usr/sbin/haproxy';
const NGINX = '/usr/sbin/nginx';
const NGINX_STREAM = '/usr/lib/nginx/modules/ngx_stream_module.so';
const SOCAT = '/usr/bin/socat';
const PROXYD = '/lib/systemd/systemd-socket-proxyd';
const ACTIVATE = '/usr/bin/systemd-socket-activate';
const ENV = '/usr/bin/env';
const STUNNEL = '/usr/bin/stunnel4';
export const OPENSSL = '/usr/bin/openssl';

/** Debian 12 package for each file a peer needs. */
const PACKAGES: [string, string][] = [
  [HAPROXY, 'haproxy'],
  [NGINX, 'nginx'],
  [NGINX_STREAM, 'libnginx-mod-stream'], // the stream module is a separate package in Debian 12
  [SOCAT, 'socat'],
  [PROXYD, 'systemd'],
  [ACTIVATE, 'systemd'],
  // The TLS section's peer, and the tool that makes its certificate.
  [STUNNEL, 'stunnel4'],
  [OPENSSL, 'openssl'],
];

function aptInstall(pkgs: string[]): boolean {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const run = (args: string[]): boolean =>
    spawnSync('apt-get', args, { stdio: ['ignore', 'ignore', 'inherit'], env, timeout: 300_000 }).status === 0;
  const install = ['install', '-y', '-q', '--no-install-recommends', ...pkgs];
  // A stale package list is the usual reason for a failure: refresh once and retry.
  return run(install) || (run(['update', '-q']) && run(install));
}

/** Install whichever peers are missing. A failure only costs those peers their column. */
export function installPeers(): void {
  installMissing(PACKAGES);
}

/**
 * Install the package of each file ([file, Debian package]) that is missing,
 * non-interactively and only as root; otherwise one line says what will be n/a.
 */
export function installMissing(packages: [string, string][]): void {
  const missing = [...new Set(packages.filter(([file]) => !existsSync(file)).map(([, pkg]) => pkg))];
  if (missing.length === 0) return;
  if (process.getuid && process.getuid() !== 0) {
    console.log(`bench: not root, cannot install ${missing.join(' ')}; what needs them will be n/a`);
    return;
  }
  console.log(`bench: installing ${missing.join(' ')} with apt-get`);
  if (!aptInstall(missing)) console.log(`bench: apt-get install ${missing.join(' ')} failed; missing peers will be n/a`);
}

function missingFile(...files: string[]): string | null {
  const f = files.find((x) => !existsSync(x));
  return f ? `${f} not installed` : null;
}

function haproxyConfig(ctx: BridgeContext, bindOptions = ''): string {
  // No "log" line: HAProxy logs nothing without one. No splice options: the
  // default is no splicing, which is the fair comparison for a userspace relay.
  return `global
    nbthread ${ctx.threads}
    maxconn 8192
    pidfile ${join(ctx.dir, 'haproxy.pid')}

defaults
    mode tcp
    maxconn 8192
    timeout connect 5s
    timeout client 50s
    timeout server 50s

frontend bench_in
    # An address starting with "/" is a UNIX stream socket, for bind and server alike.
    bind ${ctx.listen}${bindOptions}
    default_backend bench_target

backend bench_target
    server s1 ${ctx.target} maxconn 8192
`;
}

/**
 * stunnel4 in the foreground (the PID we started is the server), its own
 * defaults otherwise: one thread per connection, log level notice (a line as
 * a connection opens and one as it closes, like sockbridge's info level), on
 * stderr only.
 */
function stunnelConfig(ctx: BridgeContext, tls: TlsFiles): string {
  return `foreground = yes
syslog = no
pid =

[svc]
accept = 127.0.0.1:${tcpPort(ctx.listen)}
connect = ${ctx.target}
cert = ${tls.cert}
key = ${tls.key}
`;
}

/** nginx spells a UNIX socket "unix:/path", in listen and proxy_pass alike. */
const nginxAddress = (address: string): string => (isUnixPath(address) ? `unix:${address}` : address);

function nginxConfig(ctx: BridgeContext): string {
  // Runs as root: the workers must reach the test socket, and the benchmark
  // already runs as root to install the peers.
  return `load_module ${NGINX_STREAM};
user root;
worker_processes ${ctx.threads};
worker_rlimit_nofile 20000;
pid ${join(ctx.dir, 'nginx.pid')};
error_log ${join(ctx.dir, 'error.log')} notice;

events {
    worker_connections 8192;
}

stream {
    server {
        listen ${nginxAddress(ctx.listen)};
        proxy_pass ${nginxAddress(ctx.target)};
        proxy_connect_timeout 5s;
        proxy_timeout 50s;
    }
}
`;
}

function writeConfig(ctx: BridgeContext, name: string, text: string): string {
  mkdirSync(ctx.dir, { recursive: true });
  const file = join(ctx.dir, name);
  writeFileSync(file, text);
  return file;
}

/** Does this sockbridge build's --help list `option` (e.g. "--workers"; "--relay" is not "--relay-threads")? */
export function sockbridgeHasOption(bin: string, option: string): boolean {
  const help = spawnSync(bin, ['--help'], { encoding: 'utf8', timeout: 20_000 });
  return new RegExp(`${option}(?![\\w-])`).test(`${help.stdout ?? ''}${help.stderr ?? ''}`);
}

function needTls(ctx: BridgeContext): TlsFiles {
  if (!ctx.tls) throw new Error('a TLS bridge started without its certificate');
  return ctx.tls;
}

/**
 * The TLS section's bridges, each terminating TLS in front of the UNIX socket
 * with the same certificate; no option that changes versions or ciphers, so
 * each negotiates its default with the load client (TLS 1.3, which the client
 * pins, and the JSON records what was agreed).
 */
/**
 * Who-may-connect configured, for the "who" column: an allow list (the
 * clients' loopback range, everything else denied) and per-source limits.
 * Every load client comes from 127.0.0.1, one source, so the limits are
 * set high enough never to refuse one of its connections: each is still
 * counted, looked up and released per connection, which is the cost measured.
 */
const WHO_OPTIONS = ['--deny', 'any', '--allow', '127.0.0.0/8', '--max-conn-per-source', '1000000', '--rate-per-source', '1000000/1s'];

/**
 * On a UNIX listener (the mirror section) the address lists and per-source
 * limits do not apply (sockbridge warns and ignores them): its access list
 * is the clients' uid (SO_PEERCRED), so the who column lets in the uid the
 * benchmark's clients run as, which every connection is checked against.
 */
function whoOptions(sockbridgeBin: string, ctx: BridgeContext): string[] {
  if (!isUnixPath(ctx.listen)) return WHO_OPTIONS;
  if (!sockbridgeHasOption(sockbridgeBin, '--allow-uid')) throw new Error('this build has no --allow-uid');
  return ['--allow-uid', `${process.getuid?.() ?? 0}`];
}

export function tlsBridges(sockbridgeBin: string): Bridge[] {
  const hasRelay = sockbridgeHasOption(sockbridgeBin, '--relay');
  const sockbridge = (name: string, extra: string[]): Bridge => ({
    name,
    unavailable: () => missingFile(sockbridgeBin),
    command: (ctx) => {
      const tls = needTls(ctx);
      return {
        cmd: sockbridgeBin,
        args: [
          '--listen', ctx.listen, '--target', ctx.target, '--log-target', 'stderr',
          '--tls-cert', tls.cert, '--tls-key', tls.key,
          // Only for `sockbridge status` afterwards (per-thread handshakes); nothing else changes.
          '--control-socket', join(ctx.dir, 'bridge.ctl'),
          ...extra,
        ],
      };
    },
  });
  return [
    sockbridge('sockbridge', []),
    { ...sockbridge(WHO, WHO_OPTIONS), unavailable: () => (sockbridgeHasOption(sockbridgeBin, '--rate-per-source') ? missingFile(sockbridgeBin) : 'this build has no --rate-per-source') },
    { ...sockbridge('sockbridge-js', ['--relay', 'js']), unavailable: () => (hasRelay ? missingFile(sockbridgeBin) : 'this build has no --relay') },
    {
      name: 'haproxy',
      unavailable: () => missingFile(HAPROXY),
      command: (ctx) => ({ cmd: HAPROXY, args: ['-db', '-f', writeConfig(ctx, 'haproxy.cfg', haproxyConfig(ctx, ` ssl crt ${needTls(ctx).pem}`))] }),
    },
    {
      name: 'stunnel',
      unavailable: () => missingFile(STUNNEL),
      command: (ctx) => ({ cmd: STUNNEL, args: [writeConfig(ctx, 'stunnel.conf', stunnelConfig(ctx, needTls(ctx)))] }),
    },
    {
      name: 'socat',
      unavailable: () => missingFile(SOCAT),
      // A process per connection (fork), as in the plain section; verify=0: no client certificates.
      command: (ctx) => {
        const tls = needTls(ctx);
        return {
          cmd: SOCAT,
          args: [`OPENSSL-LISTEN:${tcpPort(ctx.listen)},bind=127.0.0.1,cert=${tls.cert},key=${tls.key},verify=0,fork,reuseaddr,nodelay`, `UNIX-CONNECT:${ctx.target}`],
        };
      },
    },
  ];
}

/** socat's listening address: a process per connection (fork) on TCP or on a UNIX socket. */
function socatListen(listen: string): string {
  // unlink-early: socat refuses to bind over an existing socket file.
  if (isUnixPath(listen)) return `UNIX-LISTEN:${listen},fork,unlink-early`;
  // nodelay: every other peer sets TCP_NODELAY on its TCP side; without it
  // socat would be measured on Nagle delays rather than on its design.
  return `TCP-LISTEN:${tcpPort(listen)},bind=127.0.0.1,fork,reuseaddr,nodelay`;
}

/** socat's address of the test server; nodelay on TCP for the same reason as above. */
const socatConnect = (target: string): string => (isUnixPath(target) ? `UNIX-CONNECT:${target}` : `TCP:${target},nodelay`);

/**
 * The plain and mirror sections' bridges: each listens on ctx.listen and
 * connects to ctx.target, a loopback port or a UNIX path either way, in its
 * own syntax.
 */
export function allBridges(sockbridgeBin: string): Bridge[] {
  // Builds from before the native relay had no --relay: their second column is then n/a.
  const hasRelay = sockbridgeHasOption(sockbridgeBin, '--relay');
  // Logging at sockbridge's default level (info: one line per session), on stderr.
  const sockbridge = (name: string, extra: (ctx: BridgeContext) => string[]): Bridge => ({
    name,
    unavailable: () => missingFile(sockbridgeBin),
    command: (ctx) => ({
      cmd: sockbridgeBin,
      // A path for --listen: sockbridge makes the socket file itself (--listen-mode 0660; the benchmark runs as root).
      args: ['--listen', ctx.listen, '--target', ctx.target, '--log-target', 'stderr', ...extra(ctx)],
    }),
  });
  return [
    { name: 'direct', unavailable: () => null, command: () => null },
    sockbridge('sockbridge', () => []),
    {
      ...sockbridge(WHO, (ctx) => whoOptions(sockbridgeBin, ctx)),
      unavailable: () => (sockbridgeHasOption(sockbridgeBin, '--rate-per-source') ? missingFile(sockbridgeBin) : 'this build has no --rate-per-source'),
    },
    // The TypeScript relay (TLS sessions, installs without the native addon): one thread.
    { ...sockbridge('sockbridge-js', () => ['--relay', 'js']), unavailable: () => (hasRelay ? missingFile(sockbridgeBin) : 'this build has no --relay') },
    {
      name: 'haproxy',
      unavailable: () => missingFile(HAPROXY),
      // -db: stay in the foreground, so the PID we started is the proxy.
      command: (ctx) => ({ cmd: HAPROXY, args: ['-db', '-f', writeConfig(ctx, 'haproxy.cfg', haproxyConfig(ctx))] }),
    },
    {
      name: 'nginx',
      unavailable: () => missingFile(NGINX, NGINX_STREAM),
      command: (ctx) => {
        // nginx does not replace a socket file left by an earlier run: bind fails with EADDRINUSE.
        if (isUnixPath(ctx.listen)) rmSync(ctx.listen, { force: true });
        return {
          cmd: NGINX,
          args: [
            '-p', ctx.dir,
            '-e', join(ctx.dir, 'error.log'),
            '-c', writeConfig(ctx, 'nginx.conf', nginxConfig(ctx)),
            '-g', 'daemon off;',
          ],
        };
      },
    },
    {
      name: 'socat',
      unavailable: () => missingFile(SOCAT),
      command: (ctx) => ({ cmd: SOCAT, args: [socatListen(ctx.listen), socatConnect(ctx.target)] }),
    },
    {
      name: 'socket-proxyd',
      unavailable: () => missingFile(PROXYD, ACTIVATE),
      // socket-proxyd starts at the first connection (socket activation; with
      // a path, -l makes a UNIX socket, as a unit's ListenStream=/path would).
      // Its default cap of 256 connections would fail the 2,000-connection idle
      // test on a limit rather than on memory, so it is raised like HAProxy's maxconn.
      command: (ctx) => {
        const args = ['-l', ctx.listen, PROXYD, '--connections-max=8192', ctx.target];
        if (!isUnixPath(ctx.listen)) return { cmd: ACTIVATE, args };
        // It does not ignore SIGPIPE itself: a unit gets that from systemd
        // (IgnoreSIGPIPE=yes, the default), but Node starts children with
        // default dispositions. Splicing into a UNIX client that has gone
        // raises SIGPIPE (a TCP client's reset does not), which killed it in
        // the first bulk-down. env execs, so the PID is still the proxy's.
        return { cmd: ENV, args: ['--ignore-signal=PIPE', ACTIVATE, ...args] };
      },
    },
  ];
}
