// Restarts without a gap: on a restart (systemd sends RestartKillSignal=,
// SIGUSR2), the sessions' fds go into systemd's file descriptor store and the
// next process (the same version or a newer one) takes them back from
// LISTEN_FDS and relays on. This file is the store's side of it: what is
// carried, the versioned state that travels beside the fds, sending them
// (sd_pid_notify_with_fds) and taking them back. Deciding what to carry is
// bridge.ts's; stopping and restarting the byte moving, native-relay.ts's.
//
// Every carried fd has the same short name (FD_NAME): LISTEN_FDNAMES is one
// environment string, and execve(2) refuses one longer than 128 KiB (max-conn
// 4096 carries ~8,200 fds). The state names each fd by its inode number
// instead, which fstat(2) gives in both processes: systemd passes the fds
// back in an order of its own.

import { closeSync, fstatSync, readSync } from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { HandoverError } from './errors';
import type { PassedSocket } from './listeners';

/** The name of every carried connection in the store, and of the state. */
export const FD_NAME = 'sb';
export const STATE_NAME = 'sb-state';
const FORMAT = 'sockbridge-handover';
/** Bump when a field changes meaning; a process refuses a version it does not know. */
export const STATE_VERSION = 1;
/** FileDescriptorStoreMax= in the shipped units; systemd ≥ 254 passes the real one as $FDSTORE. */
export const SHIPPED_STORE_MAX = 16384;
/** SCM_MAX_FD: the most fds one message may carry. */
const FDS_PER_MESSAGE = 253;
const BARRIER_TIMEOUT_MS = 5000;

/** A client carried across a restart that was still waiting (held for the target, or queued over max-conn). */
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
}

/** A session carried across a restart: both fds, and where its two directions are. */
export interface CarriedSession extends CarriedClient {
  /** Here: the client's bytes already sent, kept for a retry while the target has not answered. */
  replay: Buffer | undefined;
  serverFd: number;
  bytesOut: number;
  /** 1: client → target done, 2: target → client done. */
  directionsDone: number;
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

/** How many fds the store holds: $FDSTORE where systemd says it (≥ 254), else what the shipped unit sets. */
export function storeCapacity(env: NodeJS.ProcessEnv): number {
  const n = Number(env['FDSTORE']);
  return Number.isInteger(n) && n > 0 ? n : SHIPPED_STORE_MAX;
}

/** The fds a full service would store: two per session, one per queued client, the state. */
export function storeNeeded(maxConn: number, backlog: number): number {
  return 2 * maxConn + backlog + 1;
}

// ---- the state, as it travels --------------------------------------------------

type Inode = number;
interface ClientRecord { c: Inode; a: string; p: number; t: number; i: number; r?: string; e: boolean; n: number }
interface SessionRecord extends ClientRecord { s: Inode; o: number; d: number }
interface StateFile { format: string; version: number; sessions: SessionRecord[]; waiting: ClientRecord[]; totals: CarriedTotals }

function inode(fd: number): Inode {
  return fstatSync(fd).ino;
}

function clientRecord(c: CarriedClient): ClientRecord {
  const r: ClientRecord = { c: inode(c.clientFd), a: c.addr, p: c.port, t: c.startedAt, i: c.bytesIn, e: c.clientEnded, n: c.retriesLeft };
  if (c.replay) r.r = c.replay.toString('base64');
  return r;
}

export function encodeState(h: Handover): Buffer {
  const file: StateFile = {
    format: FORMAT, version: STATE_VERSION, totals: h.totals, waiting: h.waiting.map(clientRecord),
    sessions: h.sessions.map((s) => ({ ...clientRecord(s), s: inode(s.serverFd), o: s.bytesOut, d: s.directionsDone })),
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
  if (file.format !== FORMAT || file.version !== STATE_VERSION) {
    throw new HandoverError('EHANDOVER_VERSION',
      `the handover state has format ${String(file.format)} version ${String(file.version)}, this version reads ${FORMAT} ${STATE_VERSION} only ` +
      '(a downgrade must be a stop, then a start)');
  }
  const byInode = new Map<Inode, number>();
  for (const fd of fds) byInode.set(inode(fd), fd);
  const take = (ino: Inode): number | undefined => {
    const fd = byInode.get(ino);
    byInode.delete(ino);
    return fd;
  };
  let lost = 0;
  const client = (r: ClientRecord, clientFd: number): CarriedClient => ({
    clientFd, addr: r.a, port: r.p, startedAt: r.t, bytesIn: r.i, replay: r.r === undefined ? undefined : Buffer.from(r.r, 'base64'),
    clientEnded: r.e, retriesLeft: r.n,
  });
  const sessions: CarriedSession[] = [];
  for (const r of file.sessions) {
    const c = take(r.c);
    const s = take(r.s);
    if (c === undefined || s === undefined) {
      lost++;
      if (c !== undefined) closeQuietly(c);
      if (s !== undefined) closeQuietly(s);
      continue;
    }
    sessions.push({ ...client(r, c), serverFd: s, bytesOut: r.o, directionsDone: r.d });
  }
  const waiting: CarriedClient[] = [];
  for (const r of file.waiting) {
    const c = take(r.c);
    if (c === undefined) lost++;
    else waiting.push(client(r, c));
  }
  // Stored, but in no record (a store message after the state): nobody's.
  for (const fd of byInode.values()) closeQuietly(fd);
  return { handover: { sessions, waiting, totals: file.totals }, lost };
}

/** The fd store's functions of the native relay addon (native/relay.c). */
export interface FdStoreCalls {
  notifyWithFds(socket: string, text: string, fds: number[]): number;
  barrier(socket: string, timeoutMs: number): number;
  memfd(name: string, bytes: Buffer): number;
  closeFd(fd: number): void;
}

/**
 * Put every carried fd and the state into systemd's store, then wait for the
 * barrier: once it returns, systemd holds them all, and this process may exit.
 * Returns the errno name of what failed, or undefined.
 */
export function store(calls: FdStoreCalls, notifySocket: string, h: Handover): string | undefined {
  const fds = [...h.sessions.flatMap((s) => [s.clientFd, s.serverFd]), ...h.waiting.map((c) => c.clientFd)];
  const state = calls.memfd(STATE_NAME, encodeState(h));
  if (state < 0) return errnoName(state);
  try {
    for (let i = 0; i < fds.length; i += FDS_PER_MESSAGE) {
      const rc = calls.notifyWithFds(notifySocket, `FDSTORE=1\nFDNAME=${FD_NAME}`, fds.slice(i, i + FDS_PER_MESSAGE));
      if (rc < 0) return errnoName(rc);
    }
    // A memfd cannot be polled: FDPOLL=0 (systemd ≥ 246), or systemd would refuse it.
    const rc = calls.notifyWithFds(notifySocket, `FDSTORE=1\nFDNAME=${STATE_NAME}\nFDPOLL=0`, [state]);
    if (rc < 0) return errnoName(rc);
    const barrier = calls.barrier(notifySocket, BARRIER_TIMEOUT_MS);
    return barrier < 0 ? errnoName(barrier) : undefined;
  } finally {
    calls.closeFd(state);
  }
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

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed: nothing to release
  }
}

function errnoName(negativeErrno: number): string {
  return getSystemErrorName(negativeErrno);
}
