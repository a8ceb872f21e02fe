// TargetPool.candidates() (src/targets/pool.ts): the order one connect round
// tries the targets in. A real pool built from settings (health checks off, so
// started targets are UP; --error-limit 1 marks one DOWN from a real connect
// error, as client traffic does), drained by setDrained(), loaded by opened().
// Each order is also checked against the data plane's order_targets for the
// same targets and turn (the addon's testOrder), so the pool and C agree on
// real pools too, turn bookkeeping included.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { loadDataPlane } from '../src/dataplane/addon';
import { policyTarget } from '../src/dataplane/policy';
import { Logger } from '../src/log';
import type { LogLevel } from '../src/options';
import { Target, TargetPool, TargetSettings } from '../src/targets/pool';
import { tempDir } from './helpers';

function settingsFor(dir: string, regular: string[], backups: string[], more: Partial<TargetSettings> = {}): TargetSettings {
  return {
    target: regular.map((n) => join(dir, `${n}.sock`)), backupTarget: backups.map((n) => join(dir, `${n}.sock`)), targetDir: '',
    balance: 'first', connectTimeout: 1000, connectAttemptTimeout: 2000, checkInterval: 0, rise: 1, fall: 1, errorLimit: 1, targetTlsMaterial: undefined, ...more,
  };
}

interface Pool {
  pool: TargetPool;
  /** The target named NAME (its socket NAME.sock). */
  at(name: string): Target;
  /** candidates() as names. */
  order(avoid?: string): string[];
  log: string[];
  changes: () => number;
}

function makePool(t: TestContext, settings: TargetSettings, start = true): Pool {
  const log: string[] = [];
  let changes = 0;
  const logger = new Logger({ write: (level: LogLevel, message: string) => { log.push(`${level} ${message}`); } }, 'debug');
  const pool = new TargetPool(settings, logger, { onState: () => {}, onChange: () => { changes++; } });
  if (start) pool.start();
  t.after(() => pool.stop());
  const name = (target: Target): string => target.path.replace(/^.*\/|\.sock$/g, '');
  const at = (n: string): Target => {
    const found = pool.current.find((x) => name(x) === n);
    assert.ok(found, `no target ${n}`);
    return found;
  };
  return { pool, at, log, changes: () => changes, order: (avoid) => pool.candidates(avoid === undefined ? undefined : at(avoid)).map(name) };
}

/** A real failed connect from client traffic: with --error-limit 1 it marks the target DOWN. */
function markDown(target: Target): void {
  target.liveResult('absent', Object.assign(new Error(`connect ENOENT ${target.path}`), { code: 'ENOENT' }));
  assert.equal(target.state, 'DOWN');
}

const BALANCE = { first: 0, roundrobin: 1, leastconn: 2 } as const;

/** The data plane's order for the pool's targets as they are now, with `turn`. */
function nativeOrder(p: Pool, balance: keyof typeof BALANCE, turn: number, avoid?: string): string[] {
  const dp = loadDataPlane();
  if (typeof dp === 'string') throw new Error(`the data plane's addon does not load: ${dp}`);
  const targets = p.pool.current;
  const slots = dp.testOrder(targets.map((x) => policyTarget(x, 'auto', undefined)), BALANCE[balance], avoid === undefined ? -1 : p.at(avoid).slot, turn, targets.map((x) => x.active));
  return slots.map((s) => p.pool.bySlot(s)!.path.replace(/^.*\/|\.sock$/g, ''));
}

test('candidates(): regular targets not DOWN first, then backups not DOWN, then backups DOWN, then regular targets DOWN; drained ones never', (t) => {
  const dir = tempDir(t);
  const p = makePool(t, settingsFor(dir, ['r1', 'r2', 'r3', 'r4'], ['b1', 'b2']));
  assert.deepEqual(p.order(), ['r1', 'r2', 'r3', 'r4', 'b1', 'b2']);
  markDown(p.at('r2'));
  markDown(p.at('b1'));
  p.pool.setDrained(p.at('r3').path, true);
  assert.deepEqual(p.order(), ['r1', 'r4', 'b2', 'b1', 'r2']);
  assert.deepEqual(nativeOrder(p, 'first', 0), p.order());
  // The avoided target goes last, even after the DOWN ones; a drained one stays out.
  assert.deepEqual(p.order('r1'), ['r4', 'b2', 'b1', 'r2', 'r1']);
  assert.deepEqual(nativeOrder(p, 'first', 0, 'r1'), ['r4', 'b2', 'b1', 'r2', 'r1']);
  assert.deepEqual(p.order('r3'), ['r1', 'r4', 'b2', 'b1', 'r2']);
  // Every regular target DOWN or drained: the backups come first.
  markDown(p.at('r1'));
  markDown(p.at('r4'));
  assert.deepEqual(p.order(), ['b2', 'b1', 'r1', 'r2', 'r4']);
  // Enabled again: back in its place, by state.
  p.pool.setDrained(p.at('r3').path, false);
  assert.deepEqual(p.order(), ['r3', 'b2', 'b1', 'r1', 'r2', 'r4']);
});

test('candidates(): targets not yet checked (INIT) are tried as if UP', (t) => {
  const dir = tempDir(t);
  const p = makePool(t, settingsFor(dir, ['a', 'b'], ['z'], { balance: 'first' }), false);
  assert.deepEqual(p.pool.current.map((x) => x.state), ['INIT', 'INIT', 'INIT']);
  assert.deepEqual(p.order(), ['a', 'b', 'z']);
  markDown(p.at('a'));
  assert.deepEqual(p.order(), ['b', 'z', 'a']);
});

test('roundrobin: the turn advances once per round only while two or more regular targets are usable and not DOWN', (t) => {
  const dir = tempDir(t);
  const settings = settingsFor(dir, ['a', 'b', 'c'], ['z'], { balance: 'roundrobin' });
  const p = makePool(t, settings);
  let turn = 0;
  const round = (expected: string[], advances: boolean): void => {
    const got = p.order();
    assert.deepEqual(got, expected, `round with turn ${turn}`);
    assert.deepEqual(nativeOrder(p, 'roundrobin', advances ? turn : 0), got, 'the data plane orders the same');
    if (advances) turn++;
  };
  round(['a', 'b', 'c', 'z'], true);
  round(['b', 'c', 'a', 'z'], true);
  round(['c', 'a', 'b', 'z'], true);
  round(['a', 'b', 'c', 'z'], true);
  // b and c DOWN: one usable regular target, the turn stands still (at 4).
  markDown(p.at('b'));
  markDown(p.at('c'));
  round(['a', 'z', 'b', 'c'], false);
  round(['a', 'z', 'b', 'c'], false);
  // All UP again (a reload re-applies "health checks off"): the turn goes on from 4, i.e. at b.
  p.pool.configure(settings);
  assert.deepEqual(p.pool.current.map((x) => x.state), ['UP', 'UP', 'UP', 'UP']);
  round(['b', 'c', 'a', 'z'], true);
  // c drained: a and b still alternate.
  p.pool.setDrained(p.at('c').path, true);
  round(['b', 'a', 'z'], true); // turn 5: 5 % 2 = 1
  round(['a', 'b', 'z'], true);
  // b drained too: one usable regular target, the turn stands still (at 7).
  p.pool.setDrained(p.at('b').path, true);
  round(['a', 'z'], false);
  round(['a', 'z'], false);
  p.pool.setDrained(p.at('b').path, false);
  p.pool.setDrained(p.at('c').path, false);
  round(['b', 'c', 'a', 'z'], true); // turn 7: 7 % 3 = 1
});

test('roundrobin with only the backups UP does not advance the turn; the backups keep their configured order', (t) => {
  const dir = tempDir(t);
  const p = makePool(t, settingsFor(dir, ['a', 'b'], ['y', 'z'], { balance: 'roundrobin' }));
  markDown(p.at('a'));
  markDown(p.at('b'));
  for (let i = 0; i < 3; i++) assert.deepEqual(p.order(), ['y', 'z', 'a', 'b']);
  p.pool.configure(settingsFor(dir, ['a', 'b'], ['y', 'z'], { balance: 'roundrobin' }));
  assert.deepEqual(p.order(), ['a', 'b', 'y', 'z'], 'the turn is still at 0');
  assert.deepEqual(p.order(), ['b', 'a', 'y', 'z']);
});

test('leastconn: fewest open sessions first, ties in roundrobin turn order; the turn advances as roundrobin\'s', (t) => {
  const dir = tempDir(t);
  const p = makePool(t, settingsFor(dir, ['a', 'b', 'c'], [], { balance: 'leastconn' }));
  const a = p.at('a');
  const b = p.at('b');
  a.opened();
  a.opened();
  b.opened();
  assert.deepEqual(p.order(), ['c', 'b', 'a']); // turn 0
  assert.deepEqual(nativeOrder(p, 'leastconn', 0), ['c', 'b', 'a']);
  b.released();
  // b and c tie at 0: turn 1 starts at b.
  assert.deepEqual(p.order(), ['b', 'c', 'a']);
  assert.deepEqual(nativeOrder(p, 'leastconn', 1), ['b', 'c', 'a']);
  // turn 2 starts at c.
  assert.deepEqual(p.order(), ['c', 'b', 'a']);
  a.released();
  a.released();
  assert.deepEqual(p.order(), ['a', 'b', 'c']); // turn 3: all tie
});

test('a pool of one target gives the same one-element round each time, also when that target is DOWN; drained, none', (t) => {
  const dir = tempDir(t);
  const p = makePool(t, settingsFor(dir, ['only'], [], { balance: 'roundrobin' }));
  const first = p.pool.candidates();
  assert.deepEqual(first.map((x) => x.path), [join(dir, 'only.sock')]);
  assert.equal(p.pool.candidates(), first, 'built once');
  markDown(p.at('only'));
  assert.deepEqual(p.order(), ['only']);
  p.pool.setDrained(p.at('only').path, true);
  assert.deepEqual(p.order(), []);
  assert.ok(p.changes() >= 1, 'draining is a change the backend hears about');
});
