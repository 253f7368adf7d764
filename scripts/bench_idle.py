#!/usr/bin/env python3
"""bench_idle.py ROOT PORT [N] — memory of N idle SMTP sessions, and how fast a new client
is served meanwhile (issue 14: 15,000 sessions, a new client served within 10 ms).

Opens N connections to 127.0.0.1:PORT from client processes of at most 5,000 sockets each
(the hard open-file limit of a process here is 20,000), 20 per source address 127.0.x.y,
reads each greeting, then reports the resident memory of smtpd and qwriter (from /proc,
found by their executable under ROOT/bin) and the time a new client needs for greeting +
EHLO + QUIT. ROOT/control/concurrencyincoming must allow N (smtpd raises its own open-file
limit to twice that, within the hard limit) and concurrencyperip at least 20.
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

PER_PROCESS = 5000  # sockets per client process (the hard open-file limit here is 20,000)


def hold(port, count, first_ip, conn):
    """A client process: opens `count` sessions (from 127.0.0.x addresses, so that no one
    address passes concurrencyperip), reads each greeting, says how long it took, and keeps
    them open until told to close."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], count + 100),) * 2)
    socks = []
    t0 = time.monotonic()
    try:
        for i in range(count):
            ip = first_ip + i // 20
            src = f"127.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((src, 0))
            s.settimeout(30)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        for s in socks:
            g = s.recv(512)
            if not g.startswith(b"220"):
                raise RuntimeError(f"not greeted: {g!r}")
        conn.send(("ok", time.monotonic() - t0))
    except Exception as e:
        conn.send(("error", str(e)))
    conn.recv()
    for s in socks:
        s.close()


def main():
    import multiprocessing
    root, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    before, _ = rss_kib(root)
    procs, pipes = [], []
    t0 = time.monotonic()
    for k in range(0, n, PER_PROCESS):
        a, b = multiprocessing.Pipe()
        # 20 sessions per source address, each process its own range of addresses.
        p = multiprocessing.Process(target=hold, args=(port, min(PER_PROCESS, n - k), 2 + k // 20, b))
        p.start()
        procs.append(p)
        pipes.append(a)
    for a in pipes:
        status, v = a.recv()
        if status != "ok":
            sys.exit(f"a client process failed: {v}")
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
    print(f"{n} idle sessions opened and greeted in {opened:.2f} s ({len(procs)} client processes)")
    print(f"resident memory of smtpd+qwriter: {before/1024:.1f} MiB before, {after/1024:.1f} MiB with {n} sessions "
          f"({(after-before)/n:.1f} KiB per session) {parts}")
    print(f"a new client meanwhile: greeting + EHLO + QUIT in {served_ms:.1f} ms")
    for a in pipes:
        a.send("close")
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
