// Stopping, reloading and idling like a well-behaved systemd service.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { bridgeToEcho, childPids, closedWithin, connect, echoServer, readAll, roundTrip, startBridge, tempDir, unixServer, waitFor } from './helpers';

test('SIGTERM drains: open sessions finish, new clients are refused, exit 0', async (t) => {
  const dir = tempDir(t);
  // The program answers only after the client's EOF: a session in progress.
  let received = 0;
  const srv = await unixServer(join(dir, 'app.sock'), (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => { chunks.push(c); received += c.length; });
    s.on('end', () => s.end(Buffer.concat(chunks)));
  });
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--drain-timeout', '10s']);
  const c = await connect(bridge.port);
  const reply = readAll(c);
  c.write('in flight');
  await waitFor(() => received > 0, 5000, 'the request to reach the program');
  bridge.child.kill('SIGTERM');
  await bridge.waitForLog(/waiting up to 10000 ms for 1 sessions to finish/);
  // The data plane's threads let go of the listening socket a moment after the drain is logged.
  const refused = (): Promise<boolean> => connect(bridge.port).then((s) => { s.destroy(); return false; }, (err: Error) => /ECONNREFUSED/.test(err.message));
  await waitFor(refused, 5000, 'new clients to be refused (no longer accepting)');
  c.end(' and done');
  assert.equal((await reply).toString(), 'in flight and done');
  assert.equal(await bridge.exited, 0);
});

test('SIGTERM with a session that never ends: closed at drain-timeout, exit 0', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--drain-timeout', '300ms']);
  const c = await connect(bridge.port);
  c.write('x');
  await new Promise<void>((r) => c.once('data', () => r()));
  bridge.child.kill('SIGTERM');
  await closedWithin(c, 5000);
  assert.equal(await bridge.exited, 0);
  assert.match(bridge.log(), /drain-timeout reached: closing 1 sessions/);
  assert.match(bridge.log(), /closed \(shutdown\)/);
});

test('SIGHUP reloads the config file: new sessions use the new target, the open one is untouched', async (t) => {
  const dir = tempDir(t);
  const a = await unixServer(join(dir, 'a.sock'), (s) => { s.write('A:'); s.pipe(s); });
  const b = await unixServer(join(dir, 'b.sock'), (s) => { s.write('B:'); s.pipe(s); });
  t.after(() => a.close());
  t.after(() => b.close());
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `target = ${a.path}\nlisten = 127.0.0.1:0\n`);
  const bridge = await startBridge(t, ['--config', conf]);

  const open = await connect(bridge.port);
  let openData = '';
  open.on('data', (d: Buffer) => { openData += d.toString(); });
  const openEnded = new Promise((resolve) => open.once('end', resolve));
  open.write('before;');
  // Connected to a before the reload (it dials a moment after the accept).
  await waitFor(() => openData === 'A:before;', 5000, 'the open session to reach program a');

  writeFileSync(conf, `target = ${b.path}\nlisten = 127.0.0.1:0\nclient-timeout = 7s\n`);
  bridge.child.kill('SIGHUP');
  await bridge.waitForLog(/configuration reloaded: target=.*b\.sock, client-timeout=7s/);

  assert.equal((await roundTrip(bridge.port, 'new')).toString(), 'B:new');
  open.end('after');
  await openEnded;
  assert.equal(openData, 'A:before;after', 'the open session kept its target');

  // A broken file is refused and the running configuration kept.
  writeFileSync(conf, 'rise = often\n');
  bridge.child.kill('SIGHUP');
  await bridge.waitForLog(/reload failed, keeping the running configuration: .*bridge\.conf:1: invalid value "often" for rise/);
  assert.equal((await roundTrip(bridge.port, 'still')).toString(), 'B:still');
  assert.equal(bridge.child.exitCode, null, 'still running');
});

test('exit-idle-time: exits 0 after that long without a session, not while one runs', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--exit-idle-time', '600ms']);
  const c = await connect(bridge.port);
  c.write('keep me');
  await new Promise((r) => setTimeout(r, 1200)); // an active session spans the idle time
  assert.equal(bridge.child.exitCode, null, 'exited while a session was open');
  c.end();
  await closedWithin(c, 5000);
  await bridge.waitForLog(/no session for 600 ms \(exit-idle-time\): exiting/, 5000);
  assert.equal(await bridge.exited, 0);
});

test('workers = N, obsolete since the native relay, still starts: logged once, one process serves', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `target = ${srv.path}\nlisten = 127.0.0.1:0\nworkers = 4\n`);
  const bridge = await startBridge(t, ['--config', conf]);
  for (let i = 0; i < 5; i++) assert.equal((await roundTrip(bridge.port, `w${i}`)).toString(), `w${i}`);
  await bridge.waitForLog(/workers = 4 is obsolete and ignored/);
  assert.equal(bridge.log().match(/is obsolete/g)?.length, 1, 'logged once');
  assert.deepEqual(childPids(bridge.child.pid!), [], 'no worker processes');
});
