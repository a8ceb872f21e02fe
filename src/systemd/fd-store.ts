// Restarts without a gap: on a restart (systemd sends RestartKillSignal=,
// SIGUSR2), the sessions' fds go into systemd's file descriptor store and the
// next process (the same version or a newer one) takes them back from
// LISTEN_FDS and relays on. This file is the store's side of it: what is
// carried, the versioned state that travels beside the fds, sending them
// (sd_pid_notify_with_fds) and taking them back. Deciding what to carry is
// bridge.ts's; stopping and restarting the byte moving, native-relay.ts's.
//
// The connections do not go into the store one by one: systemd compares
// every fd it is given with every fd it holds, and 4,001 of them kept PID 1
// busy for 5 to 9 s (and the next process waiting). They travel in bundles
// instead (native/fdstore.c's bundle(): up to 8,096 fds in flight inside a
// socket pair), and the store holds a few bundles and the state. The state
// names each connection by its inode number, which fstat(2) gives in both
// processes, so nothing depends on the order fds come back in.

import { closeSync, fstatSync, readSync } from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { HandoverError } from '../errors';
import { connectionFds } from '../listen/listeners';
import type { PassedSocket } from './passed-sockets';

/** The name of every bundle in the store, and of the state (LISTEN_FDNAMES is one string: short names). */
export const FD_NAME = 'sb';
export const STATE_NAME = 'sb-state';
const FORMAT = 'sockbridge-handover';
/** Bump when a field changes meaning; a process refuses a version it does not know (and reads the one before). */
const STATE_VERSION = 2;
/** FileDescriptorStoreMax= in the shipped units; systemd ≥ 254 passes the real one as $FDSTORE. */
const SHIPPED_STORE_MAX = 16;
/** The most fds in one bundle (native/fdstore.c: FDS_PER_MESSAGE × BUNDLE_MESSAGES). */
const BUNDLE_FDS = 253 * 32;
const BARRIER_TIMEOUT_MS = 5000;

/** A client carried across a restart that was still waiting (held for a target, or queued over max-conn). */
export interface CarriedClient {
  clientFd: number;
  addr: string;
  port: number;
  startedAt: number;
  bytesIn: number;
  /** The client's bytes already read (a session between retries), sent to the target first. */
  replay: Buffer | undefined;
  clientEnded: boolean;
  retriesLeft: number;
  /** A TLS listener's client whose handshake has not started: the next process runs it. */
  beforeTls: boolean;
  /** It waited for a place under max-conn (else for a target). */
  queued: boolean;
}

/** A session carried across a restart: both fds, and where its two directions are. */
export interface CarriedSession extends CarriedClient {
  /** Here: the client's bytes already sent, kept for a retry while the target has not answered. */
  replay: Buffer | undefined;
  serverFd: number;
  bytesOut: number;
  /** 1: client → target done, 2: target → client done. */
  directionsDone: number;
  /** The target's path (a reader that predates it finds no such field, and counts the session on no target). */
  target: string | undefined;
}

/** The counters that go on from where they were. */
export interface CarriedTotals {
  total: number;
  failed: number;
  denied: number;
  bytesIn: number;
  bytesOut: number;
}

export interface Handover {
  sessions: CarriedSession[];
  waiting: CarriedClient[];
  totals: CarriedTotals;
}

/**
 * How many connections' fds the store can carry: one entry is the state, each
 * other one a bundle. The store's size is $FDSTORE where systemd says it
 * (≥ 254), else what the shipped unit sets.
 */
export function storeCapacity(env: NodeJS.ProcessEnv): number {
  const n = Number(env['FDSTORE']);
  const entries = Number.isInteger(n) && n >= 0 && env['FDSTORE'] !== '' ? n : SHIPPED_STORE_MAX;
  return Math.max(0, entries - 1) * BUNDLE_FDS;
}

/** The fds a full service would carry: what it holds for its clients (listen/listeners.ts: connectionFds). */
export function storeNeeded(maxConn: number, backlog: number): number {
  return connectionFds(maxConn, backlog);
}

// ---- the state, as it travels --------------------------------------------------

type Inode = number;

/** Version 2's records: a word per field. */
interface ClientRecord {
  client: Inode; addr: string; port: number; startedAt: number; bytesIn: number; replay?: string; clientEnded: boolean; retriesLeft: number;
  beforeTls?: boolean; queued?: boolean;
}
interface SessionRecord extends ClientRecord { server: Inode; bytesOut: number; directionsDone: number; target?: string }
interface StateFile { format: string; version: number; sessions: SessionRecord[]; waiting: ClientRecord[]; totals: CarriedTotals }

/** Version 1's records (0.2.0), one letter per field: still read, so that an upgrade from 0.2.0 carries its sessions. */
interface ClientRecordV1 { c: Inode; a: string; p: number; t: number; i: number; r?: string; e: boolean; n: number }
interface SessionRecordV1 extends ClientRecordV1 { s: Inode; o: number; d: number; g?: string }

function fromV1(r: ClientRecordV1): ClientRecord {
  return { client: r.c, addr: r.a, port: r.p, startedAt: r.t, bytesIn: r.i, ...(r.r === undefined ? {} : { replay: r.r }), clientEnded: r.e, retriesLeft: r.n };
}

function sessionFromV1(r: SessionRecordV1): SessionRecord {
  return { ...fromV1(r), server: r.s, bytesOut: r.o, directionsDone: r.d, ...(r.g === undefined ? {} : { target: r.g }) };
}

function inode(fd: number): Inode {
  return fstatSync(fd).ino;
}

function clientRecord(c: CarriedClient): ClientRecord {
  const r: ClientRecord = {
    client: inode(c.clientFd), addr: c.addr, port: c.port, startedAt: c.startedAt, bytesIn: c.bytesIn, clientEnded: c.clientEnded,
    retriesLeft: c.retriesLeft, beforeTls: c.beforeTls, queued: c.queued,
  };
  if (c.replay) r.replay = c.replay.toString('base64');
  return r;
}

export function encodeState(h: Handover): Buffer {
  const file: StateFile = {
    format: FORMAT, version: STATE_VERSION, totals: h.totals, waiting: h.waiting.map(clientRecord),
    sessions: h.sessions.map((s) => ({
      ...clientRecord(s), server: inode(s.serverFd), bytesOut: s.bytesOut, directionsDone: s.directionsDone, ...(s.target === undefined ? {} : { target: s.target }),
    })),
  };
  return Buffer.from(JSON.stringify(file));
}

/** What a next process found in the store: the handover, and how many stored connections had no partner left. */
export interface Adopted {
  handover: Handover;
  /** Connections whose peer went away while no process ran (systemd dropped the fd): closed. */
  lost: number;
}

/**
 * Read the state and match its inodes to the passed fds. Throws HandoverError
 * for a state this version does not understand; the caller closes the fds.
 */
export function decodeState(bytes: Buffer, fds: number[]): Adopted {
  let file: StateFile;
  try {
    file = JSON.parse(bytes.toString('utf8')) as StateFile;
  } catch {
    throw new HandoverError('EHANDOVER_STATE', 'the handover state in the fd store is not readable');
  }
  if (typeof file !== 'object' || file === null || file.format !== FORMAT || (file.version !== STATE_VERSION && file.version !== 1)) {
    throw new HandoverError('EHANDOVER_VERSION',
      `the handover state has format ${String(file?.format)} version ${String(file?.version)}, this version reads ${FORMAT} 1 and ${STATE_VERSION} only ` +
      '(a downgrade must be a stop, then a start)');
  }
  if (!Array.isArray(file.sessions) || !Array.isArray(file.waiting) || typeof file.totals !== 'object' || file.totals === null) {
    throw new HandoverError('EHANDOVER_STATE', 'the handover state in the fd store is damaged (no sessions, waiting clients or totals)');
  }
  const records = [...file.sessions, ...file.waiting] as unknown[];
  if (records.some((r) => typeof r !== 'object' || r === null)) {
    throw new HandoverError('EHANDOVER_STATE', 'the handover state in the fd store is damaged (a record that is not an object)');
  }
  const v1 = file.version === 1;
  const sessionRecords = v1 ? (file.sessions as unknown as SessionRecordV1[]).map(sessionFromV1) : file.sessions;
  const waitingRecords = v1 ? (file.waiting as unknown as ClientRecordV1[]).map(fromV1) : file.waiting;
  const byInode = new Map<Inode, number>();
  for (const fd of fds) byInode.set(inode(fd), fd);
  const take = (ino: Inode): number | undefined => {
    const fd = byInode.get(ino);
    byInode.delete(ino);
    return fd;
  };
  let lost = 0;
  const client = (r: ClientRecord, clientFd: number): CarriedClient => ({
    clientFd, addr: String(r.addr), port: Number(r.port), startedAt: Number(r.startedAt), bytesIn: Number(r.bytesIn),
    replay: typeof r.replay === 'string' ? Buffer.from(r.replay, 'base64') : undefined,
    clientEnded: r.clientEnded === true, retriesLeft: Number(r.retriesLeft) || 0, beforeTls: r.beforeTls === true, queued: r.queued === true,
  });
  const sessions: CarriedSession[] = [];
  for (const r of sessionRecords) {
    const c = take(r.client);
    const s = take(r.server);
    if (c === undefined || s === undefined) {
      lost++;
      if (c !== undefined) closeQuietly(c);
      if (s !== undefined) closeQuietly(s);
      continue;
    }
    sessions.push({ ...client(r, c), serverFd: s, bytesOut: Number(r.bytesOut), directionsDone: Number(r.directionsDone) & 3, target: r.target });
  }
  const waiting: CarriedClient[] = [];
  for (const r of waitingRecords) {
    const c = take(r.client);
    if (c === undefined) lost++;
    else waiting.push(client(r, c));
  }
  // Stored, but in no record (a store message after the state): nobody's.
  for (const fd of byInode.values()) closeQuietly(fd);
  return { handover: { sessions, waiting, totals: file.totals }, lost };
}

/** The fd store's functions of the data plane's addon (native/fdstore.c). */
export interface FdStoreCalls {
  notifyWithFds(socket: string, text: string, fds: number[]): number;
  barrier(socket: string, timeoutMs: number): number;
  memfd(name: string, bytes: Buffer): number;
  bundle(fds: number[]): number;
  unbundle(fd: number): number[];
  peerGone(fd: number): boolean;
}

/** What store() did: nothing reached systemd (the connections are still only ours), or it did, confirmed or not. */
export type StoreOutcome = { stored: true; confirmed: true } | { stored: true; confirmed: false; error: string } | { stored: false; error: string };

/**
 * Put every carried fd, in bundles, and the state into systemd's store, then
 * wait for the barrier: once it returns, systemd holds them all, and this
 * process may exit.
 */
export function store(calls: FdStoreCalls, notifySocket: string, h: Handover): StoreOutcome {
  const fds = [...h.sessions.flatMap((s) => [s.clientFd, s.serverFd]), ...h.waiting.map((c) => c.clientFd)];
  const entries: number[] = [];
  try {
    for (let i = 0; i < fds.length; i += BUNDLE_FDS) {
      const bundle = calls.bundle(fds.slice(i, i + BUNDLE_FDS));
      if (bundle < 0) return { stored: false, error: getSystemErrorName(bundle) };
      entries.push(bundle);
    }
    const state = calls.memfd(STATE_NAME, encodeState(h));
    if (state < 0) return { stored: false, error: getSystemErrorName(state) };
    entries.push(state);
    // FDPOLL=0 (systemd ≥ 246): a bundle's sending end is closed, which systemd's poll would take for a hang-up.
    const bundles = entries.slice(0, -1);
    if (bundles.length > 0) {
      const rc = calls.notifyWithFds(notifySocket, `FDSTORE=1\nFDNAME=${FD_NAME}\nFDPOLL=0`, bundles);
      if (rc < 0) return { stored: false, error: getSystemErrorName(rc) };
    }
    const rc = calls.notifyWithFds(notifySocket, `FDSTORE=1\nFDNAME=${STATE_NAME}\nFDPOLL=0`, [state]);
    if (rc < 0) return { stored: true, confirmed: false, error: getSystemErrorName(rc) };
    const barrier = calls.barrier(notifySocket, BARRIER_TIMEOUT_MS);
    return barrier < 0 ? { stored: true, confirmed: false, error: getSystemErrorName(barrier) } : { stored: true, confirmed: true };
  } finally {
    for (const fd of entries) closeQuietly(fd);
  }
}

/** The connections in the bundles a previous process stored, in the order it put them in. */
export function unbundleAll(calls: Pick<FdStoreCalls, 'unbundle'>, bundles: number[]): number[] {
  return bundles.flatMap((b) => calls.unbundle(b).filter((fd) => fd >= 0));
}

/** The passed fds split: the listeners, and what a previous process stored (its connections and state). */
export function splitPassed(passed: PassedSocket[]): { listeners: PassedSocket[]; carried: number[]; state: number | undefined } {
  const listeners: PassedSocket[] = [];
  const carried: number[] = [];
  let state: number | undefined;
  for (const p of passed) {
    if (p.name === FD_NAME) carried.push(p.fd);
    else if (p.name === STATE_NAME && state === undefined) state = p.fd;
    else listeners.push(p);
  }
  return { listeners, carried, state };
}

/** The state memfd's bytes (read from offset 0: its file position is the writer's). */
export function readState(fd: number): Buffer {
  const size = fstatSync(fd).size;
  const bytes = Buffer.alloc(size);
  let off = 0;
  while (off < size) {
    const n = readSync(fd, bytes, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return bytes.subarray(0, off);
}

/** close(2), for an fd that may be closed already (a peer gone, a bundle read). */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed: nothing to release
  }
}
