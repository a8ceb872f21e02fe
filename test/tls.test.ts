// TLS termination with client certificates, tried with the inputs strangers
// send: no certificate, one from another CA, an expired one, garbage instead of
// a handshake. None of them reaches the program; each is logged with its address.

import assert from 'node:assert/strict';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import tls from 'node:tls';
import { closedWithin, connect, makePki, openssl, pkiAndEcho, runBridge, startBridge, tempDir, tlsConnect, UnixServer } from './helpers';

interface Setup {
  dir: string;
  srv: UnixServer;
  seen: () => number;
}

function setup(t: { after(fn: () => void): void }): Promise<Setup> {
  return pkiAndEcho(t);
}

/** Send, then read until EOF or an error; what arrived. */
function exchange(s: tls.TLSSocket, data: string): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString(); });
    s.on('error', () => resolve(got));
    s.on('end', () => resolve(got));
    s.on('close', () => resolve(got));
    s.write(data, () => s.end());
  });
}

test('TLS with a valid client certificate: the session is relayed', async (t) => {
  const { dir, srv, seen } = await setup(t);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt')]);
  const s = await tlsConnect(bridge.port, dir, 'client');
  assert.equal(await exchange(s, 'secret hello'), 'secret hello');
  assert.equal(seen(), 1);
});

test('TLS: missing, foreign and expired client certificates never reach the program and are logged with the address', async (t) => {
  const { dir, srv, seen } = await setup(t);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt')]);
  for (const who of [undefined, 'stranger', 'expired']) {
    let reply = '';
    try {
      const s = await tlsConnect(bridge.port, dir, who);
      reply = await exchange(s, 'let me in');
    } catch {
      // TLS 1.3 may report the refusal at connect or at the first read: either way no reply
    }
    assert.equal(reply, '', `${who ?? 'no certificate'}: got a reply`);
  }
  await bridge.waitForLog(/TLS handshake with 127\.0\.0\.1:\d+ failed, client refused: (client certificate refused: no certificate sent|peer did not return a certificate)/);
  // (Node names a lone leaf of an unknown CA UNABLE_TO_VERIFY_LEAF_SIGNATURE; OpenSSL, stopping at the first error as the data plane does, UNABLE_TO_GET_ISSUER_CERT_LOCALLY.)
  await bridge.waitForLog(/client refused: client certificate refused: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)/);
  await bridge.waitForLog(/client refused: client certificate refused: CERT_HAS_EXPIRED/);
  const refusals = bridge.log().match(/TLS handshake with 127\.0\.0\.1:\d+ failed/g) ?? [];
  assert.equal(refusals.length, 3, bridge.log());
  assert.equal(seen(), 0, 'a refused client reached the program');
});

test('TLS: garbage instead of a handshake closes only that connection', async (t) => {
  const { dir, srv, seen } = await setup(t);
  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key')]);
  const raw = await connect(bridge.port);
  raw.on('error', () => {});
  raw.write('GET / HTTP/1.0\r\n\r\n');
  await closedWithin(raw, 5000);
  await bridge.waitForLog(/TLS handshake with 127\.0\.0\.1:\d+ failed, client refused/);
  assert.equal(seen(), 0);
  // Without --tls-ca any client may use the service over TLS.
  const s = await tlsConnect(bridge.port, dir);
  assert.equal(await exchange(s, 'fine'), 'fine');
});

test('TLS: reload re-reads the certificate files (rotation without a restart)', async (t) => {
  const { dir, srv } = await setup(t);
  const live = join(dir, 'live.crt');
  copyFileSync(join(dir, 'server.crt'), live);
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `listen = 127.0.0.1:0\ntarget = ${srv.path}\ntls-cert = ${live}\ntls-key = ${join(dir, 'server.key')}\n`);
  const bridge = await startBridge(t, ['--config', conf]);
  const serial = async (): Promise<string> => {
    const s = await tlsConnect(bridge.port, dir);
    const sn = s.getPeerCertificate().serialNumber;
    s.destroy();
    return sn;
  };
  const before = await serial();
  // A new certificate for the same key, signed again: a different serial number.
  openssl(dir, 'x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'live.crt', '-days', '30', '-extfile', 'san.ext');
  bridge.child.kill('SIGHUP');
  await bridge.waitForLog(/configuration reloaded/);
  // READY=1 follows the reload once it applies (the log line is written first): new clients get the new certificate.
  let after = before;
  for (let i = 0; i < 20 && after === before; i++) after = await serial();
  assert.notEqual(after, before);
});

test('TLS: a key that does not match the certificate is a configuration error (exit 78)', async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  const r = await runBridge(['check-config', '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'client.key')]);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /cannot use --tls-cert .*server\.crt with --tls-key .*client\.key/);
  const half = await runBridge(['check-config', '--tls-cert', join(dir, 'server.crt')]);
  assert.equal(half.code, 78);
  assert.match(half.stderr, /needs both --tls-cert and --tls-key/);
});
