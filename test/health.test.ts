// Health checks as in HAProxy (check inter/rise/fall, on-marked-down,
// error-limit), and a permissions problem reported once with its fix.

import assert from 'node:assert/strict';
import { chmodSync, unlinkSync } from 'node:fs';
import type net from 'node:net';
import { join } from 'node:path';
import { test, TestContext } from 'node:test';
import { BridgeProcess, cannotRunAs, closedWithin, connect, echoServer, readAll, startBridge, tempDir, UnixServer } from './helpers';

/** The program stops accepting (its socket file gone); its open connections carry on. */
function stopListening(srv: UnixServer): void {
  unlinkSync(srv.path);
  srv.server.close();
}

test('checks: fall failures mark the target DOWN, rise successes mark it UP again', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  let srv = await echoServer(path);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--check-interval', '100ms', '--rise', '3', '--fall', '2']);
  await bridge.waitForLog(/notice target .* is UP: first check passed/);
  stopListening(srv);
  await bridge.waitForLog(/warning target .* is DOWN: 2 consecutive checks failed \(ENOENT\)/);
  srv = await echoServer(path);
  t.after(() => srv.close());
  await bridge.waitForLog(/notice target .* is UP: 3 consecutive checks passed/);
  // One DOWN and one UP transition: no flapping, no repeats.
  assert.equal(bridge.log().match(/is DOWN/g)?.length, 1);
  assert.equal(bridge.log().match(/is UP/g)?.length, 2);
});

/** An open, echoed session; then the program stops accepting (the session itself stays healthy). */
async function sessionThenTargetStopsAccepting(t: TestContext, extra: string[]): Promise<{ bridge: BridgeProcess; c: net.Socket }> {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const srv = await echoServer(path);
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--check-interval', '100ms', '--fall', '2', ...extra]);
  const c = await connect(bridge.port);
  c.write('a');
  await new Promise<void>((r) => c.once('data', () => r()));
  stopListening(srv);
  return { bridge, c };
}

test('on-marked-down shutdown-sessions closes established sessions when the target goes DOWN', async (t) => {
  const { bridge, c } = await sessionThenTargetStopsAccepting(t, ['--on-marked-down', 'shutdown-sessions']);
  await closedWithin(c, 5000);
  await bridge.waitForLog(/closed \(marked-down\)/);
  assert.match(bridge.log(), /closed 1 sessions because the target was marked DOWN/);
});

test('without on-marked-down, established sessions survive the target going DOWN', async (t) => {
  const { bridge, c } = await sessionThenTargetStopsAccepting(t, []);
  await bridge.waitForLog(/is DOWN/);
  c.write('b');
  const echoed = await new Promise<string>((r) => c.once('data', (d: Buffer) => r(d.toString())));
  assert.equal(echoed, 'b');
  c.destroy();
});

test('error-limit: consecutive connect errors from client traffic mark the target DOWN', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const srv = await echoServer(path);
  t.after(() => srv.close());
  // Checks too rare to notice anything during the test: only live traffic can.
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--check-interval', '1h', '--error-limit', '3', '--connect-timeout', '300ms']);
  await bridge.waitForLog(/is UP: first check passed/);
  stopListening(srv);
  const c = await connect(bridge.port);
  c.write('x');
  await bridge.waitForLog(/is DOWN: 3 consecutive connect errors from client traffic \(ENOENT\)/);
  await closedWithin(c, 5000);
});

test('permission denied: held until connect-timeout (a chmod may be on its way), then closed; one clear message naming the fix', { skip: cannotRunAs(65534, 65534) }, async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const srv = await echoServer(path);
  t.after(() => srv.close());
  chmodSync(path, 0o600); // root only
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--connect-timeout', '400ms', '--check-interval', '100ms'], {
    spawn: { uid: 65534, gid: 65534 },
  });
  for (let i = 0; i < 3; i++) {
    const c = await connect(bridge.port);
    c.write('let me in');
    await closedWithin(c, 5000);
  }
  await bridge.waitForLog(/closed \(target-denied EACCES\)/);
  const messages = bridge.log().match(/EBACKEND_PERM: cannot connect to .*app\.sock: permission denied \(EACCES\) — give the service the socket's group \(SupplementaryGroups=/g) ?? [];
  assert.equal(messages.length, 1, `expected the problem once:\n${bridge.log()}`);
});

test('a socket made accessible after bind (bind, then chmod) costs held clients nothing', { skip: cannotRunAs(65534, 65534) }, async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const srv = await echoServer(path);
  t.after(() => srv.close());
  chmodSync(path, 0o600);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--connect-timeout', '10s'], {
    spawn: { uid: 65534, gid: 65534 },
  });
  const c = await connect(bridge.port);
  const reply = readAll(c);
  c.end('patience');
  await bridge.waitForLog(/EBACKEND_PERM/);
  chmodSync(path, 0o666);
  assert.equal((await reply).toString(), 'patience');
});
