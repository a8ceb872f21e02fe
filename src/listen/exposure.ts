// Whether the port is open to everyone: a TCP listener beyond loopback with
// neither client certificates nor an allow list lets anyone who can reach
// it drive the program's socket. Said at every start and reload
// (EVENT=open-to-all), in `status` and in `check-config`. The rule:
//
//   open to all  <=>  some TCP listener's address is not loopback
//                     (127.0.0.0/8, ::1; a wildcard 0.0.0.0 or :: is not)
//                 and no client certificate is required (--tls-ca)
//                 and there is no allow list: --allow non-empty, none of
//                     it a /0, with --deny covering everything (any, i.e.
//                     0.0.0.0/0 and ::/0).
//
// UNIX listeners never count (their file's mode decides). A listener
// passed by systemd is judged by the address it is bound to (getsockname;
// here read from /proc/net/tcp{,6} by the socket's inode, or from whatever
// `localAddressOf` the data plane offers); one whose address cannot be read
// counts as beyond loopback: a warning too many beats a silent open port.
// Per-source limits and IPAddressDeny= in a socket unit do not count: the
// first bound the damage, the second sockbridge cannot see.

import { fstatSync, readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import type { Config } from '../options';
import { formatIPv6 } from '../session/proxy-protocol';
import { addressBytes } from './access';
import type { ListenSpec } from './listeners';

export interface Exposure {
  openToAll: boolean;
  /** Why it is open, or what closes it. */
  why: string;
}

/** A passed socket's local address as "ADDRESS PORT", or undefined when it cannot be told. */
export type LocalAddressOf = (fd: number) => string | undefined;

/** The two ways to close an open port, for the warning and the README. */
export const HOW_TO_CLOSE = 'require client certificates (--tls-cert, --tls-key and --tls-ca) or let known addresses in only (--deny any --allow 192.0.2.0/24)';

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  const bytes = addressBytes(host);
  if (bytes === undefined) return false;
  return bytes.length === 4 ? bytes[0] === 127 : bytes.every((b, i) => b === (i === 15 ? 1 : 0));
}

/** --deny any with an --allow that is not itself everything. */
export function hasAllowList(cfg: Pick<Config, 'allow' | 'deny'>): boolean {
  const all = (cidr: string): boolean => cidr.endsWith('/0');
  return cfg.allow.length > 0 && !cfg.allow.some(all) && cfg.deny.includes('0.0.0.0/0') && cfg.deny.includes('::/0');
}

/** `clientCertificates`: TLS in force with --tls-ca (what runs, which a failed reload may keep older than the file). */
export function exposure(
  specs: readonly ListenSpec[],
  cfg: Pick<Config, 'allow' | 'deny'>,
  clientCertificates: boolean,
  localAddressOf: LocalAddressOf = procLocalAddress,
): Exposure {
  const tcp = specs.filter((s) => s.family === 'ip');
  const beyond: string[] = [];
  for (const spec of tcp) {
    const t = spec.target;
    if ('unix' in t) continue;
    if ('fd' in t) {
      const local = localAddressOf(t.fd);
      const host = local?.split(' ')[0];
      if (host === undefined || !isLoopback(host)) beyond.push(local ? `${spec.label} (${local.replace(' ', ' port ')})` : `${spec.label} (address unknown)`);
    } else if (t.host === undefined || !isLoopback(t.host)) {
      beyond.push(spec.label);
    }
  }
  if (beyond.length === 0) return { openToAll: false, why: tcp.length > 0 ? 'TCP listeners on loopback only' : 'no TCP listener' };
  if (clientCertificates) return { openToAll: false, why: 'client certificates required (--tls-ca)' };
  if (hasAllowList(cfg)) return { openToAll: false, why: `an allow list (--deny any --allow ${cfg.allow.join(' ')})` };
  return {
    openToAll: true,
    why: `accepting on ${beyond.join(', ')} beyond loopback with neither client certificates nor an allow list`,
  };
}

/** The warning at start and reload: one line naming both ways to close it. */
export function openToAllWarning(e: Exposure): string {
  return `${e.why}: anyone who can reach the port can drive the program's socket — ${HOW_TO_CLOSE}`;
}

/**
 * A listening TCP socket's local address as "ADDRESS PORT", from
 * /proc/net/tcp{,6} by the socket's inode (Node has no getsockname on a
 * bare fd). undefined when it is not there (not TCP, not Linux, /proc hidden).
 */
export function procLocalAddress(fd: number): string | undefined {
  let inode: string;
  try {
    inode = String(fstatSync(fd).ino);
  } catch {
    return undefined;
  }
  for (const [table, six] of [['/proc/net/tcp', false], ['/proc/net/tcp6', true]] as const) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[9] !== inode) continue;
      const [hex, port] = (f[1] ?? '').split(':') as [string, string | undefined];
      return `${procAddress(hex, six)} ${parseInt(port ?? '0', 16)}`;
    }
  }
  return undefined;
}

/** /proc/net/tcp prints an address as 32-bit words in the host's byte order. */
function procAddress(hex: string, six: boolean): string {
  const bytes: number[] = [];
  for (let i = 0; i < hex.length; i += 8) {
    const word = parseInt(hex.slice(i, i + 8), 16);
    const be = [word >>> 24, (word >>> 16) & 0xff, (word >>> 8) & 0xff, word & 0xff];
    bytes.push(...(endianness() === 'LE' ? be.reverse() : be));
  }
  return six ? formatIPv6(Uint8Array.from(bytes)) : bytes.join('.');
}
