#!/bin/sh
# uninstall.sh DESTDIR PREFIX — `make uninstall`: removes what make install added (programs,
# service directories, links, the systemd unit). Never removes the queue, the mailboxes, the
# control files, the logs or the ferry users: they hold mail and settings.
set -e
root="$1$2"
bindir=${BINDIR:-/usr/local/bin}
sbindir=${SBINDIR:-/usr/local/sbin}
unitdir=${UNITDIR:-/etc/systemd/system}
if [ -e "$root/service/.s6-svscan/control" ]; then
  s6-svscanctl -t "$root/service" 2>/dev/null || true
fi
[ -n "${UNITDIR:-}" ] || systemctl disable --now ferry 2>/dev/null || true
rm -f "$unitdir/ferry.service"
for l in "$bindir/ferryctl" "$sbindir/sendmail" "$bindir/mailq" /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq; do
  if [ -L "$l" ] && [ "$(readlink "$l")" = "$root/bin/$(basename "$l" | sed 's/mailq/sendmail/')" ]; then
    rm -f "$l"
    [ -e "$l.pre-ferry" ] && mv "$l.pre-ferry" "$l"
  fi
done
rm -rf "$root/bin" "$root/service"
echo "removed the programs and services from $root; kept queue/, mail/, control/ and log/."
