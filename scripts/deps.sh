#!/usr/bin/env bash
# Install what building and testing sockbridge needs on a Debian-family
# system (Debian 12, 13, Ubuntu), then the npm packages. Safe to run again:
# it only installs what is missing. With "relay": only rebuild the native
# relay (native/relay.c changed; node_modules stay as they are).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build: the two native addons (sd-notify, systemd-journald) need libsystemd,
# a C++ compiler and python3 for node-gyp (the native relay, plain C, the same
# compiler; gcc's AddressSanitizer and UBSan runtimes come with it). Tests: systemd-socket-activate
# (package systemd), ss (iproute2), python3 (the sd_notify listener), openssl
# (test certificates), haproxy (reads the PROXY v2 headers and TLVs sockbridge
# writes, in test/who.test.ts).
need=(libsystemd-dev g++ make python3 pkg-config systemd iproute2 openssl haproxy)
if ! command -v node >/dev/null; then
  need+=(nodejs npm libnode-dev) # the release's own Node; node-gyp builds against libnode-dev's headers
fi
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# node-gyp must build the addons against the installed Node's own headers
# (nothing can be downloaded): Debian's libnode-dev and NodeSource's nodejs
# both put them under /usr/include/node. node-gyp ≥ 11.4 reads
# npm_package_config_node_gyp_nodedir; older ones (with Debian's npm 9) only
# npm_config_nodedir, which npm ≥ 11 warns about ("will stop working in the
# next major version"): set that one only for an npm that takes it silently.
if [ -f /usr/include/node/node.h ]; then
  export npm_package_config_node_gyp_nodedir=${npm_package_config_node_gyp_nodedir:-/usr}
  if [ "$(npm --version | cut -d. -f1)" -lt 11 ]; then
    export npm_config_nodedir=${npm_config_nodedir:-/usr}
  fi
fi
if [ "${1:-}" = relay ]; then
  npm run --silent install # package.json's install script: node-gyp for native/
else
  npm ci --no-audit --no-fund # also runs the install script
fi
