// Errors that reach an operator. Each carries a stable code to grep for and a
// message that says what to do; the exit code follows sysexits(3).

export const EXIT_OK = 0;
export const EXIT_USAGE = 64; // EX_USAGE: bad command line
export const EXIT_UNAVAILABLE = 69; // EX_UNAVAILABLE: the service asked is not there
export const EXIT_SOFTWARE = 70; // EX_SOFTWARE: a bug; the message says so
export const EXIT_OSERR = 71; // EX_OSERR: the system refused a resource (threads) the service needs
// EX_OSFILE: a file of the installation is unusable (native addons built for
// another Node.js). Not 78: the units name this code in
// RestartPreventExitStatus= and stop bridge.socket on it (retrying cannot
// help), while a configuration error keeps being retried every RestartSec=,
// so that the operator's fix is picked up by itself.
export const EXIT_OSFILE = 72;
export const EXIT_CONFIG = 78; // EX_CONFIG: bad configuration file or value

/** Every exit code, for --help, the man page and the README. */
export const EXIT_CODES: readonly { code: number; meaning: string }[] = [
  { code: EXIT_OK, meaning: 'ok' },
  { code: EXIT_USAGE, meaning: 'bad command line' },
  { code: EXIT_UNAVAILABLE, meaning: 'the service cannot be reached (status, drain, enable)' },
  { code: EXIT_SOFTWARE, meaning: 'internal error' },
  { code: EXIT_OSERR, meaning: 'the system refused the data plane its threads' },
  { code: EXIT_OSFILE, meaning: 'broken installation (addons built for another Node.js); the units do not restart it' },
  { code: EXIT_CONFIG, meaning: 'bad configuration (a value, a file, an address that cannot be bound)' },
];

export abstract class SockbridgeError extends Error {
  abstract readonly exitCode: number;
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** The command line is wrong: unknown option, malformed value. */
export class UsageError extends SockbridgeError {
  readonly exitCode = EXIT_USAGE;
}

/** The configuration (file or effective values) is wrong or unusable. */
export class ConfigError extends SockbridgeError {
  readonly exitCode = EXIT_CONFIG;
  /** The option at fault (its name without "--"), when one is: given on the command line, it is a usage error there. */
  constructor(code: string, message: string, readonly option?: string) {
    super(code, message);
  }
}

/** `sockbridge status` could not reach the service. */
export class UnavailableError extends SockbridgeError {
  readonly exitCode = EXIT_UNAVAILABLE;
}

/** The installation cannot run on this Node.js (addons built for another ABI, or unloadable). */
export class InstallError extends SockbridgeError {
  readonly exitCode = EXIT_OSFILE;
}

/** The system refused what the service needs to run (the data plane's threads): retried by the units, as it may pass. */
export class ResourceError extends SockbridgeError {
  readonly exitCode = EXIT_OSERR;
}

/** Listening failed (port in use, bad address): a configuration problem. */
export class ListenError extends SockbridgeError {
  readonly exitCode = EXIT_CONFIG;
}

/** What a previous process left in the fd store cannot be taken over: its fds are closed, the service goes on. */
export class HandoverError extends SockbridgeError {
  readonly exitCode = EXIT_SOFTWARE;
}

/** A value the operator wrote is wrong; the caller adds where it came from. */
export class BadValue extends Error {}

/** Error codes from connect(2) on the UNIX socket, grouped by what we do next. */
export type BackendFailure =
  | 'absent' // ENOENT, ECONNREFUSED, EAGAIN, ECONNRESET; over TCP also unreachable, timed out, not resolvable: missing, restarting, away — wait for it
  | 'denied' // EACCES, EPERM: a permissions problem — or a socket not yet chmod-ed after bind: wait, and say how to fix it
  | 'exhausted' // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or memory here — retry
  | 'other'; // anything else (ENOTSOCK, ENAMETOOLONG, …)

export function classifyConnectError(code: string | undefined): BackendFailure {
  switch (code) {
    case 'ENOENT':
    case 'ECONNREFUSED':
    case 'EAGAIN':
    case 'EWOULDBLOCK':
    case 'ECONNRESET': // queued on a socket that closed before the connect completed: a restart
    // A remote end: a network blip, a restart, a name not resolvable for now.
    // Exactly what the client end of remote access must ride out: held too.
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENETDOWN':
    case 'EAI_AGAIN':
    case 'ENOTFOUND':
      return 'absent';
    case 'EMFILE':
    case 'ENFILE':
    case 'ENOBUFS':
    case 'ENOMEM':
      return 'exhausted';
    case 'EACCES':
    case 'EPERM':
      return 'denied';
    default:
      return 'other';
  }
}
