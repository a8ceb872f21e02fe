# sockbridge — every entry point a developer or operator needs.
# `make run` and `make test` work on a fresh Debian 12 machine: they install
# what they need first (scripts/deps.sh: apt packages, then npm ci).

SHELL := /bin/bash
ARGS ?=
TS_SOURCES := $(shell find src test bench -name '*.ts' 2>/dev/null) tsconfig.json

.PHONY: all deps build run demo test unit e2e deb bench clean docs

all: build

deps: node_modules/.deps-ok
node_modules/.deps-ok: package.json package-lock.json scripts/deps.sh
	bash scripts/deps.sh
	touch $@

build: dist/.build-ok
dist/.build-ok: node_modules/.deps-ok $(TS_SOURCES)
	node_modules/.bin/tsc -p tsconfig.json
	touch $@

# Run the bridge in the foreground with the defaults (override with ARGS="...").
run: build
	./bin/sockbridge $(ARGS)

# The bridge in front of a tiny echo program on ./run/echo.sock.
demo: build
	bash scripts/demo.sh $(ARGS)

# Every test: the unit/functional suite, then the systemd end-to-end test.
test: unit e2e

unit: build
	node --test dist/test/*.test.js

# Builds the .deb in a clean Debian 12 root itself (no host build needed);
# skips with one line where it cannot boot a container (not root).
e2e:
	bash test/e2e/run.sh

deb:
	bash scripts/build-deb.sh

# Regenerate the README's option table from the option table in src/options.ts.
docs: build
	node dist/src/main.js generate markdown > build-table.md.tmp
	python3 -c 'import re,sys; r=open("README.md").read(); t=open("build-table.md.tmp").read(); open("README.md","w").write(re.sub(r"(<!-- options:begin -->\n).*?(<!-- options:end -->)", lambda m: m.group(1)+t+m.group(2), r, flags=re.S))'
	rm -f build-table.md.tmp

# sockbridge side by side with HAProxy, nginx, socat, socket-proxyd and a direct
# connection, as ratios (QUICK=1: about 2 minutes). Results in bench/out/.
bench: build
	node dist/bench/run.js

clean:
	rm -rf dist build run
