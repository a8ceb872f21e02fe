#!/usr/bin/env bash
# Build the sockbridge Debian package in a clean Debian 12 root and lint it.
#
#   make deb        (as root)
#
# The source is the working tree as git sees it: tracked files plus new,
# not ignored ones (so uncommitted work is built too), never node_modules/
# or dist/. The build root (debootstrap + build dependencies from
# debian/control + lintian) is cached under /var/cache/sockbridge/build-root
# and used through a throw-away overlay (systemd-nspawn --volatile=overlay),
# so every build starts from the same pristine root. npm's download cache
# is kept between builds (/var/cache/sockbridge/npm).
#
# Result: build/sockbridge_<version>_<arch>.deb (and its -dbgsym package,
# .buildinfo and .changes). Fails when lintian reports any error or warning.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/rootfs.sh
source "$repo/scripts/rootfs.sh"

[ "$(id -u)" -eq 0 ] || die "make deb needs root (debootstrap, systemd-nspawn)"

# Build-Depends of debian/control as plain package names (no versions,
# first of alternatives); debhelper-compat is provided by debhelper.
build_depends() {
    sed -n '/^Build-Depends:/,/^[^ ]/p' "$repo/debian/control" | sed '1s/^Build-Depends://;/^[^ ]/d' |
        tr ',' '\n' | sed 's/|.*//; s/([^)]*)//g; s/\[[^]]*\]//g; s/<[^>]*>//g; s/[[:space:]]//g' |
        grep -v '^$' | sed 's/^debhelper-compat$/debhelper/' | sort -u | tr '\n' ' '
}

# Copy the working tree's source files (git's view) into $1.
stage_source() {
    local dest=$1
    mkdir -p "$dest"
    (cd "$repo" && git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -C "$dest" -xf -
}

main() {
    local t0 root version arch changes
    t0=$SECONDS
    ensure_host_packages debootstrap systemd-container
    # shellcheck disable=SC2046 # one word per package
    root=$(ensure_derived_root build-root build-essential fakeroot lintian $(build_depends))
    log "build root ready ($((SECONDS - t0))s)"

    work=$(mktemp -d /var/tmp/sockbridge-deb.XXXXXX) # global: the EXIT trap needs it
    trap 'rm -rf "$work"' EXIT
    stage_source "$work/src"
    mkdir -p "$SOCKBRIDGE_CACHE/npm"

    # npm ci talks HTTPS to the registry: trust what the host trusts (a
    # proxy's CA added to the host's bundle, for one).
    local ca_opts=()
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        ca_opts=(--bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca-certificates.crt
            -E npm_config_cafile=/etc/ssl/host-ca-certificates.crt
            -E NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca-certificates.crt)
    fi

    log "dpkg-buildpackage -us -uc -b (log: build/dpkg-buildpackage.log)"
    mkdir -p "$repo/build"
    rm -f "$repo"/build/sockbridge_* "$repo"/build/sockbridge-dbgsym_*
    if ! in_root "$root" --volatile=overlay --bind="$work:/build" \
        --bind="$SOCKBRIDGE_CACHE/npm:/var/cache/npm" -E npm_config_cache=/var/cache/npm "${ca_opts[@]}" \
        -- sh -c 'cd /build/src && dpkg-buildpackage -us -uc -b' \
        >"$repo/build/dpkg-buildpackage.log" 2>&1; then
        tail -n 40 "$repo/build/dpkg-buildpackage.log" >&2
        die "dpkg-buildpackage failed, see build/dpkg-buildpackage.log"
    fi
    log "built ($((SECONDS - t0))s)"

    version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version 2>/dev/null ||
        sed -n '1s/.*(\(.*\)).*/\1/p' "$repo/debian/changelog")
    arch=$(in_root "$root" -- dpkg --print-architecture)
    changes=sockbridge_${version}_${arch}.changes
    [ -f "$work/$changes" ] || die "no $changes after the build"
    cp "$work"/*.deb "$work"/*.buildinfo "$work/$changes" "$repo/build/"

    # Lint with the Debian 12 lintian of the build root: every binary
    # package of the .changes; any error or warning fails the build.
    log "lintian $changes"
    if ! in_root "$root" --volatile=overlay --bind-ro="$repo/build:/build" --user=nobody -E HOME=/tmp \
        -- lintian --fail-on error,warning --display-info "/build/$changes"; then
        die "lintian reported errors or warnings"
    fi
    log "ok: $(cd "$repo" && ls build/sockbridge_"${version}"_"${arch}".deb) ($((SECONDS - t0))s)"
}

main "$@"
