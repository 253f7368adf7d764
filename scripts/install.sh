#!/bin/sh
# install.sh DESTDIR PREFIX SENDMAIL — `make install`.
# Installs the programs (stripped of debug info; STRIP=no keeps it) into DESTDIR/PREFIX/bin
# and, when DESTDIR is empty (a real install), runs `ferryctl init` there: the ferry users and
# groups (nologin shells, home /nonexistent), the queue and control directories with the owners
# and modes of the manifest in the code, the s6 service directories (PREFIX/service is the scan
# directory), the log directories. Never overwrites control files.
# Outside PREFIX it touches nothing unless LINKS=yes, which is the default only for the default
# PREFIX (/var/ferry): then it links ferryctl into BINDIR (/usr/local/bin) and writes a systemd
# unit running s6-svscan into UNITDIR (/etc/systemd/system) where systemd exists. SENDMAIL=yes
# also links /usr/sbin/sendmail, /usr/lib/sendmail and /usr/bin/mailq (the old ones are kept as
# NAME.pre-ferry). FERRY_BIN_DIR is where the built programs are.
set -e
destdir=$1
prefix=$2
sendmail=$3
root="$destdir$prefix"
bindir=${BINDIR:-/usr/local/bin}
unitdir=${UNITDIR:-/etc/systemd/system}
built=${FERRY_BIN_DIR:-target/release}
links=${LINKS:-}
if [ -z "$links" ]; then
  if [ "$prefix" = /var/ferry ]; then links=yes; else links=no; fi
fi
export STRIP="${STRIP:-yes}"
if [ -n "$destdir" ]; then
  mkdir -p "$root/bin"
  for p in queue qwriter inject start send lspawn rspawn clean local-deliver remote-deliver smtpd authverify sendmail ferryctl; do
    install -m 755 "$built/$p" "$root/bin/$p"
    [ "$STRIP" = no ] || strip --strip-debug "$root/bin/$p"
  done
  echo "installed the programs into $root/bin."
  echo "On the target machine, run as root: $prefix/bin/ferryctl init (users, directories, modes, services)."
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make install: run as root (it creates users and sets owners)" >&2; exit 1; }
scripts/layout-root.sh "$root" > "$root.install-log" 2>&1 || { cat "$root.install-log" >&2; rm -f "$root.install-log"; exit 1; }
made=$(grep -c . "$root.install-log" || true)
echo "laid out $root: $made changes (users, directories, owners, modes, services); ferryctl check lists any problem."
grep -E '^created (user|group)|^set the home' "$root.install-log" || true
rm -f "$root.install-log"
[ -f "$root/control/me" ] || hostname -f 2>/dev/null > "$root/control/me" || hostname > "$root/control/me"
if [ "$links" = yes ]; then
  mkdir -p "$bindir"
  ln -sf "$root/bin/ferryctl" "$bindir/ferryctl"
  echo "linked $bindir/ferryctl"
fi
# SENDMAIL_LINKS moves the sendmail links (the tests do): "SENDMAIL MAILQ..." paths, where a
# path ending in mailq is the mailq link.
links_sendmail=${SENDMAIL_LINKS:-/usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq}
if [ "$sendmail" = yes ]; then
  for l in $links_sendmail; do
    if [ -e "$l" ] && [ ! -L "$l" ]; then mv "$l" "$l.pre-ferry"; echo "kept the old $l as $l.pre-ferry"; fi
    mkdir -p "$(dirname "$l")"
    ln -sf "$root/bin/sendmail" "$l"
  done
  echo "linked $links_sendmail to ferry"
fi
if [ "$links" = yes ] && { [ -n "${UNITDIR:-}" ] || [ -d /run/systemd/system ] || command -v systemctl >/dev/null 2>&1; }; then
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
  echo "systemd unit: $unitdir/ferry.service"
fi
ctl="$root/bin/ferryctl"
[ "$links" = yes ] && ctl=ferryctl
echo "ferry is installed in $root. Next:"
echo "  $ctl setup YOUR.DOMAIN      # name the host, the local domain, a TLS certificate"
if [ "$links" = yes ] && [ -f "$unitdir/ferry.service" ]; then
  echo "  systemctl enable --now ferry   # or: $ctl start"
else
  echo "  $ctl start"
fi
echo "  $ctl check                  # control files, install, port 25, and the DNS records to publish"
[ "$sendmail" = yes ] || echo "  (sendmail is $root/bin/sendmail; make install SENDMAIL=yes puts it at /usr/sbin/sendmail)"
