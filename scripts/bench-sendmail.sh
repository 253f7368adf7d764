#!/bin/sh
# make bench: sendmail -> Maildir throughput (scripts/bench_sendmail.py --help for options).
exec python3 scripts/bench_sendmail.py "$@"
