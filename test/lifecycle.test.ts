// Stopping, reloading and idling like a well-behaved systemd service.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { bridgeToEcho, childPids, closedWithin, connect, readAll, roundTrip, startBridge, tempDir, testBothModes, unixServer, waitFor } from './helpers';

testBothModes('SIGTERM drains: open sessions finish, new clients are refused, exit 0', async (t, mode) => {
  const dir = tempDir(t);
  // The program answers only after the client's EOF: a session in progress.
  let received = 0;
  const srv = await unixServer(join(dir, 'app.sock'), (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => { chunks.push(c); received += c.length; });
    s.on('end', () => s.end(Buffer.concat(chunks)));
  });
  t.after(() => srv.close());
  const bridge = await startBridge(t, [...mode, '--listen', '127.0.0.1:0', '--target', srv.path, '--drain-timeout', '10s']);
  const c = await connect(bridge.port);
  const reply = readAll(c);
  c.write('in flight');
  await waitFor(() => received > 0, 5000, 'the request to reach the program');
  bridge.child.kill('SIGTERM');
  await bridge.waitForLog(/waiting up to 10000 ms for 1 sessions to finish/);
  // With workers the listening socket is shared: it closes when the last
  // process has closed it, a moment after the draining worker logs.
  const refused = (): Promise<boolean> => connect(bridge.port).then((s) => { s.destroy(); return false; }, (err: Error) => /ECONNREFUSED/.test(err.message));
  await waitFor(refused, 5000, 'new clients to be refused (no longer accepting)');
  c.end(' and done');
  assert.equal((await reply).toString(), 'in flight and done');
  assert.equal(await bridge.exited, 0);
});

testBothModes('SIGTERM with a session that never ends: closed at drain-timeout, exit 0', async (t, mode) => {
  const { bridge } = await bridgeToEcho(t, [...mode, '--listen', '127.0.0.1:0', '--drain-timeout', '300ms']);
  const c = await connect(bridge.port);
  c.write('x');
  await new Promise<void>((r) => c.once('data', () => r()));
  bridge.child.kill('SIGTERM');
  await closedWithin(c, 5000);
  assert.equal(await bridge.exited, 0);
  assert.match(bridge.log(), /drain-timeout reached: closing 1 sessions/);
  assert.match(bridge.log(), /closed \(shutdown\)/);
});

testBothModes('SIGHUP reloads the config file: new sessions use the new target, the open one is untouched', async (t, mode) => {
  const dir = tempDir(t);
  const a = await unixServer(join(dir, 'a.sock'), (s) => { s.write('A:'); s.pipe(s); });
  const b = await unixServer(join(dir, 'b.sock'), (s) => { s.write('B:'); s.pipe(s); });
  t.after(() => a.close());
  t.after(() => b.close());
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `target = ${a.path}\nlisten = 127.0.0.1:0\n`);
  const bridge = await startBridge(t, [...mode, '--config', conf]);

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

testBothModes('exit-idle-time: exits 0 after that long without a session, not while one runs', async (t, mode) => {
  const { bridge } = await bridgeToEcho(t, [...mode, '--listen', '127.0.0.1:0', '--exit-idle-time', '600ms']);
  const c = await connect(bridge.port);
  c.write('keep me');
  await new Promise((r) => setTimeout(r, 1200)); // an active session spans the idle time
  assert.equal(bridge.child.exitCode, null, 'exited while a session was open');
  c.end();
  await closedWithin(c, 5000);
  await bridge.waitForLog(/no session for 600 ms \(exit-idle-time\): exiting/, 5000);
  assert.equal(await bridge.exited, 0);
});

test('a worker that dies is replaced; the service keeps serving', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--workers', '2', '--listen', '127.0.0.1:0']);
  const workers = (): number[] => childPids(bridge.child.pid!);
  const [victim] = workers();
  process.kill(victim!, 'SIGKILL');
  await bridge.waitForLog(new RegExp(`worker ${victim} exited \\(SIGKILL\\); starting a new one`));
  await waitFor(() => workers().length === 2 && !workers().includes(victim!), 10_000, 'a replacement worker');
  for (let i = 0; i < 10; i++) assert.equal((await roundTrip(bridge.port, `after ${i}`)).toString(), `after ${i}`);
});

/** SIGKILL the first child of `pid` not in `known` as soon as it exists: a worker before it could listen. */
async function killNewWorker(pid: number, known: number[]): Promise<number> {
  let victim: number | undefined;
  await waitFor(() => (victim = childPids(pid).find((p) => !known.includes(p))) !== undefined, 10_000, 'a new worker process');
  process.kill(victim!, 'SIGKILL');
  return victim!;
}

test('a worker that dies before it listens fails the start with one line, instead of a start that never ends', async (t) => {
  const dir = tempDir(t);
  const bridge = await startBridge(t, ['--workers', '2', '--listen', '127.0.0.1:0', '--target', join(dir, 'app.sock')], { waitListening: false });
  const victim = await killNewWorker(bridge.child.pid!, []);
  const others = childPids(bridge.child.pid!);
  t.after(() => { for (const p of others) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } });
  await bridge.waitForLog(new RegExp(`worker ${victim} exited \\(SIGKILL\\) before it listened \\[EWORKER\\]`), 10_000);
  assert.equal(await bridge.exited, 70);
  assert.doesNotMatch(bridge.log(), /listening on/);
});

test('a replacement worker that dies before it listens is replaced too: never a worker short', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--workers', '2', '--listen', '127.0.0.1:0']);
  const first = childPids(bridge.child.pid!);
  process.kill(first[0]!, 'SIGKILL');
  // Its replacement, killed as soon as it exists.
  const replacement = await killNewWorker(bridge.child.pid!, first);
  await bridge.waitForLog(new RegExp(`worker ${replacement} exited \\(SIGKILL\\); starting a new one`));
  await waitFor(() => childPids(bridge.child.pid!).filter((p) => !first.includes(p) && p !== replacement).length === 1, 10_000, 'a second replacement');
  for (let i = 0; i < 10; i++) assert.equal((await roundTrip(bridge.port, `after ${i}`)).toString(), `after ${i}`);
});
