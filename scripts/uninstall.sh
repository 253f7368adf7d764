#!/bin/sh
# uninstall.sh DESTDIR PREFIX — `make uninstall`: removes what make install added (programs,
# service directories, the ferryctl link, the systemd unit, the sendmail links, restoring the
# NAME.pre-ferry files). Keeps the queue, the mailboxes, the control files (with the TLS key),
# the logs and the ferry users: they hold mail and settings. PURGE=yes removes PREFIX whole and
# the ferry users and groups too (KEEP_USERS=yes keeps the users, which other ferry roots on
# this machine may share).
set -e
root="$1$2"
bindir=${BINDIR:-/usr/local/bin}
unitdir=${UNITDIR:-/etc/systemd/system}
if [ -e "$root/service/.s6-svscan/control" ]; then
  s6-svscanctl -t "$root/service" 2>/dev/null || true
fi
if [ -f "$unitdir/ferry.service" ] && grep -q "s6-svscan $root/service\$" "$unitdir/ferry.service"; then
  [ -n "${UNITDIR:-}" ] || systemctl disable --now ferry 2>/dev/null || true
  rm -f "$unitdir/ferry.service"
  echo "removed $unitdir/ferry.service"
fi
for l in "$bindir/ferryctl" "${SBINDIR:-/usr/local/sbin}/sendmail" "$bindir/mailq" ${SENDMAIL_LINKS:-/usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq}; do
  if [ -L "$l" ] && [ "$(readlink "$l")" = "$root/bin/$(basename "$l" | sed 's/mailq/sendmail/')" ]; then
    rm -f "$l"
    echo "removed $l"
    if [ -e "$l.pre-ferry" ]; then mv "$l.pre-ferry" "$l"; echo "restored the old $l"; fi
  fi
done
rm -rf "$root/bin" "$root/service"
if [ "${PURGE:-no}" = yes ]; then
  rm -rf "$root"
  echo "removed $root with its queue, mailboxes, control files and logs (PURGE=yes)"
  if [ "${KEEP_USERS:-no}" != yes ] && [ "$(id -u)" = 0 ]; then
    for u in ferryd ferryq ferrys ferryr ferryl ferrym ferrya ferryv; do
      id "$u" >/dev/null 2>&1 && userdel "$u" && echo "removed user $u"
    done
    for g in ferry ferryd ferryl ferrym ferrya ferryv; do
      getent group "$g" >/dev/null 2>&1 && groupdel "$g" && echo "removed group $g"
    done
  fi
  exit 0
fi
echo "removed the programs and services from $root."
echo "kept: $root/queue (mail not yet delivered), $root/mail, $root/control (settings, the TLS key), $root/log, and the ferry users."
echo "make uninstall PURGE=yes removes all of it."
