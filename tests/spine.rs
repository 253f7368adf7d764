//! The mail spine end to end: sendmail → queue → send → lspawn → local-deliver → mailbox,
//! with the real binaries in a temporary root.

#![allow(clippy::unwrap_used)]

use ferry_e2e::{Env, message, procs, strip_trace};
use mail_parser::MimeHeaders;
use std::time::Duration;

#[test]
fn maildir_delivery_is_byte_exact() {
    let mut env = Env::new();
    env.start_send();
    for r in env.recipients("exact") {
        let body = "First line.\n.leading dot\nFrom the middle\n\nUTF-8: grüße\n";
        let msg = message(&format!("exact-{}", r.label()), body);
        let out = env.sendmail(&["-f", "sender@test.example", &r.addr()], &msg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = env.wait_maildir(&r.maildir(), 1);
        let text = String::from_utf8_lossy(&got[0]).into_owned();
        assert!(
            text.starts_with("Return-Path: <sender@test.example>\nDelivered-To: "),
            "{text}"
        );
        assert!(
            text.contains(&format!("Delivered-To: {}\n", r.addr())),
            "{text}"
        );
        assert!(text.contains("Received: (ferry "), "{text}");
        // sendmail added Date (the message had From and Message-ID).
        let rest = String::from_utf8(strip_trace(&got[0])).unwrap();
        let original = String::from_utf8(msg.clone()).unwrap();
        let (orig_head, orig_body) = original.split_once("\n\n").unwrap();
        assert!(rest.starts_with(orig_head), "{rest}");
        assert!(rest.contains("\nDate: "), "{rest}");
        assert!(rest.ends_with(&format!("\n\n{orig_body}")), "{rest}");
        // Maildir name and mode.
        let name = env.maildir_new(&r.maildir())[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.contains(".test.example,S="), "{name}");
    }
    env.wait_queue_empty();
}

#[test]
fn mbox_forward_program_and_extensions() {
    let mut env = Env::new();
    env.start_send();
    let fwd = env.mailbox_rcpt("fwdtarget");
    for r in env.recipients("multi") {
        r.write(".ferry-box", "./mbox\n");
        r.write(".ferry-fwd", &format!("&{}\n./Maildir/\n", fwd.addr()));
        r.write(
            ".ferry-prog",
            "|env > prog.env; cat > prog.out; id -u > prog.uid\n",
        );
        r.write(".ferry-shop-default", "./Maildir/\n");
        r.mkdir("Maildir/new");
        r.mkdir("Maildir/cur");
        r.mkdir("Maildir/tmp");
        let tag = r.label();
        for (ext, subj) in [
            ("box", "mbox"),
            ("fwd", "fwd"),
            ("prog", "prog"),
            ("shop-books", "shop"),
        ] {
            let out = env.sendmail(
                &["-f", "s@test.example", &r.ext_addr(ext)],
                &message(&format!("{subj}-{tag}"), "hello\nFrom here\n"),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // mbox: From_ line, the added lines, >From quoting, blank line at the end.
        let mbox = r.home.join("mbox");
        env.wait_for("the mbox", Duration::from_secs(30), || {
            std::fs::read_to_string(&mbox).is_ok_and(|t| t.ends_with("\n\n"))
        });
        let t = std::fs::read_to_string(&mbox).unwrap();
        assert!(t.starts_with("From s@test.example "), "{t}");
        assert!(
            t.contains(&format!("Delivered-To: {}\n", r.ext_addr("box"))),
            "{t}"
        );
        assert!(t.contains("\n>From here\n"), "{t}");
        // Program: message on stdin, environment, runs as the recipient.
        let out = r.home.join("prog.out");
        env.wait_for("the program", Duration::from_secs(30), || {
            std::fs::read_to_string(r.home.join("prog.uid")).is_ok_and(|s| s.ends_with('\n'))
        });
        let o = std::fs::read_to_string(&out).unwrap();
        assert!(
            o.contains("Subject: prog-") && o.contains("Return-Path: <s@test.example>"),
            "{o}"
        );
        let e = std::fs::read_to_string(r.home.join("prog.env")).unwrap();
        for want in [
            "SENDER=s@test.example".to_string(),
            format!("RECIPIENT={}", r.ext_addr("prog")),
            "EXT=prog".into(),
            format!("HOST={}", r.domain),
        ] {
            assert!(e.lines().any(|l| l == want), "{want} not in\n{e}");
        }
        let uid: u32 = std::fs::read_to_string(r.home.join("prog.uid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(uid, r.uid, "local-deliver must run as the recipient");
        // -default extension and the forward's own copy.
        let got = env.wait_maildir(&r.maildir(), 2);
        assert!(
            got.iter()
                .any(|m| String::from_utf8_lossy(m).contains(&format!("Subject: shop-{tag}")))
        );
        assert!(
            got.iter()
                .any(|m| String::from_utf8_lossy(m).contains(&format!("Subject: fwd-{tag}")))
        );
    }
    // Both forwards arrived, with the forwarder's Delivered-To line on top of the message.
    let got = env.wait_maildir(&fwd.maildir(), env.users.len() + 1);
    for m in &got {
        let t = String::from_utf8_lossy(m);
        assert!(t.contains("-fwd@"), "{t}");
        assert!(
            t.contains(&format!("Delivered-To: {}\n", fwd.addr())),
            "{t}"
        );
    }
    env.wait_queue_empty();
}

#[test]
fn aliases_and_virtual_domains() {
    let mut env = Env::new();
    env.control(
        "aliases",
        "team: a1@localhost, a2@localhost\nroot: boss@localhost\ninfo@virt.example: a3@localhost\n",
    );
    env.start_send();
    let msg = message("alias", "to the team\n");
    for to in [
        "team@test.example",
        "root@test.example",
        "info@virt.example",
        "postmaster@test.example",
    ] {
        let out = env.sendmail(&[to], &msg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for mb in ["a1", "a2", "boss", "a3", "postmaster"] {
        let got = env.wait_maildir(&env.mailbox(mb), 1);
        assert!(String::from_utf8_lossy(&got[0]).contains("Subject: alias"));
    }
    if ferry_e2e::is_root() {
        // domain:user maps x@domain to the user's extension x.
        let u = env.user_rcpt();
        env.control(
            "virtualdomains",
            &format!(
                "localhost:mail/*\nvirt.example:mail/\nshop.example:{}\n",
                u.local
            ),
        );
        env.stop();
        env.start_send();
        u.write(".ferry-default", "./Maildir/\n");
        u.mkdir("Maildir/new");
        u.mkdir("Maildir/cur");
        u.mkdir("Maildir/tmp");
        let out = env.sendmail(&["orders@shop.example"], &message("virtual-user", "x\n"));
        assert!(out.status.success());
        let got = env.wait_maildir(&u.maildir(), 1);
        assert!(String::from_utf8_lossy(&got[0]).contains("Delivered-To: orders@shop.example"));
    }
    env.wait_queue_empty();
}

#[test]
fn bounce_for_unknown_user_is_rfc3464() {
    let mut env = Env::new();
    env.start_send();
    let sender = env.mailbox_rcpt("bouncedsender");
    let out = env.sendmail(
        &["-f", &sender.addr(), "nosuchuser@test.example"],
        &message("bounce-me", "lost\n"),
    );
    assert!(out.status.success());
    let got = env.wait_maildir(&sender.maildir(), 1);
    let raw = &got[0];
    let text = String::from_utf8_lossy(raw);
    assert!(text.starts_with("Return-Path: <>\n"), "{text}");
    let m = mail_parser::MessageParser::default()
        .parse(raw.as_slice())
        .unwrap();
    let ct = m.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let parts: Vec<String> = m
        .parts
        .iter()
        .filter_map(|p| {
            p.content_type()
                .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        })
        .collect();
    assert!(parts.contains(&"text/plain".to_string()), "{parts:?}");
    assert!(
        parts.contains(&"message/delivery-status".to_string()),
        "{parts:?}"
    );
    assert!(
        parts.contains(&"text/rfc822-headers".to_string()),
        "{parts:?}"
    );
    for want in [
        "Reporting-MTA: dns; test.example",
        "Final-Recipient: rfc822; nosuchuser@test.example",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: x-unix; 5.1.1",
        "Subject: bounce-me",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    env.wait_queue_empty();
}

#[test]
fn null_sender_failure_goes_to_postmaster_once_then_is_dropped() {
    let mut env = Env::new();
    // postmaster itself is unreachable: its double bounce must be dropped, not loop.
    env.control("doublebounceto", "nobody-here@test.example");
    env.start_send();
    let out = env.sendmail(
        &["-f", "", "nosuchuser@test.example"],
        &message("null-sender", "x\n"),
    );
    assert!(out.status.success());
    env.wait_queue_empty();
    let log = env.log("send.log");
    assert!(
        log.contains("bounce to <nobody-here@test.example> queued"),
        "{log}"
    );
    assert!(log.contains("a double bounce failed; dropped"), "{log}");
}

#[test]
fn mail_loop_is_detected() {
    let mut env = Env::new();
    env.start_send();
    let sender = env.mailbox_rcpt("loopsender");
    let r = env.mailbox_rcpt("looper");
    // A forward to itself: the second delivery finds its own Delivered-To line.
    r.write(".ferry", &format!("&{}\n", r.addr()));
    let out = env.sendmail(
        &["-f", &sender.addr(), &r.addr()],
        &message("loop", "round and round\n"),
    );
    assert!(out.status.success());
    let got = env.wait_maildir(&sender.maildir(), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(t.contains("Status: 5.4.6") && t.contains("looping"), "{t}");
    env.wait_queue_empty();
}

#[test]
fn temporary_failure_is_retried_and_delivered() {
    let mut env = Env::new();
    env.start_send();
    let r = env.mailbox_rcpt("flaky");
    // Fails with 111 until the file "ok" exists, then delivers.
    r.write(
        ".ferry",
        "|test -f ok || { echo not yet; exit 111; }\n./Maildir/\n",
    );
    r.mkdir("Maildir/new");
    r.mkdir("Maildir/cur");
    r.mkdir("Maildir/tmp");
    let out = env.sendmail(&[&r.addr()], &message("retry", "again\n"));
    assert!(out.status.success());
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log")
            .contains("deferred: program exited 111: not yet")
    });
    let q = env.ferryctl(&["queue"]);
    let listing = String::from_utf8_lossy(&q.stdout);
    assert!(
        listing.contains("deferred (1 attempt)") && listing.contains("not yet"),
        "{listing}"
    );
    r.write("ok", "");
    env.flush();
    env.wait_maildir(&r.maildir(), 1);
    env.wait_queue_empty();
}

#[test]
fn expired_message_bounces_with_the_last_error() {
    let mut env = Env::new();
    env.control("queuelifetime", "0");
    env.start_send();
    let sender = env.mailbox_rcpt("expsender");
    let r = env.mailbox_rcpt("neverready");
    r.write(".ferry", "|echo disk on fire; exit 111\n");
    let out = env.sendmail(
        &["-f", &sender.addr(), &r.addr()],
        &message("expire", "x\n"),
    );
    assert!(out.status.success());
    let got = env.wait_maildir(&sender.maildir(), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(
        t.contains("Status: 4.4.7") && t.contains("disk on fire"),
        "{t}"
    );
}

#[test]
fn fifty_recipients() {
    let mut env = Env::new();
    env.start_send();
    let names: Vec<String> = (0..50).map(|i| format!("many{i}@localhost")).collect();
    let mut args: Vec<&str> = vec!["-f", "s@test.example"];
    args.extend(names.iter().map(String::as_str));
    let out = env.sendmail(&args, &message("fifty", "to many\n"));
    assert!(out.status.success());
    for i in 0..50 {
        let got = env.wait_maildir(&env.mailbox(&format!("many{i}")), 1);
        assert_eq!(got.len(), 1);
        assert!(
            String::from_utf8_lossy(&got[0]).contains(&format!("Delivered-To: many{i}@localhost"))
        );
    }
    env.wait_queue_empty();
}

#[test]
fn sendmail_t_reads_recipients_and_strips_bcc() {
    let mut env = Env::new();
    env.start_send();
    let msg = b"To: Ann <tann@localhost>, \"B, B\" <tbob@localhost>\nCc: tcat@localhost\nBcc: tdan@localhost\nSubject: dash-t\n\nbody\n";
    let out = env.sendmail(&["-t", "-i"], msg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for who in ["tann", "tbob", "tcat", "tdan"] {
        let got = env.wait_maildir(&env.mailbox(who), 1);
        let t = String::from_utf8_lossy(&got[0]);
        assert!(
            !t.contains("Bcc:") && !t.contains("tdan@localhost\nSubject"),
            "{t}"
        );
        assert!(
            t.contains("\nFrom: ") && t.contains("\nMessage-ID: <") && t.contains("\nDate: "),
            "{t}"
        );
    }
    // No recipient: one clear line, exit 64.
    let out = env.sendmail(&[], b"Subject: nobody\n\nx\n");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("sendmail: no recipients") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn programs_run_under_their_own_users() {
    if !ferry_e2e::is_root() {
        eprintln!("single-user mode: every program runs as the invoking user; nothing to prove");
        return;
    }
    let mut env = Env::new();
    env.start_send();
    let uid = |n: &str| {
        nix::unistd::User::from_name(n)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    };
    let expect = [
        ("send", uid("ferrys")),
        ("lspawn", 0),
        ("rspawn", uid("ferryr")),
        ("clean", uid("ferryq")),
    ];
    for (prog, want) in expect {
        let ps = procs::named(&env.root, prog);
        assert_eq!(ps.len(), 1, "{prog}: {}", ps.len());
        assert_eq!(
            ps[0].uids, [want; 3],
            "{prog} runs as uid {want} (real, effective, saved)"
        );
    }
    // rspawn's long-lived remote-deliver workers run as ferryr too.
    env.wait_for("remote-deliver workers", Duration::from_secs(20), || {
        !procs::named(&env.root, "remote-deliver").is_empty()
    });
    for w in procs::named(&env.root, "remote-deliver") {
        assert_eq!(w.uids, [uid("ferryr"); 3], "remote-deliver pid {}", w.pid);
    }
    // The installed tree matches the manifest (owners, modes, the setuid queue).
    let problems = ferry_common::layout::verify(
        &ferry_common::root::Root::at(&env.root),
        ferry_common::users::Mode::Separated,
    );
    assert!(problems.is_empty(), "{problems:?}");
    // A worker runs as the recipient while it has work (the program reports its uid too).
    let u = env.user_rcpt();
    u.write(".ferry", "|sleep 2; id -u > seen.uid\n");
    let out = env.sendmail(&[&u.addr()], &message("uid", "x\n"));
    assert!(out.status.success());
    env.wait_for("local-deliver", Duration::from_secs(20), || {
        !procs::named(&env.root, "local-deliver").is_empty()
    });
    let w = &procs::named(&env.root, "local-deliver")[0];
    assert_eq!(w.uids, [u.uid; 3]);
    env.wait_for("the program", Duration::from_secs(20), || {
        u.home.join("seen.uid").exists()
    });
    env.wait_queue_empty();
    // Queue files: a deferred message in mess/ is ferryq:ferry 0640 (remote-deliver reads it
    // through the group, nobody else can), its info file ferrys 0600.
    let later = env.mailbox_rcpt("modes");
    later.write(".ferry", "|exit 111\n");
    let out = env.sendmail(&[&later.addr()], &message("modes", "x\n"));
    assert!(out.status.success());
    let find = |top: &str| -> Option<std::path::PathBuf> {
        std::fs::read_dir(env.root.join("queue").join(top))
            .ok()?
            .flatten()
            .filter_map(|d| std::fs::read_dir(d.path()).ok())
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| !p.to_string_lossy().ends_with(".tmp"))
    };
    env.wait_for(
        "the deferred message in mess/",
        Duration::from_secs(30),
        || find("mess").is_some() && find("info").is_some(),
    );
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(find("mess").unwrap()).unwrap();
    let i = std::fs::metadata(find("info").unwrap()).unwrap();
    let gid = |g: &str| {
        nix::unistd::Group::from_name(g)
            .unwrap()
            .unwrap()
            .gid
            .as_raw()
    };
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (uid("ferryq"), gid("ferry"), 0o640)
    );
    assert_eq!((i.uid(), i.mode() & 0o7777), (uid("ferrys"), 0o600));
    // A Maildir file belongs to the recipient and is 0600.
    let mb = env.mailbox_rcpt("modesok");
    let out = env.sendmail(&[&mb.addr()], &message("maildir-mode", "x\n"));
    assert!(out.status.success());
    env.wait_maildir(&mb.maildir(), 1);
    let f = std::fs::metadata(&env.maildir_new(&mb.maildir())[0]).unwrap();
    assert_eq!((f.uid(), f.mode() & 0o777), (mb.uid, 0o600));
}

#[test]
fn killing_a_helper_restarts_the_service_and_loses_nothing() {
    let mut env = Env::new();
    env.start_send();
    for (round, victim) in ["lspawn", "clean", "rspawn", "send"].iter().enumerate() {
        let before: Vec<i32> = procs::named(&env.root, "send")
            .iter()
            .map(|p| p.pid)
            .collect();
        let v = procs::named(&env.root, victim);
        assert!(!v.is_empty(), "{victim} is not running");
        procs::kill(v[0].pid);
        // Mail sent while the service restarts is queued and delivered afterwards.
        let out = env.sendmail(
            &[&format!("kill{round}@localhost")],
            &message(&format!("kill-{victim}"), "x\n"),
        );
        assert!(out.status.success());
        env.wait_for("send to be restarted", Duration::from_secs(30), || {
            let now: Vec<i32> = procs::named(&env.root, "send")
                .iter()
                .map(|p| p.pid)
                .collect();
            !now.is_empty() && now != before
        });
        env.wait_maildir(&env.mailbox(&format!("kill{round}")), 1);
    }
    env.wait_queue_empty();
}
