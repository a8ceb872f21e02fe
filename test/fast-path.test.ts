// The fast path: listeners.ts takes over accepting (it replaces the listening
// handle's onconnection, a Node internal) so that clients read with `onread`
// into the session's own buffers. Without that internal sockbridge still works,
// only slower, so nothing else would notice a Node release that changed it:
// this test does, through what the service itself reports.

import assert from 'node:assert/strict';
import net from 'node:net';
import { join } from 'node:path';
import type { StatusReport } from '../src/status';
import { echoServer, roundTrip, runBridge, startBridge, tempDir, testBothModes } from './helpers';

/** What this Node offers the fast path: the type of a listening TCP handle's onconnection. */
async function onconnectionHere(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const handle = (server as unknown as { _handle?: { onconnection?: unknown } | null })._handle;
  const type = handle ? typeof handle.onconnection : 'no _handle at all';
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return type;
}

testBothModes('fast path: clients are accepted by sockbridge and read with onread, not through Node streams', async (t, mode) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, [...mode, '--listen', '127.0.0.1:0', '--target', srv.path, '--control-socket', ctl]);
  assert.equal((await roundTrip(bridge.port, 'fast?')).toString(), 'fast?');
  const r = await runBridge(['status', '--control-socket', ctl, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as StatusReport;

  const hook = await onconnectionHere();
  const why = hook === 'function'
    ? 'this Node still has the handle\'s onconnection, so acceptWithOwnReads in src/listeners.ts no longer takes it over'
    : `net.Server's listening handle (server._handle) has no onconnection function any more (${hook}): ` +
      'acceptWithOwnReads in src/listeners.ts needs another way to build accepted sockets with onread';
  assert.deepEqual(report.listeners.map((l) => l.address), [`127.0.0.1:${bridge.port}`]);
  assert.equal(report.listeners[0]?.accept, 'onread',
    `Node.js ${process.version}: clients are accepted by Node's own path and read through its stream machinery (slower): ${why}`);
  assert.doesNotMatch(bridge.log(), /read through Node's stream machinery/, 'no fallback warning when the fast path runs');
});
