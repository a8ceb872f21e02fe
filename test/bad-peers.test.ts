// Strangers on an exposed port: each bad peer closes only its own connection,
// and everybody else is still served.

import assert from 'node:assert/strict';
import type net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { bridgeToEcho, closedWithin, connect, servedAgain, startBridge, tempDir, unixServer, waitFor } from './helpers';

test('a client that connects and sends nothing is closed at client-timeout', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--client-timeout', '300ms', '--server-timeout', '0']);
  const silent = await connect(bridge.port);
  await closedWithin(silent, 5000);
  await bridge.waitForLog(/closed \(client-timeout\), 0 bytes in, 0 bytes out/);
});

test('a half-open session (client shut down its side, program silent) ends at the idle timeout', async (t) => {
  const dir = tempDir(t);
  let programSawEnd = false;
  // Reads, never answers, never closes on its own.
  const srv = await unixServer(join(dir, 'app.sock'), (s) => { s.resume(); s.on('end', () => { programSawEnd = true; }); });
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--server-timeout', '300ms', '--check-interval', '0']);
  const c = await connect(bridge.port);
  c.end('request, then silence');
  await closedWithin(c, 5000);
  await bridge.waitForLog(/closed \(server-timeout\)/);
  await waitFor(() => programSawEnd, 5000, 'the program side to be closed too');
});

test('thousands of connections from one peer: max-conn holds, no crash, an established session keeps working', async (t) => {
  const { srv, bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--max-conn', '100', '--check-interval', '0', '--log-level', 'notice']);
  const established = await connect(bridge.port);
  const echo = (s: net.Socket, msg: string): Promise<string> => new Promise((resolve) => {
    s.once('data', (d: Buffer) => resolve(d.toString()));
    s.write(msg);
  });
  assert.equal(await echo(established, 'before'), 'before');

  const flood: net.Socket[] = [];
  for (let i = 0; i < 2000; i++) {
    try {
      const s = await connect(bridge.port);
      s.on('error', () => {});
      flood.push(s);
    } catch {
      break; // the kernel queue is full: the flood is held off
    }
  }
  assert.ok(flood.length >= 100, `only ${flood.length} connections opened`);
  assert.ok(srv.sockets.size <= 100, `the program saw ${srv.sockets.size} connections, beyond max-conn`);
  assert.equal(await echo(established, 'during'), 'during');
  assert.equal(bridge.child.exitCode, null, 'the bridge died');

  for (const s of flood) s.destroy();
  established.destroy();
  await servedAgain(bridge.port, 20_000, 'a new client to be served after the flood');
});
