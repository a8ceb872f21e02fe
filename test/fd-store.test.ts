// The handover state (src/systemd/fd-store.ts): decodeState reads what a
// previous process put beside its connections in systemd's fd store, and
// matches each record to a passed fd by inode. A damaged or unknown state is
// refused with a stable code and leaves the fds to the caller; version 1 (as
// sockbridge 0.2.0 wrote it, one letter per field) reads into the same values
// as version 2; version 2 round-trips, whatever order the fds come back in;
// and a record without its fd is counted lost, its partner closed. The fds
// are real connections that travel through SCM_RIGHTS as the store's do.

import assert from 'node:assert/strict';
import { closeSync, fstatSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { DataPlaneAddon, loadDataPlane } from '../src/dataplane/addon';
import { HandoverError } from '../src/errors';
import { CarriedClient, CarriedSession, CarriedTotals, decodeState, encodeState, Handover } from '../src/systemd/fd-store';
import { tempDir, waitFor } from './helpers';

function addon(): DataPlaneAddon {
  const dp = loadDataPlane();
  if (typeof dp === 'string') throw new Error(`the data plane's addon does not load (make build): ${dp}`);
  return dp;
}

// ---- connections as bare fds --------------------------------------------------------

function connectPath(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path });
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

let pairsMade = 0;

/**
 * `n` connected pairs of UNIX stream socket fds that belong to the test
 * alone, as a restart's carried connections do: each pair is a real
 * connection to a listener in `dir`, whose two fds travel once through
 * SCM_RIGHTS (the addon's bundle/unbundle, as in the fd store) so that Node's
 * own handles on them can be closed. Closing one fd of a pair shows on the
 * other (peerGone). Closed when the test ends.
 */
async function socketPairs(t: { after(fn: () => void): void }, dir: string, n: number): Promise<[number, number][]> {
  const dp = addon();
  const accepted: net.Socket[] = [];
  const server = net.createServer((s) => { accepted.push(s); });
  const path = join(dir, `pairs-${pairsMade++}.sock`);
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path, resolve); });
  const clients: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    clients.push(await connectPath(path));
    await waitFor(() => accepted.length === i + 1, 5000, `connection ${i + 1} accepted`);
  }
  const fdOf = (s: net.Socket): number => {
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    assert.ok(typeof fd === 'number' && fd >= 0, 'a connected socket without an fd');
    return fd;
  };
  const bundle = dp.bundle(clients.flatMap((c, i) => [fdOf(c), fdOf(accepted[i]!)]));
  assert.ok(bundle >= 0, `bundle: ${bundle}`);
  // Node's handles closed for good (their fd numbers free) before the copies get numbers.
  await Promise.all([...clients, ...accepted].map((s) => new Promise<void>((resolve) => { s.once('close', () => resolve()); s.destroy(); })));
  await new Promise<void>((resolve) => server.close(() => resolve()));
  const fds = dp.unbundle(bundle);
  assert.equal(fds.length, 2 * n, `unbundle: ${JSON.stringify(fds)}`);
  assert.ok(fds.every((fd) => fd >= 0), `unbundle: ${JSON.stringify(fds)}`);
  t.after(() => {
    for (const fd of fds) {
      try { closeSync(fd); } catch { /* closed by the code under test */ }
    }
  });
  return Array.from({ length: n }, (_, i) => [fds[2 * i]!, fds[2 * i + 1]!]);
}

function inode(fd: number): number {
  return fstatSync(fd).ino;
}

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** The same connections as the store gives them back: copies (SCM_RIGHTS), in a shuffled order (seeded). */
function throughStore(fds: number[], seed: number): number[] {
  const dp = addon();
  const bundle = dp.bundle(fds);
  assert.ok(bundle >= 0);
  const copies = dp.unbundle(bundle);
  assert.equal(copies.length, fds.length);
  let s = seed >>> 0;
  const rand = (n: number): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
  for (let i = copies.length - 1; i > 0; i--) {
    const j = rand(i + 1);
    [copies[i], copies[j]] = [copies[j]!, copies[i]!];
  }
  return copies;
}

const TOTALS: CarriedTotals = { total: 1234, failed: 5, denied: 2, bytesIn: 9_876_543, bytesOut: 12_345_678 };

/** A handover of `sessions` sessions and `waiting` waiting clients over the given pairs (the test keeps each pair's other end). */
function handoverOver(sessionPairs: [number, number][][], waitingPairs: [number, number][]): Handover {
  const sessions: CarriedSession[] = sessionPairs.map(([client, server], i) => ({
    clientFd: client![0], serverFd: server![0], addr: i % 2 ? '2001:db8::7' : '192.0.2.7', port: 40_000 + i, startedAt: 1_760_000_000_000 + i,
    bytesIn: 100 * i, bytesOut: 7 * i, replay: i % 3 === 0 ? Buffer.from(`GET /${i} HTTP/1.1\r\n\r\n`) : undefined, clientEnded: i % 2 === 1,
    retriesLeft: i % 4, beforeTls: false, queued: false, directionsDone: i % 4, target: i % 3 === 2 ? undefined : `/run/app/${i}.sock`,
  }));
  const waiting: CarriedClient[] = waitingPairs.map(([client], i) => ({
    clientFd: client, addr: '198.51.100.9', port: 50_000 + i, startedAt: 1_760_000_100_000 + i, bytesIn: i, clientEnded: false,
    replay: i === 0 ? Buffer.from('hello') : undefined, retriesLeft: 3, beforeTls: false, queued: i % 2 === 1,
  }));
  return { sessions, waiting, totals: TOTALS };
}

/** A record without its fds, to compare what was carried with what came back. */
function withoutFds(r: CarriedClient): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...r };
  delete copy['clientFd'];
  delete copy['serverFd'];
  return copy;
}

// ---- (a) damaged states ----------------------------------------------------------------

const FORMAT = 'sockbridge-handover';

function stateText(fields: Record<string, unknown>): Buffer {
  return Buffer.from(JSON.stringify(fields));
}

const DAMAGED: [string, Buffer, string][] = [
  ['empty', Buffer.alloc(0), 'EHANDOVER_STATE'],
  ['cut short', Buffer.from(`{"format":"${FORMAT}","version":2,"sessions":[`), 'EHANDOVER_STATE'],
  ['not JSON at all', Buffer.from([0xff, 0xfe, 0x00, 0x01]), 'EHANDOVER_STATE'],
  ['JSON null', Buffer.from('null'), 'EHANDOVER_VERSION'],
  ['a JSON number', Buffer.from('42'), 'EHANDOVER_VERSION'],
  ['a JSON array', Buffer.from('[]'), 'EHANDOVER_VERSION'],
  ['another format', stateText({ format: 'other-handover', version: 2, sessions: [], waiting: [], totals: TOTALS }), 'EHANDOVER_VERSION'],
  ['no format', stateText({ version: 2, sessions: [], waiting: [], totals: TOTALS }), 'EHANDOVER_VERSION'],
  ['version 99', stateText({ format: FORMAT, version: 99, sessions: [], waiting: [], totals: TOTALS }), 'EHANDOVER_VERSION'],
  ['version 0', stateText({ format: FORMAT, version: 0, sessions: [], waiting: [], totals: TOTALS }), 'EHANDOVER_VERSION'],
  ['version "2" (a string)', stateText({ format: FORMAT, version: '2', sessions: [], waiting: [], totals: TOTALS }), 'EHANDOVER_VERSION'],
  ['version 2 without sessions', stateText({ format: FORMAT, version: 2, waiting: [], totals: TOTALS }), 'EHANDOVER_STATE'],
  ['version 2 without waiting', stateText({ format: FORMAT, version: 2, sessions: [], totals: TOTALS }), 'EHANDOVER_STATE'],
  ['version 2 without totals', stateText({ format: FORMAT, version: 2, sessions: [], waiting: [] }), 'EHANDOVER_STATE'],
  ['version 2, totals null', stateText({ format: FORMAT, version: 2, sessions: [], waiting: [], totals: null }), 'EHANDOVER_STATE'],
  ['version 2, sessions an object', stateText({ format: FORMAT, version: 2, sessions: {}, waiting: [], totals: TOTALS }), 'EHANDOVER_STATE'],
  ['version 1 without sessions', stateText({ format: FORMAT, version: 1, waiting: [], totals: TOTALS }), 'EHANDOVER_STATE'],
  ['version 1 without waiting', stateText({ format: FORMAT, version: 1, sessions: [], totals: TOTALS }), 'EHANDOVER_STATE'],
  ['version 1 without totals', stateText({ format: FORMAT, version: 1, sessions: [], waiting: [] }), 'EHANDOVER_STATE'],
];

test('a damaged or unknown handover state is refused with a HandoverError of a stable code, and the caller\'s fds stay open', async (t) => {
  const dir = tempDir(t);
  const pairs = await socketPairs(t, dir, 2);
  const passed = pairs.map(([mine]) => mine);
  const peers = pairs.map(([, peer]) => peer);
  const dp = addon();
  for (const [what, bytes, code] of DAMAGED) {
    assert.throws(() => decodeState(bytes, passed), (err: unknown) => {
      assert.ok(err instanceof HandoverError, `${what}: threw ${String(err)}, not a HandoverError`);
      assert.equal(err.code, code, `${what}: ${err.message}`);
      return true;
    }, what);
    assert.ok(passed.every(isOpen), `${what}: a passed fd was closed`);
    assert.ok(peers.every((fd) => !dp.peerGone(fd)), `${what}: a connection was closed`);
  }
});

// decodeState once checked that sessions and waiting were arrays but not what
// was in them: a null record (a damaged store) threw a TypeError, which
// takeOver() (src/systemd/restart.ts) rethrows, so the new process died at
// startup instead of closing the handed-over connections and going on.
test('a state whose session or waiting record is not an object is refused with EHANDOVER_STATE, not a TypeError', async (t) => {
  const dir = tempDir(t);
  const pairs = await socketPairs(t, dir, 1);
  const passed = pairs.map(([mine]) => mine);
  const cases: [string, Buffer][] = [
    ['version 2, a null session', stateText({ format: FORMAT, version: 2, sessions: [null], waiting: [], totals: TOTALS })],
    ['version 2, a null waiting client', stateText({ format: FORMAT, version: 2, sessions: [], waiting: [null], totals: TOTALS })],
    ['version 1, a null session', stateText({ format: FORMAT, version: 1, sessions: [null], waiting: [], totals: TOTALS })],
  ];
  for (const [what, bytes] of cases) {
    let thrown: unknown;
    try {
      decodeState(bytes, passed);
    } catch (err) {
      thrown = err;
    }
    assert.ok(thrown instanceof HandoverError, `${what}: threw ${String(thrown)}`);
    assert.equal(thrown.code, 'EHANDOVER_STATE', what);
    assert.ok(passed.every(isOpen), `${what}: a passed fd was closed`);
  }
});

// ---- (b) version 1, as sockbridge 0.2.0 wrote it ---------------------------------------

/**
 * Version 1 exactly as sockbridge 0.2.0 wrote it (its encodeState: the keys in
 * this order, one letter each; r only with a replay, g only with a target),
 * inodes from fstat of the same fds.
 */
function encodeV1(h: Handover): Buffer {
  const client = (c: CarriedClient): Record<string, unknown> => {
    const r: Record<string, unknown> = { c: inode(c.clientFd), a: c.addr, p: c.port, t: c.startedAt, i: c.bytesIn, e: c.clientEnded, n: c.retriesLeft };
    if (c.replay) r['r'] = c.replay.toString('base64');
    return r;
  };
  return Buffer.from(JSON.stringify({
    format: FORMAT, version: 1, totals: h.totals, waiting: h.waiting.map(client),
    sessions: h.sessions.map((s) => ({ ...client(s), s: inode(s.serverFd), o: s.bytesOut, d: s.directionsDone, ...(s.target === undefined ? {} : { g: s.target }) })),
  }));
}

test('a version-1 state (sockbridge 0.2.0, one-letter keys) reads into the same sessions and waiting clients as version 2', async (t) => {
  const dir = tempDir(t);
  const pairs = await socketPairs(t, dir, 11);
  // 4 sessions (two pairs each: client side, target side), 3 waiting clients. Version 1 knows no beforeTls/queued: false.
  const h = handoverOver([[pairs[0]!, pairs[1]!], [pairs[2]!, pairs[3]!], [pairs[4]!, pairs[5]!], [pairs[6]!, pairs[7]!]], [pairs[8]!, pairs[9]!, pairs[10]!]);
  for (const w of h.waiting) w.queued = false;
  const carried = [...h.sessions.flatMap((s) => [s.clientFd, s.serverFd]), ...h.waiting.map((w) => w.clientFd)];
  const v1Bytes = encodeV1(h);
  assert.match(v1Bytes.toString(), /^\{"format":"sockbridge-handover","version":1,"totals":\{/);
  assert.match(v1Bytes.toString(), /"g":"\/run\/app\/0\.sock"/);
  const fromV1 = decodeState(v1Bytes, carried);
  const fromV2 = decodeState(encodeState(h), carried);
  assert.deepEqual(fromV1, fromV2);
  assert.equal(fromV1.lost, 0);
  assert.deepEqual(fromV1.handover.sessions, h.sessions);
  assert.deepEqual(fromV1.handover.waiting, h.waiting);
  assert.deepEqual(fromV1.handover.totals, TOTALS);
  assert.ok(carried.every(isOpen), 'every fd matched: none closed');
});

// ---- (c) version 2 round trip --------------------------------------------------------

test('version 2 round trip: encodeState then decodeState gives back every record, matched by inode with the fds shuffled', async (t) => {
  const dir = tempDir(t);
  const pairs = await socketPairs(t, dir, 10);
  const h = handoverOver([[pairs[0]!, pairs[1]!], [pairs[2]!, pairs[3]!], [pairs[4]!, pairs[5]!]], [pairs[6]!, pairs[7]!, pairs[8]!, pairs[9]!]);
  h.waiting[2]!.beforeTls = true;
  h.sessions[1]!.directionsDone = 3;
  const carried = [...h.sessions.flatMap((s) => [s.clientFd, s.serverFd]), ...h.waiting.map((w) => w.clientFd)];
  const bytes = encodeState(h);
  assert.match(bytes.toString(), /^\{"format":"sockbridge-handover","version":2,/);
  const back = throughStore(carried, 0xfd5707e);
  assert.notDeepEqual(back.map(inode), carried.map(inode), 'the fds come back in another order');
  const { handover, lost } = decodeState(bytes, back);
  assert.equal(lost, 0);
  assert.deepEqual(handover.totals, TOTALS);
  assert.deepEqual(handover.sessions.map(withoutFds), h.sessions.map(withoutFds));
  assert.deepEqual(handover.waiting.map(withoutFds), h.waiting.map(withoutFds));
  for (const [i, s] of handover.sessions.entries()) {
    assert.equal(inode(s.clientFd), inode(h.sessions[i]!.clientFd), `session ${i}: its client's connection`);
    assert.equal(inode(s.serverFd), inode(h.sessions[i]!.serverFd), `session ${i}: its target's connection`);
  }
  for (const [i, w] of handover.waiting.entries()) assert.equal(inode(w.clientFd), inode(h.waiting[i]!.clientFd), `waiting client ${i}`);
});

test('a record whose fd did not come back counts as lost and its partner fd is closed; an fd in no record is closed too', async (t) => {
  const dir = tempDir(t);
  const dp = addon();
  // Each pair: [0] carried, [1] the far end the test keeps (peerGone on it says whether [0] is closed everywhere).
  const [p0, p1, p2, p3, p4, p5, p6, p7, stray] = (await socketPairs(t, dir, 9)) as [number, number][];
  // Sessions p0+p1 (whole), p2+p3 (its client fd lost), p4+p5 (its target fd lost); waiting p6 (whole), p7 (lost).
  const h = handoverOver([[p0!, p1!], [p2!, p3!], [p4!, p5!]], [p6!, p7!]);
  const bytes = encodeState(h);
  // The store gives back copies of all but p2, p5 and p7, and one (stray) that no record names.
  const originals = [p0![0], p1![0], p3![0], p4![0], p6![0], stray![0]];
  const { handover, lost } = decodeState(bytes, throughStore(originals, 7));
  assert.equal(lost, 3, 'two sessions and one waiting client lost');
  assert.equal(handover.sessions.length, 1);
  assert.equal(inode(handover.sessions[0]!.clientFd), inode(p0![0]));
  assert.equal(inode(handover.sessions[0]!.serverFd), inode(p1![0]));
  assert.equal(handover.waiting.length, 1);
  assert.equal(inode(handover.waiting[0]!.clientFd), inode(p6![0]));
  // With the test's originals closed, a connection is gone only if decodeState closed its copy too.
  for (const fd of originals) closeSync(fd);
  assert.ok(dp.peerGone(p3![1]), 'the partner of a lost client fd (its target side) is still open');
  assert.ok(dp.peerGone(p4![1]), 'the partner of a lost target fd (its client side) is still open');
  assert.ok(dp.peerGone(stray![1]), 'the fd in no record is still open');
  assert.ok(!dp.peerGone(p0![1]) && !dp.peerGone(p1![1]) && !dp.peerGone(p6![1]), 'an adopted connection was closed');
});
