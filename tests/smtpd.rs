//! smtpd end to end: real clients (swaks, Python's smtplib, Postfix's smtp-source) and a raw
//! socket client for exact bytes, against the real binaries in a temporary root; messages
//! go all the way into a Maildir through the spine.

#![allow(clippy::unwrap_used)]

use ferry_e2e::smtp::Smtp;
use ferry_e2e::{Env, procs};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn setup() -> (Env, u16) {
    let mut env = Env::new();
    // 127.0.0.1 is no relay client here, so that relaying is refused as for anyone.
    env.control("relayclients", "# none");
    env.start_send();
    let port = env.start_smtpd();
    (env, port)
}

fn swaks(port: u16, args: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "30"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn swaks_message_arrives_byte_exact() {
    let (env, port) = setup();
    // swaks dot-stuffs the data and ends it with CR LF . CR LF.
    let body = "From: a@test.example\r\nTo: bytes@localhost\r\nSubject: exact\r\n\r\nline one\r\n.dot stuffed\r\n\r\ntrailing spaces   \r\n8bit: \u{e9}t\u{e9}";
    let data = env.path("../data.eml");
    std::fs::write(&data, body).unwrap();
    let out = swaks(
        port,
        &[
            "--from",
            "a@test.example",
            "--to",
            "bytes@localhost",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = env.wait_maildir(&env.mailbox("bytes"), 1);
    let text = String::from_utf8(got[0].clone()).unwrap();
    let after_trace = ferry_e2e::strip_trace(&got[0]);
    assert_eq!(
        String::from_utf8(after_trace).unwrap(),
        format!("{}\n", body.replace("\r\n", "\n"))
    );
    assert!(
        text.contains("Received: from ")
            && text.contains(" ([127.0.0.1])\n\tby test.example (ferry) with ESMTP\n"),
        "{text}"
    );
    let log = env.log("smtpd.log");
    assert!(
        log.contains("message ip=127.0.0.1 from=<a@test.example> rcpts=1")
            && log.contains("result=250 queued id="),
        "{log}"
    );
    assert!(
        log.contains("session ip=127.0.0.1 helo=") && log.contains("end=quit"),
        "{log}"
    );
}

#[test]
fn smtplib_starttls_and_received_line() {
    let mut env = Env::new();
    ferry_e2e::write_test_certificate(&env.root, "test.example");
    env.start_send();
    let port = env.start_smtpd();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
s.ehlo("py.client")
assert s.has_extn("starttls"), s.esmtp_features
s.starttls(context=ctx)
s.ehlo("py.client")
assert not s.has_extn("starttls")
s.sendmail("py@test.example", ["tls@localhost"], "Subject: over tls\r\n\r\nsecret\r\n")
s.quit()
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = env.wait_maildir(&env.mailbox("tls"), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(t.contains("Received: from py.client ([127.0.0.1])\n\tby test.example (ferry) with ESMTPS (TLSv1.3 TLS13_"), "{t}");
    assert!(env.log("smtpd.log").contains("tls=TLSv1.3"));
    // swaks with STARTTLS too.
    let out = swaks(
        port,
        &["--tls", "--from", "s@test.example", "--to", "tls@localhost"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    env.wait_maildir(&env.mailbox("tls"), 2);
}

#[test]
fn starttls_with_plaintext_behind_it_is_refused() {
    let mut env = Env::new();
    ferry_e2e::write_test_certificate(&env.root, "test.example");
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x").0, 250);
    s.send(b"STARTTLS\r\nMAIL FROM:<injected@test.example>\r\n");
    let (code, text) = s.reply();
    assert_eq!(code, 554, "{text}");
    assert_eq!(s.reply().0, 0, "connection closed");
}

#[test]
fn pipelining_and_bdat() {
    let (env, port) = setup();
    let mut s = Smtp::connect(port);
    s.send(b"EHLO pipe.test\r\nMAIL FROM:<p@test.example>\r\nRCPT TO:<pipe1@localhost>\r\nRCPT TO:<nobody@elsewhere.example>\r\nRCPT TO:<pipe2@localhost>\r\nDATA\r\n");
    let replies: Vec<u16> = (0..6).map(|_| s.reply().0).collect();
    assert_eq!(replies, vec![250, 250, 250, 554, 250, 354]);
    s.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<p@test.example>\r\nRCPT TO:<pipe1@localhost>\r\nBDAT 30\r\nSubject: chunked\r\n\r\npart one\r\nBDAT 10 LAST\r\npart two\r\n");
    let replies: Vec<(u16, String)> = (0..5).map(|_| s.reply()).collect();
    let codes: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(codes, vec![250, 250, 250, 250, 250], "{replies:?}");
    assert!(replies[0].1.contains("queued as"));
    assert!(replies[4].1.contains("queued as"));
    assert_eq!(s.cmd("QUIT").0, 221);
    let got = env.wait_maildir(&env.mailbox("pipe1"), 2);
    let all: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert!(
        all.iter()
            .any(|m| m.ends_with("Subject: chunked\n\npart one\npart two\n")),
        "{all:?}"
    );
    env.wait_maildir(&env.mailbox("pipe2"), 1);
}

#[test]
fn command_order_and_syntax_errors() {
    let (_env, port) = setup();
    let mut s = Smtp::connect(port);
    assert_eq!(
        s.cmd("MAIL FROM:<a@test.example>").0,
        503,
        "MAIL before HELO"
    );
    assert_eq!(s.cmd("FOO bar").0, 500);
    assert_eq!(s.cmd("HELO").0, 501);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("RCPT TO:<a@localhost>").0, 503, "RCPT before MAIL");
    assert_eq!(s.cmd("DATA").0, 503, "DATA before MAIL");
    assert_eq!(s.cmd("MAIL FROM:<\"unbalanced@test.example>").0, 501);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example> SIZE=999999999999").0, 552);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example> FOO=1").0, 555);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 503, "nested MAIL");
    assert_eq!(s.cmd("DATA").0, 554, "DATA without a valid RCPT");
    assert_eq!(s.cmd("VRFY joe").0, 252);
    assert_eq!(s.cmd("HELP").0, 214);
    assert_eq!(s.cmd("NOOP").0, 250);
    assert_eq!(s.cmd("RSET").0, 250);
    assert_eq!(s.cmd("STARTTLS").0, 502, "no certificate, no STARTTLS");
    s.send(b"NOOP\0x\r\n");
    assert_eq!(s.reply().0, 500, "NUL byte");
    s.send(&[0xff, 0xfe, 0x01, 0x02, b'\r', b'\n']);
    assert_eq!(s.reply().0 / 100, 5, "binary garbage");
    s.send(&vec![b'A'; 3000]);
    s.send(b"\r\n");
    assert_eq!(s.reply().0, 500, "overlong line");
    assert_eq!(s.cmd("NOOP").0, 250, "the session goes on");
    assert_eq!(s.cmd("QUIT").0, 221);
}

#[test]
fn relay_tricks_and_unknown_users_are_refused() {
    let (env, port) = setup();
    env.control("badmailfrom", "spammer@bad.example\n@worse.example");
    env.control("badrcptto", "blocked@localhost");
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    let cases: &[(&str, u16, &str)] = &[
        ("<user@elsewhere.example>", 554, "5.7.1"),
        ("<user%elsewhere.example@localhost>", 550, "5.1.1"),
        ("<\"user@elsewhere.example\"@localhost>", 550, "5.1.1"),
        ("<@localhost:user@elsewhere.example>", 554, "5.7.1"),
        ("<elsewhere.example!user@localhost>", 550, "5.1.1"),
        ("<user@[127.0.0.1]>", 554, "5.7.1"),
        ("<user@localhost.>", 501, "5.1.3"),
        ("<USER@LocalHost>", 250, "2.1.5"),
        ("<nosuchuser@test.example>", 550, "5.1.1"),
        ("<nosuchbox@virt.example>", 550, "5.1.1"),
        ("<user@ELSEWHERE.EXAMPLE>", 554, "5.7.1"),
        ("<postmaster>", 250, "2.1.5"),
        ("<root@test.example>", 250, "2.1.5"),
    ];
    for (rcpt, code, enh) in cases {
        let (c, text) = s.cmd(&format!("RCPT TO:{rcpt}"));
        assert_eq!(c, *code, "{rcpt}: {text}");
        assert!(text.contains(enh), "{rcpt}: {text}");
    }
    s.cmd("RSET");
    // control/badmailfrom and badrcptto are read at start: restart smtpd.
    drop(s);
    let out = Command::new("s6-svc")
        .args(["-wR", "-T", "10000", "-r"])
        .arg(env.path("service/smtpd"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<spammer@bad.example>").0, 553);
    assert_eq!(s.cmd("MAIL FROM:<anyone@worse.example>").0, 553);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<blocked@localhost>").0, 550);
    // With 127.0.0.1 as a relay client, other domains are accepted (queued for remote delivery).
    env.control("relayclients", "127.0.0.0/8");
    Command::new("s6-svc")
        .args(["-wR", "-T", "10000", "-r"])
        .arg(env.path("service/smtpd"))
        .output()
        .unwrap();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<user@elsewhere.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<user@[127.0.0.1]>").0, 250);
}

#[test]
fn smuggling_never_splits_a_message() {
    let (env, port) = setup();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<smuggle@localhost>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    // A bare-LF "end of data" followed by a second transaction: all of it is one message.
    s.send(b"Subject: outer\r\n\r\nfirst\n.\nMAIL FROM:<evil@test.example>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n");
    let (code, text) = s.reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(s.cmd("NOOP").0, 250, "nothing else was taken as a command");
    let got = env.wait_maildir(&env.mailbox("smuggle"), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(t.contains("first\n.\nMAIL FROM:<evil@test.example>\nRCPT TO:<victim@localhost>\nDATA\nSubject: smuggled\n"), "{t}");
    assert!(!env.mailbox("victim").exists());
    // A bare CR anywhere: the whole message is refused, nothing of it delivered.
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<barecr@localhost>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(b"Subject: cr\r\n\r\nbad\r.\rline\r\n.\r\n");
    let (code, text) = s.reply();
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.6.0"));
    assert_eq!(s.cmd("QUIT").0, 221);
    std::thread::sleep(Duration::from_millis(500));
    assert!(env.maildir_new(&env.mailbox("barecr")).is_empty());
}

#[test]
fn disconnect_mid_data_and_oversize_leave_nothing() {
    let (env, port) = setup();
    env.control("databytes", "10000");
    Command::new("s6-svc")
        .args(["-wR", "-T", "10000", "-r"])
        .arg(env.path("service/smtpd"))
        .output()
        .unwrap();
    {
        let mut s = Smtp::connect(port);
        assert_eq!(s.cmd("EHLO x.test").0, 250);
        assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
        assert_eq!(s.cmd("RCPT TO:<cut@localhost>").0, 250);
        assert_eq!(s.cmd("DATA").0, 354);
        s.send(b"Subject: cut\r\n\r\nhalf a message");
    }
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<big@localhost>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    for _ in 0..200 {
        s.send(&[b'y'; 99]);
        s.send(b"\r\n");
    }
    let (code, text) = s.cmd(".");
    assert_eq!(code, 552, "{text}");
    assert_eq!(s.cmd("QUIT").0, 221);
    env.wait_for(
        "the log line of the cut session",
        Duration::from_secs(10),
        || env.log("smtpd.log").contains("end=client closed"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.queue_files().is_empty(), "{:?}", env.queue_files());
    assert!(!env.mailbox("cut").exists() && !env.mailbox("big").exists());
}

#[test]
fn bad_clients_do_not_stop_the_server() {
    let mut env = Env::new();
    env.control("timeoutsmtpd", "3");
    env.control("maxrcpt", "100");
    env.start_send();
    let port = env.start_smtpd();
    // A 1 MB line without a newline: refused once, memory bounded, session goes on.
    let mut s = Smtp::connect(port);
    s.send(&vec![b'x'; 1 << 20]);
    s.send(b"\r\n");
    assert_eq!(s.reply().0, 500);
    assert_eq!(s.cmd("NOOP").0, 250);
    // 1000 recipients: the first 100 accepted, the rest told to come back (452).
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend(format!("RCPT TO:<r{i}@localhost>\r\n").into_bytes());
    }
    s.send(&batch);
    let codes: Vec<u16> = (0..1000).map(|_| s.reply().0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 250).count(), 100);
    assert_eq!(codes.iter().filter(|c| **c == 452).count(), 900);
    assert_eq!(s.cmd("RSET").0, 250);
    // A client that sends a byte every 2 s is dropped at the 3 s timeout; others are served.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let dripper = std::thread::spawn(move || {
        for b in b"NOOP NOOP NOOP\r\n" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let mut all = String::new();
        let _ = slow.read_to_string(&mut all);
        all
    });
    for _ in 0..3 {
        let mut o = Smtp::connect(port);
        assert_eq!(o.cmd("NOOP").0, 250);
        std::thread::sleep(Duration::from_millis(500));
    }
    let said = dripper.join().unwrap();
    assert!(said.contains("421 4.4.2"), "{said}");
    assert!(start.elapsed() < Duration::from_secs(20));
    // 500 connections at once (below concurrencyincoming, and loopback is exempt from the
    // per-IP limit): every one gets a greeting, none hangs.
    let mut conns = Vec::new();
    for _ in 0..500 {
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        conns.push(c);
    }
    let mut greeted = 0;
    for c in &mut conns {
        let mut buf = [0u8; 3];
        c.read_exact(&mut buf).unwrap();
        greeted += (&buf == b"220") as usize;
    }
    assert_eq!(greeted, 500);
    drop(conns);
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("NOOP").0, 250);
}

#[test]
fn smtp_source_500_messages_20_sessions_each_exactly_once() {
    let (env, port) = setup();
    let out = Command::new("smtp-source")
        .args([
            "-s",
            "20",
            "-m",
            "500",
            "-f",
            "src@test.example",
            "-t",
            "volume@localhost",
            "-l",
            "2048",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = env.wait_maildir(&env.mailbox("volume"), 500);
    assert_eq!(got.len(), 500);
    // Each message once: smtp-source numbers nothing, so count distinct queue ids.
    let mut ids: Vec<String> = got
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .find_map(|l| l.trim().strip_prefix("id ").map(String::from))
                .unwrap()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 500);
    env.wait_queue_empty();
    // Counted again once the queue is empty: nothing more arrived (no second delivery).
    assert_eq!(env.maildir_new(&env.mailbox("volume")).len(), 500);
}

#[test]
fn smtpd_and_its_writer_run_under_their_own_users() {
    if !ferry_e2e::is_root() {
        return;
    }
    let (env, _port) = setup();
    let uid = |n: &str| {
        nix::unistd::User::from_name(n)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    };
    // smtpd's key helper (`smtpd -tlskeys`, reads the TLS pair on HUP) stays root.
    let helper = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"-tlskeys\0"))
    };
    let (helpers, _): (Vec<_>, Vec<_>) = procs::named(&env.root, "smtpd")
        .into_iter()
        .partition(|p| helper(p.pid));
    assert_eq!(helpers.len(), 1, "smtpd -tlskeys");
    assert_eq!(helpers[0].uids, [0; 3], "smtpd -tlskeys runs as root");
    for (prog, user) in [("smtpd", "ferryd"), ("qwriter", "ferryq")] {
        let ps: Vec<_> = procs::named(&env.root, prog)
            .into_iter()
            .filter(|p| !helper(p.pid))
            .collect();
        assert_eq!(ps.len(), 1, "{prog}");
        assert_eq!(ps[0].uids, [uid(user); 3], "{prog} runs as {user}");
    }
}

#[test]
fn sendmail_bs_speaks_smtp_on_stdin() {
    let mut env = Env::new();
    env.start_send();
    let out = env.sendmail(
        &["-bs"],
        b"EHLO local\r\nMAIL FROM:<me@test.example>\r\nRCPT TO:<bs@localhost>\r\nDATA\r\nSubject: via -bs\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("220 ")
            && said.contains("250 2.0.0 Ok: queued as ")
            && said.ends_with("221 2.0.0 Bye\r\n"),
        "{said}"
    );
    let got = env.wait_maildir(&env.mailbox("bs"), 1);
    // The missing Date, Message-ID and From are added after the header (as sendmail does).
    let text = String::from_utf8_lossy(&got[0]);
    assert!(
        text.contains("Subject: via -bs\nDate: ") && text.ends_with("\n\nhi\n"),
        "{text}"
    );
}
