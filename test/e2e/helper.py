#!/usr/bin/env python3
"""Programs the systemd end-to-end test (run.sh) runs inside the container.

  backend PATH GROUP NAME [MS] echo server on the UNIX socket PATH (mode 0660,
                               group GROUP); greets every client with
                               "backend=NAME\\n", then echoes. SIGTERM: stop
                               accepting and remove PATH, finish the open
                               sessions, exit. With MS, the socket file is
                               group-accessible only MS ms after it appears
                               (bind, then chmod), like socat's mode=/group=.
  roundtrip HOST PORT NAME     one session: read the greeting (must name
                               backend NAME), send a payload, read it back.
  loop HOST PORT NAME DIR      sessions back to back until DIR/stop exists
                               (or --max-seconds); DIR/progress holds the
                               count so far; prints and writes DIR/result:
                               "ok=N failed=N max_ms=N errors=..."
  hold HOST PORT NAME DIR      one session kept open: a round trip, then
                               DIR/ready; waits for DIR/go, then a second
                               round trip on the same connection.
  journal-session-end PAYLOAD  checks the journal (JSON on stdin) holds a
                               session-end entry with every field, for a
                               session that sent PAYLOAD bytes.
  journal-reloaded NAME=VALUE  checks the journal (JSON on stdin) holds an
                               EVENT=reloaded entry with NAME=VALUE in CHANGED.

Every wait here is bounded: sockets have timeouts, polls have deadlines.
"""
import grp
import json
import os
import signal
import socket
import sys
import threading
import time

IO_TIMEOUT = 20.0  # seconds for any single connect/recv/send


# --- backend ----------------------------------------------------------------

def backend(path, group, name, chmod_delay_ms=None):
    """chmod_delay_ms unset: the socket file appears with its final owner and
    mode (bound under a temporary name, then renamed into place). Set: bound
    at PATH directly and given its group and mode only that much later, as
    programs that bind, then chmod/chown do (socat's mode=, group=)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    gid = grp.getgrnam(group).gr_gid
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if chmod_delay_ms is None:
        tmp = f"{path}.{os.getpid()}"
        server.bind(tmp)
        os.chown(tmp, -1, gid)
        os.chmod(tmp, 0o660)
        server.listen(128)
        os.rename(tmp, path)
    else:
        os.umask(0o077)  # root-only until the chmod below
        server.bind(path)
        server.listen(128)
        time.sleep(int(chmod_delay_ms) / 1000)
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    greeting = f"backend={name}\n".encode()
    sessions = []
    stopping = threading.Event()

    def serve(conn):
        with conn:
            conn.settimeout(120)
            try:
                conn.sendall(greeting)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
            except OSError:
                pass

    def stop(signum, frame):
        stopping.set()
        # The socket file disappears first: new clients find no backend.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        server.shutdown(socket.SHUT_RDWR)

    signal.signal(signal.SIGTERM, stop)
    print(f"backend {name} listening on {path}", flush=True)
    while not stopping.is_set():
        try:
            conn, _ = server.accept()
        except OSError:
            break
        t = threading.Thread(target=serve, args=(conn,), daemon=True)
        t.start()
        sessions.append(t)
    server.close()
    deadline = time.monotonic() + 20
    for t in sessions:
        t.join(max(0.0, deadline - time.monotonic()))
    print(f"backend {name} stopped", flush=True)


# --- clients ----------------------------------------------------------------

def read_exactly(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_line(sock):
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed before a greeting line ({bytes(buf)!r})")
        buf += chunk
        if len(buf) > 200:
            raise ValueError("greeting too long")
    return buf.decode().strip()


def connect(host, port):
    return socket.create_connection((host, int(port)), timeout=IO_TIMEOUT)


def greet(sock, name):
    line = read_line(sock)
    if line != f"backend={name}":
        raise ValueError(f"expected greeting backend={name}, got {line!r}")


def echo(sock, payload):
    sock.sendall(payload)
    back = read_exactly(sock, len(payload))
    if back != payload:
        raise ValueError("echo mismatch")


def make_payload(size, seed=0):
    return bytes((i * 7 + seed) % 251 for i in range(size))


def roundtrip(host, port, name, size=1234):
    with connect(host, port) as s:
        greet(s, name)
        echo(s, make_payload(int(size)))
    print(f"round trip ok: {host}:{port} via backend={name}, {size} bytes")


def tls_roundtrip(host, port, name, cafile, certfile="", keyfile="", size=1234):
    """A round trip over TLS, with a client certificate when CERTFILE is given."""
    import ssl
    ctx = ssl.create_default_context(cafile=cafile)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    with connect(host, port) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        greet(s, name)
        echo(s, make_payload(int(size)))
    print(f"TLS round trip ok: {host}:{port} via backend={name}, {size} bytes, {'with' if certfile else 'without'} a client certificate")


def journal_tls_refused():
    for e in journal_entries():
        if e.get("EVENT") == "tls-refused" and e.get("CLIENT_ADDR") == "127.0.0.1":
            print(f"tls-refused: {e.get('MESSAGE')}")
            return
    sys.exit("no EVENT=tls-refused entry with CLIENT_ADDR=127.0.0.1")


def loop(host, port, name, directory, max_seconds=120):
    """Sessions back to back; every failure is counted, none retried."""
    ok = failed = 0
    max_ms = 0.0
    errors = {}
    end = time.monotonic() + float(max_seconds)
    stop_file = os.path.join(directory, "stop")
    n = 0
    while not os.path.exists(stop_file) and time.monotonic() < end:
        n += 1
        t0 = time.monotonic()
        try:
            with connect(host, port) as s:
                greet(s, name)
                echo(s, make_payload(100 + n % 900, n))
            ok += 1
        except Exception as e:  # every kind of failure counts
            failed += 1
            key = type(e).__name__
            errors[key] = errors.get(key, 0) + 1
            if failed <= 5:  # the first few tell the story
                print(f"session {n} failed after {(time.monotonic() - t0) * 1000:.0f} ms: {key}: {e}",
                      file=sys.stderr, flush=True)
        max_ms = max(max_ms, (time.monotonic() - t0) * 1000)
        with open(os.path.join(directory, "progress.tmp"), "w") as f:
            f.write(f"{ok + failed}\n")
        os.replace(os.path.join(directory, "progress.tmp"), os.path.join(directory, "progress"))
    err = ",".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "none"
    result = f"ok={ok} failed={failed} max_ms={max_ms:.0f} errors={err}"
    with open(os.path.join(directory, "result"), "w") as f:
        f.write(result + "\n")
    print(result)
    sys.exit(0 if failed == 0 and ok > 0 else 1)


def hold(host, port, name, directory, max_seconds=60):
    with connect(host, port) as s:
        greet(s, name)
        echo(s, make_payload(500, 1))
        open(os.path.join(directory, "ready"), "w").close()
        end = time.monotonic() + float(max_seconds)
        go = os.path.join(directory, "go")
        while not os.path.exists(go):
            if time.monotonic() > end:
                raise TimeoutError("no go signal")
            time.sleep(0.05)
        echo(s, make_payload(700, 2))
    print("held session: round trips before and after ok")


# --- journal checks -----------------------------------------------------------

def journal_entries():
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


def journal_session_end(payload):
    wanted = ("CLIENT_ADDR", "BYTES_IN", "BYTES_OUT", "DURATION_MS", "REASON")
    for e in journal_entries():
        if e.get("EVENT") != "session-end" or str(e.get("BYTES_IN")) != str(payload):
            continue
        missing = [f for f in wanted if f not in e]
        if missing:
            sys.exit(f"session-end entry without {missing}: {e}")
        if not e["CLIENT_ADDR"].endswith("127.0.0.1"):
            sys.exit(f"unexpected CLIENT_ADDR {e['CLIENT_ADDR']!r}")
        if int(e["BYTES_OUT"]) < int(payload):
            sys.exit(f"BYTES_OUT {e['BYTES_OUT']} < {payload}")
        print("session-end: " + " ".join(f"{f}={e[f]}" for f in wanted) + f" PRIORITY={e.get('PRIORITY')}")
        return
    sys.exit(f"no EVENT=session-end entry with BYTES_IN={payload}")


def journal_reloaded(change):
    """CHANGE: "name=value" (or "name"), one of the entry's CHANGED words."""
    for e in journal_entries():
        words = str(e.get("CHANGED", "")).split()
        if e.get("EVENT") == "reloaded" and any(
                w == change or w.startswith(change + "=") for w in words):
            print(f"reloaded: {e.get('MESSAGE')}")
            return
    sys.exit(f"no EVENT=reloaded entry with CHANGED naming {change}")


COMMANDS = {
    "backend": backend,
    "roundtrip": roundtrip,
    "loop": loop,
    "hold": hold,
    "journal-session-end": journal_session_end,
    "journal-reloaded": journal_reloaded,
    "tls-roundtrip": tls_roundtrip,
    "journal-tls-refused": journal_tls_refused,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
