// The native relay (native/relay.c) as the rest of sockbridge sees it: the
// addon loaded once, its listeners (accepted clients arrive in this thread,
// from Node's own event loop), its connect(2), and its threads' events routed
// to the sessions they belong to. Everything here only carries out decisions
// made elsewhere (bridge.ts: who is admitted; backend.ts: when to connect
// and retry; native-session.ts: what a session's end means).

import os from 'node:os';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import type { Dialer } from '../targets/backend';
import type { CarriedClient, FdStoreCalls } from '../systemd/fd-store';
import { acceptErrorLog, Listener, listenError, ListenSpec } from '../listen/listeners';
import type { Logger } from '../log';
import type { CloseReason } from '../session/contract';

/** The addon's functions (native/relay.c, js_* functions; the fd store's in handover.ts). Negative numbers are -errno. */
export interface RelayAddon extends FdStoreCalls {
  init(threads: number, onEvent: (kind: number, a: number, b: number, c: unknown, d: unknown, e: unknown) => void): number;
  bindTcp(host: string, port: number): number;
  listen(fd: number, backlog: number): number;
  localAddress(fd: number): string;
  unlisten(index: number): void;
  connectUnix(path: string): number;
  closeFd(fd: number): void;
  start(id: number, clientFd: number, serverFd: number, header: Buffer | undefined, replay: Buffer | undefined,
    clientTimeoutMs: number, serverTimeoutMs: number, mayRetry: boolean, clientEnded: boolean): number;
  resume(id: number, clientFd: number, serverFd: number, replay: Buffer | undefined, clientTimeoutMs: number, serverTimeoutMs: number,
    directionsDone: number, bytesIn: number, bytesOut: number): number;
  closeAll(reason: number, ids: number[] | undefined): number;
  counters(): [number, number, number];
  alive(): boolean;
  stop(): void;
  handover(graceMs: number, sessions: number): number;
}

/** Event kinds and close reasons, numbered as in native/relay.c. */
const EV_ACCEPT = 1;
const EV_ACCEPT_ERROR = 2;
const EV_END = 3;
const EV_RETRY = 4;
const EV_HANDED = 5;
const EV_HANDOVER_DONE = 6;
const CLOSE_REASONS: readonly CloseReason[] = ['done', 'client-timeout', 'server-timeout', 'client-error', 'server-error', 'marked-down', 'shutdown'];

/**
 * The built addon. SOCKBRIDGE_RELAY_ADDON is for developers only (the
 * sanitizer build in `make test-asan`), not a setting: options live in
 * options.ts.
 */
const ADDON = process.env['SOCKBRIDGE_RELAY_ADDON'] ?? join(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'relay.node');
const MAX_THREADS = 64;

/** A client the relay accepted: its fd and where it comes from. */
export interface AcceptedClient {
  fd: number;
  addr: string;
  port: number;
  /** A client a previous process was serving when it restarted (handover.ts). */
  carried?: CarriedClient;
}

/** What the relay tells a session. */
export interface RelaySession {
  ended(reason: CloseReason, error: string | undefined, bytesIn: number, bytesOut: number): void;
  /** The target reset before its first byte: the client's fd and bytes are ours again. */
  retry(clientFd: number, error: string, replay: Buffer, clientEnded: boolean, bytesIn: number): void;
  /** A restart took it (NativeRelay.handover): both fds are ours again, open, the buffers empty. */
  handed(handed: HandedBack): void;
}

/** A session the relay gave back for a restart: what the next process needs to relay on. */
export interface HandedBack {
  clientFd: number;
  serverFd: number;
  /** 1: client → target done (shut down), 2: target → client done. */
  directionsDone: number;
  /** The client's bytes already sent, for a retry, while the target has not answered. */
  replay: Buffer | undefined;
  bytesIn: number;
  bytesOut: number;
}

/** What resume() needs of a session a previous process handed over. */
export interface ResumedPair extends HandedBack {
  clientTimeout: number;
  serverTimeout: number;
}

/** Why the native relay is not used, when the addon cannot load (the rest of the sentence is the loader's). */
export const LOAD_FAILED = 'the native relay cannot be loaded';

/** An errno from the addon as Node reports errors: code, errno, syscall. */
export function errnoError(negativeErrno: number, syscall: string, what: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(negativeErrno);
  return Object.assign(new Error(`${syscall} ${code} ${what}`), { code, errno: negativeErrno, syscall });
}

/** The addon, or why it cannot be used (one line). */
export function loadRelayAddon(path = ADDON): RelayAddon | string {
  try {
    const addon = require(path) as Partial<RelayAddon>;
    return typeof addon.start === 'function' && typeof addon.init === 'function' ? addon as RelayAddon : `${path} is not sockbridge's relay`;
  } catch (err) {
    return ((err as Error).message.split('\n')[0] ?? '').trim();
  }
}

export function defaultThreads(): number {
  // os.availableParallelism() arrived in Node 18.14; be kind to older ones.
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.min(MAX_THREADS, Math.max(1, cpus));
}

export class NativeRelay {
  private readonly sessions = new Map<number, RelaySession>();
  /** By the addon's listener index, with each one's (rate-limited) accept-error log. */
  private listeners: { listener: Listener; acceptFailed: (err: NodeJS.ErrnoException) => void }[] = [];
  private nextId = 1;
  private running = false;
  /** A restart is taking the sessions (handover): nothing new is started from then on. */
  private handing: { threadsLeft: number; closed: number; done: (closed: number) => void } | undefined;
  private handedOver = false;

  /** Each connect(2) is one synchronous call: a UNIX connect completes or fails at once. */
  readonly dialer: Dialer<number> = {
    attempt: (path, ok, fail) => {
      const fd = this.addon.connectUnix(path);
      let cancelled = false;
      // Always asynchronous, as a Dialer promises, so callers never see a result before the call returned.
      process.nextTick(() => {
        if (cancelled) {
          if (fd >= 0) this.addon.closeFd(fd);
        } else if (fd >= 0) {
          ok(fd);
        } else {
          fail(errnoError(fd, 'connect', path));
        }
      });
      return () => {
        cancelled = true;
      };
    },
  };

  /** connect(2) to the target now: the fd, or undefined (Backend.connectNow; the retries report the error). */
  readonly connectNow = (path: string): number | undefined => {
    const fd = this.addon.connectUnix(path);
    return fd >= 0 ? fd : undefined;
  };

  constructor(
    private readonly addon: RelayAddon,
    readonly threads: number,
    private readonly logger: Logger,
    private readonly accepted: (client: AcceptedClient) => void,
  ) {}

  start(): void {
    const rc = this.addon.init(this.threads, (kind, a, b, c, d, e) => this.onEvent(kind, a, b, c, d, e));
    if (rc < 0) throw errnoError(rc, 'relay init', `(${this.threads} threads)`);
    this.running = true;
  }

  /** Bind (for --listen) or take (from systemd) each listening socket; the threads accept on all of them. */
  openListeners(specs: ListenSpec[], backlog: number): Listener[] {
    const opened: NativeRelay['listeners'] = [];
    for (const spec of specs) {
      let fd: number;
      if ('fd' in spec.target) {
        fd = spec.target.fd;
      } else {
        fd = this.addon.bindTcp(spec.target.host ?? '', spec.target.port);
        if (fd < 0) throw listenError(spec.label, getSystemErrorName(fd));
      }
      const port = this.localAddress(fd)?.port;
      const index = this.addon.listen(fd, backlog);
      if (index < 0) throw listenError(spec.label, getSystemErrorName(index));
      const label = 'fd' in spec.target ? spec.label : `${hostLabel(spec.target.host)}:${port}`;
      opened[index] = { listener: { label, accept: 'native', close: () => this.addon.unlisten(index) }, acceptFailed: acceptErrorLog(label, this.logger) };
    }
    this.listeners = opened;
    return opened.map((l) => l.listener);
  }

  /** Relay a connected pair; returns the error when the relay could not take it (the fds stay the caller's). */
  relay(session: RelaySession, clientFd: number, serverFd: number, opts: {
    header: Buffer | undefined; replay: Buffer | undefined; clientTimeout: number; serverTimeout: number; mayRetry: boolean; clientEnded: boolean;
  }): NodeJS.ErrnoException | undefined {
    const id = this.takeId();
    const rc = this.addon.start(id, clientFd, serverFd, opts.header, opts.replay, opts.clientTimeout, opts.serverTimeout, opts.mayRetry, opts.clientEnded);
    if (rc < 0) return errnoError(rc, 'relay', '');
    this.sessions.set(id, session);
    return undefined;
  }

  /** Relay on a session a previous process handed over (handover.ts); returns the error as relay() does. */
  resume(session: RelaySession, pair: ResumedPair): NodeJS.ErrnoException | undefined {
    const id = this.takeId();
    const rc = this.addon.resume(id, pair.clientFd, pair.serverFd, pair.replay, pair.clientTimeout, pair.serverTimeout,
      pair.directionsDone, pair.bytesIn, pair.bytesOut);
    if (rc < 0) return errnoError(rc, 'relay', '');
    this.sessions.set(id, session);
    return undefined;
  }

  /** The addon's fd-store calls (handover.ts stores with them). */
  get fdStore(): FdStoreCalls {
    return this.addon;
  }

  /** Whether a restart took (or is taking) the sessions: a session must not start relaying then. */
  get handingOver(): boolean {
    return this.handedOver;
  }

  /**
   * A restart: the threads stop reading up to `sessions` sessions, give each
   * back (RelaySession.handed) once its buffers are empty, and close those
   * still full after graceMs (ended 'shutdown'). The others are relayed on.
   * Resolves with how many were closed, once every thread is done.
   */
  handover(graceMs: number, sessions: number): Promise<number> {
    return new Promise((resolve) => {
      this.handedOver = true;
      this.handing = { threadsLeft: this.threads, closed: 0, done: resolve };
      this.addon.handover(graceMs, sessions);
    });
  }

  /** The local end of an accepted client ("address port"), for the PROXY header. */
  localAddress(fd: number): { address: string; port: number } | undefined {
    const [address, port] = this.addon.localAddress(fd).split(' ');
    return address ? { address, port: Number(port) } : undefined;
  }

  closeFd(fd: number): void {
    this.addon.closeFd(fd);
  }

  /** Close every relayed session (drain timeout); their ends arrive as events. */
  closeAll(reason: 'shutdown'): void {
    this.addon.closeAll(CLOSE_REASONS.indexOf(reason), undefined);
  }

  /** Close the relayed sessions `which` picks (a target marked DOWN: its sessions). */
  closeWhere(reason: 'marked-down', which: (session: RelaySession) => boolean): void {
    const ids = [...this.sessions].filter(([, s]) => which(s)).map(([id]) => id);
    if (ids.length > 0) this.addon.closeAll(CLOSE_REASONS.indexOf(reason), ids);
  }

  private takeId(): number {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffff_ffff ? 1 : this.nextId + 1;
    return id;
  }

  /** Bytes from and to clients so far, open sessions included: the threads count as they relay. */
  counters(): { bytesIn: number; bytesOut: number } {
    const [bytesIn, bytesOut] = this.addon.counters();
    return { bytesIn, bytesOut };
  }

  /** Whether every thread answered the previous call (the systemd watchdog asks: a stuck thread stops it). */
  alive(): boolean {
    return !this.running || this.addon.alive();
  }

  /** After the drain: end the threads and close the listeners; the process may exit then. */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.addon.stop();
  }

  private onEvent(kind: number, a: number, b: number, c: unknown, d: unknown, e: unknown): void {
    switch (kind) {
      case EV_ACCEPT:
        return this.accepted({ fd: b, addr: c as string, port: d as number });
      case EV_ACCEPT_ERROR: {
        const l = this.listeners[a];
        if (l) l.acceptFailed(errnoError(-b, 'accept', l.listener.label));
        return;
      }
      case EV_END: {
        const session = this.sessions.get(a);
        if (!session) return;
        this.sessions.delete(a);
        session.ended(CLOSE_REASONS[b] ?? 'server-error', c === 0 ? undefined : getSystemErrorName(-(c as number)), d as number, e as number);
        return;
      }
      case EV_RETRY: {
        const session = this.sessions.get(a);
        if (!session) return this.addon.closeFd(b);
        this.sessions.delete(a);
        const replay = d as Buffer;
        session.retry(b, getSystemErrorName(-(c as number)), replay, e as boolean, replay.length);
        return;
      }
      case EV_HANDED: {
        const [clientFd, serverFd, directionsDone] = b as unknown as [number, number, number];
        const session = this.sessions.get(a);
        if (!session) {
          this.addon.closeFd(clientFd);
          return this.addon.closeFd(serverFd);
        }
        this.sessions.delete(a);
        session.handed({ clientFd, serverFd, directionsDone, replay: c as Buffer | undefined, bytesIn: d as number, bytesOut: e as number });
        return;
      }
      case EV_HANDOVER_DONE: {
        const h = this.handing;
        if (!h) return;
        h.closed += b;
        if (--h.threadsLeft > 0) return;
        this.handing = undefined;
        h.done(h.closed);
      }
    }
  }
}

/** As Node's server.address() would name it: the bound port with the host as given. */
function hostLabel(host: string | undefined): string {
  if (host === undefined) return '*';
  return host.includes(':') ? `[${host}]` : host;
}
