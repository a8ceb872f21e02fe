// Source-address allow/deny lists for the standalone mode, checked before
// anything is read from the client. The rule is systemd's IPAddressAllow=/
// IPAddressDeny=: an address on the allow list is let in; otherwise one on the
// deny list is refused; otherwise it is let in. (On bridge.socket the kernel
// enforces those directives earlier still.)

import net from 'node:net';
import { plainAddress } from './address';
import { BadValue } from '../errors';

const NAMED: Record<string, string[]> = {
  any: ['0.0.0.0/0', '::/0'],
  localhost: ['127.0.0.0/8', '::1/128'],
  'link-local': ['169.254.0.0/16', 'fe80::/64'],
  multicast: ['224.0.0.0/4', 'ff00::/8'],
};

/** "10.0.0.0/8", "2001:db8::/32", a single address, or any, localhost, link-local, multicast. */
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
  return [`${m[1]}/${prefix}`];
}

function blockList(cidrs: string[]): net.BlockList | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new net.BlockList();
  for (const cidr of cidrs) {
    const [address, prefix] = cidr.split('/') as [string, string];
    list.addSubnet(address, Number(prefix), net.isIP(address) === 4 ? 'ipv4' : 'ipv6');
  }
  return list;
}

export class AccessList {
  private readonly allow: net.BlockList | undefined;
  private readonly deny: net.BlockList | undefined;

  constructor(allow: string[], deny: string[]) {
    this.allow = blockList(allow);
    this.deny = blockList(deny);
  }

  get empty(): boolean {
    return this.allow === undefined && this.deny === undefined;
  }

  /** `address` as a socket reports it; IPv4-mapped IPv6 is checked as IPv4. */
  permits(address: string): boolean {
    if (this.empty) return true;
    const plain = plainAddress(address);
    const family = net.isIP(plain) === 4 ? 'ipv4' : 'ipv6';
    if (this.allow?.check(plain, family)) return true;
    return !this.deny?.check(plain, family);
  }
}
