# sockbridge — every entry point a developer or operator needs.
# `make run` and `make test` work on a fresh Debian 12 or 13 machine: they install
# what they need first (scripts/deps.sh: apt packages, then npm ci).

SHELL := /bin/bash
ARGS ?=
TS_SOURCES := $(shell find src test bench -name '*.ts' 2>/dev/null) tsconfig.json

.PHONY: all deps build run demo test unit test-asan test-matrix e2e deb test-host-build bench bench-clients clean docs

all: build

deps: node_modules/.deps-ok
node_modules/.deps-ok: package.json package-lock.json scripts/deps.sh
	bash scripts/deps.sh
	touch $@

RELAY := native/build/Release/relay.node
build: dist/.build-ok $(RELAY)
dist/.build-ok: node_modules/.deps-ok $(TS_SOURCES)
	node_modules/.bin/tsc -p tsconfig.json
	touch $@

# The native relay (Node-API: one build for every Node). npm ci builds it;
# this rebuilds it when its source changes.
NATIVE_SOURCES := $(wildcard native/*.c native/*.h)
$(RELAY): $(NATIVE_SOURCES) native/binding.gyp node_modules/.deps-ok
	bash scripts/deps.sh relay
	touch $@

# Run the bridge in the foreground with the defaults (override with ARGS="...").
run: build
	./bin/sockbridge $(ARGS)

# The bridge in front of a tiny echo program on ./run/echo.sock.
demo: build
	bash scripts/demo.sh $(ARGS)

# Every test: the unit/functional suite (with the data plane, then the relay
# tests again with the TypeScript relay), the same under the sanitizer
# build, a compatibility run under every other supported Node major, then
# the systemd end-to-end test.
HOST_MAJOR = $(shell node -p 'process.versions.node.split(".")[0]')
test: unit test-asan
	@echo "test-matrix: node $(HOST_MAJOR): this machine's $$(node --version) ($$(command -v node)) ran the suite in make unit"
	$(MAKE) --no-print-directory test-matrix MAJORS="$(filter-out $(HOST_MAJOR),$(MAJORS))"
	$(MAKE) --no-print-directory e2e

# Test files run at once (they wait on sockets, timers and child processes far
# more than they compute); TEST_CONCURRENCY=1 runs one at a time.
TEST_CONCURRENCY ?= 3
NODE_TEST = node --test --test-concurrency=$(TEST_CONCURRENCY)
tests = $(patsubst %,dist/test/%.test.js,$(1))

# What a relay does: run again with the TypeScript relay (make unit) and
# under the sanitizer build (make test-asan).
RELAY_TESTS := relay retries limits lifecycle socket-recreated bad-peers health soak status targets tls tls-dataplane forced-end remote-access unix-listen who who-native
# The whole suite with the data plane (forced: the tests' bridges run
# --relay native), then RELAY_TESTS with the TypeScript relay.
unit: build
	$(NODE_TEST) dist/test/*.test.js
	SOCKBRIDGE_TEST_RELAY=js $(NODE_TEST) $(call tests,$(RELAY_TESTS))

# RELAY_TESTS, the restart's and the failure-injection tests against the data
# plane built with AddressSanitizer and UBSan, and with its test hooks
# (SOCKBRIDGE_FAILPOINTS): any report aborts the bridge, which fails its
# test. Node itself is not instrumented: ASan's runtime is preloaded, and
# leaks are left to test/soak.test.ts (Node's own allocations would drown them).
ASAN_RELAY := build/asan/relay.node
NODE_INCLUDE ?= /usr/include/node
$(ASAN_RELAY): $(NATIVE_SOURCES)
	@mkdir -p $(dir $@)
	cc -std=gnu11 -shared -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
		-DSOCKBRIDGE_TEST_HOOKS -fvisibility=hidden -Wall -Wextra -Werror -Wl,-z,now -Wl,-Bsymbolic -I$(NODE_INCLUDE) -o $@ $(filter %.c,$^) -lpthread
test-asan: build $(ASAN_RELAY)
	LD_PRELOAD=$$(cc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 SOCKBRIDGE_RELAY_ADDON=$(abspath $(ASAN_RELAY)) \
		$(NODE_TEST) $(call tests,$(RELAY_TESTS) handover dataplane-failures differential)

# Under Node 18, 20, 22, 24 and 26 in turn (official builds from the npm
# registry, cached in /var/cache/sockbridge/node; addons built per Node in
# build/matrix/), what depends on the Node release: loading the addons and
# binding Node's OpenSSL (install, fast-path), TLS in both relays, the
# TypeScript relay's use of Node's internals, socket activation, the fd
# store, the control socket, config parsing. MATRIX_TESTS=all for the whole
# suite; MAJORS="22 24" for some Nodes only.
MAJORS ?= 18 20 22 24 26
MATRIX_TESTS ?= install fast-path config tls relay handover remote-access systemd status unix-listen
MATRIX_JS_TESTS ?= relay tls remote-access unix-listen
test-matrix: build
	MAJORS="$(MAJORS)" TESTS="$(filter-out all,$(MATRIX_TESTS))" JS_TESTS="$(MATRIX_JS_TESTS)" TEST_CONCURRENCY=$(TEST_CONCURRENCY) bash scripts/test-matrix.sh

# For Debian 12 and 13 in turn: builds that release's .deb in a clean root
# of it, boots a container of it, installs the package there and checks it
# (E2E_SUITES="trixie" for one); skips with one line where it cannot boot a
# container (not root).
E2E_SUITES ?= bookworm trixie
e2e:
	bash test/e2e/run.sh $(E2E_SUITES)

# The package for one release: SUITE=bookworm (Debian 12, the default) or
# trixie (Debian 13), built in a clean root of that release; SUITE=host
# builds on this machine with its own tools and Node.js (Ubuntu, other
# Debian-family systems, NodeSource's nodejs). Result in build/.
# ARCH=arm64 builds for that architecture in a root of it, emulated by
# qemu-user-static (slow; empty: the host's architecture).
SUITE ?= bookworm
ARCH ?=
deb:
	bash scripts/build-deb.sh $(SUITE) $(ARCH)

# make deb SUITE=host in a clean Debian root from a clone (by hand: it
# installs a whole toolchain, about three minutes; not part of make test).
HOST_BUILD_SUITE ?= trixie
test-host-build:
	bash test/host-build.sh $(HOST_BUILD_SUITE)

# Regenerate the README's option table from the option table in src/options.ts.
docs: build
	node dist/src/main.js generate markdown > build-table.md.tmp
	python3 -c 'import re,sys; r=open("README.md").read(); t=open("build-table.md.tmp").read(); open("README.md","w").write(re.sub(r"(<!-- options:begin -->\n).*?(<!-- options:end -->)", lambda m: m.group(1)+t+m.group(2), r, flags=re.S))'
	rm -f build-table.md.tmp

# sockbridge side by side with HAProxy, nginx, socat, socket-proxyd and a direct
# connection, as ratios: TCP → UNIX, over TLS, and the mirror direction UNIX → TCP
# (about 18 minutes; QUICK=1: about 6; SECTIONS=mirror: that one only), then bench-clients.
# Results in bench/out/.
bench: build
	node dist/bench/run.js && node dist/bench/clients.js

# redis-benchmark and pgbench through sockbridge and HAProxy and directly on
# the UNIX sockets, as ratios (about 5 minutes; QUICK=1: about 1).
bench-clients: build
	node dist/bench/clients.js

clean:
	rm -rf dist build run
