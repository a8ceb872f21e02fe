// Who may connect, and how much (issue 20), the TypeScript twins of the
// data plane's rules, pinned at their edges without processes: identity
// allow-lists, per-source limits (exact counts, the sliding window's exact
// arithmetic, the table's bound under a flood), the PROXY header reader,
// the TLVs written on, the rate-limited refusal log, and "open to all".

import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import type tls from 'node:tls';
import { ConfigError } from '../src/errors';
import { exposure, hasAllowList, isLoopback, procLocalAddress } from '../src/listen/exposure';
import { describeIdentity, identityAllowed, IdentityRules, identityOf, nameMatches, PeerIdentity, resolveIds, splitAltNames, uriMatches } from '../src/listen/identity';
import type { ListenSpec } from '../src/listen/listeners';
import { notLogged, RepeatLimiter } from '../src/listen/refusals';
import { IDLE_MAX, SourceLimits, sourceKey } from '../src/listen/source-limits';
import { buildReport, renderMetrics, renderStatus } from '../src/operator/status';
import { defaults } from '../src/options';
import { formatIPv6, parseProxyHeader, ProxyParse, proxyHeader } from '../src/session/proxy-protocol';

// ---- identity -----------------------------------------------------------------------------

test('identity: "*" is exactly one whole leftmost label, and case is ignored', () => {
  const p = '*.ops.example.org';
  assert.equal(nameMatches(p, 'a.ops.example.org'), true);
  assert.equal(nameMatches(p, 'backup-1.ops.example.org'), true);
  assert.equal(nameMatches(p, 'A.OPS.Example.ORG'), true, 'case');
  assert.equal(nameMatches(p, 'ops.example.org'), false, 'no label for the star');
  assert.equal(nameMatches(p, '.ops.example.org'), false, 'an empty label');
  assert.equal(nameMatches(p, 'a.b.ops.example.org'), false, 'two labels');
  assert.equal(nameMatches(p, 'a.ops.example.org.evil'), false);
  assert.equal(nameMatches(p, 'aops.example.org'), false);
  // A certificate's own wildcard is a literal label, not expanded.
  assert.equal(nameMatches(p, '*.ops.example.org'), true);
  assert.equal(nameMatches('a.ops.example.org', '*.ops.example.org'), false);
  // Exact names: case ignored, nothing else.
  assert.equal(nameMatches('backup.ops.example.org', 'BACKUP.ops.example.org'), true);
  assert.equal(nameMatches('backup.ops.example.org', 'backup.ops.example.org.'), false);
  assert.equal(nameMatches('backup.ops.example.org', 'x.backup.ops.example.org'), false);
});

test('identity: a URI is exact and case-sensitive, or a "/*" prefix with at least one more character', () => {
  const p = 'spiffe://example.org/ns/prod/*';
  assert.equal(uriMatches(p, 'spiffe://example.org/ns/prod/sa/backup'), true);
  assert.equal(uriMatches(p, 'spiffe://example.org/ns/prod/x'), true);
  assert.equal(uriMatches(p, 'spiffe://example.org/ns/prod/'), false, 'no remainder');
  assert.equal(uriMatches(p, 'spiffe://example.org/ns/prod'), false, 'not even the slash');
  assert.equal(uriMatches(p, 'spiffe://example.org/ns/production/x'), false, 'a prefix of a segment');
  assert.equal(uriMatches(p, 'spiffe://example.org/NS/prod/x'), false, 'case');
  assert.equal(uriMatches(p, 'SPIFFE://example.org/ns/prod/x'), false, 'case, even of the scheme');
  const exact = 'spiffe://example.org/ns/prod/sa/backup';
  assert.equal(uriMatches(exact, exact), true);
  assert.equal(uriMatches(exact, `${exact}/more`), false);
  assert.equal(uriMatches(exact, exact.toUpperCase()), false);
});

test('identity: any one match lets a peer in; no list lets any verified certificate in', () => {
  const none: IdentityRules = { cn: [], dns: [], uri: [] };
  const nobody: PeerIdentity = { cn: undefined, dns: [], uri: [] };
  assert.equal(identityAllowed(none, nobody), true, 'no list: as before');
  const rules: IdentityRules = { cn: ['*.ops.example.org', 'admin'], dns: ['backup.example.org'], uri: ['spiffe://example.org/ns/prod/*'] };
  assert.equal(identityAllowed(rules, nobody), false, 'a list and no names');
  assert.equal(identityAllowed(rules, { cn: 'ADMIN', dns: [], uri: [] }), true, 'the second CN pattern');
  assert.equal(identityAllowed(rules, { cn: 'a.ops.example.org', dns: [], uri: [] }), true);
  assert.equal(identityAllowed(rules, { cn: 'x', dns: ['other.example.org', 'Backup.Example.org'], uri: [] }), true, 'any of its DNS names');
  assert.equal(identityAllowed(rules, { cn: 'x', dns: [], uri: ['spiffe://example.org/ns/dev/a', 'spiffe://example.org/ns/prod/a'] }), true, 'any of its URIs');
  assert.equal(identityAllowed(rules, { cn: 'backup.example.org', dns: ['admin'], uri: [] }), false, 'a CN is not judged by DNS patterns, nor a DNS name by CN patterns');
  assert.equal(identityAllowed(rules, { cn: 'spiffe://example.org/ns/prod/a', dns: [], uri: [] }), false);
  assert.equal(identityAllowed({ cn: [], dns: [], uri: ['spiffe://e/x'] }, { cn: 'anything', dns: ['anything'], uri: [] }), false, 'only a URI list: CN and DNS do not count');
});

test('identity: the names Node reports, quoted values decoded, the last CN', () => {
  assert.deepEqual(splitAltNames('DNS:a.example, URI:spiffe://e/x, IP Address:127.0.0.1, DNS:"we, ird", email:a@b'), [
    { type: 'DNS', value: 'a.example' }, { type: 'URI', value: 'spiffe://e/x' }, { type: 'IP Address', value: '127.0.0.1' },
    { type: 'DNS', value: 'we, ird' }, { type: 'email', value: 'a@b' },
  ]);
  const cert = { subject: { CN: ['first.example', 'last.example'] }, subjectaltname: 'DNS:x.example, URI:spiffe://e/a, IP Address:127.0.0.1, URI:"spiffe://e/b,c"' } as unknown as tls.PeerCertificate;
  const peer = identityOf(cert);
  assert.deepEqual(peer, { cn: 'last.example', dns: ['x.example'], uri: ['spiffe://e/a', 'spiffe://e/b,c'] });
  assert.equal(describeIdentity(peer), 'CN "last.example", SAN DNS:x.example, URI:spiffe://e/a, URI:spiffe://e/b,c');
  assert.deepEqual(identityOf({ subject: {} } as unknown as tls.PeerCertificate), { cn: undefined, dns: [], uri: [] });
  assert.equal(describeIdentity({ cn: undefined, dns: [], uri: [] }), 'no CN, no SAN DNS name or URI');
});

test('resolveIds: numbers as they are, names through getent, an unknown name names its option', () => {
  assert.deepEqual(resolveIds(['0', '1000', 'root'], 'passwd'), [0, 1000, 0]);
  assert.deepEqual(resolveIds(['root'], 'group'), [0]);
  assert.throws(() => resolveIds(['no-such-user-sockbridge'], 'passwd'), (err: unknown) =>
    err instanceof ConfigError && err.option === 'allow-uid' && /--allow-uid: no user "no-such-user-sockbridge" exists/.test(err.message));
  assert.throws(() => resolveIds(['no-such-group-sockbridge'], 'group'), (err: unknown) => err instanceof ConfigError && err.option === 'allow-gid');
});

// ---- per-source limits ----------------------------------------------------------------------

test('per-source: N concurrent sessions, then refused; a release lets exactly one more in', () => {
  const l = new SourceLimits(3, undefined, 64);
  for (let i = 0; i < 3; i++) assert.equal(l.admit('127.0.0.2', 0), 'ok');
  assert.equal(l.admit('127.0.0.2', 0), 'concurrent');
  assert.equal(l.admit('127.0.0.2', 5), 'concurrent');
  assert.equal(l.admit('127.0.0.3', 0), 'ok', 'another source');
  l.release('127.0.0.2');
  assert.equal(l.admit('127.0.0.2', 10), 'ok');
  assert.equal(l.admit('127.0.0.2', 10), 'concurrent');
  assert.equal(l.size, 2);
  for (let i = 0; i < 3; i++) l.release('127.0.0.2');
  l.release('127.0.0.3');
  l.release('127.0.0.3'); // one too many: ignored
  assert.equal(l.size, 0, 'without a rate limit nothing idle is kept');
  assert.equal(l.admit('', 0), 'ok', 'a UNIX client is not limited by source');
  assert.equal(l.size, 0);
});

test('per-source rate: N per period, then the sliding window over two periods, to the millisecond', () => {
  const l = new SourceLimits(0, { count: 10, periodMs: 1000 }, 64);
  const admitted: number[] = [];
  // One attempt every millisecond for three periods; each admitted connection ends at once (the rate is about new ones).
  for (let t = 0; t < 3000; t++) {
    if (l.admit('127.0.0.4', t) === 'ok') {
      admitted.push(t);
      l.release('127.0.0.4');
    }
  }
  // First window: the first 10 attempts. Then the previous window weighs 10 * (1000 - e) / 1000:
  // the k-th connection of a window gets in once cur*1000 + 10*(1000 - e) < 10000, at e = 100*(k-1) + 1.
  const next = (start: number): number[] => Array.from({ length: 10 }, (_, k) => start + 100 * k + 1);
  assert.deepEqual(admitted, [...Array.from({ length: 10 }, (_, i) => i), ...next(1000), ...next(2000)]);

  // Exact edges: at the window's first millisecond the previous window counts whole.
  const e = new SourceLimits(0, { count: 2, periodMs: 1000 }, 64);
  assert.equal(e.admit('127.0.0.5', 0), 'ok');
  assert.equal(e.admit('127.0.0.5', 500), 'ok');
  assert.equal(e.admit('127.0.0.5', 999), 'rate');
  assert.equal(e.admit('127.0.0.5', 1000), 'rate', 'rate = 0 + 2 * 1000/1000 = 2');
  assert.equal(e.admit('127.0.0.5', 1001), 'ok', '2 * 999/1000 < 2');
  assert.equal(e.admit('127.0.0.5', 1499), 'rate', '1 + 2 * 501/1000 >= 2');
  assert.equal(e.admit('127.0.0.5', 1500), 'rate', '1 + 2 * 500/1000 = 2');
  assert.equal(e.admit('127.0.0.5', 1501), 'ok', '1 + 2 * 499/1000 < 2');
  // Quiet for a whole window or more: as new, the window starting now.
  assert.equal(e.admit('127.0.0.5', 5000), 'ok');
  assert.equal(e.admit('127.0.0.5', 5001), 'ok');
  assert.equal(e.admit('127.0.0.5', 5002), 'rate');
  assert.equal(e.admit('127.0.0.6', 5002), 'ok', 'another source');
});

test('per-source: refused attempts count for nothing; concurrent is judged before rate', () => {
  const l = new SourceLimits(1, { count: 1, periodMs: 1000 }, 64);
  assert.equal(l.admit('127.0.0.7', 0), 'ok');
  assert.equal(l.admit('127.0.0.7', 1), 'concurrent', 'over both: concurrent');
  l.release('127.0.0.7');
  for (let t = 2; t < 1000; t++) assert.equal(l.admit('127.0.0.7', t), 'rate');
  assert.equal(l.admit('127.0.0.7', 1000), 'rate');
  assert.equal(l.admit('127.0.0.7', 1001), 'ok', 'a thousand refusals did not add to the rate');
});

test('per-source: IPv6 clients grouped by --source-prefix-v6, IPv4-mapped ones are IPv4 /32', () => {
  assert.equal(sourceKey('2001:db8:1:2::1', 64), '2001:db8:1:2::/64');
  assert.equal(sourceKey('2001:db8:1:2:ffff:ffff:ffff:ffff', 64), '2001:db8:1:2::/64');
  assert.equal(sourceKey('2001:db8:1:3::1', 64), '2001:db8:1:3::/64');
  assert.equal(sourceKey('2001:db8:1:2::1', 48), '2001:db8:1::/48');
  assert.equal(sourceKey('2001:db8:1:2::1', 128), '2001:db8:1:2::1/128');
  assert.equal(sourceKey('2001:db8:ffff::', 36), '2001:db8:f000::/36');
  assert.equal(sourceKey('::ffff:127.0.0.5', 64), '127.0.0.5');
  assert.equal(sourceKey('127.0.0.5', 64), '127.0.0.5');
  assert.equal(sourceKey('', 64), undefined);
  const l = new SourceLimits(2, undefined, 64);
  assert.equal(l.admit('2001:db8:1:2::1', 0), 'ok');
  assert.equal(l.admit('2001:db8:1:2:aaaa::7', 0), 'ok');
  assert.equal(l.admit('2001:db8:1:2:bbbb::9', 0), 'concurrent', 'the same /64');
  assert.equal(l.admit('2001:db8:1:3::1', 0), 'ok');
  assert.equal(l.admit('::ffff:127.0.0.8', 0), 'ok');
  assert.equal(l.admit('127.0.0.8', 0), 'ok');
  assert.equal(l.admit('::ffff:127.0.0.8', 0), 'concurrent', 'mapped and plain are one source');
  assert.equal(l.admit('127.0.0.9', 0), 'ok', 'IPv4 is per address');
});

test(`per-source: a flood of 10,000 sources keeps the table within live sources + ${IDLE_MAX} idle ones`, () => {
  const l = new SourceLimits(5, { count: 100, periodMs: 60_000 }, 64);
  const held: string[] = [];
  let peak = 0;
  for (let i = 0; i < 10_000; i++) {
    const addr = `127.${(i >> 16) & 0xff}.${(i >> 8) & 0xff}.${i & 0xff}`;
    assert.equal(l.admit(addr, i), 'ok');
    if (i % 50 === 0) held.push(addr); // some stay open: live entries, never evicted
    else l.release(addr);
    assert.ok(l.size <= l.bound, `at ${i}: ${l.size} entries, bound ${l.bound}`);
    peak = Math.max(peak, l.size);
  }
  assert.equal(l.live, held.length);
  assert.equal(l.size, held.length + IDLE_MAX, 'idle entries capped, live ones all kept');
  assert.equal(peak, held.length + IDLE_MAX);
  // The live ones still count: the held sources are each at one session.
  for (const a of held) l.release(a);
  assert.equal(l.live, 0);
  assert.equal(l.size, IDLE_MAX);
  // A window later every idle entry has lapsed: dropped at the next admit.
  assert.equal(l.admit('127.255.0.1', 10_000 + 120_000), 'ok');
  assert.equal(l.size, 1);
});

test('per-source: past the idle bound the least recently seen idle source is forgotten', () => {
  const l = new SourceLimits(0, { count: 1, periodMs: 60_000 }, 64, 3);
  for (const a of ['127.0.1.1', '127.0.1.2', '127.0.1.3']) {
    assert.equal(l.admit(a, 0), 'ok');
    l.release(a);
  }
  assert.equal(l.admit('127.0.1.1', 1), 'rate', 'a refused attempt: .1 seen again');
  assert.equal(l.admit('127.0.1.4', 2), 'ok');
  l.release('127.0.1.4'); // a fourth idle one: .2, the least recently seen, goes
  assert.equal(l.size, 3);
  assert.equal(l.admit('127.0.1.2', 3), 'ok', '.2 forgotten: starts afresh');
  assert.equal(l.admit('127.0.1.1', 3), 'rate', '.1 kept');
  assert.equal(l.admit('127.0.1.3', 3), 'rate', '.3 kept');
});

// ---- reading a front's PROXY header ------------------------------------------------------------

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const v2 = (verCmd: number, fam: number, body: Buffer): Buffer => {
  const head = Buffer.from([verCmd, fam, 0, 0]);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIG, head, body]);
};
const INET_BODY = Buffer.from('c0000207c633640115b301bb', 'hex'); // 192.0.2.7 → 198.51.100.1, 5555 → 443
const INET6_BODY = Buffer.concat([Buffer.from('20010db8000000000000000000000007', 'hex'), Buffer.from('20010db8000000000000000000000001', 'hex'), Buffer.from('15b301bb', 'hex')]);
const NOOP_TLV = Buffer.from('040003000000', 'hex'); // PP2_TYPE_NOOP, 3 bytes

const GOOD: { what: string; buf: Buffer; accept?: 'v1' | 'v2' | 'any'; want: Omit<Extract<ProxyParse, { kind: 'ok' }>, 'kind' | 'length'> }[] = [
  { what: 'v1 TCP4', buf: Buffer.from('PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\n'), want: { local: false, src: { address: '192.0.2.7', port: 5555 }, dst: { address: '198.51.100.1', port: 443 } } },
  { what: 'v1 TCP6', buf: Buffer.from('PROXY TCP6 2001:DB8:0:0::7 2001:db8::1 5555 443\r\n'), want: { local: false, src: { address: '2001:db8::7', port: 5555 }, dst: { address: '2001:db8::1', port: 443 } } },
  { what: 'v1 TCP6 mapped', buf: Buffer.from('PROXY TCP6 ::ffff:192.0.2.7 ::1 0 65535\r\n'), want: { local: false, src: { address: '::ffff:192.0.2.7', port: 0 }, dst: { address: '::1', port: 65535 } } },
  { what: 'v1 UNKNOWN', buf: Buffer.from('PROXY UNKNOWN\r\n'), want: { local: true } },
  { what: 'v1 UNKNOWN, worst case (107 bytes)', buf: Buffer.from(`PROXY UNKNOWN ${'ffff:'.repeat(7)}ffff ${'ffff:'.repeat(7)}ffff 65535 65535\r\n`), want: { local: true } },
  { what: 'v2 PROXY INET', buf: v2(0x21, 0x11, INET_BODY), want: { local: false, src: { address: '192.0.2.7', port: 5555 }, dst: { address: '198.51.100.1', port: 443 } } },
  { what: 'v2 PROXY INET6', buf: v2(0x21, 0x21, INET6_BODY), want: { local: false, src: { address: '2001:db8::7', port: 5555 }, dst: { address: '2001:db8::1', port: 443 } } },
  { what: 'v2 PROXY INET with a TLV', buf: v2(0x21, 0x11, Buffer.concat([INET_BODY, NOOP_TLV])), want: { local: false, src: { address: '192.0.2.7', port: 5555 }, dst: { address: '198.51.100.1', port: 443 } } },
  { what: 'v2 LOCAL', buf: v2(0x20, 0x00, Buffer.alloc(0)), want: { local: true } },
  { what: 'v2 LOCAL with addresses', buf: v2(0x20, 0x11, INET_BODY), want: { local: true } },
  { what: 'v2 PROXY UNSPEC', buf: v2(0x21, 0x00, NOOP_TLV), want: { local: true } },
  { what: 'v2 PROXY UNIX', buf: v2(0x21, 0x31, Buffer.alloc(216)), want: { local: true } },
  { what: 'v1 only', buf: Buffer.from('PROXY UNKNOWN\r\n'), accept: 'v1', want: { local: true } },
  { what: 'v2 only', buf: v2(0x20, 0x00, Buffer.alloc(0)), accept: 'v2', want: { local: true } },
];

test('PROXY header: good v1 and v2 headers, and what follows them is the client\'s', () => {
  for (const g of GOOD) {
    const r = parseProxyHeader(Buffer.concat([g.buf, Buffer.from('GET / HTTP/1.0\r\n')]), g.accept ?? 'any');
    assert.deepEqual(r, { kind: 'ok', length: g.buf.length, ...g.want }, g.what);
  }
  assert.equal(GOOD[4]!.buf.length, 107);
});

test('PROXY header: truncated at every byte is incomplete, never an error', () => {
  for (const g of GOOD) {
    for (let n = 0; n < g.buf.length; n++) assert.deepEqual(parseProxyHeader(g.buf.subarray(0, n), g.accept ?? 'any'), { kind: 'incomplete' }, `${g.what} at ${n} bytes`);
  }
});

test('PROXY header: malformed, too long or of a version not accepted is an error at once', () => {
  const bad: [string, Buffer, RegExp, ('v1' | 'v2' | 'any')?][] = [
    ['not a header', Buffer.from('GET / HTTP/1.0\r\n'), /not a PROXY protocol header/],
    ['TLS instead', Buffer.from([0x16, 0x03, 0x01]), /not a PROXY protocol header/],
    ['a bad signature', Buffer.concat([SIG.subarray(0, 11), Buffer.from([0x0b])]), /not a PROXY/],
    ['v1 unknown protocol', Buffer.from('PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n'), /unknown v1 protocol "TCP5"/],
    ['v1 IPv6 in TCP4', Buffer.from('PROXY TCP4 ::1 ::1 1 2\r\n'), /not IPv4/],
    ['v1 IPv4 in TCP6', Buffer.from('PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n'), /not IPv6/],
    ['v1 octet 256', Buffer.from('PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n'), /not IPv4/],
    ['v1 leading zero octet', Buffer.from('PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n'), /not IPv4/],
    ['v1 leading zero port', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n'), /port/],
    ['v1 port 65536', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n'), /port/],
    ['v1 two spaces', Buffer.from('PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n'), /one space apart/],
    ['v1 missing a port', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n'), /one space apart/],
    ['v1 zone', Buffer.from('PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n'), /not IPv6/],
    ['v1 lone LF', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'), /lone LF/],
    ['v1 lone CR', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX'), /lone CR/],
    ['v1 too long', Buffer.from(`PROXY UNKNOWN ${'x'.repeat(93)}`), /within 107 bytes/],
    ['v1 108 bytes with its CRLF', Buffer.from(`PROXY UNKNOWN ${'x'.repeat(92)}\r\n`), /within 107 bytes/],
    ['v2 version 1', Buffer.concat([SIG, Buffer.from([0x11])]), /version 1/],
    ['v2 command 2', Buffer.concat([SIG, Buffer.from([0x22])]), /command 2/],
    ['v2 family 4', Buffer.concat([SIG, Buffer.from([0x21, 0x41])]), /address family 4/],
    ['v2 protocol 3', Buffer.concat([SIG, Buffer.from([0x21, 0x13])]), /transport protocol 3/],
    ['v2 INET length 8', v2(0x21, 0x11, Buffer.alloc(8)), /length of 8, shorter than the 12/],
    ['v2 INET6 length 12', v2(0x21, 0x21, Buffer.alloc(12)), /length of 12, shorter than the 36/],
    ['v2 UNIX length 36', v2(0x21, 0x31, Buffer.alloc(36)), /shorter than the 216/],
    ['v2 INET length 8, judged before the rest arrives', v2(0x21, 0x11, Buffer.alloc(8)).subarray(0, 16), /shorter/],
    ['v2 UDP', v2(0x21, 0x12, INET_BODY), /datagram/],
    ['v2 when v1 only', v2(0x20, 0x00, Buffer.alloc(0)), /v2 header, but only v1/, 'v1'],
    ['the start of a v2 signature when v1 only', SIG.subarray(0, 3), /v2 header, but only v1/, 'v1'],
    ['v1 when v2 only', Buffer.from('PROXY UNKNOWN\r\n'), /v1 header, but only v2/, 'v2'],
  ];
  for (const [what, buf, why, accept] of bad) {
    const r = parseProxyHeader(buf, accept ?? 'any');
    assert.equal(r.kind, 'error', `${what}: ${JSON.stringify(r)}`);
    assert.match((r as { why: string }).why, why, what);
  }
});

// ---- the PROXY header sent on, with TLVs ----------------------------------------------------------

const ENDS = { remoteAddress: '192.0.2.7', remotePort: 5555, localAddress: '::ffff:198.51.100.1', localPort: 443 };

test('--send-proxy v2 TLVs: AUTHORITY, then SSL (version, CN, cipher), then 0xE0, byte for byte', () => {
  const header = proxyHeader('v2', ENDS, { ssl: { verified: true, cn: 'client', version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', sni: 'app.example.org' } });
  assert.equal(header.toString('hex'), [
    '0d0a0d0a000d0a515549540a', '21', '11', '0052', // PROXY, TCP over IPv4, 12 + 18 + 52 bytes
    'c0000207', 'c6336401', '15b3', '01bb',
    '02', '000f', Buffer.from('app.example.org').toString('hex'), // PP2_TYPE_AUTHORITY
    '20', '0031', '07', '00000000', // PP2_TYPE_SSL: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, verified
    '21', '0007', Buffer.from('TLSv1.3').toString('hex'),
    '22', '0006', Buffer.from('client').toString('hex'),
    '23', '0016', Buffer.from('TLS_AES_128_GCM_SHA256').toString('hex'),
  ].join(''));
  // A resumed session: the certificate came with the session, not this connection (CERT_SESS only).
  const resumed = proxyHeader('v2', ENDS, { ssl: { verified: true, resumed: true, cn: 'client', version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256' } });
  assert.equal(resumed.subarray(28, 28 + 4).toString('hex'), '20003105');
  // No certificate, no SNI: client 0x01, verify 1, no CN sub-TLV, no AUTHORITY.
  const anon = proxyHeader('v2', ENDS, { ssl: { verified: false, version: 'TLSv1.2', cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256' } });
  assert.equal(anon.subarray(28).toString('hex'), [
    '20', '002f', '01', '00000001',
    '21', '0007', Buffer.from('TLSv1.2').toString('hex'),
    '23', '001d', Buffer.from('ECDHE-ECDSA-AES128-GCM-SHA256').toString('hex'),
  ].join(''));
  assert.equal(anon.readUInt16BE(14), 12 + anon.length - 28);
  // A UNIX listener's client: LOCAL, family UNSPEC, then its credentials.
  assert.equal(proxyHeader('v2', {}, { cred: { pid: 100, uid: 1000, gid: 1001 } }).toString('hex'),
    '0d0a0d0a000d0a515549540a' + '20' + '00' + '000f' + 'e0' + '000c' + '00000064' + '000003e8' + '000003e9');
  // Without extra: the bytes as before (the differential test's), and v1 ignores extra.
  assert.equal(proxyHeader('v2', {}).toString('hex'), '0d0a0d0a000d0a515549540a20000000');
  assert.equal(proxyHeader('v1', ENDS, { cred: { pid: 1, uid: 2, gid: 3 } }).toString(), 'PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\n');
  // What sockbridge writes, it reads.
  assert.deepEqual(parseProxyHeader(header, 'v2'), { kind: 'ok', length: header.length, local: false, src: { address: '192.0.2.7', port: 5555 }, dst: { address: '198.51.100.1', port: 443 } });
});

test('IPv6 written as inet_ntop writes it', () => {
  const b = (hex: string): Buffer => Buffer.from(hex, 'hex');
  assert.equal(formatIPv6(b('00000000000000000000000000000001')), '::1');
  assert.equal(formatIPv6(b('00000000000000000000000000000000')), '::');
  assert.equal(formatIPv6(b('20010db8000000010000000000000001')), '2001:db8:0:1::1');
  assert.equal(formatIPv6(b('20010db8000000000001000000000001')), '2001:db8::1:0:0:1', 'the first of equal runs');
  assert.equal(formatIPv6(b('20010db8000000010001000100010001')), '2001:db8:0:1:1:1:1:1', 'a single zero group is written out');
  assert.equal(formatIPv6(b('00000000000000000000ffffc0000207')), '::ffff:192.0.2.7');
  // ::/96 with a non-zero seventh group: the old IPv4-compatible form, as glibc's and libuv's inet_ntop write it.
  assert.equal(formatIPv6(b('000000000000000000000000c0000207')), '::192.0.2.7');
  assert.equal(formatIPv6(b('00000000000000000000000000010002')), '::0.1.0.2');
  assert.equal(formatIPv6(b('00000000000000000000000000000100')), '::100');
  assert.equal(formatIPv6(b('00000000000000000000000000000002')), '::2');
  assert.equal(formatIPv6(b('0000000000000000000000010000000a')), '::1:0:a');
  assert.equal(formatIPv6(b('00000000000000000000ffff00000000')), '::ffff:0.0.0.0');
});

// ---- rate-limited refusal lines -------------------------------------------------------------------

test('repeated refusals: one line per key per interval, then how many were not logged; a global cap per interval', () => {
  const r = new RepeatLimiter(10_000, 2);
  assert.deepEqual(r.permit('a', 0), { suppressed: 0, overCap: 0 });
  assert.equal(r.permit('a', 1), undefined);
  assert.equal(r.permit('a', 9_999), undefined);
  assert.deepEqual(r.permit('b', 100), { suppressed: 0, overCap: 0 });
  assert.equal(r.permit('c', 200), undefined, 'over the cap of 2 lines');
  assert.equal(r.permit('d', 300), undefined);
  const p = r.permit('a', 10_000)!;
  assert.deepEqual(p, { suppressed: 2, overCap: 2 });
  assert.equal(notLogged(p), ' (2 more since the last report; 2 other refusals not logged)');
  assert.equal(notLogged({ suppressed: 0, overCap: 0 }), '');
});

// ---- open to all ------------------------------------------------------------------------------------

const ip = (label: string, host?: string): ListenSpec => ({ label, target: host === undefined ? { port: 1 } : { port: 1, host }, family: 'ip' });
const unix: ListenSpec = { label: '/run/x.sock', target: { unix: { endpoint: { kind: 'unix', path: '/run/x.sock' }, mode: 0o660, owner: '', group: '' } }, family: 'unix' };

test('open to all: a TCP listener beyond loopback without client certificates or an allow list', () => {
  const none = { allow: [] as string[], deny: [] as string[] };
  assert.equal(exposure([ip('*:12345')], none, false).openToAll, true, 'all interfaces');
  assert.equal(exposure([ip('0.0.0.0:1', '0.0.0.0')], none, false).openToAll, true);
  assert.equal(exposure([ip('[::]:1', '::')], none, false).openToAll, true);
  assert.equal(exposure([ip('192.0.2.1:1', '192.0.2.1')], none, false).openToAll, true);
  assert.match(exposure([ip('127.0.0.1:1', '127.0.0.1'), ip('*:2')], none, false).why, /accepting on \*:2 beyond loopback with neither client certificates nor an allow list/);
  assert.deepEqual(exposure([ip('127.0.0.1:1', '127.0.0.1'), ip('[::1]:1', '::1'), ip('localhost:1', 'localhost')], none, false), { openToAll: false, why: 'TCP listeners on loopback only' });
  assert.deepEqual(exposure([unix], none, false), { openToAll: false, why: 'no TCP listener' });
  assert.equal(exposure([ip('*:1')], none, true).openToAll, false, 'client certificates');
  const allowList = { allow: ['192.0.2.0/24'], deny: ['0.0.0.0/0', '::/0'] };
  assert.equal(hasAllowList(allowList), true);
  assert.deepEqual(exposure([ip('*:1')], allowList, false), { openToAll: false, why: 'an allow list (--deny any --allow 192.0.2.0/24)' });
  assert.equal(hasAllowList({ allow: ['0.0.0.0/0', '::/0'], deny: ['0.0.0.0/0', '::/0'] }), false, 'allowing any is no allow list');
  assert.equal(hasAllowList({ allow: ['192.0.2.0/24'], deny: [] }), false, 'an allow without a deny any lets everyone in');
  assert.equal(hasAllowList({ allow: [], deny: ['0.0.0.0/0', '::/0'] }), false, 'nobody at all: not open either, but not an allow list');
  // Passed sockets: judged by their address; one that cannot be read counts as open.
  const fd: ListenSpec = { label: 'systemd fd 3 (bridge.socket)', target: { fd: 3 }, family: 'ip' };
  assert.equal(exposure([fd], none, false, () => '127.0.0.1 12345').openToAll, false);
  assert.match(exposure([fd], none, false, () => '0.0.0.0 12345').why, /systemd fd 3 \(bridge\.socket\) \(0\.0\.0\.0 port 12345\)/);
  assert.match(exposure([fd], none, false, () => undefined).why, /address unknown/);
  assert.equal(isLoopback('127.3.4.5'), true);
  assert.equal(isLoopback('::ffff:127.0.0.1'), true);
  assert.equal(isLoopback('::'), false);
});

test('open to all: a passed socket\'s address read from /proc/net/tcp{,6}', async (t) => {
  for (const host of ['127.0.0.1', '::1', '0.0.0.0']) {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, host, r));
    t.after(() => server.close());
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    assert.equal(procLocalAddress(fd), `${host} ${(server.address() as net.AddressInfo).port}`);
  }
});

// ---- status and metrics -------------------------------------------------------------------------------

test('status and metrics: refusals by reason, exposure, the source table', () => {
  const report = buildReport({
    version: '0', startedAt: Date.now(), targets: { all: [], describe: () => '/run/x.sock' },
    totals: { active: 0, waiting: 0, total: 0, failed: 0, denied: 5, bytesIn: 0, bytesOut: 0 },
    cfg: defaults(), listeners: [], relay: { kind: 'js', threads: 1, why: 'relay = js', perThread: [] },
    tls: { enabled: false, clientCertificates: false, cert: '' },
    who: { deniedBy: { access: 1, tls: 0, identity: 1, uid: 0, concurrent: 2, rate: 1, proxy: 0 }, exposure: { openToAll: true, why: 'accepting on *:12345 …' }, sources: { tracked: 7, live: 2, bound: 4098 } },
  });
  assert.deepEqual(report.sessions.deniedBy, { access: 1, tls: 0, identity: 1, uid: 0, concurrent: 2, rate: 1, proxy: 0 });
  const metrics = renderMetrics(report);
  assert.match(metrics, /^sockbridge_connections_denied_total 5$/m);
  assert.match(metrics, /^sockbridge_connections_denied_by_reason_total\{reason="concurrent"\} 2$/m);
  assert.match(metrics, /^sockbridge_connections_denied_by_reason_total\{reason="proxy"\} 0$/m);
  // A family is either labelled or not: sum(sockbridge_connections_denied_by_reason_total) must not count twice.
  assert.doesNotMatch(metrics, /^sockbridge_connections_denied_total\{/m);
  assert.equal((metrics.match(/^# TYPE sockbridge_connections_denied_total counter$/gm) ?? []).length, 1, 'one family');
  assert.match(metrics, /^sockbridge_open_to_all 1$/m);
  assert.match(metrics, /^sockbridge_source_table_entries 7$/m);
  const human = renderStatus(report);
  assert.match(human, /^exposure\s+OPEN TO ALL: accepting on/m);
  assert.match(human, /^refused by\s+access 1, identity 1, concurrent 2, rate 1$/m);
  assert.match(human, /^sources\s+7 tracked \(2 with sessions open\), at most 4098 now$/m);
});
