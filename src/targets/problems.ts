// Connect problems with a target, logged once per change (not once per client
// or per retry): each target has its own reporter (targets.ts), which its
// health check and its clients' connects share.

import { classifyConnectError } from '../errors';
import type { Logger } from '../log';

const REPORT_AGAIN_AFTER_MS = 10_000;

/** Where a target's connect problems go. */
export interface Reporter {
  report(target: string, err: Pick<NodeJS.ErrnoException, 'code' | 'message'> | undefined): void;
}

/**
 * Connect problems are logged once per change (and each code at most once per
 * interval, as they can alternate), never once per client or per retry.
 */
export class ProblemReporter implements Reporter {
  private reported: string | undefined;
  private readonly reportedAt = new Map<string, number>();

  constructor(private readonly logger: Logger) {}

  report(target: string, err: Pick<NodeJS.ErrnoException, 'code' | 'message'> | undefined): void {
    const code = err?.code;
    if (code === this.reported) return;
    this.reported = code;
    if (code === undefined) return;
    const now = Date.now();
    if (now - (this.reportedAt.get(code) ?? -Infinity) < REPORT_AGAIN_AFTER_MS) return;
    this.reportedAt.set(code, now);
    const fields = { TARGET: target, ERRNO: code };
    switch (classifyConnectError(code)) {
      case 'denied':
        this.logger.error(
          `EBACKEND_PERM: cannot connect to ${target}: permission denied (${code}) — give the service the socket's group ` +
          `(SupplementaryGroups= in bridge.service, or run sockbridge as a member of it) and make the socket group-writable`, fields);
        return;
      case 'absent': {
        const why: Record<string, string> = {
          ENOENT: 'does not exist', ECONNREFUSED: 'refuses connections (no program listening)', ECONNRESET: 'reset the connection (restarting)',
          ETIMEDOUT: 'does not answer in time', EHOSTUNREACH: 'is unreachable', ENETUNREACH: 'is on an unreachable network',
          EHOSTDOWN: 'is down', ENETDOWN: 'is on a network that is down', EAI_AGAIN: 'cannot be resolved right now', ENOTFOUND: 'has a name that does not resolve',
        };
        this.logger.warning(`target ${target} ${why[code] ?? 'has a full accept queue'} (${code}); clients are held up to connect-timeout while waiting for it`, fields);
        return;
      }
      case 'exhausted':
        this.logger.error(`cannot connect to ${target}: out of file descriptors or memory (${code}); clients are held and retried — raise LimitNOFILE= or lower --max-conn`, fields);
        return;
      case 'other':
        this.logger.error(`cannot connect to ${target} (${code}: ${err!.message}); check the target option`, fields);
    }
  }
}
