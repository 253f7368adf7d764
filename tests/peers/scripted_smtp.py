#!/usr/bin/env python3
"""A scripted SMTP receiver for ferry's remote-delivery tests.

usage: scripted_smtp.py CONFIG.json

CONFIG: {"listen": "127.0.0.1", "port": 0, "portfile": "...", "maildir": "...",
         "greeting": "220 scripted ESMTP", "ehlo": ["PIPELINING", "8BITMIME", "SIZE 100000"],
         "starttls": false, "tls_garbage": false, "helo": "250 hi",
         "mail": "250 2.1.0 ok", "rcpt": {"*": "250 2.1.5 ok", "bad@x.test": "550 5.1.1 no such user"},
         "data": "354 go ahead", "end": "250 2.0.0 queued", "drop_after_data_bytes": -1,
         "ehlo_reply": null, "end_delay": 0}
The config file is re-read for every connection and every MAIL, so a test can change the behaviour between
attempts. Each accepted message is written to MAILDIR/<n>.eml (raw wire bytes of DATA after
un-dot-stuffing) with a first line "X-Envelope: MAIL RCPT..." for the test to check, and
MAILDIR/../transactions.log gets "MAIL pipelined=yes|no" per MAIL (RCPT already sent with it).
"greeting_delay" waits that many seconds before the greeting (a server that does not answer).
connections.log gets a line per connection and max_active the most open at once (both in
MAILDIR/..). "listen" may be an IPv6 address. "close_after_end" closes the connection after the reply to the final dot (the next message
needs a new connection, which sees the config anew). "end_delay" waits that many seconds before the reply to the final dot (a slow content scanner).
The port actually bound is written to PORTFILE.
"""
import itertools, json, os, socket, sys, threading, time

MESSAGES = itertools.count(1)

def load(path):
    with open(path) as f:
        return json.load(f)

class Lines:
    """Reads lines from the socket with its own buffer, so that it can tell whether the client
    had already sent more (pipelining) when a command was read."""
    def __init__(self, conn):
        self.conn, self.buf = conn, b""
    def readline(self, limit):
        while b"\n" not in self.buf and len(self.buf) < limit:
            got = self.conn.recv(65536)
            if not got:
                break
            self.buf += got
        n = self.buf.find(b"\n")
        n = len(self.buf) if n < 0 else n + 1
        n = min(n, limit)
        line, self.buf = self.buf[:n], self.buf[n:]
        return line
    def pending(self):
        return len(self.buf) > 0

ACTIVE = {"now": 0, "max": 0}
ACTIVE_LOCK = threading.Lock()

def note_connection(cfg, delta):
    """Counts connections: MAILDIR/../connections.log gets a line per connection, and
    MAILDIR/../max_active the most that were open at once."""
    if not cfg.get("maildir"):
        return
    top = os.path.join(cfg["maildir"], "..")
    with ACTIVE_LOCK:
        ACTIVE["now"] += delta
        if delta > 0:
            ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
            with open(os.path.join(top, "connections.log"), "a") as log:
                log.write("CONNECT\n")
            with open(os.path.join(top, "max_active.tmp"), "w") as m:
                m.write(str(ACTIVE["max"]))
            os.rename(os.path.join(top, "max_active.tmp"), os.path.join(top, "max_active"))

def serve(conn, path):
    cfg = load(path)
    note_connection(cfg, 1)
    try:
        serve_session(conn, path, cfg)
    finally:
        note_connection(cfg, -1)

def serve_session(conn, path, cfg):
    time.sleep(cfg.get("greeting_delay", 0))
    f = Lines(conn)
    def send(line):
        conn.sendall((line + "\r\n").encode())
    def readline():
        l = f.readline(4096)
        if not l:
            raise EOFError
        return l.rstrip(b"\r\n").decode("utf-8", "replace")
    send(cfg.get("greeting", "220 scripted ESMTP"))
    if not cfg.get("greeting", "220").startswith("2"):
        readline()
    env_from, rcpts, count = None, [], 0
    while True:
        line = readline()
        verb = line.split(" ")[0].upper()
        if verb in ("EHLO", "HELO"):
            if cfg.get("ehlo_reply") and verb == "EHLO":
                send(cfg["ehlo_reply"]); continue
            exts = list(cfg.get("ehlo", ["PIPELINING", "8BITMIME"]))
            if cfg.get("starttls"):
                exts.append("STARTTLS")
            if verb == "HELO":
                send(cfg.get("helo", "250 hi")); continue
            lines = ["scripted"] + exts
            for i, l in enumerate(lines):
                send(("250 " if i == len(lines) - 1 else "250-") + l)
        elif verb == "STARTTLS":
            send("220 go")
            if cfg.get("tls_garbage"):
                conn.sendall(b"this is not a TLS handshake\r\n" * 20)
            conn.close(); return
        elif verb == "MAIL":
            cfg = load(path)  # each transaction sees the test's latest settings
            env_from = line[10:].strip(); rcpts = []
            if cfg.get("maildir"):
                # One line per transaction: whether RCPT was already sent with MAIL.
                with open(os.path.join(cfg["maildir"], "..", "transactions.log"), "a") as log:
                    log.write(f"MAIL pipelined={'yes' if f.pending() else 'no'}\n")
            send(cfg.get("mail", "250 2.1.0 ok"))
        elif verb == "RCPT":
            addr = line[8:].strip().strip("<>").split(">")[0]
            table = cfg.get("rcpt", {})
            reply = table.get(addr, table.get("*", "250 2.1.5 ok"))
            if reply.startswith("2"):
                rcpts.append(addr)
            send(reply)
        elif verb == "DATA":
            reply = cfg.get("data", "354 go ahead")
            send(reply)
            if not reply.startswith("354"):
                continue
            body, got = [], 0
            drop = cfg.get("drop_after_data_bytes", -1)
            while True:
                l = f.readline(1 << 20)
                if not l:
                    raise EOFError
                got += len(l)
                if drop >= 0 and got > drop:
                    conn.close(); return
                if l == b".\r\n":
                    break
                if l.startswith(b".."):
                    l = l[1:]
                body.append(l)
            end = cfg.get("end", "250 2.0.0 queued")
            time.sleep(cfg.get("end_delay", 0))
            if end.startswith("2") and cfg.get("maildir"):
                count += 1
                # Unique across connections (thread idents are reused once a thread ends).
                name = os.path.join(cfg["maildir"], f"{os.getpid()}-{next(MESSAGES)}.eml")
                with open(name + ".tmp", "wb") as out:
                    out.write(f"X-Envelope: {env_from} {' '.join(rcpts)}\r\n".encode() + b"".join(body))
                os.rename(name + ".tmp", name)
            send(end)
            if cfg.get("close_after_end"):
                conn.close(); return
        elif verb == "RSET":
            send("250 ok")
        elif verb == "QUIT":
            send("221 bye"); conn.close(); return
        else:
            send("500 what")

def main():
    path = sys.argv[1]
    cfg = load(path)
    listen = cfg.get("listen", "127.0.0.1")
    s = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((listen, cfg.get("port", 0)))
    s.listen(64)
    with open(cfg["portfile"] + ".tmp", "w") as pf:
        pf.write(str(s.getsockname()[1]))
    os.rename(cfg["portfile"] + ".tmp", cfg["portfile"])
    while True:
        c, _ = s.accept()
        def run(c=c):
            try:
                serve(c, path)
            except (EOFError, OSError):
                pass
            finally:
                try: c.close()
                except OSError: pass
        threading.Thread(target=run, daemon=True).start()

if __name__ == "__main__":
    main()
