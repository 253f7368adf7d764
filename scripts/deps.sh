#!/bin/sh
# deps.sh run|test — makes sure the system tools ferry needs are there.
# As root it installs what is missing with apt-get; otherwise it names the one command to run.
set -e
case "$1" in
  run)  cmds="s6-svscan"; pkgs="s6" ;;
  test) cmds="s6-svscan swaks dnsmasq smtp-source strace"; pkgs="s6 swaks dnsmasq-base postfix python3 ca-certificates strace" ;;
  *) echo "usage: deps.sh run|test" >&2; exit 2 ;;
esac
missing=""
for c in $cmds; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing="$missing $c"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: installing$missing (packages: $pkgs)"
  export DEBIAN_FRONTEND=noninteractive
  # postfix is only wanted for smtp-source/smtp-sink: never let it take port 25 at install.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
  apt-get update -q >/dev/null
  apt-get install -y -q $pkgs >/dev/null
  exit 0
fi
echo "deps.sh: missing:$missing. Install them with:" >&2
echo "  sudo apt-get install -y $pkgs" >&2
exit 1
