#!/bin/sh
# layout-root.sh ROOT — puts the built programs into ROOT/bin and lays the root out with
# `ferryctl init` (users when root, directories, owners, modes, service directories).
# Shared by make run, make install and the benchmarks. STRIP=yes strips debug info.
set -e
root=$1
bindir=${FERRY_BIN_DIR:-target/release}
mkdir -p "$root/bin"
for p in queue qwriter inject start send lspawn rspawn clean local-deliver remote-deliver smtpd authverify sendmail ferryctl; do
  if [ ! -f "$bindir/$p" ]; then
    echo "layout-root.sh: $bindir/$p is missing (run make)" >&2
    exit 1
  fi
  # Replace by rename, so that a running program keeps its old file.
  cp "$bindir/$p" "$root/bin/.$p.new"
  # STRIP=yes (make install): no debug info in installed programs.
  [ "${STRIP:-no}" = no ] || strip --strip-debug "$root/bin/.$p.new"
  chmod 755 "$root/bin/.$p.new"
  mv -f "$root/bin/.$p.new" "$root/bin/$p"
done
shift
"$root/bin/ferryctl" init "$@"
