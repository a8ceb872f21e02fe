// The relay: bytes arrive intact both ways, half-closes are forwarded both
// ways, and a slow reader on either side holds memory bounded.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { BridgeProcess, bridgeToEcho, connect, readAll, roundTrip, startBridge, tempDir, unixServer, waitFor } from './helpers';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('a request round-trips and the session is logged', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0']);
  const reply = await roundTrip(bridge.port, 'hello sockbridge');
  assert.equal(reply.toString(), 'hello sockbridge');
  await bridge.waitForLog(/session 127\.0\.0\.1:\d+ closed \(done\), 16 bytes in, 16 bytes out/);
});

test('half-close from the client: the whole reply still arrives after the client shuts down its write side', async (t) => {
  const dir = tempDir(t);
  // The program reads the request to EOF, then answers slowly in pieces:
  // exactly the case socket-proxyd and a default pipe() lose.
  const srv = await unixServer(join(dir, 'app.sock'), (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      const req = Buffer.concat(chunks).toString();
      let i = 0;
      const timer = setInterval(() => {
        if (i++ < 5) s.write(`part${i}:${req};`);
        else { clearInterval(timer); s.end('END'); }
      }, 20);
    });
  });
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path]);
  const reply = await roundTrip(bridge.port, 'GET');
  assert.equal(reply.toString(), 'part1:GET;part2:GET;part3:GET;part4:GET;part5:GET;END');
});

test('half-close from the program: the client sees EOF and can still send', async (t) => {
  const dir = tempDir(t);
  let received: Promise<Buffer> | undefined;
  const srv = await unixServer(join(dir, 'app.sock'), (s) => {
    s.end('banner, then I only listen');
    received = readAll(s);
  });
  t.after(() => srv.close());
  // No health checks: this program expects exactly one connection.
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0']);
  const c = await connect(bridge.port);
  const fromServer = await readAll(c);
  assert.equal(fromServer.toString(), 'banner, then I only listen');
  c.end('still talking after your EOF');
  await waitFor(() => received !== undefined, 5000, 'the program to get the connection');
  assert.equal((await received!).toString(), 'still talking after your EOF');
});

test('a large bulk transfer arrives byte for byte, both ways at once', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0']);
  const payload = randomBytes(64 * 1024 * 1024);
  const reply = await roundTrip(bridge.port, payload, 60_000);
  assert.equal(reply.length, payload.length);
  assert.equal(sha(reply), sha(payload));
});

/**
 * A producer pushes as fast as it can towards a reader that does not read.
 * With backpressure it is stopped once the kernel buffers and the bridge's
 * bounded queue are full: what it managed to write stays small.
 */
function pushUntilBlocked(s: net.Socket, budget: number): Promise<number> {
  return new Promise((resolve) => {
    let written = 0;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let lastProgress = Date.now();
    const pump = (): void => {
      while (written < budget) {
        written += chunk.length;
        lastProgress = Date.now();
        if (!s.write(chunk)) {
          s.once('drain', pump);
          return;
        }
      }
    };
    pump();
    // Blocked = no progress for 500 ms (the writer is stuck on a full path).
    const check = setInterval(() => {
      if (Date.now() - lastProgress > 500 || written >= budget) {
        clearInterval(check);
        resolve(written);
      }
    }, 50);
  });
}

test('slow reader on the client side: the program is paused, memory stays bounded', async (t) => {
  const dir = tempDir(t);
  const budget = 1024 * 1024 * 1024;
  let written: Promise<number> | undefined;
  const srv = await unixServer(join(dir, 'app.sock'), (s) => { written = pushUntilBlocked(s, budget); });
  t.after(() => srv.close());
  // No health checks: a probe's connection would be taken for the client's (and its push measured instead).
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0']);
  const memory = relayMemory(bridge);
  const c = await connect(bridge.port);
  c.pause(); // never read
  await waitFor(() => written !== undefined, 5000, 'the program to get the connection');
  const n = await written!;
  memory.assertBounded(`once the program had written ${n} bytes to a client that reads nothing`);
  assert.ok(n < 64 * 1024 * 1024, `program could write ${n} bytes to a client that reads nothing`);
  c.destroy();
});

test('slow reader on the program side: the client is paused, memory stays bounded', async (t) => {
  const dir = tempDir(t);
  const srv = await unixServer(join(dir, 'app.sock'), (s) => s.pause()); // never reads
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path]);
  const memory = relayMemory(bridge);
  const c = await connect(bridge.port);
  c.on('error', () => {});
  const n = await pushUntilBlocked(c, 1024 * 1024 * 1024);
  memory.assertBounded(`once the client had written ${n} bytes towards a program that reads nothing`);
  assert.ok(n < 64 * 1024 * 1024, `client could write ${n} bytes towards a program that reads nothing`);
  c.destroy();
});

// Both sides read into buffers the session lends to pending writes: a reader
// whose kernel buffers are nearly full leaves small writes pending while
// reading goes on, which is exactly when reusing a buffer would corrupt.
// (Towards the program, measured: a UNIX socket takes a write whole or not at
// all, and a write left whole pauses the client, so that direction rarely
// lends; its test guards the copy kept for retries and the ordering.)
test('a bursty slow reader still gets every byte from the program, in order', async (t) => {
  const dir = tempDir(t);
  const payload = randomBytes(12 * 1024 * 1024);
  const srv = await unixServer(join(dir, 'app.sock'), (s) => sendInOddPieces(s, payload));
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0']);
  const c = await connect(bridge.port);
  const got = await receiveWithStalls(c);
  c.destroy();
  assert.equal(got.length, payload.length);
  assert.equal(sha(got), sha(payload));
});

test('a bursty slow program still gets every byte from the client, in order', async (t) => {
  const dir = tempDir(t);
  const payload = randomBytes(12 * 1024 * 1024);
  let got: Promise<Buffer> | undefined;
  const srv = await unixServer(join(dir, 'app.sock'), (s) => { got = receiveWithStalls(s); });
  t.after(() => srv.close());
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0']);
  const c = await connect(bridge.port);
  sendInOddPieces(c, payload);
  await waitFor(() => got !== undefined, 5000, 'the program to get the connection');
  const received = await got!;
  c.destroy();
  assert.equal(received.length, payload.length);
  assert.equal(sha(received), sha(payload));
});

/** Small, odd-sized pieces, one per turn of the event loop: the bridge's reads stay small and end at every offset. */
function sendInOddPieces(s: net.Socket, payload: Buffer): void {
  let off = 0;
  const pump = (): void => {
    if (off >= payload.length) return void s.end();
    const n = Math.min(997 + (off % 7919), payload.length - off);
    const more = s.write(payload.subarray(off, off + n));
    off += n;
    if (more) setImmediate(pump);
    else s.once('drain', pump);
  };
  pump();
}

/** Everything up to EOF, stalling every MiB so the kernel buffers in between fill and drain again and again. */
function receiveWithStalls(s: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let received = 0;
  let nextStall = 0;
  s.on('data', (d: Buffer) => {
    chunks.push(d);
    received += d.length;
    if (received >= nextStall) {
      nextStall += 1024 * 1024;
      s.pause();
      setTimeout(() => s.resume(), 25);
    }
  });
  return new Promise<Buffer>((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

/** How much a relaying process may grow while its session is blocked on a slow reader (measured: well under 1 MiB). */
const RSS_GROWTH_LIMIT = 32 * 1024 * 1024;

/**
 * The resident memory of the bridge (one process: its relay threads, or its
 * event loop, do the relaying), from now on; assertBounded checks its growth.
 */
function relayMemory(bridge: BridgeProcess): { assertBounded(when: string): void } {
  const pid = bridge.child.pid!;
  const before = rssOf(pid);
  const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
  return {
    assertBounded(when: string): void {
      const rss = rssOf(pid);
      assert.ok(rss - before < RSS_GROWTH_LIMIT, `bridge ${pid}: RSS grew from ${mib(before)} to ${mib(rss)} ${when}, more than ${mib(RSS_GROWTH_LIMIT)}`);
    },
  };
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}
