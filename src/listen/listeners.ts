// Where clients come from: sockets passed by systemd (socket activation), or
// the --listen addresses bound here when sockbridge runs on its own.

import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { endpointLabel, parseListenAddress } from '../endpoint';
import { ListenError } from '../errors';
import type { Logger } from '../log';
import type { Config } from '../options';
import type { PassedSocket } from '../systemd/passed-sockets';
import { ownReads } from '../session/js-session';
import { closeQuietly } from '../systemd/fd-store';
import { bindAbstractForNode, bindUnixListener, isUnixSocket, nodeBindsAbstractExactly, removeSocketFile, SocketFile, UnixListenTarget, unixListenError } from './unix-listener';

/**
 * How a listener's clients are accepted and read: 'native' when the native
 * relay's threads accept them (native-relay.ts); with the TypeScript relay,
 * 'onread' when acceptWithOwnReads took over (its fast path), 'stream' when
 * Node's own accept path remains (this Node lacks the internal it replaces).
 * Reported by `sockbridge status --json`, so that a path that changed shows.
 */
export type AcceptPath = 'native' | 'onread' | 'stream';

/** A listener as the logs and `sockbridge status` report it. */
export interface ListenerInfo {
  address: string;
  accept: AcceptPath;
}

export interface Listener {
  /** For logs: "0.0.0.0:12345", "/run/app-remote.sock", "@name" or "systemd fd 3 (bridge.socket)". */
  label: string;
  accept: AcceptPath;
  /** Stop accepting and close the socket. */
  close(): void;
}

/** One socket to listen on: passed by systemd, a TCP address or a UNIX socket to bind. */
export interface ListenSpec {
  label: string;
  target: { fd: number } | { port: number; host?: string } | { unix: UnixListenTarget };
  /** 'unix' for a UNIX socket, bound here or passed: its clients have no IP address for --allow/--deny. */
  family: 'unix' | 'ip';
}

export function listenSpecs(passed: PassedSocket[], cfg: Pick<Config, 'listen' | 'listenMode' | 'listenOwner' | 'listenGroup'>): ListenSpec[] {
  if (passed.length > 0) {
    return passed.map((p) => ({ label: `systemd fd ${p.fd} (${p.name})`, target: { fd: p.fd }, family: isUnixSocket(p.fd) ? 'unix' : 'ip' }));
  }
  return cfg.listen.map((raw): ListenSpec => {
    const e = parseListenAddress(raw);
    if (e.kind === 'tcp') return { label: raw, target: e.host === undefined ? { port: e.port } : { port: e.port, host: e.host }, family: 'ip' };
    const unix = { endpoint: e, mode: cfg.listenMode, owner: cfg.listenOwner, group: cfg.listenGroup };
    return { label: endpointLabel(e), target: { unix }, family: 'unix' };
  });
}

/**
 * --allow and --deny judge IP addresses; a UNIX listener's clients have
 * none and are let in unjudged. Said once at start, so that nobody believes
 * an allow list guards a UNIX socket: its file's mode and owner do.
 */
export function warnAccessListsNotApplied(specs: ListenSpec[], cfg: Pick<Config, 'allow' | 'deny' | 'allowUid' | 'allowGid'>, logger: Logger): void {
  const unix = specs.filter((s) => s.family === 'unix').map((s) => s.label);
  const ip = specs.filter((s) => s.family !== 'unix').map((s) => s.label);
  if (ip.length > 0 && (cfg.allowUid.length > 0 || cfg.allowGid.length > 0)) {
    logger.warning(`--allow-uid/--allow-gid apply to UNIX listeners only: clients of ${ip.join(', ')} are not judged by them — use --allow/--deny or client certificates there`,
      { EVENT: 'access-list-not-applied', LISTENERS: ip.join(' ') });
  }
  if (unix.length === 0 || (cfg.allow.length === 0 && cfg.deny.length === 0)) return;
  logger.warning(`--allow/--deny apply to IP clients only: clients of ${unix.join(', ')} are not judged by them — ` +
    'who may connect there is decided by the socket file\'s mode and owner (--listen-mode/-owner/-group, or SocketMode=/SocketUser=/SocketGroup=; ' +
    'an @name socket has no file: any process in the network namespace may connect)',
  { EVENT: 'access-list-not-applied', LISTENERS: unix.join(' ') });
}

/** The one line for an address that cannot be listened on, whichever relay tried. */
export function listenError(label: string, code: string): ListenError {
  const hint = code === 'EADDRINUSE' ? 'another process holds this port: stop it or choose another --listen'
    : code === 'EACCES' ? 'ports below 1024 need privileges: use socket activation or a higher port'
    : code === 'EADDRNOTAVAIL' ? 'no local interface has this address' : 'check --listen';
  return new ListenError('ELISTEN', `cannot listen on ${label}: ${code} — ${hint}`);
}

const ACCEPT_ERROR_LOG_EVERY_MS = 1000;
/** TCP keepalive on every client: a peer that vanished is noticed even with the timeouts off. */
const KEEPALIVE_DELAY_MS = 60_000;

/**
 * Start accepting for the TypeScript relay. Clients arrive paused
 * (pauseOnConnect) and half-open capable (allowHalfOpen), as the relay needs
 * both, with TCP_NODELAY and keepalive on over TCP. Rejects with ListenError
 * when an address cannot be bound.
 */
export async function openListeners(
  specs: ListenSpec[],
  backlog: number,
  logger: Logger,
  onConnection: (socket: net.Socket) => void,
): Promise<Listener[]> {
  const listeners: Listener[] = [];
  try {
    for (const spec of specs) listeners.push(await openListener(spec, backlog, logger, onConnection));
  } catch (err) {
    for (const l of listeners) l.close();
    throw err;
  }
  return listeners;
}

async function openListener(spec: ListenSpec, backlog: number, logger: Logger, onConnection: (socket: net.Socket) => void): Promise<Listener> {
  // TCP_NODELAY (no 40 ms Nagle/delayed-ACK stalls on request/response
  // traffic) and keepalive on every TCP client, here or in acceptWithOwnReads.
  const server = net.createServer({
    pauseOnConnect: true, allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: KEEPALIVE_DELAY_MS,
  }, onConnection);
  const target = spec.target;
  let file: SocketFile | undefined;
  if ('unix' in target) {
    ({ file } = await bindUnixListener(target.unix, spec.label, {
      bind: (address) => listenOnUnix(server, address, backlog, spec.label),
      // Node unlinks the path it bound when the server closes: the temporary name, never the path renamed into place.
      discard: () => server.close(),
    }));
  } else {
    await listenOn(server, target, backlog).catch((err: NodeJS.ErrnoException) => {
      throw listenError(spec.label, err.code ?? err.message);
    });
  }
  watchAcceptErrors(server, spec.label, logger);
  const accept = acceptWithOwnReads(server, onConnection);
  const address = server.address();
  const label = typeof address === 'object' && address !== null && 'port' in target
    ? `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`
    : spec.label;
  return {
    label, accept, close: () => {
      server.close();
      if (file) removeSocketFile(file);
    },
  };
}

/** server.listen on a UNIX path or "\0name", an abstract name bound by the addon where Node cannot bind it exactly. */
function listenOnUnix(server: net.Server, address: string, backlog: number, label: string): Promise<void> {
  let target: { fd: number } | { path: string } = { path: address };
  try {
    if (address.startsWith('\0') && !nodeBindsAbstractExactly()) target = { fd: bindAbstractForNode(address, label) };
  } catch (err) {
    return Promise.reject(err);
  }
  return listenOn(server, target, backlog).catch((err: NodeJS.ErrnoException) => {
    if ('fd' in target) closeQuietly(target.fd);
    throw unixListenError(label, err.code ?? err.message);
  });
}

/** server.listen, resolved once listening. The bind itself happens within the call (unix-listener.ts relies on it). */
function listenOn(server: net.Server, target: { fd: number } | { port: number; host?: string } | { path: string }, backlog: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // The backlog goes positionally: with an fd, Node ignores {backlog} and
    // would reset the queue systemd configured to 511.
    server.listen(target, backlog, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** The members of Node's listening handle used here (see acceptWithOwnReads). */
interface ListenHandle {
  onconnection?: (status: number, clientHandle: object | undefined) => void;
  /** 0 or a negative errno, as libuv returns them. */
  setNoDelay?: (enable: boolean) => number;
  setKeepAlive?: (enable: boolean, delaySeconds: number) => number;
}

/**
 * Accepted sockets are built here rather than by net.Server so that they read
 * with `onread` into the session's buffers (see session.ts): Node offers that
 * only to sockets it is asked to create, and net.Server's accept path does not
 * ask. This replaces the listening handle's `onconnection` (a Node internal,
 * the same since Node 0.x) with the same steps plus `onread`; max-conn, access
 * and TLS stay with the caller. Without that internal, Node's own accept path
 * remains: clients then read through the stream machinery, slower but correct.
 *
 * TCP_NODELAY and keepalive go on the listening socket: Linux copies both to
 * every accepted socket, which saves five setsockopt(2) calls per connection
 * (measured: ~9 % of the CPU time of a connection churn).
 */
function acceptWithOwnReads(server: net.Server, onConnection: (socket: net.Socket) => void): AcceptPath {
  const handle = (server as unknown as { _handle?: ListenHandle | null })._handle;
  if (!handle || typeof handle.onconnection !== 'function') return 'stream';
  // A UNIX listener's handle (a Pipe) has neither: nothing to set on its clients either.
  const tcp = typeof handle.setNoDelay === 'function';
  const inherited = !tcp || (handle.setNoDelay?.(true) === 0 && handle.setKeepAlive?.(true, KEEPALIVE_DELAY_MS / 1000) === 0);
  handle.onconnection = (status, clientHandle) => {
    if (status < 0 || clientHandle === undefined) {
      const code = getSystemErrorName(status);
      server.emit('error', Object.assign(new Error(`accept ${code}`), { code, errno: status, syscall: 'accept' }));
      return;
    }
    const reads = ownReads();
    const opts = { handle: clientHandle, allowHalfOpen: true, pauseOnCreate: true, onread: reads };
    const socket = new net.Socket(opts as net.SocketConstructorOpts);
    reads.socket = socket;
    if (!inherited) {
      socket.setNoDelay(true);
      socket.setKeepAlive(true, KEEPALIVE_DELAY_MS);
    }
    onConnection(socket);
  };
  return 'onread';
}

/**
 * accept(2) failures that libuv does not absorb itself (it answers EMFILE by
 * accepting and closing, see checkDescriptorBudget) arrive as 'error' on a
 * server that keeps listening. Log them, rate limited, and keep going: one
 * exhausted resource must not stop the service.
 */
function watchAcceptErrors(server: net.Server, label: string, logger: Logger): void {
  server.on('error', acceptErrorLog(label, logger));
}

/** A rate-limited logger of one listener's accept(2) failures (the native relay reports them as events). */
export function acceptErrorLog(label: string, logger: Logger): (err: NodeJS.ErrnoException) => void {
  let lastLog = 0;
  let suppressed = 0;
  return (err: NodeJS.ErrnoException) => {
    const now = Date.now();
    if (now - lastLog < ACCEPT_ERROR_LOG_EVERY_MS) {
      suppressed++;
      return;
    }
    lastLog = now;
    const hint = err.code === 'EMFILE' || err.code === 'ENFILE'
      ? 'out of file descriptors: raise LimitNOFILE= or lower --max-conn'
      : 'the kernel refused a new connection';
    logger.error(`accept failed on ${label}: ${err.code ?? err.message} — ${hint}${suppressed ? ` (${suppressed} more since the last report)` : ''}`,
      { EVENT: 'accept-error', ERRNO: err.code ?? 'error' });
    suppressed = 0;
  };
}

/**
 * The descriptors a full service holds for its clients: two per session
 * (client and target) under max-conn, and one per client waiting in the
 * queue beyond it (at most backlog). The fd-limit check below and the fd
 * store's budget for a restart (fd-store.ts: storeNeeded) use this one count.
 */
export function connectionFds(maxConn: number, backlog: number): number {
  return 2 * maxConn + backlog;
}

/**
 * A limit too low for a full service is said at start and on every reload
 * that raises max-conn, before it bites: the TypeScript relay's libuv
 * answers EMFILE on accept by accepting and closing the excess connections
 * without telling, and the data plane pauses accepting.
 */
export function checkDescriptorBudget(maxConn: number, backlog: number, logger: Logger): void {
  let limit: number;
  let inUse: number;
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!m || m[1] === 'unlimited') return;
    limit = Number(m[1]);
    inUse = readdirSync('/proc/self/fd').length;
  } catch {
    return; // not Linux, or /proc hidden: nothing to check
  }
  const needed = inUse + connectionFds(maxConn, backlog) + 16;
  if (needed <= limit) return;
  const fits = Math.max(0, Math.floor((limit - inUse - 16) / 2));
  logger.warning(
    `max-conn ${maxConn} and backlog ${backlog} need about ${needed} file descriptors but the limit is ${limit}: beyond about ${fits} sessions ` +
    'new clients are closed as they arrive — raise LimitNOFILE= (or ulimit -n) or lower --max-conn',
    { EVENT: 'fd-limit', FD_LIMIT: limit },
  );
}
