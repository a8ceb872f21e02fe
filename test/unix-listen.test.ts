// The client end of remote access listens on a UNIX socket: --listen PATH
// (a file made with --listen-mode/-owner/-group, a stale one replaced, a
// live one or a non-socket refused, removed on a clean stop unless another
// inode took its place) and --listen @name (abstract); sockets passed by
// systemd are served as systemd made them. A UNIX client has no address: it
// is named by its credentials, and --allow/--deny do not judge it.

import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test, TestContext } from 'node:test';
import { Logger } from '../src/log';
import { Stats } from '../src/operator/stats';
import { recordSessionEnd } from '../src/session/contract';
import type { Backend } from '../src/targets/backend';
import {
  assertOneCleanLine, BridgeProcess, cannotRunAs, echoServer, readAll, runBridge, startBridge, StartOptions, tempDir, TEST_RELAY, unixServer,
} from './helpers';

// ---- helpers ------------------------------------------------------------------------

/** The bridge in front of an echo program, listening on `listen` (a path or @name); waits for its "listening on" line. */
async function unixBridge(t: TestContext, listen: string, args: string[] = [], opts: StartOptions = {}): Promise<{ dir: string; bridge: BridgeProcess }> {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', listen.replace('DIR', dir), '--target', srv.path, ...args], { ...opts, waitListening: false });
  await bridge.waitForLog(new RegExp(`listening on ${escape(listen.replace('DIR', dir))}[,\\s]`));
  return { dir, bridge };
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function unixConnect(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path, allowHalfOpen: true });
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

/** Connect, send, shut down the write side, return the whole reply. */
async function unixRoundTrip(path: string, data: string): Promise<string> {
  const s = await unixConnect(path);
  const reply = readAll(s);
  s.end(data);
  const out = (await reply).toString();
  s.destroy();
  return out;
}

/**
 * The same from python3, which names an abstract socket by exactly its
 * bytes, as C programs, socat and the data plane do (Node before 22 pads
 * "\0name" to 108 bytes: another name). Asynchronous: the echo program runs
 * in this process.
 */
function pythonRoundTrip(address: string, data: string): Promise<string> {
  const source = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1].replace("@", "\\0", 1))
s.sendall(sys.argv[2].encode())
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
`;
  return new Promise((resolve, reject) => {
    execFile('python3', ['-c', source, address, data], { timeout: 10_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(stdout)));
  });
}

/** A socket file nobody listens on, as a crashed run leaves it (python3 binds and exits without unlinking). */
function staleSocket(path: string): void {
  execFileSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path]);
}

const mode = (path: string): number => statSync(path).mode & 0o777;

// ---- serving -----------------------------------------------------------------------

test('a client over a UNIX listener reaches the program; named by its credentials; status lists the path', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const path = join(dir, 'remote.sock');
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--listen', path, '--target', srv.path, '--control-socket', ctl]);
  assert.equal(await unixRoundTrip(path, 'over a UNIX socket'), 'over a UNIX socket');
  // The native relay reads SO_PEERCRED; Node offers no way to, so the TypeScript relay cannot name the client.
  if (TEST_RELAY === 'native') {
    await bridge.waitForLog(new RegExp(`session pid ${process.pid} \\(uid ${process.getuid!()}, gid ${process.getgid!()}\\) closed \\(done\\), 18 bytes in, 18 bytes out`));
  } else {
    await bridge.waitForLog(/session .* closed \(done\), 18 bytes in, 18 bytes out/);
  }
  const status = await runBridge(['status', '--control-socket', ctl, '--json']);
  assert.equal(status.code, 0, status.stderr);
  const addresses = (JSON.parse(status.stdout) as { listeners: { address: string }[] }).listeners.map((l) => l.address);
  assert.deepEqual(addresses, [`127.0.0.1:${bridge.port}`, path]);
});

test('a UNIX listener\'s session end carries CLIENT_PID, CLIENT_UID and CLIENT_GID for the journal', () => {
  const entries: { message: string; fields: Record<string, string | number> }[] = [];
  const logger = new Logger({ write: (_level, message, fields) => entries.push({ message, fields }) }, 'info');
  const backend = { pool: { describe: () => '/run/app.sock', prune: () => undefined } } as unknown as Backend;
  recordSessionEnd({ stats: new Stats(), logger, backend }, {
    clientAddr: '', clientPort: 0, startedAt: Date.now(), endedAt: Date.now(), reason: 'done', error: undefined, bytesIn: 3, bytesOut: 4, target: undefined, resets: 0,
    cred: { pid: 1234, uid: 1000, gid: 100 },
  });
  assert.equal(entries.length, 1);
  assert.match(entries[0]!.message, /^session pid 1234 \(uid 1000, gid 100\) closed \(done\)/);
  assert.deepEqual({ ...entries[0]!.fields, DURATION_MS: 0 }, {
    EVENT: 'session-end', CLIENT_PID: 1234, CLIENT_UID: 1000, CLIENT_GID: 100, BYTES_IN: 3, BYTES_OUT: 4, DURATION_MS: 0, REASON: 'done', TARGET: '/run/app.sock',
  });
});

test('half-close through a UNIX listener: the reply still arrives after the client shut down its write side', async (t) => {
  const dir = tempDir(t);
  // Answers only after the request's EOF, in pieces.
  const srv = await unixServer(join(dir, 'app.sock'), (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      const req = Buffer.concat(chunks).toString();
      let i = 0;
      const timer = setInterval(() => {
        if (i++ < 3) s.write(`part${i}:${req};`);
        else { clearInterval(timer); s.end('END'); }
      }, 20);
    });
  });
  t.after(() => srv.close());
  const path = join(dir, 'remote.sock');
  const bridge = await startBridge(t, ['--listen', path, '--target', srv.path], { waitListening: false });
  await bridge.waitForLog(/listening on /);
  assert.equal(await unixRoundTrip(path, 'GET'), 'part1:GET;part2:GET;part3:GET;END');
});

test('@name: an abstract listener, bound by exactly its name', async (t) => {
  const name = `sockbridge-test-${process.pid}-${TEST_RELAY}`;
  await unixBridge(t, `@${name}`);
  const bound = readFileSync('/proc/net/unix', 'utf8').split('\n').map((l) => l.trim().split(/\s+/)[7]).filter((p) => p?.startsWith(`@${name}`));
  assert.deepEqual(bound, [`@${name}`], 'bound as @name, not padded to sun_path\'s 108 bytes');
  assert.equal(await pythonRoundTrip(`@${name}`, 'abstract'), 'abstract');
});

test('--deny any does not judge a UNIX listener\'s clients; the warning at start says so, once', async (t) => {
  const { dir, bridge } = await unixBridge(t, 'DIR/remote.sock', ['--deny', 'any', '--allow', '192.0.2.0/24']);
  assert.equal(await unixRoundTrip(join(dir, 'remote.sock'), 'not judged'), 'not judged');
  const warnings = bridge.log().split('\n').filter((l) => l.includes('--allow/--deny apply to IP clients only'));
  assert.equal(warnings.length, 1, bridge.log());
  assert.match(warnings[0]!, /warning .*clients of \S+remote\.sock are not judged/);

  const tcpOnly = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', join(dir, 'app.sock'), '--deny', 'any']);
  assert.doesNotMatch(tcpOnly.log(), /IP clients only/, 'no warning without a UNIX listener');
});

// ---- the file: mode, owner, group ---------------------------------------------------------

test('the socket file: mode 0660 by default, --listen-mode 0600', async (t) => {
  const { dir } = await unixBridge(t, 'DIR/default.sock');
  assert.equal(mode(join(dir, 'default.sock')), 0o660);
  const { dir: dir2 } = await unixBridge(t, 'DIR/private.sock', ['--listen-mode', '0600']);
  assert.equal(mode(join(dir2, 'private.sock')), 0o600);
  assert.deepEqual(readdirSync(dir2).filter((f) => f.startsWith('.')), [], 'no temporary name left behind');
});

test('--listen-owner and --listen-group: names and numbers', { skip: process.getuid?.() !== 0 && 'needs root to give the socket to another user (chown)' }, async (t) => {
  const { dir } = await unixBridge(t, 'DIR/owned.sock', ['--listen-owner', 'nobody', '--listen-group', 'nogroup']);
  const st = statSync(join(dir, 'owned.sock'));
  assert.deepEqual([st.uid, st.gid], [65534, 65534]);
  const { dir: dir2 } = await unixBridge(t, 'DIR/numbers.sock', ['--listen-group', '65534']);
  const st2 = statSync(join(dir2, 'numbers.sock'));
  assert.deepEqual([st2.uid, st2.gid], [0, 65534], 'the owner unchanged, the group given');
});

test('--listen-owner without CAP_CHOWN: exit 78, one line naming CAP_CHOWN; nothing left behind', { skip: cannotRunAs(65534, 65534) }, async (t) => {
  const dir = tempDir(t);
  chmodSync(dir, 0o777); // nobody binds here
  const path = join(dir, 'remote.sock');
  const bridge = await startBridge(t, ['--listen', path, '--listen-owner', 'root', '--target', join(dir, 'app.sock')], {
    spawn: { uid: 65534, gid: 65534 }, waitListening: false,
  });
  assert.equal(await bridge.exited, 78);
  assertOneCleanLine(bridge.log(), path, 'EPERM', 'CAP_CHOWN', '[ELISTEN_CHOWN]');
  assert.deepEqual(readdirSync(dir), [], 'neither the socket nor its temporary name remains');
});

test('an unknown --listen-group: exit 78, one line', async (t) => {
  const dir = tempDir(t);
  const r = await runBridge(['--listen', join(dir, 'x.sock'), '--listen-group', 'no-such-group-here', '--target', join(dir, 'app.sock')]);
  assert.equal(r.code, 78);
  assertOneCleanLine(r.stderr, 'no group "no-such-group-here"', '--listen-group');
});

// ---- what was at the path ------------------------------------------------------------------

test('a stale socket file left by a crashed run is replaced', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'remote.sock');
  staleSocket(path);
  const before = statSync(path).ino;
  await unixBridge(t, path);
  assert.notEqual(statSync(path).ino, before, 'a new socket in its place');
  assert.equal(await unixRoundTrip(path, 'replaced'), 'replaced');
});

test('a socket another process listens on: exit 78, one line; its file untouched', async (t) => {
  const dir = tempDir(t);
  const other = await unixServer(join(dir, 'other.sock'), (s) => s.end());
  t.after(() => other.close());
  const before = statSync(other.path).ino;
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', other.path, '--target', srv.path], { waitListening: false });
  assert.equal(await bridge.exited, 78);
  assertOneCleanLine(bridge.log(), `another process listens on ${other.path}`, '[ELISTEN_IN_USE]');
  assert.equal(statSync(other.path).ino, before);
});

test('a path that exists and is not a socket: exit 78, one line; the file untouched', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'remote.sock');
  writeFileSync(path, 'precious');
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', path, '--target', srv.path], { waitListening: false });
  assert.equal(await bridge.exited, 78);
  assertOneCleanLine(bridge.log(), path, 'not a socket', '[ELISTEN_NOT_SOCKET]');
  assert.equal(readFileSync(path, 'utf8'), 'precious');
});

test('a listen path in a missing directory: exit 64 on the command line, 78 from a file, one line naming the option', async (t) => {
  const dir = tempDir(t);
  const missing = join(dir, 'nope', 'remote.sock');
  const cli = await runBridge(['check-config', '--listen', missing]);
  assert.equal(cli.code, 64);
  assertOneCleanLine(cli.stderr, '--listen', join(dir, 'nope'), 'does not exist');
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `listen = ${missing}\n`);
  const file = await runBridge(['--config', conf]);
  assert.equal(file.code, 78);
  assertOneCleanLine(file.stderr, `${conf}:1`, 'listen', 'does not exist');
});

// ---- stopping ------------------------------------------------------------------------------

test('SIGTERM removes the socket file', async (t) => {
  const { dir, bridge } = await unixBridge(t, 'DIR/remote.sock');
  assert.ok(existsSync(join(dir, 'remote.sock')));
  assert.equal(await bridge.stop('SIGTERM'), 0);
  assert.ok(!existsSync(join(dir, 'remote.sock')), 'the socket file outlived a clean stop');
});

test('SIGTERM leaves a socket file that another inode replaced meanwhile', async (t) => {
  const { dir, bridge } = await unixBridge(t, 'DIR/remote.sock');
  const path = join(dir, 'remote.sock');
  // Another instance's socket, renamed into place as sockbridge itself does.
  staleSocket(join(dir, 'theirs.sock'));
  renameSync(join(dir, 'theirs.sock'), path);
  const theirs = statSync(path).ino;
  assert.equal(await bridge.stop('SIGTERM'), 0);
  assert.ok(existsSync(path), 'removed a file that was not ours');
  assert.equal(statSync(path).ino, theirs);
});

// ---- socket activation ----------------------------------------------------------------------

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

test('a UNIX socket passed by systemd is served as systemd made it: mode and owner untouched', { skip: !have('systemd-socket-activate') && 'systemd-socket-activate is not installed (apt install systemd)' }, async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const path = join(dir, 'activated.sock');
  // --listen-mode and --listen-owner are for sockets sockbridge binds: with a passed one they must not apply.
  const args = ['--target', srv.path, '--listen', join(dir, 'ignored.sock'), '--listen-mode', '0600', '--allow', '192.0.2.0/24'];
  if (process.getuid?.() === 0) args.push('--listen-owner', 'nobody');
  const bridge = await startBridge(t, args, {
    wrapper: ['systemd-socket-activate', '-l', path, '--fdname=remote.socket'],
    waitListening: false,
  });
  await bridge.waitForLog(new RegExp(`Listening on ${escape(path)} as 3`));
  const made = statSync(path);
  assert.equal(await unixRoundTrip(path, 'activated'), 'activated');
  await bridge.waitForLog(/listening on systemd fd 3 \(remote\.socket\)/);
  const now = statSync(path);
  assert.deepEqual([now.mode, now.uid, now.gid, now.ino], [made.mode, made.uid, made.gid, made.ino]);
  assert.ok(!existsSync(join(dir, 'ignored.sock')), '--listen must be ignored under socket activation');
  assert.match(bridge.log(), /--allow\/--deny apply to IP clients only: clients of systemd fd 3 \(remote\.socket\) are not judged/);
});
