#!/bin/sh
# install.sh DESTDIR PREFIX SENDMAIL — `make install`.
# Installs the programs into DESTDIR/PREFIX/bin and, when DESTDIR is empty (a real install),
# runs `ferryctl init` there: the ferry users and groups (nologin shells), the queue and
# control directories with the owners and modes of the manifest in the code, the s6 service
# directories (PREFIX/service is the scan directory), the log directories. Never overwrites
# control files. Adds a systemd unit running s6-svscan where systemd exists, links ferryctl,
# sendmail and mailq on PATH, and with SENDMAIL=yes also /usr/sbin/sendmail and /usr/bin/mailq.
# The link and unit directories can be moved (the tests do): BINDIR (/usr/local/bin), SBINDIR
# (/usr/local/sbin), UNITDIR (/etc/systemd/system); FERRY_BIN_DIR is where the built programs are.
set -e
destdir=$1
prefix=$2
sendmail=$3
root="$destdir$prefix"
bindir=${BINDIR:-/usr/local/bin}
sbindir=${SBINDIR:-/usr/local/sbin}
unitdir=${UNITDIR:-/etc/systemd/system}
built=${FERRY_BIN_DIR:-target/release}
if [ -n "$destdir" ]; then
  mkdir -p "$root/bin"
  for p in queue qwriter start send lspawn rspawn clean local-deliver remote-deliver smtpd sendmail ferryctl; do
    install -m 755 "$built/$p" "$root/bin/$p"
  done
  echo "installed the programs into $root/bin."
  echo "On the target machine, run as root: $prefix/bin/ferryctl init (users, directories, modes, services)."
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make install: run as root (it creates users and sets owners)" >&2; exit 1; }
scripts/layout-root.sh "$root"
[ -f "$root/control/me" ] || hostname -f 2>/dev/null > "$root/control/me" || hostname > "$root/control/me"
mkdir -p "$bindir" "$sbindir"
ln -sf "$root/bin/ferryctl" "$bindir/ferryctl"
ln -sf "$root/bin/sendmail" "$sbindir/sendmail"
ln -sf "$root/bin/sendmail" "$bindir/mailq"
if [ "$sendmail" = yes ]; then
  for l in /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq; do
    if [ -e "$l" ] && [ ! -L "$l" ]; then mv "$l" "$l.pre-ferry"; echo "kept the old $l as $l.pre-ferry"; fi
    mkdir -p "$(dirname "$l")"
    ln -sf "$root/bin/sendmail" "$l"
  done
fi
if [ -n "${UNITDIR:-}" ] || [ -d /run/systemd/system ] || command -v systemctl >/dev/null 2>&1; then
  mkdir -p "$unitdir"
  cat > "$unitdir/ferry.service" <<UNIT
[Unit]
Description=ferry mail transfer agent (s6 supervision tree in $root/service)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/s6-svscan $root/service
ExecReload=/usr/bin/s6-svscanctl -an $root/service
Restart=always
KillMode=mixed
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
UNIT
  [ -n "${UNITDIR:-}" ] || systemctl daemon-reload 2>/dev/null || true
  echo "systemd unit: $unitdir/ferry.service (systemctl enable --now ferry)"
fi
echo "ferry is installed in $root. Next: ferryctl setup YOUR.DOMAIN, then ferryctl start."
