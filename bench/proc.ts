// Process bookkeeping for the benchmark: a bridge's process tree, its CPU time
// and memory from /proc, and stopping it by PID.

import { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second for /proc/PID/stat times (USER_HZ, 100 on Linux). */
const CLK_TCK = 100;

interface StatLine {
  pid: number;
  ppid: number;
  /** utime + stime + cutime + cstime, in ticks. */
  ticks: number;
}

function readStat(pid: number): StatLine | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null; // gone meanwhile
  }
  // The command name may contain spaces and parentheses: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const num = (i: number): number => Number(rest[i]);
  // rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
  return { pid, ppid: num(1), ticks: num(11) + num(12) + num(13) + num(14) };
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

/** The root and all its live descendants. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const pid of allPids()) {
    const st = readStat(pid);
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(pid);
    children.set(st.ppid, list);
  }
  const tree: number[] = [];
  const todo = [root];
  while (todo.length > 0) {
    const pid = todo.pop() as number;
    if (readStat(pid) === null) continue;
    tree.push(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/**
 * CPU seconds (user + sys) used so far by the tree. Children that already
 * exited and were reaped (socat's per-connection forks) count through their
 * parent's cutime/cstime, so the total only grows.
 */
export function treeCpuSeconds(root: number): number {
  let ticks = 0;
  for (const pid of processTree(root)) ticks += readStat(pid)?.ticks ?? 0;
  return ticks / CLK_TCK;
}

/** Proportional set size of the whole tree, in KiB (shared pages split fairly). */
export function treePssKiB(root: number): number {
  let kib = 0;
  for (const pid of processTree(root)) {
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch {
      // exited meanwhile
    }
  }
  return kib;
}

export function isAlive(pid: number): boolean {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3);
    // A zombie (Z) or dead (X) process has exited; only its parent's wait() is missing.
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `cond` every `stepMs` until it holds or `timeoutMs` passed; returns whether it held. */
export async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs: number, stepMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await delay(stepMs);
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/**
 * Stop a process and its descendants by PID: SIGTERM to each, up to `graceMs`
 * for them to go, then SIGKILL for whatever is left.
 */
export async function stopTree(child: ChildProcess, graceMs = 12000): Promise<void> {
  const root = child.pid;
  if (root === undefined) return;
  const pids = processTree(root);
  for (const pid of pids) signal(pid, 'SIGTERM');
  const gone = (): boolean => pids.every((p) => !isAlive(p));
  if (!(await waitUntil(gone, graceMs, 20))) {
    for (const pid of pids) if (isAlive(pid)) signal(pid, 'SIGKILL');
    await waitUntil(gone, 3000, 20);
  }
  // Let Node reap its direct child so no zombie is left behind.
  if (child.exitCode === null && child.signalCode === null) {
    await new Promise<void>((r) => {
      const t = setTimeout(r, 2000);
      child.once('exit', () => {
        clearTimeout(t);
        r();
      });
    });
  }
}
