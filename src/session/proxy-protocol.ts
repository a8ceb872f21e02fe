// The PROXY protocol header (HAProxy's spec, versions 1 and 2) that tells the
// program behind the UNIX socket who the client really is: over a UNIX socket
// it otherwise sees only sockbridge.

import net from 'node:net';
import { plainAddress } from '../listen/address';

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_PROXY_COMMAND = 0x21; // version 2, PROXY
const V2_TCP4 = 0x11;
const V2_TCP6 = 0x21;

interface Endpoints {
  family: 4 | 6;
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
}

/** The client connection's two ends: a net.Socket, or what the native relay knows of one. */
export interface ClientEnds {
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
  readonly localAddress?: string | undefined;
  readonly localPort?: number | undefined;
}

/** Both ends in one family: IPv4 when both are (possibly mapped) IPv4, else IPv6. */
function endpoints(client: ClientEnds): Endpoints | undefined {
  const { remoteAddress, localAddress, remotePort, localPort } = client;
  if (!remoteAddress || !localAddress || remotePort === undefined || localPort === undefined) return undefined;
  // A link-local peer comes with its zone (fe80::1%eth0): no PROXY receiver takes one, and the data plane writes none.
  const src = plainAddress(remoteAddress).replace(/%.*$/, '');
  const dst = plainAddress(localAddress).replace(/%.*$/, '');
  if (net.isIPv4(src) && net.isIPv4(dst)) return { family: 4, src, dst, srcPort: remotePort, dstPort: localPort };
  const six = (a: string): string => (net.isIPv4(a) ? `::ffff:${a}` : a);
  return { family: 6, src: six(src), dst: six(dst), srcPort: remotePort, dstPort: localPort };
}

export function proxyHeader(version: 'v1' | 'v2', client: ClientEnds): Buffer {
  const e = endpoints(client);
  if (version === 'v1') {
    if (!e) return Buffer.from('PROXY UNKNOWN\r\n');
    return Buffer.from(`PROXY TCP${e.family} ${e.src} ${e.dst} ${e.srcPort} ${e.dstPort}\r\n`);
  }
  if (!e) return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]); // LOCAL, no address
  const addrLen = e.family === 4 ? 4 : 16;
  const body = Buffer.alloc(addrLen * 2 + 4);
  (e.family === 4 ? ipv4Bytes(e.src) : ipv6Bytes(e.src)).copy(body, 0);
  (e.family === 4 ? ipv4Bytes(e.dst) : ipv6Bytes(e.dst)).copy(body, addrLen);
  body.writeUInt16BE(e.srcPort, addrLen * 2);
  body.writeUInt16BE(e.dstPort, addrLen * 2 + 2);
  const head = Buffer.from([V2_PROXY_COMMAND, e.family === 4 ? V2_TCP4 : V2_TCP6, 0, 0]);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([V2_SIGNATURE, head, body]);
}

function ipv4Bytes(a: string): Buffer {
  return Buffer.from(a.split('.').map(Number));
}

/** "2001:db8::1" or "::ffff:192.0.2.1" → 16 bytes. */
export function ipv6Bytes(a: string): Buffer {
  const out = Buffer.alloc(16);
  let text = a.replace(/%.*$/, ''); // no zone id
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [b0, b1, b2, b3] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, -v4[1]!.length) + `${((b0 << 8) | b1).toString(16)}:${((b2 << 8) | b3).toString(16)}`;
  }
  const [left, right] = text.split('::') as [string, string | undefined];
  const head = left ? left.split(':') : [];
  const tail = right ? right.split(':') : [];
  const groups = [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
