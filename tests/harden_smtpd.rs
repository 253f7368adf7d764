//! Hardening tests (issue 17): see the items named in each test. smtpd and its queue writer,
//! the real binaries in a temporary root, real sockets.

#![allow(clippy::unwrap_used)]

use ferry_e2e::smtp::Smtp;
use ferry_e2e::{Env, procs};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn setup() -> (Env, u16) {
    let mut env = Env::new();
    env.control("relayclients", "# none");
    // Every client here is 127.0.0.1, no relay client: lift the per-IP limit.
    env.control("concurrencyperip", "1000");
    env.start_send();
    let port = env.start_smtpd();
    (env, port)
}

/// Is this `smtpd -tlskeys`, smtpd's root helper (crates/smtpd/src/tlskeys.rs)?
pub fn is_key_helper(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"-tlskeys\0"))
}

fn pid_of(env: &Env, program: &str) -> i32 {
    let p: Vec<procs::Proc> = procs::named(&env.root, program)
        .into_iter()
        .filter(|p| !is_key_helper(p.pid))
        .collect();
    assert_eq!(p.len(), 1, "one {program} process");
    p[0].pid
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Item 1: 500 clients that pipeline EHLO without ever reading the replies. smtpd stops
/// reading a session whose replies do not drain, so its memory stays bounded.
#[test]
fn non_reading_clients_keep_smtpd_memory_bounded() {
    let (env, port) = setup();
    let pid = pid_of(&env, "smtpd");
    let before = rss_kib(pid);
    let line = b"EHLO a\r\n".repeat(4096);
    let mut clients = Vec::new();
    for _ in 0..500 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nonblocking(true).unwrap();
        clients.push((s, 0usize, 0u32));
    }
    // Each client sends up to 256 KiB of EHLO (before the fix each would cost smtpd ~5 MB of
    // replies), or until its writes have blocked in three rounds in a row.
    const EACH: usize = 256 * 1024;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut busy = false;
        for (s, sent, blocked) in clients.iter_mut() {
            if *sent >= EACH || *blocked >= 3 {
                continue;
            }
            busy = true;
            match s.write(&line[..line.len().min(EACH - *sent)]) {
                Ok(n) => {
                    *sent += n;
                    *blocked = 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => *blocked += 1,
                Err(e) => panic!("write: {e}"),
            }
        }
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let smtpd work through what it read: it is idle once every session is backed up, its
    // CPU time no longer moving for a second (at most a minute).
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
    };
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let t = cpu_ticks();
        std::thread::sleep(Duration::from_secs(1));
        if cpu_ticks() == t || Instant::now() > settle {
            break;
        }
    }
    let after = rss_kib(pid);
    let sent: usize = clients.iter().map(|c| c.1).sum();
    eprintln!(
        "smtpd VmRSS before {before} KiB, after 500 non-reading clients {after} KiB ({} MiB of EHLO sent)",
        sent >> 20
    );
    // The bound per session: INPUT_CAP of input read ahead, OUT_CAP of replies, and at most
    // twice that waiting for the socket (crates/smtpd/src/server.rs, session.rs), with the
    // allocator's slack: 320 KiB. Before the fix memory grew with what the clients sent.
    let bound = before + 500 * 320;
    assert!(
        after < bound,
        "smtpd grew to {after} KiB with 500 non-reading clients (bound {bound} KiB)"
    );
    std::thread::sleep(Duration::from_secs(2));
    let later = rss_kib(pid);
    assert!(
        later <= after + 1024,
        "smtpd went on growing: {after} KiB, then {later} KiB"
    );
    // The server still serves everyone else, and it is the same smtpd (seen once under a
    // full `make test`: the new client got no greeting; this says whether smtpd had died).
    assert_eq!(
        pid_of(&env, "smtpd"),
        pid,
        "smtpd was restarted: {}",
        env.log("smtpd.log")
    );
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut greeting = [0u8; 512];
    let t0 = Instant::now();
    let cpu = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu_before = cpu();
    let got = probe.read(&mut greeting);
    let n = *got.as_ref().unwrap_or(&0);
    if !greeting[..n].starts_with(b"220 ") {
        let ss = std::process::Command::new("ss")
            .args(["-tn", "state", "all", &format!("( sport = :{port} )")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0);
        let listen = std::process::Command::new("ss")
            .args(["-ltn", &format!("( sport = :{port} )")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "a new client got {:?} ({got:?} after {:?}); {ss} sockets on the port; listener: {listen}; smtpd stat before {cpu_before} after {}; smtpd.log: {}",
            String::from_utf8_lossy(&greeting[..n]),
            t0.elapsed(),
            cpu(),
            env.log("smtpd.log")
        );
    }
    drop(probe);
    let mut s = Smtp::connect(port);
    let (code, text) = s.mail(
        "a@test.example",
        &["still@localhost"],
        "Subject: x\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    drop(clients);
}

/// Item 1: the timeout applies to writes too: a client that sends but never reads is closed.
#[test]
fn non_reading_client_is_closed_at_the_timeout() {
    let mut env = Env::new();
    env.control("timeoutsmtpd", "2");
    env.start_send();
    let port = env.start_smtpd();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nonblocking(true).unwrap();
    let line = b"NOOP\r\n".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut closed = false;
    while Instant::now() < deadline {
        match s.write(&line) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if env.log("smtpd.log").contains("end=timeout") {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(closed, "{}", env.log("smtpd.log"));
}

/// Item 2: refused recipients count toward the error limit (421 at 20 errors), with a tarpit
/// after 10 that holds only that session: another session is served meanwhile.
#[test]
fn refused_rcpts_count_toward_the_error_limit_and_tarpit_only_that_session() {
    let (env, port) = setup();
    let mut bad = Smtp::connect(port);
    assert_eq!(bad.cmd("EHLO bad.test").0, 250);
    assert_eq!(bad.cmd("MAIL FROM:<x@test.example>").0, 250);
    let dashes = "-a".repeat(25);
    let mut flood = String::new();
    for i in 0..25 {
        flood.push_str(&format!("RCPT TO:<nobody{i}{dashes}@test.example>\r\n"));
    }
    bad.send(flood.as_bytes());
    // The first ten refusals come at once.
    for _ in 0..10 {
        assert_eq!(bad.reply().0, 550);
    }
    // While the flood is in the tarpit, another session gets its whole message through.
    let mut good = Smtp::connect(port);
    let (code, text) = good.mail(
        "a@test.example",
        &["meanwhile@localhost"],
        "Subject: x\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert!(
        !env.log("smtpd.log").contains("helo=bad.test"),
        "the tarpitted session is still open\n{}",
        env.log("smtpd.log")
    );
    let mut codes = Vec::new();
    loop {
        let (c, _) = bad.reply();
        if c == 0 {
            break;
        }
        codes.push(c);
    }
    assert_eq!(codes.len(), 10, "{codes:?}");
    assert!(codes[..9].iter().all(|c| *c == 550), "{codes:?}");
    assert_eq!(codes[9], 421, "{codes:?}");
    env.wait_for("the session log", Duration::from_secs(10), || {
        env.log("smtpd.log").contains("helo=bad.test")
    });
    assert!(env.log("smtpd.log").contains("rejected_rcpts=20"));
}

/// Item 3: a failed BDAT ends the transaction; nothing after it is taken as part of it.
#[test]
fn failed_bdat_leaves_no_transaction_behind() {
    let (env, port) = setup();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<nosuchuser@test.example>").0, 550);
    s.send(b"BDAT 5\r\nhello");
    assert_eq!(s.reply().0, 503);
    let (code, text) = s.cmd("RCPT TO:<bdat1@localhost>");
    assert_eq!(code, 503, "RCPT after a failed BDAT: {text}");
    assert_eq!(s.cmd("DATA").0, 503);
    // BDAT 0 without MAIL or HELO leaves nothing either.
    let mut s = Smtp::connect(port);
    s.send(b"BDAT 0\r\n");
    assert_eq!(s.reply().0, 503);
    assert_eq!(s.cmd("RCPT TO:<bdat2@localhost>").0, 503);
    assert_eq!(s.cmd("DATA").0, 503);
    // A good BDAT transaction still works afterwards.
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<bdat3@localhost>").0, 250);
    s.send(b"BDAT 14 LAST\r\nSubject: b\r\n\r\n");
    assert_eq!(s.reply().0, 250);
    env.wait_maildir(&env.mailbox("bdat3"), 1);
    assert!(env.maildir_new(&env.mailbox("bdat1")).is_empty());
    assert!(env.maildir_new(&env.mailbox("bdat2")).is_empty());
}

/// Item 4: parameters that are not advertised get 555 5.5.4; SMTPUTF8 is recorded in the
/// envelope of the queue file (the `U` record), and so are the DSN parameters (issue 11:
/// `R`, `E` after the sender, `N`, `O` after their recipient).
#[test]
fn unadvertised_parameters_555_and_smtputf8_is_recorded() {
    let mut env = Env::new();
    // No send: the message stays in the queue to be looked at.
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    let (code, ehlo) = s.cmd("EHLO x.test");
    assert!(code == 250 && ehlo.contains("DSN"), "{ehlo}");
    for p in ["BODY=BINARYMIME", "AUTH=<>"] {
        let (code, text) = s.cmd(&format!("MAIL FROM:<a@test.example> {p}"));
        assert_eq!(code, 555, "{p}: {text}");
        assert!(text.contains("5.5.4"), "{text}");
    }
    assert_eq!(
        s.cmd("MAIL FROM:<u@test.example> SMTPUTF8 BODY=8BITMIME").0,
        250
    );
    assert_eq!(s.cmd("RCPT TO:<utf@localhost> NOTIFY=SOMETIMES").0, 501);
    assert_eq!(s.cmd("RCPT TO:<utf@localhost>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send("Subject: caf\u{e9}\r\n\r\nhi\r\n".as_bytes());
    assert_eq!(s.cmd(".").0, 250);
    // DSN parameters, through qwriter's N record into the envelope.
    assert_eq!(
        s.cmd("MAIL FROM:<dsn@test.example> RET=HDRS ENVID=QQ+2B1")
            .0,
        250
    );
    assert_eq!(s.cmd("RCPT TO:<utf@localhost>").0, 250);
    assert_eq!(
        s.cmd("RCPT TO:<utf2@localhost> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Utf2+40localhost")
            .0,
        250
    );
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(b"Subject: dsn\r\n\r\nhi\r\n");
    assert_eq!(s.cmd(".").0, 250);
    // And a transaction without SMTPUTF8 has no U record.
    assert_eq!(s.cmd("MAIL FROM:<plain@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<utf@localhost>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(b"Subject: plain\r\n\r\nhi\r\n");
    assert_eq!(s.cmd(".").0, 250);
    let mut utf8 = 0;
    let mut plain = 0;
    let mut dsn = 0;
    for f in env.queue_files() {
        let bytes = std::fs::read(env.path("queue").join(&f)).unwrap();
        let has = |pat: &[u8]| bytes.windows(pat.len()).any(|w| w == pat);
        if has(b"Fu@test.example\0U\0Tutf@localhost\0") {
            utf8 += 1;
        }
        if has(b"Fplain@test.example\0Tutf@localhost\0") {
            plain += 1;
        }
        if has(b"Fdsn@test.example\0RHDRS\0EQQ+1\0Tutf@localhost\0Tutf2@localhost\0NSUCCESS,DELAY\0Orfc822;Utf2@localhost\0\0") {
            dsn += 1;
        }
    }
    assert!(
        utf8 >= 1 && plain >= 1 && dsn >= 1,
        "{:?}",
        env.queue_files()
    );
}

fn with_received(n: usize) -> String {
    let mut m = String::new();
    for i in 0..n {
        m.push_str(&format!(
            "Received: from hop{i}.example by hop{}.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n",
            i + 1
        ));
    }
    m.push_str("Subject: loop\r\n\r\nReceived: in the body does not count\r\n");
    m
}

/// Item 5 (smtpd and queue): more than `maxhops` Received lines is a loop: 554 5.4.6 at the
/// end of DATA, and `queue` refuses it for local injection.
#[test]
fn too_many_hops_are_refused() {
    let mut env = Env::new();
    env.control("maxhops", "5");
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    let (code, text) = s.mail("a@test.example", &["hops@localhost"], &with_received(6));
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.4.6"), "{text}");
    assert_eq!(s.cmd("RSET").0, 250);
    let (code, text) = s.mail("a@test.example", &["hops@localhost"], &with_received(5));
    assert_eq!(code, 250, "{text}");
    // BDAT counts the same way.
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<hops@localhost>").0, 250);
    let m = with_received(6);
    s.send(format!("BDAT {} LAST\r\n{m}", m.len()).as_bytes());
    let (code, text) = s.reply();
    assert_eq!(code, 554, "{text}");
    // Local injection through queue.
    let out = env.sendmail(
        &["-f", "a@test.example", "hops@localhost"],
        with_received(6).replace("\r\n", "\n").as_bytes(),
    );
    assert!(!out.status.success(), "sendmail accepted a looping message");
    let out = env.sendmail(
        &["-f", "a@test.example", "hops@localhost"],
        with_received(5).replace("\r\n", "\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait_maildir(&env.mailbox("hops"), 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.maildir_new(&env.mailbox("hops")).len(), 2);
}

/// Item 6: `RCPT TO:<postmaster>` is always accepted, also when `me` is not a local domain.
#[test]
fn postmaster_without_domain_is_always_accepted() {
    let mut env = Env::new();
    env.control("me", "mx.elsewhere.example");
    env.control("relayclients", "# none");
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    let (code, text) = s.mail(
        "a@remote.example",
        &["postmaster"],
        "Subject: pm\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = env.wait_maildir(&env.mailbox("postmaster"), 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: pm"));
}

/// Item 7: a message of exactly `databytes` passes (smtpd and qwriter count it one way), one
/// byte more does not.
#[test]
fn databytes_is_counted_one_way() {
    let mut env = Env::new();
    env.control("databytes", "1000");
    env.start_send();
    let port = env.start_smtpd();
    // With From, Date and Message-ID sendmail adds nothing.
    let head = "From: a@test.example\nDate: Thu, 1 Jan 2026 00:00:00 +0000\nMessage-ID: <size@test.example>\nSubject: size\n\n";
    let body = |n: usize| format!("{head}{}\n", "a".repeat(n - head.len() - 1));
    assert_eq!(body(1000).len(), 1000);
    let mut s = Smtp::connect(port);
    let (code, text) = s.mail(
        "a@test.example",
        &["size@localhost"],
        &body(1000).replace('\n', "\r\n"),
    );
    assert_eq!(code, 250, "exactly databytes: {text}");
    let (code, text) = s.mail(
        "a@test.example",
        &["size@localhost"],
        &body(1001).replace('\n', "\r\n"),
    );
    assert_eq!(code, 552, "one byte more: {text}");
    // Local injection counts the same way.
    let out = env.sendmail(
        &["-f", "a@test.example", "size@localhost"],
        body(1000).as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait_maildir(&env.mailbox("size"), 2);
}

/// Item 8: with a huge maxrcpt, every accepted envelope fits the writer's record; the rest
/// get 452 at RCPT, and the message is queued.
#[test]
fn huge_maxrcpt_envelope_fits_or_gets_452() {
    let mut env = Env::new();
    let domain = [
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(55),
    ]
    .join(".");
    env.control("rcpthosts", &domain);
    env.control("maxrcpt", "20000");
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO x.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example>").0, 250);
    const N: usize = 17_000;
    let mut w = s.stream.try_clone().unwrap();
    let d = domain.clone();
    let sender = std::thread::spawn(move || {
        let mut buf = String::new();
        for i in 0..N {
            buf.push_str(&format!("RCPT TO:<r{i:05}@{d}>\r\n"));
            if buf.len() > 64 * 1024 {
                w.write_all(buf.as_bytes()).unwrap();
                buf.clear();
            }
        }
        w.write_all(buf.as_bytes()).unwrap();
    });
    let (mut ok, mut full) = (0, 0);
    for _ in 0..N {
        match s.reply() {
            (250, _) => ok += 1,
            (452, _) => full += 1,
            other => panic!("RCPT: {other:?}"),
        }
    }
    sender.join().unwrap();
    assert!(ok > 1000 && ok + full == N, "{ok} accepted, {full} refused");
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(b"Subject: many\r\n\r\nhi\r\n");
    let (code, text) = s.cmd(".");
    assert_eq!(code, 250, "{text}");
    eprintln!("{ok} recipients accepted, {full} got 452");
}

/// Item 9: STARTTLS follows the current settings: after a reload removed the certificate, a
/// session that was offered STARTTLS gets 502 instead of a 220 and a hang.
#[test]
fn starttls_after_a_reload_without_certificate() {
    let mut env = Env::new();
    ferry_e2e::write_test_certificate(&env.root, "test.example");
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    let (code, text) = s.cmd("EHLO x.test");
    assert!(code == 250 && text.contains("STARTTLS"), "{text}");
    std::fs::remove_file(env.path("control/tlscert")).unwrap();
    std::fs::remove_file(env.path("control/tlskey")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(&env, "smtpd")),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    env.wait_for("the reload", Duration::from_secs(20), || {
        env.log("smtpd.log").contains("STARTTLS off")
    });
    let (code, text) = s.cmd("STARTTLS");
    assert_eq!(code, 502, "{text}");
    let (code, text) = s.cmd("EHLO x.test");
    assert!(code == 250 && !text.contains("STARTTLS"), "{text}");
    assert_eq!(s.cmd("NOOP").0, 250);
}

/// Item 10: HELO names with brackets or parentheses are refused unless they are an address
/// literal, so the Received line cannot show a second, fake address.
#[test]
fn helo_with_brackets_or_parentheses_is_refused() {
    let (env, port) = setup();
    let mut s = Smtp::connect(port);
    for h in ["x ([127.0.0.1])", "x(y)", "[127.0.0.1] (z)", "a]b"] {
        let (code, text) = s.cmd(&format!("HELO {h}"));
        assert_eq!(code, 501, "{h}: {text}");
    }
    assert_eq!(s.cmd("EHLO [192.0.2.7]").0, 250);
    let (code, text) = s.mail(
        "a@test.example",
        &["helo@localhost"],
        "Subject: h\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = env.wait_maildir(&env.mailbox("helo"), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(
        t.contains("Received: from client.test ([127.0.0.1])"),
        "{t}"
    );
}

/// Connects, retrying while smtpd restarts.
fn connect_retrying(port: u16, deadline: Instant) -> Option<Smtp> {
    while Instant::now() < deadline {
        if let Ok(t) = TcpStream::connect(("127.0.0.1", port)) {
            drop(t);
            let r = std::panic::catch_unwind(|| Smtp::connect(port));
            if let Ok(s) = r {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Item 11: kill -9 the queue writer under load: the message in flight gets 451 4.3.0 at
/// once, smtpd exits, s6 starts it (and a new writer), and mail is accepted again within
/// seconds.
#[test]
fn killed_queue_writer_is_noticed_and_acceptance_resumes() {
    let (env, port) = setup();
    let old_smtpd = pid_of(&env, "smtpd");
    let qwriter = pid_of(&env, "qwriter");
    // Background load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..4 {
        let stop = stop.clone();
        load.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let msg = format!(
                    "EHLO load{t}\r\nMAIL FROM:<l@test.example>\r\nRCPT TO:<load@localhost>\r\nDATA\r\n"
                );
                let _ = c.write_all(msg.as_bytes());
                let _ = c.write_all(b"Subject: load\r\n\r\nx\r\n.\r\nQUIT\r\n");
                let mut sink = Vec::new();
                let _ = c.read_to_end(&mut sink);
                n += 1;
            }
            n
        }));
    }
    // One transaction in the middle of DATA when the writer dies.
    let mut inflight = Smtp::connect(port);
    assert_eq!(inflight.cmd("EHLO inflight.test").0, 250);
    assert_eq!(inflight.cmd("MAIL FROM:<i@test.example>").0, 250);
    assert_eq!(inflight.cmd("RCPT TO:<inflight@localhost>").0, 250);
    assert_eq!(inflight.cmd("DATA").0, 354);
    inflight.send(b"Subject: in flight\r\n\r\npart one\r\n");
    std::thread::sleep(Duration::from_millis(300));
    procs::kill(qwriter);
    let (code, text) = inflight.reply();
    assert_eq!(code, 451, "the message in flight: {text}");
    assert!(text.contains("4.3.0"), "{text}");
    // Acceptance resumes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut accepted = false;
    while Instant::now() < deadline && !accepted {
        if let Some(mut s) = connect_retrying(port, deadline) {
            s.stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.mail(
                    "a@test.example",
                    &["after@localhost"],
                    "Subject: after\r\n\r\nhi\r\n",
                )
            }));
            accepted = matches!(r, Ok((250, _)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(
        accepted,
        "no message accepted after the writer died\n{}",
        env.log("smtpd.log")
    );
    env.wait_maildir(&env.mailbox("after"), 1);
    assert_ne!(pid_of(&env, "smtpd"), old_smtpd, "smtpd was restarted");
    assert!(env.maildir_new(&env.mailbox("inflight")).is_empty());
}

/// Item 12: a message's commit is not deferred by a steady stream of data from other sessions.
#[test]
fn commit_is_not_deferred_by_a_steady_stream() {
    let mut env = Env::new();
    env.control("databytes", "0");
    env.start_send();
    let port = env.start_smtpd();
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stop = stop.clone();
        streams.push(std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"EHLO stream\r\nMAIL FROM:<s@test.example>\r\nRCPT TO:<stream@localhost>\r\nDATA\r\n")
                .unwrap();
            let chunk = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
                .repeat(1000);
            let mut sent = 0usize;
            // At most 512 MiB each; stops as soon as the short message is through.
            while !stop.load(Ordering::Relaxed) && sent < 512 << 20 {
                if c.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut s = Smtp::connect(port);
    s.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (code, text) = s.mail(
        "a@test.example",
        &["short@localhost"],
        "Subject: short\r\n\r\nhi\r\n",
    );
    stop.store(true, Ordering::Relaxed);
    let sent: usize = streams.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{} MiB streamed meanwhile", sent >> 20);
    assert_eq!(code, 250, "{text}");
    // The short message did not have to wait for the streams to end (no timing: a volume).
    assert!(
        sent < 3 * (512 << 20),
        "the short message was answered only after every stream had ended"
    );
    env.wait_maildir(&env.mailbox("short"), 1);
}

/// Item 12, proven: the test above passes without the commit bound too (qwriter drains smtpd
/// faster than smtpd can feed it, so its input runs dry and it commits anyway). Here the test
/// is smtpd: it starts the real qwriter on a socket pair and, right behind one complete
/// message, sends a flood of begin/abort pairs for other transactions. Each pair costs qwriter
/// a tmp file (create, lock, unlink) and costs the test a memcpy, so qwriter's input never runs
/// dry while the flood lasts. Without the bound the message's `K` comes only after the whole
/// flood; with it, while the flood is still being sent (counted in pairs, not in time).
#[test]
fn commit_bound_holds_while_the_writer_input_never_runs_dry() {
    use ferry_common::record::{self, Record};
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::AtomicU64;
    let env = Env::new();
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let log = std::fs::File::create(env.path("qwriter.log")).unwrap();
    let mut cmd = std::process::Command::new(env.path("bin/qwriter"));
    cmd.env_clear()
        .current_dir(&env.root)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stdout(std::process::Stdio::null())
        .stderr(log);
    if ferry_e2e::is_root() {
        let q = nix::unistd::User::from_name("ferryq").unwrap().unwrap();
        cmd.uid(q.uid.as_raw()).gid(q.gid.as_raw());
    }
    let mut child = cmd.spawn().unwrap();
    const PAIRS: u64 = 200_000;
    const BATCH: u64 = 500;
    let begin = |txn: u64| {
        Record::new(b'B')
            .with_u64(txn)
            .with("flood.test")
            .with("127.0.0.1")
            .with("ESMTP")
            .with("")
            .with("")
            .with("a@test.example")
            .with("flood@localhost")
            .encode()
    };
    let mut first = begin(1);
    first.extend(
        Record::new(b'C')
            .with_u64(1)
            .with("Subject: one\n\nx\n")
            .encode(),
    );
    first.extend(Record::new(b'E').with_u64(1).encode());
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut out = mine.try_clone().unwrap();
    let flood = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut txn = 2;
            // The message and the first pairs go in one write: no gap between them.
            let mut buf = first;
            while sent.load(Ordering::Relaxed) < PAIRS && !stop.load(Ordering::Relaxed) {
                for _ in 0..BATCH {
                    buf.extend(begin(txn));
                    buf.extend(Record::new(b'A').with_u64(txn).encode());
                    txn += 1;
                }
                if out.write_all(&buf).is_err() {
                    break;
                }
                buf.clear();
                sent.fetch_add(BATCH, Ordering::Relaxed);
            }
        })
    };
    let mut input = mine;
    input
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let r = record::read_blocking(&mut input).unwrap().unwrap();
    let at = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    eprintln!("K for the message after {at} of {PAIRS} begin/abort pairs were sent");
    assert_eq!((r.kind, r.u64(0).unwrap()), (b'K', 1), "{r:?}");
    assert!(
        at < PAIRS,
        "the message was committed only once the flood had ended ({at} pairs)"
    );
    drop(input);
    let _ = child.wait();
}
