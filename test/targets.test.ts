// Several targets: failover, backup, balancing, a directory of sockets,
// reload, drain/enable, and the operator's view of them. Every program here
// greets each client with its name, then echoes, so a client knows which
// target served it.

import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { statusLine } from '../src/bridge';
import { assertOneCleanLine, BridgeProcess, connect, delay, runBridge, startBridge, tempDir, unixServer, UnixServer, waitFor } from './helpers';

interface Program extends UnixServer {
  accepted: number;
}

/** A program on `path` that greets "NAME\n" and echoes. */
async function program(path: string, name: string): Promise<Program> {
  let accepted = 0;
  const srv = await unixServer(path, (s) => {
    accepted++;
    s.write(`${name}\n`);
    s.pipe(s);
  });
  return Object.defineProperty(srv, 'accepted', { get: () => accepted }) as Program;
}

/** Programs named `names`, each on NAME.sock in a fresh directory, closed when the test ends. */
async function programs(t: Parameters<typeof tempDir>[0], ...names: string[]): Promise<{ dir: string; progs: Program[] }> {
  const dir = tempDir(t);
  const progs = await Promise.all(names.map((n) => program(join(dir, `${n}.sock`), n)));
  t.after(async () => { for (const p of progs) await p.close(); });
  return { dir, progs };
}

/** A program stopped as a well-behaved one stops: no new connections, its socket file removed, open sessions finish. */
function stopAccepting(p: Program): void {
  p.server.close();
}

/** One session: the greeting names the target; the payload must come back whole. Resolves with the name. */
async function session(port: number, payload = 'ping', hold?: Promise<void>): Promise<string> {
  const s = await connect(port);
  try {
    let got = '';
    let closed = false;
    s.setEncoding('utf8');
    s.on('data', (d: string) => { got += d; });
    s.on('close', () => { closed = true; });
    const greeted = (): boolean => {
      if (closed && !got.includes('\n')) throw new Error(`closed before the greeting (got "${got}")`);
      return got.includes('\n');
    };
    await waitFor(greeted, 10_000, 'the greeting');
    const name = got.slice(0, got.indexOf('\n'));
    if (hold) await hold;
    s.write(payload);
    await waitFor(() => {
      if (closed && got !== `${name}\n${payload}`) throw new Error(`closed before the whole echo (got "${got}")`);
      return got === `${name}\n${payload}`;
    }, 10_000, `the echo of ${payload}`);
    return name;
  } finally {
    s.destroy();
  }
}

/** Sessions back to back until stopped: which target served each, and every failure. */
function clientLoop(port: number): { served: string[]; failures: string[]; stop(): Promise<void> } {
  const served: string[] = [];
  const failures: string[] = [];
  let running = true;
  const done = (async () => {
    for (let i = 0; running && i < 100_000; i++) {
      try {
        served.push(await session(port, `request ${i}`));
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  })();
  return { served, failures, stop: async () => { running = false; await done; } };
}

function counts(names: string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const n of names) c[n] = (c[n] ?? 0) + 1;
  return c;
}

async function bridge(t: Parameters<typeof startBridge>[0], args: string[]): Promise<BridgeProcess> {
  return startBridge(t, ['--listen', '127.0.0.1:0', ...args]);
}

test('two targets, one killed and restarted under a client loop: no session fails, none goes to it while it is DOWN', async (t) => {
  const dir = tempDir(t);
  const a = await program(join(dir, 'a.sock'), 'a');
  let b = await program(join(dir, 'b.sock'), 'b');
  t.after(async () => { await a.close(); await b.close(); });
  const br = await bridge(t, ['--target', a.path, '--target', b.path, '--check-interval', '100ms', '--rise', '1', '--fall', '1']);
  const loop = clientLoop(br.port);
  for (let round = 1; round <= 2; round++) {
    await waitFor(() => loop.served.slice(-20).includes('b'), 10_000, 'sessions on b');
    stopAccepting(b);
    const downs = (br.log().match(/target \S+b\.sock is DOWN/g) ?? []).length;
    await waitFor(() => (br.log().match(/target \S+b\.sock is DOWN/g) ?? []).length > downs, 10_000, 'b marked DOWN');
    const from = loop.served.length;
    await waitFor(() => loop.served.length >= from + 30, 10_000, '30 sessions while b is DOWN');
    assert.deepEqual(counts(loop.served.slice(from)), { a: loop.served.length - from }, 'every session on a while b is DOWN');
    b = await program(join(dir, 'b.sock'), 'b');
  }
  await waitFor(() => loop.served.slice(-20).includes('b'), 10_000, 'sessions on b again');
  await loop.stop();
  assert.deepEqual(loop.failures, [], 'no session failed');
  const c = counts(loop.served);
  assert.ok((c['a'] ?? 0) > 0 && (c['b'] ?? 0) > 0, JSON.stringify(c));
});

test('a backup target takes sessions only while the regular one cannot, and gives them back', async (t) => {
  const dir = tempDir(t);
  let a = await program(join(dir, 'a.sock'), 'a');
  const k = await program(join(dir, 'k.sock'), 'k');
  t.after(async () => { await a.close(); await k.close(); });
  const br = await bridge(t, ['--target', a.path, '--backup-target', k.path, '--check-interval', '100ms', '--rise', '1', '--fall', '2']);
  for (let i = 0; i < 10; i++) assert.equal(await session(br.port), 'a');
  stopAccepting(a);
  // At once, not only after the checks marked a DOWN: a client's connect to every regular target just failed.
  for (let i = 0; i < 10; i++) assert.equal(await session(br.port), 'k');
  a = await program(join(dir, 'a.sock'), 'a');
  await br.waitForLog(/target \S+a\.sock is UP/);
  await waitFor(async () => (await session(br.port)) === 'a', 10_000, 'sessions back on a');
  for (let i = 0; i < 10; i++) assert.equal(await session(br.port), 'a');
});

test('roundrobin spreads 1,000 sessions over 3 targets within ±10 %', async (t) => {
  const { progs } = await programs(t, 'x', 'y', 'z');
  const br = await bridge(t, [...progs.flatMap((p) => ['--target', p.path]), '--check-interval', '0']);
  const names: string[] = [];
  for (let batch = 0; batch < 100; batch++) names.push(...await Promise.all(Array.from({ length: 10 }, () => session(br.port))));
  const c = counts(names);
  for (const n of ['x', 'y', 'z']) assert.ok(Math.abs((c[n] ?? 0) - 1000 / 3) <= 1000 / 3 * 0.1, `${n}: ${c[n]} of 1000 (${JSON.stringify(c)})`);
});

test('leastconn sends each new session to a target with the fewest open ones', async (t) => {
  const { progs } = await programs(t, 'x', 'y', 'z');
  const br = await bridge(t, [...progs.flatMap((p) => ['--target', p.path]), '--check-interval', '0', '--balance', 'leastconn']);
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  const open: Promise<string>[] = [];
  // Held open one by one: each must land where the fewest are open (the programs count their connections).
  for (let i = 0; i < 7; i++) {
    const before = progs.map((p) => p.sockets.size);
    const fewest = Math.min(...before);
    open.push(session(br.port, 'held', held));
    await waitFor(() => progs.reduce((n, p) => n + p.sockets.size, 0) > before.reduce((a, b) => a + b, 0), 5000, 'the held session to connect');
    const landed = progs.findIndex((p, k) => p.sockets.size > before[k]!);
    assert.equal(before[landed], fewest, `session ${i + 1} went to a target with ${before[landed]} open, not ${fewest} (${before.join(', ')})`);
  }
  assert.deepEqual(progs.map((p) => p.sockets.size).sort(), [2, 2, 3]);
  release();
  await Promise.all(open);
});

test('a target directory: sockets join and leave while clients run; every client served, none sent to a vanished socket', async (t) => {
  const root = tempDir(t);
  const dir = join(root, 'app');
  const br = await bridge(t, ['--target-dir', join(dir, '*.sock'), '--check-interval', '100ms', '--connect-timeout', '10s']);
  // The directory is missing at start: a client is held until a socket appears in it.
  const first = session(br.port);
  await delay(200); // (a deliberate gap: the client must wait through a missing directory)
  mkdirSync(dir);
  writeFileSync(join(dir, 'notes.txt'), 'not a socket');
  const a = await program(join(dir, 'a.sock'), 'a');
  const other = await program(join(dir, 'c.other'), 'other'); // a socket, but not matching the glob
  t.after(async () => { await a.close(); await other.close(); });
  assert.equal(await first, 'a');
  const loop = clientLoop(br.port);
  const b = await program(join(dir, 'b.sock'), 'b');
  t.after(() => b.close());
  await br.waitForLog(/target \S+b\.sock joined/);
  await waitFor(() => loop.served.slice(-10).includes('b'), 10_000, 'sessions on b');
  stopAccepting(a);
  await br.waitForLog(/target \S+a\.sock left/);
  const from = loop.served.length;
  await waitFor(() => loop.served.length >= from + 20, 10_000, '20 sessions after a left');
  await loop.stop();
  assert.deepEqual(loop.failures, [], 'every client served');
  // (the loop's one session in flight may have connected to a just before it left)
  assert.deepEqual(counts(loop.served.slice(from + 1)), { b: loop.served.length - from - 1 }, 'none on the vanished socket');
  assert.ok(!loop.served.includes('other'), 'a socket not matching the glob is no target');
  // The directory removed (an instance's RuntimeDirectory=): clients are held, nothing exits.
  stopAccepting(b);
  rmSync(dir, { recursive: true });
  const late = session(br.port);
  await delay(200); // (the client waits through a directory that is gone)
  mkdirSync(dir);
  const d = await program(join(dir, 'd.sock'), 'd');
  t.after(() => d.close());
  assert.equal(await late, 'd');
  assert.equal(br.child.exitCode, null);
});

test('reload adds and removes targets: new sessions use the new set, a session on a removed target runs on', async (t) => {
  const { dir, progs: [a, b] } = await programs(t, 'a', 'b');
  const conf = join(dir, 'bridge.conf');
  const ctl = join(dir, 'ctl.sock');
  writeFileSync(conf, `target = ${a.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n`);
  const br = await startBridge(t, ['--config', conf, '--listen', '127.0.0.1:0']);
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  const open = session(br.port, 'still here', held);
  await waitFor(() => a.sockets.size === 1, 5000, 'the open session on a');
  writeFileSync(conf, `target = ${b.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n`);
  br.child.kill('SIGHUP');
  await br.waitForLog(/configuration reloaded: target=/);
  for (let i = 0; i < 5; i++) assert.equal(await session(br.port), 'b');
  const during = JSON.parse((await runBridge(['status', '--json', '--control-socket', ctl])).stdout) as { targets: { path: string; current: boolean; active: number }[] };
  assert.deepEqual(during.targets.map((x) => [x.path, x.current, x.active]), [[b.path, true, 0], [a.path, false, 1]]);
  release();
  assert.equal(await open, 'a', 'the session on the removed target ran on to its end');
  await waitFor(async () => {
    const r = JSON.parse((await runBridge(['status', '--json', '--control-socket', ctl])).stdout) as { targets: { path: string }[] };
    return r.targets.length === 1;
  }, 5000, 'the removed target to leave the status once its last session ended');
});

test('status, metrics and STATUS= per target', async (t) => {
  const { dir, progs: [a, b] } = await programs(t, 'a', 'b');
  const ctl = join(dir, 'ctl.sock');
  const br = await bridge(t, ['--target', a.path, '--target', b.path, '--backup-target', join(dir, 'k.sock'), '--check-interval', '100ms',
    '--control-socket', ctl, '--metrics-listen', '127.0.0.1:0', '--balance', 'first']);
  const port = Number((await br.waitForLog(/metrics on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
  await br.waitForLog(/target \S+k\.sock is DOWN/);
  for (let i = 0; i < 3; i++) assert.equal(await session(br.port), 'a');
  const report = JSON.parse((await runBridge(['status', '--json', '--control-socket', ctl])).stdout) as {
    target: { path: string; state: string }; targets: { path: string; role: string; state: string; total: number; failed: number }[];
  };
  assert.equal(report.target.path, a.path, 'the first target keeps the old field');
  assert.deepEqual(report.targets.map((x) => [x.path, x.role, x.state, x.total]), [
    [a.path, 'regular', 'UP', 3], [b.path, 'regular', 'UP', 0], [join(dir, 'k.sock'), 'backup', 'DOWN', 0],
  ]);
  const human = (await runBridge(['status', '--control-socket', ctl])).stdout;
  assert.match(human, /^targets$/m);
  assert.match(human, new RegExp(`^  ${a.path.replace(/[.]/g, '\\.')} +UP for .*, 0 active, 3 served, 0 failed$`, 'm'));
  assert.match(human, /k\.sock +DOWN backup for/);
  const metrics = await new Promise<string>((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.end('GET /metrics HTTP/1.0\r\n\r\n'));
    let out = '';
    s.on('data', (d: Buffer) => { out += d.toString(); });
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
  assert.match(metrics, new RegExp(`^sockbridge_target_sessions_total\\{target="${a.path.replace(/[.]/g, '\\.')}"\\} 3$`, 'm'));
  assert.match(metrics, /^sockbridge_target_up\{target="[^"]*k\.sock"\} 0$/m);
  assert.match(br.log(), /session 127\.0\.0\.1:\d+ closed \(done\)/);
});

test('STATUS= names the number of targets UP with several, and stays as it was with one', async () => {
  const snap = { active: 1, waiting: 0, total: 5, failed: 0, denied: 0, bytesIn: 0, bytesOut: 0 };
  const target = (state: 'UP' | 'DOWN' | 'INIT'): { state: 'UP' | 'DOWN' | 'INIT' } => ({ state });
  assert.equal(statusLine({ several: false, current: [target('UP')] } as never, snap), 'target UP; 1 active, 0 waiting, 5 served, 0 failed');
  assert.equal(statusLine({ several: false, current: [target('INIT')] } as never, snap), 'target checking; 1 active, 0 waiting, 5 served, 0 failed');
  assert.equal(statusLine({ several: true, current: [target('UP'), target('DOWN'), target('UP')] } as never, snap), '2/3 targets UP; 1 active, 0 waiting, 5 served, 0 failed');
});

test('drain and enable under a client loop: no session fails, none starts on a drained target, drained stays drained across a reload', async (t) => {
  const { dir, progs: [a, b] } = await programs(t, 'a', 'b');
  const conf = join(dir, 'bridge.conf');
  const ctl = join(dir, 'ctl.sock');
  writeFileSync(conf, `target = ${a.path}\ntarget = ${b.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n`);
  const br = await startBridge(t, ['--config', conf, '--listen', '127.0.0.1:0']);
  const loop = clientLoop(br.port);
  await waitFor(() => loop.served.length >= 20, 10_000, 'the loop going');
  const drained = await runBridge(['drain', a.path, '--control-socket', ctl]);
  assert.equal(drained.code, 0, drained.stderr);
  assert.match(drained.stdout, /drained/);
  const from = loop.served.length;
  await waitFor(() => loop.served.length >= from + 20, 10_000, '20 sessions after the drain');
  br.child.kill('SIGHUP');
  await br.waitForLog(/configuration reloaded/);
  const afterReload = loop.served.length;
  await waitFor(() => loop.served.length >= afterReload + 20, 10_000, '20 sessions after the reload');
  // (a session that had already connected to a before the drain may end just after it)
  assert.deepEqual(counts(loop.served.slice(from + 1)), { b: loop.served.length - from - 1 }, 'no new session on the drained target, before or after the reload');
  assert.equal((await runBridge(['enable', a.path, '--control-socket', ctl])).code, 0);
  await waitFor(() => loop.served.slice(-10).includes('a'), 10_000, 'sessions on a again');
  await loop.stop();
  assert.deepEqual(loop.failures, []);
  const unknown = await runBridge(['drain', join(dir, 'nope.sock'), '--control-socket', ctl]);
  assert.equal(unknown.code, 64);
  assertOneCleanLine(unknown.stderr, 'no target', a.path);
});

test('bad target settings: one clear line naming the option, exit 64 on the command line and 78 in a config file', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'plain-file');
  writeFileSync(file, '');
  const cases: { args: string[]; conf: string; says: string }[] = [
    { args: ['--target', '/run/x.sock', '--target', '/run/x.sock'], conf: 'target = /run/x.sock\ntarget = /run/x.sock\n', says: 'given twice' },
    { args: ['--backup-target', '/run/k.sock'], conf: 'backup-target = /run/k.sock\n', says: 'needs a regular target' },
    { args: ['--target-dir', `${file}/`], conf: `target-dir = ${file}/\n`, says: 'is not a directory' },
    { args: ['--balance', 'random'], conf: 'balance = random\n', says: 'expected one of first, roundrobin, leastconn' },
  ];
  for (const c of cases) {
    const cli = await runBridge(['check-config', ...c.args]);
    assert.equal(cli.code, 64, `${c.args.join(' ')}: ${cli.stderr}`);
    assertOneCleanLine(cli.stderr, c.says);
    const conf = join(dir, 'bad.conf');
    writeFileSync(conf, c.conf);
    const fromFile = await runBridge(['check-config', '--config', conf]);
    assert.equal(fromFile.code, 78, `${c.conf}: ${fromFile.stderr}`);
    assertOneCleanLine(fromFile.stderr, c.says, 'bad.conf');
  }
});

test('a request the target dropped unanswered is sent again to a different target', async (t) => {
  const dir = tempDir(t);
  // "a" closes each connection with the request still unread, as a restart drops the connections
  // queued on its old socket: the bridge reads ECONNRESET before any byte of answer.
  let dropped = 0;
  const aPath = join(dir, 'a.sock');
  const aServer = net.createServer({ pauseOnConnect: true }, (s) => {
    s.on('error', () => {});
    setTimeout(() => { dropped++; s.destroy(); }, 200); // (the request is in its queue by then, unread)
  });
  await new Promise<void>((resolve) => aServer.listen(aPath, resolve));
  const a = { path: aPath, close: () => new Promise<void>((r) => aServer.close(() => r())) };
  const b = await program(join(dir, 'b.sock'), 'b');
  t.after(async () => { await a.close(); await b.close(); });
  // first: a is always tried first, so only the replay rule's "a different target" brings b in.
  const br = await bridge(t, ['--target', a.path, '--target', b.path, '--check-interval', '0', '--balance', 'first']);
  const s = await connect(br.port);
  let got = '';
  s.setEncoding('utf8');
  s.on('data', (d: string) => { got += d; });
  s.write('once');
  await waitFor(() => got === 'b\nonce', 10_000, 'the answer from b');
  s.destroy();
  assert.equal(dropped, 1, 'sent to a once, then to b');
});

test('a reload shows and uses the running value of options that need a restart', async (t) => {
  const { dir, progs: [a] } = await programs(t, 'a');
  const conf = join(dir, 'bridge.conf');
  const ctl = join(dir, 'ctl.sock');
  const write = (backlog: number, retries: number): void =>
    writeFileSync(conf, `target = ${a.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\nbacklog = ${backlog}\nretries = ${retries}\n`);
  write(64, 3);
  const br = await startBridge(t, ['--config', conf, '--listen', '127.0.0.1:0']);
  write(9, 1);
  br.child.kill('SIGHUP');
  await br.waitForLog(/take effect only after a restart/);
  const r = JSON.parse((await runBridge(['status', '--json', '--control-socket', ctl])).stdout) as { config: Record<string, string> };
  assert.equal(r.config['backlog'], '64', 'backlog needs a restart: the running value');
  assert.equal(r.config['retries'], '1', 'retries is reloaded');
});
