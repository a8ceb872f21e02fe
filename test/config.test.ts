// Bad input gets one clear line naming the option and the fix, and a distinct
// exit code (64 usage, 78 config); never a stack trace. Good input is printed
// back by check-config as a valid config file.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseDuration } from '../src/options';
import { OPTIONS } from '../src/options';
import { assertOneCleanLine, ROOT, runBridge, tempDir, unixServer } from './helpers';

test('durations: plain milliseconds and units', () => {
  assert.equal(parseDuration('5000'), 5000);
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('5s'), 5000);
  assert.equal(parseDuration('2m'), 120_000);
  assert.equal(parseDuration('1.5s'), 1500);
  assert.equal(parseDuration('0'), 0);
  assert.throws(() => parseDuration('5 seconds'), /expected a duration/);
  assert.throws(() => parseDuration('-1'), /expected a duration/);
});

test('unknown option: exit 64, names the option', async () => {
  const r = await runBridge(['--listn', '1:2']);
  assert.equal(r.code, 64);
  assertOneCleanLine(r.stderr, '--listn', '--help');
});

test('unknown command: exit 64', async () => {
  const r = await runBridge(['start']);
  assert.equal(r.code, 64);
  assertOneCleanLine(r.stderr, '"start"', 'check-config');
});

test('malformed values on the command line: exit 64, names option, value and what is expected', async () => {
  const cases: [string[], string[]][] = [
    [['--connect-timeout', 'soon'], ['--connect-timeout', '"soon"', 'duration']],
    [['--max-conn=-3'], ['--max-conn', 'whole number']],
    [['--max-conn'], ['--max-conn', 'needs a value']],
    [['--target', '--rise', '2'], ['--target', 'needs a value']],
    [['--rise', '0'], ['--rise', 'from 1']],
    [['--listen', 'localhost'], ['--listen', 'HOST:PORT']],
    [['--listen', '1.2.3.4:70000'], ['--listen', 'port']],
    [['--on-marked-down', 'kill'], ['--on-marked-down', 'shutdown-sessions']],
    [['--log-level', 'loud'], ['--log-level', 'debug']],
    [['--rise', '2', '--rise', '3'], ['--rise', 'once']],
    [['--target', `/${'x'.repeat(120)}`], ['--target', '107 bytes']],
  ];
  for (const [args, expected] of cases) {
    const r = await runBridge(['check-config', ...args]);
    assert.equal(r.code, 64, `${args.join(' ')}: ${r.stderr}`);
    assertOneCleanLine(r.stderr, ...expected);
  }
});

test('missing config file: exit 78, names the file', async (t) => {
  const dir = tempDir(t);
  const r = await runBridge(['--config', join(dir, 'nope.conf')]);
  assert.equal(r.code, 78);
  assertOneCleanLine(r.stderr, 'nope.conf', 'ENOENT', '--config');
});

test('bad config file lines: exit 78 with file:line', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'bridge.conf');
  const cases: [string, string[]][] = [
    ['# ok\nrise = 2\nfall = many\n', ['bridge.conf:3', 'fall', '"many"']],
    ['targett = /x\n', ['bridge.conf:1', 'unknown option "targett"']],
    ['just words\n', ['bridge.conf:1', 'name = value']],
    ['rise = 2\nrise = 3\n', ['bridge.conf:2', 'set twice']],
  ];
  for (const [text, expected] of cases) {
    writeFileSync(file, text);
    const r = await runBridge(['check-config', '--config', file]);
    assert.equal(r.code, 78, r.stderr);
    assertOneCleanLine(r.stderr, ...expected);
  }
});

test('a target that exists but is not a socket: exit 78', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'x');
  for (const cmd of [[], ['check-config']]) {
    const r = await runBridge([...cmd, '--target', file, '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 78, r.stderr);
    assertOneCleanLine(r.stderr, file, 'not a socket');
  }
});

test('who-may-connect settings that would not apply: exit 64 from the command line, 78 from the file, naming what is missing', async (t) => {
  const dir = tempDir(t);
  const target = join(dir, 'program.sock');
  const cases: [string[], string, string[]][] = [
    [['--tls-allow-cn', 'a.example.org'], 'tls-allow-cn = a.example.org\n', ['--tls-allow-cn', '--tls-ca']],
    [['--tls-allow-uri', 'spiffe://example.org/*'], 'tls-allow-uri = spiffe://example.org/*\n', ['--tls-allow-uri', '--tls-ca']],
    [['--target-tls-allow-dns', 'b.example.org'], 'target-tls-allow-dns = b.example.org\n', ['target-tls-allow-dns', 'target-tls = on']],
    [['--accept-proxy', 'v2'], 'accept-proxy = v2\n', ['--accept-proxy v2', '--accept-proxy-from']],
    [['--accept-proxy-from', '10.0.0.0/8'], 'accept-proxy-from = 10.0.0.0/8\n', ['--accept-proxy-from', '--accept-proxy is none']],
  ];
  const file = join(dir, 'bridge.conf');
  for (const [args, text, expected] of cases) {
    const cli = await runBridge(['check-config', '--target', target, '--listen', '127.0.0.1:0', ...args]);
    assert.equal(cli.code, 64, `${args.join(' ')}: ${cli.stderr}`);
    assertOneCleanLine(cli.stderr, ...expected);
    writeFileSync(file, text);
    const conf = await runBridge(['check-config', '--config', file, '--target', target, '--listen', '127.0.0.1:0']);
    assert.equal(conf.code, 78, `${text}: ${conf.stderr}`);
    assertOneCleanLine(conf.stderr, ...expected);
  }
});

test('check-config: defaults ← file ← command line, printed as a config file', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'app.sock');
  const srv = await unixServer(sock, (s) => s.end());
  t.after(() => srv.close());
  const file = join(dir, 'bridge.conf');
  writeFileSync(file, `target = ${sock}\nconnect-timeout = 2500 # HAProxy-style ms\nlisten = 127.0.0.1:1000\nlisten = [::1]:1001\nrise = 5\n`);
  const r = await runBridge(['check-config', '--config', file, '--rise', '7']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => l.replace(/\s+=\s+/, ' = '));
  assert.ok(lines.includes(`target = ${sock}`));
  assert.ok(lines.includes('connect-timeout = 2500ms'));
  assert.ok(lines.includes('listen = 127.0.0.1:1000'));
  assert.ok(lines.includes('listen = [::1]:1001'));
  assert.ok(lines.includes('rise = 7'), 'command line wins');
  assert.ok(lines.includes('fall = 3'), 'defaults fill the rest');
  // The output is itself a valid config file that yields the same configuration.
  const again = join(dir, 'again.conf');
  writeFileSync(again, r.stdout);
  const r2 = await runBridge(['check-config', '--config', again]);
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(r2.stdout, r.stdout);
});

test('--help, the conffile and the man page list every option of the table', async () => {
  const help = await runBridge(['--help']);
  const conf = await runBridge(['generate', 'config']);
  const man = await runBridge(['generate', 'man']);
  assert.equal(help.code, 0);
  for (const o of OPTIONS) {
    assert.ok(help.stdout.includes(`--${o.name}`), `--help lacks --${o.name}`);
    assert.ok(conf.stdout.includes(`#${o.name} = `), `conffile lacks ${o.name}`);
    assert.ok(man.stdout.includes(`\\-\\-${o.name.replace(/-/g, '\\-')}`), `man page lacks ${o.name}`);
  }
  const version = await runBridge(['--version']);
  assert.match(version.stdout, /^sockbridge \d+\.\d+\.\d+\n$/);
});

test('README: the configuration table is the one generated from the option table', async () => {
  const { readFileSync } = await import('node:fs');
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const m = /<!-- options:begin -->\n([\s\S]*?)<!-- options:end -->/.exec(readme);
  assert.ok(m, 'README lacks the options markers');
  const generated = await runBridge(['generate', 'markdown']);
  assert.equal(m[1], generated.stdout, 'README table is stale: run "make docs"');
});
