// What out-of-memory or a teardown would do to the data plane, made to
// happen on purpose: the test build (make test-asan, -DSOCKBRIDGE_TEST_HOOKS)
// fails named steps when SOCKBRIDGE_FAILPOINTS says so. Without it these
// tests are skipped with one line.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assertOneCleanLine, bridgeToEcho, echoServer, roundTrip, runBridge, tempDir, TEST_HOOKS } from './helpers';
import { join } from 'node:path';

const skip = !TEST_HOOKS && 'needs the test build of the data plane (make test-asan: -DSOCKBRIDGE_TEST_HOOKS)';

test('events the threads could not signal are not lost: every session is still logged', { skip }, async (t) => {
  // The first five requests to wake Node's event loop fail (napi_call_threadsafe_function).
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0', '--check-interval', '0'], { env: { SOCKBRIDGE_FAILPOINTS: 'tsfn:5' } });
  for (let i = 0; i < 3; i++) assert.equal((await roundTrip(bridge.port, `r${i}`)).toString(), `r${i}`);
  await bridge.waitForLog(/(session 127\.0\.0\.1:\d+ closed \(done\)[^\n]*\n[^]*){3}/, 5000);
});

test('threads that cannot all be started: one line, exit 71, nothing left running', { skip }, async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const started = Date.now();
  // The second thread's creation fails: the first must be stopped and everything released, or Node would never exit.
  const r = await runBridge(['--relay', 'native', '--relay-threads', '3', '--listen', '127.0.0.1:0', '--target', srv.path, '--log-target', 'stderr'],
    { SOCKBRIDGE_FAILPOINTS: 'thread-start:1:1' });
  assert.equal(r.code, 71, r.stderr);
  assertOneCleanLine(r.stderr, "cannot start the data plane's 3 threads", '[EDATAPLANE_START]');
  assert.ok(Date.now() - started < 8000, 'it took too long to exit');
});
