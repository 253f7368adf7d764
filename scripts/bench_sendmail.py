#!/usr/bin/env python3
"""bench_sendmail.py — sendmail -> Maildir throughput of ferry, beside Postfix's (make bench).

Lays out a ferry root in a temporary directory (with the release build), starts the send
and inject services under s6-supervise (--no-inject: send only, so that every sendmail runs
the setuid queue), injects N messages with the real `sendmail` from C parallel
injectors, and waits until all N are in the Maildir. When the reference Postfix of
../shared/bench/setup-postfix.sh is running (or with --postfix), the same load goes through
Postfix's /usr/sbin/sendmail to bench@anchor.test in /home/bench/Maildir, in alternating
order over --rounds rounds, and the ratios are printed.

Reports messages per second, CPU milliseconds per message (all CPUs, from /proc/stat, so it
includes sendmail and queue processes and anything else running), ferry's CPU per message
per program (the injectors' sendmail processes, and the queue processes they start without
the inject service; inject, send, clean, lspawn with its local-deliver workers), and with --syncs the sync calls per message of each (strace -f -c:
the timing of that run is not meaningful). Not a test: numbers vary with the machine's mood;
compare ratios from one run.
"""
import argparse, os, re, resource, shutil, statistics, subprocess, sys, tempfile, threading, time

HZ = os.sysconf("SC_CLK_TCK")
SYNCS = "fsync,fdatasync,syncfs,sync,msync"


def cpu_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def proc_cpu(pid, children=False):
    """utime+stime (and the reaped children's, if asked) of a process, in ticks; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    t = int(fields[11]) + int(fields[12])
    if children:
        t += int(fields[13]) + int(fields[14])
    return t


def pids_of(root, name):
    """Processes running ROOT/bin/NAME."""
    exe = os.path.join(root, "bin", name)
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/exe") == exe:
                    out.append(int(p))
            except OSError:
                pass
    return out


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Target:
    def __init__(self, name, sendmail, sender, rcpt, maildir):
        self.name, self.sendmail, self.sender, self.rcpt, self.maildir = name, sendmail, sender, rcpt, maildir

    def count(self):
        try:
            return len(os.listdir(self.maildir))
        except FileNotFoundError:
            return 0

    def inject(self, count, tag, body, strace_out=None):
        base = [self.sendmail, "-f", self.sender, self.rcpt]
        for i in range(count):
            cmd = base
            if strace_out:
                cmd = ["strace", "-f", "-c", "-e", "trace=" + SYNCS, "-o", f"{strace_out}.{tag}.{i}"] + base
            msg = f"Subject: bench-{tag}-{i}\nFrom: {self.sender}\nTo: {self.rcpt}\n\n{body}"
            subprocess.run(cmd, input=msg.encode(), check=True)

    def clear(self):
        for f in os.listdir(self.maildir) if os.path.isdir(self.maildir) else []:
            try:
                os.unlink(os.path.join(self.maildir, f))
            except OSError:
                pass


def strace_calls(path):
    """The total of calls in a strace -c summary."""
    try:
        text = open(path).read()
    except OSError:
        return 0
    m = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
    if m:
        return int(m.group(1))
    return sum(int(x) for x in re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)", text, re.M))


def run(t, n, c, body, root=None, syncs=None):
    """One measured injection of n messages (c injectors) into target t."""
    t.clear()
    per = n // c
    n = per * c
    programs = {}
    if root:
        for name in ["inject", "send", "clean", "lspawn"]:
            for p in pids_of(root, name):
                programs[name] = (p, proc_cpu(p, children=(name == "lspawn")))
    tracers = []
    if syncs and root:
        for name in ["inject", "send", "clean", "lspawn", "start"]:
            for p in pids_of(root, name):
                out = f"{syncs}.{name}.{p}"
                tracers.append(subprocess.Popen(["strace", "-f", "-c", "-e", "trace=" + SYNCS, "-o", out, "-p", str(p)],
                                                stderr=subprocess.DEVNULL))
        time.sleep(1)
    c0, b0 = children_cpu(), cpu_busy()
    start = time.monotonic()
    threads = [threading.Thread(target=t.inject, args=(per, f"t{i}", body, syncs if root else None)) for i in range(c)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    injected = time.monotonic() - start
    while t.count() < n:
        if time.monotonic() - start > 600:
            sys.exit(f"bench: timed out waiting for {t.name}'s delivery")
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    b1, c1 = cpu_busy(), children_cpu()
    r = {"rate": n / elapsed, "inject_rate": n / injected, "cpu": (b1 - b0) / HZ * 1000 / n, "n": n}
    if root:
        per_prog = {"sendmail (+queue)": (c1 - c0) * 1000 / n}
        for name, (p, before) in programs.items():
            now = proc_cpu(p, children=(name == "lspawn"))
            if name == "lspawn":
                now += sum(proc_cpu(w) for w in pids_of(root, "local-deliver"))
                name = "lspawn+local-deliver"
            per_prog[name] = (now - before) / HZ * 1000 / n
        r["programs"] = per_prog
    if tracers:
        time.sleep(0.5)
        for tr in tracers:
            tr.terminate()
            tr.wait()
        calls = {}
        for f in os.listdir(os.path.dirname(syncs)):
            full = os.path.join(os.path.dirname(syncs), f)
            if not f.startswith(os.path.basename(syncs) + "."):
                continue
            key = f.split(".")[1]
            key = "sendmail (+queue)" if key.startswith("t") else key
            calls[key] = calls.get(key, 0) + strace_calls(full)
        r["syncs"] = {k: v / n for k, v in calls.items()}
    return r


def postfix_running():
    return shutil.which("postfix") and subprocess.run(["postfix", "status"], stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL).returncode == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=4, help="parallel injectors")
    ap.add_argument("-s", type=int, default=4096, help="body size in bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--postfix", action="store_true", help="also Postfix (default: when it runs)")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--syncs", action="store_true", help="count sync calls per message (strace)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-inject", action="store_true", help="without the inject service: sendmail runs queue")
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
    services = ["send"] if a.no_inject else ["send", "inject"]
    sups = []
    for svc in services:
        log = open(os.path.join(tmp, svc + ".log"), "w")
        sups.append(subprocess.Popen(["s6-supervise", os.path.join(root, "service", svc)], stdout=log,
                                     stderr=log, start_new_session=True))
    body = ("x" * 76 + "\n") * (a.s // 77 + 1)
    ferry = Target("ferry", os.path.join(root, "bin/sendmail"), "b@bench.example", "bench@localhost",
                   os.path.join(root, "mail/bench/Maildir/new"))
    targets = [ferry]
    if not a.no_postfix and (a.postfix or postfix_running()):
        targets.append(Target("postfix", "/usr/sbin/sendmail", "b@anchor.test", "bench@anchor.test",
                              "/home/bench/Maildir/new"))
    try:
        time.sleep(1)
        for t in targets:
            t.inject(50, "warm", body)
            while t.count() < 50:
                time.sleep(0.05)
        results = {t.name: [] for t in targets}
        for rnd in range(a.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                results[t.name].append(run(t, a.n, a.c, body, root if t is ferry else None))
        how = "sendmail runs queue" if a.no_inject else "sendmail through the inject service"
        print(f"sendmail -> Maildir: {a.n} messages of {a.s} bytes, {a.c} injectors, {a.rounds} rounds (median); "
              f"ferry: {how}")
        med = {}
        for t in targets:
            rs = results[t.name]
            med[t.name] = {k: statistics.median(r[k] for r in rs) for k in ["rate", "inject_rate", "cpu"]}
            m = med[t.name]
            print(f"  {t.name:8} delivered {m['rate']:.0f} msg/s (injected {m['inject_rate']:.0f} msg/s); "
                  f"CPU per message (all CPUs) {m['cpu']:.2f} ms")
        progs = {k: statistics.median(r["programs"].get(k, 0) for r in results["ferry"])
                 for k in results["ferry"][0]["programs"]}
        print("  ferry's CPU per message by program: " +
              ", ".join(f"{k} {v:.2f} ms" for k, v in progs.items()))
        if "postfix" in med:
            f, p = med["ferry"], med["postfix"]
            print(f"  ferry/postfix: delivered {f['rate'] / p['rate']:.2f}x, CPU per message {f['cpu'] / p['cpu']:.2f}x")
        if a.syncs:
            r = run(ferry, min(a.n, 500), a.c, body, root, os.path.join(tmp, "syncs"))
            print("  ferry's sync calls per message (strace, 500 messages): " +
                  ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.get("syncs", {}).items())))
    finally:
        for svc, sup in zip(services, sups):
            subprocess.run(["s6-svc", "-wD", "-T", "10000", "-d", os.path.join(root, "service", svc)],
                           stderr=subprocess.DEVNULL)
            subprocess.run(["s6-svc", "-x", os.path.join(root, "service", svc)], stderr=subprocess.DEVNULL)
            sup.wait(timeout=10)
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)


if __name__ == "__main__":
    main()
