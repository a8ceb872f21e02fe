#!/usr/bin/env python3
"""systemd's part in a restart, small enough to read: for test/handover.test.ts.

    fake-systemd.py DIR COMMAND...

Listens on 127.0.0.1 (a free port) as a .socket unit would, runs COMMAND as
the service with that socket (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID) and a
notify socket (NOTIFY_SOCKET), and keeps an fd store: FDSTORE=1 with FDNAME=,
FDPOLL=0, FDSTOREREMOVE=1, BARRIER=1 as sd_notify(3) describes them. Each generation's
stderr goes to DIR/gen-N.log. Prints one JSON object per line on stdout:
{"event": "listening", "port": P}, {"event": "ready", "gen": N, "pid": PID},
{"event": "exited", "gen": N, "code": C, "stored": {NAME: COUNT}},
{"event": "removed", "name": NAME, "count": COUNT},
{"event": "status", "gen": N, "text": STATUS}.

Commands on stdin, one per line:
    restart           send SIGUSR2 (the units' RestartKillSignal=), wait for
                      the exit, start the next generation with the listener
                      and every stored fd, in an order of its own (as systemd)
    restart-corrupt   the same, but the stored state claims a future version
    restart-v1        the same, but the stored state is rewritten as sockbridge
                      0.2.0 wrote it (format version 1, one-letter keys): an
                      upgrade from 0.2.0
    handover          only the first half of a restart: SIGUSR2, wait for the exit
    start             the second half: the next generation (stored fds whose
                      connection is gone, POLLHUP or POLLERR, are dropped
                      first, as systemd drops them whenever they happen)
    stop              SIGTERM, wait, exit (so does the end of stdin)
"""

import array
import json
import os
import random
import select
import signal
import socket
import sys
import time

SCM_MAX_FD = 253


def emit(**event):
    print(json.dumps(event), flush=True)


class Service:
    def __init__(self, directory, command):
        self.directory = directory
        self.command = command
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.notify_path = os.path.join(directory, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.store = []  # [(fd, name)]
        self.unpolled = set()  # fds stored with FDPOLL=0
        self.gen = 0
        self.pid = None

    def drop_hung_up(self):
        kept = []
        for fd, name in self.store:
            if fd in self.unpolled:
                kept.append((fd, name))
                continue
            p = select.poll()
            p.register(fd, 0)  # POLLHUP and POLLERR are reported whatever is asked
            if p.poll(0):
                os.close(fd)
            else:
                kept.append((fd, name))
        self.store = kept

    def start(self, rewrite=None):
        self.gen += 1
        self.drop_hung_up()
        stored = list(self.store)
        random.shuffle(stored)  # systemd's order is its own: the service matches by name
        if rewrite:
            stored = [(self.rewritten(fd, rewrite) if name == "sb-state" else fd, name) for fd, name in stored]
        fds = [(self.listener.fileno(), "bridge.socket")] + stored
        log = os.open(os.path.join(self.directory, f"gen-{self.gen}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pid = os.fork()
        if pid == 0:
            os.dup2(log, 2)
            # Out of the way first, so that moving one into place never overwrites another.
            high = [os.dup(fd) for fd, _ in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
            env = dict(os.environ)
            env.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()),
                       LISTEN_FDNAMES=":".join(name for _, name in fds), NOTIFY_SOCKET=self.notify_path)
            os.closerange(3 + len(fds), 65536)
            os.execvpe(self.command[0], self.command, env)
        os.close(log)
        self.pid = pid

    def rewritten(self, fd, how):
        state = json.loads(os.pread(fd, 1 << 26, 0))
        if how == "restart-corrupt":
            state["version"] = 999
        else:
            # Version 1 as 0.2.0 wrote it: only the fields it knew, one letter each.
            def client(r):
                v1 = dict(c=r["client"], a=r["addr"], p=r["port"], t=r["startedAt"], i=r["bytesIn"], e=r["clientEnded"], n=r["retriesLeft"])
                if "replay" in r:
                    v1["r"] = r["replay"]
                return v1
            def session(r):
                v1 = dict(client(r), s=r["server"], o=r["bytesOut"], d=r["directionsDone"])
                if "target" in r:
                    v1["g"] = r["target"]
                return v1
            state = dict(format=state["format"], version=1, totals=state["totals"],
                         sessions=[session(r) for r in state["sessions"]], waiting=[client(r) for r in state["waiting"]])
        new = os.memfd_create("sb-state")
        os.write(new, json.dumps(state).encode())
        return new

    def receive(self, timeout):
        ready, _, _ = select.select([self.notify], [], [], timeout)
        if not ready:
            return
        msg, ancdata, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(SCM_MAX_FD * 4))
        fds = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        fields = dict(line.split("=", 1) for line in msg.decode().splitlines() if "=" in line)
        if fields.get("BARRIER") == "1":
            for fd in fds:
                os.close(fd)  # processed every earlier message: closing it tells the service
        elif fields.get("FDSTORE") == "1":
            self.store.extend((fd, fields.get("FDNAME", "stored")) for fd in fds)
            if fields.get("FDPOLL") == "0":
                self.unpolled.update(fds)
        elif fields.get("FDSTOREREMOVE") == "1":
            name = fields.get("FDNAME")
            gone = [fd for fd, n in self.store if n == name]
            for fd in gone:
                os.close(fd)
                self.unpolled.discard(fd)
            self.store = [(fd, n) for fd, n in self.store if n != name]
            emit(event="removed", name=name, count=len(gone))
        else:
            for fd in fds:
                os.close(fd)
        if fields.get("READY") == "1":
            emit(event="ready", gen=self.gen, pid=self.pid)
        if "STATUS" in fields:
            emit(event="status", gen=self.gen, text=fields["STATUS"])

    def exited(self):
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        counts = {}
        for _, name in self.store:
            counts[name] = counts.get(name, 0) + 1
        emit(event="exited", gen=self.gen, code=os.waitstatus_to_exitcode(status), stored=counts)
        self.pid = None
        return True

    def stop_child(self, sig, limit=30):
        os.kill(self.pid, sig)
        end = time.monotonic() + limit
        while not self.exited():
            if end is not None and time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                end = None
            self.receive(0.02)
        while self.pending():  # what it sent just before exiting
            self.receive(0)

    def pending(self):
        return bool(select.select([self.notify], [], [], 0)[0])


def main():
    directory, command = sys.argv[1], sys.argv[2:]
    service = Service(directory, command)
    emit(event="listening", port=service.listener.getsockname()[1])
    service.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            ready, _, _ = select.select([service.notify, sys.stdin], [], [], 1.0)
            if service.notify in ready:
                service.receive(0)
            if sys.stdin in ready:
                line = sys.stdin.readline().strip()
                if line in ("restart", "restart-corrupt", "restart-v1"):
                    service.stop_child(signal.SIGUSR2)
                    service.start(rewrite=None if line == "restart" else line)
                elif line == "handover":
                    service.stop_child(signal.SIGUSR2)
                elif line == "start":
                    service.start()
                elif line == "stop" or line == "":
                    break
            if service.pid is not None and service.exited():
                break
    finally:
        if service.pid is not None:
            service.stop_child(signal.SIGTERM)


if __name__ == "__main__":
    main()
