// What both benchmarks (run.ts and clients.ts) need besides /proc (proc.ts):
// the set of child processes started and not yet stopped, running a tool to
// completion, loopback ports and readiness probes, the machine's description,
// and the median of several passes.

import { ChildProcess, spawn, SpawnOptions, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { Command } from './bridges';
import { processTree, stopTree } from './proc';
import { Metrics } from './report';

// ---- child processes ---------------------------------------------------------------

/** Everything started and not yet stopped, so a Ctrl-C still stops it all. */
const live = new Set<ChildProcess>();

export function track(child: ChildProcess): ChildProcess {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** Stop a tracked child and its descendants by PID (SIGTERM, then SIGKILL). */
export async function stop(child: ChildProcess | null): Promise<void> {
  if (!child) return;
  await stopTree(child);
  live.delete(child);
}

/** On an interrupt or a crash: SIGKILL every process tree we started, by PID. */
export function killTracked(): void {
  for (const child of live) {
    if (child.pid === undefined) continue;
    for (const pid of processTree(child.pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

/**
 * Run `main` as the program and exit with its code. On SIGINT, SIGTERM or a
 * crash every process tree still tracked is SIGKILLed by PID, then `cleanup`
 * runs (removing temporary files).
 */
export function runAsMain(label: string, main: () => Promise<number>, cleanup: () => void): void {
  const stopAllNow = (): void => {
    killTracked();
    cleanup();
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      stopAllNow();
      process.exit(130);
    });
  }
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      stopAllNow();
      console.error(`${label}: ${(e as Error).message}`);
      process.exit(1);
    },
  );
}

/** A long-running process (a bridge, a server) with stdout and stderr in a file. */
export function startLogged(cmd: Command, stderrFile: string, options: SpawnOptions = {}): ChildProcess {
  const errFd = openSync(stderrFile, 'w');
  try {
    return track(spawn(cmd.cmd, cmd.args, { ...options, stdio: ['ignore', errFd, errFd] }));
  } finally {
    closeSync(errFd); // the child holds its own copy
  }
}

export interface ToolResult {
  /** Exit status; null when it was killed (timeout) or could not start. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a program to completion, its tree killed by PID after timeoutMs. */
export function runTool(cmd: string, args: string[], timeoutMs: number, options: SpawnOptions = {}): Promise<ToolResult> {
  return new Promise((resolvePromise) => {
    const child = track(spawn(cmd, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => void stop(child), timeoutMs);
    child.once('error', (e) => (stderr += `${e.message}\n`));
    // 'close', not 'exit': stdout may still hold the result when the process exits.
    child.once('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

// ---- sockets -----------------------------------------------------------------------

/** A client socket to a UNIX path or to 127.0.0.1:PORT. */
export function connectTo(address: string): net.Socket {
  return address.startsWith('/') ? net.connect(address) : net.connect(Number(address.split(':')[1]), '127.0.0.1');
}

export function canConnect(address: string): Promise<boolean> {
  return new Promise((r) => {
    const s = connectTo(address);
    s.once('connect', () => {
      s.destroy();
      r(true);
    });
    s.once('error', () => r(false));
  });
}

/**
 * Send `request` and wait for a reply that `complete` accepts: a bridge is
 * ready when it accepts and relays, not merely when its port is open (some
 * accept before they can reach the target).
 */
export function replies(address: string, request: Buffer | string, complete: (got: Buffer) => boolean, timeoutMs: number): Promise<boolean> {
  return new Promise((r) => {
    const s = connectTo(address);
    let got = Buffer.alloc(0);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      r(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => s.write(request));
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (complete(got)) done(true);
    });
    s.once('error', () => done(false));
    s.once('close', () => done(complete(got)));
  });
}

export function freePort(): Promise<number> {
  return new Promise((r, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => r(port));
    });
  });
}

function canListen(port: number): Promise<boolean> {
  return new Promise((r) => {
    const srv = net.createServer();
    srv.once('error', () => r(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => r(true)));
  });
}

/**
 * A free loopback port below the kernel's ephemeral range, for a server that
 * is restarted on the same port: between its stop and its start, any
 * outgoing connection on the machine may take a port from that range as its
 * local port, and the restart's bind then fails.
 */
export async function freeFixedPort(): Promise<number> {
  const first = 10000; // above the ports services are usually configured on
  const ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  // A range that starts lower than that leaves no such port: any free one, then.
  for (let tries = 0; ephemeralLow > first && tries < 100; tries++) {
    const port = first + Math.floor(Math.random() * (ephemeralLow - first));
    if (await canListen(port)) return port;
  }
  return freePort();
}

// ---- the machine -------------------------------------------------------------------

/** CPUs this process may use (what `nproc` says), the default worker count of sockbridge. */
/** What every benchmark's plan starts from: QUICK=1 (one pass) or a full run (three, median taken), and the thread count HAProxy and nginx get. */
export interface BasePlan {
  quick: boolean;
  /** Times each workload runs on each bridge (median taken). */
  passes: number;
  /** HAProxy nbthread and nginx worker_processes: sockbridge's default relay thread count. */
  threads: number;
}

export function basePlan(): BasePlan {
  const quick = !!process.env['QUICK'] && process.env['QUICK'] !== '0';
  return { quick, passes: quick ? 1 : 3, threads: nproc() };
}

export function nproc(): number {
  const n = Number(spawnSync('nproc', { encoding: 'utf8' }).stdout);
  return Number.isInteger(n) && n > 0 ? n : os.cpus().length;
}

export function machine(): string {
  const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  return `${nproc()} CPUs (nproc), ${model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}`;
}

// ---- passes ------------------------------------------------------------------------

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** The median of the passes (one disturbed pass does not move it); error counts add up. */
export function combine(passes: Metrics[]): Metrics {
  const out: Metrics = {};
  const keys = new Set(passes.flatMap((p) => Object.keys(p)));
  for (const key of keys) {
    const vals = passes.map((p) => p[key] ?? null);
    if (vals.some((v) => v === null)) out[key] = null;
    else if (key.endsWith('_errors')) out[key] = (vals as number[]).reduce((a, b) => a + b, 0);
    else out[key] = median(vals as number[]);
  }
  return out;
}
