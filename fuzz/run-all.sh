#!/usr/bin/env bash
# Builds and runs every ferry-smtp fuzz target for SECONDS each (default 15),
# on stable Rust without a sanitizer (`-s none`).  Exits non-zero if a build
# fails or any target finds a crash (the input is left in fuzz/artifacts/).
#
#   fuzz/run-all.sh [SECONDS]
#
# Installs cargo-fuzz 0.13.2 first if it is missing.
set -euo pipefail

secs="${1:-15}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
# fuzz/ is its own workspace with its own target directory.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi

cargo fuzz build -s none

failed=()
for target in $(cargo fuzz list); do
    mkdir -p "fuzz/corpus/$target"
    echo "== fuzz $target for ${secs}s"
    # The first corpus directory collects new inputs; the seeds are read only.
    if ! cargo fuzz run -s none "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all targets ran ${secs}s without a crash"
