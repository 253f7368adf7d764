# ferry — build, test, run, install, bench.
#   make            release build of every program (sendmail linked statically: it starts per message)
#   make test       every test (unit, end to end, a bounded fuzz run); installs test tools as root
#   make run        a complete root in run/, supervised by s6 in the foreground (PORT, ROOT,
#                   FERRY_BIN_DIR to use programs built elsewhere)
#   make install    into $(DESTDIR)$(PREFIX) (default /var/ferry), stripped (STRIP=no keeps debug
#                   info); SENDMAIL=yes links /usr/sbin/sendmail; LINKS=yes (the default only for
#                   /var/ferry) links ferryctl into BINDIR and writes the systemd unit into UNITDIR
#   make uninstall  keeps queue, mail, control, logs and users; PURGE=yes removes them too
#   make bench      sendmail -> Maildir throughput (see scripts/bench-sendmail.sh)

PREFIX  ?= /var/ferry
DESTDIR ?=
PORT    ?= 2525
ROOT    ?= $(CURDIR)/run
SENDMAIL ?= no
FUZZ_SECONDS ?= 15
CARGO   ?= cargo
HOST    ?= $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')

.PHONY: all build test unit e2e fuzz run install uninstall bench clean deps-run deps-test

all: build

build:
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "make: cargo not found: install Rust 1.95 (rustup), or use programs built elsewhere: make run FERRY_BIN_DIR=/path/to/target/release" >&2; exit 1; }
	$(CARGO) build --release --workspace --bins
	@# sendmail is started for every message that mutt, cron or a script sends: linked
	@# statically it starts without the dynamic loader, 0.5-0.7 ms less CPU per message
	@# (docs/BENCHMARKS.md). Built in its own target dir, then copied over cargo's output
	@# in place (the same file as cargo's hard link, so a later cargo run keeps it).
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --bin sendmail \
		--target $(HOST) --target-dir target/static
	cp target/static/$(HOST)/release/sendmail target/release/sendmail

deps-run:
	@scripts/deps.sh run

deps-test:
	@scripts/deps.sh test

test: deps-test build
	$(CARGO) test --release --workspace --no-fail-fast
	fuzz/run-all.sh $(FUZZ_SECONDS)

# FERRY_BIN_DIR=DIR: use programs built elsewhere (no cargo needed).
run: deps-run $(if $(FERRY_BIN_DIR),,build)
	@$(if $(FERRY_BIN_DIR),FERRY_BIN_DIR="$(FERRY_BIN_DIR)") scripts/run.sh "$(ROOT)" "$(PORT)"

install: build
	@scripts/install.sh "$(DESTDIR)" "$(PREFIX)" "$(SENDMAIL)"

uninstall:
	@scripts/uninstall.sh "$(DESTDIR)" "$(PREFIX)"

bench: build
	@scripts/bench-sendmail.sh

clean:
	$(CARGO) clean
