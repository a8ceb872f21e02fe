// A client the data plane keeps parked while TypeScript holds it for a
// target: the first target of its round refused (or there was none), or its
// target dropped its request unanswered (a retry, which avoids that target).
// Holding is backend.ts's PendingConnect, as for the TypeScript relay; each
// attempt asks the data plane to connect this client (dial), which then
// relays at once. A client of a TLS listener held while every target was
// DOWN has not had its handshake yet (so that a restart can carry it): its
// attempts only probe, as a health check does, and the data plane then runs
// its handshake and its own connect (proceed).

import { connectError, errnoError, type DataPlaneAddon } from './addon';
import { ParkedWhy, reasonCode } from './events';
import type { RelayContext } from '../session/contract';
import type { ConnectFailure, Dialer, PendingConnect } from '../targets/backend';
import type { Target } from '../targets/pool';

const ECANCELED = 125;

export class HeldClient {
  private pending: PendingConnect<number> | undefined;
  private attempt: { ok: () => void; fail: (err: NodeJS.ErrnoException) => void } | undefined;
  private forgotten = false;

  constructor(
    private readonly id: number,
    private readonly who: { addr: string; port: number; startedAt: number },
    private readonly why: ParkedWhy,
    /** The target whose connect just failed, or that dropped the request (avoided by a retry). */
    private readonly failed: Target | undefined,
    private readonly addon: DataPlaneAddon,
    private readonly ctx: RelayContext,
  ) {}

  start(): void {
    const dialer = this.why === ParkedWhy.HeldBeforeTls ? probeDialer : this.dialer;
    const avoid = this.why === ParkedWhy.Retry ? this.failed : undefined;
    this.pending = this.ctx.backend.connect((failure, _slot, err) => this.connected(failure, err), dialer, avoid);
  }

  /** Its DIALED event: the attempt under way succeeded (errno 0, relaying now) or failed. */
  dialed(errno: number, slot: number, reason: string): void {
    const a = this.attempt;
    this.attempt = undefined;
    if (!a) return;
    if (errno === 0) return a.ok();
    a.fail(connectError(errno, this.ctx.backend.pool.bySlot(slot)?.path ?? `target ${slot}`, reason));
  }

  /** It ended, or a restart took it: nothing more is done for it here. */
  forget(): void {
    this.forgotten = true;
    this.pending?.cancel();
    this.pending = undefined;
  }

  private connected(failure: ConnectFailure | undefined, err: NodeJS.ErrnoException | undefined): void {
    this.pending = undefined;
    if (this.forgotten) return;
    if (failure !== undefined) {
      this.addon.close(this.id, reasonCode(failure === 'cancelled' ? 'shutdown' : failure), err?.errno ? -err.errno : 0);
      return;
    }
    // Relaying already (dial); or, before its handshake, the data plane takes it from here.
    if (this.why === ParkedWhy.HeldBeforeTls) this.addon.proceed(this.id);
  }

  /** Each attempt: the data plane connects this client to the target, and relays if it can. */
  private readonly dialer: Dialer<number> = {
    attempt: (target, ok, fail) => {
      if (!this.addon.dial(this.id, target.slot)) {
        process.nextTick(() => fail(errnoError(-ECANCELED, 'connect', target.path)));
        return () => {};
      }
      this.attempt = { ok: () => ok(target.slot), fail };
      return () => {
        this.attempt = undefined;
      };
    },
  };

  /** For logs. */
  toString(): string {
    return `${this.who.addr}:${this.who.port}`;
  }
}

/** A probe connect that closes at once (the target sees what a health check looks like; no TLS handshake). */
const probeDialer: Dialer<number> = {
  attempt(target, ok, fail) {
    return target.probe(() => ok(target.slot), fail, false);
  },
};
