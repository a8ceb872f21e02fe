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
  talk HOST PORT NAME DIR      one session that sends a numbered line every
                               100 ms and checks each echo byte for byte,
                               until DIR/stop; then half-closes and checks
                               that no byte more comes back. DIR/progress:
                               lines so far; prints and writes DIR/result:
                               "lines=N bytes=N worst_echo_ms=N error=..."
  arrivals HOST PORT NAME DIR  a new client every 50 ms (a thread each: the
                               greeting, one round trip) until DIR/stop;
                               DIR/progress: clients done; prints and writes
                               DIR/result: "clients=N ok=N failed=N
                               unfinished=N worst_first_byte_ms=N errors=..."
  many HOST PORT NAME N DIR    N sessions open at once (RLIMIT_NOFILE raised
                               to its hard limit): the greeting and a round
                               trip on each, DIR/ready, waits for DIR/go,
                               then a second round trip on every one.
  request HOST PORT NAME       one session that sends its request before the
                               greeting arrives (a held client's), then reads
                               the greeting and the echo.
  tls-idle HOST PORT NAME CA CERT KEY DIR
                               a TLS session: a round trip, DIR/ready, then
                               idle until the bridge closes it; writes the
                               wall-clock time of the close to DIR/closed.
  redis-loop SOCKET USER DIR  redis-cli -s SOCKET INCR e2e:loop as USER, a new
                               client each time, until DIR/stop (or
                               --max-seconds); every reply must be the last
                               one plus 1 (none lost, none repeated);
                               DIR/progress: commands so far; prints and
                               writes DIR/result: "ok=N failed=N max_ms=N
                               errors=..."
  tls-rogue HOST PORT CA [CERT KEY]
                               a TLS client the server end must refuse (no
                               client certificate, or one of another CA): it
                               sends a redis SET e2e:rogue and fails unless
                               the connection ends without a reply; prints
                               its own port ("(port N)").
  journal-event EVENT PID COND...
                               checks the journal (JSON on stdin) holds an
                               EVENT= entry of process PID with every COND,
                               NAME=VALUE or NAME>=NUMBER.
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
import re
import resource
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
    raise_nofile()  # 2,000 sessions at once ("many") need more than 1024 fds
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


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


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


def redis_loop(sock, user, directory, max_seconds=120):
    """A real client program, one process per command: redis-cli INCR through
    the client end. Every failure is counted, none retried."""
    import subprocess
    ok = failed = 0
    max_ms = 0.0
    errors = {}
    last = None
    end = time.monotonic() + float(max_seconds)
    stop_file = os.path.join(directory, "stop")
    cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
           "redis-cli", "-s", sock, "INCR", "e2e:loop"]
    while not os.path.exists(stop_file) and time.monotonic() < end:
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=IO_TIMEOUT)
            out = r.stdout.strip()
            if r.returncode != 0 or not out.lstrip("-").isdigit():
                raise ConnectionError(f"exit {r.returncode}: {(out + ' ' + r.stderr.strip()).strip()!r}")
            value = int(out)
            if last is not None and value != last + 1:
                raise ValueError(f"INCR answered {value} after {last}: a command lost or repeated")
            last = value
            ok += 1
        except Exception as e:  # every kind of failure counts
            failed += 1
            key = type(e).__name__
            errors[key] = errors.get(key, 0) + 1
            last = None
            if failed <= 5:
                print(f"command {ok + failed} failed after {(time.monotonic() - t0) * 1000:.0f} ms: {key}: {e}",
                      file=sys.stderr, flush=True)
        max_ms = max(max_ms, (time.monotonic() - t0) * 1000)
        write_file(directory, "progress", f"{ok + failed}\n")
    err = ",".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "none"
    result = f"ok={ok} failed={failed} max_ms={max_ms:.0f} errors={err}"
    write_file(directory, "result", result + "\n")
    print(result)
    sys.exit(0 if failed == 0 and ok > 0 else 1)


def tls_rogue(host, port, cafile, certfile="", keyfile=""):
    """Succeeds when the server end refuses this client: the handshake or the
    first read fails, or the connection ends, before any reply."""
    import ssl
    ctx = ssl.create_default_context(cafile=cafile)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    what = "with a certificate of another CA" if certfile else "without a client certificate"
    raw = connect(host, port)
    # (Its port, for the server end's journal entry: CLIENT_PORT.)
    what += f" (port {raw.getsockname()[1]})"
    try:
        with raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            # (TLS 1.3: the server's verdict on the certificate comes after
            # the client's handshake is done, with its first read.)
            s.sendall(b"*3\r\n$3\r\nSET\r\n$9\r\ne2e:rogue\r\n$1\r\n1\r\n")
            reply = s.recv(100)
    except (ssl.SSLError, ConnectionError) as e:
        print(f"refused {what}: {type(e).__name__}: {e}")
        return
    if reply:
        sys.exit(f"not refused {what}: the program answered {reply!r}")
    print(f"refused {what}: the connection ended without a reply")


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


def wait_for_go(directory, max_seconds):
    """Until run.sh creates DIR/go; at most max_seconds."""
    end = time.monotonic() + float(max_seconds)
    go = os.path.join(directory, "go")
    while not os.path.exists(go):
        if time.monotonic() > end:
            raise TimeoutError("no go signal")
        time.sleep(0.05)


def hold(host, port, name, directory, max_seconds=60):
    with connect(host, port) as s:
        greet(s, name)
        echo(s, make_payload(500, 1))
        open(os.path.join(directory, "ready"), "w").close()
        wait_for_go(directory, max_seconds)
        echo(s, make_payload(700, 2))
    print("held session: round trips before and after ok")


def write_file(directory, name, text):
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(directory, name))


def talk(host, port, name, directory, max_seconds=120):
    """One session, a numbered line every 100 ms, every echo checked in order:
    a lost, repeated or changed byte is a mismatch; an error or EOF fails."""
    stop_file = os.path.join(directory, "stop")
    end = time.monotonic() + float(max_seconds)
    lines = sent = 0
    worst_ms = 0.0
    error = "none"
    try:
        with connect(host, port) as s:
            greet(s, name)
            next_at = time.monotonic()
            while not os.path.exists(stop_file):
                if time.monotonic() > end:
                    raise TimeoutError(f"no {stop_file} after {max_seconds} s")
                line = f"{lines + 1:06d} {name} {'.' * (lines % 64)}\n".encode()
                t0 = time.monotonic()
                s.sendall(line)
                back = read_exactly(s, len(line))
                if back != line:
                    raise ValueError(f"line {lines + 1}: sent {line!r}, got back {back!r} (after {sent} good bytes)")
                worst_ms = max(worst_ms, (time.monotonic() - t0) * 1000)
                lines += 1
                sent += len(line)
                write_file(directory, "progress", f"{lines}\n")
                next_at += 0.1
                time.sleep(max(0.0, next_at - time.monotonic()))
            # The end: the backend sees EOF and closes; nothing more may come back.
            s.shutdown(socket.SHUT_WR)
            extra = s.recv(65536)
            if extra:
                raise ValueError(f"{len(extra)} bytes more than were sent came back: {extra[:40]!r}")
    except Exception as e:  # every kind of failure counts
        error = f"{type(e).__name__}: {e}"
    result = f"lines={lines} bytes={sent} worst_echo_ms={worst_ms:.0f} error={error}"
    write_file(directory, "result", result + "\n")
    print(result)
    sys.exit(0 if error == "none" and lines > 0 else 1)


def arrivals(host, port, name, directory, max_seconds=120):
    """A new client every 50 ms, each in a thread of its own: connect, the
    greeting (its first byte timed from before the connect), one round trip.
    Every failure is counted, none retried."""
    stop_file = os.path.join(directory, "stop")
    end = time.monotonic() + float(max_seconds)
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    worst = [0.0, 0]  # ms, client number
    errors = {}

    def client(n):
        t0 = time.monotonic()
        try:
            with connect(host, port) as s:
                first = s.recv(1)
                if not first:
                    raise ConnectionError("closed before the first byte")
                ms = (time.monotonic() - t0) * 1000
                rest = read_line(s)
                if first.decode() + rest != f"backend={name}":
                    raise ValueError(f"unexpected greeting {first.decode() + rest!r}")
                echo(s, make_payload(100 + n % 400, n))
            with lock:
                counts["ok"] += 1
                if ms > worst[0]:
                    worst[:] = [ms, n]
        except Exception as e:
            key = type(e).__name__
            with lock:
                counts["failed"] += 1
                errors[key] = errors.get(key, 0) + 1
                if counts["failed"] <= 5:
                    print(f"client {n} failed after {(time.monotonic() - t0) * 1000:.0f} ms: {key}: {e}",
                          file=sys.stderr, flush=True)

    threads = []
    next_at = time.monotonic()
    while not os.path.exists(stop_file) and time.monotonic() < end:
        t = threading.Thread(target=client, args=(len(threads) + 1,), daemon=True)
        t.start()
        threads.append(t)
        with lock:
            done = counts["ok"] + counts["failed"]
        write_file(directory, "progress", f"{done}\n")
        next_at += 0.05
        time.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + IO_TIMEOUT + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    unfinished = sum(t.is_alive() for t in threads)
    with lock:
        err = ",".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "none"
        result = (f"clients={len(threads)} ok={counts['ok']} failed={counts['failed']} unfinished={unfinished} "
                  f"worst_first_byte_ms={worst[0]:.0f} (client {worst[1]}) errors={err}")
        good = counts["failed"] == 0 and unfinished == 0 and counts["ok"] > 0
    write_file(directory, "result", result + "\n")
    print(result, flush=True)
    os._exit(0 if good else 1)  # (an unfinished thread must not hold the exit)


def many(host, port, name, count, directory, max_seconds=120):
    """COUNT sessions open at once, each checked before and after DIR/go."""
    count = int(count)
    limit = raise_nofile()
    socks = []
    i = 0
    try:
        for i in range(count):
            socks.append(connect(host, port))
            greet(socks[i], name)
            echo(socks[i], make_payload(100 + i % 200, i))
        write_file(directory, "ready", f"{count}\n")
        wait_for_go(directory, max_seconds)
        for i, s in enumerate(socks):
            echo(s, make_payload(300 + i % 200, i + 1))
    except Exception as e:
        sys.exit(f"session {i + 1} of {count} (RLIMIT_NOFILE {limit}): {type(e).__name__}: {e}")
    finally:
        for s in socks:
            s.close()
    print(f"{count} sessions: the greeting and a round trip on each, then a second round trip on every one")


def request(host, port, name, size=777):
    """The request first, as a client that does not wait for the greeting."""
    payload = make_payload(int(size), 5)
    t0 = time.monotonic()
    with connect(host, port) as s:
        s.sendall(payload)
        greet(s, name)
        back = read_exactly(s, len(payload))
        if back != payload:
            raise ValueError("echo mismatch")
    print(f"request answered after {time.monotonic() - t0:.1f} s: backend={name}, {size} bytes echoed")


def tls_idle(host, port, name, cafile, certfile, keyfile, directory, max_seconds=30):
    """A TLS session left idle until the bridge closes it (an EOF, with or
    without close_notify, or a reset); fails if it is still open after
    MAX_SECONDS or anything arrives instead."""
    import ssl
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.load_cert_chain(certfile, keyfile)
    with connect(host, port) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        greet(s, name)
        echo(s, make_payload(300, 3))
        write_file(directory, "ready", "")
        s.settimeout(float(max_seconds))
        try:
            data = s.recv(1)
            if data:
                raise ValueError(f"unexpected bytes on the idle session: {data!r}")
            how = "EOF"
        except (ConnectionResetError, ssl.SSLError) as e:
            how = type(e).__name__
        write_file(directory, "closed", f"{time.time():.3f}\n")
    print(f"idle TLS session closed by the bridge ({how})")


# --- journal checks -----------------------------------------------------------

def journal_entries():
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


def journal_session_end(payload):
    wanted = ("CLIENT_ADDR", "BYTES_IN", "BYTES_OUT", "DURATION_MS", "REASON", "TARGET")
    for e in journal_entries():
        if e.get("EVENT") != "session-end" or str(e.get("BYTES_IN")) != str(payload):
            continue
        missing = [f for f in wanted if f not in e]
        if missing:
            sys.exit(f"session-end entry without {missing}: {e}")
        if not e["CLIENT_ADDR"].endswith("127.0.0.1"):
            sys.exit(f"unexpected CLIENT_ADDR {e['CLIENT_ADDR']!r}")
        if e["TARGET"] != "/var/program/program.cmd":
            sys.exit(f"TARGET {e['TARGET']!r}: not the target used")
        if int(e["BYTES_OUT"]) < int(payload):
            sys.exit(f"BYTES_OUT {e['BYTES_OUT']} < {payload}")
        print("session-end: " + " ".join(f"{f}={e[f]}" for f in wanted) + f" PRIORITY={e.get('PRIORITY')}")
        return
    sys.exit(f"no EVENT=session-end entry with BYTES_IN={payload}")


def journal_event(event, pid, *conds):
    """An EVENT=event entry logged by process PID ("-": any) with every COND:
    NAME=VALUE (as text) or NAME>=NUMBER."""
    checks = []
    for cond in conds:
        m = re.fullmatch(r"([A-Z_]+)(>=|=)(.*)", cond)
        if not m:
            sys.exit(f"not a condition: {cond!r}")
        checks.append(m.groups())

    def holds(e, field, op, value):
        if field not in e:
            return False
        if op == "=":
            return str(e[field]) == value
        try:
            return float(e[field]) >= float(value)
        except ValueError:
            return False

    seen = []
    for e in journal_entries():
        if e.get("EVENT") != event or (pid != "-" and str(e.get("_PID")) != pid):
            continue
        if all(holds(e, *c) for c in checks):
            fields = " ".join(f"{f}={e.get(f)}" for f, _, _ in checks)
            print(f"{event} (PID {e.get('_PID')}): {e.get('MESSAGE')} [{fields}]")
            return
        seen.append(e.get("MESSAGE"))
    sys.exit(f"no EVENT={event} entry of PID {pid} with {' '.join(conds)}; saw: {seen}")


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
    "talk": talk,
    "arrivals": arrivals,
    "many": many,
    "request": request,
    "tls-idle": tls_idle,
    "journal-event": journal_event,
    "redis-loop": redis_loop,
    "tls-rogue": tls_rogue,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
