// Where sockbridge listens and what it connects to, written the same way on
// both sides: a UNIX socket path (/run/app.sock, ./app.sock), an abstract
// UNIX socket (@name: Linux's namespace of sockets without a file, which
// lives in a network namespace), or TCP (HOST:PORT, [IPv6]:PORT). One
// program serves both ends of remote access: the server end listens on TCP
// and reaches a program's UNIX socket; the client end listens on a UNIX
// socket and reaches the server end over TCP and TLS.

import { BadValue } from './errors';

export type Endpoint =
  | { kind: 'unix'; path: string }
  | { kind: 'abstract'; name: string }
  | { kind: 'tcp'; host: string; port: number };

/** sun_path holds 108 bytes, the terminating NUL included (an abstract name has a leading NUL instead). */
const SUN_PATH_MAX = 107;

const FORMS = 'a UNIX socket path (/run/app.sock or ./app.sock), @name (an abstract socket) or HOST:PORT';

/** "HOST:PORT" or "[IPv6]:PORT": the host as written (brackets removed), the port as a number. */
function parseHostPort(raw: string, what: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):(\d+)$/.exec(raw);
  if (!m) {
    if (/^[^:/@\s]+$/.test(raw) || /^\[[^\]]+\]$/.test(raw)) throw new BadValue(`${what} needs a port: ${raw}:PORT (or, for a UNIX socket, a path with a "/": ./${raw})`);
    throw new BadValue(`expected ${FORMS}`);
  }
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new BadValue('port must be from 1 to 65535');
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

function unixPath(path: string): Endpoint {
  if (Buffer.byteLength(path) > SUN_PATH_MAX) throw new BadValue(`a UNIX socket path is at most ${SUN_PATH_MAX} bytes; use a shorter path or a symlinked directory`);
  return { kind: 'unix', path };
}

function abstractName(raw: string): Endpoint {
  const name = raw.slice(1);
  if (name === '') throw new BadValue('an abstract socket needs a name after "@"');
  if (Buffer.byteLength(name) > SUN_PATH_MAX) throw new BadValue(`an abstract socket name is at most ${SUN_PATH_MAX} bytes`);
  return { kind: 'abstract', name };
}

/**
 * A target: a UNIX path (it must contain a "/", so that a TCP target given
 * without its port is an error, not a relative path), @name, or HOST:PORT.
 */
export function parseTarget(raw: string): Endpoint {
  const v = raw.trim();
  if (v === '') throw new BadValue(`expected ${FORMS}`);
  if (v.startsWith('@')) return abstractName(v);
  if (v.includes('/')) return unixPath(v);
  return { kind: 'tcp', ...parseHostPort(v, 'a TCP target') };
}

/** A listen address: as a target, and also "*:PORT" or "PORT" (every interface; port 0 picks one). */
export function parseListenAddress(raw: string): Endpoint | { kind: 'tcp'; host: undefined; port: number } {
  const v = raw.trim();
  if (v.startsWith('@')) return abstractName(v);
  if (v.includes('/')) return unixPath(v);
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):)?(\d+)$/.exec(v);
  if (!m) throw new BadValue('expected HOST:PORT, [IPv6]:PORT, *:PORT, PORT, a UNIX socket path (/run/x.sock or ./x.sock) or @name');
  const port = Number(m[2]);
  if (port > 65535) throw new BadValue('port must be from 0 to 65535');
  const host = m[1] === undefined || m[1] === '*' ? undefined : m[1].replace(/^\[|\]$/g, '');
  return host === undefined ? { kind: 'tcp', host: undefined, port } : { kind: 'tcp', host, port };
}

/** As logs and status name it: the path, "@name", "host:port" or "[v6]:port". */
export function endpointLabel(e: Endpoint | { kind: 'tcp'; host: undefined; port: number }): string {
  switch (e.kind) {
    case 'unix': return e.path;
    case 'abstract': return `@${e.name}`;
    case 'tcp': return `${e.host === undefined ? '*' : e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;
  }
}
