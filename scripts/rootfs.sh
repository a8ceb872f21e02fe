# shellcheck shell=bash
# Cached Debian 12 (bookworm) root file systems for the package build
# (scripts/build-deb.sh) and the systemd end-to-end test (test/e2e/run.sh).
# Sourced, not run. Needs root.
#
#   /var/cache/sockbridge/bookworm-base   debootstrap --variant=minbase + systemd
#   /var/cache/sockbridge/<name>          a copy of it with more packages
#
# Each root is built in a temporary directory and renamed into place only
# when complete, so an interrupted run never leaves a half-built cache. A
# root records what was installed in it (.sockbridge-stamp); when the wanted
# package list changes, or the root is more than a week old (so it gets the
# current point release), it is rebuilt.
# SOCKBRIDGE_CACHE moves the cache; SOCKBRIDGE_DEBIAN_MIRROR picks the mirror
# (default: the host's own Debian mirror, else debootstrap's default).

SOCKBRIDGE_CACHE=${SOCKBRIDGE_CACHE:-/var/cache/sockbridge}
BASE_ROOT=$SOCKBRIDGE_CACHE/bookworm-base
BASE_PACKAGES=systemd,systemd-sysv,dbus

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install host tools (Debian package names) that are missing.
ensure_host_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing on the host: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The host's Debian mirror URI for the given archive name (debian or
# debian-security), from its apt sources; empty when there is none.
host_mirror() {
    local archive=$1
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^[[:space:]]*#' | grep -oE '(https?|file)://[^[:space:]]+' |
        sed 's:/*$::' | grep -E "/$archive\$" | head -n 1 || true
}

# Run a command inside a root (not booted): its own mount namespace, /proc,
# /dev and /run set up by systemd-nspawn, the host's network and resolver.
# Extra nspawn options come before "--".
in_root() {
    local root=$1; shift
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    # (nspawn's parting "Attempted to remove disk file system" note about
    # its own propagation directory is noise: filtered out.)
    systemd-nspawn --quiet --register=no --keep-unit --console=pipe \
        --resolv-conf=copy-host --timezone=off --link-journal=no \
        -E DEBIAN_FRONTEND=noninteractive -E LC_ALL=C.UTF-8 \
        -D "$root" "${opts[@]}" -- "$@" \
        2> >(grep -v --line-buffered '^Attempted to remove disk file system' >&2)
}

# Is ROOT complete, made for WANT, and at most a week old?
root_is_current() {
    local root=$1 want=$2
    [ -f "$root/.sockbridge-stamp" ] && [ "$(cat "$root/.sockbridge-stamp")" = "$want" ] &&
        [ -z "$(find "$root/.sockbridge-stamp" -mtime +7)" ]
}

ensure_base_root() {
    root_is_current "$BASE_ROOT" "$BASE_PACKAGES" && return 0
    ensure_host_packages debootstrap systemd-container
    local mirror security tmp
    mirror=${SOCKBRIDGE_DEBIAN_MIRROR:-$(host_mirror debian)}
    security=$(host_mirror debian-security)
    tmp=$BASE_ROOT.tmp
    rm -rf "$tmp"
    mkdir -p "$SOCKBRIDGE_CACHE"
    log "debootstrap bookworm into $BASE_ROOT (about a minute)"
    # shellcheck disable=SC2086 # $mirror is empty (debootstrap's default) or one URI
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$tmp" $mirror \
        >"$SOCKBRIDGE_CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $SOCKBRIDGE_CACHE/debootstrap.log"
    # Point releases and security updates, as on a real Debian 12 host.
    if [ -n "$mirror" ]; then
        echo "deb $mirror bookworm-updates main" >>"$tmp/etc/apt/sources.list"
    fi
    if [ -n "$security" ]; then
        echo "deb $security bookworm-security main" >>"$tmp/etc/apt/sources.list"
    fi
    # No recommends, no documentation: smaller, faster roots.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$tmp/etc/apt/apt.conf.d/90sockbridge"
    echo sockbridge-test >"$tmp/etc/hostname"
    echo "$BASE_PACKAGES" >"$tmp/.sockbridge-stamp"
    rm -rf "$BASE_ROOT"
    mv "$tmp" "$BASE_ROOT"
}

# ensure_derived_root NAME PACKAGE... : $SOCKBRIDGE_CACHE/NAME, a copy of the
# base root with PACKAGEs installed (apt-get update first, so they are the
# current point release). Prints the root's path.
ensure_derived_root() {
    local name=$1; shift
    local root=$SOCKBRIDGE_CACHE/$name want
    want="$BASE_PACKAGES $*"
    if root_is_current "$root" "$want"; then
        echo "$root"
        return 0
    fi
    # One builder at a time (make deb and make e2e may run side by side).
    local lock
    mkdir -p "$SOCKBRIDGE_CACHE"
    exec {lock}>"$SOCKBRIDGE_CACHE/.lock"
    flock "$lock"
    if root_is_current "$root" "$want"; then # built meanwhile
        exec {lock}>&-
        echo "$root"
        return 0
    fi
    ensure_base_root
    log "preparing $root: $*"
    rm -rf "$root.tmp"
    cp -a "$BASE_ROOT" "$root.tmp"
    in_root "$root.tmp" -- sh -c 'apt-get update -qq && apt-get upgrade -y -qq &&
        apt-get install -y -qq "$@"' sh "$@" >"$SOCKBRIDGE_CACHE/$name.log" 2>&1 ||
        die "installing packages into $name failed, see $SOCKBRIDGE_CACHE/$name.log"
    in_root "$root.tmp" -- apt-get clean >&2
    echo "$want" >"$root.tmp/.sockbridge-stamp"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    exec {lock}>&-
    echo "$root"
}
