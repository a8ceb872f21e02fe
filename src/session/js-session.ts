// The life of one client connection, top to bottom:
//   accepted (paused) → connecting to the target (held while it is away)
//   → relaying both ways → closed, with one log entry saying how it went.
//
// This is the TypeScript relay: TLS sessions, `--relay js`, and installs where
// the native relay (native-session.ts) cannot load. Relaying is written out
// rather than done with stream.pipe(): pipe() ends the destination on EOF
// *and* cannot forward a half-close while the other way is still running, and
// its machinery costs per chunk. Here each side reads into buffers of our own
// (ownReads) with explicit backpressure (pause the source when the
// destination's buffer is full, resume on 'drain'), and EOF on one side is
// forwarded as a shutdown(SHUT_WR) on the other, so a client that sends a
// request and then shuts down its write side still gets the whole reply.
//
// Handlers are module-level functions that find their session through a
// symbol-keyed field: no closures per connection, and stack traces name them.

import { fstatSync, readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { addressLabel, plainAddress } from '../listen/address';
import type { ConnectFailure, Dialer, PendingConnect } from '../targets/backend';
import { retriesFor } from '../options';
import { connectTarget, TargetTlsMaterial } from '../targets/connector';
import type { Target } from '../targets/pool';
import { BridgedSession, CloseReason, recordSessionEnd, REPLAY_LIMIT, SessionContext, SessionSettings } from './contract';
import { ClientEnds, parseProxyHeader, ProxyExtra, proxyHeader, ProxyParse } from './proxy-protocol';

const enum Phase {
  Connecting,
  Open,
  Closed,
}

const SESSION = Symbol('session');
/** Who reads a socket's bytes before it has a session: the PROXY header reader (readProxyHeader). */
const PREFACE = Symbol('preface');
/** How long a session past its idle limit is watched for a client draining the kernel's queue. */
const QUEUE_LOOK_MS = 500;
/** Read sizes: small while traffic is small (each idle socket holds one such buffer), large for bulk. */
const SMALL_READ = 256;
const LARGE_READ = 64 * 1024;
interface BridgedSocket extends net.Socket {
  [SESSION]: Session;
  [PREFACE]?: ((chunk: Buffer) => void) | undefined;
}

/**
 * Who the client is when the socket does not say it alone, for the log
 * entry, --send-proxy and the counters.
 */
export interface SessionOrigin {
  /** The real client and the address it reached, from a trusted front's PROXY header. */
  ends?: ClientEnds | undefined;
  /** What a --send-proxy v2 header carries beyond the addresses (a TLS client's TLVs). */
  extra?: ProxyExtra | undefined;
  /** Bytes of that PROXY header read from a plain client socket: the front's, not the client's. */
  headerBytes?: number;
}

export class Session implements BridgedSession {
  private phase = Phase.Connecting;
  private server: BridgedSocket | undefined;
  private pending: PendingConnect<net.Socket> | undefined;
  /** The target it is connected to (or was, before a retry: that one is avoided). */
  target: Target | undefined;
  private reason: CloseReason | undefined;
  private error: string | undefined;
  private clientClosed = false;
  private serverClosed = false;
  private relaying = false;
  /**
   * What the client sent, kept until the target's first byte so it can be sent
   * again if a restarting target drops the connection unanswered (it was still
   * in the old socket's accept queue). undefined once that is no longer safe.
   */
  private replay: Buffer[] | undefined = [];
  private replayBytes = 0;
  private clientEnded = false;
  /** Requests sent again so far (--retries bounds them, per the target's kind: retriesFor). */
  private retried = 0;
  private readonly startedAt = Date.now();
  /** Taken when the session starts: a reload changes new sessions only. */
  private readonly settings: SessionSettings;
  /** Set by every chunk, cleared by the idle sweep (see closeIfIdle). */
  private busy = true;
  /** The sweep that last found the session busy (ms). */
  private quietSince = 0;
  /** Who sent the last byte: the client (so the target owes an answer) or not (the client owes the next byte). */
  private clientSpokeLast = false;
  /** Bytes both sockets had handed to the kernel at the last sweep. */
  private takenSeen = 0;
  /** The client's kernel send queue at the last look past the idle limit (-1: not looked), and when. */
  private clientQueueSeen = -1;
  private clientQueueAt = 0;
  /** Which sides were reset (1 client, 2 target). */
  private resets = 0;
  private readonly client: BridgedSocket;
  /** The client's address, kept because it is gone from the socket once closed. */
  readonly clientAddr: string;
  readonly clientPort: number;

  constructor(
    client: net.Socket,
    private readonly ctx: SessionContext,
    private readonly origin: SessionOrigin = {},
  ) {
    this.client = client as BridgedSocket;
    this.client[SESSION] = this;
    // A UNIX listener's client has no address ('': logged as a local client; Node cannot read its credentials).
    const ends = origin.ends ?? client;
    this.clientAddr = plainAddress(ends.remoteAddress ?? '');
    this.clientPort = ends.remotePort ?? 0;
    this.settings = ctx.settings;
    // The client arrives paused: nothing is read until the target is connected,
    // so a held client's request waits in the kernel, not in our memory.
    client.on('error', socketOnError);
    client.on('close', socketOnClose);
    this.dial();
  }

  /**
   * Close both sides now (drain timeout, target marked down, idle, an
   * error). A side still owed bytes gets a reset, never a FIN it could take
   * for the end of a complete reply; a target's error is passed on to the
   * client as a reset.
   */
  abort(reason: CloseReason): void {
    if (this.phase === Phase.Closed) return;
    this.reason ??= reason;
    if (this.pending) this.pending.cancel();
    const server = this.server;
    const resetClient = reason === 'server-error' ? server !== undefined : reason !== 'client-error' && owed(this.client);
    const resetServer = reason === 'client-error' ? false : reason !== 'server-error' && server !== undefined && owed(server);
    this.resets |= (resetClient && reset(this.client) ? 1 : 0) | (resetServer && server && reset(server) ? 2 : 0);
    this.client.destroy();
    server?.destroy();
  }

  /** Bytes moved once it ended (the relay adds them to its totals). */
  finalBytes = { bytesIn: 0, bytesOut: 0 };

  get connecting(): boolean {
    return this.phase === Phase.Connecting;
  }

  /** Bytes from the client so far (the stats take them over when the session ends). */
  get bytesIn(): number {
    return this.phase === Phase.Closed ? 0 : this.clientBytesRead();
  }

  /** What the client sent, without a front's PROXY header. */
  private clientBytesRead(): number {
    return this.client.bytesRead - (this.origin.headerBytes ?? 0);
  }

  /** Bytes to the client so far. */
  get bytesOut(): number {
    return this.phase === Phase.Closed ? 0 : this.client.bytesWritten;
  }

  private dial(): void {
    this.phase = Phase.Connecting;
    this.pending = this.ctx.backend.connect((failure, server, err, target) => this.onConnect(failure, server, err, target), this.ctx.dialer, this.target);
  }

  private onConnect(failure: ConnectFailure | undefined, socket: net.Socket | undefined, err: NodeJS.ErrnoException | undefined, target: Target | undefined): void {
    this.pending = undefined;
    if (failure !== undefined || socket === undefined) {
      this.reason ??= failure;
      this.error ??= err?.code;
      this.client.destroy();
      if (this.clientClosed) this.finish();
      return;
    }
    const server = socket as BridgedSocket;
    server[SESSION] = this;
    server.on('end', socketOnEnd);
    server.on('drain', socketOnDrain);
    server.on('error', socketOnError);
    server.on('close', socketOnClose);
    // TLS towards the target (--target-tls) reads through its stream; a plain one with ownReads.
    if (server instanceof tls.TLSSocket) server.on('data', serverOnData);
    // Every connection to the target, a retry's too, starts with the PROXY header.
    const { sendProxy } = this.settings;
    if (sendProxy !== 'none') server.write(proxyHeader(sendProxy, this.origin.ends ?? this.client, this.origin.extra));
    this.server = server;
    this.serverClosed = false;
    this.phase = Phase.Open;
    this.busy = true;
    this.target = target;
    target?.opened();

    if (!this.relaying) {
      this.relaying = true;
      const client = this.client;
      client.on('data', clientOnData); // TLS only: a plain client reads with ownReads and emits no 'data'
      client.on('end', socketOnEnd);
      client.on('drain', socketOnDrain);
    } else {
      // A retry: the new connection gets everything the lost one was sent.
      for (const chunk of this.replay ?? []) server.write(chunk);
      if (this.clientEnded) server.end();
    }
    if (!server.writableNeedDrain) this.client.resume();
  }

  /**
   * Bytes from the client: forward them, and keep a copy while a retry is still
   * possible. `data` may be our own read buffer (see ownReads), valid only during
   * this call: whatever outlives it is copied.
   */
  fromClient(data: Buffer): void {
    this.busy = true;
    this.clientSpokeLast = true;
    if (this.replay) {
      this.replayBytes += data.length;
      if (this.replayBytes <= REPLAY_LIMIT) this.replay.push(Buffer.from(data));
      else this.replay = undefined;
    }
    if (!this.server) {
      // Read just before a retry paused the client: the new connection sends
      // it, from the replay; past the limit there is nothing safe to send.
      if (!this.replay) this.abort('server-error');
      return;
    }
    if (!this.server.write(data)) this.client.pause();
  }

  /** Bytes from the target: it answered, so the request can no longer be retried. */
  fromServer(data: Buffer): void {
    this.busy = true;
    this.clientSpokeLast = false;
    this.replay = undefined;
    if (!this.client.write(data)) this.server!.pause();
  }

  /** Bytes read on either side (see ownReads); returns where they were written, if anywhere. */
  forward(from: BridgedSocket, data: Buffer): net.Socket | undefined {
    if (from === this.client) {
      this.fromClient(data);
      return this.server;
    }
    this.fromServer(data);
    return this.client;
  }

  /** EOF from one side: shut down our write side towards the other, keep the other direction flowing. */
  ended(socket: BridgedSocket): void {
    if (socket === this.client) {
      this.clientEnded = true;
      this.server?.end(); // none while a retry is dialing: it sends the EOF itself
    } else {
      // The target's EOF is an answer too, and the client has it: a request
      // sent again now could never be answered to it.
      this.replay = undefined;
      this.client.end();
    }
  }

  /** The other end of the relay; only called once the session is open. */
  peerOf(socket: BridgedSocket): BridgedSocket {
    return socket === this.client ? this.server! : this.client;
  }

  /** First error wins the close reason; both sides go, since the session cannot continue. */
  failed(socket: BridgedSocket, err: NodeJS.ErrnoException): void {
    if (this.phase === Phase.Closed) return;
    const fromClient = socket === this.client;
    if (!fromClient && this.mayRetry(err)) return this.retry(err);
    this.error ??= err.code ?? err.message;
    this.abort(fromClient ? 'client-error' : 'server-error');
  }

  /**
   * A reset before the target's first byte is what a restart does to the
   * connections still queued on its old socket: nobody read them. Send the
   * request again on a fresh connection, as a restart must cost clients nothing.
   */
  private mayRetry(err: NodeJS.ErrnoException): boolean {
    const allowed = this.target ? retriesFor(this.settings.retries, this.target.endpoint.kind) : 0;
    return this.replay !== undefined && this.retried < allowed && !this.client.destroyed &&
      (err.code === 'ECONNRESET' || err.code === 'EPIPE');
  }

  private retry(err: NodeJS.ErrnoException): void {
    this.retried++;
    const old = this.server!;
    old.removeAllListeners();
    old.on('error', noop);
    old.destroy();
    this.server = undefined;
    this.target?.released();
    this.client.pause();
    if (this.ctx.logger.enabled('debug')) {
      this.ctx.logger.debug(`session ${addressLabel(this.clientAddr, this.clientPort)}: target dropped the connection unanswered (${err.code}); sending the request again on a new one`);
    }
    this.dial();
  }

  /**
   * Called by the bridge's idle sweep, which is cheaper than timers refreshed
   * on every chunk. Every byte read on one side is written to the other, so
   * both sides are active at the same moments: the shorter timeout decides.
   * Equal timeouts (the defaults) name the side that owes the next byte, as
   * HAProxy does: the target after a request it has not answered, otherwise
   * the client. Quiet since the last sweep that found traffic, so at most a
   * sweep late.
   */
  closeIfIdle(now: number): void {
    if (this.phase !== Phase.Open) return;
    // Bytes the kernel took from us count as traffic too: a reader slower
    // than the timeout that keeps reading is not idle.
    const taken = handedToKernel(this.client) + handedToKernel(this.server);
    if (taken !== this.takenSeen) {
      this.takenSeen = taken;
      this.busy = true;
    }
    if (this.busy) {
      this.busy = false;
      this.quietSince = now;
      this.clientQueueSeen = -1;
      return;
    }
    const { clientTimeout: c, serverTimeout: s } = this.settings;
    const limit = Math.min(c || Infinity, s || Infinity);
    if (now - this.quietSince < limit) return;
    // Nor is a client still draining what the kernel holds for it: past the
    // limit with bytes queued, look again at the next sweep, and go on while
    // the queue shrinks. (Only such sessions read /proc: thousands of quiet
    // ones must not.)
    const queued = kernelSendQueue(this.client, true);
    if (queued > 0 && this.clientQueueSeen < 0) {
      this.clientQueueSeen = queued;
      this.clientQueueAt = now;
      return;
    }
    // A reader paced in chunks may take nothing for a sweep or two: judge over a while.
    if (this.clientQueueSeen >= 0 && now - this.clientQueueAt < Math.min(limit, QUEUE_LOOK_MS)) return;
    if (this.clientQueueSeen >= 0 && queued < this.clientQueueSeen) {
      this.clientQueueSeen = queued > 0 ? queued : -1;
      this.clientQueueAt = now;
      this.quietSince = now;
      return;
    }
    const serverOwes = c === s ? this.clientSpokeLast : limit === s;
    this.abort(serverOwes ? 'server-timeout' : 'client-timeout');
  }

  /**
   * A socket is fully closed: both directions done, or destroyed. Our own flags,
   * not socket.closed, decide: that is set on destroy(), before 'close' is emitted.
   */
  socketClosed(socket: BridgedSocket): void {
    const clean = socket.readableEnded && socket.writableFinished;
    if (socket === this.client) {
      this.clientClosed = true;
      if (this.pending) {
        // The client gave up while held: stop waiting for the target for it.
        this.reason ??= 'client-error';
        this.pending.cancel();
        return; // onConnect (cancelled) finishes the session
      }
      if (this.server && !this.server.destroyed && !clean) this.server.destroy();
    } else {
      this.serverClosed = true;
      if (!this.client.destroyed && !clean) this.client.destroy();
    }
    if (this.clientClosed && (this.server === undefined || this.serverClosed)) this.finish();
  }

  private finish(): void {
    if (this.phase === Phase.Closed) return;
    const wasOpen = this.phase === Phase.Open;
    this.finalBytes = { bytesIn: this.clientBytesRead(), bytesOut: this.client.bytesWritten };
    this.phase = Phase.Closed;
    if (wasOpen) this.target?.released();
    recordSessionEnd(this.ctx, {
      clientAddr: this.clientAddr, clientPort: this.clientPort, startedAt: this.startedAt, endedAt: Date.now(), reason: this.reason ?? 'done',
      error: this.error, bytesIn: this.finalBytes.bytesIn, bytesOut: this.finalBytes.bytesOut, target: wasOpen ? this.target : undefined,
      resets: this.resets,
    });
    this.ctx.onClosed(this);
  }
}

// ---- socket handlers (this = the socket) ---------------------------------------

/** A TLS client's decrypted bytes (a TLSSocket reads through its own stream machinery). */
function clientOnData(this: BridgedSocket, chunk: Buffer): void {
  this[SESSION].fromClient(chunk);
}

/** A TLS target's decrypted bytes. */
function serverOnData(this: BridgedSocket, chunk: Buffer): void {
  this[SESSION].fromServer(chunk);
}

/**
 * Both sides of a plain session read with `onread` into buffers of our own
 * instead of a fresh allocation and the stream machinery per chunk (measured:
 * +60 % MB/s at the same CPU on one core). A buffer is reused as soon as the
 * write that forwarded it has handed the bytes to the kernel; while the write
 * still refers to it (queued or partly sent) the socket reads into a new one.
 *
 * One such object per socket, so no buffer is ever shared between sockets.
 * Node asks `buffer()` for the next read buffer (without telling for which
 * socket, hence the object per socket); `callback` leaves the buffer it may
 * reuse in `next`, and `buffer()` hands that out once: if Node ever asked
 * before the callback had decided, it would get a fresh buffer, never one a
 * pending write still holds.
 */
export interface OwnReads extends net.OnReadOpts {
  /** Set right after the socket is created (Node wants the options first). */
  socket: net.Socket | undefined;
}

export function ownReads(): OwnReads {
  let next: Buffer | undefined;
  const reads: OwnReads = {
    socket: undefined,
    buffer(): Buffer {
      const buf = next ?? Buffer.allocUnsafe(SMALL_READ); // the first read of a new socket
      next = undefined;
      return buf;
    },
    callback(n: number, buf: Uint8Array): boolean {
      const socket = reads.socket as BridgedSocket;
      const session = socket[SESSION] as Session | undefined;
      if (session === undefined) {
        // Before its session: a front's PROXY header (readProxyHeader), copied, as this buffer is reused.
        next = buf as Buffer;
        const preface = socket[PREFACE];
        if (preface) preface(Buffer.from(buf.subarray(0, n)));
        else socket.destroy(); // nobody should be reading it
        return true;
      }
      const dest = session.forward(socket, (buf as Buffer).subarray(0, n));
      next = nextReadBuffer(buf as Buffer, n, dest);
      return true;
    },
  };
  return reads;
}

/** The TypeScript relay's connections to the target: net.Sockets that read with ownReads (TLS ones through their stream). */
export function socketDialer(settings: () => { tls: TargetTlsMaterial | undefined; attemptMs: number }): Dialer<net.Socket> {
  return {
    attempt(target, ok, fail) {
      const { tls, attemptMs } = settings();
      const secure = tls !== undefined && target.endpoint.kind === 'tcp';
      const reads = secure ? undefined : ownReads();
      return connectTarget(target, { tls: secure ? tls : undefined, attemptMs, allowHalfOpen: true, ...(reads ? { onread: reads } : {}) }, (socket) => {
        if (reads) reads.socket = socket;
        socket.removeAllListeners('error');
        ok(socket);
      }, fail);
    },
  };
}

/** A front's header, read: the parse, an error (also late, truncated, a socket error) or ok. */
export type ProxyHeaderRead = Exclude<ProxyParse, { kind: 'incomplete' }>;

/**
 * A trusted front's PROXY header (--accept-proxy), read before anything
 * else, TLS included. The socket arrives paused; it is read until the
 * header is complete or cannot be (parseProxyHeader), the front closes
 * (truncated), or `timeoutMs` passes (late), then paused again: `done`
 * gets the verdict once, and the bytes after the header are put back
 * (unshift) for whoever reads next: the session's 'data' handler, or the
 * TLS server, which takes what its socket holds (TLSSocket's initRead).
 */
export function readProxyHeader(socket: net.Socket, accept: 'v1' | 'v2' | 'any', timeoutMs: number, done: (r: ProxyHeaderRead) => void): void {
  const s = socket as BridgedSocket;
  let got: Buffer = Buffer.alloc(0);
  let finished = false;
  const finish = (r: ProxyHeaderRead): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    s.pause();
    s[PREFACE] = undefined;
    s.off('data', onChunk);
    s.off('end', onEnd);
    s.off('close', onEnd);
    s.off('error', onError);
    if (r.kind === 'ok' && got.length > r.length) s.unshift(got.subarray(r.length));
    done(r);
  };
  const onChunk = (chunk: Buffer): void => {
    got = got.length === 0 ? chunk : Buffer.concat([got, chunk]);
    const r = parseProxyHeader(got, accept);
    if (r.kind !== 'incomplete') finish(r);
  };
  const onEnd = (): void => finish({ kind: 'error', why: got.length === 0 ? 'closed before sending a PROXY header' : `closed after ${got.length} bytes of a PROXY header: truncated` });
  const onError = (err: NodeJS.ErrnoException): void => finish({ kind: 'error', why: `${err.code ?? err.message} while reading a PROXY header` });
  const timer = setTimeout(() => finish({ kind: 'error', why: `no complete PROXY header within ${timeoutMs} ms (${got.length} bytes): late` }), timeoutMs);
  timer.unref();
  s[PREFACE] = onChunk; // a client reading with ownReads
  s.on('data', onChunk); // one read through the stream (Node's own accept path)
  s.on('end', onEnd);
  s.on('close', onEnd); // (after an error, or destroyed: 'end' may never come)
  s.on('error', onError);
  s.resume();
}

/** The buffer for a socket's next read, given how the last one went. */
function nextReadBuffer(buf: Buffer, n: number, dest: net.Socket | undefined): Buffer {
  const full = n === buf.length;
  if (dest !== undefined && dest.writableLength > 0) return Buffer.allocUnsafe(full ? LARGE_READ : SMALL_READ); // this one is lent
  if (full && buf.length < LARGE_READ) return Buffer.allocUnsafe(LARGE_READ); // bulk: read more at a time
  if (n < SMALL_READ && buf.length > SMALL_READ) return Buffer.allocUnsafe(SMALL_READ); // quiet again: give memory back
  return buf;
}

/** This socket's write buffer drained: let its peer, the source, flow again. */
function socketOnDrain(this: BridgedSocket): void {
  this[SESSION].peerOf(this).resume();
}

/** EOF from one side: shut down our write side towards the other, keep the other direction flowing. */
function socketOnEnd(this: BridgedSocket): void {
  this[SESSION].ended(this);
}

/** Also absorbs the late 'error' a socket may emit after it was destroyed. */
function socketOnError(this: BridgedSocket, err: NodeJS.ErrnoException): void {
  this[SESSION].failed(this, err);
}

function socketOnClose(this: BridgedSocket): void {
  this[SESSION].socketClosed(this);
}

/** For an 'error' that may come after a socket was given up on: absorbed on purpose. */
export function noop(): void {}

/** Bytes a socket has handed to the kernel (written, minus what still waits in Node). */
function handedToKernel(socket: net.Socket | undefined): number {
  return socket ? socket.bytesWritten - socket.writableLength : 0;
}

/** The TCP socket under a socket (a server-side TLSSocket wraps one). */
function rawSocket(socket: net.Socket): net.Socket {
  return (socket as unknown as { _parent?: net.Socket })._parent ?? socket;
}

/**
 * What the kernel still holds to send on a TCP socket (SIOCOUTQ, which Node
 * does not offer: the tx_queue of /proc/net/tcp{,6}, found by the socket's
 * inode). Read only for a session about to be closed as idle. 0 when it
 * cannot tell (a UNIX socket, /proc hidden).
 */
function kernelSendQueue(socket: net.Socket, fresh = false): number {
  const fd = (rawSocket(socket) as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) return 0;
  try {
    return sendQueues(fresh).get(String(fstatSync(fd).ino)) ?? 0;
  } catch {
    return 0; // closed meanwhile
  }
}

/** tx_queue by inode, from /proc/net/tcp{,6}, read at most every 50 ms (a drain closes many sessions at once). */
let queues: { at: number; byInode: Map<string, number> } | undefined;
function sendQueues(fresh: boolean): Map<string, number> {
  const now = Date.now();
  if (queues && !fresh && now - queues.at < 50) return queues.byInode;
  const byInode = new Map<string, number>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    try {
      for (const line of readFileSync(table, 'utf8').split('\n')) {
        const f = line.trim().split(/\s+/);
        const txq = parseInt((f[4] ?? '').split(':')[0] ?? '', 16);
        if (f[9] !== undefined && txq > 0) byInode.set(f[9], txq);
      }
    } catch {
      // not Linux, or /proc hidden: nothing known to be queued
    }
  }
  queues = { at: now, byInode };
  return byInode;
}

/** Whether bytes are still owed to this socket's peer: in Node's buffer, or in the kernel's. */
function owed(socket: net.Socket): boolean {
  return !socket.destroyed && (socket.writableLength > 0 || kernelSendQueue(socket) > 0);
}

/** End with a reset (SO_LINGER 0), where the socket has one (TCP). */
function reset(socket: net.Socket): boolean {
  const raw = rawSocket(socket) as net.Socket & { resetAndDestroy?: () => void };
  if (raw.destroyed || typeof raw.resetAndDestroy !== 'function') return false;
  try {
    raw.resetAndDestroy();
    return true;
  } catch {
    return false; // a UNIX socket has no reset
  }
}
