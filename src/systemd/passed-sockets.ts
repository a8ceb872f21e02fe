// Socket activation: the sockets systemd passes (sd_listen_fds(3)): the
// listening sockets of the socket unit, and what a previous process left in
// the fd store (fd-store.ts tells them apart by name).

export interface PassedSocket {
  fd: number;
  name: string;
}

const SD_LISTEN_FDS_START = 3;

/**
 * sd_listen_fds(3): the sockets systemd passed us, if they are meant for this
 * process. The LISTEN_* variables are removed so that no child inherits them.
 */
export function takeSystemdSockets(env: NodeJS.ProcessEnv, pid: number): PassedSocket[] {
  const listenPid = Number(env['LISTEN_PID']);
  const count = Number(env['LISTEN_FDS']);
  const names = (env['LISTEN_FDNAMES'] ?? '').split(':');
  delete env['LISTEN_PID'];
  delete env['LISTEN_FDS'];
  delete env['LISTEN_FDNAMES'];
  if (listenPid !== pid || !Number.isInteger(count) || count < 1) return [];
  return Array.from({ length: count }, (_, i) => ({
    fd: SD_LISTEN_FDS_START + i,
    name: names[i] || `fd${SD_LISTEN_FDS_START + i}`,
  }));
}
