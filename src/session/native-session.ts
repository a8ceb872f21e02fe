// A session whose bytes the native relay moves: the same life as session.ts's
// (accepted → held while connecting → relayed → one log entry), but once the
// target is connected both fds belong to a relay thread, which reports back
// only the end (reason, errno, bytes) or a retry (the target reset before its
// first byte: the client and its bytes so far come back for a new connection).
// Timeouts, backpressure and half-close happen in native/relay.c. A restart
// carries a session to the next process (carry(), then resume() there:
// handover.ts).

import { addressLabel, plainAddress } from '../listen/address';
import type { ConnectFailure, PendingConnect } from '../targets/backend';
import type { CarriedClient, CarriedSession } from '../systemd/fd-store';
import type { Target } from '../targets/pool';
import type { AcceptedClient, HandedBack, NativeRelay, RelaySession } from '../dataplane/native-relay';
import { proxyHeader } from './proxy-protocol';
import { BridgedSession, CloseReason, recordSessionEnd, SessionContext, SessionSettings } from './contract';

export interface NativeContext extends SessionContext<number> {
  readonly relay: NativeRelay;
}

const enum Phase {
  Connecting,
  Open,
  Closed,
}

export class NativeSession implements BridgedSession, RelaySession {
  private phase = Phase.Connecting;
  private pending: PendingConnect<number> | undefined;
  /** The target it is connected to (or was, before a retry: that one is avoided). */
  target: Target | undefined;
  private reason: CloseReason | undefined;
  private error: string | undefined;
  private clientFd: number;
  private retriesLeft: number;
  /** The client's bytes kept by the relay for a retry (only after one). */
  private replay: Buffer | undefined;
  private clientEnded = false;
  private bytesIn = 0;
  private readonly startedAt: number;
  /** Given back by the relay for a restart (handed), to be carried. */
  private handedBack: HandedBack | undefined;
  /** Taken when the session starts: a reload changes new sessions only. */
  private readonly settings: SessionSettings;
  readonly clientAddr: string;
  readonly clientPort: number;

  /** carried: a client a previous process was serving (handover.ts), with its bytes and retries so far. */
  constructor(client: AcceptedClient, private readonly ctx: NativeContext, carried?: CarriedClient) {
    this.clientFd = client.fd;
    this.clientAddr = plainAddress(client.addr);
    this.clientPort = client.port;
    this.settings = ctx.settings;
    this.retriesLeft = carried?.retriesLeft ?? this.settings.retries;
    this.startedAt = carried?.startedAt ?? Date.now();
    if (carried) {
      this.replay = carried.replay;
      this.clientEnded = carried.clientEnded;
      this.bytesIn = carried.bytesIn;
    }
  }

  /** Called once the bridge counts the session (it may end at once). */
  start(): void {
    this.dial();
  }

  get connecting(): boolean {
    return this.phase === Phase.Connecting;
  }

  /** Only a session still connecting is ours to close; the relay closes open ones (NativeRelay.closeAll). */
  abort(reason: CloseReason): void {
    if (this.phase !== Phase.Connecting) return;
    this.reason ??= reason;
    this.pending?.cancel();
  }

  private dial(): void {
    this.phase = Phase.Connecting;
    const { backend, relay } = this.ctx;
    // A restart is under way: this client waits for the next process (carry()).
    if (relay.handingOver) return;
    const now = backend.connectNow(relay.connectNow, this.target);
    if (now !== undefined) return this.relayTo(now.conn, now.target);
    this.ctx.stats.held++;
    this.pending = backend.connect((failure, serverFd, err, target) => this.onConnect(failure, serverFd, err, target), this.ctx.dialer, this.target);
  }

  private onConnect(failure: ConnectFailure | undefined, serverFd: number | undefined, err: NodeJS.ErrnoException | undefined, target: Target | undefined): void {
    if (this.phase === Phase.Closed) return; // carried (its cancel lands here): the fd goes on
    this.pending = undefined;
    this.ctx.stats.held--;
    if (failure !== undefined || serverFd === undefined || target === undefined) {
      this.reason ??= failure;
      this.error ??= err?.code;
      return this.close();
    }
    this.relayTo(serverFd, target);
  }

  /** Connected: both fds go to the relay. */
  private relayTo(serverFd: number, target: Target): void {
    const { sendProxy, clientTimeout, serverTimeout } = this.settings;
    // Every connection to the target, a retry's too, starts with the PROXY header.
    const header = sendProxy === 'none' ? undefined : proxyHeader(sendProxy, this.endpoints());
    const failed = this.ctx.relay.relay(this, this.clientFd, serverFd, {
      header, replay: this.replay, clientTimeout, serverTimeout, mayRetry: this.retriesLeft > 0, clientEnded: this.clientEnded,
    });
    if (failed) {
      this.ctx.relay.closeFd(serverFd);
      this.reason ??= 'server-error';
      this.error ??= failed.code;
      return this.close();
    }
    this.phase = Phase.Open;
    this.ctx.stats.active++;
    this.target = target;
    target.opened();
  }

  /** A session a previous process handed over: relayed on from where it was. */
  resume(carried: CarriedSession): NodeJS.ErrnoException | undefined {
    const { clientTimeout, serverTimeout } = this.settings;
    const failed = this.ctx.relay.resume(this, { ...carried, clientTimeout, serverTimeout });
    if (failed) return failed;
    this.phase = Phase.Open;
    this.ctx.stats.active++;
    // The target it was on, if it is still one (counted there; a retry avoids it).
    this.target = carried.target === undefined ? undefined : this.ctx.backend.pool.find(carried.target);
    this.target?.opened();
    return undefined;
  }

  handed(h: HandedBack): void {
    this.handedBack = h;
  }

  /**
   * For a restart: what the next process needs to go on with this client,
   * which leaves this process (no log line here: its end is logged where it
   * ends). undefined for a session the relay still moves bytes for (the
   * store had no room for it): it is drained.
   */
  carry(): CarriedSession | CarriedClient | undefined {
    const client = {
      clientFd: this.clientFd, addr: this.clientAddr, port: this.clientPort, startedAt: this.startedAt, bytesIn: this.bytesIn,
      replay: this.replay, clientEnded: this.clientEnded, retriesLeft: this.retriesLeft,
    };
    const h = this.handedBack;
    if (h) {
      this.phase = Phase.Closed;
      this.ctx.stats.active--;
      return { ...client, serverFd: h.serverFd, replay: h.replay, bytesIn: h.bytesIn, bytesOut: h.bytesOut, directionsDone: h.directionsDone,
        target: this.target?.path };
    }
    if (this.phase !== Phase.Connecting) return undefined;
    this.phase = Phase.Closed;
    if (this.pending) {
      this.ctx.stats.held--;
      this.pending.cancel();
      this.pending = undefined;
    }
    return client;
  }

  ended(reason: CloseReason, error: string | undefined, bytesIn: number, bytesOut: number): void {
    this.reason ??= reason;
    this.error ??= error;
    this.finish(true, bytesIn, bytesOut);
  }

  /**
   * A reset before the target's first byte is what a restart does to the
   * connections still queued on its old socket: nobody read them. Send the
   * request again on a fresh connection, as a restart must cost clients nothing.
   */
  retry(clientFd: number, error: string, replay: Buffer, clientEnded: boolean, bytesIn: number): void {
    this.ctx.stats.active--;
    this.target?.released();
    this.retriesLeft--;
    this.clientFd = clientFd;
    this.replay = replay;
    this.clientEnded = clientEnded;
    this.bytesIn = bytesIn;
    if (this.ctx.logger.enabled('debug')) {
      this.ctx.logger.debug(`session ${addressLabel(this.clientAddr, this.clientPort)}: target dropped the connection unanswered (${error}); sending the request again on a new one`);
    }
    this.dial();
  }

  /** Ended before (or between) relaying: the client's fd is still ours. */
  private close(): void {
    this.ctx.relay.closeFd(this.clientFd);
    this.finish(false, this.bytesIn, 0);
  }

  private finish(wasOpen: boolean, bytesIn: number, bytesOut: number): void {
    if (this.phase === Phase.Closed) return;
    this.phase = Phase.Closed;
    recordSessionEnd(this.ctx, {
      clientAddr: this.clientAddr, clientPort: this.clientPort, startedAt: this.startedAt, reason: this.reason ?? 'done',
      error: this.error, bytesIn, bytesOut, wasOpen, target: this.target,
    }, false);
    this.ctx.onClosed(this);
  }

  /** Both ends of the client's TCP connection, as the PROXY header names them. */
  private endpoints(): { remoteAddress: string; remotePort: number; localAddress: string | undefined; localPort: number | undefined } {
    const local = this.ctx.relay.localAddress(this.clientFd);
    return { remoteAddress: this.clientAddr, remotePort: this.clientPort, localAddress: local?.address, localPort: local?.port };
  }
}
