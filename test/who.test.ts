// Who may connect, and how much (issue 20), against real bridges, real
// certificates and clients bound to distinct 127.x.y.z addresses: identity
// allow-lists at both ends, per-source concurrent and rate limits with exact
// counts and a bounded table under a flood, PROXY headers from a trusted
// front (and from anyone else), the malformed ones each closing only their
// connection, the TLVs sent on, the open-to-all warning, and --allow-uid
// where it cannot be enforced.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test, TestContext } from 'node:test';
import tls from 'node:tls';
import { IDLE_MAX } from '../src/listen/source-limits';
import {
  assertOneCleanLine, BridgeProcess, closedWithin, delay, echoServer, freePort, makePki, openssl, runBridge, startBridge, status, tempDir, TEST_RELAY, tlsConnect, unixServer, UnixServer, waitFor,
} from './helpers';

/** The relay these run with: `make unit` runs the file with both (SOCKBRIDGE_TEST_RELAY=js). */
const RELAY = TEST_RELAY;

/** A program that counts its connections and echoes. */
async function countingEcho(t: TestContext, dir: string): Promise<{ srv: UnixServer; seen: () => number }> {
  const srv = await echoServer(join(dir, 'app.sock'));
  t.after(() => srv.close());
  let seen = 0;
  srv.server.on('connection', () => { seen++; });
  return { srv, seen: () => seen };
}

/** A TCP client of the bridge from `localAddress` (any of 127.0.0.0/8). */
function connectFrom(port: number, localAddress: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress, allowHalfOpen: true });
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

/** Send `data`, then read until the end or an error: what came back ('' for a refused client). */
function exchange(s: net.Socket, data: string | Buffer, end = true): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    const done = (): void => resolve(got);
    s.once('end', done);
    s.once('close', done);
    s.once('error', done);
    if (end) s.end(data);
    else s.write(data);
  });
}

async function exchangeFrom(port: number, localAddress: string, data: string): Promise<string> {
  return exchange(await connectFrom(port, localAddress), data);
}

/** One echo on a session kept open. */
function echoOnce(s: net.Socket, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = '';
    const timer = setTimeout(() => reject(new Error(`no echo of "${text}" (got "${got}")`)), 5000);
    const onData = (d: Buffer): void => {
      got += d.toString();
      if (got === text) {
        clearTimeout(timer);
        s.off('data', onData);
        resolve();
      }
    };
    s.on('data', onData);
    s.write(text);
  });
}

function count(bridge: BridgeProcess, re: RegExp): number {
  return (bridge.log().match(re) ?? []).length;
}

// ---- identity allow-lists ---------------------------------------------------------------------

/** A client certificate signed by makePki's CA: `subject` as openssl writes it, `san` a subjectAltName value (or none). */
function clientCert(dir: string, name: string, subject: string, san?: string): void {
  openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
  const ext: string[] = [];
  if (san) {
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\n`);
    ext.push('-extfile', `${name}.ext`);
  }
  openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '30', ...ext);
}

function tlsClient(port: number, dir: string, name: string | undefined, opts: tls.ConnectionOptions = {}): Promise<tls.TLSSocket | undefined> {
  return new Promise((resolve) => {
    const s = tls.connect({
      host: '127.0.0.1', port, ca: readFileSync(join(dir, 'ca.crt')),
      ...(name ? { cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)) } : {}), ...opts,
    }, () => resolve(s));
    s.once('error', () => resolve(undefined));
  });
}

async function tlsExchange(port: number, dir: string, name: string, data: string): Promise<string> {
  const s = await tlsClient(port, dir, name);
  return s ? exchange(s, data) : '';
}

test(`identity allow-lists: CN, DNS and URI patterns, any match lets a client in; refused ones never reach the program (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  const certs: [string, string, string | undefined, boolean][] = [
    ['cn-one-label', '/CN=a.ops.example.org', undefined, true],
    ['cn-case', '/CN=B.Ops.EXAMPLE.org', undefined, true],
    ['cn-two-labels', '/CN=a.b.ops.example.org', undefined, false],
    ['cn-no-label', '/CN=ops.example.org', undefined, false],
    ['dns', '/CN=someone', 'DNS:other.example.org,DNS:Backup.OPS.example.org', true],
    ['dns-other', '/CN=someone-else', 'DNS:other.example.org,DNS:ops.example.org', false],
    ['uri', '/CN=svc', 'URI:spiffe://example.org/ns/prod/sa/backup', true],
    ['uri-no-rest', '/CN=svc2', 'URI:spiffe://example.org/ns/prod/', false],
    ['uri-case', '/CN=svc3', 'URI:spiffe://example.org/NS/prod/sa/backup', false],
    ['uri-dev', '/O=acme', 'URI:spiffe://example.org/ns/dev/sa/backup', false],
  ];
  for (const [name, subject, san] of certs) clientCert(dir, name, subject, san);
  const { srv, seen } = await countingEcho(t, dir);
  const ctl = join(dir, 'ctl');
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--control-socket', ctl,
    '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt'),
    '--tls-allow-cn', '*.ops.example.org', '--tls-allow-dns', 'backup.ops.example.org', '--tls-allow-uri', 'spiffe://example.org/ns/prod/*']);
  for (const [name, , , allowed] of certs) {
    const reply = await tlsExchange(bridge.port, dir, name, `I am ${name}`);
    assert.equal(reply, allowed ? `I am ${name}` : '', `${name}: ${allowed ? 'let in' : 'refused'}`);
  }
  const allowedCount = certs.filter((c) => c[3]).length;
  assert.equal(seen(), allowedCount, 'a refused identity reached the program');
  // Which identity, and why, with CLIENT_CN and CLIENT_SAN in the journal.
  const lists = '--tls-allow-cn \\*\\.ops\\.example\\.org, --tls-allow-dns backup\\.ops\\.example\\.org, --tls-allow-uri spiffe://example\\.org/ns/prod/\\*';
  await bridge.waitForLog(new RegExp(`TLS client 127\\.0\\.0\\.1:\\d+ refused: certificate CN "a\\.b\\.ops\\.example\\.org", no SAN DNS name or URI matches none of ${lists}`));
  await bridge.waitForLog(/refused: certificate CN "someone-else", SAN DNS:other\.example\.org, DNS:ops\.example\.org matches none/);
  await bridge.waitForLog(/refused: certificate no CN, SAN URI:spiffe:\/\/example\.org\/ns\/dev\/sa\/backup matches none/);
  // The same identity again: counted, not logged again (one line per identity every 10 s).
  for (let i = 0; i < 3; i++) assert.equal(await tlsExchange(bridge.port, dir, 'cn-two-labels', 'again'), '');
  const report = await status(ctl);
  assert.equal(report.sessions.deniedBy.identity, certs.length - allowedCount + 3);
  assert.equal(report.sessions.deniedBy.tls, 0);
  assert.equal(count(bridge, /CN "a\.b\.ops\.example\.org"/g), 1, bridge.log());
  assert.equal(seen(), allowedCount);
});

test(`--target-tls-allow-*: the far end's certificate is checked at the client end; a refusal is a failed connect (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  const { srv } = await countingEcho(t, dir);
  const server = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0',
    '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key')]);
  const clientEnd = (allow: string[]): Promise<BridgeProcess> => startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', `127.0.0.1:${server.port}`,
    '--check-interval', '0', '--connect-timeout', '1s', '--target-tls', 'on', '--target-tls-ca', join(dir, 'ca.crt'), ...allow]);
  const refusing = await clientEnd(['--target-tls-allow-cn', 'nomatch.example.org', '--target-tls-allow-uri', 'spiffe://example.org/*']);
  assert.equal(await exchangeFrom(refusing.port, '127.0.0.1', 'hello'), '');
  await refusing.waitForLog(/cannot connect to 127\.0\.0\.1:\d+ \(EPROTO: target certificate CN "server", SAN DNS:localhost matches none of --target-tls-allow-cn nomatch\.example\.org, --target-tls-allow-uri spiffe:\/\/example\.org\/\*\)/);
  const allowing = await clientEnd(['--target-tls-allow-dns', 'LOCALHOST', '--target-tls-allow-cn', 'nomatch.example.org']);
  assert.equal(await exchangeFrom(allowing.port, '127.0.0.1', 'hello'), 'hello');
});

// ---- per-source limits ---------------------------------------------------------------------------

test(`--max-conn-per-source: N sessions from one source, the next refused before anything is read; a session ending lets one in (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const { srv, seen } = await countingEcho(t, dir);
  const ctl = join(dir, 'ctl');
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--control-socket', ctl,
    '--max-conn-per-source', '2']);
  const a1 = await connectFrom(bridge.port, '127.0.0.2');
  const a2 = await connectFrom(bridge.port, '127.0.0.2');
  await echoOnce(a1, 'one');
  await echoOnce(a2, 'two');
  assert.equal(await exchangeFrom(bridge.port, '127.0.0.2', 'three'), '', 'a third from 127.0.0.2');
  assert.equal(await exchangeFrom(bridge.port, '127.0.0.3', 'other'), 'other', 'another source');
  assert.equal(seen(), 3);
  a1.end();
  await bridge.waitForLog(new RegExp(`session 127\\.0\\.0\\.2:${a1.localPort} closed`));
  const a3 = await connectFrom(bridge.port, '127.0.0.2');
  await echoOnce(a3, 'back in');
  assert.equal(await exchangeFrom(bridge.port, '127.0.0.2', 'four'), '', 'two open again');
  await bridge.waitForLog(/client 127\.0\.0\.2:\d+ refused: 2 sessions from 127\.0\.0\.2 are open already \(--max-conn-per-source 2\)/);
  assert.equal(count(bridge, /sessions from 127\.0\.0\.2 are open already/g), 1, 'one line per source per minute');
  const report = await status(ctl);
  assert.equal(report.sessions.deniedBy.concurrent, 2);
  assert.deepEqual(report.sources, { tracked: 1, live: 1, bound: 1 + IDLE_MAX });
  assert.equal(seen(), 4);
  a2.destroy();
  a3.destroy();
});

test(`--max-conn-per-source: clients held for a missing target count (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', join(dir, 'missing.sock'), '--check-interval', '0',
    '--connect-timeout', '20s', '--max-conn-per-source', '2']);
  const held = [await connectFrom(bridge.port, '127.0.0.4'), await connectFrom(bridge.port, '127.0.0.4')];
  for (const h of held) h.on('error', () => {});
  const third = await connectFrom(bridge.port, '127.0.0.4');
  await closedWithin(third, 5000);
  await bridge.waitForLog(/client 127\.0\.0\.4:\d+ refused: 2 sessions/);
  const other = await connectFrom(bridge.port, '127.0.0.5');
  other.on('error', () => {});
  await delay(200);
  assert.equal(other.destroyed || other.readableEnded, false, 'another source is held, not refused');
  for (const s of [...held, other]) s.destroy();
});

test(`--rate-per-source: N new connections per period from one source, then refused; other sources unaffected (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const { srv, seen } = await countingEcho(t, dir);
  const ctl = join(dir, 'ctl');
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--control-socket', ctl,
    '--rate-per-source', '3/30s']);
  for (let i = 0; i < 3; i++) assert.equal(await exchangeFrom(bridge.port, '127.0.0.6', `n${i}`), `n${i}`);
  assert.equal(await exchangeFrom(bridge.port, '127.0.0.6', 'n3'), '');
  assert.equal(await exchangeFrom(bridge.port, '127.0.0.6', 'n4'), '');
  assert.equal(await exchangeFrom(bridge.port, '127.0.0.7', 'other'), 'other');
  assert.equal(seen(), 4);
  await bridge.waitForLog(/client 127\.0\.0\.6:\d+ refused: 127\.0\.0\.6 opened 3 connections in the last 30s \(--rate-per-source 3\/30s\)/);
  assert.equal(count(bridge, /127\.0\.0\.6 opened 3 connections/g), 1, 'one line per source per minute');
  const report = await status(ctl);
  assert.equal(report.sessions.deniedBy.rate, 2);
  assert.equal(report.sessions.denied, 2);
  assert.equal(report.sources?.tracked, 2, 'both sources idle, kept for their windows');
});

test(`per-source table: a flood of 10,000 sources keeps it within live sources + ${IDLE_MAX} (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const { srv } = await countingEcho(t, dir);
  const ctl = join(dir, 'ctl');
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--control-socket', ctl,
    '--rate-per-source', '1000/1h', '--log-level', 'notice']);
  const sources = 10_000;
  const addressOf = (i: number): string => `127.1.${Math.floor(i / 250) + 1}.${(i % 250) + 1}`;
  let maxSeen = 0;
  for (let first = 0; first < sources; first += 200) {
    await Promise.all(Array.from({ length: Math.min(200, sources - first) }, async (_, k) => {
      const s = await connectFrom(bridge.port, addressOf(first + k));
      s.on('error', () => {});
      s.destroy();
    }));
    if (first % 1000 === 0) {
      const r = await status(ctl);
      assert.ok(r.sources && r.sources.tracked <= r.sources.bound, JSON.stringify(r.sources));
      maxSeen = Math.max(maxSeen, r.sources!.tracked);
    }
  }
  let report = await status(ctl);
  await waitFor(async () => {
    report = await status(ctl);
    return report.sessions.total === sources && report.sources?.live === 0;
  }, 20_000, 'every flooding session to end');
  assert.deepEqual(report.sources, { tracked: IDLE_MAX, live: 0, bound: IDLE_MAX });
  assert.equal(report.sessions.denied, 0);
  t.diagnostic(`largest table seen mid-flood: ${maxSeen}`);
});

// ---- PROXY headers from a trusted front ---------------------------------------------------------

/** A program that records what each connection sent until its EOF, then answers "ok". */
async function recordingProgram(t: TestContext, dir: string): Promise<{ path: string; firsts: Buffer[]; connections: () => number }> {
  const path = join(dir, 'app.sock');
  const firsts: Buffer[] = [];
  let connections = 0;
  const srv = await unixServer(path, (s) => {
    connections++;
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => { firsts.push(Buffer.concat(chunks)); s.end('ok'); });
  });
  t.after(() => srv.close());
  return { path, firsts, connections: () => connections };
}

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
function v2Header(verCmd: number, fam: number, body: Buffer): Buffer {
  const head = Buffer.from([verCmd, fam, 0, 0]);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIG, head, body]);
}
function inet(src: string, dst: string, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  Buffer.from(src.split('.').map(Number)).copy(b, 0);
  Buffer.from(dst.split('.').map(Number)).copy(b, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

test(`--accept-proxy from a trusted front: the real client is judged, logged and named to the program; anyone else is relayed as is (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const { path, firsts, connections } = await recordingProgram(t, dir);
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', path, '--check-interval', '0',
    '--accept-proxy', 'any', '--accept-proxy-from', '127.0.0.1/32', '--send-proxy', 'v1', '--deny', '192.0.2.66/32', '--max-conn-per-source', '1']);
  const from = (local: string, ...parts: (string | Buffer)[]): Promise<string> => connectFrom(bridge.port, local).then(async (s) => {
    for (const p of parts.slice(0, -1)) {
      s.write(p);
      await delay(50);
    }
    return exchange(s, parts[parts.length - 1]!);
  });
  // v1, the header and the request in one segment: the bytes after the header are the client's.
  assert.equal(await from('127.0.0.1', 'PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nhello'), 'ok');
  assert.equal(firsts.pop()!.toString(), 'PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nhello');
  await bridge.waitForLog(/session 192\.0\.2\.7:5555 closed \(done\), 5 bytes in, 2 bytes out/); // the front's header is not the client's
  // v2 with a TLV, in pieces.
  const v2 = v2Header(0x21, 0x11, Buffer.concat([inet('192.0.2.8', '198.51.100.1', 6666, 443), Buffer.from('040003000000', 'hex')]));
  assert.equal(await from('127.0.0.1', v2.subarray(0, 10), v2.subarray(10), 'there'), 'ok');
  assert.equal(firsts.pop()!.toString(), 'PROXY TCP4 192.0.2.8 198.51.100.1 6666 443\r\nthere');
  // IPv6 clients behind an IPv4 front.
  assert.equal(await from('127.0.0.1', 'PROXY TCP6 2001:db8::7 2001:db8::1 7777 443\r\nsix'), 'ok');
  assert.equal(firsts.pop()!.toString(), 'PROXY TCP6 2001:db8::7 2001:db8::1 7777 443\r\nsix');
  // LOCAL (a front's health check) and UNKNOWN: the front's own address.
  const local = await connectFrom(bridge.port, '127.0.0.1');
  const localPort = local.localPort!;
  assert.equal(await exchange(local, Buffer.concat([v2Header(0x20, 0x00, Buffer.alloc(0)), Buffer.from('check')])), 'ok');
  assert.equal(firsts.pop()!.toString(), `PROXY TCP4 127.0.0.1 127.0.0.1 ${localPort} ${bridge.port}\r\ncheck`);
  // The access list judges the real client, not the front.
  assert.equal(await from('127.0.0.1', 'PROXY TCP4 192.0.2.66 198.51.100.1 5555 443\r\nlet me in'), '');
  await bridge.waitForLog(/client 192\.0\.2\.66:5555 refused by --allow\/--deny/);
  // So do the per-source limits: one session at a time from 192.0.2.9, whichever front connection carries it.
  const held = await connectFrom(bridge.port, '127.0.0.1');
  const before = connections();
  held.write('PROXY TCP4 192.0.2.9 198.51.100.1 1 443\r\nfirst');
  await waitFor(() => connections() === before + 1, 5000, 'the first session from 192.0.2.9 to reach the program');
  assert.equal(await from('127.0.0.1', 'PROXY TCP4 192.0.2.9 198.51.100.1 2 443\r\nsecond'), '');
  await bridge.waitForLog(/client 192\.0\.2\.9:2 refused: 1 sessions from 192\.0\.2\.9 are open already/);
  assert.equal(await from('127.0.0.1', 'PROXY TCP4 192.0.2.10 198.51.100.1 3 443\r\nthird'), 'ok', 'the front itself is not limited as one source');
  firsts.pop();
  assert.equal(await exchange(held, ''), 'ok');
  assert.equal(firsts.pop()!.toString(), 'PROXY TCP4 192.0.2.9 198.51.100.1 1 443\r\nfirst');
  // From an untrusted address a PROXY header is just data: relayed as is, the peer named by its own address.
  const stranger = await connectFrom(bridge.port, '127.0.0.9');
  const strangerPort = stranger.localPort!;
  assert.equal(await exchange(stranger, 'PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nhello'), 'ok');
  assert.equal(firsts.pop()!.toString(), `PROXY TCP4 127.0.0.9 127.0.0.1 ${strangerPort} ${bridge.port}\r\nPROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nhello`);
});

/**
 * What a front may get wrong: each case's bytes (sent in order, a pause
 * between parts), and whether it then closes its side. Every one must close
 * that connection only, before the program sees a byte.
 */
export const BAD_PROXY_HEADERS: { what: string; parts: (string | Buffer)[]; fin: boolean; late?: boolean }[] = [
  { what: 'not a PROXY header', parts: ['GET / HTTP/1.0\r\n\r\n'], fin: false },
  { what: 'TLS instead of a header', parts: [Buffer.from('16030100', 'hex')], fin: false },
  { what: 'v1 unknown protocol', parts: ['PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n'], fin: false },
  { what: 'v1 address of the other family', parts: ['PROXY TCP4 ::1 ::1 1 2\r\n'], fin: false },
  { what: 'v1 port out of range', parts: ['PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n'], fin: false },
  { what: 'v1 lone LF', parts: ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nhello'], fin: false },
  { what: 'v1 too long (no CRLF in 107 bytes)', parts: [`PROXY UNKNOWN ${'x'.repeat(120)}`], fin: false },
  { what: 'v1 too long, in pieces', parts: ['PROXY UNKNOWN ', 'x'.repeat(60), 'x'.repeat(60)], fin: false },
  { what: 'v2 version 1', parts: [Buffer.concat([SIG, Buffer.from([0x11, 0x11, 0, 12])])], fin: false },
  { what: 'v2 command 2', parts: [Buffer.concat([SIG, Buffer.from([0x22, 0x11, 0, 12])])], fin: false },
  { what: 'v2 family 4', parts: [Buffer.concat([SIG, Buffer.from([0x21, 0x41, 0, 12])])], fin: false },
  { what: 'v2 length shorter than its addresses', parts: [v2Header(0x21, 0x11, Buffer.alloc(8))], fin: false },
  { what: 'v2 UDP', parts: [v2Header(0x21, 0x12, inet('1.2.3.4', '5.6.7.8', 1, 2))], fin: false },
  { what: 'truncated v2 (FIN mid-header)', parts: [v2Header(0x21, 0x11, inet('1.2.3.4', '5.6.7.8', 1, 2)).subarray(0, 20)], fin: true },
  { what: 'truncated v1 (FIN mid-line)', parts: ['PROXY TCP4 1.2.3.4 5.6.'], fin: true },
  { what: 'nothing, then FIN', parts: [''], fin: true },
  { what: 'late: nothing at all', parts: [], fin: false, late: true },
  { what: 'late: half a v1 line', parts: ['PROXY TCP4 1.2.'], fin: false, late: true },
  { what: 'late: v2 header announcing more than it sends', parts: [v2Header(0x21, 0x11, Buffer.alloc(40)).subarray(0, 30)], fin: false, late: true },
];

test(`--accept-proxy: a malformed, truncated, too long or late header closes only that connection (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const { srv, seen } = await countingEcho(t, dir);
  const ctl = join(dir, 'ctl');
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', srv.path, '--check-interval', '0', '--control-socket', ctl,
    '--accept-proxy', 'any', '--accept-proxy-from', '127.0.0.0/24', '--client-timeout', '1s']);
  // A good session through the same front, echoing throughout.
  const good = await connectFrom(bridge.port, '127.0.0.1');
  good.write('PROXY TCP4 192.0.2.20 198.51.100.1 1000 443\r\n');
  await echoOnce(good, 'start');
  let echoes = 0;
  let stopped = false;
  const pinger = (async () => {
    while (!stopped) {
      await echoOnce(good, `ping ${echoes}`);
      echoes++;
      await delay(100);
    }
  })();
  for (const c of BAD_PROXY_HEADERS) {
    const s = await connectFrom(bridge.port, '127.0.0.1');
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString(); });
    s.on('error', () => {});
    const started = Date.now();
    for (const [i, p] of c.parts.entries()) {
      if (i > 0) await delay(50);
      s.write(p);
    }
    if (c.fin) s.end();
    await closedWithin(s, 4000).catch((err: Error) => { throw new Error(`${c.what}: ${err.message}`); });
    const took = Date.now() - started;
    if (c.late) assert.ok(took >= 900, `${c.what}: closed after ${took} ms, before the 1 s deadline`);
    else assert.ok(took < 900, `${c.what}: closed after ${took} ms, as if late`);
    assert.equal(got, '', `${c.what}: got a reply`);
  }
  stopped = true;
  await pinger;
  await echoOnce(good, 'still here');
  assert.ok(echoes >= 5, `the good session echoed ${echoes} times`);
  assert.equal(seen(), 1, 'a bad header reached the program');
  await bridge.waitForLog(/client 127\.0\.0\.1:\d+ \(a trusted front\) sent a PROXY header that was refused, connection closed: not a PROXY protocol header/);
  assert.equal(count(bridge, /sent a PROXY header that was refused/g), 1, 'rate-limited: one line per front every 10 s');
  const report = await status(ctl);
  assert.equal(report.sessions.deniedBy.proxy, BAD_PROXY_HEADERS.length);
  good.destroy();
});

test(`--accept-proxy v1 refuses a v2 header, and a front's header goes before TLS (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  const { path, firsts } = await recordingProgram(t, dir);
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', path, '--check-interval', '0',
    '--accept-proxy', 'v1', '--accept-proxy-from', '127.0.0.1', '--send-proxy', 'v2',
    '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt')]);
  const v2only = await connectFrom(bridge.port, '127.0.0.1');
  v2only.on('error', () => {});
  v2only.write(v2Header(0x20, 0x00, Buffer.alloc(0)));
  await closedWithin(v2only, 3000);
  await bridge.waitForLog(/a PROXY v2 header, but only v1 is accepted/);

  // The front's header, then the client's TLS, on one connection.
  const raw = await connectFrom(bridge.port, '127.0.0.1');
  raw.write('PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\n');
  const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({
      socket: raw, servername: 'app.example.org', ca: readFileSync(join(dir, 'ca.crt')),
      cert: readFileSync(join(dir, 'client.crt')), key: readFileSync(join(dir, 'client.key')),
      checkServerIdentity: () => undefined, // the test's SNI is not a name of the server's certificate
    }, () => resolve(s));
    s.once('error', reject);
  });
  const version = secure.getProtocol()!;
  const cipher = secure.getCipher().name;
  assert.equal(await exchange(secure, 'hello'), 'ok');
  const got = parseV2(firsts.pop()!);
  assert.deepEqual(got.addresses, { src: '192.0.2.7', dst: '198.51.100.1', srcPort: 5555, dstPort: 443 });
  assert.deepEqual(got.tlvs.map((tv) => tv.type), [0x02, 0x20], 'AUTHORITY, then SSL');
  assert.equal(got.tlvs[0]!.value.toString(), 'app.example.org');
  const ssl = got.tlvs[1]!.value;
  assert.equal(ssl[0], 0x07, 'PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS');
  assert.equal(ssl.readUInt32BE(1), 0, 'verified');
  const subs = tlvs(ssl.subarray(5));
  assert.deepEqual(subs.map((s) => [s.type, s.value.toString()]), [[0x21, version], [0x22, 'client'], [0x23, cipher]]);
  assert.equal(got.rest.toString(), 'hello');
  await bridge.waitForLog(/session 192\.0\.2\.7:5555 closed \(done\)/);
});

/** A small reader of what the program got: a v2 header's addresses and TLVs, and the bytes after it. */
function parseV2(buf: Buffer): { addresses: { src: string; dst: string; srcPort: number; dstPort: number }; tlvs: { type: number; value: Buffer }[]; rest: Buffer } {
  assert.ok(buf.subarray(0, 12).equals(SIG), 'a v2 signature');
  assert.equal(buf[12], 0x21);
  assert.equal(buf[13], 0x11);
  const len = buf.readUInt16BE(14);
  const body = buf.subarray(16, 16 + len);
  return {
    addresses: { src: Array.from(body.subarray(0, 4)).join('.'), dst: Array.from(body.subarray(4, 8)).join('.'), srcPort: body.readUInt16BE(8), dstPort: body.readUInt16BE(10) },
    tlvs: tlvs(body.subarray(12)),
    rest: buf.subarray(16 + len),
  };
}

function tlvs(b: Buffer): { type: number; value: Buffer }[] {
  const out: { type: number; value: Buffer }[] = [];
  for (let i = 0; i < b.length;) {
    const n = b.readUInt16BE(i + 1);
    out.push({ type: b[i]!, value: b.subarray(i + 3, i + 3 + n) });
    i += 3 + n;
  }
  assert.equal(out.reduce((a, tv) => a + 3 + tv.value.length, 0), b.length, 'TLVs fill the header exactly');
  return out;
}

// ---- open to all ---------------------------------------------------------------------------------

const OPEN = /accepting on .* beyond loopback with neither client certificates nor an allow list: anyone who can reach the port can drive the program's socket — require client certificates \(--tls-cert, --tls-key and --tls-ca\) or let known addresses in only \(--deny any --allow 192\.0\.2\.0\/24\)/;

test(`open to all: warned at start and reload when listening beyond loopback with neither client certificates nor an allow list (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  const { srv } = await countingEcho(t, dir);
  const ctl = join(dir, 'ctl');
  const conf = join(dir, 'bridge.conf');
  writeFileSync(conf, `listen = 0.0.0.0:0\ntarget = ${srv.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n`);
  const open = await startBridge(t, ['--relay', RELAY, '--config', conf]);
  await open.waitForLog(OPEN);
  const report = await status(ctl);
  assert.equal(report.exposure.openToAll, true);
  assert.match(report.exposure.why, /accepting on 0\.0\.0\.0:0 beyond loopback/);
  open.child.kill('SIGHUP');
  await open.waitForLog(/configuration reloaded/);
  await waitFor(() => count(open, new RegExp(OPEN.source, 'g')) === 2, 5000, 'the warning again at reload');
  const checked = await runBridge(['check-config', '--config', conf]);
  assert.match(checked.stdout, /^# exposure: OPEN TO ALL: accepting on 0\.0\.0\.0:0 beyond loopback/m);

  // Closed: an allow list, client certificates, loopback only. (Warned at start before "listening on".)
  const closed: [string[], string][] = [
    [['--listen', '0.0.0.0:0', '--deny', 'any', '--allow', '127.0.0.1'], 'an allow list (--deny any --allow 127.0.0.1/32)'],
    [['--listen', '0.0.0.0:0', '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt')], 'client certificates required (--tls-ca)'],
    [['--listen', '127.0.0.1:0'], 'TCP listeners on loopback only'],
  ];
  for (const [args, why] of closed) {
    const ctl2 = join(dir, `ctl-${closed.findIndex((c) => c[0] === args)}`);
    const b = await startBridge(t, ['--relay', RELAY, '--target', srv.path, '--check-interval', '0', '--control-socket', ctl2, ...args]);
    assert.doesNotMatch(b.log(), /beyond loopback/, args.join(' '));
    assert.deepEqual((await status(ctl2)).exposure, { openToAll: false, why });
    const c = await runBridge(['check-config', '--target', srv.path, ...args]);
    assert.match(c.stdout, new RegExp(`^# exposure: closed: ${why.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`, 'm'));
    await b.stop();
  }
});

// ---- peer credentials ------------------------------------------------------------------------------

test('--allow-uid and --allow-gid with the TypeScript relay: refused at start, one line, exit 78', async (t) => {
  const dir = tempDir(t);
  const { srv } = await countingEcho(t, dir);
  for (const option of ['--allow-uid', '--allow-gid']) {
    const r = await runBridge(['--relay', 'js', '--log-target', 'stderr', '--listen', join(dir, 'in.sock'), '--target', srv.path, '--check-interval', '0', option, '0']);
    assert.equal(r.code, 78, r.stderr);
    assertOneCleanLine(r.stderr, option, 'needs the native data plane', 'ECONFIG_PEERCRED');
  }
});

test(`HAProxy reads what --send-proxy v2 writes, TLVs included: the client's address, and its SNI as the authority (fc_pp_authority) (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  makePki(dir);
  // The program behind HAProxy: a TCP echo.
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
  t.after(() => echo.close());
  const haPort = await freePort();
  writeFileSync(join(dir, 'haproxy.cfg'), [
    'global', '  log stdout format raw local0',
    'defaults', '  mode tcp', '  log global', '  timeout connect 5s', '  timeout client 10s', '  timeout server 10s',
    'frontend fe', `  bind 127.0.0.1:${haPort} accept-proxy`,
    '  log-format "pp src=%ci:%cp authority=%[fc_pp_authority]"', '  default_backend be',
    'backend be', `  server echo 127.0.0.1:${(echo.address() as net.AddressInfo).port}`, '',
  ].join('\n'));
  const ha = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => { ha.kill('SIGKILL'); });
  let haLog = '';
  ha.stdout.on('data', (d: Buffer) => { haLog += d.toString(); });
  ha.stderr.on('data', (d: Buffer) => { haLog += d.toString(); });
  await waitFor(() => listeningOn(haPort), 10_000, `HAProxy listening on ${haPort} (output: ${haLog})`);

  const bridge = await startBridge(t, ['--listen', '127.0.0.1:0', '--target', `127.0.0.1:${haPort}`, '--check-interval', '0', '--send-proxy', 'v2',
    '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt'), '--relay', RELAY]);
  const client = await tlsConnect(bridge.port, dir, 'client', { servername: 'localhost' });
  t.after(() => client.destroy());
  const clientPort = client.localPort;
  assert.equal(await exchange(client, 'through HAProxy'), 'through HAProxy');
  await waitFor(() => /pp src=/.test(haLog), 10_000, `HAProxy's log line (output: ${haLog})`);
  assert.match(haLog, new RegExp(`pp src=127\\.0\\.0\\.1:${clientPort} authority=localhost`), haLog);
});

/** Whether a TCP socket listens on 127.0.0.1:port (/proc/net/tcp, state 0A). */
function listeningOn(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').some((l) => l.includes(`:${hex} `) && / 0A /.test(l));
}
