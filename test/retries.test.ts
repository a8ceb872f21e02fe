// --retries: a request the target reset before answering (a restart dropped it
// from the old socket's queue, unread) is sent again on a new connection, at
// most --retries times, and only while the client has sent at most 64 KiB.

import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect, pythonProgram, readAll, RESETTING_PROGRAM, startBridge, tempDir, unixServer, waitFor } from './helpers';

interface Program {
  path: string;
  /** Every line the program printed so far. */
  lines: string[];
  /**
   * Exactly n connections counted (reset or answered). Waits first: the program prints a line
   * after it answered or closed, so the client can see that before we see the line.
   */
  expectConnections(n: number): Promise<void>;
  child: ChildProcess;
}

async function startProgram(t: { after(fn: () => void): void }, dir: string, resets: number, length: number, mode = ''): Promise<Program> {
  const path = join(dir, 'app.sock');
  const { child, lines } = await pythonProgram(t, RESETTING_PROGRAM, [path, String(resets), String(length), ...(mode ? [mode] : [])]);
  const connections = (): number => lines.filter((l) => /^conn \d+ (reset|echo)/.test(l)).length;
  const expectConnections = async (n: number): Promise<void> => {
    await waitFor(() => connections() >= n, 5000, `${n} connections counted by the program`);
    assert.equal(connections(), n, lines.join('\n'));
  };
  return { path, lines, child, expectConnections };
}

/** Everything the client receives until the bridge closes the connection (with a FIN or a reset). */
function outcome(s: net.Socket, timeoutMs = 10_000): Promise<{ data: Buffer }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`connection still open after ${timeoutMs} ms`)); }, timeoutMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => {}); // a reset is a close too
    s.once('close', () => { clearTimeout(timer); resolve({ data: Buffer.concat(chunks) }); });
  });
}

/** A program resetting `resets` connections behind a bridge with `args`; one client sends `request` and half-closes. */
async function scenario(t: { after(fn: () => void): void }, opts: { resets: number; request: Buffer; args: string[]; mode?: string }) {
  const dir = tempDir(t);
  const program = await startProgram(t, dir, opts.resets, opts.request.length, opts.mode);
  // No health checks: every connection the program counts is the client's.
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', program.path, '--check-interval', '0', ...opts.args]);
  const c = await connect(bridge.port);
  const clientPort = c.localPort!;
  return { program, bridge, c, clientPort };
}

const sessionEnd = (clientPort: number, rest: string): RegExp => new RegExp(`session 127\\.0\\.0\\.1:${clientPort} closed ${rest}`);

test('default --retries (3): a request reset unanswered twice is sent again and the whole reply arrives', async (t) => {
  const request = Buffer.from('status\n');
  const { program, bridge, c, clientPort } = await scenario(t, { resets: 2, request, args: ['--log-level', 'debug'] });
  const reply = readAll(c);
  c.end(request);
  assert.equal((await reply).toString(), 'status\n');
  await program.expectConnections(3);
  assert.match(program.lines.join('\n'), /conn 1 reset, 7 bytes unread\nconn 2 reset, 7 bytes unread\nconn 3 echo 7/);
  await bridge.waitForLog(sessionEnd(clientPort, '\\(done\\), 7 bytes in, 7 bytes out'));
  const resent = bridge.log().split('\n').filter((l) => l.includes(`session 127.0.0.1:${clientPort}: target dropped the connection unanswered (ECONNRESET); sending the request again`));
  assert.equal(resent.length, 2, bridge.log());
});

test('--retries 3 is exact: three resets are still answered (4 connections), a fourth is not resent', async (t) => {
  const request = Buffer.from('ping');
  await t.test('3 resets', async (t) => {
    const { program, c } = await scenario(t, { resets: 3, request, args: ['--retries', '3'] });
    const reply = readAll(c);
    c.end(request);
    assert.equal((await reply).toString(), 'ping');
    await program.expectConnections(4);
  });
  await t.test('4 resets', async (t) => {
    const { program, bridge, c, clientPort } = await scenario(t, { resets: 4, request, args: ['--retries', '3'] });
    const result = outcome(c);
    c.end(request);
    assert.equal((await result).data.length, 0, 'no reply');
    await bridge.waitForLog(sessionEnd(clientPort, '\\(server-error ECONNRESET\\), 4 bytes in, 0 bytes out'));
    await program.expectConnections(4);
  });
});

test('--retries 1 with two resets: the session closes without a reply, logged as server-error ECONNRESET', async (t) => {
  const request = Buffer.from('status\n');
  const { program, bridge, c, clientPort } = await scenario(t, { resets: 2, request, args: ['--retries', '1'] });
  const result = outcome(c);
  c.end(request);
  const { data } = await result;
  assert.equal(data.length, 0, `got a reply: ${data}`);
  await bridge.waitForLog(sessionEnd(clientPort, '\\(server-error ECONNRESET\\), 7 bytes in, 0 bytes out'));
  // The session is closed: no retry can come after this.
  await program.expectConnections(2);
});

test('--retries 0: a reset request is never sent again', async (t) => {
  const request = Buffer.from('status\n');
  const { program, bridge, c, clientPort } = await scenario(t, { resets: 1, request, args: ['--retries', '0'] });
  const result = outcome(c);
  c.end(request);
  assert.equal((await result).data.length, 0, 'no reply');
  await bridge.waitForLog(sessionEnd(clientPort, '\\(server-error ECONNRESET\\), 7 bytes in, 0 bytes out'));
  await program.expectConnections(1);
});

test('a reset after the first reply byte is not resent: the program answered', async (t) => {
  const request = Buffer.from('status\n');
  const { program, bridge, c, clientPort } = await scenario(t, { resets: 1, request, args: [], mode: 'partial' });
  const result = outcome(c);
  let received = '';
  c.on('data', (d: Buffer) => { received += d.toString(); });
  c.end(request);
  // The client has the byte, so the bridge has read it: now the program resets.
  await waitFor(() => received === 'x', 10_000, 'the first reply byte');
  program.child.stdin!.write('reset\n');
  assert.equal((await result).data.toString(), 'x', 'the byte the program sent, and nothing more');
  await bridge.waitForLog(sessionEnd(clientPort, '\\(server-error ECONNRESET\\), 7 bytes in, 1 bytes out'));
  await program.expectConnections(1);
});

// REPLAY_LIMIT is 64 KiB and inclusive: "only while the client has sent at most 64 KiB".
for (const size of [64 * 1024 - 1, 64 * 1024]) {
  test(`a client that sent ${size} bytes (at most 64 KiB) before the reset is resent and gets its reply`, async (t) => {
    const request = randomBytes(size);
    const { program, bridge, c, clientPort } = await scenario(t, { resets: 1, request, args: [] });
    const reply = readAll(c);
    c.end(request);
    const got = await reply;
    assert.equal(got.length, size);
    assert.ok(got.equals(request), 'the reply is the request, byte for byte');
    await program.expectConnections(2);
    assert.match(program.lines.join('\n'), new RegExp(`conn 1 reset, ${size} bytes unread`));
    await bridge.waitForLog(sessionEnd(clientPort, `\\(done\\), ${size} bytes in, ${size} bytes out`));
  });
}

for (const size of [64 * 1024 + 1, 65 * 1024 + 1]) {
  test(`a client that sent ${size} bytes (over 64 KiB) before the reset is not resent`, async (t) => {
    const request = randomBytes(size);
    const { program, bridge, c, clientPort } = await scenario(t, { resets: 1, request, args: [] });
    const result = outcome(c);
    c.end(request);
    assert.equal((await result).data.length, 0, 'no reply');
    await bridge.waitForLog(sessionEnd(clientPort, `\\(server-error ECONNRESET\\), ${size} bytes in, 0 bytes out`));
    assert.match(program.lines.join('\n'), new RegExp(`conn 1 reset, ${size} bytes unread`));
    await program.expectConnections(1);
  });
}

test('a request sent after the target closed (its EOF already forwarded) is not resent: the session ends, it does not hang', async (t) => {
  const dir = tempDir(t);
  // Closes its first connection at once; would echo on any later one.
  let connections = 0;
  const srv = await unixServer(join(dir, 'app.sock'), (s) => {
    if (++connections === 1) return void s.destroy();
    s.pipe(s);
  });
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--client-timeout', '30s']);
  const c = await connect(bridge.port);
  const clientPort = c.localPort!;
  const result = outcome(c);
  await new Promise((resolve) => c.once('end', resolve)); // the target's EOF, forwarded
  c.end('hello');
  // Resending would reach a second connection, whose echo the client could not
  // receive any more (its read side is done): the session would hang until client-timeout.
  assert.equal((await result).data.length, 0);
  await bridge.waitForLog(sessionEnd(clientPort, '\\(server-error EPIPE\\)'), 5000);
  assert.equal(connections, 1, 'the request was sent again to a new connection');
});
