// Both ends of remote access, each a sockbridge: the server end (a TLS port
// requiring client certificates → the program's UNIX socket) and the client
// end (a local listener → the server end over TCP and TLS, with its client
// certificate). Real processes, real OpenSSL, real sockets; the relay under
// test is both ends' (SOCKBRIDGE_TEST_RELAY).

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeFileSync } from 'node:fs';
import {
  assertOneCleanLine, BridgeProcess, closedWithin, connect, echoServer, freePort, makePki, pkiAndEcho, pythonProgram, readAll, roundTrip, runBridge, startBridge, tempDir,
  TEST_RELAY, UnixServer,
} from './helpers';

interface Ends {
  dir: string;
  srv: UnixServer;
  /** Connections the program saw. */
  seen: () => number;
  server: BridgeProcess;
  serverArgs: string[];
  client: BridgeProcess;
}

/** A program (echo) behind a server end on serverPort, and a client end in front of it; `clientArgs` replace the client end's TLS options. */
async function ends(t: { after(fn: () => void | Promise<void>): void }, clientArgs?: (dir: string) => string[], extraClient: string[] = []): Promise<Ends> {
  const { dir, srv, seen } = await pkiAndEcho(t);
  const serverPort = await freePort();
  const serverArgs = ['--listen', `127.0.0.1:${serverPort}`, '--target', srv.path, '--check-interval', '0',
    '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt')];
  const server = await startBridge(t, serverArgs);
  const tlsArgs = clientArgs ? clientArgs(dir) : ['--target-tls', 'on', '--target-tls-ca', join(dir, 'ca.crt'),
    '--target-tls-cert', join(dir, 'client.crt'), '--target-tls-key', join(dir, 'client.key')];
  const client = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', `127.0.0.1:${serverPort}`, '--check-interval', '0', ...tlsArgs, ...extraClient]);
  return { dir, srv, seen, server, serverArgs, client };
}

test('client end → TLS with a client certificate → server end → the program: echo verified, half-close through both', async (t) => {
  const { client, server } = await ends(t);
  const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
  assert.deepEqual(await roundTrip(client.port, data), data);
  // Half-close: the client ends its writing, the whole reply still arrives through both bridges.
  const c = await connect(client.port);
  const reply = readAll(c);
  c.end('request, then half-close');
  assert.equal((await reply).toString(), 'request, then half-close');
  await server.waitForLog(/session 127\.0\.0\.1:\d+ closed \(done\)/);
  await client.waitForLog(/session 127\.0\.0\.1:\d+ closed \(done\)[^\n]*/);
  assert.match(client.log(), /forwarding to 127\.0\.0\.1:\d+/);
});

test('the server end restarted while clients arrive: the client end holds them, none fails', async (t) => {
  const e = await ends(t, undefined, ['--connect-timeout', '10s']);
  assert.equal((await roundTrip(e.client.port, 'before')).toString(), 'before');
  await e.server.stop('SIGKILL');
  // Clients arriving while no server end listens are held by the client end.
  const during = [0, 1, 2, 3, 4].map((i) => roundTrip(e.client.port, `during ${i}`, 20_000));
  await e.client.waitForLog(/target 127\.0\.0\.1:\d+ refuses connections \(no program listening\) \(ECONNREFUSED\)|clients are held/, 5000);
  const again = await startBridge(t, e.serverArgs);
  assert.ok(again.port > 0);
  const replies = await Promise.all(during);
  replies.forEach((r, i) => assert.equal(r.toString(), `during ${i}`));
  assert.doesNotMatch(e.client.log(), /closed \((connect-timeout|target-error)/);
});

test('a far end that drops SYNs fails over to the backup within connect-timeout, one attempt lost', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  // A listener that never accepts, its queue filled: the kernel drops further SYNs (a black hole, on loopback).
  const { lines } = await pythonProgram(t, `
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
print(s.getsockname()[1], flush=True)
fill = []
for _ in range(4):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(("127.0.0.1", s.getsockname()[1]))
    except BlockingIOError: pass
    fill.append(c)
time.sleep(0.3)
print("ready", flush=True)
time.sleep(120)
`, []);
  const blackHole = Number(lines[0]);
  const backupPort = await freePort();
  const backup = await startBridge(t, ['--listen', `127.0.0.1:${backupPort}`, '--target', srv.path, '--check-interval', '0']);
  assert.ok(backup.port > 0);
  const client = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', `127.0.0.1:${blackHole}`, '--backup-target', `127.0.0.1:${backupPort}`,
    '--check-interval', '0', '--connect-timeout', '5s', '--connect-attempt-timeout', '500ms']);
  const started = Date.now();
  assert.equal((await roundTrip(client.port, 'via the backup', 10_000)).toString(), 'via the backup');
  const took = Date.now() - started;
  assert.ok(took < 3000, `failover took ${took} ms (connect-timeout 5 s, one attempt 500 ms)`);
});

test('a far end that accepts but never answers the TLS handshake fails over to the backup within connect-timeout', async (t) => {
  const e = await ends(t);
  // Accepts every connection and reads the ClientHello, never answers: the connect succeeds at once, the handshake never does.
  const { lines } = await pythonProgram(t, `
import socket, threading, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
held = []
def serve():
    while True:
        c, _ = s.accept(); held.append(c); c.recv(4096)
threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
time.sleep(120)
`, []);
  const silent = Number(lines[0]);
  const serverPort = e.serverArgs[e.serverArgs.indexOf('--listen') + 1]!;
  const client = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', `127.0.0.1:${silent}`, '--backup-target', serverPort,
    '--check-interval', '0', '--connect-timeout', '5s', '--connect-attempt-timeout', '500ms',
    '--target-tls', 'on', '--target-tls-ca', join(e.dir, 'ca.crt'),
    '--target-tls-cert', join(e.dir, 'client.crt'), '--target-tls-key', join(e.dir, 'client.key')]);
  const started = Date.now();
  assert.equal((await roundTrip(client.port, 'via the backup', 10_000)).toString(), 'via the backup');
  const took = Date.now() - started;
  assert.ok(took < 3000, `failover took ${took} ms (connect-timeout 5 s, one attempt 500 ms)`);
});

test('a client end without a certificate, or with one from another CA, never reaches the program', async (t) => {
  for (const variant of ['none', 'stranger'] as const) {
    const e = await ends(t, (dir) => ['--target-tls', 'on', '--target-tls-ca', join(dir, 'ca.crt'),
      ...(variant === 'stranger' ? ['--target-tls-cert', join(dir, 'stranger.crt'), '--target-tls-key', join(dir, 'stranger.key')] : [])],
    ['--connect-timeout', '1s']);
    const c = await connect(e.client.port);
    c.on('error', () => {});
    c.write('let me in');
    await closedWithin(c, 8000);
    await e.server.waitForLog(/TLS handshake with 127\.0\.0\.1:\d+ failed, client refused/);
    // TLS 1.3: the client end's handshake is done before the server end reads its certificate; the refusal then arrives as a reset.
    await e.client.waitForLog(/closed \((target-error|connect-timeout|server-error)[^)]*\)/);
    assert.equal(e.seen(), 0, `${variant}: a refused client end reached the program`);
  }
});

test('the client end refuses a server certificate for another name', async (t) => {
  const e = await ends(t, (dir) => ['--target-tls', 'on', '--target-tls-ca', join(dir, 'ca.crt'), '--target-tls-name', 'db.example.org',
    '--target-tls-cert', join(dir, 'client.crt'), '--target-tls-key', join(dir, 'client.key')], ['--connect-timeout', '1s']);
  const c = await connect(e.client.port);
  c.on('error', () => {});
  c.write('hello?');
  await closedWithin(c, 8000);
  await e.client.waitForLog(/certificate|hostname|altname|ERR_TLS_CERT_ALTNAME_INVALID/i);
  assert.equal(e.seen(), 0, 'the program was reached through a server end with the wrong name');
});

test('abstract sockets as targets: @name reaches a program listening in the abstract namespace (the data plane; the TypeScript relay says it cannot)', async (t) => {
  const name = `sockbridge-test-${process.pid}-${Date.now()}`;
  // Bound by a program that is not Node (Node's sockets pad an abstract name to the whole sun_path).
  await pythonProgram(t, `
import socket, sys, threading
s = socket.socket(socket.AF_UNIX); s.bind("\\0" + sys.argv[1]); s.listen(16)
print("ready", flush=True)
def echo(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
`, [name]);
  if (TEST_RELAY === 'js') {
    const r = await runBridge(['--relay', 'js', '--listen', '127.0.0.1:0', '--target', `@${name}`, '--log-target', 'stderr']);
    assert.equal(r.code, 78, r.stderr);
    assertOneCleanLine(r.stderr, `target @${name} is an abstract socket, which only the native data plane reaches`, '[ECONFIG_ABSTRACT]');
    return;
  }
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', `@${name}`, '--check-interval', '100ms']);
  assert.equal((await roundTrip(bridge.port, 'abstract')).toString(), 'abstract');
  await bridge.waitForLog(new RegExp(`target @${name} is UP`));
});

test('target names: a TCP target without a port, an unreadable client key and target-tls options without target-tls are one line each', async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  const noPort = await runBridge(['check-config', '--target', 'db.example.org']);
  assert.equal(noPort.code, 64, noPort.stderr);
  assertOneCleanLine(noPort.stderr, '--target', 'needs a port');
  const badKey = await runBridge(['check-config', '--target', '127.0.0.1:1', '--target-tls', 'on', '--target-tls-cert', join(dir, 'client.crt'),
    '--target-tls-key', join(dir, 'missing.key')]);
  assert.equal(badKey.code, 64, badKey.stderr);
  assertOneCleanLine(badKey.stderr, '--target-tls-key');
  const off = await runBridge(['check-config', '--target', '127.0.0.1:1', '--target-tls-ca', join(dir, 'ca.crt')]);
  assert.equal(off.code, 64, off.stderr);
  assertOneCleanLine(off.stderr, 'target-tls is off');
  const conf = join(dir, 'c.conf');
  writeFileSync(conf, 'target = db.example.org\n');
  const fromFile = await runBridge(['check-config', '--config', conf]);
  assert.equal(fromFile.code, 78, fromFile.stderr);
  assertOneCleanLine(fromFile.stderr, 'c.conf:1', 'needs a port');
});
