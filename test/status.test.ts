// Operating it like HAProxy's "show stat": `sockbridge status` over the
// control socket, and the same counters as Prometheus metrics.

import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import type { StatusReport } from '../src/operator/status';
import { echoServer, freePort, roundTrip, runBridge, startBridge, tempDir, TEST_RELAY, waitFor } from './helpers';

function httpGet(url: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    }).on('error', reject);
  });
}

test('status: the control socket reports state, counters and configuration for the whole service', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--control-socket', ctl]);
  assert.equal(statSync(ctl).mode & 0o777, 0o600, 'control socket must be private');
  for (let i = 0; i < 3; i++) assert.equal((await roundTrip(bridge.port, 'ping')).toString(), 'ping');

  const json = async (): Promise<StatusReport> => {
    const r = await runBridge(['status', '--control-socket', ctl, '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as StatusReport;
  };
  // Sessions end in the relay's threads: wait for the counters to arrive.
  await waitFor(async () => (await json()).sessions.total === 3, 5000, 'three sessions counted');
  const report = await json();
  assert.equal(report.target.path, srv.path);
  assert.equal(report.target.state, 'UP');
  assert.equal(report.target.lastCheck?.ok, true);
  assert.deepEqual(report.sessions, { active: 0, waiting: 0, total: 3, failed: 0, denied: 0, deniedBy: { access: 0, tls: 0, identity: 0, uid: 0, concurrent: 0, rate: 0, proxy: 0 } });
  assert.deepEqual(report.bytes, { in: 12, out: 12 });
  assert.equal(report.workers, 1);
  assert.equal(report.relay.kind, TEST_RELAY, 'the relay the test asked for');
  assert.equal(report.config['target'], srv.path);
  assert.equal(report.pid, bridge.child.pid);

  const human = await runBridge(['status', '--control-socket', ctl]);
  assert.equal(human.code, 0);
  assert.match(human.stdout, /^target\s+.*app\.sock$/m);
  assert.match(human.stdout, /^state\s+UP for \d+s$/m);
  assert.match(human.stdout, /^sessions\s+0 active, 0 waiting, 3 served, 0 failed, 0 refused$/m);
});

test('status: bytes of a session still open are counted, not only when it ends', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--control-socket', ctl]);
  const c = await new Promise<net.Socket>((resolve) => { const s = net.connect(bridge.port, '127.0.0.1', () => resolve(s)); });
  t.after(() => c.destroy());
  let echoed = 0;
  c.on('data', (d: Buffer) => { echoed += d.length; });
  c.write(Buffer.alloc(5000, 'x'));
  await waitFor(() => echoed === 5000, 5000, 'the echo');
  const bytes = async (): Promise<StatusReport['bytes']> => {
    const r = await runBridge(['status', '--control-socket', ctl, '--json']);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as StatusReport).bytes;
  };
  // The status reads the threads' live counts.
  await waitFor(async () => (await bytes()).in === 5000, 5000, 'the open session\'s 5000 bytes in the status');
  assert.deepEqual(await bytes(), { in: 5000, out: 5000 });
  assert.equal(c.destroyed, false, 'the session is still open');
});

test('status: an unknown command on the control socket gets an error, not a crash', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const ctl = join(dir, 'bridge.ctl');
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--control-socket', ctl]);
  const answer = await new Promise<string>((resolve, reject) => {
    const c = net.createConnection(ctl, () => c.write('shutdown everything\n'));
    let out = '';
    c.on('data', (d) => { out += d; });
    c.on('end', () => resolve(out));
    c.on('error', reject);
  });
  assert.match(answer, /"error":"unknown command \\"shutdown everything\\"/);
  assert.equal((await roundTrip(bridge.port, 'fine')).toString(), 'fine');
});

test('status: a service that is not running gives one line and exit 69', async (t) => {
  const dir = tempDir(t);
  const r = await runBridge(['status', '--control-socket', join(dir, 'nothing.ctl')]);
  assert.equal(r.code, 69);
  assert.match(r.stderr, /^sockbridge: cannot ask .*nothing\.ctl: ENOENT — is the service running/);
});

test('metrics: Prometheus text with conventional names and types', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const port = await freePort();
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--metrics-listen', `127.0.0.1:${port}`]);
  assert.equal((await roundTrip(bridge.port, 'abc')).toString(), 'abc');
  const url = `http://127.0.0.1:${port}/metrics`;
  await waitFor(async () => /^sockbridge_sessions_total 1$/m.test((await httpGet(url)).body), 5000, 'the session in the metrics');
  const res = await httpGet(url);
  assert.equal(res.status, 200);
  assert.match(res.type, /^text\/plain; version=0\.0\.4/);
  for (const [name, type] of [['sockbridge_backend_up', 'gauge'], ['sockbridge_sessions_active', 'gauge'], ['sockbridge_sessions_total', 'counter'], ['sockbridge_sessions_failed_total', 'counter'], ['sockbridge_received_bytes_total', 'counter'], ['sockbridge_sent_bytes_total', 'counter']]) {
    assert.match(res.body, new RegExp(`^# TYPE ${name} ${type}$`, 'm'));
  }
  assert.match(res.body, /^sockbridge_backend_up 1$/m);
  assert.match(res.body, /^sockbridge_received_bytes_total 3$/m);
  assert.equal((await httpGet(`http://127.0.0.1:${port}/other`)).status, 404);
});
