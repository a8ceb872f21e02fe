// The whole life of a UNIX socket sockbridge binds for --listen (the client
// end of remote access: local programs connect to a path, sockbridge carries
// them to a TCP/TLS target), whichever relay accepts on it:
//
//   a file left at the path → replaced if connecting to it is refused (a
//   crashed run), refused if something answers (another instance) or if it
//   is not a socket → bind under a temporary name in the same directory →
//   chmod --listen-mode, chown --listen-owner/--listen-group → rename into
//   place → … → on close, unlink the path only if it is still our inode.
//
// As HAProxy does for its UNIX binds (bind to a temporary name, set
// mode/uid/gid, rename): the path never shows a socket with the wrong mode or
// owner, and a stale file is replaced atomically, never missing for a moment.
// An abstract socket (@name) has no file: no mode, no owner, nothing to remove.
// Sockets systemd passes are not touched here: systemd owns their mode and owner.

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, lstatSync, readFileSync, readlinkSync, renameSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { basename, dirname, join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { type DataPlaneAddon, LOAD_FAILED, loadDataPlane } from '../dataplane/addon';
import { ListenError } from '../errors';

/** A UNIX listener to bind: a file made with --listen-mode/-owner/-group, or an abstract name. */
export interface UnixListenTarget {
  endpoint: { kind: 'unix'; path: string } | { kind: 'abstract'; name: string };
  mode: number;
  /** A user name or number; '' = unchanged (the user sockbridge runs as). */
  owner: string;
  /** A group name or number; '' = unchanged. */
  group: string;
}

/** The socket file as bound here: removed on close only while the path still names this inode. */
export interface SocketFile {
  path: string;
  dev: bigint;
  ino: bigint;
}

/** How a relay binds: `bind(address)` (a path, or "\0name") and, when a later step fails, `discard` what it bound. */
export interface UnixBinder<H> {
  /** Binds synchronously within the call (see bindWithUmask), then resolves; rejects with a ListenError. */
  bind(address: string): Promise<H>;
  discard(handle: H): void;
}

/** sun_path's 108 bytes, less the terminating NUL: the longest path bind(2) takes (endpoint.ts allows as much). */
const SUN_PATH_MAX = 107;
/** How long a socket file left at the path may take to answer (a UNIX connect answers at once, or EAGAIN). */
const PROBE_TIMEOUT_MS = 2000;
/**
 * The umask while binding: the socket is created 0600 at most, so that
 * nobody but this user can connect under the temporary name before the
 * chmod (Node's net.Server listens as soon as it binds).
 */
const BIND_UMASK = 0o177;

/**
 * Bind a UNIX listener with the binder of the relay: the handle (an fd, or a
 * listening net.Server) and the file to remove on close (none for @name).
 * Throws ListenError (exit 78) with one line naming `label` and the fix.
 */
export async function bindUnixListener<H>(target: UnixListenTarget, label: string, binder: UnixBinder<H>): Promise<{ handle: H; file: SocketFile | undefined }> {
  if (target.endpoint.kind === 'abstract') {
    return { handle: await bindWithUmask(binder, `\0${target.endpoint.name}`), file: undefined };
  }
  const path = target.endpoint.path;
  await checkLeftover(path, label);
  // Names resolved before binding: an unknown one leaves nothing to clean up.
  const ids = ownerIds(target, label);
  const temp = temporaryPath(path, label);
  const handle = await bindWithUmask(binder, temp);
  try {
    chmodSync(temp, target.mode);
    if (ids) chownTo(temp, ids, target, label);
    const { dev, ino } = lstatSync(temp, { bigint: true });
    renameSync(temp, path);
    return { handle, file: { path, dev, ino } };
  } catch (err) {
    binder.discard(handle);
    unlinkQuietly(temp);
    const code = (err as NodeJS.ErrnoException).code;
    if (err instanceof ListenError || code === undefined) throw err; // a bug is not a listen error
    throw unixListenError(label, code);
  }
}

/**
 * On close: unlink the path only if it still names the socket bound here.
 * Another instance may have replaced it meanwhile (it found ours refusing,
 * or started while we stopped): its file is not ours to remove. (A swap
 * between the lstat and the unlink cannot be excluded; it needs both
 * instances stopping and starting within microseconds.)
 */
export function removeSocketFile(file: SocketFile): void {
  try {
    const now = lstatSync(file.path, { bigint: true });
    if (now.dev !== file.dev || now.ino !== file.ino) return;
    unlinkSync(file.path);
  } catch {
    // gone already: nothing to remove
  }
}

/** The one line for a UNIX path that cannot be listened on, with the hint for its errno. */
export function unixListenError(label: string, code: string): ListenError {
  const hint = code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
    ? `sockbridge cannot create a socket in ${dirname(label)}: give its user write access to the directory (RuntimeDirectory=) or choose another --listen`
    : code === 'EADDRINUSE' ? 'another process listens on this name: stop it or choose another --listen'
    : code === 'ENOENT' ? `the directory ${dirname(label)} is missing: create it (RuntimeDirectory=) or choose another --listen`
    : 'check --listen';
  return new ListenError('ELISTEN', `cannot listen on ${label}: ${code} — ${hint}`);
}

/**
 * Whether fd is a UNIX socket (one passed by systemd, ListenStream=/run/….sock):
 * its inode is in /proc/net/unix. False where /proc cannot say, which only
 * costs the access-list warning (listeners.ts).
 */
export function isUnixSocket(fd: number): boolean {
  try {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    if (!m) return false;
    // "Num RefCount Protocol Flags Type St Inode Path": the inode is the seventh column.
    return readFileSync('/proc/net/unix', 'utf8').split('\n').some((line) => line.trim().split(/\s+/)[6] === m[1]);
  } catch {
    return false;
  }
}

/**
 * Whether Node binds "\0name" as that abstract name. Before libuv 1.48
 * (Node 22) it binds the whole 108-byte sun_path, NUL-padded: another name
 * than @name as everything else spells it (the data plane, socat, ss), which
 * no other program could connect to (libuv/libuv#4266).
 */
export function nodeBindsAbstractExactly(uv = process.versions.uv ?? ''): boolean {
  const [major = 0, minor = 0] = uv.split('.').map(Number);
  return major > 1 || (major === 1 && minor >= 48);
}

/**
 * An abstract name bound exactly by the data plane's addon, for a Node
 * server to listen on by fd where Node cannot bind it itself (see above).
 * The addon is only loaded here, not started.
 */
export function bindAbstractForNode(address: string, label: string): number {
  const addon = loadDataPlane();
  if (typeof addon === 'string') {
    throw new ListenError('ELISTEN', `cannot listen on ${label}: Node.js ${process.version} (libuv ${process.versions.uv ?? '?'}) cannot bind an abstract name exactly ` +
      `and ${LOAD_FAILED} (${addon}) — use --relay native, Node.js 22 or later, or a socket path`);
  }
  return addonBindUnix(addon, address, label);
}

/** The addon's bindUnix: the fd, or a ListenError. */
export function addonBindUnix(addon: Pick<DataPlaneAddon, 'bindUnix'>, address: string, label: string): number {
  // It copies at most 107 bytes of the address: a longer one (a 107-byte @name) would bind a shorter name.
  if (Buffer.byteLength(address) > SUN_PATH_MAX) throw unixListenError(label, 'ENAMETOOLONG');
  const fd = addon.bindUnix(address);
  if (fd < 0) throw unixListenError(label, getSystemErrorName(fd));
  return fd;
}

// ---- the steps -------------------------------------------------------------------

/**
 * What is at the path already. Nothing: bind. A socket nobody answers on (a
 * crashed run left it): the rename replaces it. A socket that answers:
 * another instance serves there, refuse to start. Anything else: refuse, it
 * is not ours to replace.
 */
async function checkLeftover(path: string, label: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'ENOENT') return;
    throw unixListenError(label, code);
  }
  if (!isSocket) {
    throw new ListenError('ELISTEN_NOT_SOCKET', `cannot listen on ${label}: it exists and is not a socket — remove it or choose another --listen`);
  }
  const answer = await probe(path);
  if (answer === 'ECONNREFUSED' || answer === 'ENOENT') return;
  if (answer === 'live' || answer === 'EAGAIN') {
    throw new ListenError('ELISTEN_IN_USE', `cannot listen on ${label}: another process listens on ${path} — stop it or choose another --listen`);
  }
  throw new ListenError('ELISTEN_IN_USE', `cannot listen on ${label}: cannot tell whether a process listens on the socket file there (connect: ${answer}) — remove it if none does`);
}

/** Connect to the socket file left at path: 'live' when it accepts, else the errno (EAGAIN: live, its queue full). */
function probe(path: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ path });
    const done = (answer: string): void => {
      s.destroy();
      resolve(answer);
    };
    s.setTimeout(PROBE_TIMEOUT_MS, () => done('live'));
    s.once('connect', () => done('live'));
    s.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? 'error'));
  });
}

/**
 * A name beside the path (rename(2) stays within one directory and file
 * system): ".NAME.RANDOM", or ".sbRANDOM" where that would not fit sun_path.
 * A crash between bind and rename leaves it behind, named after the socket.
 */
function temporaryPath(path: string, label: string): string {
  const tag = randomBytes(4).toString('hex');
  for (const name of [`.${basename(path)}.${tag}`, `.sb${tag}`]) {
    const temp = join(dirname(path), name);
    if (Buffer.byteLength(temp) <= SUN_PATH_MAX) return temp;
  }
  throw new ListenError('ELISTEN', `cannot listen on ${label}: its directory's path is too long for the temporary name bound first (${SUN_PATH_MAX} bytes in all) — use a shorter path`);
}

/**
 * Bind with a umask that keeps the new socket private until chmod. Both
 * binders bind synchronously within the call (the data plane's bindUnix;
 * net.Server.listen, which reports errors later but binds before it
 * returns), so the process-wide umask is restored before anything else runs.
 */
async function bindWithUmask<H>(binder: UnixBinder<H>, address: string): Promise<H> {
  const before = process.umask(BIND_UMASK);
  let bound: Promise<H>;
  try {
    bound = binder.bind(address);
  } finally {
    process.umask(before);
  }
  return bound;
}

interface OwnerIds {
  /** -1: unchanged, as chown(2) takes it. */
  uid: number;
  gid: number;
}

/** --listen-owner and --listen-group as numbers, or undefined when neither is set. */
function ownerIds(target: UnixListenTarget, label: string): OwnerIds | undefined {
  if (target.owner === '' && target.group === '') return undefined;
  return {
    uid: target.owner === '' ? -1 : lookupId('passwd', target.owner, label),
    gid: target.group === '' ? -1 : lookupId('group', target.group, label),
  };
}

/** A number as it is; a name through getent(1), so that NSS (LDAP, systemd's DynamicUser=) answers as it does for everything else. */
function lookupId(database: 'passwd' | 'group', name: string, label: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  const option = database === 'passwd' ? '--listen-owner' : '--listen-group';
  const what = database === 'passwd' ? 'user' : 'group';
  const r = spawnSync('getent', [database, name], { encoding: 'utf8', timeout: 10_000 });
  const id = r.status === 0 ? Number(r.stdout.split('\n')[0]?.split(':')[2]) : NaN;
  if (Number.isInteger(id)) return id;
  // getent exits 2 for a name that is not there.
  const why = r.status === 2 ? `no ${what} "${name}" exists` : `cannot look up ${what} "${name}" (getent: ${r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : `exit ${r.status}`})`;
  throw new ListenError('ELISTEN_OWNER', `cannot listen on ${label}: ${why} (${option}) — create it, fix the name, or give a number`);
}

function chownTo(temp: string, ids: OwnerIds, target: UnixListenTarget, label: string): void {
  try {
    chownSync(temp, ids.uid, ids.gid);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    if (code !== 'EPERM') throw err;
    const to = [target.owner && `owner ${target.owner}`, target.group && `group ${target.group}`].filter(Boolean).join(' and ');
    throw new ListenError('ELISTEN_CHOWN', `cannot give ${label} ${to}: EPERM — setting another owner or group needs CAP_CHOWN ` +
      '(AmbientCapabilities=CAP_CHOWN in the unit) or running as that user (a group: SupplementaryGroups=)');
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // not there (Node's pipe close unlinks the name it bound)
  }
}
