# ferry — build, test, run, install, bench.
#   make            release build of every program
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

.PHONY: all build test unit e2e fuzz run install uninstall bench clean deps-run deps-test

all: build

build:
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "make: cargo not found: install Rust 1.95 (rustup), or use programs built elsewhere: make run FERRY_BIN_DIR=/path/to/target/release" >&2; exit 1; }
	$(CARGO) build --release --workspace --bins

deps-run:
	@scripts/deps.sh run

deps-test:
	@scripts/deps.sh test

test: deps-test build
	$(CARGO) test --release --workspace
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
