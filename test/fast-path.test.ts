// Which path runs, as the service itself reports it. By default the native
// data plane accepts and relays (dataplane/native-relay.ts); it falling back
// to the TypeScript relay would only cost speed, so nothing else would
// notice. The TypeScript relay (--relay js, no addon) has its own fast path:
// listeners.ts takes over accepting (it replaces the listening handle's
// onconnection, a Node internal) so that clients read with `onread` into the
// session's own buffers; a Node release that changed that internal would
// again only cost speed: this test notices that too.

import assert from 'node:assert/strict';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import type { StatusReport } from '../src/operator/status';
import { test } from 'node:test';
import { assertOneCleanLine, echoServer, roundTrip, runBridge, startBridge, tempDir } from './helpers';

/** What this Node offers the fast path: the type of a listening TCP handle's onconnection. */
async function onconnectionHere(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const handle = (server as unknown as { _handle?: { onconnection?: unknown } | null })._handle;
  const type = handle ? typeof handle.onconnection : 'no _handle at all';
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return type;
}

async function reportOf(t: { after(fn: () => void): void }, args: string[]): Promise<{ report: StatusReport; port: number; log: string }> {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, [...args, '--listen', '127.0.0.1:0', '--target', srv.path, '--control-socket', ctl]);
  assert.equal((await roundTrip(bridge.port, 'fast?')).toString(), 'fast?');
  const r = await runBridge(['status', '--control-socket', ctl, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return { report: JSON.parse(r.stdout) as StatusReport, port: bridge.port, log: bridge.log() };
}

test('by default the native data plane accepts and relays, with one thread per CPU', async (t) => {
  const { report, log } = await reportOf(t, ['--relay', 'auto']);
  assert.equal(report.relay.kind, 'native', `the native data plane did not run: ${report.relay.why} (build it with npm ci: native/build/Release/relay.node)`);
  assert.equal(report.relay.threads, Math.min(64, os.availableParallelism()));
  assert.equal(report.listeners[0]?.accept, 'native');
  assert.match(log, /\(native data plane, \d+ threads?\)/);
  assert.doesNotMatch(log, /relay-fallback|TypeScript relay, in one thread/);
});

test('relay-threads sets the data plane\'s thread count', async (t) => {
  const { report } = await reportOf(t, ['--relay', 'native', '--relay-threads', '3']);
  assert.deepEqual({ ...report.relay, perThread: undefined }, { kind: 'native', threads: 3, why: '', perThread: undefined });
  assert.equal(report.relay.perThread.length, 3);
  assert.equal(report.relay.perThread.reduce((n, t) => n + t.accepted, 0), 1, 'one client was accepted, by one of the threads');
});

test('TypeScript relay fast path: clients are accepted by sockbridge and read with onread, not through Node streams', async (t) => {
  const { report, port, log } = await reportOf(t, ['--relay', 'js']);
  assert.equal(report.relay.kind, 'js');

  const hook = await onconnectionHere();
  const why = hook === 'function'
    ? 'this Node still has the handle\'s onconnection, so acceptWithOwnReads in src/listen/listeners.ts no longer takes it over'
    : `net.Server's listening handle (server._handle) has no onconnection function any more (${hook}): ` +
      'acceptWithOwnReads in src/listen/listeners.ts needs another way to build accepted sockets with onread';
  assert.deepEqual(report.listeners.map((l) => l.address), [`127.0.0.1:${port}`]);
  assert.equal(report.listeners[0]?.accept, 'onread',
    `Node.js ${process.version}: clients are accepted by Node's own path and read through its stream machinery (slower): ${why}`);
  assert.doesNotMatch(log, /read through Node's stream machinery/, 'no fallback warning when the fast path runs');
});

test('a data plane that cannot load: relay = auto falls back with one warning and serves; relay = native refuses in one line (exit 72)', async (t) => {
  const dir = tempDir(t);
  const env = { SOCKBRIDGE_RELAY_ADDON: join(dir, 'missing', 'relay.node') };
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, ['--relay', 'auto', '--listen', '127.0.0.1:0', '--target', srv.path, '--control-socket', ctl], { env });
  assert.equal((await roundTrip(bridge.port, 'still served')).toString(), 'still served');
  const warnings = bridge.log().split('\n').filter((l) => /sessions use the TypeScript relay, in one thread: the native data plane cannot be loaded \(Cannot find module/.test(l));
  assert.equal(warnings.length, 1, bridge.log());
  assert.doesNotMatch(bridge.log(), /\n\s+at /, 'no stack trace');
  const r = await runBridge(['status', '--control-socket', ctl, '--json']);
  const report = JSON.parse(r.stdout) as StatusReport;
  assert.equal(report.relay.kind, 'js');
  assert.match(report.relay.why, /cannot be loaded/);

  const forced = await runBridge(['--relay', 'native', '--listen', '127.0.0.1:0', '--target', srv.path, '--log-target', 'stderr'], env);
  assert.equal(forced.code, 72, forced.stderr);
  assertOneCleanLine(forced.stderr, 'relay = native, but the native data plane cannot be loaded', '[ERELAY_LOAD]');
});
