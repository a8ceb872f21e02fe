// One client's way to a target (src/targets/backend.ts: Backend.connect,
// PendingConnect): a round over the pool's candidates, then a capped backoff
// (5 ms doubling up to 200 ms, ±20 % jitter) until connect-timeout, a retry at
// once when a socket file appears or wake() is called, and the three ways it
// ends without a target. Real parts throughout: a TargetPool built from
// settings (health checks off), real UNIX servers in a temp dir, and a Dialer
// that connects with net sockets, so every failure is a real errno.

import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { test, type TestContext } from 'node:test';
import { Logger } from '../src/log';
import type { LogLevel } from '../src/options';
import { Backend, BackendSettings, ConnectFailure, Dialer, PendingConnect } from '../src/targets/backend';
import type { Target } from '../src/targets/pool';
import { delay, pythonProgram, tempDir, unixServer, waitFor } from './helpers';

const FIRST_MS = 5;
const MAX_MS = 200;
/** How early a timer may seem to fire, measured from the failed attempt (libuv's loop clock is cached, in whole ms). */
const EARLY_MS = 2;

interface Attempt {
  n: number;
  path: string;
  at: number;
  /** 'connected' or the errno code, once known. */
  outcome?: string;
}

/**
 * Connects with a real net socket to the target's path. Hooks let a test act
 * at exact points: right after attempt n failed and the backend has reacted
 * (afterFail), or with the failure of attempt n held back until release()
 * (holdFailureOf: an attempt still in flight).
 */
class NetDialer implements Dialer<net.Socket> {
  readonly attempts: Attempt[] = [];
  afterFail: ((n: number) => void) | undefined;
  holdFailureOf: number | undefined;
  private held: (() => void) | undefined;
  /** Connect with this effective uid (root only: a real EACCES for root). */
  asUid: number | undefined;

  attempt(target: Target, ok: (conn: net.Socket) => void, fail: (err: NodeJS.ErrnoException) => void): () => void {
    const rec: Attempt = { n: this.attempts.length + 1, path: target.path, at: performance.now() };
    this.attempts.push(rec);
    let sock: net.Socket;
    if (this.asUid !== undefined) {
      // connect(2) on a UNIX socket runs inside net.connect(): only it runs with the other euid.
      process.seteuid!(this.asUid);
      try {
        sock = net.connect({ path: target.path });
      } finally {
        process.seteuid!(0);
      }
    } else {
      sock = net.connect({ path: target.path });
    }
    sock.once('connect', () => {
      rec.outcome = 'connected';
      sock.removeAllListeners('error');
      sock.on('error', () => {});
      ok(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      rec.outcome = err.code ?? err.message;
      const deliver = (): void => {
        fail(err);
        this.afterFail?.(rec.n);
      };
      if (this.holdFailureOf === rec.n) this.held = deliver;
      else deliver();
    });
    return () => sock.destroy();
  }

  /** Deliver the failure held back; the backend's reaction runs inside this call. */
  release(): void {
    const h = this.held;
    this.held = undefined;
    assert.ok(h, 'no failure held');
    h();
  }

  get heldBack(): boolean {
    return this.held !== undefined;
  }
}

interface Outcome {
  failure: ConnectFailure | undefined;
  conn: net.Socket | undefined;
  error: NodeJS.ErrnoException | undefined;
  target: Target | undefined;
  at: number;
}

interface Harness {
  backend: Backend;
  dialer: NetDialer;
  log: string[];
}

function settingsFor(targets: string[], more: Partial<BackendSettings> = {}): BackendSettings {
  return {
    target: targets, backupTarget: [], targetDir: '', balance: 'first', connectTimeout: 5000,
    connectAttemptTimeout: 2000, checkInterval: 0, rise: 1, fall: 1, errorLimit: 0, targetTlsMaterial: undefined, ...more,
  };
}

/** A started Backend over `settings`, its log lines, and a dialer; stopped when the test ends. */
function harness(t: TestContext, settings: BackendSettings): Harness {
  const log: string[] = [];
  const logger = new Logger({ write: (level: LogLevel, message: string) => { log.push(`${level} ${message}`); } }, 'debug');
  const backend = new Backend(settings, logger, { onTargetState: () => {}, onTargetsChanged: () => {} });
  backend.start();
  t.after(() => backend.stop());
  return { backend, dialer: new NetDialer(), log };
}

/** Backend.connect with a promise of how it ended (exactly once: a second call fails the test). */
function connectVia(t: TestContext, h: Harness, avoid?: Target): { pending: PendingConnect<net.Socket>; done: Promise<Outcome>; calls: () => number } {
  let calls = 0;
  let resolve!: (o: Outcome) => void;
  const done = new Promise<Outcome>((r) => { resolve = r; });
  const pending = h.backend.connect<net.Socket>((failure: ConnectFailure | undefined, conn: net.Socket | undefined, error: NodeJS.ErrnoException | undefined, target: Target | undefined) => {
    calls++;
    if (conn) t.after(() => { conn.destroy(); });
    resolve({ failure, conn, error, target, at: performance.now() });
  }, h.dialer, avoid);
  return { pending, done, calls: () => calls };
}

function gaps(attempts: readonly Attempt[]): number[] {
  return attempts.slice(1).map((a, i) => a.at - attempts[i]!.at);
}

/** The nominal wait before attempt i+1 (i from 0): 5, 10, 20, … capped at 200. */
function nominal(i: number): number {
  return Math.min(FIRST_MS * 2 ** i, MAX_MS);
}

test('a held client retries a missing target with a backoff of 5 ms doubling up to 200 ms, jittered ±20 %, and ends with connect-timeout', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'missing.sock');
  const TIMEOUT = 2500;
  const h = harness(t, settingsFor([path], { connectTimeout: TIMEOUT }));
  const started = performance.now();
  const { done, calls } = connectVia(t, h);
  const out = await done;
  const elapsed = out.at - started;

  assert.equal(out.failure, 'connect-timeout');
  assert.equal(out.error?.code, 'ENOENT');
  assert.equal(calls(), 1);
  assert.ok(elapsed >= TIMEOUT - EARLY_MS && elapsed < TIMEOUT + 500, `ended after ${elapsed.toFixed(1)} ms, connect-timeout is ${TIMEOUT}`);
  assert.ok(h.dialer.attempts.every((a) => a.path === path && a.outcome === 'ENOENT'), JSON.stringify(h.dialer.attempts));

  const g = gaps(h.dialer.attempts);
  const shown = g.map((x) => x.toFixed(1)).join(', ');
  // 5+10+20+40+80+160 = 315 ms, then 200 ms steps: about 17 attempts in 2.5 s (an uncapped backoff makes 9).
  assert.ok(g.length >= 13, `only ${g.length + 1} attempts in ${TIMEOUT} ms: ${shown}`);
  // The last wait is cut short by the deadline: leave it out.
  const full = g.slice(0, -1);
  for (const [i, gap] of full.entries()) {
    assert.ok(gap >= 0.8 * nominal(i) - EARLY_MS, `wait ${i + 1} was ${gap.toFixed(1)} ms, at least ${0.8 * nominal(i)} expected: ${shown}`);
  }
  // Doubling, not faster: the first six waits stay near their step (generous slack for a busy machine).
  for (let i = 0; i < 6; i++) {
    assert.ok(full[i]! <= 1.2 * nominal(i) + 50, `wait ${i + 1} was ${full[i]!.toFixed(1)} ms, at most ${1.2 * nominal(i)} (+50) expected: ${shown}`);
  }
  // Capped at 200 ms: an uncapped 400 ms step would be 320 ms at the least.
  const capped = full.slice(6);
  assert.ok(capped.length >= 6, shown);
  const sorted = [...capped].sort((a, b) => a - b);
  assert.ok(sorted[Math.floor(sorted.length / 2)]! <= 1.2 * MAX_MS + 20, `the capped waits' median is ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} ms: ${shown}`);
  // Jittered: uniform in 160..240 ms, so ten of them do not all fall within 10 ms of each other.
  assert.ok(sorted[sorted.length - 1]! - sorted[0]! >= 10, `the capped waits do not vary (no jitter?): ${shown}`);
});

test('a socket file appearing in the watched directory retries at once, not at the next backoff step', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const h = harness(t, settingsFor([path], { connectTimeout: 10_000 }));
  let listenedAt = 0;
  const servers: Promise<unknown>[] = [];
  // Right after attempt 8 failed (the backend has set its next timer, about 200 ms away), the program starts.
  h.dialer.afterFail = (n) => {
    if (n !== 8) return;
    listenedAt = performance.now();
    servers.push(unixServer(path, () => {}).then((srv) => { t.after(() => srv.close()); }));
  };
  const { done } = connectVia(t, h);
  const out = await done;
  await Promise.all(servers);

  assert.equal(out.failure, undefined);
  assert.equal(out.target?.path, path);
  const last = h.dialer.attempts[h.dialer.attempts.length - 1]!;
  assert.equal(last.outcome, 'connected');
  assert.equal(last.n, 9, `attempts: ${JSON.stringify(h.dialer.attempts)}`);
  const gap = last.at - h.dialer.attempts[7]!.at;
  // The backoff step would have been 160..240 ms after attempt 8.
  assert.ok(gap < 0.8 * MAX_MS - EARLY_MS, `connected ${gap.toFixed(1)} ms after attempt 8 (socket there ${(last.at - listenedAt).toFixed(1)} ms): that is the backoff, not the watch`);
  assert.ok(h.log.some((l) => l === `debug ${path} changed: retrying 1 held clients now`), h.log.join('\n'));
});

/** A program that binds `path` (connects are refused: ECONNREFUSED) and listens only when told to on stdin. */
const BIND_THEN_LISTEN = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
s.listen(16)
print("listening", flush=True)
conns = []
while True:
    c, _ = s.accept()
    conns.append(c)
`;

test('wake() retries at once: with the target still refusing, the backoff starts again from 5 ms; with it listening, the client connects', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'app.sock');
  const { child, lines } = await pythonProgram(t, BIND_THEN_LISTEN, [path]);
  const h = harness(t, settingsFor([path], { connectTimeout: 10_000 }));
  let pending!: PendingConnect<net.Socket>;
  let inWake = -1;
  // After attempt 8 (next timer about 200 ms away): wake() with the target still refusing.
  h.dialer.afterFail = (n) => {
    if (n !== 8) return;
    const before = h.dialer.attempts.length;
    pending.wake();
    inWake = h.dialer.attempts.length - before;
  };
  const c = connectVia(t, h);
  pending = c.pending;
  // Twelve attempts ended (the twelfth is recorded when it starts, its outcome when it fails).
  await waitFor(() => h.dialer.attempts[11]?.outcome !== undefined, 10_000, '12 attempts');
  assert.equal(inWake, 1, 'wake() made an attempt at once, inside the call');
  const g = gaps(h.dialer.attempts);
  assert.ok(g[7]! < 0.8 * MAX_MS - EARLY_MS, `attempt 9 came ${g[7]!.toFixed(1)} ms after 8: not at once`);
  // The backoff after a wake-up starts over: attempt 10 comes 5 ms ±20 % after 9, not 200 ms
  // (a loaded machine may add tens of ms; not starting over would add at least 160).
  assert.ok(g[8]! >= 0.8 * FIRST_MS - EARLY_MS && g[8]! < 0.5 * MAX_MS, `after the wake-up the next wait was ${g[8]!.toFixed(1)} ms (waits: ${g.map((x) => x.toFixed(1)).join(', ')})`);
  assert.ok(h.dialer.attempts.slice(0, 12).every((a) => a.outcome === 'ECONNREFUSED'), JSON.stringify(h.dialer.attempts.slice(0, 12)));

  // Now the program listens; the next failed attempt sets a timer far enough away to see that wake() beats it.
  await waitFor(() => h.dialer.attempts.length >= 18, 10_000, '18 attempts (the backoff back at 200 ms)');
  let failedAt = 0;
  let listening: Promise<void> | undefined;
  h.dialer.afterFail = () => {
    if (listening) return;
    failedAt = performance.now();
    child.stdin!.write('listen\n');
    listening = waitFor(() => lines.includes('listening'), 5000, 'the program to listen');
  };
  await waitFor(() => listening !== undefined, 5000, 'a failed attempt');
  await listening;
  const attemptsBefore = h.dialer.attempts.length;
  assert.ok(performance.now() - failedAt < 0.8 * MAX_MS - EARLY_MS, 'the program took a whole backoff step to listen: too slow a machine for this test');
  assert.equal(c.calls(), 0, 'not connected before the wake-up');
  pending.wake();
  assert.equal(h.dialer.attempts.length, attemptsBefore + 1, 'wake() made an attempt at once');
  const out = await c.done;
  assert.equal(out.failure, undefined);
  assert.equal(h.dialer.attempts[attemptsBefore]!.outcome, 'connected');
});

test('wake() during an attempt in flight retries right after that attempt fails, with the backoff back at 5 ms', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'missing.sock');
  const h = harness(t, settingsFor([path], { connectTimeout: 10_000 }));
  h.dialer.holdFailureOf = 8;
  const c = connectVia(t, h);
  await waitFor(() => h.dialer.heldBack, 10_000, 'attempt 8 in flight');
  c.pending.wake(); // in flight: noted, nothing else yet
  assert.equal(h.dialer.attempts.length, 8, 'no second round while one is in flight');
  h.dialer.release(); // attempt 8 fails now: the round failed, and was woken meanwhile
  assert.equal(h.dialer.attempts.length, 9, 'the next round started at once, inside the failure');
  await waitFor(() => h.dialer.attempts.length >= 10, 5000, 'attempt 10');
  const g = gaps(h.dialer.attempts);
  // Started over: about 5 ms (plus what a loaded machine adds); not started over: the 200 ms step, at least 160.
  assert.ok(g[8]! < 0.5 * MAX_MS, `attempt 10 came ${g[8]!.toFixed(1)} ms after 9: the backoff did not start over`);
  c.pending.cancel();
  const out = await c.done;
  assert.equal(out.failure, 'cancelled');
});

test('a target that refuses with EACCES until connect-timeout ends with target-denied, not connect-timeout', async (t) => {
  const dir = tempDir(t);
  const srv = await unixServer(join(dir, 'private.sock'), () => {});
  t.after(() => srv.close());
  chmodSync(srv.path, 0o000);
  const TIMEOUT = 400;
  const h = harness(t, settingsFor([srv.path], { connectTimeout: TIMEOUT }));
  // Root is never refused by a socket's mode: it connects as nobody (uid 65534) then.
  if (process.geteuid?.() === 0) h.dialer.asUid = 65534;
  const started = performance.now();
  const out = await connectVia(t, h).done;
  assert.equal(out.failure, 'target-denied');
  assert.equal(out.error?.code, 'EACCES');
  assert.ok(out.at - started >= TIMEOUT - EARLY_MS, `gave up after ${(out.at - started).toFixed(1)} ms: a denied socket is waited for (it may be chmod-ed soon)`);
  assert.ok(h.dialer.attempts.length >= 4, `${h.dialer.attempts.length} attempts`);
  assert.ok(h.log.some((l) => l.startsWith(`error EBACKEND_PERM: cannot connect to ${srv.path}`)), h.log.join('\n'));
});

test('an error of no kind worth waiting for (ENOTDIR, ELOOP) on every target fails at once with target-error', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'file'), '');
  const notDir = join(dir, 'file', 'app.sock'); // ENOTDIR
  const loop = join(dir, 'loop.sock');
  symlinkSync(loop, loop); // ELOOP
  const h = harness(t, settingsFor([notDir, loop], { connectTimeout: 5000 }));
  const started = performance.now();
  const out = await connectVia(t, h).done;
  assert.equal(out.failure, 'target-error');
  assert.equal(out.error?.code, 'ELOOP', 'the last error is the one reported');
  assert.deepEqual(h.dialer.attempts.map((a) => [a.path, a.outcome]), [[notDir, 'ENOTDIR'], [loop, 'ELOOP']], 'one round, no backoff');
  assert.ok(out.at - started < 1000, `took ${(out.at - started).toFixed(1)} ms`);
});

test('one target merely missing among targets with hard errors keeps the client waiting until connect-timeout', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'file'), '');
  const notDir = join(dir, 'file', 'app.sock');
  const missing = join(dir, 'later.sock');
  const TIMEOUT = 300;
  const h = harness(t, settingsFor([notDir, missing], { connectTimeout: TIMEOUT }));
  const started = performance.now();
  const out = await connectVia(t, h).done;
  assert.equal(out.failure, 'connect-timeout');
  assert.ok(out.at - started >= TIMEOUT - EARLY_MS);
  assert.ok(h.dialer.attempts.length >= 6, `${h.dialer.attempts.length} attempts: more than one round`);
  assert.deepEqual(h.dialer.attempts.slice(0, 4).map((a) => a.outcome), ['ENOTDIR', 'ENOENT', 'ENOTDIR', 'ENOENT']);
});

test('a round tries the targets in candidates() order, the avoided one last, and stops at the first that accepts', async (t) => {
  const dir = tempDir(t);
  const [a, b, c] = ['a', 'b', 'c'].map((n) => join(dir, `${n}.sock`)) as [string, string, string];
  const backup = join(dir, 'backup.sock');
  const h = harness(t, settingsFor([a, b, c], { backupTarget: [backup], connectTimeout: 150 }));
  const [ta, tb] = [h.backend.pool.find(a)!, h.backend.pool.find(b)!];

  // Nothing listens: one whole round, in order (regular ones, then the backup), then the backoff.
  const all = await connectVia(t, h).done;
  assert.equal(all.failure, 'connect-timeout');
  assert.deepEqual(h.dialer.attempts.slice(0, 8).map((x) => x.path), [a, b, c, backup, a, b, c, backup]);
  assert.deepEqual(h.backend.pool.candidates().map((x) => x.path), [a, b, c, backup], 'the pool says the same order');

  // Avoiding a: it goes last, after the backup.
  h.dialer.attempts.length = 0;
  const avoided = await connectVia(t, h, ta).done;
  assert.equal(avoided.failure, 'connect-timeout');
  assert.deepEqual(h.dialer.attempts.slice(0, 4).map((x) => x.path), [b, c, backup, a]);
  assert.deepEqual(h.backend.pool.candidates(ta).map((x) => x.path), [b, c, backup, a]);

  // c listens: a round avoiding b tries a, then c, which accepts: nothing after it is tried.
  const srv = await unixServer(c, () => {});
  t.after(() => srv.close());
  h.dialer.attempts.length = 0;
  const served = await connectVia(t, h, tb).done;
  assert.equal(served.failure, undefined);
  assert.equal(served.target?.path, c);
  assert.deepEqual(h.dialer.attempts.map((x) => [x.path, x.outcome]), [[a, 'ENOENT'], [c, 'connected']]);
});

test('roundrobin: successive clients start their round at successive targets; an avoided target is skipped to last', async (t) => {
  const dir = tempDir(t);
  const paths = ['a', 'b', 'c'].map((n) => join(dir, `${n}.sock`));
  const servers = await Promise.all(paths.map((p) => unixServer(p, () => {})));
  t.after(async () => { for (const s of servers) await s.close(); });
  const h = harness(t, settingsFor(paths, { balance: 'roundrobin' }));
  const servedBy: string[] = [];
  for (let i = 0; i < 6; i++) servedBy.push((await connectVia(t, h).done).target!.path);
  assert.deepEqual(servedBy, [...paths, ...paths]);
  // The turn is at a now; avoiding a, b serves.
  const out = await connectVia(t, h, h.backend.pool.find(paths[0]!)).done;
  assert.equal(out.target?.path, paths[1]);
  assert.equal(h.dialer.attempts.length, 7, 'each client served by its first attempt');
});

test('cancel() while held ends with cancelled, once, and no attempt follows', async (t) => {
  const dir = tempDir(t);
  const h = harness(t, settingsFor([join(dir, 'missing.sock')], { connectTimeout: 10_000 }));
  const c = connectVia(t, h);
  await waitFor(() => h.dialer.attempts.length >= 3, 5000, '3 attempts');
  c.pending.cancel();
  c.pending.cancel();
  c.pending.wake();
  const out = await c.done;
  assert.equal(out.failure, 'cancelled');
  const n = h.dialer.attempts.length;
  // Longer than any backoff step (240 ms at most): a timer left behind would have made an attempt.
  await delay(300);
  assert.equal(h.dialer.attempts.length, n, 'an attempt after cancel()');
  assert.equal(c.calls(), 1);
});

test('a target whose directory is missing entirely is waited for like a missing socket (ENOENT), and found once it appears', async (t) => {
  const dir = tempDir(t);
  const sub = join(dir, 'later');
  const path = join(sub, 'app.sock');
  const h = harness(t, settingsFor([path], { connectTimeout: 10_000 }));
  h.dialer.afterFail = (n) => {
    if (n !== 3) return;
    mkdirSync(sub);
    void unixServer(path, () => {}).then((srv) => { t.after(() => srv.close()); });
  };
  const out = await connectVia(t, h).done;
  assert.equal(out.failure, undefined);
  assert.equal(out.target?.path, path);
  assert.ok(h.dialer.attempts.slice(0, 3).every((a) => a.outcome === 'ENOENT'));
});
