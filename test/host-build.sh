#!/usr/bin/env bash
# `make deb SUITE=host` on a fresh Debian system, as a user of a release we
# ship no package for would run it: a clean root of SUITE (default trixie,
# Debian's own nodejs) with nothing but git and make, a clone of this
# repository, then the one documented command, which must install the rest
# itself and leave a package that installs and answers `sockbridge --version`.
#
#   make test-host-build [HOST_BUILD_SUITE=bookworm]     (as root; by hand, not in CI)
#
# Prints "host-build: 1 passed, 0 failed" when it worked.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/rootfs.sh
source "$repo/scripts/rootfs.sh"

suite=${1:-trixie}
[ "$(id -u)" -eq 0 ] || { echo "host-build: skipped: needs root (debootstrap, systemd-nspawn)"; exit 0; }
ensure_base_root "$suite"

work=$(mktemp -d /var/tmp/sockbridge-host-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/sockbridge"
# Uncommitted work is tested too: the working tree as git sees it.
(cd "$repo" && git ls-files -z -m -o --exclude-standard | tar --null -T - -cf -) | tar -C "$work/sockbridge" -xf -

# The registry goes through whatever the host trusts (see build-deb.sh).
ca_opts=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    ca_opts=(--bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca-certificates.crt
        -E NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca-certificates.crt -E npm_config_cafile=/etc/ssl/host-ca-certificates.crt)
fi
t0=$SECONDS
if in_root "$(base_root "$suite")" --volatile=overlay --bind="$work:/home/user" "${ca_opts[@]}" -- sh -c '
        set -e
        apt-get update -qq && apt-get install -y -qq git make ca-certificates >/dev/null
        cd /home/user/sockbridge
        make deb SUITE=host
        apt-get install -y -qq ./build/sockbridge_*~host.*.deb >/dev/null
        dpkg -s sockbridge | grep -E "^(Version|Depends):"
        sockbridge --version' 2>&1 | tee "$work/log" | grep -E '^[0-9:]+ (installing|building|ok:)|^(Version|Depends):|^sockbridge '; then
    echo "host-build: $suite in $((SECONDS - t0))s"
    echo "host-build: 1 passed, 0 failed"
else
    tail -n 30 "$work/log"
    echo "host-build: 0 passed, 1 failed"
    exit 1
fi
