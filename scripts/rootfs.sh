# shellcheck shell=bash
# Cached Debian root file systems, one set per release, for the package
# build (scripts/build-deb.sh) and the systemd end-to-end test
# (test/e2e/run.sh). Sourced, not run. Needs root.
#
#   /var/cache/sockbridge/<suite>-base    debootstrap --variant=minbase + systemd
#   /var/cache/sockbridge/<suite>-<name>  a copy of it with more packages
#
# <suite> is a Debian release's code name from SUITES below.
# SOCKBRIDGE_ARCH=<arch> (a Debian architecture, e.g. arm64) makes the roots
# of that architecture instead of the host's, run through qemu-user-static
# (binfmt_misc): /var/cache/sockbridge/<suite>-<arch>-base and so on.
#
# Each root is built in a temporary directory and renamed into place only
# when complete, so an interrupted run never leaves a half-built cache. A
# root records what was installed in it (.sockbridge-stamp); when the wanted
# package list changes, or the root is more than a week old (so it gets the
# current point release), it is rebuilt.
# SOCKBRIDGE_CACHE moves the cache; SOCKBRIDGE_DEBIAN_MIRROR picks the mirror
# (default: the host's own Debian mirror, else debootstrap's default).

SOCKBRIDGE_CACHE=${SOCKBRIDGE_CACHE:-/var/cache/sockbridge}
BASE_PACKAGES=systemd,systemd-sysv,dbus

# The releases a package is built for: code name and Debian version. The
# version goes into the package's version (0.1.0-1~deb13u1), so that apt
# orders the builds of one upstream version by release.
declare -A SUITES=([bookworm]=12 [trixie]=13)

# The Debian version of a suite (12 for bookworm); fails for an unknown one.
suite_number() {
    [ -n "${SUITES[$1]:-}" ] || die "unknown Debian release \"$1\": expected one of ${!SUITES[*]} (or host)"
    echo "${SUITES[$1]}"
}
# The roots' Debian architecture, and "-<arch>" in their names when it is
# not the host's (so the host's roots keep their names).
root_arch() { echo "${SOCKBRIDGE_ARCH:-$(dpkg --print-architecture)}"; }
arch_tag() { [ "$(root_arch)" = "$(dpkg --print-architecture)" ] || echo "-$(root_arch)"; }
base_root() { echo "$SOCKBRIDGE_CACHE/$1$(arch_tag)-base"; }

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

# A foreign root's programs run through qemu-user-static: binfmt_misc
# mounted and the handler registered with the F flag (the interpreter is
# opened at registration, so it also works inside the containers).
ensure_emulation() {
    local arch cpu
    arch=$(root_arch)
    [ -z "$(arch_tag)" ] && return 0
    case $arch in
        arm64) cpu=aarch64 ;;
        *) die "no emulation set up for architecture \"$arch\" (known: arm64)" ;;
    esac
    ensure_host_packages qemu-user-static binfmt-support
    mountpoint -q /proc/sys/fs/binfmt_misc ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$cpu" ] || update-binfmts --enable "qemu-$cpu" >&2
    grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/qemu-$cpu" ||
        die "the binfmt_misc handler qemu-$cpu lacks the F flag: it would not work inside a container"
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

# ensure_base_root SUITE: the minimal root of that release.
ensure_base_root() {
    local suite=$1 root
    suite_number "$suite" >/dev/null
    root=$(base_root "$suite")
    root_is_current "$root" "$BASE_PACKAGES" && return 0
    ensure_host_packages debootstrap systemd-container
    local mirror security tmp
    mirror=${SOCKBRIDGE_DEBIAN_MIRROR:-$(host_mirror debian)}
    security=$(host_mirror debian-security)
    tmp=$root.tmp
    rm -rf "$tmp"
    mkdir -p "$SOCKBRIDGE_CACHE"
    log "debootstrap $suite ($(root_arch)) into $root (a minute or two; emulated: about four)"
    # shellcheck disable=SC2086 # $mirror is empty (debootstrap's default) or one URI
    debootstrap --arch="$(root_arch)" --variant=minbase --include="$BASE_PACKAGES" "$suite" "$tmp" $mirror \
        >"$SOCKBRIDGE_CACHE/debootstrap-$suite$(arch_tag).log" 2>&1 ||
        die "debootstrap failed, see $SOCKBRIDGE_CACHE/debootstrap-$suite$(arch_tag).log"
    # Point releases and security updates, as on a real host of that release.
    if [ -n "$mirror" ]; then
        echo "deb $mirror $suite-updates main" >>"$tmp/etc/apt/sources.list"
    fi
    if [ -n "$security" ]; then
        echo "deb $security $suite-security main" >>"$tmp/etc/apt/sources.list"
    fi
    # No recommends, no documentation: smaller, faster roots.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$tmp/etc/apt/apt.conf.d/90sockbridge"
    echo sockbridge-test >"$tmp/etc/hostname"
    echo "$BASE_PACKAGES" >"$tmp/.sockbridge-stamp"
    rm -rf "$root"
    mv "$tmp" "$root"
}

# ensure_derived_root SUITE NAME PACKAGE... : $SOCKBRIDGE_CACHE/SUITE-NAME, a
# copy of SUITE's base root with PACKAGEs (names or relations) installed (apt-get update first, so
# they are the current point release). Prints the root's path.
ensure_derived_root() {
    local suite=$1 name=$2; shift 2
    local root=$SOCKBRIDGE_CACHE/$suite$(arch_tag)-$name want
    want="$BASE_PACKAGES $*"
    ensure_emulation
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
    ensure_base_root "$suite"
    log "preparing $root: $*"
    rm -rf "$root.tmp"
    cp -a "$(base_root "$suite")" "$root.tmp"
    # apt-get satisfy takes relations ("libnode-dev | nodejs-dev") as well
    # as plain package names, and picks what this release has.
    local relations
    relations=$(printf '%s, ' "$@")
    in_root "$root.tmp" -- sh -c 'apt-get update -qq && apt-get upgrade -y -qq &&
        apt-get satisfy -y -qq "$1"' sh "${relations%, }" >"$root.log" 2>&1 ||
        die "installing packages into $root failed, see $root.log"
    in_root "$root.tmp" -- apt-get clean >&2
    echo "$want" >"$root.tmp/.sockbridge-stamp"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    exec {lock}>&-
    echo "$root"
}
