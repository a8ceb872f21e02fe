// Speaking systemd: socket activation through the real systemd-socket-activate,
// and the sd_notify protocol received on a real datagram socket.

import assert from 'node:assert/strict';
import { ChildProcess, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { takeSystemdSockets } from '../src/systemd/passed-sockets';
import { bridgeToEcho, echoServer, freePort, pythonProgram, roundTrip, startBridge, tempDir, waitFor } from './helpers';

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The kernel's accept queue length of a listening TCP port (ss's Send-Q column). */
function listenBacklog(port: number): number | undefined {
  const out = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).trim();
  if (out === '') return undefined;
  return Number(out.split(/\s+/)[2]);
}

test('socket activation: the passed socket is adopted and its backlog kept', { skip: !have('systemd-socket-activate') && 'systemd-socket-activate is not installed (apt install systemd)' }, async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const port = await freePort();
  // --listen names a different port: with a passed socket it must be ignored.
  const bridge = await startBridge(t, ['--target', srv.path, '--listen', '127.0.0.1:1'], {
    wrapper: ['systemd-socket-activate', '-l', `127.0.0.1:${port}`, '--fdname=bridge.socket'],
    waitListening: false,
  });
  await bridge.waitForLog(new RegExp(`Listening on 127.0.0.1:${port} as 3`));
  const before = listenBacklog(port);
  assert.equal(before, 4096, 'systemd-socket-activate listens with SOMAXCONN');

  // The first connection starts sockbridge, which serves it on the passed socket.
  assert.equal((await roundTrip(port, 'activated')).toString(), 'activated');
  await bridge.waitForLog(/listening on systemd fd 3 \(bridge\.socket\)/);
  assert.equal(listenBacklog(port), before, 'the backlog systemd configured was reset by listen()');
  assert.doesNotMatch(bridge.log(), /listening on 127\.0\.0\.1:1\b/, '--listen must be ignored under socket activation');

});

test('a passed socket in a private network namespace (PrivateNetwork=yes): its address is read with getsockname, so loopback is not taken for open to all', {
  skip: (!have('systemd-socket-activate') || !have('unshare') || process.getuid?.() !== 0) && 'needs systemd-socket-activate, unshare and root',
}, async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  for (const host of ['127.0.0.1', '0.0.0.0']) {
    const port = await freePort();
    // unshare -n: the bridge runs in a network namespace of its own, as the packaged unit does, with the socket bound outside it.
    const bridge = await startBridge(t, ['--relay', 'native', '--target', srv.path, '--check-interval', '0'], {
      wrapper: ['systemd-socket-activate', '-l', `${host}:${port}`, '--fdname=bridge.socket', 'unshare', '-n', '--'],
      waitListening: false,
    });
    await bridge.waitForLog(new RegExp(`Listening on ${host.replace(/\./g, '\\.')}:${port} as 3`));
    assert.equal((await roundTrip(port, 'from the host')).toString(), 'from the host');
    await bridge.waitForLog(/listening on systemd fd 3 \(bridge\.socket\)/);
    if (host === '127.0.0.1') assert.doesNotMatch(bridge.log(), /beyond loopback|address unknown/, 'a loopback socket was taken for open to all');
    else assert.match(bridge.log(), new RegExp(`accepting on systemd fd 3 \\(bridge\\.socket\\) \\(0\\.0\\.0\\.0 port ${port}\\) beyond loopback`));
    await bridge.stop();
  }
});

test('LISTEN_PID of another process: the fds are not ours, --listen is bound instead', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0'], {
    env: { LISTEN_PID: '1', LISTEN_FDS: '1', LISTEN_FDNAMES: 'x' },
  });
  assert.doesNotMatch(bridge.log(), /systemd fd/);
  assert.equal((await roundTrip(bridge.port, 'own socket')).toString(), 'own socket');
});

test('sd_listen_fds: fds 3… with their names for our PID; LISTEN_* removed either way', () => {
  const env: NodeJS.ProcessEnv = { LISTEN_PID: '42', LISTEN_FDS: '2', LISTEN_FDNAMES: 'web:admin', OTHER: 'kept' };
  assert.deepEqual(takeSystemdSockets(env, 42), [{ fd: 3, name: 'web' }, { fd: 4, name: 'admin' }]);
  assert.deepEqual(env, { OTHER: 'kept' });
  const notOurs: NodeJS.ProcessEnv = { LISTEN_PID: '41', LISTEN_FDS: '1' };
  assert.deepEqual(takeSystemdSockets(notOurs, 42), []);
  assert.deepEqual(notOurs, {});
});

const NOTIFY_LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    print(s.recv(65536).decode().replace("\\n", "|"), flush=True)
`;

async function notifyListener(t: { after(fn: () => void): void }, path: string): Promise<{ messages: string[]; child: ChildProcess }> {
  const { child, lines } = await pythonProgram(t, NOTIFY_LISTENER, [path]);
  return { messages: lines, child };
}

test('sd_notify: READY, STATUS, WATCHDOG at half the period, RELOADING then READY on SIGHUP, STOPPING on SIGTERM', async (t) => {
  const dir = tempDir(t);
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  const notifyPath = join(dir, 'notify');
  const { messages } = await notifyListener(t, notifyPath);
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `target = ${srv.path}\nlisten = 127.0.0.1:0\n`);
  const bridge = await startBridge(t, ['--config', conf], {
    env: { NOTIFY_SOCKET: notifyPath, WATCHDOG_USEC: '400000' },
  });
  const count = (re: RegExp): number => messages.filter((m) => re.test(m)).length;

  await waitFor(() => count(/^READY=1$/) === 1, 5000, 'READY=1');
  await waitFor(() => count(/^STATUS=target UP; 0 active/) >= 1, 5000, 'STATUS with the target UP');
  // 400 ms watchdog → a ping every 200 ms.
  const t0 = Date.now();
  await waitFor(() => count(/^WATCHDOG=1$/) >= 4, 5000, 'four WATCHDOG=1 pings');
  assert.ok(Date.now() - t0 < 2000, 'watchdog pings too slow for a 400 ms WatchdogSec');

  assert.equal((await roundTrip(bridge.port, 'x')).toString(), 'x');
  await waitFor(() => count(/^STATUS=target UP; 0 active, 0 waiting, 1 served, 0 failed$/) >= 1, 5000, 'STATUS counting the session');

  bridge.child.kill('SIGHUP');
  await waitFor(() => count(/^RELOADING=1\|MONOTONIC_USEC=\d+$/) === 1 && count(/^READY=1$/) === 2, 5000, 'RELOADING=1 then READY=1');
  const reloadAt = messages.findIndex((m) => m.startsWith('RELOADING=1'));
  assert.ok(messages.lastIndexOf('READY=1') > reloadAt, 'READY=1 must follow RELOADING=1');

  bridge.child.kill('SIGTERM');
  await waitFor(() => count(/^STOPPING=1$/) === 1, 5000, 'STOPPING=1');
  assert.equal(await bridge.exited, 0);
});

test('outside systemd nothing is sent and nothing breaks (no NOTIFY_SOCKET)', async (t) => {
  const { bridge } = await bridgeToEcho(t, ['--listen', '127.0.0.1:0'], { env: { WATCHDOG_USEC: '100000' } });
  assert.equal((await roundTrip(bridge.port, 'plain')).toString(), 'plain');
  assert.equal(await bridge.stop('SIGTERM'), 0);
});

