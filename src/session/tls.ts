// TLS termination (--tls-cert, --tls-key) with optional client-certificate
// authentication (--tls-ca: a certificate signed by it is required). A client
// whose handshake fails never reaches the target; the failure is logged with
// its address. Reload builds a new context from the files: certificate
// rotation without a restart.

import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { isAbsolute, join } from 'node:path';
import tls from 'node:tls';
import { ConfigError } from '../errors';
import type { Config } from '../options';

export type TlsSettings = Pick<Config, 'tlsCert' | 'tlsKey' | 'tlsCa' | 'clientTimeout'>;

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

/**
 * Relative paths name systemd credentials (LoadCredential=tls.key:/etc/…):
 * the dynamic user can read $CREDENTIALS_DIRECTORY, not the original file.
 */
function credentialPath(path: string, env: NodeJS.ProcessEnv): string {
  const dir = env['CREDENTIALS_DIRECTORY'];
  return !isAbsolute(path) && dir ? join(dir, path) : path;
}

function readPem(option: string, path: string, env: NodeJS.ProcessEnv): Buffer {
  const full = credentialPath(path, env);
  try {
    return readFileSync(full);
  } catch (err) {
    throw new ConfigError('ECONFIG_TLS_FILE', `cannot read ${option} ${full} (${(err as NodeJS.ErrnoException).code}); check the path (relative paths are looked up in $CREDENTIALS_DIRECTORY)`);
  }
}

interface Pending {
  onSecure(socket: tls.TLSSocket): void;
  onFail(reason: string): void;
}

/**
 * The raw socket a server-side TLSSocket wraps. Node keeps it as `_parent`;
 * there is no public accessor, and the tls.Server events give only the TLSSocket.
 */
function rawOf(socket: tls.TLSSocket): net.Socket | undefined {
  return (socket as unknown as { _parent?: net.Socket })._parent;
}

export class TlsTerminator {
  private readonly pending = new WeakMap<net.Socket, Pending>();

  /**
   * A tls.Server that never listens: accepted sockets are handed to it with
   * emit('connection'), after the allow/deny check, so that Node's own server
   * logic does the handshake, the client-certificate verification and the
   * handshake timeout.
   */
  private constructor(
    private readonly server: tls.Server,
    verifyClients: boolean,
  ) {
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const raw = rawOf(socket);
      const p = raw && this.pending.get(raw);
      if (!p) return void socket.destroy();
      this.pending.delete(raw!);
      // Verified here rather than by rejectUnauthorized, which would close the
      // connection without telling us why (expired, unknown issuer, none sent).
      if (verifyClients && !socket.authorized) {
        const cert = socket.getPeerCertificate() as tls.PeerCertificate | null; // null when none was sent
        const sent = cert !== null && Object.keys(cert).length > 0;
        socket.destroy();
        return p.onFail(`client certificate refused: ${sent ? String(socket.authorizationError) : 'no certificate sent'}`);
      }
      p.onSecure(socket);
    });
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      const raw = rawOf(socket);
      const p = raw && this.pending.get(raw);
      socket.destroy();
      if (!p) return;
      this.pending.delete(raw!);
      p.onFail(err.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[a-z_]+:/, '').replace(/:\.\.\/deps\/.*$/s, '').trim());
    });
  }

  /** undefined when TLS is off. Throws ConfigError for missing, unreadable or mismatched files. */
  static load(cfg: TlsSettings, env: NodeJS.ProcessEnv = process.env): TlsTerminator | undefined {
    if (!cfg.tlsCert && !cfg.tlsKey && !cfg.tlsCa) return undefined;
    if (!cfg.tlsCert || !cfg.tlsKey) {
      throw new ConfigError('ECONFIG_TLS', 'TLS needs both --tls-cert and --tls-key (--tls-ca alone is not enough)');
    }
    const cert = readPem('--tls-cert', cfg.tlsCert, env);
    const key = readPem('--tls-key', cfg.tlsKey, env);
    const ca = cfg.tlsCa ? readPem('--tls-ca', cfg.tlsCa, env) : undefined;
    try {
      return new TlsTerminator(tls.createServer({
        cert, key, ...(ca ? { ca } : {}),
        requestCert: ca !== undefined,
        rejectUnauthorized: false,
        handshakeTimeout: cfg.clientTimeout || DEFAULT_HANDSHAKE_TIMEOUT_MS,
      }), ca !== undefined);
    } catch (err) {
      throw new ConfigError('ECONFIG_TLS', `cannot use --tls-cert ${cfg.tlsCert} with --tls-key ${cfg.tlsKey}${ca ? ` and --tls-ca ${cfg.tlsCa}` : ''}: ${(err as Error).message}`);
    }
  }

  /** Handshake on a freshly accepted socket; exactly one of the callbacks is called. */
  wrap(raw: net.Socket, onSecure: (socket: tls.TLSSocket) => void, onFail: (reason: string) => void): void {
    this.pending.set(raw, { onSecure, onFail });
    // A client that goes away mid-handshake may not produce a tlsClientError.
    raw.once('close', () => {
      const p = this.pending.get(raw);
      if (!p) return;
      this.pending.delete(raw);
      p.onFail('closed during the TLS handshake');
    });
    this.server.emit('connection', raw);
    raw.resume(); // accepted paused (pauseOnConnect); the handshake must read
  }
}
