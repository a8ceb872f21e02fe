// The native addons (sd-notify, systemd-journald): compiled for one Node.js
// ABI, loaded only when systemd needs them. An addon built for another Node
// can fail inside the dynamic loader ("libnode.so.108: cannot open shared
// object file") before Node could name the versions, so the ABI recorded when
// the addons were built (node_modules/.sockbridge-abi.json, written by
// package.json's postinstall) is compared with the running one first: a
// broken install then says what was built for which Node and how to fix it,
// in one line, instead of crash-looping on a loader error.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InstallError } from '../errors';

/** What package.json's postinstall records: the Node that built node_modules. */
export interface BuiltFor {
  node: string;
  modules: string;
}

const RECORD = join(__dirname, '..', '..', '..', 'node_modules', '.sockbridge-abi.json');
const FIX = 'install the sockbridge package built for this system\'s release, or build one here with "make deb SUITE=host"';

/**
 * The recorded build ABI, or undefined when there is no usable record (an old
 * or hand-made node_modules): then the loader has the last word.
 */
export function builtFor(path = RECORD): BuiltFor | undefined {
  let parsed: Partial<BuiltFor>;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8')) as Partial<BuiltFor>;
  } catch {
    return undefined;
  }
  return typeof parsed.node === 'string' && typeof parsed.modules === 'string'
    ? { node: parsed.node, modules: parsed.modules }
    : undefined;
}

/** Throws InstallError when the addons were built for another Node ABI than this one. */
export function checkAbi(built: BuiltFor | undefined, running: { node: string; modules: string } = {
  node: process.version, modules: process.versions.modules,
}): void {
  if (built === undefined || built.modules === running.modules) return;
  throw new InstallError('EADDON_ABI',
    `the native addons were built for Node.js ${built.node} (ABI ${built.modules}) but this is Node.js ${running.node} ` +
    `(ABI ${running.modules}): ${FIX}`);
}

let checked = false;

/**
 * require() a native addon after the ABI check. Any failure is an
 * InstallError: under systemd these addons are not optional (without
 * sd-notify, systemd never sees READY=1 and kills the service at its start
 * timeout, again and again).
 */
export function loadAddon<T>(name: 'sd-notify' | 'systemd-journald'): T {
  if (!checked) {
    checkAbi(builtFor());
    checked = true;
  }
  try {
    return require(name) as T;
  } catch (err) {
    const first = ((err as Error).message.split('\n')[0] ?? '').trim();
    throw new InstallError('EADDON_LOAD', `the native addon ${name} cannot be loaded (${first}): ${FIX}`);
  }
}
