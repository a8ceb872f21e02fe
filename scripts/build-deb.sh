#!/usr/bin/env bash
# Build the sockbridge Debian package for one release and lint it.
#
#   make deb                  Debian 12 (bookworm), in a clean root (as root)
#   make deb SUITE=trixie     Debian 13 (trixie), in a clean root (as root)
#   make deb SUITE=host       this machine: its own tools and Node.js
#   make deb ARCH=arm64       Debian 12 for arm64, in a clean arm64 root run
#                             through qemu-user-static (as root; slow: the
#                             first run about half an hour, then about 15 min)
#
# A package runs only on the Node.js major it was built with (its native
# addons are compiled for that ABI), so each release gets its own build:
# in a clean root of that release, with that release's own nodejs, and a
# version that apt orders by release (0.1.0-1~deb12u1 < 0.1.0-1~deb13u1:
# installing the Debian 13 build over the Debian 12 one is an upgrade).
#
# SUITE=host is for every other Debian-family system (Ubuntu, derivatives,
# NodeSource's nodejs): it installs the build dependencies it lacks with apt
# (through sudo when not root), then builds with the machine's own Node.js.
# Its version says so (0.1.0-1~host.ubuntu24.04).
#
# The source is the working tree as git sees it: tracked files plus new,
# not ignored ones (so uncommitted work is built too), never node_modules/
# or dist/. A release's build root (debootstrap + build dependencies from
# debian/control + lintian) is cached under /var/cache/sockbridge/SUITE-build-root
# and used through a throw-away overlay (systemd-nspawn --volatile=overlay),
# so every build starts from the same pristine root. npm's download cache
# is kept between builds (/var/cache/sockbridge/npm).
#
# Result: build/sockbridge_<version>_<arch>.deb (and its -dbgsym package,
# .buildinfo and .changes). A release build fails when its own release's
# lintian reports any error or warning.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/rootfs.sh
source "$repo/scripts/rootfs.sh"

# debian/control's Build-Depends, one relation a line, alternatives and
# versions kept (apt-get satisfy resolves them); build profiles and
# architecture qualifiers dropped.
build_depends() {
    sed -n '/^Build-Depends:/,/^[^ #]/p' "$repo/debian/control" | sed '1s/^Build-Depends://;/^[^ ]/d' |
        tr ',' '\n' | sed 's/\[[^]]*\]//g; s/<[^>]*>//g; s/^[[:space:]]*//; s/[[:space:]]*$//' | grep -v '^$'
}

# Copy the working tree's source files (git's view) into $1.
stage_source() {
    local dest=$1
    mkdir -p "$dest"
    (cd "$repo" && git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -C "$dest" -xf -
}

# add_release_entry SOURCE_DIR SUFFIX DISTRIBUTION TEXT: a changelog entry on
# top of debian/changelog for this build, version = upstream's + SUFFIX, by
# the same maintainer, dated now (a new entry must be newer than the last).
add_release_entry() {
    local changelog=$1/debian/changelog suffix=$2 dist=$3 text=$4 version maintainer
    version=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$changelog")
    maintainer=$(sed -n '0,/^ -- /s/^ -- \(.*>\)  .*/\1/p' "$changelog")
    { printf 'sockbridge (%s%s) %s; urgency=medium\n\n  * %s\n\n -- %s  %s\n\n' \
        "$version" "$suffix" "$dist" "$text" "$maintainer" "$(LC_ALL=C date -R)"
      cat "$changelog"; } >"$changelog.new"
    mv "$changelog.new" "$changelog"
    echo "$version$suffix"
}

# The .deb, .buildinfo and .changes of one build, from $1 into build/.
collect() {
    local from=$1 version=$2 arch=$3
    mkdir -p "$repo/build"
    # (Only this architecture's: the other architectures' builds of this version stay.)
    rm -f "$repo"/build/sockbridge_"$version"_"$arch".* "$repo"/build/sockbridge-dbgsym_"$version"_"$arch".*
    cp "$from"/*.deb "$from"/*.buildinfo "$from/sockbridge_${version}_${arch}.changes" "$repo/build/"
}

# A build for one Debian release, in a clean root of that release.
build_release() {
    local suite=$1 number t0 root version arch changes buildlog
    number=$(suite_number "$suite")
    buildlog=build/dpkg-buildpackage-$suite$(arch_tag).log
    [ "$(id -u)" -eq 0 ] || die "make deb SUITE=$suite needs root (debootstrap, systemd-nspawn); SUITE=host builds without a container"
    t0=$SECONDS
    ensure_host_packages debootstrap systemd-container
    local deps=()
    mapfile -t deps < <(build_depends)
    root=$(ensure_derived_root "$suite" build-root build-essential fakeroot lintian "${deps[@]}")
    log "$suite build root ready ($((SECONDS - t0))s)"

    work=$(mktemp -d /var/tmp/sockbridge-deb.XXXXXX) # global: the EXIT trap needs it
    trap 'rm -rf "$work"' EXIT
    stage_source "$work/src"
    version=$(add_release_entry "$work/src" "~deb${number}u1" "$suite" "Build for Debian $number ($suite).")
    mkdir -p "$SOCKBRIDGE_CACHE/npm"

    # npm ci talks HTTPS to the registry: trust what the host trusts (a
    # proxy's CA added to the host's bundle, for one).
    local ca_opts=()
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        ca_opts=(--bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca-certificates.crt
            -E npm_config_cafile=/etc/ssl/host-ca-certificates.crt
            -E NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca-certificates.crt)
    fi

    log "dpkg-buildpackage -us -uc -b for $suite, $(root_arch) (log: $buildlog)"
    mkdir -p "$repo/build"
    if ! in_root "$root" --volatile=overlay --bind="$work:/build" \
        --bind="$SOCKBRIDGE_CACHE/npm:/var/cache/npm" -E npm_config_cache=/var/cache/npm "${ca_opts[@]}" \
        -- sh -c 'cd /build/src && dpkg-buildpackage -us -uc -b' \
        >"$repo/$buildlog" 2>&1; then
        tail -n 40 "$repo/$buildlog" >&2
        die "dpkg-buildpackage failed, see $buildlog"
    fi
    log "built ($((SECONDS - t0))s)"

    arch=$(in_root "$root" -- dpkg --print-architecture)
    changes=sockbridge_${version}_${arch}.changes
    [ -f "$work/$changes" ] || die "no $changes after the build"
    collect "$work" "$version" "$arch"

    # Lint with the release's own lintian: every binary package of the
    # .changes; any error or warning fails the build.
    log "lintian ($suite) $changes"
    if ! in_root "$root" --volatile=overlay --bind-ro="$repo/build:/build" --user=nobody -E HOME=/tmp \
        -- lintian --fail-on error,warning --display-info "/build/$changes"; then
        die "lintian reported errors or warnings"
    fi
    log "ok: build/sockbridge_${version}_${arch}.deb ($((SECONDS - t0))s)"
}

# A build on this machine, with its own tools and Node.js.
build_host() {
    local t0=$SECONDS id version_id codename version arch sudo=()
    command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
        die "make deb SUITE=host needs a Debian-family system (apt, dpkg)"
    # shellcheck disable=SC1091 # the running system's
    read -r id version_id codename < <(. /etc/os-release && echo "${ID:-linux} ${VERSION_ID:-0} ${VERSION_CODENAME:-unstable}")
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)

    # Only what is missing; apt-get satisfy resolves debian/control's
    # alternatives (Debian's libnode-dev and npm, or NodeSource's nodejs,
    # which provides both).
    local deps
    deps="build-essential, fakeroot, dpkg-dev, $(build_depends | paste -sd, | sed 's/,/, /g')"
    if ! command -v dpkg-checkbuilddeps >/dev/null ||
        ! dpkg-checkbuilddeps -d "$deps" "$repo/debian/control" >/dev/null 2>&1; then
        log "installing the build dependencies: apt-get satisfy \"$deps\""
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get satisfy -y -qq --no-install-recommends "$deps" >/dev/null
    fi
    [ -f /usr/include/node/node.h ] ||
        die "no Node.js headers in /usr/include/node: install libnode-dev (Debian's nodejs) or a nodejs that ships them (NodeSource's)"
    log "building with $(node --version) ($(command -v node)), npm $(npm --version)"

    work=$(mktemp -d "${TMPDIR:-/tmp}/sockbridge-deb.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    stage_source "$work/src"
    version=$(add_release_entry "$work/src" "~host.$id$version_id" "$codename" \
        "Built on $id $version_id with Node.js $(node --version).")
    log "dpkg-buildpackage -us -uc -b (log: build/dpkg-buildpackage-host.log)"
    mkdir -p "$repo/build"
    if ! (cd "$work/src" && dpkg-buildpackage -us -uc -b) >"$repo/build/dpkg-buildpackage-host.log" 2>&1; then
        tail -n 40 "$repo/build/dpkg-buildpackage-host.log" >&2
        die "dpkg-buildpackage failed, see build/dpkg-buildpackage-host.log"
    fi
    arch=$(dpkg --print-architecture)
    collect "$work" "$version" "$arch"
    if command -v lintian >/dev/null; then
        lintian --fail-on error,warning "$repo/build/sockbridge_${version}_${arch}.changes" ||
            die "lintian reported errors or warnings"
    else
        log "not linted: lintian is not installed (apt install lintian to check the package)"
    fi
    log "ok: build/sockbridge_${version}_${arch}.deb ($((SECONDS - t0))s)"
    log "install it with: sudo apt install ./build/sockbridge_${version}_${arch}.deb"
}

main() {
    local suite=${1:-bookworm}
    # A Debian architecture (arm64) other than the host's: built in a root
    # of that architecture (scripts/rootfs.sh, SOCKBRIDGE_ARCH).
    export SOCKBRIDGE_ARCH=${2:-${SOCKBRIDGE_ARCH:-}}
    if [ "$suite" = host ] && [ -n "$(arch_tag)" ]; then
        die "SUITE=host builds for this machine's architecture only; ARCH=$SOCKBRIDGE_ARCH needs a release (SUITE=bookworm)"
    fi
    case $suite in
        host) build_host ;;
        *) build_release "$suite" ;;
    esac
}

main "$@"
