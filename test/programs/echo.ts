// A tiny echo program on a UNIX socket, for `make demo` and manual tries:
//   node dist/test/programs/echo.js PATH
// It echoes every byte and answers EOF with EOF (half-close aware).

import { unlinkSync } from 'node:fs';
import net from 'node:net';

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: echo.js SOCKET_PATH\n');
  process.exit(64);
}
try { unlinkSync(path); } catch { /* no stale socket */ }
const server = net.createServer({ allowHalfOpen: true }, (s) => {
  s.on('error', () => {});
  s.pipe(s);
});
server.listen(path, () => process.stderr.write(`echo program listening on ${path}\n`));
const stop = (): void => { server.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
