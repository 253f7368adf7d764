#!/usr/bin/env bash
# Builds and runs every ferry-smtp fuzz target for SECONDS each (default 15),
# on stable Rust without a sanitizer (`-s none`).  Exits non-zero if a build
# fails, if there is no target, or if any target finds a crash (the input is left in
# fuzz/artifacts/). The corpus is kept between runs in FERRY_FUZZ_CORPUS.
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

targets=$(cargo fuzz list)
if [ -z "$targets" ]; then
    echo "fuzz: no fuzz targets found (cargo fuzz list is empty)" >&2
    exit 1
fi
# The corpus grows across runs: it lives outside the checkout (CI clones afresh), in
# FERRY_FUZZ_CORPUS (default ~/.cache/ferry-fuzz); fuzz/seeds/ is the committed, minimised part.
corpus_root="${FERRY_FUZZ_CORPUS:-${HOME:-/root}/.cache/ferry-fuzz}"
failed=()
ran=0
for target in $targets; do
    mkdir -p "$corpus_root/$target"
    echo "== fuzz $target for ${secs}s (corpus $corpus_root/$target)"
    # The first corpus directory collects new inputs; the seeds are read only.
    ran=$((ran + 1))
    if ! cargo fuzz run -s none "$target" "$corpus_root/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all $ran targets ran ${secs}s without a crash"
