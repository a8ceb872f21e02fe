// How TypeScript reaches a target, whatever it is: a UNIX socket, an
// abstract one, or TCP (to the address last resolved for its name), with TLS
// over TCP when --target-tls is on. The TypeScript relay's sessions, the
// health checks and the probes of held TLS clients all connect here; the
// data plane connects in C (native/accept.c: dial_start) with the same rules.

import net from 'node:net';
import tls from 'node:tls';
import { getSystemErrorName } from 'node:util';
import { describeIdentity, IdentityRules, identityAllowed, identityOf, noRules, unmatched } from '../listen/identity';
import type { Target } from './pool';

/** What --target-tls-* name, read and checked (session/tls.ts: loadTargetTls). */
export interface TargetTlsMaterial {
  ca: Buffer;
  cert: Buffer | undefined;
  key: Buffer | undefined;
  /** --target-tls-name: the name to verify and send as SNI; '' = each target's host. */
  name: string;
  /** --target-tls-allow-cn/-dns/-uri: beyond the name check, the identities the far end may have (none: any). */
  allow?: IdentityRules;
}

export interface ConnectOptions {
  tls: TargetTlsMaterial | undefined;
  /** A TCP attempt's deadline (connect and TLS handshake); UNIX connects answer at once. */
  attemptMs: number;
  /** For the TypeScript relay's sessions (net.OnReadOpts); TLS sockets read through their stream. */
  onread?: net.OnReadOpts;
  allowHalfOpen?: boolean;
}

/** The name a TCP target's certificate must carry. */
export function tlsNameOf(target: Target, material: TargetTlsMaterial): string {
  return material.name || (target.endpoint.kind === 'tcp' ? target.endpoint.host : '');
}

/** A negative errno as Node reports errors: code, errno, syscall. */
export function errnoError(negativeErrno: number, syscall: string, what: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(negativeErrno);
  return Object.assign(new Error(`${syscall} ${code} ${what}`), { code, errno: negativeErrno, syscall });
}

/**
 * The far end's certificate against --target-tls-allow-*, once its name
 * checked: a refusal is a failed connect (EPROTO), whose message says which
 * identity was refused and why, as the target's problem report logs it.
 */
function checkAllowed(rules: IdentityRules | undefined, cert: tls.PeerCertificate): Error | undefined {
  if (!rules || noRules(rules)) return undefined;
  const peer = identityOf(cert);
  if (identityAllowed(rules, peer)) return undefined;
  return Object.assign(new Error(`target certificate ${describeIdentity(peer)} ${unmatched(rules, '--target-tls-allow')}`), { code: 'EPROTO' });
}

function timedOut(): NodeJS.ErrnoException {
  return Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' });
}

/**
 * Connect to the target; exactly one of ok and fail is called, unless the
 * returned function cancelled first. A TCP target whose name has not
 * resolved yet fails with its resolver's error (EAI_AGAIN, ENOTFOUND).
 */
export function connectTarget(target: Target, opts: ConnectOptions, ok: (socket: net.Socket) => void, fail: (err: NodeJS.ErrnoException) => void): () => void {
  const e = target.endpoint;
  const base = { allowHalfOpen: opts.allowHalfOpen ?? false, ...(opts.onread ? { onread: opts.onread } : {}) };
  let socket: net.Socket;
  let ready = 'connect';
  if (e.kind === 'unix') socket = net.createConnection({ ...base, path: e.path });
  else if (e.kind === 'abstract') socket = net.createConnection({ ...base, path: `\0${e.name}` });
  else {
    const address = target.address;
    if (address === undefined) {
      const err = target.resolveError ?? Object.assign(new Error(`${e.host} is not resolved yet`), { code: 'EAI_AGAIN' });
      process.nextTick(() => fail(err));
      return () => {};
    }
    if (opts.tls) {
      const name = tlsNameOf(target, opts.tls);
      socket = tls.connect({
        host: address, port: e.port, ca: opts.tls.ca, ...(opts.tls.cert ? { cert: opts.tls.cert, key: opts.tls.key } : {}),
        // An IP address is checked as one and sent as no SNI; a name as a name.
        ...(net.isIP(name) ? {} : { servername: name }),
        checkServerIdentity: (_host, cert) => tls.checkServerIdentity(name, cert) ?? checkAllowed(opts.tls!.allow, cert),
      });
      ready = 'secureConnect';
    } else {
      socket = net.createConnection({ ...base, host: address, port: e.port, noDelay: true });
    }
  }
  let done = false;
  const timer = e.kind === 'tcp' ? setTimeout(() => socket.destroy(timedOut()), opts.attemptMs) : undefined;
  timer?.unref();
  const settle = (err: NodeJS.ErrnoException | undefined): void => {
    if (done) return;
    done = true;
    if (timer) clearTimeout(timer);
    socket.removeListener(ready, onReady);
    socket.removeListener('error', onError);
    if (err) {
      socket.destroy();
      fail(err);
    } else {
      ok(socket);
    }
  };
  const onReady = (): void => settle(undefined);
  const onError = (err: NodeJS.ErrnoException): void => settle(err);
  socket.once(ready, onReady);
  socket.once('error', onError);
  return () => {
    done = true;
    if (timer) clearTimeout(timer);
    socket.destroy();
  };
}
