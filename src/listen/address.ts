// Client addresses as operators want to read and filter them.

/** A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: give a.b.c.d. */
export function plainAddress(address: string): string {
  return address.replace(/^::ffff:(?=\d+\.)/i, '');
}

/** "192.0.2.7:51234" or "[2001:db8::7]:51234". */
export function addressLabel(address: string, port: number): string {
  return `${address.includes(':') ? `[${address}]` : address}:${port}`;
}
