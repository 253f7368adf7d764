#!/usr/bin/env python3
"""bench_idle.py ROOT PORT [N] — memory of N idle SMTP sessions, and how fast a new client
is served meanwhile (the issue's figure: 5,000 sessions under 1 GiB, new clients within 100 ms).

Opens N connections to 127.0.0.1:PORT, reads each greeting, then reports the resident memory
of smtpd and qwriter (from /proc, found by their executable under ROOT/bin) and the time a new
client needs for greeting + EHLO + QUIT. ROOT/control/concurrencyincoming must allow N.
"""
import os, resource, socket, sys, time

def rss_kib(root):
    total, seen = 0, []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe.startswith(os.path.join(root, "bin")) and os.path.basename(exe) in ("smtpd", "qwriter"):
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kib = int(line.split()[1])
                        total += kib
                        seen.append((os.path.basename(exe), kib))
    return total, seen

def main():
    root, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    before, _ = rss_kib(root)
    conns = []
    t0 = time.monotonic()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        conns.append(s)
    for s in conns:
        g = s.recv(512)
        if not g.startswith(b"220"):
            sys.exit(f"not greeted: {g!r}")
    opened = time.monotonic() - t0
    after, parts = rss_kib(root)
    t1 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO probe\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    s.sendall(b"QUIT\r\n")
    f.readline()
    served_ms = (time.monotonic() - t1) * 1000
    print(f"{n} idle sessions opened and greeted in {opened:.2f} s")
    print(f"resident memory of smtpd+qwriter: {before/1024:.1f} MiB before, {after/1024:.1f} MiB with {n} sessions "
          f"({(after-before)/n:.1f} KiB per session) {parts}")
    print(f"a new client meanwhile: greeting + EHLO + QUIT in {served_ms:.1f} ms")
    for s in conns:
        s.close()

if __name__ == "__main__":
    main()
