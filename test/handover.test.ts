// Restarts without a gap, outside systemd: test/programs/fake-systemd.py plays
// systemd's part (the listening socket, the notify socket, the fd store), a
// restart sends SIGUSR2 as the units' RestartKillSignal= does, and the next
// sockbridge process gets the listener and the stored fds back through
// LISTEN_FDS, shuffled, as systemd passes them. The real systemd does the same
// in the booted containers of test/e2e/run.sh.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import tls from 'node:tls';
import { bridgeToEcho, closedWithin, connect, echoServer, fakeSystemd, pythonProgram, readAll, RESETTING_PROGRAM, roundTrip, tempDir, TEST_HOOKS, waitFor, type FakeSystemd } from './helpers';

/** The most common setup: an echo program, and sockbridge in front of it under fake-systemd.py with `args` (the target is added). */
async function echoBehindFakeSystemd(t: TestContext, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<{ dir: string; sd: FakeSystemd }> {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const sd = await fakeSystemd(t, dir, ['--target', srv.path, '--check-interval', '0', ...args], env);
  return { dir, sd };
}

/** A client that keeps sending numbered chunks and collects the echo. */
function talker(s: net.Socket): { sent: () => Buffer; received: () => Buffer; say(n: number): void } {
  const out: Buffer[] = [];
  const back: Buffer[] = [];
  s.on('data', (c: Buffer) => back.push(c));
  return {
    sent: () => Buffer.concat(out),
    received: () => Buffer.concat(back),
    say: (n) => {
      const chunk = Buffer.from(`chunk ${n} ${'x'.repeat(n % 97)}\n`);
      out.push(chunk);
      s.write(chunk);
    },
  };
}

test('a restart hands an open session to the next process mid-stream: nothing lost, nothing repeated, counters go on', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t);
  const c = await connect(sd.port);
  const talk = talker(c);
  let n = 0;
  for (; n < 20; n++) talk.say(n);
  await waitFor(() => talk.received().length === talk.sent().length, 5000, 'the first echoes');

  sd.send('restart');
  // The client goes on talking throughout: what it sends meanwhile waits in the kernel.
  const during = setInterval(() => talk.say(n++), 5);
  const ready2 = await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  clearInterval(during);
  for (const end = n + 20; n < end; n++) talk.say(n);
  await waitFor(() => talk.received().length >= talk.sent().length, 10_000, 'every echo, through the second bridge');
  assert.equal(talk.received().toString(), talk.sent().toString(), 'the echo is what was sent, in order, once');

  const exited = sd.events.find((e) => e.event === 'exited' && e.gen === 1)!;
  assert.equal(exited.code, 0);
  assert.deepEqual(exited.stored, { 'sb': 1, 'sb-state': 1 }, 'one bundle (both fds of the session) and the state were stored');
  assert.notEqual(ready2.pid, sd.events.find((e) => e.event === 'ready' && e.gen === 1)!.pid);
  await sd.waitLog(1, /handed over 1 sessions, 0 held clients; closed 0 TLS sessions/);
  await sd.waitLog(2, /took over 1 sessions and 0 waiting clients from the previous process/);
  // Taken back: the second bridge empties the store, or the connections would outlive their sessions.
  await sd.next((e) => e.event === 'removed' && e.name === 'sb' && e.count === 1, 'FDSTOREREMOVE of the bundle');
  await sd.next((e) => e.event === 'removed' && e.name === 'sb-state' && e.count === 1, 'FDSTOREREMOVE of the state');

  // New clients are served by the second bridge, and the session ends there with all its bytes counted.
  assert.equal((await roundTrip(sd.port, 'new client')).toString(), 'new client');
  const total = talk.sent().length;
  c.end();
  await closedWithin(c, 5000);
  await sd.waitLog(2, new RegExp(`closed \\(done\\), ${total} bytes in, ${total} bytes out`));

  sd.send('stop');
  const stopped = await sd.next((e) => e.event === 'exited' && e.gen === 2, 'the second bridge to stop');
  assert.equal(stopped.code, 0);
  assert.deepEqual(stopped.stored, {}, 'a stop leaves nothing in the store');
});

test('a client held for an absent target is carried across a restart and served when the target appears', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const sd = await fakeSystemd(t, dir, ['--target', path, '--check-interval', '0', '--connect-timeout', '20s']);
  const c = await connect(sd.port);
  const reply: Buffer[] = [];
  c.on('data', (d: Buffer) => reply.push(d));
  c.write('waited for');
  await sd.next((e) => e.event === 'status' && e.gen === 1 && /1 waiting/.test(e.text!), 'STATUS= to count the held client');
  sd.send('restart');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(1, /handed over 0 sessions, 1 held clients/);
  await sd.waitLog(2, /took over 0 sessions and 1 waiting clients/);
  const srv = await echoServer(path);
  t.after(() => srv.close());
  await waitFor(() => Buffer.concat(reply).toString() === 'waited for', 10_000, 'the held client to be served by the second bridge');
  c.destroy();
});

test('many sessions carried at once, each verified afterwards', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t);
  const COUNT = 300;
  const clients = await Promise.all(Array.from({ length: COUNT }, () => connect(sd.port)));
  t.after(() => { for (const c of clients) c.destroy(); });
  const talks = clients.map(talker);
  talks.forEach((talk, i) => talk.say(i));
  await waitFor(() => talks.every((talk) => talk.received().length === talk.sent().length), 10_000, 'every first echo');
  sd.send('restart');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(1, new RegExp(`handed over ${COUNT} sessions`));
  talks.forEach((talk, i) => talk.say(i + 1000));
  await waitFor(() => talks.every((talk) => talk.received().length === talk.sent().length), 10_000, 'every echo after the restart');
  for (const talk of talks) assert.equal(talk.received().toString(), talk.sent().toString());
  for (const c of clients) c.destroy();
});

test('a handover state of a version it does not know is refused cleanly: its connections closed, new clients served', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t);
  const c = await connect(sd.port);
  const talk = talker(c);
  talk.say(1);
  await waitFor(() => talk.received().length === talk.sent().length, 5000, 'the first echo');
  sd.send('restart-corrupt');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await closedWithin(c, 5000);
  await sd.waitLog(2, /handover state has format/);
  const refused = sd.log(2).split('\n').filter((l) => /handover state has format sockbridge-handover version 999/.test(l));
  assert.equal(refused.length, 1, `one line about the refused state:\n${sd.log(2)}`);
  assert.match(refused[0]!, /closed the 2 connections a previous process handed over/);
  assert.equal((await roundTrip(sd.port, 'still here')).toString(), 'still here');
});

test('TLS sessions cannot be carried: on a restart they get restart-grace, then close, and the next process starts at once', async (t) => {
  const dir = tempDir(t);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.crt',
    '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { cwd: dir, stdio: 'ignore' });
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const sd = await fakeSystemd(t, dir, ['--target', srv.path, '--check-interval', '0', '--tls-cert', join(dir, 'server.crt'),
    '--tls-key', join(dir, 'server.key'), '--restart-grace', '500ms', '--drain-timeout', '30s']);
  const c = tls.connect({ host: '127.0.0.1', port: sd.port, ca: readFileSync(join(dir, 'server.crt')) });
  t.after(() => c.destroy());
  const echoed = new Promise<string>((resolve) => c.once('data', (d: Buffer) => resolve(d.toString())));
  c.write('secure');
  assert.equal(await echoed, 'secure');
  const t0 = Date.now();
  sd.send('restart');
  await closedWithin(c, 5000);
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  const took = Date.now() - t0;
  // restart-grace (500 ms) and the start of the next process, not drain-timeout (30 s).
  assert.ok(took < 5000, `the restart took ${took} ms`);
  await sd.waitLog(1, /handed over 0 sessions, 0 held clients; closed 1 TLS sessions/);
});

test('SIGUSR2 outside systemd (no fd store): a stop, draining', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0']);
  assert.equal((await roundTrip(bridge.port, 'before')).toString(), 'before');
  bridge.child.kill('SIGUSR2');
  await bridge.waitForLog(/restart requested, but not run by systemd \(no fd store to hand sessions to\): draining as on a stop/);
  assert.equal(await bridge.exited, 0);
});

test('a connection whose peer went away while no process ran is dropped by the next process, and logged once', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t);
  const [stays, leaves] = await Promise.all([connect(sd.port), connect(sd.port)]);
  const talks = [talker(stays!), talker(leaves!)];
  talks.forEach((talk, i) => talk.say(i));
  await waitFor(() => talks.every((talk) => talk.received().length === talk.sent().length), 5000, 'the first echoes');
  sd.send('handover');
  await sd.next((e) => e.event === 'exited' && e.gen === 1, 'the first bridge to hand over and exit');
  leaves!.resetAndDestroy(); // while no process runs
  await waitFor(() => leaves!.destroyed, 5000, 'the reset');
  sd.send('start');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(2, /took over 1 sessions and 0 waiting clients from the previous process; 1 stored connections had closed meanwhile/);
  talks[0]!.say(10);
  await waitFor(() => talks[0]!.received().length === talks[0]!.sent().length, 5000, 'the other session, relayed on');
  assert.equal(talks[0]!.received().toString(), talks[0]!.sent().toString());
  stays!.destroy();
});

test('clients queued over max-conn are carried in order, and start as sessions end in the next process', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t, ['--max-conn', '1']);
  const first = await connect(sd.port);
  const firstTalk = talker(first);
  firstTalk.say(1);
  await waitFor(() => firstTalk.received().length === firstTalk.sent().length, 5000, 'the first session');
  const second = await connect(sd.port);
  const secondTalk = talker(second);
  secondTalk.say(2); // unread: it waits in the queue
  await sd.next((e) => e.event === 'status' && e.gen === 1 && /1 active, 1 waiting/.test(e.text!), 'STATUS= to count the queued client');
  sd.send('restart');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(1, /handed over 1 sessions, 1 held clients/);
  await sd.waitLog(2, /took over 1 sessions and 1 waiting clients/);
  firstTalk.say(3);
  await waitFor(() => firstTalk.received().length === firstTalk.sent().length, 5000, 'the first session, relayed on');
  assert.equal(secondTalk.received().length, 0, 'still queued: max-conn 1');
  first.end();
  await closedWithin(first, 5000);
  await waitFor(() => secondTalk.received().length === secondTalk.sent().length, 5000, 'the queued client, started once the first ended');
  assert.equal(secondTalk.received().toString(), secondTalk.sent().toString());
  second.destroy();
});

test('an fd store too small for max-conn: a warning at start, and on a restart what does not fit is drained', async (t) => {
  // $FDSTORE (systemd ≥ 254) says the store has one entry: room for the state, none for a bundle of connections.
  const { sd } = await echoBehindFakeSystemd(t, ['--max-conn', '2', '--backlog', '1'], { FDSTORE: '1' });
  await sd.waitLog(1, /max-conn 2 and backlog 1 may need 5 connections carried across a restart, but systemd's fd store carries 0 .*raise FileDescriptorStoreMax=/);
  const clients = await Promise.all([connect(sd.port), connect(sd.port)]);
  const talks = clients.map(talker);
  talks.forEach((talk, i) => talk.say(i));
  await waitFor(() => talks.every((talk) => talk.received().length === talk.sent().length), 5000, 'the first echoes');
  sd.send('restart');
  await sd.waitLog(1, /handed over 0 sessions, 0 held clients/);
  // Not carried, so drained: the first bridge relays them on until they end.
  talks.forEach((talk, i) => talk.say(i + 10));
  await waitFor(() => talks.every((talk) => talk.received().length === talk.sent().length), 5000, 'both sessions, relayed on by the first bridge');
  assert.equal(sd.events.some((e) => e.event === 'ready' && e.gen === 2), false, 'the first bridge still drains');
  for (const c of clients) c.end();
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge, once the drained sessions ended');
  talks.forEach((talk) => assert.equal(talk.received().toString(), talk.sent().toString()));
  assert.equal((await roundTrip(sd.port, 'after')).toString(), 'after');
});

test('an upgrade from 0.2.0: a state in its format (version 1) carries the sessions and waiting clients all the same', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t, ['--max-conn', '1']);
  const first = await connect(sd.port);
  const firstTalk = talker(first);
  firstTalk.say(1);
  await waitFor(() => firstTalk.received().length === firstTalk.sent().length, 5000, 'the first session');
  const second = await connect(sd.port);
  const secondTalk = talker(second);
  secondTalk.say(2); // queued behind max-conn 1
  await sd.next((e) => e.event === 'status' && e.gen === 1 && /1 active, 1 waiting/.test(e.text!), 'STATUS= to count the queued client');
  sd.send('restart-v1');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(2, /took over 1 sessions and 1 waiting clients/);
  firstTalk.say(3);
  await waitFor(() => firstTalk.received().length === firstTalk.sent().length, 5000, 'the first session, relayed on');
  first.end();
  await closedWithin(first, 5000);
  await waitFor(() => secondTalk.received().length === secondTalk.sent().length, 5000, 'the waiting client, served');
  assert.equal(secondTalk.received().toString(), secondTalk.sent().toString());
  second.destroy();
});

test('a request dropped unanswered after the restart collected the sessions (not carried: the store is full) is still sent again, and the drain ends', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  // The program resets its first connection once the whole request (10 bytes) is queued, unread; the next one echoes.
  const { lines } = await pythonProgram(t, RESETTING_PROGRAM, [path, '1', '10']);
  // No room in the store: the session is not carried, the first bridge drains it.
  const sd = await fakeSystemd(t, dir, ['--target', path, '--check-interval', '0', '--drain-timeout', '20s'], { FDSTORE: '1' });
  const c = await connect(sd.port);
  const reply = readAll(c, 15_000);
  c.write('hello'); // half of the request: the program waits for the rest
  await waitFor(() => sd.log(1).length > 0 && lines.length > 0, 5000, 'the program to be connected');
  sd.send('restart');
  await sd.waitLog(1, /handed over 0 sessions, 0 held clients/);
  c.end('world'); // the rest, after the sessions were collected: the program resets, the bridge retries
  assert.equal((await reply).toString(), 'helloworld');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'the drain to end and the next bridge to start');
  assert.match(sd.log(1), /session 127\.0\.0\.1:\d+ closed \(done\), 10 bytes in, 10 bytes out/);
});

test('a restart whose data plane never says it is done still ends: at restart-grace and a margin it stores what it got and drains the rest, logged once', { skip: !TEST_HOOKS && 'needs the test build of the data plane (make test-asan: -DSOCKBRIDGE_TEST_HOOKS)' }, async (t) => {
  const { sd } = await echoBehindFakeSystemd(t, ['--restart-grace', '300ms'], { SOCKBRIDGE_FAILPOINTS: 'handover-done:64' });
  const c = await connect(sd.port);
  const talk = talker(c);
  talk.say(1);
  await waitFor(() => talk.received().length === talk.sent().length, 5000, 'the first echo');
  const t0 = Date.now();
  sd.send('restart');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge', 10_000);
  const took = Date.now() - t0;
  assert.ok(took < 300 + 2000 + 3000, `the restart took ${took} ms`);
  const incomplete = sd.log(1).split('\n').filter((l) => /did not give the sessions back within restart-grace/.test(l));
  assert.equal(incomplete.length, 1, sd.log(1));
  // What the threads gave back before the deadline was stored, and goes on.
  await sd.waitLog(2, /took over 1 sessions/);
  talk.say(2);
  await waitFor(() => talk.received().length === talk.sent().length, 5000, 'the session, relayed on');
  c.destroy();
});

test('a request the target drops unanswered after a restart carried its session is sent again by the next process', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  // The program resets its first connection once the whole request (10 bytes) is queued, unread; the next one echoes.
  await pythonProgram(t, RESETTING_PROGRAM, [path, '1', '10']);
  const sd = await fakeSystemd(t, dir, ['--target', path, '--check-interval', '0']);
  const c = await connect(sd.port);
  const reply = readAll(c, 15_000);
  // Half of the request (unanswered: a replay copy travels with the session, or the bytes wait in the kernel).
  c.write('hello');
  sd.send('restart');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(2, /took over 1 sessions/);
  c.end('world'); // the program now resets that connection; the next process sends both halves again
  assert.equal((await reply).toString(), 'helloworld');
  await sd.waitLog(2, /session 127\.0\.0\.1:\d+ closed \(done\), 10 bytes in, 10 bytes out/);
});

test('the per-source table is rebuilt from the carried sessions: a source at --max-conn-per-source before a restart is at it after', async (t) => {
  const { sd } = await echoBehindFakeSystemd(t, ['--max-conn-per-source', '2']);
  const from = (localAddress: string): Promise<net.Socket> => new Promise((resolve, reject) => {
    const s = netConnect({ port: sd.port, host: '127.0.0.1', localAddress });
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
  const echoes = async (s: net.Socket, text: string): Promise<void> => {
    const back: Buffer[] = [];
    const onData = (d: Buffer): void => { back.push(d); };
    s.on('data', onData);
    s.write(text);
    await waitFor(() => Buffer.concat(back).toString() === text, 5000, `the echo of ${text}`);
    s.off('data', onData);
  };
  const a = await from('127.0.0.5');
  const b = await from('127.0.0.5');
  t.after(() => { a.destroy(); b.destroy(); });
  await echoes(a, 'a before');
  await echoes(b, 'b before');

  sd.send('restart');
  await sd.next((e) => e.event === 'ready' && e.gen === 2, 'READY=1 from the second bridge');
  await sd.waitLog(2, /took over 2 sessions/);
  await echoes(a, 'a after');

  // The source's two carried sessions count: a third is refused by the second bridge.
  const third = await from('127.0.0.5');
  third.on('error', () => {});
  third.on('data', () => assert.fail('a refused client got bytes'));
  await closedWithin(third, 5000);
  await sd.waitLog(2, /127\.0\.0\.5.*2 sessions from 127\.0\.0\.5 are open already \(--max-conn-per-source 2\)/);
  // Another source is not affected.
  const other = await from('127.0.0.6');
  t.after(() => other.destroy());
  await echoes(other, 'another source');
  // A carried session ending gives its source room again.
  a.end();
  await closedWithin(a, 5000);
  await waitFor(async () => {
    const again = await from('127.0.0.5');
    again.on('error', () => {});
    const served = await new Promise<boolean>((resolve) => {
      again.once('data', () => resolve(true));
      again.once('close', () => resolve(false));
      again.write('room again');
    });
    again.destroy();
    return served;
  }, 5000, 'a new session from 127.0.0.5 once a carried one ended');
});
