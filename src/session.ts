// The life of one client connection, top to bottom:
//   accepted (paused) → connecting to the target (held while it is away)
//   → relaying both ways → closed, with one log entry saying how it went.
//
// Relaying is written out rather than done with stream.pipe(): pipe() ends the
// destination on EOF *and* cannot forward a half-close while the other way is
// still running, and its machinery costs per chunk. Here each direction is a
// data handler with explicit backpressure (pause the source when the
// destination's buffer is full, resume on 'drain'), and EOF on one side is
// forwarded as a shutdown(SHUT_WR) on the other, so a client that sends a
// request and then shuts down its write side still gets the whole reply.
//
// Handlers are module-level functions that find their session through a
// symbol-keyed field: no closures per connection, and stack traces name them.

import type net from 'node:net';
import type { Backend, ConnectFailure, PendingConnect } from './backend';
import type { Fields, Logger } from './log';
import type { Config } from './options';
import type { Stats } from './stats';

export type SessionSettings = Pick<Config, 'clientTimeout' | 'serverTimeout'>;

export type CloseReason =
  | 'done' // both directions finished
  | ConnectFailure
  | 'client-timeout'
  | 'server-timeout'
  | 'client-error'
  | 'server-error'
  | 'marked-down' // --on-marked-down shutdown-sessions
  | 'shutdown'; // drain timeout on stop

/** What a session needs from the bridge; one object shared by all sessions. */
export interface SessionContext {
  readonly backend: Backend;
  readonly logger: Logger;
  readonly stats: Stats;
  settings: SessionSettings;
  onClosed(session: Session): void;
}

const enum Phase {
  Connecting,
  Open,
  Closed,
}

const SESSION = Symbol('session');
interface BridgedSocket extends net.Socket {
  [SESSION]: Session;
}

export class Session {
  private phase = Phase.Connecting;
  private server: BridgedSocket | undefined;
  private pending: PendingConnect | undefined;
  private reason: CloseReason | undefined;
  private error: string | undefined;
  private openSockets = 1;
  private readonly startedAt = Date.now();
  private readonly client: BridgedSocket;
  /** The client's address, kept because it is gone from the socket once closed. */
  readonly clientAddr: string;
  readonly clientPort: number;

  constructor(
    client: net.Socket,
    private readonly ctx: SessionContext,
  ) {
    this.client = client as BridgedSocket;
    this.client[SESSION] = this;
    this.clientAddr = client.remoteAddress ?? '?';
    this.clientPort = client.remotePort ?? 0;
    // The client arrives paused: nothing is read until the target is connected,
    // so a held client's request waits in the kernel, not in our memory.
    client.setNoDelay(true);
    client.setKeepAlive(true, 60_000);
    client.on('error', socketOnError);
    client.on('close', socketOnClose);
    ctx.stats.held++;
    this.pending = ctx.backend.connect((failure, server, err) => this.onConnect(failure, server, err));
  }

  /** Close now (drain timeout, target marked down). */
  abort(reason: CloseReason): void {
    if (this.phase === Phase.Closed) return;
    this.reason ??= reason;
    if (this.pending) this.pending.cancel();
    this.client.destroy();
    this.server?.destroy();
  }

  get connecting(): boolean {
    return this.phase === Phase.Connecting;
  }

  private onConnect(failure: ConnectFailure | undefined, socket: net.Socket | undefined, err: NodeJS.ErrnoException | undefined): void {
    this.pending = undefined;
    this.ctx.stats.held--;
    if (failure !== undefined || socket === undefined) {
      this.reason ??= failure;
      this.error = err?.code;
      this.client.destroy();
      return;
    }
    if (this.client.destroyed) {
      // The client left while it was held.
      socket.destroy();
      return;
    }
    const server = socket as BridgedSocket;
    server[SESSION] = this;
    this.server = server;
    this.openSockets = 2;
    this.phase = Phase.Open;
    this.ctx.stats.active++;

    const { clientTimeout, serverTimeout } = this.ctx.settings;
    const client = this.client;
    for (const socket of [client, server]) {
      socket.on('data', socketOnData);
      socket.on('end', socketOnEnd);
      socket.on('drain', socketOnDrain);
      socket.on('timeout', socketOnTimeout);
    }
    server.on('error', socketOnError);
    server.on('close', socketOnClose);
    if (clientTimeout > 0) client.setTimeout(clientTimeout);
    if (serverTimeout > 0) server.setTimeout(serverTimeout);
    client.resume();
  }

  /** First error wins the close reason; both sides go, since the session cannot continue. */
  failed(socket: BridgedSocket, err: NodeJS.ErrnoException): void {
    if (this.phase === Phase.Closed) return;
    const fromClient = socket === this.client;
    this.reason ??= fromClient ? 'client-error' : 'server-error';
    this.error ??= err.code ?? err.message;
    if (this.pending) this.pending.cancel();
    this.client.destroy();
    this.server?.destroy();
  }

  timedOut(socket: BridgedSocket): void {
    this.reason ??= socket === this.client ? 'client-timeout' : 'server-timeout';
    this.client.destroy();
    this.server?.destroy();
  }

  /** The other end of the relay; only called once the session is open. */
  peerOf(socket: BridgedSocket): BridgedSocket {
    return socket === this.client ? this.server! : this.client;
  }

  /** A socket is fully closed: both directions done, or destroyed. */
  socketClosed(socket: BridgedSocket): void {
    if (this.pending) {
      // Only the client exists yet: it gave up while held, so stop waiting for it.
      this.reason ??= 'client-error';
      this.pending.cancel();
    }
    const other = socket === this.client ? this.server : this.client;
    const clean = socket.readableEnded && socket.writableFinished;
    if (other && !other.destroyed && !clean) other.destroy();
    if (--this.openSockets === 0) this.finish();
  }

  private finish(): void {
    const wasOpen = this.phase === Phase.Open;
    this.phase = Phase.Closed;
    const { stats, logger } = this.ctx;
    const reason = this.reason ?? 'done';
    const bytesIn = this.client.bytesRead;
    const bytesOut = this.client.bytesWritten;
    if (wasOpen) stats.active--;
    stats.total++;
    stats.bytesIn += bytesIn;
    stats.bytesOut += bytesOut;
    const failed = reason !== 'done';
    if (failed) stats.failed++;
    const level = reason === 'connect-timeout' || reason === 'target-denied' || reason === 'target-error' ? 'warning' : 'info';
    if (logger.enabled(level)) {
      const fields: Fields = {
        EVENT: 'session-end',
        CLIENT_ADDR: this.clientAddr,
        CLIENT_PORT: this.clientPort,
        BYTES_IN: bytesIn,
        BYTES_OUT: bytesOut,
        DURATION_MS: Date.now() - this.startedAt,
        REASON: reason,
        TARGET: this.ctx.backend.target,
      };
      if (this.error) fields['ERRNO'] = this.error;
      const why = reason === 'connect-timeout' ? ': the target did not accept within connect-timeout' : '';
      logger.log(level, `session ${this.clientAddr}:${this.clientPort} closed (${reason}${this.error ? ' ' + this.error : ''})${why}, ${bytesIn} bytes in, ${bytesOut} bytes out, ${fields['DURATION_MS']} ms`, fields);
    }
    this.ctx.onClosed(this);
  }
}

// ---- socket handlers (this = the socket; the same for both directions) ------

function socketOnData(this: BridgedSocket, chunk: Buffer): void {
  if (!this[SESSION].peerOf(this).write(chunk)) this.pause();
}

/** This socket's write buffer drained: let its peer, the source, flow again. */
function socketOnDrain(this: BridgedSocket): void {
  this[SESSION].peerOf(this).resume();
}

/** EOF from one side: shut down our write side towards the other, keep the other direction flowing. */
function socketOnEnd(this: BridgedSocket): void {
  this[SESSION].peerOf(this).end();
}

function socketOnTimeout(this: BridgedSocket): void {
  this[SESSION].timedOut(this);
}

/** Also absorbs the late 'error' a socket may emit after it was destroyed. */
function socketOnError(this: BridgedSocket, err: NodeJS.ErrnoException): void {
  this[SESSION].failed(this, err);
}

function socketOnClose(this: BridgedSocket): void {
  this[SESSION].socketClosed(this);
}
