#!/bin/sh
# run.sh ROOT PORT — `make run`: a complete ferry root in ROOT (default run/), laid out as
# make install lays out a real one, with the embedded demo configuration, supervised by s6 in
# the foreground. Ctrl-C stops everything; the queue and mailboxes stay for the next run.
# Submission (STARTTLS, then AUTH) listens on SUBMISSION_PORT (2587), implicit TLS on
# SMTPS_PORT (2465), both with the demo certificate.
set -e
root=$1
port=$2
submission_port=${SUBMISSION_PORT:-2587}
smtps_port=${SMTPS_PORT:-2465}
# Paths are printed as given: relative to here for the default run/, absolute for ROOT=/...
case "$root" in /*) given=absolute ;; *) given=relative; root="$PWD/$root" ;; esac
if [ "$(id -u)" = 0 ]; then
  mode="privilege separation: each program runs under its own ferry user"
  mkdir -p "$root"
  dir=$root
  while [ "$dir" != / ]; do
    # others need x on every ancestor ("t": sticky and x, as on /tmp)
    case "$(stat -c %A "$dir" | cut -c10)" in x|t) ;; *)
      echo "make run: $dir is closed to other users (mode $(stat -c %a "$dir")), so the ferry users" >&2
      echo "cannot reach $root. Choose a root they can reach, e.g.: make run ROOT=/var/tmp/ferry-run" >&2
      exit 1 ;;
    esac
    dir=$(dirname "$dir")
  done
else
  mode="single-user mode: every program runs as $(id -un)"
fi
if [ -p "$root/service/.s6-svscan/control" ] && s6-svscanctl -a "$root/service" 2>/dev/null; then
  echo "make run: ferry is already running in $root ($root/bin/ferryctl stat);" >&2
  echo "stop it first with: $root/bin/ferryctl stop --all" >&2
  exit 1
fi
# A port someone else holds would leave smtpd failing to bind in a loop: say it now.
for pv in "$port PORT" "$submission_port SUBMISSION_PORT" "$smtps_port SMTPS_PORT"; do
  p=${pv% *}; var=${pv#* }
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || python3 -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('127.0.0.1', $p)) == 0 else 1)" 2>/dev/null; then
    echo "make run: port $p on 127.0.0.1 is in use by another program; choose another: make run $var=2600" >&2
    exit 1
  fi
done
scripts/layout-root.sh "$root" --demo "$port" >/dev/null
echo "127.0.0.1:$port" > "$root/control/smtplisten"
echo "127.0.0.1:$submission_port" > "$root/control/submissionlisten"
echo "127.0.0.1:$smtps_port" > "$root/control/smtpslisten"
# The demo has a certificate: submission and smtps run (a real install starts them down).
rm -f "$root/service/submission/down" "$root/service/smtps/down"
rel=$root
[ "$given" = relative ] && rel=$(realpath --relative-to="$PWD" "$root" 2>/dev/null || echo "$root")
cat <<INFO
ferry is starting ($mode)
  SMTP       127.0.0.1:$port (loopback only; relaying elsewhere is refused)
  mail       any NAME@localhost lands in $rel/mail/NAME/Maildir/new/
  logs       $rel/log/smtpd/current, $rel/log/send/current ($rel/bin/ferryctl log)
  TLS        STARTTLS with a self-signed certificate for localhost ($rel/control/tlscert)
  submission 127.0.0.1:$submission_port (STARTTLS, then AUTH PLAIN/LOGIN) and 127.0.0.1:$smtps_port (implicit TLS)
             add a user: $rel/bin/ferryctl passwd you@localhost  (then swaks --server 127.0.0.1:$submission_port
             --tls --auth PLAIN --auth-user you@localhost --from you@localhost --to x@localhost)
  status     $rel/bin/ferryctl stat     queue: $rel/bin/ferryctl queue     checks: $rel/bin/ferryctl check
  try        swaks --server 127.0.0.1:$port --to you@localhost
             printf 'Subject: hi\n\nhello\n' | $rel/bin/sendmail you@localhost
Ctrl-C stops everything (the queue is kept for the next make run); when make run runs in
the background, stop it with $rel/bin/ferryctl stop --all (or SIGTERM to this script).
Mail for other domains sent with $rel/bin/sendmail goes out to the Internet like any MTA's.
INFO
# s6-svscan gets its own session: Ctrl-C reaches this script, which tears the tree down
# cleanly (services get TERM, loggers drain) instead of killing it.
setsid s6-svscan "$root/service" </dev/null &
scan=$!
trap 's6-svscanctl -t "$root/service" 2>/dev/null || kill $scan 2>/dev/null' INT TERM
# Readiness: both services up and ready (ferryctl stat exits 0), 30 s at most.
start=$(date +%s)
while kill -0 $scan 2>/dev/null; do
  if "$root/bin/ferryctl" stat >/dev/null 2>&1; then
    echo "ferry is ready: smtpd and send are up ($rel/bin/ferryctl stat shows them)"
    break
  fi
  if [ $(($(date +%s) - start)) -ge 30 ]; then
    echo "ferry is not ready after 30 s: see $rel/bin/ferryctl stat and the logs; last smtpd log line:" >&2
    tail -n 1 "$root/log/smtpd/current" >&2 2>/dev/null || true
    break
  fi
  sleep 0.2 || true
done
while kill -0 $scan 2>/dev/null; do
  wait $scan || true
done
echo "ferry stopped; queue and mailboxes are kept in $rel"
