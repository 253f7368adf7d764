//! What administrators trip over (issue 8): sendmail's sender and recipient checks and its
//! From line, bare addresses in smtproutes and `ferryctl check` on their hosts, the ferry users'
//! fixed home, and `ferryctl init`'s summary. Real binaries in a temporary root.

#![allow(clippy::unwrap_used)]

use ferry_e2e::Env;
use ferry_e2e::remote::{Dns, Scripted};
use std::time::Duration;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Items 4 and 7: a malformed `-f` sender or recipient is refused with exit 65 and one line,
/// using smtpd's address checks; `<>` only when asked for; nothing is queued.
#[test]
fn sendmail_refuses_what_smtp_refuses() {
    let mut env = Env::new();
    env.start_send();
    let box_ = env.mailbox_rcpt("ann");
    let msg = b"Subject: x\n\nbody\n";
    for (args, what) in [
        (vec!["-f", "x y@", "ann@virt.example"], "sender"),
        (vec!["-f", "@", "ann@virt.example"], "sender"),
        (vec!["-f", "<a@b.example", "ann@virt.example"], "sender"),
        (vec!["-f", "a@@b.example", "ann@virt.example"], "sender"),
        (vec!["bad/../x@localhost"], "recipient"),
        (vec![".dot@localhost"], "recipient"),
        (vec!["x@under_score.example"], "recipient"),
    ] {
        let out = env.sendmail(&args, msg);
        assert_eq!(out.status.code(), Some(65), "{args:?}: {}", stderr(&out));
        let e = stderr(&out);
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(
            e.starts_with(&format!("sendmail: {what} ")),
            "{args:?}: {e}"
        );
    }
    assert!(env.queue_files().is_empty(), "{:?}", env.queue_files());
    // The null sender, when asked for in either spelling.
    for null in ["<>", ""] {
        let out = env.sendmail(&["-f", null, &box_.addr()], msg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let got = env.wait_maildir(&box_.maildir(), 2);
    for m in got {
        let t = String::from_utf8_lossy(&m);
        assert!(t.starts_with("Return-Path: <>\n"), "{t}");
    }
}

/// Item 5: the From line sendmail adds is built from the envelope sender (-f) and -F.
#[test]
fn sendmail_from_line_follows_dash_f() {
    let mut env = Env::new();
    env.start_send();
    let box_ = env.mailbox_rcpt("bob");
    let out = env.sendmail(
        &["-f", "fn@test.example", "-F", "Full Name", &box_.addr()],
        b"Subject: from\n\nbody\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got = env.wait_maildir(&box_.maildir(), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(t.contains("\nFrom: Full Name <fn@test.example>\n"), "{t}");
    assert!(t.starts_with("Return-Path: <fn@test.example>\n"), "{t}");
}

/// Item 8: a bare IP in smtproutes (qmail's `domain:127.0.0.1:2610`) is an address, not a
/// name to look up; `ferryctl check` FAILs a route whose host does not resolve.
#[test]
fn smtproutes_bare_address_delivers_and_check_resolves_hosts() {
    let dns = Dns::start(&["--host-record=relay.route.test,127.0.0.2".into()]);
    let mut env = Env::new();
    let rx = Scripted::start(env.root.join("..").join("rx"), "127.0.0.2", 0, "{}");
    env.control(
        "smtproutes",
        &format!(
            "bare.test:127.0.0.2:{}\nnamed.test:relay.route.test:{}\nbroken.test:nowhere.route.test:25",
            rx.port, rx.port
        ),
    );
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("timeoutconnect", "5");
    env.start_send();
    for to in ["joe@bare.test", "ann@named.test"] {
        let out = env.sendmail(&["-f", "s@test.example", to], b"Subject: r\n\nrouted\n");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    env.wait_for("both deliveries", Duration::from_secs(30), || {
        rx.received().len() == 2
    });
    let log = env.log("send.log");
    assert!(
        log.contains(&format!("to=<joe@bare.test> relay=[127.0.0.2]:{}", rx.port)),
        "{log}"
    );
    let out = env.ferryctl(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.lines().any(|l| l.starts_with("FAIL")
            && l.contains("smtproutes host nowhere.route.test (for broken.test)")),
        "{said}"
    );
    assert!(
        said.lines().any(|l| l.starts_with("OK")
            && l.contains(
                "smtproutes host relay.route.test (for named.test) has address 127.0.0.2"
            )),
        "{said}"
    );
    assert!(!said.contains("smtproutes host 127.0.0.2"), "{said}");
}

/// Items 11 and 18: `ferryctl init` prints a summary, not a line per queue subdirectory, and
/// (as root) the ferry users have the fixed home /nonexistent, never a test root's path.
#[test]
fn init_is_short_and_users_have_a_fixed_home() {
    let env = Env::new();
    let fresh = env.root.join("..").join("fresh");
    std::fs::create_dir_all(fresh.join("bin")).unwrap();
    ferry_e2e::copy_program(&env.root.join("bin/ferryctl"), &fresh.join("bin/ferryctl"));
    let out = std::process::Command::new(fresh.join("bin/ferryctl"))
        .arg("init")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(
        said.lines().count() < 60,
        "{} lines:\n{said}",
        said.lines().count()
    );
    assert!(
        said.contains("created queue/mess/00..ff (256 directories)"),
        "{said}"
    );
    if ferry_e2e::is_root() {
        for (name, _) in ferry_common::users::ALL {
            let u = nix::unistd::User::from_name(name).unwrap().unwrap();
            // A process of the user may still run from another test: usermod waits for it.
            if u.dir != std::path::Path::new("/nonexistent") {
                assert!(
                    said.contains(&format!("could not set the home of user {name}")),
                    "{name}: {}",
                    u.dir.display()
                );
            }
        }
    }
}
