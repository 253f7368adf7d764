//! What administrators trip over on the delivery side (issue 8): `ferryctl reload` reports
//! each program's verdict (item 2), mailboxes made by hand with the wrong owner and
//! `ferryctl mailbox add` (10), alias expansion in the log and as X-Original-To (16), the
//! queue id on local-deliver's lines (17), singular and plural in send's log (18).
//! Real binaries in a temporary root; waits are deadlines, never asserted timings.

#![allow(clippy::unwrap_used)]

use ferry_e2e::supervision::Tree;
use ferry_e2e::{Env, is_root, message};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sendmail_ok(env: &Env, to: &str, subject: &str) {
    let out = env.sendmail(
        &["-f", "sender@test.example", to],
        &message(subject, "body\n"),
    );
    assert!(out.status.success(), "sendmail {to}: {}", stderr(&out));
}

/// The queue id send logged for the message with this subject's recipient `to`.
fn id_of(env: &Env, to: &str) -> String {
    let log = env.log("send.log");
    log.lines()
        .find_map(|l| {
            let rest = l.split("send: ").nth(1)?;
            let (id, what) = rest.split_once(": ")?;
            (what.starts_with(&format!("<{to}> ")) && id.len() == 32).then(|| id.to_string())
        })
        .unwrap_or_else(|| panic!("no line of send about <{to}>:\n{log}"))
}

/// Who must own a mailbox: ferrym as root, else the user running the test.
fn mailbox_uid() -> u32 {
    if is_root() {
        nix::unistd::User::from_name("ferrym")
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    } else {
        nix::unistd::getuid().as_raw()
    }
}

/// Item 2: each program's verdict; exit 1 when one refused or its verdict is unknown.
#[test]
fn reload_reports_each_programs_verdict() {
    let env = Env::new();
    let (tree, _port) = Tree::start(&env);
    let smtpd_pid = tree.pid("smtpd").unwrap();
    let send_pid = tree.pid("send").unwrap();
    let inject_pid = tree.pid("inject").unwrap();

    let out = tree.expect(&["reload"], 0);
    assert!(
        out.contains(&format!(
            "send: reloaded (pid {send_pid}, asked over queue/ctl/send)"
        )) && out.contains(&format!(
            "smtpd: sent HUP to pid {smtpd_pid}: reloaded (its log: control files reloaded"
        )) && out.contains(&format!(
            "inject: sent HUP to pid {inject_pid}: reloaded (its log: control files reloaded"
        )),
        "{out}"
    );

    // A broken databytes: inject refuses and keeps its settings.
    env.control("databytes", "lots");
    let out = tree.ferryctl(&["reload"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let inject_line = text.lines().find(|l| l.starts_with("inject: ")).unwrap();
    assert!(
        inject_line.contains("reload refused") && inject_line.contains("databytes"),
        "{text}"
    );
    std::fs::remove_file(env.path("control/databytes")).unwrap();

    // A bad relayclients line: both refuse, keep their settings, and the command says so.
    env.control("relayclients", "127.0.0.1\nnot-an-address\n");
    let out = tree.ferryctl(&["reload"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let send_line = text.lines().find(|l| l.starts_with("send: ")).unwrap();
    let smtpd_line = text.lines().find(|l| l.starts_with("smtpd: ")).unwrap();
    assert!(
        send_line.starts_with(&format!("send: reload refused (pid {send_pid})"))
            && send_line.contains("relayclients"),
        "{text}"
    );
    assert!(
        smtpd_line.starts_with(&format!(
            "smtpd: sent HUP to pid {smtpd_pid}: reload refused"
        )) && smtpd_line.contains("relayclients"),
        "{text}"
    );
    assert_eq!(
        tree.pid("smtpd"),
        Some(smtpd_pid),
        "reload must not restart"
    );

    // Fixed: both reload again (the refusal seen before the mark is not read again).
    env.control("relayclients", "127.0.0.1\n");
    let out = tree.expect(&["reload"], 0);
    assert!(
        out.contains("send: reloaded") && out.contains("smtpd: sent HUP to pid"),
        "{out}"
    );

    // smtpd's log cannot be read back (its logger is down): no claim of success.
    let logger = env.path("service/smtpd/log");
    let o = Command::new("s6-svc")
        .args(["-wD", "-T", "10000", "-d"])
        .arg(&logger)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tree.ferryctl(&["reload"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("send: reloaded")
            && text.contains(&format!(
                "smtpd: HUP sent, verdict unknown (pid {smtpd_pid}): no answer in"
            )),
        "{text}"
    );
    let _ = Command::new("s6-svc").arg("-u").arg(&logger).output();
}

/// Item 10: a mailbox directory made by hand as root is failed by check with the chown,
/// its mail waits with the same fix in the reason, and `ferryctl mailbox add` makes
/// mailboxes with the right owner (and never changes one it did not make).
#[test]
fn mailbox_add_and_the_owner_check() {
    let mut env = Env::new();
    env.start_send();
    let mail = env.path("mail");
    let want = mailbox_uid();
    let user = if is_root() {
        "ferrym".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name
    };

    // mailbox add: the directory and its Maildir, 0700, owned by the mailbox user.
    let out = env.ferryctl(&["mailbox", "add", "carol"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "mailbox carol: created {}",
            mail.join("carol").display()
        )) && text.contains("carol@localhost")
            && text.contains("carol@virt.example"),
        "{text}"
    );
    for p in [
        "carol",
        "carol/Maildir",
        "carol/Maildir/new",
        "carol/Maildir/tmp",
    ] {
        let m = std::fs::metadata(mail.join(p)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (want, 0o700), "{p}");
    }
    // Again: nothing to do. A bad name is a usage error.
    let again = env.ferryctl(&["mailbox", "add", "carol"]);
    assert!(again.status.success() && stdout(&again).contains("nothing to do"));
    assert_eq!(
        env.ferryctl(&["mailbox", "add", "Bad/x"]).status.code(),
        Some(2)
    );
    assert_eq!(env.ferryctl(&["mailbox", "frob"]).status.code(), Some(2));

    // virt.example:mail/ takes existing mailboxes only: carol now gets mail.
    sendmail_ok(&env, "carol@virt.example", "to-carol");
    env.wait_maildir(&env.mailbox("carol"), 1);

    let check = stdout(&env.ferryctl(&["check", "--no-dns"]));
    assert!(
        check.contains(&format!(
            "OK    mailboxes: 1 under {}, each owned by {user}",
            mail.display()
        )),
        "{check}"
    );

    if !is_root() {
        return;
    }
    // As root, `mkdir mail/bob`: the wrong owner.
    let bob = mail.join("bob");
    std::fs::create_dir(&bob).unwrap();
    let fix = format!("chown -R ferrym:ferrym {}", bob.display());
    let out = env.ferryctl(&["check", "--no-dns"]);
    let check = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{check}");
    assert!(
        check.contains(&format!(
            "FAIL  mailbox bob: {} belongs to root, not ferrym: its mail waits (Permission denied) — {fix}",
            bob.display()
        )),
        "{check}"
    );
    // add refuses to touch it, and says the same.
    let out = env.ferryctl(&["mailbox", "add", "bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&fix), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&bob).unwrap().uid(), 0);

    // Its mail waits, and the reason names the fix.
    sendmail_ok(&env, "bob@virt.example", "to-bob");
    env.wait_for(
        "bob's delivery to be deferred",
        Duration::from_secs(30),
        || {
            env.log("send.log")
                .lines()
                .any(|l| l.contains("<bob@virt.example> deferred") && l.contains(&fix))
        },
    );
    // The administrator runs the fix; the mail goes in on the next try.
    let o = Command::new("chown")
        .args(["-R", "ferrym:ferrym"])
        .arg(&bob)
        .output()
        .unwrap();
    assert!(o.status.success());
    env.flush();
    env.wait_maildir(&env.mailbox("bob"), 1);
    let check = stdout(&env.ferryctl(&["check", "--no-dns"]));
    assert!(
        check.contains("OK    mailboxes: 2 under") && !check.contains("FAIL  mailbox"),
        "{check}"
    );
    env.wait_queue_empty();
}

/// Item 16: the expansion of an alias is in send's log, and each delivered copy says
/// where it was sent (X-Original-To above the Delivered-To line), also after a deferral
/// and a restart of send (the expansion is recomputed from the envelope).
#[test]
fn alias_expansion_is_logged_and_kept_as_x_original_to() {
    let mut env = Env::new();
    env.control(
        "aliases",
        "sales: ann@localhost, bob@localhost\nteam: sales, dave@localhost\n",
    );
    // dave's mailbox defers until its .ferry is fixed.
    env.mailbox_rcpt("dave").write(".ferry", "|\n");
    let dave_ferry = env.path("mail/dave/.ferry");
    env.start_send();

    sendmail_ok(&env, "sales@test.example", "to-sales");
    sendmail_ok(&env, "carol@localhost", "to-carol");
    for (mb, orig) in [("ann", "sales"), ("bob", "sales")] {
        let got = env.wait_maildir(&env.mailbox(mb), 1);
        let text = String::from_utf8_lossy(&got[0]).into_owned();
        assert!(
            text.starts_with(&format!(
                "Return-Path: <sender@test.example>\nX-Original-To: {orig}@test.example\nDelivered-To: {mb}@localhost\n"
            )),
            "{text}"
        );
    }
    let got = env.wait_maildir(&env.mailbox("carol"), 1);
    assert!(!String::from_utf8_lossy(&got[0]).contains("X-Original-To"));
    let log = env.log("send.log");
    assert!(
        log.contains("<sales@test.example> → ann@localhost, bob@localhost\n"),
        "{log}"
    );

    // Two levels, one of them deferred; send restarts in between.
    sendmail_ok(&env, "team@test.example", "to-team");
    env.wait_for(
        "dave's delivery to be deferred",
        Duration::from_secs(30),
        || env.log("send.log").contains("<dave@localhost> deferred"),
    );
    assert!(
        env.log("send.log")
            .contains("<team@test.example> → ann@localhost, bob@localhost, dave@localhost\n"),
        "{}",
        env.log("send.log")
    );
    env.wait_maildir(&env.mailbox("ann"), 2);
    // Persisted (info/ keeps only the final addresses), so the restart recovers it from there.
    env.wait_for(
        "the message to be persisted",
        Duration::from_secs(30),
        || env.queue_files().iter().any(|f| f.starts_with("info/")),
    );
    env.stop();
    std::fs::remove_file(&dave_ferry).unwrap();
    env.start_send();
    env.flush();
    let got = env.wait_maildir(&env.mailbox("dave"), 1);
    let text = String::from_utf8_lossy(&got[0]).into_owned();
    assert!(
        text.contains("X-Original-To: team@test.example\nDelivered-To: dave@localhost\n"),
        "{text}"
    );
    env.wait_queue_empty();
}

/// Item 17: every line of local-deliver names the queue id, as send's and smtpd's do.
#[test]
fn local_deliver_lines_name_the_queue_id() {
    let mut env = Env::new();
    env.mailbox_rcpt("erin").write(".ferry", "|\n");
    let ferry = env.path("mail/erin/.ferry");
    env.start_send();
    sendmail_ok(&env, "erin@localhost", "to-erin");
    env.wait_for(
        "erin's delivery to be deferred",
        Duration::from_secs(30),
        || env.log("send.log").contains("<erin@localhost> deferred"),
    );
    std::fs::remove_file(&ferry).unwrap();
    env.flush();
    env.wait_maildir(&env.mailbox("erin"), 1);
    env.wait_for("the result in the log", Duration::from_secs(10), || {
        env.log("send.log").contains("<erin@localhost> delivered")
    });
    let id = id_of(&env, "erin@localhost");
    let log = env.log("send.log");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("local-deliver[M:erin]: "))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        assert!(
            l.contains(&format!("local-deliver[M:erin]: {id}: delivery ")),
            "a line without the queue id {id}: {l}\n{log}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("to erin@localhost deferred: "))
            && lines
                .iter()
                .any(|l| l.contains("to erin@localhost delivered: ")),
        "{log}"
    );
    // One grep follows the message through send and its delivery.
    let all: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    assert!(
        all.iter().any(|l| l.contains("new message from"))
            && all.iter().any(|l| l.contains("done")),
        "{all:?}"
    );
}

/// Item 18: `1 message`, `1 recipient`, and plurals otherwise.
#[test]
fn send_counts_in_singular_and_plural() {
    let mut env = Env::new();
    env.mailbox_rcpt("fay").write(".ferry", "|\n");
    env.start_send();
    assert!(
        env.log("send.log")
            .contains("started: 0 messages in the queue, 0 recipients due or scheduled"),
        "{}",
        env.log("send.log")
    );
    sendmail_ok(&env, "fay@localhost", "to-fay");
    env.wait_for(
        "fay's delivery to be deferred",
        Duration::from_secs(30),
        || env.log("send.log").contains("<fay@localhost> deferred"),
    );
    let out = env.ferryctl(&["flush"]);
    assert_eq!(stdout(&out).trim(), "flushed: 1 recipient due now");
    // Persisted (deferred): after a restart send has 1 message with 1 recipient.
    env.wait_for(
        "the message to be persisted",
        Duration::from_secs(30),
        || env.queue_files().iter().any(|f| f.starts_with("info/")),
    );
    env.stop();
    std::fs::remove_file(env.path("send.log")).unwrap();
    env.start_send();
    let log = env.log("send.log");
    assert!(
        log.contains("started: 1 message in the queue, 1 recipient due or scheduled"),
        "{log}"
    );
    assert!(
        !log.contains(" 1 messages") && !log.contains(" 1 recipients"),
        "{log}"
    );
}
