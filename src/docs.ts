// Text generated from the option table: --help, the commented conffile, the
// sockbridge(8) man page and the README's configuration table.

import { EXIT_CODES } from './errors';
import { CLI_FLAGS, defaults, formatValue, OPTIONS } from './options';

/** What each signal does, for --help and the man page. */
const SIGNALS: readonly { name: string; brief: string; help: string }[] = [
  { name: 'SIGHUP', brief: 'reloads the config file', help: 'Reload the config file; open sessions are kept, new ones use the new settings (TLS files and options included).' },
  { name: 'SIGTERM, SIGINT', brief: 'drain and exit', help: 'Stop accepting, let sessions finish for up to --drain-timeout, exit 0.' },
  {
    name: 'SIGUSR2', brief: 'restarts without a gap (systemctl restart; a stop outside systemd)',
    help: 'Restart without a gap (the units send it on systemctl restart and package upgrades, as RestartKillSignal=): stop accepting, let each plain session empty its buffers for up to --restart-grace, hand its connections and every waiting client to systemd\'s file descriptor store, exit 0; the next process takes them over and relays on. TLS sessions cannot be carried: they are closed after --restart-grace. Outside systemd (no fd store) this is a stop, as SIGTERM.',
  },
];

const USAGE = `Usage: sockbridge [options]              run the bridge
       sockbridge check-config [options]  validate and print the effective configuration
       sockbridge status [--instance NAME] [--json]
                                          ask a running service (its control socket) how it is
       sockbridge drain|enable TARGET [--instance NAME]
                                          no new sessions to TARGET (open ones finish), or again
       sockbridge generate config|man|markdown
                                          print the commented config file, the man page, or the README table`;

const SUMMARY = 'Expose a local UNIX stream socket on a TCP port. Clients are held, not dropped, while the socket is missing or being recreated.';

function valueHint(type: string): string {
  return type === '' ? '' : ` ${type.includes('|') ? type : type.toUpperCase().replace(/[^A-Z]/g, '_')}`;
}

function wrap(text: string, width: number, indent: string): string {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + word.length + 1 > width) {
      out.push(indent + line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) out.push(indent + line);
  return out.join('\n');
}

export function renderHelp(): string {
  const cfg = defaults();
  const rows: [string, string][] = [
    ...OPTIONS.map((o): [string, string] => [`--${o.name}${valueHint(o.type)}`, `${o.help} [default: ${formatValue(o, cfg)}]`]),
    ...CLI_FLAGS.map((f): [string, string] => [`--${f.name}${valueHint(f.type)}`, f.help]),
  ];
  const lines = rows.map(([flag, help]) => `  ${flag}\n${wrap(help, 72, '      ')}`);
  return `${USAGE}\n\n${SUMMARY}\n\nOptions (also "name = value" lines in --config FILE; the command line wins):\n${lines.join('\n')}\n\n` +
    'Durations: plain milliseconds (5000) or with a unit: 500ms, 5s, 2m, 1h.\n' +
    `Exit codes: ${EXIT_CODES.map((e) => `${e.code} ${e.meaning}`).join(', ')}.\n` +
    `Signals: ${SIGNALS.map((s) => `${s.name} ${s.brief}`).join('; ')}.\n`;
}

/** The conffile: every option, commented out at its default, with its help. */
export function renderConfigFile(): string {
  const cfg = defaults();
  const blocks = OPTIONS.map((o) => `# ${o.help}\n# (${o.type}${o.reloadable ? ', applied on reload' : ', needs a restart'})\n#${o.name} = ${formatValue(o, cfg)}`);
  return '# sockbridge configuration: "name = value" lines; "#" starts a comment.\n' +
    '# The names are the long command-line options; the command line wins.\n' +
    '# Apply changes with: systemctl reload bridge.service\n\n' + blocks.join('\n\n') + '\n';
}

function roff(text: string): string {
  return text.replace(/\\/g, '\\e').replace(/^([.'])/gm, '\\&$1').replace(/-/g, '\\-');
}

export function renderMan(version: string): string {
  const cfg = defaults();
  const opts = OPTIONS.map((o) => `.TP\n.B \\-\\-${roff(o.name)}${o.type ? ` \\fI${roff(o.type)}\\fR` : ''}\n${roff(o.help)} Default: ${roff(formatValue(o, cfg))}.`);
  const flags = CLI_FLAGS.map((f) => `.TP\n.B \\-\\-${roff(f.name)}${f.type ? ` \\fI${roff(f.type)}\\fR` : ''}\n${roff(f.help)}`);
  return [
    `.TH SOCKBRIDGE 8 "" "sockbridge ${version}" "System Administration"`,
    '.SH NAME',
    'sockbridge \\- expose a local UNIX socket on a TCP port',
    '.SH SYNOPSIS',
    '.B sockbridge\n[\\fIoptions\\fR]',
    '.br\n.B sockbridge check\\-config\n[\\fIoptions\\fR]',
    '.br\n.B sockbridge status\n[\\fB\\-\\-instance\\fR \\fINAME\\fR] [\\fB\\-\\-json\\fR]',
    '.br\n.B sockbridge drain\n|\n.B enable\n\\fITARGET\\fR [\\fB\\-\\-instance\\fR \\fINAME\\fR]',
    '.SH DESCRIPTION',
    roff(SUMMARY),
    'Under systemd it takes its listening sockets from the socket unit (LISTEN_FDS), reports READY, STATUS, WATCHDOG and STOPPING, and logs structured entries to the journal; elsewhere it binds \\fB\\-\\-listen\\fR itself and logs to standard error.',
    '.SH OPTIONS',
    'Every option can also be given in the file named by \\fB\\-\\-config\\fR as a line \\fIname\\fR = \\fIvalue\\fR; the command line wins. Durations are milliseconds or carry a unit (500ms, 5s, 2m).',
    ...opts,
    ...flags,
    '.SH SIGNALS',
    ...SIGNALS.map((s) => `.TP\n.B ${roff(s.name)}\n${roff(s.help)}`),
    '.SH EXIT STATUS',
    ...EXIT_CODES.map((e) => `.TP\n.B ${e.code}\n${roff(e.meaning)}.`),
    '.SH FILES',
    '.TP\n.I /etc/sockbridge/bridge.conf\nConfiguration of bridge.service.',
    '.SH SEE ALSO',
    '.BR systemd.socket (5),\n.BR systemd.service (5),\n.BR journalctl (1)',
    '',
  ].join('\n');
}

export function renderMarkdownTable(): string {
  const cfg = defaults();
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const rows = OPTIONS.map((o) => `| \`--${o.name}\` | ${esc(o.type)} | \`${esc(formatValue(o, cfg))}\` | ${o.reloadable ? 'yes' : 'restart'} | ${esc(o.help)} |`);
  return ['| option | value | default | reload | meaning |', '| --- | --- | --- | --- | --- |', ...rows].join('\n') + '\n';
}
