// A broken install says so in one line and exits 72, never with a stack
// trace: native addons built for another Node.js (the recorded ABI differs),
// or an addon the dynamic loader cannot load. Each case runs the real
// program from a copy of the installation whose node_modules says what the
// case needs (the checkout's own node_modules stays untouched).
// (test-matrix also runs the checkout under Nodes of other ABIs.)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { builtFor, checkAbi } from '../src/systemd/addons';
import { InstallError } from '../src/errors';
import { assertOneCleanLine, ROOT, tempDir } from './helpers';

const FIX = 'make deb SUITE=host';

/** A copy of the installation (dist/src, package.json) with its own node_modules; `fake` replaces packages there. */
function installation(dir: string, record: object | undefined, fake: Record<string, string> = {}): string {
  cpSync(join(ROOT, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  const modules = join(dir, 'node_modules');
  mkdirSync(modules);
  for (const name of readdirSync(join(ROOT, 'node_modules'))) {
    if (name.startsWith('.') || name in fake) continue;
    symlinkSync(join(ROOT, 'node_modules', name), join(modules, name));
  }
  for (const [name, source] of Object.entries(fake)) {
    mkdirSync(join(modules, name));
    writeFileSync(join(modules, name, 'index.js'), source);
  }
  if (record) writeFileSync(join(modules, '.sockbridge-abi.json'), JSON.stringify(record));
  return join(dir, 'dist', 'src', 'main.js');
}

function run(main: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [main, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stderr }); });
  });
}

test('the build records the ABI the addons were built for, and it is this Node\'s', () => {
  const record = builtFor();
  assert.ok(record, 'node_modules/.sockbridge-abi.json is missing: package.json\'s postinstall did not run');
  assert.equal(record.modules, process.versions.modules, `built for ${record.node}, running ${process.version}`);
  assert.doesNotThrow(() => checkAbi(record));
  assert.doesNotThrow(() => checkAbi(undefined), 'no record (a hand-made node_modules): the loader decides');
});

test('a missing or unreadable ABI record is no record, not a crash', (t) => {
  const dir = tempDir(t);
  assert.equal(builtFor(join(dir, 'missing.json')), undefined);
  writeFileSync(join(dir, 'torn.json'), '{"node":"v18');
  assert.equal(builtFor(join(dir, 'torn.json')), undefined);
  writeFileSync(join(dir, 'other.json'), '{"node":18}');
  assert.equal(builtFor(join(dir, 'other.json')), undefined);
});

test('addons built for another Node: one line naming both versions and the fix, exit 72', async (t) => {
  const dir = tempDir(t);
  const other = process.versions.modules === '108' ? '115' : '108';
  const main = installation(dir, { node: 'v18.20.4', modules: other });
  assert.throws(() => checkAbi({ node: 'v18.20.4', modules: other }),
    (err: unknown) => err instanceof InstallError && err.code === 'EADDON_ABI' && err.exitCode === 72);
  // Under systemd (the journal addon is wanted) ...
  const r = await run(main, ['--listen', '127.0.0.1:0', '--target', join(dir, 'app.sock'), '--log-target', 'journal']);
  assert.equal(r.code, 72, r.stderr);
  assertOneCleanLine(r.stderr, '[EADDON_ABI]', `Node.js v18.20.4 (ABI ${other})`, `Node.js ${process.version} (ABI ${process.versions.modules})`, FIX);
  // ... and with NOTIFY_SOCKET (without sd-notify systemd would wait for READY=1 until its start timeout).
  const n = await run(main, ['--listen', '127.0.0.1:0', '--target', join(dir, 'app.sock'), '--log-target', 'stderr'],
    { NOTIFY_SOCKET: join(dir, 'notify') });
  assert.equal(n.code, 72, n.stderr);
  assertOneCleanLine(n.stderr, '[EADDON_ABI]');
});

test('an addon the dynamic loader refuses: one line with the loader\'s reason and the fix, exit 72', async (t) => {
  const dir = tempDir(t);
  const main = installation(dir, { node: process.version, modules: process.versions.modules }, {
    'sd-notify': "throw new Error('libnode.so.108: cannot open shared object file: No such file or directory\\n    at Module._extensions..node');",
  });
  const r = await run(main, ['--listen', '127.0.0.1:0', '--target', join(dir, 'app.sock'), '--log-target', 'stderr'],
    { NOTIFY_SOCKET: join(dir, 'notify') });
  assert.equal(r.code, 72, r.stderr);
  assertOneCleanLine(r.stderr, '[EADDON_LOAD]', 'sd-notify', 'libnode.so.108: cannot open shared object file', FIX);
});
