// Limits: max-conn queues instead of resetting, idle timeouts close only the
// idle session, and running out of file descriptors does not stop the service.

import assert from 'node:assert/strict';
import type net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { bridgeToEcho, closedWithin, connect, delay, echoServer, roundTrip, servedAgain, startBridge, tempDir, TEST_RELAY, unixServer, waitFor } from './helpers';

function firstData(s: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    if (s.readableEnded || s.destroyed) return reject(new Error('the bridge had closed the connection'));
    s.once('data', (d: Buffer) => resolve(d.toString()));
    s.once('error', reject);
    s.once('end', () => reject(new Error('the bridge closed the connection before any data arrived')));
  });
}

test('max-conn: the next client waits (not reset) and is served when a session ends', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--max-conn', '2', '--check-interval', '0']);
  const c1 = await connect(bridge.port);
  const c2 = await connect(bridge.port);
  c1.write('one');
  c2.write('two');
  assert.equal(await firstData(c1), 'one');
  assert.equal(await firstData(c2), 'two');

  const c3 = await connect(bridge.port);
  let c3Data = '';
  let c3Closed = false;
  c3.on('data', (d: Buffer) => { c3Data += d.toString(); });
  c3.on('close', () => { c3Closed = true; });
  c3.on('error', () => {});
  c3.write('three');
  await delay(300); // a window in which c3 must get nothing: two sessions are running
  assert.equal(c3Data, '', 'the third client was served beyond max-conn');
  assert.equal(c3Closed, false, 'the third client was closed instead of waiting');
  assert.equal(srv.sockets.size, 2, 'the program saw more than max-conn connections');

  c1.end();
  await waitFor(() => c3Data === 'three', 5000, 'the waiting client to be served');
  c2.destroy();
  c3.destroy();
});

test('client-timeout closes a session whose client went quiet', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--client-timeout', '300ms', '--server-timeout', '0']);
  const quiet = await connect(bridge.port);
  quiet.write('hi');
  assert.equal(await firstData(quiet), 'hi');
  await closedWithin(quiet, 5000);
  await bridge.waitForLog(/closed \(client-timeout\)/);
  // Others are unaffected.
  assert.equal((await roundTrip(bridge.port, 'still served')).toString(), 'still served');
});

test('client-timeout counts traffic: a session that keeps talking outlives it', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--client-timeout', '300ms', '--server-timeout', '300ms']);
  const c = await connect(bridge.port);
  // 1.2 s of conversation, a message every 100 ms: never idle for 300 ms.
  for (let i = 0; i < 12; i++) {
    c.write(`ping ${i}`);
    assert.equal(await firstData(c), `ping ${i}`);
    await delay(100);
  }
  assert.equal(c.destroyed, false, 'the session was closed although it kept talking');
  assert.doesNotMatch(bridge.log(), /timeout\)/);
  c.destroy();
});

test('server-timeout closes a session whose program never answers', async (t) => {
  const dir = tempDir(t);
  const srv = await unixServer(join(dir, 'app.sock'), (s) => s.resume()); // reads, never writes
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--client-timeout', '0', '--server-timeout', '300ms', '--check-interval', '0']);
  const c = await connect(bridge.port);
  c.write('are you there?');
  await closedWithin(c, 5000);
  await bridge.waitForLog(/closed \(server-timeout\)/);
});

test('equal timeouts name the side that owes the next byte: the program after an unanswered request, else the client', async (t) => {
  const dir = tempDir(t);
  // Answers the first request only, then reads and never writes again.
  const srv = await unixServer(join(dir, 'app.sock'), (s) => s.once('data', (d: Buffer) => { s.write(d); s.resume(); }));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--client-timeout', '300ms', '--server-timeout', '300ms', '--check-interval', '0']);
  // Asked, answered, then silent: the client owes the next byte.
  const silent = await connect(bridge.port);
  silent.write('one');
  assert.equal(await firstData(silent), 'one');
  await closedWithin(silent, 5000);
  await bridge.waitForLog(new RegExp(`session 127\\.0\\.0\\.1:${silent.localPort} closed \\(client-timeout\\)`));
  // Asked again, never answered: the program owes it.
  const waiting = await connect(bridge.port);
  waiting.write('one');
  assert.equal(await firstData(waiting), 'one');
  waiting.write('two?');
  await closedWithin(waiting, 5000);
  await bridge.waitForLog(new RegExp(`session 127\\.0\\.0\\.1:${waiting.localPort} closed \\(server-timeout\\)`));
});

/** The first reply on s within ms, or undefined (none, or the connection closed). */
function replyWithin(s: net.Socket, ms: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(undefined), ms);
    const done = (v: string | undefined): void => {
      clearTimeout(timer);
      s.off('data', onData);
      resolve(v);
    };
    const onData = (d: Buffer): void => done(d.toString());
    s.on('data', onData);
    s.once('close', () => done(undefined));
  });
}

test('out of file descriptors (EMFILE) at accept: each relay does what it says, and serves again once descriptors are free', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  // A tiny descriptor limit for the bridge alone (soft and hard, so Node cannot raise it).
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--connect-timeout', '10s'], {
    wrapper: ['bash', '-c', 'ulimit -n 48 && exec "$0" "$@"'],
  });
  const served: net.Socket[] = [];
  let stuck: net.Socket | undefined;
  // Sessions until one is not served: two descriptors each, so the limit is reached within 24.
  for (let i = 0; i < 40 && stuck === undefined; i++) {
    const c = await connect(bridge.port);
    c.on('error', () => {});
    c.write('x');
    if (await replyWithin(c, 1000) === 'x') served.push(c);
    else stuck = c;
  }
  assert.ok(stuck, `every one of ${served.length} sessions was served: the limit was never reached`);
  // Out of descriptors now, its accept(2) fails too.
  const extra = await connect(bridge.port);
  extra.on('error', () => {});
  extra.write('y');
  if (TEST_RELAY === 'native') {
    // The data plane stops accepting for a while (a listening socket stays
    // readable; accepting and closing would cost the client its connection):
    // the client waits in the kernel's queue, open, and that is logged.
    await bridge.waitForLog(/accept failed on 127\.0\.0\.1:\d+: EMFILE — out of file descriptors/);
    assert.ok(!extra.destroyed && !extra.readableEnded, 'the client in the kernel queue was closed');
  } else {
    // libuv answers EMFILE by accepting the client with a reserved descriptor and closing it at once.
    await closedWithin(extra, 5000);
  }
  assert.ok(!stuck.destroyed && !stuck.readableEnded, 'the client that was accepted but could not reach the target was closed');
  for (const c of served.splice(0, 6)) c.destroy();
  // Held, not dropped: it is served once descriptors are free (and the queued one too, natively).
  assert.equal(await replyWithin(stuck, 5000), 'x', 'the held client was not served once descriptors were free');
  if (TEST_RELAY === 'native') assert.equal(await replyWithin(extra, 5000), 'y', 'the queued client was not served once descriptors were free');
  await servedAgain(bridge.port, 10_000, 'the bridge to serve new clients again after the descriptors were freed');
  assert.equal(bridge.child.exitCode, null, 'the bridge exited');
});
