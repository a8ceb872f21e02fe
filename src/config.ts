// Command line and config file → one validated Config. Defaults come from the
// option table, the config file overrides them, the command line wins.

import { readFileSync, statSync } from 'node:fs';
import minimist from 'minimist';
import { BadValue, ConfigError, UsageError } from './errors';
import { endpointLabel, parseListenAddress, parseTarget } from './endpoint';
import { loadTargetTls, loadTlsMaterial } from './session/tls';
import { Config, OptionSpec, OPTIONS, defaults, findOption } from './options';

export type Command = 'run' | 'check-config' | 'status' | 'drain' | 'enable' | 'generate';
const COMMANDS: readonly Command[] = ['run', 'check-config', 'status', 'drain', 'enable', 'generate'];

export interface CommandLine {
  command: Command;
  /** Words after the command (e.g. `generate man`). */
  args: string[];
  help: boolean;
  version: boolean;
  /** status, drain, enable: which instance; status: whether to print JSON. */
  instance: string | undefined;
  json: boolean;
  configPath: string | undefined;
  /** Raw option values from the command line, by option name. */
  values: Map<string, string[]>;
}

/** Parse argv (without node and script). Throws UsageError naming the bad flag. */
export function parseCommandLine(argv: string[]): CommandLine {
  const unknown: string[] = [];
  const stringOptions = [...OPTIONS.map((o) => o.name), 'config', 'instance'];
  const parsed = minimist(argv, {
    string: stringOptions,
    boolean: ['help', 'version', 'json'],
    alias: { h: 'help', V: 'version' },
    unknown: (arg) => {
      if (arg.startsWith('-')) unknown.push(arg);
      return !arg.startsWith('-');
    },
  });
  // minimist leaves a string option empty when its value is missing or starts with "-".
  const empty = stringOptions.find((name) => parsed[name] === '' || (Array.isArray(parsed[name]) && (parsed[name] as string[]).includes('')));
  if (empty !== undefined) {
    throw new UsageError('EUSAGE_VALUE', `--${empty} needs a value (write --${empty}=VALUE when the value starts with "-")`);
  }
  if (unknown.length > 0) {
    const flag = unknown[0]!.split('=')[0]!;
    throw new UsageError('EUSAGE_UNKNOWN_OPTION', `unknown option ${flag}; run "sockbridge --help" for the list of options`);
  }

  const words = parsed._.map(String);
  const first = words[0];
  let command: Command = 'run';
  if (first !== undefined) {
    const found = COMMANDS.find((c) => c === first);
    if (found === undefined) {
      throw new UsageError('EUSAGE_UNKNOWN_COMMAND', `unknown command "${first}"; expected one of ${COMMANDS.join(', ')} (or none to run the bridge)`);
    }
    command = found;
  }

  const values = new Map<string, string[]>();
  for (const o of OPTIONS) {
    const v: unknown = parsed[o.name];
    if (v === undefined) continue;
    const list = (Array.isArray(v) ? v : [v]).map(String);
    if (list.length > 1 && !o.combine) {
      throw new UsageError('EUSAGE_REPEATED', `--${o.name} given ${list.length} times; give it once`);
    }
    values.set(o.name, list);
  }
  const config: unknown = parsed['config'];
  if (Array.isArray(config)) throw new UsageError('EUSAGE_REPEATED', '--config given more than once; give it once');

  return {
    command,
    args: words.slice(1),
    help: parsed['help'] === true,
    version: parsed['version'] === true,
    instance: typeof parsed['instance'] === 'string' ? parsed['instance'] : undefined,
    json: parsed['json'] === true,
    configPath: typeof config === 'string' ? config : undefined,
    values,
  };
}

/** Read a config file into raw values by option name. Throws ConfigError with file:line. */
interface FileValue {
  value: string;
  where: string;
}

export function readConfigFile(path: string): Map<string, FileValue[]> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError('ECONFIG_READ', `cannot read config file ${path} (${code}); check the path given to --config`);
  }
  const values = new Map<string, FileValue[]>();
  text.split('\n').forEach((line, i) => {
    const where = `${path}:${i + 1}`;
    const stripped = line.replace(/(^|\s)#.*$/, '').trim();
    if (stripped === '') return;
    const m = /^([a-z][a-z0-9-]*)\s*=\s*(.*)$/.exec(stripped);
    if (!m) throw new ConfigError('ECONFIG_SYNTAX', `${where}: expected "name = value", got "${stripped}"`);
    const [, name, value] = m as unknown as [string, string, string];
    const spec = findOption(name);
    if (!spec) throw new ConfigError('ECONFIG_UNKNOWN_OPTION', `${where}: unknown option "${name}"; see "sockbridge --help" for the names`);
    const list = values.get(name) ?? [];
    if (list.length > 0 && !spec.combine) throw new ConfigError('ECONFIG_REPEATED', `${where}: "${name}" is set twice; keep one`);
    list.push({ value, where });
    values.set(name, list);
  });
  return values;
}

interface RawValue {
  value: string;
  /** How the option is named where the value came from: "--rise" or "/etc/x.conf:3: rise". */
  label: string;
  fail: (message: string) => never;
}

function setOption<K extends keyof Config>(cfg: Config, spec: OptionSpec<K>, raws: RawValue[]): void {
  const parsed = raws.map(({ value, label, fail }) => {
    try {
      return spec.parse(value);
    } catch (err) {
      if (err instanceof BadValue) fail(`invalid value "${value}" for ${label}: ${err.message}`);
      throw err;
    }
  });
  // Repeatable options are arrays; the values of one source accumulate.
  cfg[spec.key] = spec.combine ? spec.combine(parsed) : parsed[parsed.length - 1]!;
}

/** Defaults ← config file ← command line. Throws UsageError or ConfigError. */
export function loadConfig(cli: CommandLine): Config {
  const cfg = defaults();
  const file = cli.configPath === undefined ? new Map<string, FileValue[]>() : readConfigFile(cli.configPath);
  /** Where each option given was last set: its error, as that source reports one. */
  const given = new Map<string, RawValue>();
  for (const spec of OPTIONS) {
    const fromFile = file.get(spec.name);
    if (fromFile) {
      const raws = fromFile.map(({ value, where }) => ({
        value,
        label: spec.name,
        fail: (msg: string): never => { throw new ConfigError('ECONFIG_VALUE', `${where}: ${msg}`); },
      }));
      setOption(cfg, spec, raws);
      given.set(spec.name, raws[raws.length - 1]!);
    }
    const fromCli = cli.values.get(spec.name);
    if (fromCli) {
      const raws = fromCli.map((value) => ({
        value,
        label: `--${spec.name}`,
        fail: (msg: string): never => { throw new UsageError('EUSAGE_VALUE', msg); },
      }));
      setOption(cfg, spec, raws);
      given.set(spec.name, raws[raws.length - 1]!);
    }
  }
  resolveTargets(cfg, given);
  return cfg;
}

/**
 * The built-in target is the default only for a bridge given no --target and
 * no --target-dir; a backup needs something to back up; a socket is one
 * target (twice would count it twice in every round and for --balance).
 */
function resolveTargets(cfg: Config, given: Map<string, RawValue>): void {
  if (!given.has('target') && given.has('target-dir') && cfg.targetDir !== '') cfg.target = [];
  const backup = given.get('backup-target');
  if (backup && cfg.backupTarget.length > 0 && !given.has('target') && cfg.targetDir === '') {
    backup.fail(`${backup.label} needs a regular target to back up: give --target (or target-dir) too`);
  }
  const seen = new Set<string>();
  for (const [name, paths] of [['target', cfg.target], ['backup-target', cfg.backupTarget]] as const) {
    for (const path of paths) {
      if (seen.has(path)) {
        const raw = given.get(name)!;
        raw.fail(`target ${path} is given twice (${raw.label}); give each socket once`);
      }
      seen.add(path);
    }
  }
}

/**
 * Everything about a configuration that can be checked before running it.
 * An error about an option given on the command line is a usage error
 * (exit 64), as a malformed value there is; from the file it stays a
 * configuration error (exit 78).
 */
export function validateFrom(cli: CommandLine, cfg: Config): void {
  try {
    validate(cfg);
  } catch (err) {
    if (err instanceof ConfigError && err.option !== undefined && cli.values.has(err.option)) throw new UsageError(err.code, err.message);
    throw err;
  }
}

export function validate(cfg: Config): void {
  checkTarget(cfg);
  checkLoop(cfg);
  checkTargetTls(cfg);
  checkWhoMayConnect(cfg);
  loadTlsMaterial(cfg); // readable, parseable, matching files
  loadTargetTls(cfg);
}

/** Listening where a target is would connect the bridge to itself, session after session. */
function checkLoop(cfg: Config): void {
  const targets = new Set([...cfg.target, ...cfg.backupTarget].map((t) => endpointLabel(parseTarget(t))));
  const loop = cfg.listen.map((l) => endpointLabel(parseListenAddress(l))).find((l) => targets.has(l));
  if (loop !== undefined) {
    throw new ConfigError('ECONFIG_LOOP', `--listen ${loop} is also a target: the bridge would connect to itself; listen elsewhere or name the program's socket as the target`, 'listen');
  }
}

/** A TLS setting for targets that would not apply is an error, not a silent no-op. */
function checkTargetTls(cfg: Config): void {
  const given = (['targetTlsCa', 'targetTlsCert', 'targetTlsKey', 'targetTlsName', 'targetTlsAllowCn', 'targetTlsAllowDns', 'targetTlsAllowUri'] as const)
    .filter((k) => cfg[k].length > 0);
  if (cfg.targetTls === 'off' && given.length > 0) {
    const names = given.map((k) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)).join(', ');
    throw new ConfigError('ECONFIG_TARGET_TLS', `${names} set, but target-tls is off: add target-tls = on (or --target-tls on) to speak TLS to TCP targets`,
      names.split(', ')[0]);
  }
  const tcp = [...cfg.target, ...cfg.backupTarget].some((t) => parseTarget(t).kind === 'tcp');
  if (cfg.targetTls === 'on' && !tcp) {
    throw new ConfigError('ECONFIG_TARGET_TLS', 'target-tls is on, but no target is a TCP target (HOST:PORT): it applies to TCP targets only');
  }
}

/** Who-may-connect settings that would not apply are errors, not silent no-ops: each needs another. */
function checkWhoMayConnect(cfg: Config): void {
  const allow = ([['tlsAllowCn', 'tls-allow-cn'], ['tlsAllowDns', 'tls-allow-dns'], ['tlsAllowUri', 'tls-allow-uri']] as const).find(([k]) => cfg[k].length > 0);
  if (allow && cfg.tlsCa === '') {
    throw new ConfigError('ECONFIG_TLS_ALLOW', `--${allow[1]} set, but --tls-ca is not: identities are checked on client certificates, which only --tls-ca asks for; add --tls-ca`, allow[1]);
  }
  if (cfg.acceptProxy !== 'none' && cfg.acceptProxyFrom.length === 0) {
    throw new ConfigError('ECONFIG_ACCEPT_PROXY', `--accept-proxy ${cfg.acceptProxy} needs --accept-proxy-from: name the fronts trusted to send a PROXY header (from anyone, a header would let any client choose its address)`, 'accept-proxy');
  }
  if (cfg.acceptProxy === 'none' && cfg.acceptProxyFrom.length > 0) {
    throw new ConfigError('ECONFIG_ACCEPT_PROXY', '--accept-proxy-from set, but --accept-proxy is none: add --accept-proxy v1, v2 or any to read the fronts\' headers', 'accept-proxy-from');
  }
}

/**
 * The target may be absent (clients wait for it) but if something is there it
 * must be a socket: a regular file there is a typo an operator wants to hear about.
 */
export function checkTarget(cfg: Config): void {
  for (const target of [...cfg.target, ...cfg.backupTarget]) {
    const e = parseTarget(target);
    if (e.kind !== 'unix') continue;
    const path = e.path;
    let isSocket: boolean;
    try {
      isSocket = statSync(path).isSocket();
    } catch {
      continue; // missing (or unreadable parent): reported at run time, waited for
    }
    if (!isSocket) {
      throw new ConfigError('ECONFIG_TARGET_NOT_SOCKET', `target ${path} exists but is not a socket; point target at the UNIX socket the program listens on`);
    }
  }
}

