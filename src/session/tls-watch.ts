// Certificates, keys and CRLs are re-read when their files change: an ACME
// client or a CA agent renews them in place (certbot swaps a symlink,
// others rename a new file over the old one or write it through), and that
// must not need a reload. Each file is polled by stat(2) (fs.watchFile),
// which follows symlinks and sees all three ways; inotify on a directory
// would miss a symlink's target changing elsewhere. A change is acted on
// once the files have been still for a moment, so that a certificate and
// its key written one after the other are read together.
//
// A relative path names a systemd credential (LoadCredential=): that is a
// copy systemd made when the service started, in $CREDENTIALS_DIRECTORY;
// the original cannot be watched from inside the sandbox, and a renewal
// needs `systemctl restart` (plain sessions are carried across it). That is
// said once in the log, for each such file.

import { Stats, unwatchFile, watchFile } from 'node:fs';
import { isAbsolute } from 'node:path';
import type { Logger } from '../log';
import type { Config } from '../options';

/** The options whose value is a TLS file. */
const FILE_OPTIONS = [
  ['tls-cert', 'tlsCert'], ['tls-key', 'tlsKey'], ['tls-ca', 'tlsCa'], ['tls-crl', 'tlsCrl'],
  ['target-tls-ca', 'targetTlsCa'], ['target-tls-cert', 'targetTlsCert'], ['target-tls-key', 'targetTlsKey'],
] as const;

/** How often each file is looked at, and how long files must stay unchanged before they are read. */
export const POLL_MS = 1000;
const SETTLE_MS = 300;

export class TlsFileWatch {
  private watched = new Map<string, string>(); // path → option
  private reported = new Set<string>();
  private settle: NodeJS.Timeout | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly onChange: (files: string[]) => void,
  ) {}

  /** Watch the files `cfg` names (again, after a reload: only those). */
  configure(cfg: Config, env: NodeJS.ProcessEnv = process.env): void {
    const wanted = new Map<string, string>();
    for (const [option, key] of FILE_OPTIONS) {
      const path = cfg[key];
      if (!path) continue;
      if (!isAbsolute(path) && env['CREDENTIALS_DIRECTORY']) {
        if (!this.reported.has(path)) {
          this.reported.add(path);
          this.logger.notice(`--${option} ${path} is a credential systemd copied at start (LoadCredential=): its source cannot be watched, so a renewed file needs systemctl restart (plain sessions are carried across it)`,
            { EVENT: 'credential-not-watched', OPTION: option, FILE: path });
        }
        continue;
      }
      wanted.set(path, option);
    }
    for (const path of this.watched.keys()) if (!wanted.has(path)) unwatchFile(path);
    for (const path of wanted.keys()) {
      if (this.watched.has(path)) continue;
      watchFile(path, { interval: POLL_MS, persistent: false }, (now, before) => this.changed(path, now, before));
    }
    this.watched = wanted;
  }

  stop(): void {
    for (const path of this.watched.keys()) unwatchFile(path);
    this.watched.clear();
    if (this.settle) clearTimeout(this.settle);
  }

  private pending = new Set<string>();

  private changed(path: string, now: Stats, before: Stats): void {
    // watchFile also calls back when nothing that matters moved (atime); a file removed has ino 0.
    if (now.mtimeMs === before.mtimeMs && now.ino === before.ino && now.size === before.size) return;
    this.pending.add(`--${this.watched.get(path) ?? '?'} ${path}`);
    if (this.settle) clearTimeout(this.settle);
    this.settle = setTimeout(() => {
      this.settle = undefined;
      const files = [...this.pending];
      this.pending.clear();
      this.onChange(files);
    }, SETTLE_MS);
    this.settle.unref();
  }
}
