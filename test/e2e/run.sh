#!/usr/bin/env bash
# sockbridge end-to-end test in a really booted systemd, on every Debian
# release a package is built for (Debian 12 and 13).
#
#   make e2e                        (as root; part of `make test`)
#   bash test/e2e/run.sh trixie     one release
#
# For each release: builds that release's .deb (scripts/build-deb.sh SUITE),
# boots a throw-away container of that release with systemd-nspawn
# (--private-network: only its own loopback), installs the package there as
# an operator would, and checks socket activation, the journal, backend
# restarts (also one whose socket file is group-accessible only late),
# service restarts, restarts without a gap (RestartKillSignal=SIGUSR2: a
# talking session and a stream of new clients across two restarts, a client
# held for an absent backend, 2,000 open sessions, all handed to the next
# process through systemd's fd store; a TLS session closed after
# restart-grace; a stop that drains and leaves the store empty), the
# watchdog, reload, a second instance, `sockbridge status`, the sandbox
# score (also with the metrics drop-in), TLS, both ends (a second container
# of the release on a private veth link, the client end
# bridge-connect@redis.socket reaching redis behind the server end's
# bridge.socket over TLS with client certificates: redis-cli through both,
# the journals of both, refused certificates, the server end restarted and
# stopped under a redis-cli loop, the client end's IPAddressAllow= and
# sandbox score, its upgrade and removal), a crash loop, an upgrade to a
# higher version (the package repacked, a session carried across it in
# bridge.service and in a template instance), removal, and an upgrade from
# 0.1.0 (built from git history, cached), which has no handover and is
# stopped first. On Debian 13 it first checks that the Debian 12 build is
# refused by apt and, forced in, fails once with one clear line.
# Prints one line per step, "e2e-SUITE: N passed, N failed" per release and,
# last, "e2e: N passed, N failed" for all of them.
# Exits 0 with one "e2e: skipped: ..." line where it cannot run (not root,
# no systemd-nspawn).
#
# A container's root is the cached /var/cache/sockbridge/SUITE-runtime-root
# (debootstrap + nodejs + test tools, see scripts/rootfs.sh) mounted with a
# tmpfs overlay (--volatile=overlay): the cache stays pristine and every
# change vanishes when the container stops.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/rootfs.sh
source "$repo/scripts/rootfs.sh"

RUNTIME_PACKAGES=(nodejs python3 procps iproute2 redis-server)
# Debian 13's HAProxy (3.0) reads PROXY v2 TLVs back (fc_pp_tlv, HAProxy 2.9+): step 15.
TLV_READER_SUITE=trixie
WATCHDOG_SEC=10       # bridge.service's WatchdogSec=
RESTART_SEC=1         # bridge.service's RestartSec=
RESTART_GRACE=1       # bridge.conf's restart-grace (the default, 1s)
MAX_FIRST_BYTE_MS=3000  # a new client's wait across a restart, at most
MAX_EXPOSURE=1.5      # systemd-analyze security, at most

NSPAWN_PID=
CPID=
WORK=
PASSED=0
FAILED=0

skip() { echo "e2e: skipped: $*"; exit 0; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# --- the container ------------------------------------------------------------

# Run a command inside the booted container (all its namespaces), with a
# clean environment.
c() {
    nsenter -t "$CPID" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# The same in the background: $! is the nsenter process.
c_bg() {
    (exec nsenter -t "$CPID" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 "$@") &
}

# not CMD...: fails when CMD succeeds. (A plain "! CMD" never trips errexit.)
not() {
    if "$@" >/dev/null 2>&1; then
        echo "unexpectedly true: $*" >&2
        return 1
    fi
}

# poll SECONDS CMD...: run CMD until it succeeds; fail after SECONDS.
poll() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge "$end" ]; then
            echo "timed out after ${limit}s waiting for: $*" >&2
            return 1
        fi
        sleep 0.1
    done
}

# Wait for a host PID to exit, at most SECONDS; fails when it is still there.
wait_exit() {
    local pid=$1 limit=$2
    local end=$((SECONDS + limit))
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -ge "$end" ] && return 1
        sleep 0.1
    done
}

# boot_container ROOT [MACHINE [NSPAWN OPTION...]]: boots a container of
# ROOT; sets NSPAWN_PID and CPID (a caller may make them its own locals).
boot_container() {
    local root=$1 machine=${2:-sockbridge-e2e-$SUITE}
    shift $(($# < 2 ? $# : 2))
    # The unified cgroup hierarchy (cgroup v2), as on a Debian 12 host, even
    # where the host itself has a hybrid one.
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --register=no --keep-unit --console=passive \
        --boot --private-network --volatile=overlay --link-journal=no \
        --resolv-conf=off --timezone=off --machine="$machine" \
        --bind-ro="$repo/build:/mnt/build" --bind-ro="$repo/test/e2e:/mnt/e2e" \
        --bind="$WORK/shared:/mnt/shared" "$@" \
        -D "$root" >"$WORK/nspawn-$machine.log" 2>&1 &
    NSPAWN_PID=$!
    # The container's systemd is a child of the nspawn process.
    local end=$((SECONDS + 30)) pid
    while [ -z "$CPID" ]; do
        for pid in $(pgrep -P "$NSPAWN_PID" || true); do
            [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ] && CPID=$pid
        done
        [ -n "$CPID" ] && break
        kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/nspawn-$machine.log" >&2; return 1; }
        [ $SECONDS -ge $end ] && { echo "no systemd in the container" >&2; return 1; }
        sleep 0.1
    done
    # Booted: every unit up (or failed: "degraded" is reported as a boot
    # problem, but the test goes on and shows it).
    local state end2=$((SECONDS + 90))
    while :; do
        state=$(c systemctl is-system-running 2>/dev/null || true)
        case $state in running | degraded) break ;; esac
        [ $SECONDS -ge $end2 ] && { echo "container not booted: $state" >&2; return 1; }
        sleep 0.2
    done
    if [ "$state" = degraded ]; then
        c systemctl --failed --no-legend >&2 || true
    fi
}

stop_container() {
    [ -n "$NSPAWN_PID" ] || return 0
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
        if [ -n "$CPID" ]; then
            timeout 10 nsenter -t "$CPID" -a systemctl --no-block poweroff >/dev/null 2>&1 || true
        fi
        if ! wait_exit "$NSPAWN_PID" 30; then
            # SIGTERM makes nspawn ask the container to halt; -9 last.
            kill -TERM "$NSPAWN_PID" 2>/dev/null || true
            wait_exit "$NSPAWN_PID" 15 || kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        fi
    fi
    wait "$NSPAWN_PID" 2>/dev/null || true
    NSPAWN_PID=
}

cleanup() {
    local rc=$?
    # The journal of a failed run, for the report.
    if [ "$FAILED" -gt 0 ] && [ -n "$CPID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        c journalctl -b --no-pager -o short-monotonic >"$repo/build/e2e-journal-$SUITE.log" 2>&1 || true
        echo "container journal: build/e2e-journal-$SUITE.log" >&2
    fi
    [ -z "$NSPAWN2_PID" ] || stop_client_container
    stop_container
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}

# --- steps ------------------------------------------------------------------------

# step NAME FUNCTION: run FUNCTION in a subshell with errexit (any failing
# command fails the step), print one line with its time and, on failure,
# its output. A step that exits with $SKIPPED cannot run on this machine: one
# SKIP line with the last line it printed, counted neither way. Once a step
# marked as required (REQUIRED=1) failed, the rest are not run but counted as
# failed.
BLOCKED=
SKIPPED=77
step() {
    local name=$1 fn=$2 t0 rc
    if [ -n "$BLOCKED" ]; then
        FAILED=$((FAILED + 1))
        printf 'e2e: FAIL %-58s not run: %s failed\n' "$name" "$BLOCKED"
        return 0
    fi
    t0=$(now)
    set +e
    (set -e; "$fn") >"$WORK/step.log" 2>&1
    rc=$?
    set -e
    # A client loop left behind by a failed step must not load the next one.
    local dir
    for dir in "$WORK"/shared/*/; do
        [ -d "$dir" ] && touch "$dir/stop"
    done
    if [ $rc -eq "$SKIPPED" ]; then
        printf 'e2e: SKIP %-58s %s\n' "$name" "$(tail -n 1 "$WORK/step.log")"
    elif [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'e2e: PASS %-58s %s\n' "$name" "$(elapsed "$t0")"
        sed 's/^/      /' "$WORK/step.log" | { grep -v '^ *$' || true; } | tail -n 3
    else
        FAILED=$((FAILED + 1))
        printf 'e2e: FAIL %-58s %s\n' "$name" "$(elapsed "$t0")"
        sed 's/^/      /' "$WORK/step.log" | tail -n 25
        [ -z "${REQUIRED:-}" ] || BLOCKED=$name
    fi
}

H=/mnt/e2e/helper.py

main_pid() { c systemctl show -P MainPID "$1"; }
installed_version() { c dpkg-query -W -f '${Version}' sockbridge; }
is_state() {
    local state
    state=$(c systemctl show -P ActiveState "$1")
    [ "$state" = "$2" ] || { echo "$1 is $state, not $2" >&2; return 1; }
}
listening() { c ss -Hltn "sport = :$1" | grep -q LISTEN; }
roundtrip() { c timeout 30 python3 "$H" roundtrip "$@"; }
# journal_has CHECK ARG: helper.py's journal check on bridge.service's journal.
journal_has() {
    c sh -c "journalctl -u bridge.service -o json --no-pager | python3 $H $1 $2"
}

# A client loop in the background (inside the container); its files are in
# $WORK/shared/$1 on the host.
start_loop() {
    local dir=$1 port=$2 name=$3
    mkdir -p "$WORK/shared/$dir"
    c_bg timeout 150 python3 "$H" loop 127.0.0.1 "$port" "$name" "/mnt/shared/$dir" 120 \
        >"$WORK/shared/$dir/out" 2>&1
    echo $! >"$WORK/shared/$dir/pid"
}
loop_count() { cat "$WORK/shared/$1/progress" 2>/dev/null || echo 0; }
loop_reached() { [ "$(loop_count "$1")" -ge "$2" ]; }
# wait_sessions DIR N: at least N more sessions done by the loop.
wait_sessions() {
    local dir=$1 target
    target=$(($(loop_count "$dir") + $2))
    poll 60 loop_reached "$dir" "$target"
    echo "loop $dir: $(loop_count "$dir") sessions"
}
finish_loop() {
    local dir=$1 pid
    pid=$(cat "$WORK/shared/$dir/pid")
    touch "$WORK/shared/$dir/stop"
    wait_exit "$pid" 60 || { kill "$pid"; echo "client loop did not stop"; return 1; }
    cat "$WORK/shared/$dir/out"
    wait "$pid"
}

# --- restarts without a gap (RestartKillSignal=SIGUSR2, the fd store) -------

# start_client DIR COMMAND ARGS...: a helper.py client in the background,
# DIR (as the container sees it) its last argument; its files are in
# $WORK/shared/DIR, stopped and checked with finish_loop DIR.
start_client() {
    local dir=$1; shift
    mkdir -p "$WORK/shared/$dir"
    c_bg timeout 150 python3 "$H" "$@" "/mnt/shared/$dir" >"$WORK/shared/$dir/out" 2>&1
    echo $! >"$WORK/shared/$dir/pid"
}
# wait_more DIR N: DIR's progress (lines, clients) grew by N.
wait_more() {
    local target
    target=$(($(loop_count "$1") + $2))
    poll 30 loop_reached "$1" "$target"
}

# restart_bridge: a timed `systemctl restart bridge.service`; sets OLD_PID,
# NEW_PID and RESTART_S (seconds) and fails unless MainPID changed.
restart_bridge() {
    local t0
    OLD_PID=$(main_pid bridge.service)
    t0=$(now)
    c timeout 60 systemctl restart bridge.service
    RESTART_S=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
    NEW_PID=$(main_pid bridge.service)
    echo "systemctl restart: ${RESTART_S}s, MainPID $OLD_PID -> $NEW_PID"
    [ "$OLD_PID" != "$NEW_PID" ]
    [ "$NEW_PID" != 0 ]
}

# journal_event EVENT PID COND...: helper.py's journal-event check on what
# process PID logged (matched by _PID: the old process has exited).
journal_event() {
    local event=$1 pid=$2 conds=
    shift 2
    # (printf with no argument would still print one empty condition.)
    [ $# -eq 0 ] || conds=$(printf "'%s' " "$@")
    c sh -c "journalctl -o json --no-pager _PID=$pid EVENT=$event |
        python3 $H journal-event $event $pid $conds"
}

fdstore() { c systemctl show -P NFileDescriptorStore bridge.service; }
fdstore_empty() { [ "$(fdstore)" = 0 ]; }
# At least one client held waiting (for the target) by bridge.service.
bridge_holds_client() {
    c sockbridge status --json |
        python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["sessions"]["waiting"] < 1)'
}

step_install() {
    # The dependencies are in the root already: no network needed.
    c apt-get install -y -q -o Dpkg::Use-Pty=0 /mnt/build/"$DEB_NAME"
    # Installing enables and starts nothing.
    [ "$(c systemctl is-enabled bridge.socket)" = disabled ]
    is_state bridge.socket inactive
    is_state bridge.service inactive
    not listening 12345
    c sockbridge check-config --config /etc/sockbridge/bridge.conf >/dev/null
    c dpkg -s sockbridge | grep Version
}

setup_backend() {
    # The operator's side, as the README describes it: a backend whose
    # socket belongs to group "program" (mode 0660), and that group for the
    # bridge (a drop-in, as `systemctl edit bridge.service` writes it).
    c groupadd --system program
    c sh -c 'cat >/etc/systemd/system/program.service' <<EOF
[Unit]
Description=test backend (echo) on /var/program/program.cmd
[Service]
ExecStart=/usr/bin/python3 $H backend /var/program/program.cmd program main
EOF
    # The same backend, but its socket file is root-only for its first
    # 300 ms (bind, then chmod/chgrp, as socat's mode=/group= do).
    c sh -c 'cat >/etc/systemd/system/program-slow.service' <<EOF
[Unit]
Description=test backend (echo), socket made group-accessible late
Conflicts=program.service
[Service]
ExecStart=/usr/bin/python3 $H backend /var/program/program.cmd program main 300
EOF
    c sh -c 'cat >/etc/systemd/system/program2.service' <<EOF
[Unit]
Description=second test backend (echo) on /var/program/second.cmd
[Service]
ExecStart=/usr/bin/python3 $H backend /var/program/second.cmd program second
EOF
    c mkdir -p /etc/systemd/system/bridge.service.d /etc/systemd/system/bridge@.service.d
    printf '[Service]\nSupplementaryGroups=program\n' |
        c sh -c 'tee /etc/systemd/system/bridge.service.d/backend-group.conf >/etc/systemd/system/bridge@.service.d/backend-group.conf'
    c systemctl daemon-reload
    c systemctl start program.service program2.service
    poll 20 c test -S /var/program/program.cmd
    poll 20 c test -S /var/program/second.cmd
    c stat -c '%A %U:%G %n' /var/program/program.cmd
}

step_socket_on_demand() {
    c systemctl enable --now bridge.socket
    poll 10 listening 12345
    is_state bridge.socket active
    # On demand: nothing has connected yet.
    is_state bridge.service inactive
    c ss -Hltn "sport = :12345"
}

step_first_connection() {
    roundtrip 127.0.0.1 12345 main
    poll 20 is_state bridge.service active
    [ "$(c systemctl show -P SubState bridge.service)" = running ]
    [ -n "$(c systemctl show -P StatusText bridge.service)" ]
    # BindIPv6Only=both: the same socket serves IPv6.
    roundtrip ::1 12345 main
    # STATUS= from the service.
    poll 10 sh -c "nsenter -t $CPID -a systemctl status --no-pager bridge.service | grep -E '^ +Status: \"'"
    c systemctl status --no-pager bridge.service | grep -E '^ +Status: '
}

step_journal() {
    roundtrip 127.0.0.1 12345 main 4321
    # The entry is written when the session ends, just after the client
    # sees its last byte: poll.
    poll 10 journal_has journal-session-end 4321
    journal_has journal-session-end 4321
}

step_backend_restart() {
    local inode1 inode2
    start_loop backend 12345 main
    wait_sessions backend 20
    inode1=$(c stat -c %i /var/program/program.cmd)
    c systemctl stop program.service
    # The socket file is gone while the backend is down ...
    not c test -e /var/program/program.cmd
    # ... for a while (a deliberate outage, not a wait for readiness): the
    # loop's clients meanwhile are held by the bridge.
    sleep 1
    c systemctl start program.service
    poll 20 c test -S /var/program/program.cmd
    inode2=$(c stat -c %i /var/program/program.cmd)
    [ "$inode1" != "$inode2" ]
    wait_sessions backend 20
    finish_loop backend
    # Proof that the loop overlapped the outage: a session was held ~1s.
    grep -Eq 'max_ms=(9[0-9][0-9]|[0-9]{4,})' "$WORK/shared/backend/result"
}

step_backend_late_chmod() {
    start_loop latechmod 12345 main
    wait_sessions latechmod 20
    # Replaces program.service (Conflicts=): its socket file disappears,
    # then reappears root-only, and is group-accessible 300 ms later.
    c systemctl start program-slow.service
    not c systemctl is-active program.service
    poll 20 c sh -c 'stat -c %A /var/program/program.cmd | grep -q "^srw-rw----"'
    wait_sessions latechmod 20
    c systemctl start program.service
    not c systemctl is-active program-slow.service
    poll 20 c test -S /var/program/program.cmd
    wait_sessions latechmod 20
    finish_loop latechmod
}

step_service_restart() {
    local pid1 pid2
    start_loop restart 12345 main
    wait_sessions restart 20
    pid1=$(main_pid bridge.service)
    c systemctl restart bridge.service
    wait_sessions restart 20
    pid2=$(main_pid bridge.service)
    echo "MainPID $pid1 -> $pid2"
    [ "$pid1" != "$pid2" ]
    [ "$pid2" != 0 ]
    finish_loop restart
}

step_restart_no_gap() {
    local r restarts=() worst
    start_client talk talk 127.0.0.1 12345 main
    start_client arrivals arrivals 127.0.0.1 12345 main
    wait_more talk 5
    wait_more arrivals 10
    for r in 1 2; do
        restart_bridge
        restarts+=("${RESTART_S}s (MainPID $OLD_PID -> $NEW_PID)")
        # Both through the new process: the talking session goes on, new
        # clients are served.
        wait_more talk 5
        wait_more arrivals 10
        poll 10 journal_event handover "$OLD_PID" 'SESSIONS>=1'
        journal_event handover "$OLD_PID" 'SESSIONS>=1'
        journal_event handover-adopted "$NEW_PID" 'SESSIONS>=1'
    done
    finish_loop talk
    finish_loop arrivals
    grep -q ' error=none$' "$WORK/shared/talk/result"
    worst=$(sed -n 's/.*worst_first_byte_ms=\([0-9]*\).*/\1/p' "$WORK/shared/arrivals/result")
    echo "restarts took ${restarts[0]}, ${restarts[1]};" \
        "worst first byte of a new client ${worst} ms (at most $MAX_FIRST_BYTE_MS)"
    [ "$worst" -lt "$MAX_FIRST_BYTE_MS" ]
}

step_restart_held_client() {
    local client
    # (A held client waits connect-timeout, 5s by default, for the target:
    # raised, so a slow machine cannot fail the step by the clock alone.)
    trap 'c systemctl start program.service
          c sed -i "/^connect-timeout = 30s/d" /etc/sockbridge/bridge.conf
          c systemctl reload bridge.service' EXIT
    c sh -c 'echo "connect-timeout = 30s" >>/etc/sockbridge/bridge.conf'
    c systemctl reload bridge.service
    poll 15 journal_has journal-reloaded connect-timeout=30s
    c systemctl stop program.service
    not c test -e /var/program/program.cmd
    # The request goes out at once; the bridge holds the client.
    c_bg timeout 40 python3 "$H" request 127.0.0.1 12345 main >"$WORK/held-client.log" 2>&1
    client=$!
    poll 10 bridge_holds_client
    restart_bridge
    poll 10 bridge_holds_client
    c systemctl start program.service
    wait_exit "$client" 30
    wait "$client" || { cat "$WORK/held-client.log"; return 1; }
    poll 10 journal_event handover "$OLD_PID" WAITING=1
    journal_event handover-adopted "$NEW_PID" WAITING=1
    journal_event handover "$OLD_PID" WAITING=1
    cat "$WORK/held-client.log"
}

step_restart_many() {
    local n=2000
    start_client many many 127.0.0.1 12345 main "$n"
    poll 90 test -e "$WORK/shared/many/ready"
    restart_bridge
    touch "$WORK/shared/many/go"
    finish_loop many
    poll 10 journal_event handover "$OLD_PID" "SESSIONS>=$n"
    journal_event handover "$OLD_PID" "SESSIONS>=$n"
    journal_event handover-adopted "$NEW_PID" "SESSIONS>=$n"
    echo "the restart with $n open sessions took ${RESTART_S}s"
}

step_fdstore_empty() {
    local pid after_restart after_stop
    # While the new process runs after a restart: it took everything out.
    start_client keep1 hold 127.0.0.1 12345 main
    poll 20 test -e "$WORK/shared/keep1/ready"
    restart_bridge
    poll 10 fdstore_empty
    touch "$WORK/shared/keep1/go"
    finish_loop keep1
    after_restart=$(fdstore)
    # A stop drains (SIGTERM): an open session goes on until it ends, and
    # nothing is left in the store.
    start_client keep2 hold 127.0.0.1 12345 main
    poll 20 test -e "$WORK/shared/keep2/ready"
    pid=$(main_pid bridge.service)
    c systemctl --no-block stop bridge.service
    poll 10 is_state bridge.service deactivating
    touch "$WORK/shared/keep2/go"
    finish_loop keep2
    poll 15 is_state bridge.service inactive
    after_stop=$(fdstore)
    [ "$after_stop" = 0 ]
    poll 10 journal_event signal "$pid" SIGNAL=SIGTERM
    not journal_event handover "$pid"
    # The socket still listens: the next client starts the service again.
    is_state bridge.socket active
    roundtrip 127.0.0.1 12345 main
    poll 10 is_state bridge.service active
    echo "NFileDescriptorStore $after_restart after the restart, $after_stop after the stop" \
        "(SIGTERM: drained, an open session finished, nothing handed over)"
}

step_watchdog() {
    local pid1 t0 pid2 client limit
    roundtrip 127.0.0.1 12345 main
    pid1=$(main_pid bridge.service)
    c kill -STOP "$pid1"
    t0=$SECONDS
    # A client while the service is frozen: the kernel queues it. The
    # watchdog's SIGABRT comes with a SIGCONT (systemd wakes a stopped
    # process to kill it), and until the core dump stops every thread a relay
    # thread may still accept that client: it is then closed with the old
    # process, or else served by the restarted one. Either way it must end
    # within its timeout, and a new client is served.
    c_bg timeout 40 python3 "$H" roundtrip 127.0.0.1 12345 main >"$WORK/frozen-client.log" 2>&1
    client=$!
    limit=$((WATCHDOG_SEC + RESTART_SEC + 5))
    poll "$limit" sh -c "p=\$(nsenter -t $CPID -a systemctl show -P MainPID bridge.service);
        [ \"\$p\" != $pid1 ] && [ \"\$p\" != 0 ] &&
        [ \"\$(nsenter -t $CPID -a systemctl show -P ActiveState bridge.service)\" = active ]"
    pid2=$(main_pid bridge.service)
    echo "watchdog restarted the frozen service (MainPID $pid1 -> $pid2) after $((SECONDS - t0))s, limit ${limit}s"
    c journalctl -u bridge.service --no-pager -g 'Watchdog timeout' | tail -n 1 | grep -q 'Watchdog timeout'
    wait_exit "$client" 45
    if wait "$client"; then
        echo "the client queued during the freeze was served by the restarted service: $(tail -n 1 "$WORK/frozen-client.log")"
    else
        # Closed, not hung (timeout(1) would say 124): the old process took it as it died.
        grep -q 'closed before a greeting line' "$WORK/frozen-client.log" || { cat "$WORK/frozen-client.log"; return 1; }
        echo "the client queued during the freeze was accepted by the dying process and closed (not hung)"
    fi
    listening 12345
    roundtrip 127.0.0.1 12345 main
}

step_reload() {
    local pid1 hold
    mkdir -p "$WORK/shared/hold"
    c_bg timeout 60 python3 "$H" hold 127.0.0.1 12345 main /mnt/shared/hold 50 >"$WORK/hold.log" 2>&1
    hold=$!
    poll 20 test -e "$WORK/shared/hold/ready"
    pid1=$(main_pid bridge.service)
    c sh -c 'echo "client-timeout = 77s" >>/etc/sockbridge/bridge.conf'
    c systemctl reload bridge.service
    poll 15 journal_has journal-reloaded client-timeout=77s
    journal_has journal-reloaded client-timeout=77s
    [ "$(main_pid bridge.service)" = "$pid1" ]
    is_state bridge.service active
    touch "$WORK/shared/hold/go"
    wait_exit "$hold" 30
    wait "$hold" || { cat "$WORK/hold.log"; return 1; }
    cat "$WORK/hold.log"
}

step_second_instance() {
    c sh -c 'sed "s|^#\?target *=.*|target = /var/program/second.cmd|" /etc/sockbridge/bridge.conf >/etc/sockbridge/2345.conf'
    c grep -q '^target = /var/program/second.cmd' /etc/sockbridge/2345.conf
    c systemctl enable --now bridge@2345.socket
    poll 10 listening 2345
    roundtrip 127.0.0.1 2345 second
    roundtrip 127.0.0.1 12345 main
    # READY=1 comes once every worker listens; the first may serve before.
    poll 10 is_state bridge@2345.service active
    is_state bridge.service active
    echo "bridge.service PID $(main_pid bridge.service), bridge@2345.service PID $(main_pid bridge@2345.service)"
}

step_status() {
    # `sockbridge status` finds each unit's control socket by itself.
    c sockbridge status | tee "$WORK/status.out"
    grep -q 'target *.*/var/program/program.cmd' "$WORK/status.out"
    c sockbridge status --instance 2345 | tee "$WORK/status2.out"
    grep -q 'target *.*/var/program/second.cmd' "$WORK/status2.out"
}

step_metrics() {
    local score
    # The drop-in README.Debian and bridge.service document for metrics.
    trap 'c rm -f /etc/systemd/system/bridge.service.d/metrics.conf
          c sed -i "/^metrics-listen/d" /etc/sockbridge/bridge.conf
          c systemctl daemon-reload; c systemctl restart bridge.service' EXIT
    printf '[Service]\nPrivateNetwork=no\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\nIPAddressAllow=localhost\n' |
        c sh -c 'cat >/etc/systemd/system/bridge.service.d/metrics.conf'
    c sh -c 'echo "metrics-listen = 127.0.0.1:9101" >>/etc/sockbridge/bridge.conf'
    c systemctl daemon-reload
    c systemctl restart bridge.service
    poll 10 c python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9101/metrics", timeout=2)'
    c python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9101/metrics", timeout=2).read().decode())' |
        grep -m 1 '^sockbridge_'
    score=$(exposure bridge.service)
    echo "systemd-analyze security bridge.service with the metrics drop-in: $score"
    awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'
}

# A CA, a server certificate for 127.0.0.1 and a client certificate, made on
# the host (the container has no openssl) and shared through /mnt/shared.
make_certs() {
    local d=$WORK/shared/tls
    mkdir -p "$d"
    (cd "$d"
     # With the extensions a strict verifier wants (Python 3.13 on Debian 13
     # verifies with X509_STRICT: a CA without keyUsage is refused).
     openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=e2e-ca \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
         -addext subjectKeyIdentifier=hash
     for n in server client; do
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n
     done
     printf '%s\n' 'subjectAltName=IP:127.0.0.1' 'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' \
         'authorityKeyIdentifier=keyid' 'subjectKeyIdentifier=hash' >server.ext
     printf '%s\n' 'keyUsage=critical,digitalSignature' 'extendedKeyUsage=clientAuth' \
         'authorityKeyIdentifier=keyid' 'subjectKeyIdentifier=hash' >client.ext
     openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext
     openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext
     chmod 644 client.key) >/dev/null 2>&1
}

TLS_CLIENT=(/mnt/shared/tls/ca.crt /mnt/shared/tls/client.crt /mnt/shared/tls/client.key)
# tls_on: bridge.service with TLS (a client certificate required); undone
# when the step ends.
tls_on() {
    [ -e "$WORK/shared/tls/ca.crt" ] || make_certs
    trap 'c rm -f /etc/systemd/system/bridge.service.d/tls.conf
          c sed -i "/^tls-/d" /etc/sockbridge/bridge.conf
          c systemctl daemon-reload; c systemctl restart bridge.service' EXIT
    # The key stays root-only; LoadCredential= hands the dynamic user a copy.
    c install -m 0600 /mnt/shared/tls/server.key /etc/sockbridge/tls.key
    c install -m 0644 /mnt/shared/tls/server.crt /etc/sockbridge/tls.crt
    c install -m 0644 /mnt/shared/tls/ca.crt /etc/sockbridge/clients-ca.crt
    printf '[Service]\nLoadCredential=tls.crt:/etc/sockbridge/tls.crt\nLoadCredential=tls.key:/etc/sockbridge/tls.key\nLoadCredential=clients-ca.crt:/etc/sockbridge/clients-ca.crt\n' |
        c sh -c 'cat >/etc/systemd/system/bridge.service.d/tls.conf'
    c sh -c 'printf "tls-cert = tls.crt\ntls-key = tls.key\ntls-ca = clients-ca.crt\n" >>/etc/sockbridge/bridge.conf'
    c systemctl daemon-reload
    c systemctl restart bridge.service
    poll 15 c timeout 10 python3 "$H" tls-roundtrip 127.0.0.1 12345 main "${TLS_CLIENT[@]}"
}

step_tls() {
    tls_on
    c timeout 10 python3 "$H" tls-roundtrip 127.0.0.1 12345 main "${TLS_CLIENT[@]}"
    # Without a client certificate: refused, never reaching the backend, logged.
    not c timeout 10 python3 "$H" tls-roundtrip 127.0.0.1 12345 main /mnt/shared/tls/ca.crt
    poll 10 journal_has journal-tls-refused ""
    journal_has journal-tls-refused ""
}

step_tls_restart() {
    local t0 client closed_after
    tls_on
    start_client tlsidle tls-idle 127.0.0.1 12345 main "${TLS_CLIENT[@]}"
    client=$(cat "$WORK/shared/tlsidle/pid")
    poll 15 test -e "$WORK/shared/tlsidle/ready"
    t0=$(now)
    restart_bridge
    # Not carried: closed by the bridge once restart-grace is over.
    wait_exit "$client" 10 || { echo "the idle TLS session is still open 10s after the restart began"; return 1; }
    wait "$client" || { cat "$WORK/shared/tlsidle/out"; return 1; }
    closed_after=$(awk -v a="$t0" -v b="$(cat "$WORK/shared/tlsidle/closed")" 'BEGIN { printf "%.2f", b - a }')
    poll 10 journal_event handover "$OLD_PID" CLOSED_TLS=1
    journal_event handover "$OLD_PID" CLOSED_TLS=1
    echo "$(cat "$WORK/shared/tlsidle/out") ${closed_after}s after the restart began" \
        "(restart-grace ${RESTART_GRACE}s); the restart took ${RESTART_S}s"
    awk -v c="$closed_after" -v g="$RESTART_GRACE" 'BEGIN { exit !(c >= g - 0.1 && c < g + 3) }'
    awk -v r="$RESTART_S" 'BEGIN { exit !(r < 3) }'
}

exposure() {
    c systemd-analyze security --no-pager "$1" |
        sed -n "s/.*Overall exposure level for $1: \([0-9.]*\).*/\1/p"
}
step_security() {
    local unit score
    # No complaint about the units themselves either.
    c systemd-analyze verify --man=no bridge.socket bridge.service \
        bridge@2345.socket bridge@2345.service
    for unit in bridge.service bridge@2345.service; do
        score=$(exposure "$unit")
        echo "systemd-analyze security $unit: $score (at most $MAX_EXPOSURE)"
        [ -n "$score" ]
        awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'
    done
}

step_crash_loop() {
    local client i end
    # A configuration the service refuses: it exits at once, every time.
    c cp /etc/sockbridge/bridge.conf /run/bridge.conf.good
    # (The good configuration comes back even when this step fails.)
    trap 'c cp /run/bridge.conf.good /etc/sockbridge/bridge.conf' EXIT
    c sh -c 'echo "max-conn = banana" >>/etc/sockbridge/bridge.conf'
    not c systemctl restart bridge.service
    # A client that arrives during the crash loop and waits it out.
    c_bg timeout 60 python3 "$H" roundtrip 127.0.0.1 12345 main >"$WORK/crash-client.log" 2>&1
    client=$!
    # Connections keep coming for longer than bridge.socket's trigger-limit
    # window (TriggerLimitIntervalSec=10s) and more than its burst (50):
    # the socket must stay up and listening throughout.
    end=$((SECONDS + 12))
    i=0
    while [ $SECONDS -lt $end ]; do
        c timeout 1 python3 -c 'import socket; socket.create_connection(("127.0.0.1", 12345), 1).close()'
        is_state bridge.socket active
        i=$((i + 1))
    done
    listening 12345
    echo "$i connections during the crash loop; bridge.socket still active;" \
        "bridge.service restarted $(c systemctl show -P NRestarts bridge.service) times"
    # Fixed: the service comes back by itself and serves the waiting client.
    c cp /run/bridge.conf.good /etc/sockbridge/bridge.conf
    wait_exit "$client" 30
    wait "$client" || { cat "$WORK/crash-client.log"; return 1; }
    cat "$WORK/crash-client.log"
    poll 10 is_state bridge.service active
    roundtrip 127.0.0.1 12345 main
}

# The release's package with a higher version (Version: ...+e2e1), repacked
# on the host, no rebuild: prints its file name, in $WORK/shared.
make_upgrade_deb() {
    local tree=$WORK/repack version
    rm -rf "$tree"
    dpkg-deb -R "$repo/build/$DEB_NAME" "$tree"
    sed -i 's/^Version: .*/&+e2e1/' "$tree/DEBIAN/control"
    version=$(sed -n 's/^Version: //p' "$tree/DEBIAN/control")
    dpkg --compare-versions "$version" gt "$(dpkg-deb -f "$repo/build/$DEB_NAME" Version)"
    dpkg-deb -b "$tree" "$WORK/shared/sockbridge_${version}.deb" >/dev/null
    rm -rf "$tree"
    echo "sockbridge_${version}.deb"
}

step_upgrade() {
    local pid1 pid2 pidb1 pidb2 deb version
    deb=$(make_upgrade_deb)
    version=$(dpkg-deb -f "$WORK/shared/$deb" Version)
    roundtrip 127.0.0.1 12345 main
    roundtrip 127.0.0.1 2345 second
    # A session talking through the upgrade, in each unit.
    start_client upgrade talk 127.0.0.1 12345 main
    start_client upgrade2 talk 127.0.0.1 2345 second
    wait_more upgrade 5
    wait_more upgrade2 5
    pid1=$(main_pid bridge.service)
    pidb1=$(main_pid bridge@2345.service)
    c dpkg -i "/mnt/shared/$deb"
    [ "$(installed_version)" = "$version" ]
    [ "$(c systemctl is-enabled bridge.socket)" = enabled ]
    [ "$(c systemctl is-enabled bridge@2345.socket)" = enabled ]
    is_state bridge.socket active
    # The operator's change to the conffile survives.
    c grep -q '^client-timeout = 77s' /etc/sockbridge/bridge.conf
    # The running service was restarted onto the new files.
    poll 20 is_state bridge.service active
    pid2=$(main_pid bridge.service)
    [ "$pid1" != "$pid2" ]
    roundtrip 127.0.0.1 12345 main
    # The talking session went over to the new version's process.
    wait_more upgrade 5
    poll 10 journal_event handover "$pid1" 'SESSIONS>=1'
    journal_event handover-adopted "$pid2" 'SESSIONS>=1'
    finish_loop upgrade
    journal_event handover "$pid1" 'SESSIONS>=1'
    # The template's instance too (dh_installsystemd restarts bridge.service only).
    poll 20 is_state bridge@2345.service active
    pidb2=$(main_pid bridge@2345.service)
    [ "$pidb1" != "$pidb2" ]
    roundtrip 127.0.0.1 2345 second
    wait_more upgrade2 5
    poll 10 journal_event handover "$pidb1" 'SESSIONS>=1'
    journal_event handover-adopted "$pidb2" 'SESSIONS>=1'
    finish_loop upgrade2
    echo "upgraded to $version, MainPID $pid1 -> $pid2, bridge@2345 $pidb1 -> $pidb2"
}

step_remove_purge() {
    # (The checks below can see a bridge process and a listener.)
    c pgrep -f /usr/bin/sockbridge >/dev/null
    listening 12345
    c apt-get remove -y -q -o Dpkg::Use-Pty=0 sockbridge
    poll 20 sh -c "! nsenter -t $CPID -a pgrep -f /usr/bin/sockbridge"
    not listening 12345
    not listening 2345
    c test -e /etc/sockbridge/bridge.conf
    c apt-get purge -y -q -o Dpkg::Use-Pty=0 sockbridge
    not c test -e /etc/sockbridge/bridge.conf
    not c test -e /etc/systemd/system/sockets.target.wants/bridge.socket
    not c dpkg -s sockbridge
}

# Upgrading from 0.1.0, which has no handover (SIGUSR2, the new units'
# RestartKillSignal=, would kill it and drop its sessions): the package stops
# it first, as a stop does (it drains and logs EVENT=stopped), the socket
# listens throughout and starts the new version for the next client, and
# that one hands over on its next restart. (Runs after the purge: a fresh
# 0.1.0 install.)
step_upgrade_from_released() {
    local pid1 pid2
    if [ -z "$RELEASED_DEB" ]; then
        # Only a clone without the history can skip it; a failed build fails it.
        [ -n "$RELEASED_WHY" ] || { echo "no $RELEASED_VERSION package (see the line before e2e-$SUITE's first step)"; return 1; }
        echo "$RELEASED_WHY"
        return "$SKIPPED"
    fi
    cp "$RELEASED_DEB" "$WORK/shared/sockbridge_released.deb"
    c env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 /mnt/shared/sockbridge_released.deb >/dev/null
    installed_version | grep -x "$RELEASED_VERSION~deb[0-9]*u1"
    c systemctl enable --now bridge.socket
    roundtrip 127.0.0.1 12345 main
    poll 10 is_state bridge.service active
    pid1=$(main_pid bridge.service)
    c env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 /mnt/build/"$DEB_NAME" >/dev/null
    [ "$(installed_version)" = "$(dpkg-deb -f "$repo/build/$DEB_NAME" Version)" ]
    is_state bridge.socket active
    # Stopped as on a stop, not killed by SIGUSR2 (that would log no EVENT=stopped).
    poll 10 journal_event stopped "$pid1"
    roundtrip 127.0.0.1 12345 main
    pid2=$(main_pid bridge.service)
    [ "$pid2" != 0 ] && [ "$pid2" != "$pid1" ]
    restart_bridge
    poll 10 journal_event handover "$OLD_PID"
    echo "upgraded from $RELEASED_VERSION: PID $pid1 stopped (EVENT=stopped), PID $pid2 started by the socket; its restart handed over"
}

# 0.1.0 as it shipped: the last build before the handover (0.2.0).
RELEASED_COMMIT=ac49818e6c244c142aee1c95e23a7a360b38cc30
RELEASED_VERSION=0.1.0-1

# released_deb SUITE: sets RELEASED_DEB to that release's 0.1.0 package,
# built once from this repository's history by that commit's own
# scripts/build-deb.sh (in a clone of its own) and then kept in the cache. Fails in a clone
# without that history (git clone --depth 1), saying why in RELEASED_WHY, or
# when the build fails (saying so on stderr).
released_deb() {
    local suite=$1 cached tree debs
    RELEASED_DEB=
    cached=$SOCKBRIDGE_CACHE/released/sockbridge_${RELEASED_VERSION}~deb$(suite_number "$suite")u1-${RELEASED_COMMIT:0:12}$(arch_tag).deb
    if [ ! -e "$cached" ]; then
        if ! git -C "$repo" cat-file -e "$RELEASED_COMMIT^{commit}" 2>/dev/null; then
            RELEASED_WHY="commit ${RELEASED_COMMIT:0:12} (sockbridge $RELEASED_VERSION) is not in this clone's history (git clone --depth 1?)"
            return 1
        fi
        tree=$(mktemp -d /var/tmp/sockbridge-released.XXXXXX)
        if ! { git clone -q --shared --no-checkout "$repo" "$tree/src" &&
            git -C "$tree/src" checkout -q --detach "$RELEASED_COMMIT" &&
            bash "$tree/src/scripts/build-deb.sh" "$suite"; } >"$repo/build/build-deb-$suite-$RELEASED_VERSION.log" 2>&1; then
            rm -rf "$tree"
            echo "building sockbridge $RELEASED_VERSION for $suite failed, see build/build-deb-$suite-$RELEASED_VERSION.log" >&2
            return 1
        fi
        debs=("$tree"/src/build/sockbridge_"$RELEASED_VERSION"~deb*u1_*.deb)
        mkdir -p "$(dirname "$cached")"
        cp "${debs[0]}" "$cached.tmp" && mv "$cached.tmp" "$cached"
        rm -rf "$tree"
    fi
    RELEASED_DEB=$cached
}

# The package of a release in build/: sockbridge_<version>~debNu1_<arch>.deb.
deb_of() {
    # This tree's version (debian/changelog), not an older build left in build/.
    local version debs
    version=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$repo/debian/changelog")
    debs=("$repo"/build/sockbridge_"$version"~deb"$(suite_number "$1")"u1_*.deb)
    [ -e "${debs[0]}" ] && basename "${debs[0]}"
}

# The Debian 12 build on Debian 13: apt refuses it (the nodejs pin); forced
# in anyway, the service says in one line what is wrong and is not
# restarted. (Runs before the real install; leaves nothing behind.)
step_foreign_build() {
    local out
    trap 'c systemctl stop bridge.socket bridge.service >/dev/null 2>&1
          c dpkg --purge sockbridge >/dev/null 2>&1
          c systemctl reset-failed >/dev/null 2>&1' EXIT
    out=$(c apt-get install -y -q -o Dpkg::Use-Pty=0 "/mnt/build/$FOREIGN_DEB" 2>&1) && {
        echo "$out"; echo "apt installed a package built for another Node.js"; return 1; }
    echo "$out" | grep -E 'Depends: nodejs \(<' | head -n 1
    c dpkg -i --force-depends "/mnt/build/$FOREIGN_DEB" >/dev/null 2>&1
    c systemctl start bridge.socket
    poll 10 listening 12345
    # A client triggers the service, which must fail with exit 72 ...
    c timeout 5 python3 -c 'import socket; socket.create_connection(("127.0.0.1", 12345), 2).close()' || true
    poll 20 sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P ExecMainStatus bridge.service)\" = 72 ]"
    # ... with one line naming both Node versions and the fix, no stack trace.
    c journalctl -u bridge.service --no-pager -o cat | grep -m 1 'EADDON_ABI' | tee "$WORK/abi.line"
    grep -q 'built for Node.js v18.*but this is Node.js v' "$WORK/abi.line"
    grep -q 'make deb SUITE=host' "$WORK/abi.line"
    not c sh -c 'journalctl -u bridge.service --no-pager -o cat | grep -q "^    at "'
    # Not restarted by Restart=on-failure (RestartPreventExitStatus=72), nor
    # started again and again by the socket for clients in its queue: the
    # unit stops the socket.
    [ "$(c systemctl show -P NRestarts bridge.service)" = 0 ]
    poll 10 is_state bridge.socket inactive
    not listening 12345
    local starts
    starts=$(c journalctl -u bridge.service --no-pager -o cat | grep -c EADDON_ABI)
    echo "bridge.service: $(c systemctl show -P ActiveState bridge.service), exit status 72," \
        "NRestarts 0, started $starts time(s); bridge.socket stopped"
    [ "$starts" -le 2 ]
}

# --- both ends: a remote program's socket on this machine --------------------
#
# A second container of the same release (the client end), booted from the
# same cached root, and a private link between the two that nothing else
# uses: a veth pair made here, one end moved into each container's network
# namespace, with addresses from a private range chosen here. The server
# container puts bridge.socket on its link address (TLS, client
# certificates required) in front of redis on its UNIX socket; the client
# container runs bridge-connect@redis.socket, and redis-cli talks through
# both ends. The client container's systemd may load BPF programs
# (--system-call-filter=bpf, as on a host), so its IPAddressAllow= is
# enforced, not only configured.

LINK_SERVER=10.99.12.1
LINK_CLIENT=10.99.12.2
LINK_PORT=12345
REDIS_SOCK=/run/redis-e2e/redis.sock
CONNECT_SOCK=/run/sockbridge-connect/redis.sock
CONNECT_CTL=/run/sockbridge-connect-redis/bridge.ctl
MAX_CONNECT_EXPOSURE=1.3   # systemd-analyze security bridge-connect@NAME.service, at most (aim: 2.0)

CPID2=
NSPAWN2_PID=
c2() {
    nsenter -t "$CPID2" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
c2_bg() {
    (exec nsenter -t "$CPID2" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 "$@") &
}
is_state2() {
    local state
    state=$(c2 systemctl show -P ActiveState "$1")
    [ "$state" = "$2" ] || { echo "$1 is $state, not $2 (client container)" >&2; return 1; }
}
# boot_client_container ROOT: the second container; sets NSPAWN2_PID, CPID2.
boot_client_container() {
    local NSPAWN_PID= CPID= rc=0
    boot_container "$1" "sockbridge-e2e-$SUITE-client" --system-call-filter=bpf || rc=$?
    NSPAWN2_PID=$NSPAWN_PID
    CPID2=$CPID
    return $rc
}
stop_client_container() {
    local NSPAWN_PID=$NSPAWN2_PID CPID=$CPID2
    # The journal of a failed run, for the report (as cleanup does for the
    # server container).
    if [ "$FAILED" -gt 0 ] && [ -n "$CPID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        c journalctl -b --no-pager -o short-monotonic >"$repo/build/e2e-journal-$SUITE-client.log" 2>&1 || true
        echo "client container journal: build/e2e-journal-$SUITE-client.log" >&2
    fi
    stop_container
    NSPAWN2_PID=
    # (Its end of the link went with its network namespace; the other end
    # goes with the server container's. One never moved is removed here.)
    [ -z "${LINK_S:-}" ] || ip link del "$LINK_S" 2>/dev/null || true
}
# The steps below need the link (step 14a).
need_link() {
    [ -e "$WORK/link-up" ] || { echo "no client container or no link (step 14a failed)"; return 1; }
}
# The client end's target is the far end, marked UP by its health checks.
connect_target_up() {
    c2 sockbridge status --control-socket "$CONNECT_CTL" --json | python3 -c "import json, sys
t = json.load(sys.stdin)['target']
sys.exit(not (t['path'] == '$LINK_SERVER:$LINK_PORT' and t['state'] == 'UP'))"
}
# As the client container's local user "app" (group redis-users, let in by
# the socket's SocketGroup=).
as_app() { c2 setpriv --reuid=app --regid=app --init-groups "$@"; }

# A CA, a server certificate for the link address, a client certificate;
# and another CA with a client certificate of its own. Made on the host (the
# containers have no openssl), as the README shows.
make_link_certs() {
    local d=$WORK/shared/link-tls
    mkdir -p "$d"
    (cd "$d"
     for ca in ca other-ca; do
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $ca.key -out $ca.crt -days 2 \
             -subj "/CN=sockbridge e2e $ca" -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign -addext subjectKeyIdentifier=hash
     done
     printf '%s\n' "subjectAltName=IP:$LINK_SERVER" 'basicConstraints=critical,CA:FALSE' \
         'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' \
         'authorityKeyIdentifier=keyid' 'subjectKeyIdentifier=hash' >server.ext
     printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' 'extendedKeyUsage=clientAuth' \
         'authorityKeyIdentifier=keyid' 'subjectKeyIdentifier=hash' >client.ext
     for n in server:ca:server client:ca:client stranger:ca:client rogue:other-ca:client; do
         IFS=: read -r name ca ext <<<"$n"
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $name.key -out $name.csr -subj "/CN=e2e-$name"
         openssl x509 -req -in $name.csr -CA $ca.crt -CAkey $ca.key -CAcreateserial -out $name.crt -days 2 -extfile $ext.ext
     done
     chmod 644 ./*.key) >/dev/null 2>&1
    [ -s "$d/rogue.crt" ]
}

step_link() {
    [ -n "$CPID2" ] || { cat "$WORK/nspawn-sockbridge-e2e-$SUITE-client.log" 2>/dev/null; echo "the client container did not boot"; return 1; }
    ip link del "$LINK_S" 2>/dev/null || true
    ip link add "$LINK_S" type veth peer name "$LINK_C"
    ip link set "$LINK_S" netns "$CPID"
    ip link set "$LINK_C" netns "$CPID2"
    c ip addr add "$LINK_SERVER/24" dev "$LINK_S"
    c ip link set "$LINK_S" up
    c2 ip addr add "$LINK_CLIENT/24" dev "$LINK_C"
    c2 ip link set "$LINK_C" up
    # Across: a port nobody listens on answers with a reset.
    poll 10 c2 python3 -c "import socket, sys
try: socket.create_connection(('$LINK_SERVER', 9), 1)
except ConnectionRefusedError: sys.exit(0)
sys.exit(1)"
    c2 apt-get install -y -q -o Dpkg::Use-Pty=0 /mnt/build/"$DEB_NAME" >/dev/null
    c2 test -e /etc/sockbridge/connect.conf.example
    c2 systemctl cat bridge-connect@redis.socket bridge-connect@redis.service >/dev/null
    # No redis of its own on the client side: whatever answers is the server's.
    c2 systemctl mask --now redis-server.service >/dev/null 2>&1
    touch "$WORK/link-up"
    echo "server $(c ip -br addr show "$LINK_S" | awk '{print $1, $3}'), client $(c2 ip -br addr show "$LINK_C" | awk '{print $1, $3}');" \
        "$(c2 dpkg-query -W -f '${Package} ${Version}' sockbridge) in the client container"
}

step_server_end() {
    need_link
    make_link_certs
    local d=/mnt/shared/link-tls
    c cp /etc/sockbridge/bridge.conf /run/bridge.conf.before-link
    # redis on its UNIX socket only (group redis, mode 0770), a unit of its
    # own started once: restarting the packaged redis-server.service in the
    # container now and then failed to spawn (219/CGROUP, "Failed to attach
    # to cgroup ...: No such file or directory").
    printf '%s\n' '[Unit]' 'Description=redis on /run/redis-e2e/redis.sock only' '[Service]' 'Type=notify' \
        'ExecStart=/usr/bin/redis-server --port 0 --unixsocket /run/redis-e2e/redis.sock --unixsocketperm 770 --save "" --dir /run/redis-e2e --supervised systemd --daemonize no' \
        'User=redis' 'Group=redis' 'RuntimeDirectory=redis-e2e' 'RuntimeDirectoryMode=0750' 'UMask=0007' |
        c sh -c 'cat >/etc/systemd/system/redis-e2e.service'
    # The server end as the README sets it up: the link address only, TLS,
    # client certificates of its CA required, redis's group.
    c install -m 0600 $d/server.key /etc/sockbridge/server.key
    c install -m 0644 $d/server.crt /etc/sockbridge/server.crt
    c install -m 0644 $d/ca.crt /etc/sockbridge/clients-ca.crt
    c mkdir -p /etc/systemd/system/bridge.socket.d
    printf '[Socket]\nListenStream=\nListenStream=%s:%s\n' "$LINK_SERVER" "$LINK_PORT" |
        c sh -c 'cat >/etc/systemd/system/bridge.socket.d/link.conf'
    printf '%s\n' '[Service]' 'SupplementaryGroups=redis' \
        'LoadCredential=server.crt:/etc/sockbridge/server.crt' 'LoadCredential=server.key:/etc/sockbridge/server.key' \
        'LoadCredential=clients-ca.crt:/etc/sockbridge/clients-ca.crt' |
        c sh -c 'cat >/etc/systemd/system/bridge.service.d/link.conf'
    c sed -i "s|^#\?target *=.*|target = $REDIS_SOCK|" /etc/sockbridge/bridge.conf
    # Of that CA's certificates, the client end's only (another, e2e-stranger, is refused in 14e).
    c sh -c 'printf "tls-cert = server.crt\ntls-key = server.key\ntls-ca = clients-ca.crt\ntls-allow-cn = e2e-client\n" >>/etc/sockbridge/bridge.conf'
    c systemctl daemon-reload
    c systemctl start redis-e2e.service
    poll 20 c test -S "$REDIS_SOCK"
    [ "$(c redis-cli -s "$REDIS_SOCK" PING)" = PONG ]
    c redis-cli -s "$REDIS_SOCK" DEL e2e:greeting e2e:rogue e2e:loop >/dev/null
    c systemctl restart bridge.socket
    poll 10 c sh -c "ss -Hltn 'sport = :$LINK_PORT' | grep -q '$LINK_SERVER:$LINK_PORT'"
    c ss -Hltn "sport = :$LINK_PORT" | awk '{print "listening:", $4}'
    echo "redis $(c redis-server --version | grep -o 'v=[^ ]*') on $REDIS_SOCK ($(c stat -c "%A %U:%G" "$REDIS_SOCK"))"
}

step_client_end() {
    local d=/mnt/shared/link-tls value
    need_link
    # A local user let in by the socket's group.
    c2 groupadd --system redis-users
    c2 useradd --no-create-home --groups redis-users app
    c2 install -d -m 0700 /etc/sockbridge/connect-redis
    c2 install -m 0644 $d/ca.crt $d/client.crt /etc/sockbridge/connect-redis/
    c2 install -m 0600 $d/client.key /etc/sockbridge/connect-redis/client.key
    c2 mkdir -p /etc/systemd/system/bridge-connect@redis.service.d /etc/systemd/system/bridge-connect@redis.socket.d
    printf '%s\n' '[Service]' 'LoadCredential=ca.crt:/etc/sockbridge/connect-redis/ca.crt' \
        'LoadCredential=client.crt:/etc/sockbridge/connect-redis/client.crt' \
        'LoadCredential=client.key:/etc/sockbridge/connect-redis/client.key' |
        c2 sh -c 'cat >/etc/systemd/system/bridge-connect@redis.service.d/tls.conf'
    printf '[Service]\nIPAddressDeny=any\nIPAddressAllow=%s\n' "$LINK_SERVER" |
        c2 sh -c 'cat >/etc/systemd/system/bridge-connect@redis.service.d/allow.conf'
    printf '[Socket]\nSocketGroup=redis-users\n' |
        c2 sh -c 'cat >/etc/systemd/system/bridge-connect@redis.socket.d/group.conf'
    # The shipped example, its far-end lines turned on.
    c2 sh -c "sed -E -e 's|^#target = .*|target = $LINK_SERVER:$LINK_PORT|' \
        -e 's/^#(target-tls(-ca|-cert|-key)?) = /\1 = /' \
        /etc/sockbridge/connect.conf.example >/etc/sockbridge/connect-redis.conf"
    c2 grep '^[a-z]' /etc/sockbridge/connect-redis.conf | paste -sd ' '
    c2 systemctl daemon-reload
    c2 systemctl enable --now bridge-connect@redis.socket 2>/dev/null
    poll 10 c2 test -S "$CONNECT_SOCK"
    [ "$(c2 stat -c '%A %U:%G' "$CONNECT_SOCK")" = "srw-rw---- root:redis-users" ]
    # On demand: nothing has connected yet.
    is_state2 bridge-connect@redis.service inactive
    [ "$(as_app redis-cli -s "$CONNECT_SOCK" PING)" = PONG ]
    poll 10 is_state2 bridge-connect@redis.service active
    [ "$(as_app redis-cli -s "$CONNECT_SOCK" SET e2e:greeting "hello from $LINK_CLIENT")" = OK ]
    value=$(as_app redis-cli -s "$CONNECT_SOCK" GET e2e:greeting)
    [ "$value" = "hello from $LINK_CLIENT" ]
    # The value is in the server container's redis.
    [ "$(c redis-cli -s "$REDIS_SOCK" GET e2e:greeting)" = "$value" ]
    # A local user outside the socket's group is kept out by the file mode.
    value=$(c2 setpriv --reuid=nobody --regid=nogroup --clear-groups redis-cli -s "$CONNECT_SOCK" PING 2>&1 || true)
    echo "$value" | grep -q 'Permission denied' || { echo "nobody: $value"; return 1; }
    value=$(as_app redis-cli -s "$CONNECT_SOCK" GET e2e:greeting)
    # Its status (health checks: a TLS handshake with the far end).
    poll 15 connect_target_up
    c2 sockbridge status --control-socket "$CONNECT_CTL" | grep -E '^(target|state) '
    echo "redis-cli as app: PING -> PONG, SET/GET \"$value\" (read back in the server's redis); nobody: Permission denied"
}

step_link_journals() {
    local uid
    need_link
    uid=$(c2 id -u app)
    # The client end names the local client by its credentials, and the far end.
    poll 10 c2 sh -c "journalctl -u bridge-connect@redis.service -o json --no-pager EVENT=session-end |
        python3 $H journal-event session-end - CLIENT_UID=$uid TARGET=$LINK_SERVER:$LINK_PORT REASON=done"
    c2 sh -c "journalctl -u bridge-connect@redis.service -o json --no-pager EVENT=session-end |
        python3 $H journal-event session-end - CLIENT_UID=$uid 'CLIENT_PID>=1' TARGET=$LINK_SERVER:$LINK_PORT REASON=done"
    # The server end names the client end by its link address.
    poll 10 c sh -c "journalctl -u bridge.service -o json --no-pager EVENT=session-end |
        python3 $H journal-event session-end - CLIENT_ADDR=$LINK_CLIENT TARGET=$REDIS_SOCK REASON=done"
    c sh -c "journalctl -u bridge.service -o json --no-pager EVENT=session-end |
        python3 $H journal-event session-end - CLIENT_ADDR=$LINK_CLIENT TARGET=$REDIS_SOCK REASON=done"
}

step_link_refused() {
    local d=/mnt/shared/link-tls out port
    need_link
    # Straight to the server end from the client container, past the client
    # end: without a client certificate, then with one of another CA.
    for cert in "" "$d/rogue.crt $d/rogue.key"; do
        # shellcheck disable=SC2086 # two words or none
        out=$(c2 timeout 15 python3 "$H" tls-rogue "$LINK_SERVER" "$LINK_PORT" $d/ca.crt $cert)
        echo "$out"
        port=$(echo "$out" | sed -n 's/.*(port \([0-9]*\)).*/\1/p')
        poll 10 c sh -c "journalctl -u bridge.service -o json --no-pager EVENT=tls-refused |
            python3 $H journal-event tls-refused - CLIENT_ADDR=$LINK_CLIENT CLIENT_PORT=$port"
        c sh -c "journalctl -u bridge.service -o json --no-pager EVENT=tls-refused |
            python3 $H journal-event tls-refused - CLIENT_ADDR=$LINK_CLIENT CLIENT_PORT=$port"
    done
    # A certificate of the right CA with a name tls-allow-cn does not list:
    # refused for its identity, and the journal says whose.
    out=$(c2 timeout 15 python3 "$H" tls-rogue "$LINK_SERVER" "$LINK_PORT" $d/ca.crt $d/stranger.crt $d/stranger.key)
    echo "$out"
    port=$(echo "$out" | sed -n 's/.*(port \([0-9]*\)).*/\1/p')
    poll 10 c sh -c "journalctl -u bridge.service -o json --no-pager EVENT=tls-refused |
        python3 $H journal-event tls-refused - CLIENT_ADDR=$LINK_CLIENT CLIENT_PORT=$port REASON=identity CLIENT_CN=e2e-stranger"
    # None reached redis.
    [ -z "$(c redis-cli -s "$REDIS_SOCK" GET e2e:rogue)" ]
}

# link_loop DIR: a redis-cli loop (as app) through the client end, in the
# background; stopped and checked with finish_loop DIR.
link_loop() {
    mkdir -p "$WORK/shared/$1"
    c2_bg timeout 150 python3 "$H" redis-loop "$CONNECT_SOCK" app "/mnt/shared/$1" 120 \
        >"$WORK/shared/$1/out" 2>&1
    echo $! >"$WORK/shared/$1/pid"
}
# Sessions of the client end that did not end well, for a failed step.
connect_failures() {
    c2 journalctl -u bridge-connect@redis.service -o cat --no-pager -p warning | tail -n 6
}

step_link_server_restart() {
    need_link
    link_loop redisloop
    wait_sessions redisloop 20
    restart_bridge
    wait_sessions redisloop 20
    finish_loop redisloop || { connect_failures; return 1; }
}

step_link_port_closed() {
    local client t0
    need_link
    # The server end's port closed: the client end's connects are refused.
    c systemctl stop bridge.socket bridge.service
    not c sh -c "ss -Hltn 'sport = :$LINK_PORT' | grep -q LISTEN"
    t0=$(now)
    c2_bg timeout 20 setpriv --reuid=app --regid=app --init-groups redis-cli -s "$CONNECT_SOCK" PING \
        >"$WORK/held-redis.out" 2>&1
    client=$!
    poll 10 c2 sh -c "sockbridge status --control-socket $CONNECT_CTL --json |
        python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)[\"sessions\"][\"waiting\"] < 1)'"
    sleep 1
    c systemctl start bridge.socket
    wait_exit "$client" 15
    wait "$client" || { cat "$WORK/held-redis.out"; connect_failures; return 1; }
    [ "$(cat "$WORK/held-redis.out")" = PONG ]
    echo "redis-cli PING while the server end's port was closed: held, PONG after $(elapsed "$t0")"
}

step_link_server_stops() {
    local i
    need_link
    link_loop redisstops
    wait_sessions redisstops 20
    # Stopped, a second away, started again, three times: the client end
    # holds its clients while the far end refuses.
    for i in 1 2 3; do
        c systemctl stop bridge.socket bridge.service
        sleep 1
        c systemctl start bridge.socket
        wait_sessions redisstops 10
    done
    finish_loop redisstops || { connect_failures; return 1; }
}

step_link_security() {
    local score shipped cg
    need_link
    # The allow list is enforced: a process in the service's control group
    # reaches the far end, not the client container's own address.
    c2_bg timeout 20 python3 -c "import socket
s = socket.create_server(('$LINK_CLIENT', 7777)); s.settimeout(18)
while True: s.accept()[0].close()" >/dev/null 2>&1
    poll 10 c2 python3 -c "import socket; socket.create_connection(('$LINK_CLIENT', 7777), 1)"
    cg=$(c2 systemctl show -P ControlGroup bridge-connect@redis.service)
    [ -n "$cg" ]
    c2 sh -c "echo \$\$ >'/sys/fs/cgroup$cg/cgroup.procs' && exec python3 -c \"import socket
socket.create_connection(('$LINK_SERVER', $LINK_PORT), 2).close()
try:
    socket.create_connection(('$LINK_CLIENT', 7777), 2)
except OSError as e:
    print('inside bridge-connect@redis.service: $LINK_SERVER:$LINK_PORT reached, $LINK_CLIENT:7777 blocked (%s)' % type(e).__name__)
else:
    raise SystemExit('IPAddressDeny=any did not block $LINK_CLIENT:7777')\""
    c2 systemd-analyze verify --man=no bridge-connect@test.socket bridge-connect@test.service
    c2 systemd-analyze security --no-pager bridge-connect@test.service >"$repo/build/e2e-security-$SUITE-connect.txt" || true
    c2 systemd-analyze security --no-pager bridge-connect@redis.service >"$repo/build/e2e-security-$SUITE-connect-allow.txt" || true
    shipped=$(sed -n 's/.*Overall exposure level for bridge-connect@test.service: \([0-9.]*\).*/\1/p' "$repo/build/e2e-security-$SUITE-connect.txt")
    score=$(sed -n 's/.*Overall exposure level for bridge-connect@redis.service: \([0-9.]*\).*/\1/p' "$repo/build/e2e-security-$SUITE-connect-allow.txt")
    echo "systemd-analyze security: bridge-connect@test.service $shipped as shipped," \
        "bridge-connect@redis.service $score with IPAddressDeny=any IPAddressAllow=$LINK_SERVER (at most $MAX_CONNECT_EXPOSURE)"
    [ -n "$shipped" ] && [ -n "$score" ]
    awk -v s="$shipped" -v m="$MAX_CONNECT_EXPOSURE" 'BEGIN { exit !(s <= m) }'
}

step_link_upgrade_remove() {
    local deb pid1 pid2
    need_link
    deb=$(make_upgrade_deb)
    mkdir -p "$WORK/shared/redisup"
    c2_bg timeout 150 python3 "$H" redis-loop "$CONNECT_SOCK" app /mnt/shared/redisup 120 \
        >"$WORK/shared/redisup/out" 2>&1
    echo $! >"$WORK/shared/redisup/pid"
    wait_sessions redisup 10
    pid1=$(c2 systemctl show -P MainPID bridge-connect@redis.service)
    c2 dpkg -i "/mnt/shared/$deb" >/dev/null
    # The package restarted the running instance onto the new version.
    poll 20 sh -c "p=\$(nsenter -t $CPID2 -a systemctl show -P MainPID bridge-connect@redis.service);
        [ \"\$p\" != $pid1 ] && [ \"\$p\" != 0 ]"
    pid2=$(c2 systemctl show -P MainPID bridge-connect@redis.service)
    [ "$(c2 systemctl is-enabled bridge-connect@redis.socket)" = enabled ]
    wait_sessions redisup 10
    finish_loop redisup
    c2 journalctl -o cat --no-pager _PID="$pid1" EVENT=handover | tail -n 1
    # Removal stops the instance and its socket.
    c2 apt-get remove -y -q -o Dpkg::Use-Pty=0 sockbridge >/dev/null
    is_state2 bridge-connect@redis.socket inactive
    is_state2 bridge-connect@redis.service inactive
    not c2 test -e "$CONNECT_SOCK"
    not c2 pgrep -f /usr/bin/sockbridge
    echo "upgraded to $(dpkg-deb -f "$WORK/shared/$deb" Version): bridge-connect@redis MainPID $pid1 -> $pid2;" \
        "removed: socket and service stopped, $CONNECT_SOCK gone"
}

step_link_undo() {
    need_link
    c systemctl stop redis-e2e.service
    c rm -f /etc/systemd/system/bridge.socket.d/link.conf /etc/systemd/system/bridge.service.d/link.conf \
        /etc/systemd/system/redis-e2e.service
    c sh -c '[ ! -e /run/bridge.conf.before-link ] || cp /run/bridge.conf.before-link /etc/sockbridge/bridge.conf'
    c systemctl daemon-reload
    c systemctl restart bridge.socket
    poll 10 listening 12345
    roundtrip 127.0.0.1 12345 main
    poll 10 is_state bridge.service active
}

# --- identity to the program: PROXY v2 TLVs read by a real HAProxy ----------
#
# sockbridge run by hand in the container (transient units), in front of
# HAProxy 3.0 with accept-proxy, which logs the TLVs it received: from a TLS
# client with a certificate, PP2_TYPE_SSL (client bits, verify, version, CN,
# cipher) and the SNI as PP2_TYPE_AUTHORITY; from a UNIX listener's client,
# sockbridge's 0xE0 (pid, uid, gid). Only Debian 13's HAProxy has fc_pp_tlv.
step_haproxy_tlvs() {
    local d=/mnt/shared/link-tls out port unit
    if [ "$SUITE" != "$TLV_READER_SUITE" ]; then
        echo "HAProxy $(c dpkg-query -W -f '${Version}' haproxy 2>/dev/null || echo 'is not installed') here; fc_pp_tlv needs 2.9+: run in e2e-$TLV_READER_SUITE"
        return "$SKIPPED"
    fi
    [ -s "$WORK/shared/link-tls/client.crt" ] || make_link_certs
    c systemctl disable --now haproxy.service >/dev/null 2>&1 || true
    c mkdir -p /run/sb-tlv
    printf '%s\n' global '  log stdout format raw local0' defaults '  mode tcp' '  log global' \
        '  timeout connect 5s' '  timeout client 10s' '  timeout server 10s' \
        frontend\ fe '  bind 127.0.0.1:7410 accept-proxy' \
        '  log-format "tlv src=%ci:%cp authority=%[fc_pp_authority] ssl=%[fc_pp_tlv(0x20),hex] cred=%[fc_pp_tlv(0xE0),hex]"' \
        '  default_backend be' backend\ be '  server echo 127.0.0.1:7412' |
        c sh -c 'cat >/run/sb-tlv/haproxy.cfg'
    c haproxy -c -q -f /run/sb-tlv/haproxy.cfg
    c systemd-run -q --unit sb-tlv-echo -p RuntimeMaxSec=300 python3 -c "import socketserver
class E(socketserver.BaseRequestHandler):
    def handle(self):
        while (b := self.request.recv(4096)): self.request.sendall(b)
socketserver.ThreadingTCPServer(('127.0.0.1', 7412), E).serve_forever()"
    c systemd-run -q --unit sb-tlv-haproxy -p RuntimeMaxSec=300 haproxy -db -f /run/sb-tlv/haproxy.cfg
    c systemd-run -q --unit sb-tlv-tls -p RuntimeMaxSec=300 sockbridge --listen 127.0.0.1:7411 --target 127.0.0.1:7410 \
        --send-proxy v2 --check-interval 0 --tls-cert $d/server.crt --tls-key $d/server.key --tls-ca $d/ca.crt
    c systemd-run -q --unit sb-tlv-unix -p RuntimeMaxSec=300 sockbridge --listen /run/sb-tlv/sb.sock --target 127.0.0.1:7410 \
        --send-proxy v2 --check-interval 0 --control-socket /run/sb-tlv/unix.ctl
    for unit in sb-tlv-echo sb-tlv-haproxy sb-tlv-tls sb-tlv-unix; do echo "$unit" >>"$WORK/tlv-units"; done
    poll 15 listening 7410
    poll 15 listening 7411
    poll 15 c test -S /run/sb-tlv/sb.sock
    # A TLS client with the link's client certificate (CN e2e-client), SNI app.example.org.
    out=$(c timeout 30 python3 -c "import socket, ssl, sys
ctx = ssl.create_default_context(cafile='$d/ca.crt')
ctx.check_hostname = False  # the server certificate names the link address; the chain is still verified
ctx.load_cert_chain('$d/client.crt', '$d/client.key')
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', 7411), 10), server_hostname='app.example.org')
s.settimeout(10)
s.sendall(b'tlv')
got = s.recv(100)
print(s.getsockname()[1], got)
sys.exit(got != b'tlv')")
    port=${out%% *}
    echo "TLS client port $port: $out"
    # As root through the UNIX listener: 0xE0 carries pid, uid 0, gid 0.
    c timeout 30 python3 -c "import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect('/run/sb-tlv/sb.sock')
s.sendall(b'cred'); got = s.recv(100); sys.exit(got != b'cred')"
    local ssl_hex
    # 07: SSL | CERT_CONN | CERT_SESS; verify 0; then TLSv1.3 (0x21), e2e-client (0x22), the cipher (0x23).
    ssl_hex=0700000000210007$(hex_of TLSv1.3)
    poll 15 haproxy_logged "tlv src=127\.0\.0\.1:$port authority=app\.example\.org ssl=${ssl_hex}22000A$(hex_of e2e-client)23" || { tlv_log_tail; false; }
    c journalctl -u sb-tlv-haproxy -o cat --no-pager | grep "tlv src=127.0.0.1:$port "
    poll 15 haproxy_logged 'cred=[0-9A-F]{8}0{16}$' || { tlv_log_tail; false; }
    c journalctl -u sb-tlv-haproxy -o cat --no-pager | grep -E 'cred=[0-9A-F]{8}0{16}$'
    stop_tlv_units
}
hex_of() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n' | tr a-f A-F; }
# haproxy_logged REGEX: HAProxy's log (step 15) has a line matching REGEX.
haproxy_logged() { c journalctl -u sb-tlv-haproxy -o cat --no-pager | grep -Eq "$1"; }
tlv_log_tail() { c journalctl -u sb-tlv-haproxy -u sb-tlv-tls -u sb-tlv-unix -o cat --no-pager | tail -n 8; }
stop_tlv_units() {
    local unit
    [ -e "$WORK/tlv-units" ] || return 0
    while read -r unit; do c systemctl stop "$unit" >/dev/null 2>&1 || true; done <"$WORK/tlv-units"
    rm -f "$WORK/tlv-units"
}

# run_suite SUITE: build, boot, run every step; prints e2e-SUITE's counts
# and writes them to $COUNTS/SUITE for main's total. Runs as a process of
# its own (run.sh --suite SUITE).
run_suite() {
    SUITE=$1
    local t0 root
    t0=$(now)
    local packages=("${RUNTIME_PACKAGES[@]}")
    [ "$SUITE" != "$TLV_READER_SUITE" ] || packages+=(haproxy)
    root=$(ensure_derived_root "$SUITE" runtime-root "${packages[@]}")
    echo "e2e-$SUITE: runtime root ready ($(elapsed "$t0"))"

    t0=$(now)
    mkdir -p "$repo/build"
    # Built already by main (prebuild_debs), or now.
    local built=0
    if [ -f "$COUNTS/deb-$SUITE.rc" ]; then built=$(cat "$COUNTS/deb-$SUITE.rc")
    else bash "$repo/scripts/build-deb.sh" "$SUITE" >"$repo/build/build-deb-$SUITE.log" 2>&1 || built=$?
    fi
    if [ "$built" -ne 0 ]; then
        tail -n 30 "$repo/build/build-deb-$SUITE.log"
        echo "e2e-$SUITE: 0 passed, 1 failed"
        echo "0 1" >"$COUNTS/$SUITE"
        return 1
    fi
    DEB_NAME=$(deb_of "$SUITE")
    echo "e2e-$SUITE: built build/$DEB_NAME ($(elapsed "$t0"))"
    t0=$(now)
    RELEASED_WHY=
    released_deb "$SUITE" && echo "e2e-$SUITE: sockbridge $RELEASED_VERSION ready ($(elapsed "$t0"))"

    WORK=$(mktemp -d /var/tmp/sockbridge-e2e.XXXXXX)
    mkdir -p "$WORK/shared"
    trap 'echo "$PASSED $FAILED" >"$COUNTS/$SUITE"; cleanup' EXIT
    trap 'exit 130' INT TERM

    t0=$(now)
    boot_container "$root" || { echo "e2e-$SUITE: 0 passed, 1 failed"; FAILED=1; exit 1; }
    echo "e2e-$SUITE: container booted ($(elapsed "$t0"))"

    # The build for the release before this one, if this run made it.
    FOREIGN_DEB=
    if [ "$SUITE" = trixie ]; then FOREIGN_DEB=$(deb_of bookworm || true); fi
    if [ -n "$FOREIGN_DEB" ]; then
        step "0 Debian 12 build: refused by apt; forced, one line, exit 72" step_foreign_build
    fi
    REQUIRED=1 step "install: enables and starts nothing" step_install
    REQUIRED=1 step "backend service with group-accessible socket" setup_backend
    REQUIRED=1 step "1 socket listens, bridge.service inactive" step_socket_on_demand
    step "2 first connection activates, READY, STATUS" step_first_connection
    step "3 journal session-end entry with fields" step_journal
    step "4 backend restart under load: no failed session" step_backend_restart
    step "4b backend socket chmod'ed after bind: no failed session" step_backend_late_chmod
    step "5 service restart under load: no refused connection" step_service_restart
    step "5b two restarts: talking session, new clients, no gap" step_restart_no_gap
    step "5c restart carries a client held for an absent backend" step_restart_held_client
    step "5d restart carries 2,000 open sessions" step_restart_many
    step "5e fd store empty after a restart and after a stop" step_fdstore_empty
    step "6 watchdog kills frozen service, port accepts, new client served" step_watchdog
    step "7 reload applies config, open session survives" step_reload
    step "8 second instance bridge@2345 beside bridge" step_second_instance
    step "8b sockbridge status for bridge and bridge@2345" step_status
    step "9 systemd-analyze security <= $MAX_EXPOSURE, verify" step_security
    step "9b metrics with the documented drop-in, still <= $MAX_EXPOSURE" step_metrics
    step "9c TLS, keys by LoadCredential=, client certificate required" step_tls
    step "9d restart closes an idle TLS session after restart-grace" step_tls_restart
    # Both ends: the client container lives for these steps only.
    LINK_S=sbe2e-s$(suite_number "$SUITE")
    LINK_C=sbe2e-c$(suite_number "$SUITE")
    t0=$(now)
    if boot_client_container "$root"; then
        echo "e2e-$SUITE: client container booted ($(elapsed "$t0"))"
    else
        echo "e2e-$SUITE: client container did not boot ($(elapsed "$t0"))"
    fi
    step "14a client container, private link $LINK_SERVER-$LINK_CLIENT, package" step_link
    step "14b server end: bridge.socket on the link, TLS, redis behind it" step_server_end
    step "14c client end bridge-connect@redis: redis-cli PING, SET/GET" step_client_end
    step "14d journals: CLIENT_UID + TARGET, server CLIENT_ADDR" step_link_journals
    step "14e no / foreign / unlisted client certificate: tls-refused (CLIENT_CN), not in redis" step_link_refused
    step "14f server end restarted under a redis-cli loop: no failure" step_link_server_restart
    step "14g server end's port closed: a new client is held, then served" step_link_port_closed
    step "14h server end stopped, started 3x under a redis-cli loop: no failure" step_link_server_stops
    step "14i IPAddressAllow= enforced; security <= $MAX_CONNECT_EXPOSURE, verify" step_link_security
    step "14j client end: upgrade restarts bridge-connect@, remove stops" step_link_upgrade_remove
    step "14k server end back to its defaults" step_link_undo
    stop_client_container
    step "15 HAProxy reads the PROXY v2 TLVs: SSL (CN), AUTHORITY, 0xE0" step_haproxy_tlvs
    stop_tlv_units
    step "12 crash loop (bad config) never wedges the socket" step_crash_loop
    step "11 upgrade (higher version) hands over bridge and bridge@ sessions" step_upgrade
    step "10 remove stops all, purge removes conffile" step_remove_purge
    step "13 upgrade from $RELEASED_VERSION (no handover): stopped first" step_upgrade_from_released

    echo "e2e-$SUITE: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# prebuild_debs SUITE...: every release's package at once, before the suites
# run one after the other (a build keeps about one core busy: npm, node-gyp,
# tsc, lintian); each exit status in $COUNTS/deb-SUITE.rc for run_suite.
prebuild_debs() {
    local suite t0
    t0=$(now)
    mkdir -p "$repo/build"
    for suite in "$@"; do
        (rc=0; bash "$repo/scripts/build-deb.sh" "$suite" >"$repo/build/build-deb-$suite.log" 2>&1 || rc=$?
         echo "$rc" >"$COUNTS/deb-$suite.rc") &
    done
    wait
    echo "e2e: packages built for $* ($(elapsed "$t0"))"
}

main() {
    [ "$(id -u)" -eq 0 ] || skip "needs root to boot Debian containers with systemd-nspawn"
    ensure_host_packages systemd-container debootstrap openssl >/dev/null 2>&1 ||
        skip "cannot install systemd-container, debootstrap and openssl with apt-get"
    command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not available"
    local suites=("$@") suite passed=0 failed=0 p f
    [ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)
    for suite in "${suites[@]}"; do suite_number "$suite" >/dev/null; done
    ensure_base_root "${suites[0]}"
    in_root "$(base_root "${suites[0]}")" --volatile=overlay -- /bin/true >/dev/null 2>&1 ||
        skip "systemd-nspawn cannot start a container on this machine"

    COUNTS=$(mktemp -d /var/tmp/sockbridge-e2e-counts.XXXXXX)
    export COUNTS
    prebuild_debs "${suites[@]}"
    for suite in "${suites[@]}"; do
        # A process of its own, not a subshell: inside "… || true" bash
        # ignores errexit even where a step turns it on again, and every
        # assertion but a step's last command would go unchecked.
        bash "${BASH_SOURCE[0]}" --suite "$suite" || true
        read -r p f <"$COUNTS/$suite" 2>/dev/null || { p=0; f=1; }
        passed=$((passed + p))
        failed=$((failed + f))
    done
    rm -rf "$COUNTS"
    echo "e2e: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# Sourcing this file (for debugging one step by hand) runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    if [ "${1:-}" = --suite ]; then
        run_suite "$2"
    else
        main "$@"
    fi
fi
