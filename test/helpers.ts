// Test helpers: real UNIX-socket servers, a real sockbridge child process, and
// waiting for conditions with a deadline (never a bare sleep).

import assert from 'node:assert/strict';
import { ChildProcess, execFileSync, spawn, SpawnOptions, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { TestContext } from 'node:test';
import tls from 'node:tls';
import type { StatusReport } from '../src/operator/status';

export const ROOT = resolve(__dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'sockbridge');
/**
 * The Node flags on BIN's `#!/usr/bin/env -S node …` line. The tests run BIN
 * with the Node under test (process.execPath), which skips the shebang; without
 * these flags they would measure a bridge with a young generation 16 times the
 * installed one's.
 */
export const NODE_FLAGS = (/^#!\S*env -S node(.*)/.exec(readFileSync(BIN, 'utf8'))?.[1] ?? '').split(' ').filter(Boolean);

/** A fresh directory, readable by everyone (some tests run the bridge as nobody). */
export function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'sockbridge-test-'));
  chmodSync(dir, 0o755);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Poll `cond` until it holds; fail with `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(10);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Bad input ends as one line on stderr containing each of `mustContain`, never a stack trace. */
export function assertOneCleanLine(stderr: string, ...mustContain: string[]): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  for (const s of mustContain) assert.ok(stderr.includes(s), `"${s}" missing from: ${stderr}`);
}

/**
 * A small python3 program (`source`, run with `args`) that prints "ready" once
 * it listens; `lines` collects what it prints. Killed by PID when the test ends.
 */
export async function pythonProgram(t: { after(fn: () => void): void }, source: string, args: string[]): Promise<{ child: ChildProcess; lines: string[] }> {
  const child = spawn('python3', ['-c', source, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => { child.kill('SIGKILL'); });
  const lines: string[] = [];
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  await waitFor(() => lines.includes('ready') || child.exitCode !== null, 10_000, 'the python3 program to be ready');
  assert.ok(lines.includes('ready'), `the python3 program exited (${child.exitCode}) before it was ready`);
  return { child, lines };
}

// ---- running the bridge as another user ------------------------------------------

/** What another user can reach: this Node and the installation, this Node only, or not even this Node. */
type Reach = 'all' | 'node' | 'none';

const reachCache = new Map<string, Reach>();

/** Asks a child running as `uid` (and `gid`) itself, so that every directory's mode, owner and ACL counts. */
function reach(uid: number, gid: number | undefined, root: string): Reach {
  const key = `${uid}:${gid ?? ''}:${root}`;
  let r = reachCache.get(key);
  if (r === undefined) {
    const files = [join(root, 'bin', 'sockbridge'), join(root, 'dist', 'src', 'main.js'), join(root, 'node_modules')];
    const probe = spawnSync(process.execPath, ['-e', `for (const f of ${JSON.stringify(files)}) require('fs').accessSync(f, require('fs').constants.R_OK)`], {
      uid, ...(gid === undefined ? {} : { gid }), stdio: 'ignore', timeout: 10_000,
    });
    const failed = (probe.error as NodeJS.ErrnoException | undefined)?.code;
    // EACCES: execve(2) itself was refused, this Node is out of its reach.
    if (failed !== undefined && failed !== 'EACCES') throw new Error(`cannot check what uid ${uid} can reach: ${failed}`);
    r = failed === 'EACCES' ? 'none' : probe.status === 0 ? 'all' : 'node';
    reachCache.set(key, r);
  }
  return r;
}

/**
 * Why a test cannot run the bridge as `uid`, or false if it can: for the
 * `skip` option of such tests (`{ skip: cannotRunAs(65534) }`). A checkout
 * out of its reach is no reason (the bridge then runs from a copy, see
 * binFor); this Node out of its reach is.
 */
export function cannotRunAs(uid: number, gid?: number): string | false {
  if (process.getuid?.() !== 0) return 'needs root to run the bridge as another user';
  if (reach(uid, gid, ROOT) === 'none') {
    return `uid ${uid} cannot run ${process.execPath} (a directory on its path is closed to it): install Node where uid ${uid} can reach it`;
  }
  return false;
}

let installCopy: string | undefined;

/**
 * A copy of the installation that other users can read: bin/, dist/,
 * package.json and the production node_modules in a world-readable temporary
 * directory, for a checkout they cannot enter (under /root, say). Made once
 * per test process, removed when it exits.
 */
function readableInstallation(): string {
  if (installCopy !== undefined) return installCopy;
  const dir = mkdtempSync(join(tmpdir(), 'sockbridge-install-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  for (const part of ['bin', 'dist', 'package.json', 'native/build/Release/relay.node']) cpSync(join(ROOT, part), join(dir, part), { recursive: true });
  // Production packages only (typescript alone is ~20 MB): the top-level entries the lock file does not mark dev.
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages?: Record<string, { dev?: boolean }> };
  const dev = new Set(Object.entries(lock.packages ?? {}).filter(([, p]) => p.dev === true).map(([path]) => path));
  const modules = join(ROOT, 'node_modules');
  const names = readdirSync(modules).flatMap((n) => n.startsWith('@') ? readdirSync(join(modules, n)).map((sub) => `${n}/${sub}`) : [n]);
  for (const name of names) {
    // Of the dot entries the files only (the ABI record), not .bin/ with its links to dev tools.
    if (dev.has(`node_modules/${name}`) || (name.startsWith('.') && !lstatSync(join(modules, name)).isFile())) continue;
    mkdirSync(dirname(join(dir, 'node_modules', name)), { recursive: true });
    cpSync(join(modules, name), join(dir, 'node_modules', name), { recursive: true });
  }
  installCopy = dir;
  return dir;
}

/** The sockbridge program that `uid` can run: the checkout's own, or a readable copy of the installation. */
function binFor(uid: number | undefined, gid: number | undefined): string {
  if (uid === undefined || uid === process.getuid?.()) return BIN;
  const here = reach(uid, gid, ROOT);
  if (here === 'all') return BIN;
  if (here === 'none') throw new Error(`cannot run the bridge as uid ${uid}: ${cannotRunAs(uid, gid)}; give the test { skip: cannotRunAs(${uid}) }`);
  const copy = readableInstallation();
  if (reach(uid, gid, copy) !== 'all') throw new Error(`uid ${uid} can read neither ${ROOT} nor the copy of it in ${copy} (is TMPDIR private?)`);
  return join(copy, 'bin', 'sockbridge');
}

// ---- UNIX socket servers --------------------------------------------------------

export interface UnixServer {
  server: net.Server;
  path: string;
  /** Sockets currently connected. */
  sockets: Set<net.Socket>;
  close(): Promise<void>;
}

/** Listen on `path` (removing a stale file first); `onConn` gets each connection. */
export function unixServer(path: string, onConn: (s: net.Socket) => void): Promise<UnixServer> {
  try { unlinkSync(path); } catch { /* not there */ }
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConn(s);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve({
      server, path, sockets,
      close: () => new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
    }));
  });
}

/** Echo each byte back; echo the EOF too (half-close aware). */
export function echoServer(path: string): Promise<UnixServer> {
  return unixServer(path, (s) => s.pipe(s));
}

// ---- TCP clients ------------------------------------------------------------------

export function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host, allowHalfOpen: true });
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

/** Everything the peer sends until EOF. Rejects on error or after timeoutMs. */
export function readAll(s: net.Socket, timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error('readAll timed out')); }, timeoutMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => { clearTimeout(timer); resolve(Buffer.concat(chunks)); });
    s.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

/** Connect, send `data`, shut down the write side, return the whole reply. */
export async function roundTrip(port: number, data: Buffer | string, timeoutMs = 10_000): Promise<Buffer> {
  const s = await connect(port);
  const reply = readAll(s, timeoutMs);
  s.end(data);
  const out = await reply;
  s.destroy();
  return out;
}

/** Retry round trips until one succeeds (the service recovered); fail after timeoutMs. */
export function servedAgain(port: number, timeoutMs: number, what: string): Promise<void> {
  return waitFor(async () => {
    try {
      return (await roundTrip(port, 'again?', 2000)).toString() === 'again?';
    } catch {
      return false;
    }
  }, timeoutMs, what);
}

/** Resolves when the peer closes (or resets) the connection; rejects if it stays open past timeoutMs. */
export function closedWithin(s: net.Socket, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.destroyed || s.readableEnded) return resolve(); // (its FIN may have arrived before this call)
    const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
    s.on('error', () => {});
    s.resume();
    const done = (): void => { clearTimeout(timer); resolve(); };
    s.once('end', done); // the peer's FIN (our side may be half-open)
    s.once('close', done);
  });
}

// ---- the bridge as a child process ---------------------------------------------------

export interface BridgeProcess {
  child: ChildProcess;
  /** The first TCP port it listens on (from its "listening on" line). */
  port: number;
  /** All stderr so far. */
  log(): string;
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Send a signal and wait for the exit code (kills -9 after timeoutMs). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  /** Wait for the "listening on" line (default true). */
  waitListening?: boolean;
  spawn?: SpawnOptions;
  /** Run through another command, e.g. ['systemd-socket-activate', '-l', '…']. */
  wrapper?: string[];
}

/** Start `sockbridge ARGS` with logs on stderr; stopped by PID when the test ends. */
export async function startBridge(t: { after(fn: () => Promise<void> | void): void }, args: string[], opts: StartOptions = {}): Promise<BridgeProcess> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
  for (const k of ['JOURNAL_STREAM', 'INVOCATION_ID', 'NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'WATCHDOG_USEC']) {
    if (!opts.env || !(k in opts.env)) delete env[k];
  }
  const relay = args.includes('--relay') || args.includes('--tls-cert') ? [] : ['--relay', TEST_RELAY];
  const argv = [...(opts.wrapper ?? []), process.execPath, ...NODE_FLAGS, binFor(opts.spawn?.uid, opts.spawn?.gid), '--log-target', 'stderr', ...relay, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { ...opts.spawn, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => { stderr += d; });
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  const waitForLog = async (pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> => {
    let m: RegExpMatchArray | null = null;
    let dead = false;
    void exited.then(() => { dead = true; });
    await waitFor(() => (m = pattern.exec(stderr)) !== null || dead, timeoutMs, `log line ${pattern} (log so far:\n${stderr})`);
    if (!m) throw new Error(`sockbridge exited (code ${child.exitCode}) before logging ${pattern}; log:\n${stderr}`);
    return m;
  };
  const stop = async (signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<number | null> => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  t.after(async () => { await stop('SIGKILL'); });

  let port = 0;
  if (opts.waitListening !== false) {
    const m = await waitForLog(/listening on (?:\[[^\]]*\]|[^:\s,]+):(\d+)/);
    port = Number(m[1]);
  }
  return { child, port, log: () => stderr, waitForLog, stop, exited };
}

/** Run sockbridge to completion (for bad-input cases): exit code, stdout, stderr. */
export function runBridge(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...NODE_FLAGS, BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    // 'close', not 'exit': only then has all of stdout been read (a loaded machine shows the difference).
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

/** A free loopback port (bound then released: good enough for tests). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.once('error', reject);
  });
}

/**
 * The relay a test's bridge runs unless its arguments name one: the native
 * relay by default, forced (so that a relay that cannot load fails the test
 * instead of falling back); `make unit` runs the relay tests again with
 * SOCKBRIDGE_TEST_RELAY=js.
 */
export const TEST_RELAY = process.env['SOCKBRIDGE_TEST_RELAY'] === 'js' ? 'js' : 'native';

/** The PIDs whose parent is `pid` (from /proc: no procps needed). */
export function childPids(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // Field 4 of /proc/PID/stat, after "(comm)", which may itself hold spaces.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) children.push(Number(entry));
    } catch {
      // the process ended meanwhile
    }
  }
  return children;
}

/**
 * The most common setup: an echo program on a fresh socket, and sockbridge in
 * front of it with `args` (the target is added). Both stopped when the test ends.
 */
export async function bridgeToEcho(t: TestContext, args: string[], opts: StartOptions = {}): Promise<{ dir: string; srv: UnixServer; bridge: BridgeProcess }> {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const bridge = await startBridge(t, [...args, '--target', srv.path], opts);
  return { dir, srv, bridge };
}

/**
 * The program behind the bridge: argv PATH RESETS LENGTH [partial].
 *
 * A UNIX socket has no RST (Node's resetAndDestroy() refuses a pipe handle):
 * its peer reads ECONNRESET only when a connection is closed with bytes still
 * unread in its receive queue (or never accepted at all), which is exactly
 * what a restart does to the requests queued on the old socket. Closing after
 * reading the request would be a clean EOF, which the bridge forwards as one.
 * So the first RESETS connections wait, without reading (MSG_PEEK), until all
 * LENGTH bytes of the request are queued, and close: that is a reset before
 * any reply byte, and the bridge has read the whole request by then (the
 * 64 KiB limit counts what it read from the client). With "partial" they
 * answer one byte "x" first and reset only when told to on stdin (once the
 * client has that byte, so the bridge has read it: a byte and the reset
 * arriving together are reported by libuv as EOF, not as the reset). Later
 * connections read LENGTH bytes and echo them. One line per connection on
 * stdout; a connection that ends without a byte (a health check) is not counted.
 */
export const RESETTING_PROGRAM = `
import os, socket, sys, time
path, resets, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
partial = len(sys.argv) > 4 and sys.argv[4] == "partial"
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(64)
print("ready", flush=True)
n = 0
while True:
    conn, _ = srv.accept()
    deadline = time.monotonic() + 20
    queued = b""
    while len(queued) < length and time.monotonic() < deadline:
        queued = conn.recv(length, socket.MSG_PEEK)
        if len(queued) == 0:
            break  # EOF before any byte
        if len(queued) < length:
            time.sleep(0.002)
    if len(queued) == 0:
        print("empty", flush=True)
        conn.close()
        continue
    n += 1
    if n <= resets:
        if partial:
            conn.sendall(b"x")
            print("conn %d answered x" % n, flush=True)
            sys.stdin.readline()
        print("conn %d reset, %d bytes unread" % (n, len(queued)), flush=True)
        conn.close()
        continue
    data = b""
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            break
        data += chunk
    conn.sendall(data)
    print("conn %d echo %d" % (n, len(data)), flush=True)
    conn.close()
`;


/**
 * The data plane under test is the sanitizer build (make test-asan): every
 * allocation checked, several times slower. Tests that count in thousands
 * scale down under it: memory errors show at any count, and RSS bounds mean
 * nothing under ASan's quarantine.
 */
export const SANITIZED = /\/asan\//.test(process.env['SOCKBRIDGE_RELAY_ADDON'] ?? '');

/**
 * Whether the data plane under test is a test build (make test-asan builds
 * one with -DSOCKBRIDGE_TEST_HOOKS): only it can make named steps fail on
 * purpose (SOCKBRIDGE_FAILPOINTS), for the tests of what out-of-memory or a
 * teardown would do.
 */
export const TEST_HOOKS: boolean = (() => {
  try {
    const path = process.env['SOCKBRIDGE_RELAY_ADDON'] ?? join(ROOT, 'native', 'build', 'Release', 'relay.node');
    return (require(path) as { testHooks?: boolean }).testHooks === true;
  } catch {
    return false;
  }
})();

// ---- TLS material ------------------------------------------------------------------

/** Run openssl in `dir` (its stderr in the error if it fails). */
export function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * A CA (ca.crt), a server certificate for 127.0.0.1 (server.crt, server.key,
 * server.csr), and client certificates: good (client), signed by another CA
 * (stranger), expired (expired); all ECDSA P-256, in `dir`.
 */
export function makePki(dir: string): void {
  const ca = (name: string): void => openssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '30', '-subj', `/CN=${name}`);
  const csr = (name: string): void => openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  const sign = (name: string, by: string, ...extra: string[]): void => openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', `${by}.crt`, '-CAkey', `${by}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '30', ...extra);
  ca('ca');
  ca('other-ca');
  csr('server');
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  sign('server', 'ca', '-extfile', 'san.ext');
  csr('client');
  sign('client', 'ca');
  csr('stranger');
  sign('stranger', 'other-ca');
  // An expired certificate needs explicit dates: openssl ca can set them.
  csr('expired');
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(join(dir, 'ca.cnf'), `[ca]\ndefault_ca=d\n[d]\ndir=${dir}\ndatabase=${dir}/index.txt\nnew_certs_dir=${dir}\nserial=${dir}/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n`);
  openssl(dir, 'ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca.crt', '-keyfile', 'ca.key', '-in', 'expired.csr', '-out', 'expired.crt', '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-notext');
}

/** `sockbridge status --json` of the bridge whose control socket is `ctl`. */
export async function status(ctl: string): Promise<StatusReport> {
  const r = await runBridge(['status', '--json', '--control-socket', ctl]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusReport;
}

/** makePki's certificates and an echo program (app.sock) counting its connections, in a fresh directory. */
export async function pkiAndEcho(t: { after(fn: () => void): void }): Promise<{ dir: string; srv: UnixServer; seen: () => number }> {
  const dir = tempDir(t);
  makePki(dir);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  let seen = 0;
  srv.server.on('connection', () => { seen++; });
  return { dir, srv, seen: () => seen };
}

/** A TLS client of the bridge trusting makePki's CA, with client certificate `client` (a name makePki made) if given. */
export function tlsConnect(port: number, dir: string, client?: string, extra: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const opts: tls.ConnectionOptions = { host: '127.0.0.1', port, ca: readFileSync(join(dir, 'ca.crt')), ...extra };
    if (client) {
      opts.cert = readFileSync(join(dir, `${client}.crt`));
      opts.key = readFileSync(join(dir, `${client}.key`));
    }
    const s = tls.connect(opts, () => resolve(s));
    s.once('error', reject);
  });
}

// ---- a fake systemd for restarts (test/programs/fake-systemd.py) ----------------------

export interface SdEvent {
  event: 'listening' | 'ready' | 'exited' | 'removed' | 'status';
  text?: string;
  port?: number;
  gen?: number;
  pid?: number;
  code?: number;
  stored?: Record<string, number>;
  name?: string;
  count?: number;
}

export interface FakeSystemd {
  port: number;
  events: SdEvent[];
  send(command: 'restart' | 'restart-corrupt' | 'restart-v1' | 'handover' | 'start' | 'stop'): void;
  next(pred: (e: SdEvent) => boolean, what: string, timeoutMs?: number): Promise<SdEvent>;
  log(gen: number): string;
  /** Wait for a line in a generation's log (sockbridge writes its stderr lines once per event-loop turn). */
  waitLog(gen: number, pattern: RegExp): Promise<void>;
}

/** fake-systemd.py running sockbridge with `args`; it and every bridge it started are stopped by PID when the test ends. */
export async function fakeSystemd(t: TestContext, dir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<FakeSystemd> {
  const script = join(ROOT, 'test', 'programs', 'fake-systemd.py');
  // The handover needs the native relay (its fd passing): forced, so that one that cannot load fails here.
  const child = spawn('python3', [script, dir, process.execPath, ...NODE_FLAGS, BIN, '--log-target', 'stderr', '--relay', 'native', ...args],
    { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  const events: SdEvent[] = [];
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) events.push(JSON.parse(buf.slice(0, i)) as SdEvent);
  });
  t.after(async () => {
    const bridges = events.filter((e) => e.event === 'ready').map((e) => e.pid!);
    child.stdin!.end();
    await waitFor(() => child.exitCode !== null || child.signalCode !== null, 20_000, 'fake-systemd.py to stop its bridge and exit').catch(() => child.kill('SIGKILL'));
    for (const pid of bridges) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* stopped already */ }
    }
  });
  const next = async (pred: (e: SdEvent) => boolean, what: string, timeoutMs = 15_000): Promise<SdEvent> => {
    await waitFor(() => events.some(pred) || child.exitCode !== null, timeoutMs, what);
    const e = events.find(pred);
    if (!e) throw new Error(`fake-systemd.py exited (${child.exitCode}) before ${what}; events: ${JSON.stringify(events)}`);
    return e;
  };
  const log = (gen: number): string => readFileSync(join(dir, `gen-${gen}.log`), 'utf8');
  const listening = await next((e) => e.event === 'listening', 'the listening socket');
  await next((e) => e.event === 'ready' && e.gen === 1, 'READY=1 from the first bridge');
  return {
    port: listening.port!, events, next,
    send: (command) => child.stdin!.write(`${command}\n`),
    log,
    waitLog: (gen, pattern) => waitFor(() => pattern.test(log(gen)), 5000, `${pattern} in the log of bridge ${gen}`).catch((err: Error) => {
      throw new Error(`${err.message}; its log:\n${log(gen)}`);
    }),
  };
}
