// What the TLS section of both benchmarks needs: a certificate made for the
// run, a readiness probe over TLS, and what sockbridge's status says about
// its relay threads' handshakes.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { OPENSSL, TlsFiles } from './bridges';

/**
 * A P-256 ECDSA key and a self-signed certificate for 127.0.0.1 (SAN
 * IP:127.0.0.1, so clients can verify the address they connect to), valid
 * for two days, in `dir`; plus the two in one file for HAProxy's `crt`.
 */
export function makeCertificates(dir: string): TlsFiles {
  if (!existsSync(OPENSSL)) throw new Error(`${OPENSSL} not installed (package openssl)`);
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const pem = join(dir, 'cert+key.pem');
  const r = spawnSync(
    OPENSSL,
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
      '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (r.status !== 0) throw new Error(`openssl req failed: ${(r.stderr ?? '').trim().split('\n').pop() ?? ''}`);
  writeFileSync(pem, readFileSync(cert, 'utf8') + readFileSync(key, 'utf8'), { mode: 0o600 });
  return { cert, key, pem, ca: cert };
}

/**
 * Send `request` over TLS to 127.0.0.1:PORT, verifying the certificate
 * against `ca` and the address, and wait for a reply that `complete` accepts.
 */
export function tlsReplies(address: string, ca: string, request: Buffer | string, complete: (got: Buffer) => boolean, timeoutMs: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const s = tls.connect({ host: '127.0.0.1', port: Number(address.split(':')[1]), ca: readFileSync(ca), minVersion: 'TLSv1.2' });
    let got = Buffer.alloc(0);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolvePromise(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('secureConnect', () => s.write(request));
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (complete(got)) done(true);
    });
    s.once('error', () => done(false));
    s.once('close', () => done(complete(got)));
  });
}

/** Per relay thread: TLS handshakes completed, from `sockbridge status --json`; null when it cannot say. */
export function perThreadHandshakes(sockbridgeBin: string, controlSocket: string): number[] | null {
  const r = spawnSync(sockbridgeBin, ['status', '--json', '--control-socket', controlSocket], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) return null;
  try {
    const status = JSON.parse(r.stdout) as { relay?: { perThread?: { handshakes?: number }[] } };
    const threads = status.relay?.perThread;
    return Array.isArray(threads) ? threads.map((t) => Number(t.handshakes ?? NaN)) : null;
  } catch {
    return null;
  }
}
