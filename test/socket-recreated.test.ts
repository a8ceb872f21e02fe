// The core promise: the target's socket file may be deleted and recreated by
// its owner at any time, and clients are held, not dropped, meanwhile.

import assert from 'node:assert/strict';
import { unlinkSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { closedWithin, connect, delay, echoServer, readAll, roundTrip, startBridge, tempDir, UnixServer } from './helpers';

/** What a well-behaved program does on restart: delete its socket, stop accepting, let its open connections finish. */
function restartGracefully(srv: UnixServer): Promise<void> {
  unlinkSync(srv.path);
  return new Promise((resolve) => {
    srv.server.close(() => resolve());
  });
}

test('a client loop survives the socket being deleted and recreated many times, with zero failed sessions', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  let srv = await echoServer(path);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--connect-timeout', '5s', '--log-level', 'debug']);
  t.after(() => srv.close());

  let running = true;
  let ok = 0;
  const failures: string[] = [];
  const clientLoop = async (id: number): Promise<void> => {
    for (let i = 0; running && i < 100_000; i++) {
      const msg = `client ${id} request ${i}`;
      try {
        const reply = await roundTrip(bridge.port, msg, 10_000);
        if (reply.toString() === msg) ok++;
        else failures.push(`${msg}: got "${reply}"`);
      } catch (err) {
        failures.push(`${msg}: ${(err as Error).message}`);
      }
    }
  };
  const loops = Array.from({ length: 8 }, (_, id) => clientLoop(id));

  const RESTARTS = 25;
  for (let r = 0; r < RESTARTS; r++) {
    await delay(20 + Math.random() * 40);
    const old = srv;
    await restartGracefully(old);
    await delay(Math.random() * 150); // the program is away
    srv = await echoServer(path);
    for (const s of old.sockets) s.destroy(); // leftovers, if any, are long finished
  }
  await delay(100);
  running = false;
  await Promise.all(loops);

  assert.deepEqual(failures, [], bridge.log().split('\n').filter((l) => !/closed \(done\)/.test(l)).join('\n'));
  assert.ok(ok > RESTARTS * 4, `only ${ok} successful sessions`);
  assert.doesNotMatch(bridge.log(), /closed \((connect-timeout|client-error|server-error)/);
});

test('a held client connects as soon as the socket file appears (directory watch), not at the next backoff step', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--connect-timeout', '10s', '--log-level', 'debug']);
  await bridge.waitForLog(/does not exist \(ENOENT\); clients are held/);
  const c = await connect(bridge.port);
  const reply = readAll(c);
  c.end('waited for you');
  await delay(300); // the client is now held, backing off
  const srv = await echoServer(path);
  t.after(() => srv.close());
  assert.equal((await reply).toString(), 'waited for you');
  await bridge.waitForLog(/app\.sock changed: retrying [1-9]\d* held clients now/);
});

test('connect-timeout: a client is closed, with the reason logged, when the target never comes back', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'never.sock');
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--connect-timeout', '400ms']);
  const started = Date.now();
  const c = await connect(bridge.port);
  c.write('anyone there?');
  await closedWithin(c, 5000);
  const waited = Date.now() - started;
  assert.ok(waited >= 350, `closed after ${waited} ms, before connect-timeout`);
  await bridge.waitForLog(/closed \(connect-timeout ENOENT\): the target did not accept within connect-timeout/);
  // The service itself is fine: the next client is served once the target exists.
  const srv = await echoServer(path);
  t.after(() => srv.close());
  assert.equal((await roundTrip(bridge.port, 'now?')).toString(), 'now?');
});

test('a target that refuses (socket file left behind, nobody listening) is waited for like a missing one', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'stale.sock');
  // Leave a stale socket file: bind, then close the fd without unlinking.
  const stale = net.createServer();
  await new Promise<void>((r) => stale.listen(path, r));
  const { execFileSync } = await import('node:child_process');
  void execFileSync;
  // Node unlinks on close, so emulate a crashed program: a child binds and is SIGKILLed.
  stale.close();
  const { spawnSync } = await import('node:child_process');
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--connect-timeout', '10s']);
  await bridge.waitForLog(/refuses connections \(no program listening\) \(ECONNREFUSED\)/);
  const c = await connect(bridge.port);
  const reply = readAll(c);
  c.end('hello?');
  await delay(200);
  const srv = await echoServer(path); // removes the stale file and listens
  t.after(() => srv.close());
  assert.equal((await reply).toString(), 'hello?');
});
