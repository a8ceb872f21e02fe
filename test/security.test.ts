// Exposing a control socket on a TCP port safely: source-address allow/deny
// lists, and the PROXY protocol so the program learns who the client is.

import assert from 'node:assert/strict';
import net from 'node:net';
import { join } from 'node:path';
import { test, TestContext } from 'node:test';
import { bridgeToEcho, closedWithin, connect, echoServer, readAll, roundTrip, runBridge, startBridge, tempDir, unixServer } from './helpers';

test('--deny: a refused client is closed before anything is read; the program never sees it', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  let seen = 0;
  srv.server.on('connection', () => { seen++; });
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--deny', '127.0.0.0/8']);
  const c = await connect(bridge.port);
  c.on('error', () => {});
  c.write('let me in');
  await closedWithin(c, 5000);
  await bridge.waitForLog(/client 127\.0\.0\.1:\d+ refused by --allow\/--deny/);
  assert.equal(seen, 0, 'a refused client reached the program');
});

test('--deny any --allow CIDR: an allow list, as IPAddressDeny=any + IPAddressAllow=', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--deny', 'any', '--allow', '127.0.0.1/32']);
  assert.equal((await roundTrip(bridge.port, 'allowed')).toString(), 'allowed');
});

test('IPv6 clients are matched against IPv6 entries', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '[::1]:0', '--target', srv.path, '--deny', 'any', '--allow', 'localhost']);
  const ok = await connect(bridge.port, '::1');
  const reply = readAll(ok);
  ok.end('v6 ok');
  assert.equal((await reply).toString(), 'v6 ok');
  const denied = await startBridge(t, ['--listen', '[::1]:0', '--target', srv.path, '--deny', '::1']);
  const c = await connect(denied.port, '::1');
  c.on('error', () => {});
  await closedWithin(c, 5000);
  await denied.waitForLog(/client \[::1\]:\d+ refused/);
});

test('--allow and --deny reject malformed entries with exit 64', async () => {
  for (const bad of ['10.0.0.0/33', 'example.com', '::1/129']) {
    const r = await runBridge(['check-config', '--allow', bad]);
    assert.equal(r.code, 64, bad);
    assert.match(r.stderr, new RegExp(`invalid value "${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}" for --allow`));
  }
});

/** One session through --send-proxy VERSION: what the program read, and the client's and bridge's ports. */
async function throughSendProxy(t: TestContext, version: 'v1' | 'v2'): Promise<{ first: Buffer; clientPort: number; bridgePort: number }> {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const firsts: Buffer[] = [];
  const srv = await unixServer(path, (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => { firsts.push(Buffer.concat(chunks)); s.end('ok'); });
  });
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', path, '--check-interval', '0', '--send-proxy', version]);
  const c = await connect(bridge.port);
  const clientPort = c.localPort!;
  const reply = readAll(c);
  c.end('hello');
  assert.equal((await reply).toString(), 'ok');
  return { first: firsts[0]!, clientPort, bridgePort: bridge.port };
}

test('--send-proxy v1: the program reads "PROXY TCP4 client bridge cport bport" before the data', async (t) => {
  const { first, clientPort, bridgePort } = await throughSendProxy(t, 'v1');
  assert.equal(first.toString(), `PROXY TCP4 127.0.0.1 127.0.0.1 ${clientPort} ${bridgePort}\r\nhello`);
});

test('--send-proxy v2: the binary header carries both addresses and ports', async (t) => {
  const { first: b, clientPort, bridgePort } = await throughSendProxy(t, 'v2');
  assert.deepEqual(b.subarray(0, 12), Buffer.from('0d0a0d0a000d0a515549540a', 'hex'), 'signature');
  assert.equal(b[12], 0x21, 'version 2, PROXY');
  assert.equal(b[13], 0x11, 'TCP over IPv4');
  assert.equal(b.readUInt16BE(14), 12);
  assert.equal(net.isIPv4([...b.subarray(16, 20)].join('.')), true);
  assert.equal([...b.subarray(16, 20)].join('.'), '127.0.0.1');
  assert.equal(b.readUInt16BE(24), clientPort);
  assert.equal(b.readUInt16BE(26), bridgePort);
  assert.equal(b.subarray(28).toString(), 'hello');
});
