// Who may connect, decided below Node, against real peers: --allow-uid and
// --allow-gid on a UNIX listener (SO_PEERCRED, SO_PEERGROUPS: the native
// relay only) with clients that really run as other users and groups, and
// CRLs (--tls-crl, --tls-crl-allow-stale) made by a small `openssl ca`, with
// both relays: a revoked client refused and named by its serial, a new CRL
// taken in by reload (a ticket from before it does not resume past it), a
// stale CRL failing closed unless told otherwise.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test, TestContext } from 'node:test';
import tls from 'node:tls';
import { BridgeProcess, cannotRunAs, openssl, startBridge, status, tempDir, TEST_RELAY, unixServer, UnixServer, waitFor } from './helpers';

/** The relay these run with: `make unit` runs the file with both (SOCKBRIDGE_TEST_RELAY=js). */
const RELAY = TEST_RELAY;

/** What the program behind the bridge got: one entry per connection, its bytes once it ended. */
async function recordingEcho(t: TestContext, path: string): Promise<{ srv: UnixServer; got: string[]; connections: () => number }> {
  const got: string[] = [];
  let connections = 0;
  const srv = await unixServer(path, (s) => {
    connections++;
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      s.write(d);
    });
    s.on('end', () => {
      got.push(buf);
      s.end();
    });
  });
  t.after(() => srv.close());
  return { srv, got, connections: () => connections };
}

function count(bridge: BridgeProcess, re: RegExp): number {
  return (bridge.log().match(new RegExp(re.source, 'g')) ?? []).length;
}

/** Wait until `re` has matched `n` lines (the data plane's events reach the log a moment after the client saw the close), and no more. */
async function logged(bridge: BridgeProcess, re: RegExp, n: number, what: string): Promise<void> {
  await waitFor(() => count(bridge, re) >= n, 5000, `${what}: ${n} lines ${re} (log so far:\n${bridge.log()})`);
  assert.equal(count(bridge, re), n, what);
}

/**
 * Rewrite the config file, SIGHUP, and wait until the reload is in force:
 * its log line comes first (then the TLS files are read and the relay
 * configured, in the same turn of the bridge's event loop), so a status
 * answered after it is the proof that the reload is done.
 */
async function reload(bridge: BridgeProcess, conf: string, text: string, ctl: string, changed: RegExp): Promise<void> {
  const before = count(bridge, /configuration reloaded/);
  writeFileSync(conf, text);
  bridge.child.kill('SIGHUP');
  await waitFor(() => count(bridge, /configuration reloaded/) > before, 10_000, `the reload's log line (log so far:\n${bridge.log()})`);
  const line = bridge.log().split('\n').filter((l) => l.includes('configuration reloaded')).pop()!;
  assert.match(line, changed);
  await status(ctl);
}

// ---- --allow-uid, --allow-gid ---------------------------------------------------------------------

/** The client another user runs: connects to the UNIX socket, sends its message, reports what came back. */
const CLIENT = `
const net = require('node:net');
const [path, message] = process.argv.slice(2);
const s = net.connect(path);
let got = '';
let error = '';
const timer = setTimeout(() => { error = 'timeout'; s.destroy(); }, 8000);
s.on('connect', () => s.end(message));
s.on('data', (d) => { got += d; });
s.on('error', (e) => { error = e.code || e.message; });
s.on('close', () => {
  clearTimeout(timer);
  console.log(JSON.stringify({ pid: process.pid, uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(), got, error }));
});
`;

interface ClientReport { pid: number; uid: number; gid: number; groups: number[]; got: string; error: string }

/** Run the client (as `command`, or node with spawn's uid/gid); its report, and the pid it ran as (the pid the bridge sees). */
function runClient(t: TestContext, script: string, sock: string, message: string, how: { uid: number; gid: number } | { setpriv: string[] }): Promise<ClientReport> {
  const argv = 'setpriv' in how ? ['setpriv', ...how.setpriv, process.execPath, script, sock, message] : [process.execPath, script, sock, message];
  const child = spawn(argv[0]!, argv.slice(1), { ...('uid' in how ? { uid: how.uid, gid: how.gid } : {}), stdio: ['ignore', 'pipe', 'pipe'] });
  const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  t.after(() => { clearTimeout(killer); if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(killer);
      try {
        const r = JSON.parse(out) as ClientReport;
        // setpriv execs node: the pid the bridge reads is the one spawned.
        assert.equal(r.pid, child.pid, 'the client is the process spawned');
        resolve(r);
      } catch {
        reject(new Error(`the client (${argv.join(' ')}) exited ${code} without a report: ${out}${err}`));
      }
    });
  });
}

test(`--allow-uid and --allow-gid: a UNIX client is let in by its uid, its primary group or a supplementary one; anyone else is refused before the program sees it, and logged with pid, uid and gid (${RELAY} relay)`,
  { skip: RELAY === 'js' ? 'the TypeScript relay refuses --allow-uid/--allow-gid at start (who.test.ts checks that)' : cannotRunAs(65534, 65534) }, async (t) => {
    const dir = tempDir(t);
    const script = join(dir, 'client.js');
    writeFileSync(script, CLIENT);
    const program = await recordingEcho(t, join(dir, 'app.sock'));
    const sock = join(dir, 'in.sock');
    const ctl = join(dir, 'ctl');
    const conf = join(dir, 'bridge.conf');
    // Groups no user of this machine has: only what a client is given counts.
    const G = 4242;
    const OTHER = 4243;
    const base = `listen = ${sock}\nlisten-mode = 0666\ntarget = ${program.srv.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n`;
    writeFileSync(conf, `${base}allow-uid = 0\nallow-gid = ${G}\n`);
    const bridge = await startBridge(t, ['--relay', 'native', '--config', conf], { waitListening: false });
    await bridge.waitForLog(new RegExp(`listening on ${sock.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}, .*native data plane`));

    // Root, by --allow-uid 0: this process.
    const root = await new Promise<string>((resolve, reject) => {
      const s = net.connect(sock);
      let got = '';
      s.on('connect', () => s.end('root here'));
      s.on('data', (d: Buffer) => { got += d.toString(); });
      s.on('error', reject);
      s.on('close', () => resolve(got));
    });
    assert.equal(root, 'root here');
    assert.deepEqual(program.got, ['root here']);
    await bridge.waitForLog(new RegExp(`session pid ${process.pid} \\(uid 0, gid 0\\) closed \\(done\\), 9 bytes in, 9 bytes out`));

    // nobody, nogroup, no supplementary group (spawn drops them): refused before anything reaches the program.
    const nobody = await runClient(t, script, sock, 'nobody here', { uid: 65534, gid: 65534 });
    assert.deepEqual([nobody.uid, nobody.gid, nobody.groups], [65534, 65534, [65534]], 'the client runs as nobody alone');
    assert.equal(nobody.got, '', `nobody got a reply (${nobody.error})`);
    await bridge.waitForLog(new RegExp(`local client pid ${nobody.pid} \\(uid 65534, gid 65534\\) refused by --allow-uid/--allow-gid`));
    assert.equal(program.connections(), 1, 'the refused client reached the program');

    // Primary group G: let in.
    const primary = await runClient(t, script, sock, 'primary group', { uid: 65534, gid: G });
    assert.deepEqual([primary.uid, primary.gid], [65534, G]);
    assert.equal(primary.got, 'primary group', primary.error);
    await bridge.waitForLog(new RegExp(`session pid ${primary.pid} \\(uid 65534, gid ${G}\\) closed \\(done\\), 13 bytes in, 13 bytes out`));

    // G as a supplementary group only (setpriv sets it; spawn cannot): let in.
    const supplementary = await runClient(t, script, sock, 'supplementary group', { setpriv: ['--reuid=65534', '--regid=65534', `--groups=${G}`] });
    assert.deepEqual([supplementary.uid, supplementary.gid], [65534, 65534]);
    assert.ok(supplementary.groups.includes(G), `the client's groups: ${supplementary.groups.join(' ')}`);
    assert.equal(supplementary.got, 'supplementary group', supplementary.error);
    await bridge.waitForLog(new RegExp(`session pid ${supplementary.pid} \\(uid 65534, gid 65534\\) closed \\(done\\), 19 bytes in, 19 bytes out`));

    // Another supplementary group: refused.
    const other = await runClient(t, script, sock, 'other group', { setpriv: ['--reuid=65534', '--regid=65534', `--groups=${OTHER}`] });
    assert.ok(other.groups.includes(OTHER) && !other.groups.includes(G), `the client's groups: ${other.groups.join(' ')}`);
    assert.equal(other.got, '', `a client with group ${OTHER} only got a reply (${other.error})`);
    await bridge.waitForLog(new RegExp(`local client pid ${other.pid} \\(uid 65534, gid 65534\\) refused by --allow-uid/--allow-gid`));

    assert.deepEqual(program.got, ['root here', 'primary group', 'supplementary group'], 'what the program received');
    assert.equal(program.connections(), 3);
    assert.equal((await status(ctl)).sessions.deniedBy.uid, 2);

    // Reloaded: nobody by name now, G no more.
    await reload(bridge, conf, `${base}allow-uid = nobody\n`, ctl, /allow-uid=nobody/);
    const now = await runClient(t, script, sock, 'nobody again', { uid: 65534, gid: 65534 });
    assert.equal(now.got, 'nobody again', now.error);
    const rootNow = await new Promise<string>((resolve) => {
      const s = net.connect(sock);
      let got = '';
      s.on('connect', () => s.end('root again'));
      s.on('data', (d: Buffer) => { got += d.toString(); });
      s.on('error', () => {});
      s.on('close', () => resolve(got));
    });
    assert.equal(rootNow, '', 'root is no longer on the list');
    await bridge.waitForLog(new RegExp(`local client pid ${process.pid} \\(uid 0, gid 0\\) refused by --allow-uid/--allow-gid`));
    assert.deepEqual(program.got, ['root here', 'primary group', 'supplementary group', 'nobody again']);
    assert.equal(program.connections(), 4);
  });

// ---- CRLs ----------------------------------------------------------------------------------------

/**
 * A small CA run by `openssl ca` (index.txt, serial, crlnumber): the server's
 * certificate for 127.0.0.1 and two clients, alice and bob. Returns their serials as openssl prints them.
 */
function makeCa(dir: string): { alice: string; bob: string } {
  mkdirSync(join(dir, 'issued'));
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(join(dir, 'crlnumber'), '01\n');
  writeFileSync(join(dir, 'ca.cnf'), [
    '[ca]', 'default_ca = d',
    '[d]', `dir = ${dir}`, `database = ${dir}/index.txt`, `new_certs_dir = ${dir}/issued`, `serial = ${dir}/serial`, `crlnumber = ${dir}/crlnumber`,
    `certificate = ${dir}/ca.crt`, `private_key = ${dir}/ca.key`,
    'default_md = sha256', 'default_days = 30', 'default_crl_days = 7', 'policy = p', 'unique_subject = no', 'copy_extensions = copy',
    '[p]', 'commonName = supplied', '',
  ].join('\n'));
  openssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '30', '-subj', '/CN=crl-test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const issue = (name: string, ...ext: string[]): void => {
    openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`, ...ext);
    openssl(dir, 'ca', '-batch', '-config', 'ca.cnf', '-in', `${name}.csr`, '-out', `${name}.crt`, '-notext');
  };
  issue('server', '-addext', 'subjectAltName=IP:127.0.0.1');
  issue('alice');
  issue('bob');
  // For a server only (extendedKeyUsage serverAuth): no client certificate.
  issue('server-only', '-addext', 'extendedKeyUsage=serverAuth');
  // mallory's certificate is issued by alice's, which is no CA; mallory sends both.
  openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'mallory.key', '-out', 'mallory.csr', '-subj', '/CN=mallory');
  openssl(dir, 'x509', '-req', '-in', 'mallory.csr', '-CA', 'alice.crt', '-CAkey', 'alice.key', '-CAcreateserial', '-out', 'mallory-leaf.crt', '-days', '30');
  writeFileSync(join(dir, 'mallory.crt'), readFileSync(join(dir, 'mallory-leaf.crt'), 'utf8') + readFileSync(join(dir, 'alice.crt'), 'utf8'));
  const serial = (name: string): string => execFileSync('openssl', ['x509', '-noout', '-serial', '-in', `${name}.crt`], { cwd: dir, encoding: 'utf8' }).trim().replace(/^serial=/, '');
  return { alice: serial('alice'), bob: serial('bob') };
}

function revoke(dir: string, name: string): void {
  openssl(dir, 'ca', '-batch', '-config', 'ca.cnf', '-revoke', `${name}.crt`);
}

/** A CRL of what index.txt says is revoked now; `dates` for one already past its next update. */
function gencrl(dir: string, out: string, dates?: { last: string; next: string }): void {
  openssl(dir, 'ca', '-batch', '-config', 'ca.cnf', '-gencrl', '-out', out, ...(dates ? ['-crl_lastupdate', dates.last, '-crl_nextupdate', dates.next] : []));
}

/** A TLS client with `name`'s certificate: what came back for `message` ('' when refused), and its session (for resumption). */
function tlsExchange(port: number, dir: string, name: string, message: string, session?: Buffer): Promise<{ got: string; reused: boolean; session: Buffer | undefined; error: string }> {
  return new Promise((resolve) => {
    let got = '';
    let error = '';
    let reused = false;
    let ticket: Buffer | undefined;
    const s = tls.connect({
      host: '127.0.0.1', port, ca: readFileSync(join(dir, 'ca.crt')), cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)),
      ...(session ? { session } : {}),
    }, () => {
      reused = s.isSessionReused();
      s.end(message);
    });
    const timer = setTimeout(() => { error = 'timeout'; s.destroy(); }, 8000);
    s.on('session', (sess: Buffer) => { ticket ??= sess; });
    s.on('data', (d: Buffer) => { got += d.toString(); });
    s.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message; });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ got, reused, session: ticket, error });
    });
  });
}

const TLS_REFUSED = (why: string): RegExp => new RegExp(`TLS handshake with 127\\.0\\.0\\.1:\\d+ failed, client refused: client certificate refused: ${why}`);

test(`--tls-crl: a revoked client is refused and named by its serial, the other gets through; a new CRL by reload revokes the second, and a ticket from before does not resume past it (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const serials = makeCa(dir);
  const program = await recordingEcho(t, join(dir, 'app.sock'));
  revoke(dir, 'bob');
  gencrl(dir, 'crl1.pem');
  revoke(dir, 'alice');
  gencrl(dir, 'crl2.pem');
  const ctl = join(dir, 'ctl');
  const conf = join(dir, 'bridge.conf');
  const base = `listen = 127.0.0.1:0\ntarget = ${program.srv.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n` +
    `tls-cert = ${dir}/server.crt\ntls-key = ${dir}/server.key\ntls-ca = ${dir}/ca.crt\n`;
  writeFileSync(conf, `${base}tls-crl = ${dir}/crl1.pem\n`);
  const bridge = await startBridge(t, ['--relay', RELAY, '--config', conf]);

  const alice = await tlsExchange(bridge.port, dir, 'alice', 'alice here');
  assert.equal(alice.got, 'alice here', alice.error);
  assert.ok(alice.session, 'alice was given a ticket');
  const bob = await tlsExchange(bridge.port, dir, 'bob', 'bob here');
  assert.equal(bob.got, '', 'bob got a reply');
  await bridge.waitForLog(TLS_REFUSED(`certificate revoked \\(serial ${serials.bob}\\)`));
  assert.deepEqual(program.got, ['alice here'], 'what the program received');
  // The ticket resumes while nothing changed (so that the refusal below means something).
  const resumed = await tlsExchange(bridge.port, dir, 'alice', 'alice resumed', alice.session);
  assert.equal(resumed.got, 'alice resumed', resumed.error);
  assert.equal(resumed.reused, true, 'alice resumed her session');

  await reload(bridge, conf, `${base}tls-crl = ${dir}/crl2.pem\n`, ctl, /tls-crl=.*crl2\.pem/);
  const again = await tlsExchange(bridge.port, dir, 'alice', 'alice again');
  assert.equal(again.got, '', 'alice got through a CRL that revokes her');
  await bridge.waitForLog(TLS_REFUSED(`certificate revoked \\(serial ${serials.alice}\\)`));
  const ticket = await tlsExchange(bridge.port, dir, 'alice', 'alice with a ticket', alice.session);
  assert.equal(ticket.got, '', 'a ticket from before the new CRL let alice in');
  assert.equal(ticket.reused, false);
  await logged(bridge, TLS_REFUSED(`certificate revoked \\(serial ${serials.alice}\\)`), 2, 'both of alice\'s tries refused as revoked');
  const bobAgain = await tlsExchange(bridge.port, dir, 'bob', 'bob again');
  assert.equal(bobAgain.got, '');
  await logged(bridge, TLS_REFUSED(`certificate revoked \\(serial ${serials.bob}\\)`), 2, 'both of bob\'s tries refused as revoked');
  assert.deepEqual(program.got, ['alice here', 'alice resumed'], 'what the program received');
  assert.equal(program.connections(), 2);
  assert.equal((await status(ctl)).sessions.deniedBy.tls, 4);
});

test(`--tls-crl past its next update fails closed (every client refused, warned, status says why); with --tls-crl-allow-stale the good ones get through, and a revoked one, one issued by a client, or one for servers only still do not (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const serials = makeCa(dir);
  const program = await recordingEcho(t, join(dir, 'app.sock'));
  revoke(dir, 'bob');
  gencrl(dir, 'stale.pem', { last: '20200101000000Z', next: '20200102000000Z' });
  const ctl = join(dir, 'ctl');
  const conf = join(dir, 'bridge.conf');
  const base = `listen = 127.0.0.1:0\ntarget = ${program.srv.path}\ncheck-interval = 0\ncontrol-socket = ${ctl}\n` +
    `tls-cert = ${dir}/server.crt\ntls-key = ${dir}/server.key\ntls-ca = ${dir}/ca.crt\ntls-crl = ${dir}/stale.pem\n`;
  writeFileSync(conf, base);
  const bridge = await startBridge(t, ['--relay', RELAY, '--config', conf]);
  const crl = 'CRL of crl-test-ca \\(1 revoked, next update 2020-01-02T00:00:00Z\\)';
  const closedWarning = new RegExp(`--tls-crl \\S*stale\\.pem: past its next update, so every client certificate of that CA is refused until a newer CRL is in the file: ${crl}`);
  await bridge.waitForLog(closedWarning);
  assert.match((await status(ctl)).tls.crlProblem ?? '', new RegExp(closedWarning.source.replace(/^.*?: /, '')));

  const alice = await tlsExchange(bridge.port, dir, 'alice', 'alice here');
  assert.equal(alice.got, '', 'alice got through a stale CRL');
  await bridge.waitForLog(TLS_REFUSED('CRL_HAS_EXPIRED'));
  const bob = await tlsExchange(bridge.port, dir, 'bob', 'bob here');
  assert.equal(bob.got, '');
  await logged(bridge, /client certificate refused: (CRL_HAS_EXPIRED|certificate revoked)/, 2, 'alice and bob refused');
  assert.equal(program.connections(), 0, 'a client reached the program');

  await reload(bridge, conf, `${base}tls-crl-allow-stale = on\n`, ctl, /tls-crl-allow-stale=on/);
  await bridge.waitForLog(new RegExp(`--tls-crl \\S*stale\\.pem: past its next update, used anyway \\(--tls-crl-allow-stale\\): ${crl}`));
  assert.match((await status(ctl)).tls.crlProblem ?? '', /past its next update, used anyway \(--tls-crl-allow-stale\)/);
  const allowed = await tlsExchange(bridge.port, dir, 'alice', 'alice allowed');
  assert.equal(allowed.got, 'alice allowed', allowed.error);
  const resumed = await tlsExchange(bridge.port, dir, 'alice', 'alice resumed', allowed.session);
  assert.equal(resumed.got, 'alice resumed', resumed.error);
  assert.equal(resumed.reused, true, 'alice resumed her session');
  const revoked = await tlsExchange(bridge.port, dir, 'bob', 'bob still revoked');
  assert.equal(revoked.got, '', 'a stale CRL allowed let a certificate it revokes in');
  await bridge.waitForLog(TLS_REFUSED(`certificate revoked \\(serial ${serials.bob}\\)`));
  // What OpenSSL refuses besides the CRL is still refused: a certificate whose issuer is no CA, one for servers only.
  const mallory = await tlsExchange(bridge.port, dir, 'mallory', 'mallory, issued by alice');
  assert.equal(mallory.got, '', 'a certificate issued by a client got through');
  // The data plane's OpenSSL stops at the first error (alice is no CA); Node's reports the last it found (alice's purpose).
  await bridge.waitForLog(TLS_REFUSED(RELAY === 'native' ? 'INVALID_CA' : 'INVALID_PURPOSE'));
  const serverOnly = await tlsExchange(bridge.port, dir, 'server-only', 'a server certificate');
  assert.equal(serverOnly.got, '', 'a certificate for servers only got through');
  await bridge.waitForLog(TLS_REFUSED('INVALID_PURPOSE'));
  assert.deepEqual(program.got, ['alice allowed', 'alice resumed'], 'what the program received');
  assert.equal(program.connections(), 2);
  assert.equal((await status(ctl)).sessions.deniedBy.tls, 5);
});

test(`--tls-crl renewed in place (a CA agent writing the file): in force for new clients without a reload, and a ticket from before does not resume past it (${RELAY} relay)`, async (t) => {
  const dir = tempDir(t);
  const serials = makeCa(dir);
  const program = await recordingEcho(t, join(dir, 'app.sock'));
  gencrl(dir, 'none.pem');
  revoke(dir, 'alice');
  gencrl(dir, 'alice-revoked.pem');
  const live = join(dir, 'live-crl.pem');
  copyFileSync(join(dir, 'none.pem'), live);
  const bridge = await startBridge(t, ['--relay', RELAY, '--listen', '127.0.0.1:0', '--target', program.srv.path, '--check-interval', '0',
    '--tls-cert', join(dir, 'server.crt'), '--tls-key', join(dir, 'server.key'), '--tls-ca', join(dir, 'ca.crt'), '--tls-crl', live]);
  const alice = await tlsExchange(bridge.port, dir, 'alice', 'alice before');
  assert.equal(alice.got, 'alice before', alice.error);

  // The agent writes the new CRL beside the old one and renames it over it.
  copyFileSync(join(dir, 'alice-revoked.pem'), `${live}.new`);
  renameSync(`${live}.new`, live);
  await bridge.waitForLog(/TLS files re-read after a change to --tls-crl \S*live-crl\.pem: in force for new sessions/);
  assert.doesNotMatch(bridge.log(), /configuration reloaded/, 'no reload was asked for');
  const after = await tlsExchange(bridge.port, dir, 'alice', 'alice after');
  assert.equal(after.got, '', 'alice got through a CRL that revokes her');
  await bridge.waitForLog(TLS_REFUSED(`certificate revoked \\(serial ${serials.alice}\\)`));
  const ticket = await tlsExchange(bridge.port, dir, 'alice', 'alice with a ticket', alice.session);
  assert.equal(ticket.got, '', 'a ticket from before the new CRL let alice in');
  assert.deepEqual(program.got, ['alice before'], 'what the program received');
});
