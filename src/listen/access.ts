// Source-address allow/deny lists, checked before anything is read from the
// client. The rule is systemd's IPAddressAllow=/IPAddressDeny=: an address on
// the allow list is let in; otherwise one on the deny list is refused;
// otherwise it is let in. (On bridge.socket the kernel enforces those
// directives earlier still.)
//
// Matching is a plain prefix match within one family, after IPv4-mapped IPv6
// addresses (a dual-stack listener's IPv4 clients) and CIDRs are written as
// IPv4. The data plane evaluates the same lists in C (native/policy.c:
// access_check); test/differential.test.ts checks that both agree.

import net from 'node:net';
import { BadValue } from '../errors';

const NAMED: Record<string, string[]> = {
  any: ['0.0.0.0/0', '::/0'],
  localhost: ['127.0.0.0/8', '::1/128'],
  'link-local': ['169.254.0.0/16', 'fe80::/64'],
  multicast: ['224.0.0.0/4', 'ff00::/8'],
};

/** "10.0.0.0/8", "2001:db8::/32", a single address, or any, localhost, link-local, multicast; as normalized CIDRs. */
export function parseCidrs(raw: string): string[] {
  const v = raw.trim();
  const named = NAMED[v];
  if (named) return named;
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(v);
  const family = m ? net.isIP(m[1]!) : 0;
  if (!m || family === 0) throw new BadValue('expected an address or CIDR (10.0.0.0/8, 2001:db8::/32) or any, localhost, link-local, multicast');
  const max = family === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) throw new BadValue(`prefix length must be at most ${max} for IPv${family}`);
  const bytes = addressBytes(m[1]!)!;
  // A zone id (fe80::1%eth0) names an interface, not addresses: the rule is about the address.
  const address = m[1]!.replace(/%.*$/, '');
  // ::ffff:a.b.c.d/n names IPv4 addresses: written so, it matches them.
  if (bytes.length === 4 && family === 6) {
    if (prefix < 96) throw new BadValue('an IPv4-mapped prefix (::ffff:…) must be at least /96; write the IPv4 CIDR instead');
    return [`${bytes.join('.')}/${prefix - 96}`];
  }
  return [`${address}/${prefix}`];
}

/** An IP address as its bytes (4 for IPv4, also IPv4-mapped IPv6; 16 for IPv6), or undefined for anything else. */
export function addressBytes(address: string): number[] | undefined {
  const text = address.replace(/%.*$/, ''); // no zone id
  if (net.isIPv4(text)) return text.split('.').map(Number);
  if (!net.isIPv6(text)) return undefined;
  let groups: number[];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  const body = v4 ? text.slice(0, -v4[1]!.length) + '0:0' : text;
  const [left, right] = body.split('::') as [string, string | undefined];
  const head = left ? left.split(':').map((g) => parseInt(g, 16)) : [];
  const tail = right !== undefined && right !== '' ? right.split(':').map((g) => parseInt(g, 16)) : [];
  if (right === undefined) groups = head;
  else groups = [...head, ...Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  const bytes = groups.flatMap((g) => [g >> 8, g & 0xff]);
  if (v4) v4[1]!.split('.').forEach((b, i) => { bytes[12 + i] = Number(b); });
  const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.slice(12) : bytes;
}

interface Prefix {
  bytes: number[];
  bits: number;
}

function compile(cidrs: string[]): Prefix[] {
  return cidrs.map((cidr) => {
    const [address, bits] = cidr.split('/') as [string, string];
    return { bytes: addressBytes(address)!, bits: Number(bits) };
  });
}

function inPrefix(p: Prefix, addr: number[]): boolean {
  if (p.bytes.length !== addr.length) return false;
  const whole = Math.floor(p.bits / 8);
  for (let i = 0; i < whole; i++) if (p.bytes[i] !== addr[i]) return false;
  const rest = p.bits % 8;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (p.bytes[whole]! & mask) === (addr[whole]! & mask);
}

export class AccessList {
  private readonly allow: Prefix[];
  private readonly deny: Prefix[];

  /** allow and deny as parseCidrs gives them. */
  constructor(allow: string[], deny: string[]) {
    this.allow = compile(allow);
    this.deny = compile(deny);
  }

  get empty(): boolean {
    return this.allow.length === 0 && this.deny.length === 0;
  }

  /** `address` as a socket reports it. A client with no IP address (a UNIX listener's) is not judged here. */
  permits(address: string): boolean {
    if (this.empty) return true;
    const addr = addressBytes(address);
    if (addr === undefined) return true;
    if (this.allow.some((p) => inPrefix(p, addr))) return true;
    return !this.deny.some((p) => inPrefix(p, addr));
  }
}
