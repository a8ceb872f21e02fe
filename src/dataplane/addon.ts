// The data plane's addon (native/*.c, Node-API: one build for every Node):
// its functions, loaded once, with the checks that make a broken install
// say so in one line instead of failing later. Nothing here decides
// anything: native-relay.ts drives it.

import os from 'node:os';
import { join } from 'node:path';
import { errnoError } from '../targets/connector';
import type { FdStoreCalls } from '../systemd/fd-store';
import type { DataPlaneEvent } from './events';
import type { IdentityLists, PolicyInput, PolicyTarget } from './policy';

/** What testProxyHeader's v2 TLVs hold (struct proxy_tlvs in native/dataplane.h). */
export interface TestTlvs {
  authority?: string;
  ssl?: { client: number; verify: number; version?: string; cn?: string; cipher?: string };
  cred?: { pid: number; uid: number; gid: number };
}

/** A waiting client a previous process handed over (native-relay.ts adopts it). */
export interface CarriedClientInput {
  clientFd: number;
  addr: string;
  port: number;
  startedAt: number;
  bytesIn: number;
  bytesOut: number;
  replay: Buffer | undefined;
  clientEnded: boolean;
  retriesLeft: number;
  clientTimeout: number;
  serverTimeout: number;
  slot: number;
  beforeTls: boolean;
  queued: boolean;
}

/** A session a previous process handed over. */
export interface CarriedSessionInput extends CarriedClientInput {
  serverFd: number;
  directionsDone: number;
}

/** The addon's functions (native/addon.c, js_*; the fd store's in native/fdstore.c). Negative numbers are -errno. */
export interface DataPlaneAddon extends FdStoreCalls {
  init(threads: number, onEvent: (...event: DataPlaneEvent) => void): number;
  stop(): void;
  opensslVersion(): number;
  bindTcp(host: string, port: number): number;
  /** A bound, not listening, UNIX socket at path ("\0name": abstract): its fd, or -errno. */
  bindUnix(path: string): number;
  /** connect(2) to an abstract socket and close: 0 or -errno (Node's sockets cannot name one). */
  probeAbstract(name: string): number;
  listen(fd: number, backlog: number, passed: boolean): number;
  unlisten(index: number): void;
  localAddress(fd: number): string;
  /** "" when published, else why the snapshot was refused (the previous one stays). */
  setPolicy(policy: PolicyInput): string;
  rotateTicketKeys(): boolean;
  reclaim(): void;
  candidates(avoidSlot: number): number[];
  dial(id: number, slot: number): boolean;
  proceed(id: number): boolean;
  admit(id: number): boolean;
  close(id: number, reason: number, errno: number): boolean;
  adopt(client: CarriedClientInput): number;
  resume(session: CarriedSessionInput): number;
  closeAll(reason: number, slots: number[] | undefined): number;
  handover(graceMs: number, sessions: number): number;
  flushEvents(): void;
  /** [bytes from clients, bytes to clients, relaying sessions, admitted under max-conn, queued]. */
  counters(): [number, number, number, number, number];
  /** Per thread: [relaying sessions, clients accepted, TLS handshakes completed]. */
  threadCounters(): [number, number, number][];
  /** [open sessions, connects that succeeded] of one target. */
  slotCounts(slot: number): [number, number];
  alive(): boolean;
  testAccess(allow: string[], deny: string[], addresses: string[]): boolean[];
  testOrder(targets: PolicyTarget[], balance: number, avoid: number, turn: number, actives: number[]): number[];
  /** The per-source table: [entries with sessions open, idle entries, the idle budget]. */
  sourceTable(): [number, number, number];
  testProxyHeader(version: number, srcAddr: string, srcPort: number, dstAddr: string, dstPort: number, tlvs?: TestTlvs): Buffer;
  /** proxy_parse: [length (0: more needed, -1: bad), local, [src, port] or [], [dst, port] or [], why]. */
  testParseProxy(bytes: Buffer, accept: number): [number, boolean, [string, number] | [], [string, number] | [], string];
  testIdentity(rules: IdentityLists, identities: IdentityLists[]): boolean[];
  /** A fresh per-source table run through admits (verdict 0 ok, 1 concurrent, 2 rate) and ends; the last element: [live, idle] entries. */
  testSources(limits: PolicyInput['sourceLimits'], steps: ['admit' | 'end', string, number][]): (number | [number, number])[];
  /** A test build (failure injection: SOCKBRIDGE_FAILPOINTS). */
  readonly testHooks: boolean;
}

/**
 * The built addon. SOCKBRIDGE_RELAY_ADDON is for developers only (the
 * sanitizer build in `make test-asan`), not a setting: options live in
 * options.ts.
 */
const ADDON = process.env['SOCKBRIDGE_RELAY_ADDON'] ?? join(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'relay.node');
const MAX_THREADS = 64;

/** Why the data plane is not used, when the addon cannot load (the rest of the sentence says why). */
export const LOAD_FAILED = 'the native data plane cannot be loaded';

export { errnoError };

/** A connect error from the data plane as Node reports errors, its message the reason where errno alone does not say (TLS). */
export function connectError(errno: number, target: string, reason: string): NodeJS.ErrnoException {
  const err = errnoError(-errno, 'connect', target);
  if (reason) err.message = reason;
  return err;
}

/** "3.0.19" from OpenSSL_version_num()'s 0xMNN00PP0L. */
export function opensslVersionText(num: number): string {
  return `${Math.floor(num / 0x10000000)}.${Math.floor(num / 0x100000) % 0x100}.${Math.floor(num / 0x10) % 0x100}`;
}

/**
 * The addon, or why it cannot be used (one line). It is compiled against
 * OpenSSL's headers and not linked with libssl: its symbols bind to the
 * OpenSSL already in the process, Node's (the link uses -z now, so a
 * missing one fails here). The versions must then be one and the same.
 */
export function loadDataPlane(path = ADDON, nodeOpenssl = process.versions.openssl): DataPlaneAddon | string {
  let addon: Partial<DataPlaneAddon>;
  try {
    addon = require(path) as Partial<DataPlaneAddon>;
  } catch (err) {
    return ((err as Error).message.split('\n')[0] ?? '').trim();
  }
  if (typeof addon.init !== 'function' || typeof addon.setPolicy !== 'function' || typeof addon.opensslVersion !== 'function') {
    return `${path} is not sockbridge's data plane`;
  }
  const bound = opensslVersionText(addon.opensslVersion());
  const node = (/^\d+\.\d+\.\d+/.exec(nodeOpenssl ?? '') ?? [''])[0];
  if (bound !== node) return `it runs with OpenSSL ${bound} but Node.js with OpenSSL ${nodeOpenssl ?? 'none'}: two copies of OpenSSL in one process`;
  return addon as DataPlaneAddon;
}

export function defaultThreads(): number {
  // os.availableParallelism() arrived in Node 18.14; be kind to older ones.
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.min(MAX_THREADS, Math.max(1, cpus));
}
