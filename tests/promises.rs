//! What docs/SMTP.md promises about remote delivery and smtpd's limits, each observed: SIZE
//! (5.3.4), MAIL 5xx, tcpto, concurrencydomain, IPv6, concurrencyincoming, and the retry
//! state: the attempt count survives a restart of send, and a deferred message expires on a
//! later retry, locally and remotely.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::{Dns, Scripted};
use ferry_e2e::{Env, free_port, message, procs};
use std::io::Read;
use std::time::Duration;

fn sender_with(dns: &Dns, port: u16, controls: &[(&str, &str)]) -> Env {
    ferry_e2e::remote::sender(dns, port, controls)
}

fn sendmail(env: &Env, from: &str, to: &str, subject: &str) {
    let out = env.sendmail(&["-f", from, to], &message(subject, "promised\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bounces_text(env: &Env, maildir: &std::path::Path, n: usize) -> String {
    env.wait_maildir(maildir, n)
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

/// SIZE: a message larger than the server's SIZE fails at once with 5.3.4; MAIL 5xx fails
/// every recipient with the server's reply.
#[test]
fn size_and_mail_refusals_bounce_with_the_right_status() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=small.test,rx.small.test,10".into(),
        "--host-record=rx.small.test,127.0.0.2".into(),
        "--mx-host=nomail.test,rx.nomail.test,10".into(),
        "--host-record=rx.nomail.test,127.0.0.3".into(),
    ]);
    let env = sender_with(&dns, port, &[]);
    let small = Scripted::start(
        env.root.join("..").join("small"),
        "127.0.0.2",
        port,
        r#"{"ehlo": ["PIPELINING", "8BITMIME", "SIZE 100"]}"#,
    );
    let nomail = Scripted::start(
        env.root.join("..").join("nomail"),
        "127.0.0.3",
        port,
        r#"{"mail": "550 5.7.1 we do not talk to you"}"#,
    );
    let b = env.mailbox_rcpt("bsize");
    sendmail(&env, &b.addr(), "big@small.test", "too-big-for-size");
    let out = env.sendmail(
        &["-f", &b.addr(), "a@nomail.test", "b@nomail.test"],
        &message("mail-refused", "x\n"),
    );
    assert!(out.status.success());
    let t = bounces_text(&env, &b.maildir(), 2);
    assert!(
        t.contains("Final-Recipient: rfc822; big@small.test\nAction: failed\nStatus: 5.3.4"),
        "{t}"
    );
    for r in ["a@nomail.test", "b@nomail.test"] {
        assert!(
            t.contains(&format!(
                "Final-Recipient: rfc822; {r}\nAction: failed\nStatus: 5.7.1\nRemote-MTA: dns; rx.nomail.test\nDiagnostic-Code: smtp; 550 5.7.1 we do not talk to you"
            )),
            "{t}"
        );
    }
    // The big message never got as far as MAIL at the small server.
    assert!(small.transactions().is_empty());
    assert_eq!(nomail.transactions().len(), 1);
    env.wait_queue_empty();
}

/// tcpto: a server that timed out is skipped for the next message while the domain has
/// another (qmail's tcpto), so the next message does not wait for it again.
#[test]
fn a_server_that_timed_out_is_skipped_for_a_while() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=two.test,slow.two.test,10".into(),
        "--mx-host=two.test,live.two.test,20".into(),
        "--host-record=slow.two.test,127.0.0.2".into(),
        "--host-record=live.two.test,127.0.0.3".into(),
    ]);
    let env = sender_with(&dns, port, &[("timeoutremote", "2")]);
    let slow = Scripted::start(
        env.root.join("..").join("slow"),
        "127.0.0.2",
        port,
        r#"{"greeting_delay": 30}"#,
    );
    let live = Scripted::start(env.root.join("..").join("live"), "127.0.0.3", port, "{}");
    sendmail(&env, "s@test.example", "first@two.test", "first");
    env.wait_for("the first delivery", Duration::from_secs(30), || {
        live.received().len() == 1
    });
    assert_eq!(
        slow.connections().0,
        1,
        "the first message tried the first MX"
    );
    sendmail(&env, "s@test.example", "second@two.test", "second");
    env.wait_for("the second delivery", Duration::from_secs(30), || {
        live.received().len() == 2
    });
    assert_eq!(slow.connections().0, 1, "the timed-out MX was skipped");
    env.wait_queue_empty();
}

/// concurrencydomain: at most that many deliveries to one domain at once.
#[test]
fn concurrencydomain_limits_connections_to_a_domain() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=busy.test,rx.busy.test,10".into(),
        "--host-record=rx.busy.test,127.0.0.2".into(),
    ]);
    let env = sender_with(&dns, port, &[("concurrencydomain", "2")]);
    let rx = Scripted::start(
        env.root.join("..").join("rx"),
        "127.0.0.2",
        port,
        r#"{"end_delay": 0.3, "close_after_end": true}"#,
    );
    for i in 0..12 {
        sendmail(
            &env,
            "s@test.example",
            &format!("u{i}@busy.test"),
            &format!("busy{i}"),
        );
    }
    env.wait_for("twelve deliveries", Duration::from_secs(60), || {
        rx.received().len() == 12
    });
    let (n, max) = rx.connections();
    assert!(n >= 6, "{n} connections");
    assert!((1..=2).contains(&max), "{max} connections open at once");
    env.wait_queue_empty();
}

/// IPv6: an MX with only an AAAA record (::1) gets the mail.
#[test]
fn delivery_over_ipv6() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=six.test,rx.six.test,10".into(),
        "--host-record=rx.six.test,::1".into(),
    ]);
    let env = sender_with(&dns, port, &[]);
    let rx = Scripted::start(env.root.join("..").join("rx6"), "::1", port, "{}");
    sendmail(&env, "s@test.example", "v6@six.test", "over-ipv6");
    env.wait_for("the delivery", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    assert!(
        env.log("send.log")
            .contains(&format!("to=<v6@six.test> relay=rx.six.test[::1]:{port}")),
        "{}",
        env.log("send.log")
    );
    env.wait_queue_empty();
}

/// concurrencyincoming: one session more than allowed gets a prompt 421 4.3.2; when one
/// closes, the next is served.
#[test]
fn concurrencyincoming_refuses_the_one_too_many() {
    let mut env = Env::new();
    env.control("concurrencyincoming", "3");
    env.start_send();
    let port = env.start_smtpd();
    let mut open: Vec<ferry_e2e::smtp::Smtp> = (0..3)
        .map(|_| ferry_e2e::smtp::Smtp::connect(port))
        .collect();
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut said = String::new();
    let _ = extra.read_to_string(&mut said);
    assert!(said.starts_with("421 4.3.2"), "{said:?}");
    drop(open.pop());
    env.wait_for("a free slot", Duration::from_secs(10), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).is_ok() && &b == b"220"
    });
}

/// concurrencyperip: a client that is no relay client gets 421 4.7.0 past the limit (relay
/// clients, by default loopback, are exempt; here nobody is one).
#[test]
fn concurrencyperip_refuses_one_client_too_many_sessions() {
    let mut env = Env::new();
    env.control("relayclients", "# none");
    env.control("concurrencyperip", "2");
    env.start_send();
    let port = env.start_smtpd();
    let _two: Vec<ferry_e2e::smtp::Smtp> = (0..2)
        .map(|_| ferry_e2e::smtp::Smtp::connect(port))
        .collect();
    let mut third = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut said = String::new();
    let _ = third.read_to_string(&mut said);
    assert!(said.starts_with("421 4.7.0"), "{said:?}");
    // As a relay client the same address is not limited.
    drop(_two);
    env.control("relayclients", "127.0.0.1");
    let st = std::process::Command::new("s6-svc")
        .arg("-h")
        .arg(env.root.join("service/smtpd"))
        .status()
        .unwrap();
    assert!(st.success());
    env.wait_for("the reload", Duration::from_secs(10), || {
        env.log("smtpd.log").contains("reloaded")
    });
    let _three: Vec<ferry_e2e::smtp::Smtp> = (0..3)
        .map(|_| ferry_e2e::smtp::Smtp::connect(port))
        .collect();
}

fn attempts_of(env: &Env, addr: &str) -> u32 {
    let q = String::from_utf8_lossy(&env.ferryctl(&["queue"]).stdout).into_owned();
    q.lines()
        .find(|l| l.trim_start().starts_with(addr))
        .and_then(|l| l.split("deferred (").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The attempt count of a deferred recipient survives a restart of send, and a message that
/// is still deferred after queuelifetime bounces on its next retry (4.4.7 with the last error),
/// for a local and a remote recipient alike.
#[test]
fn attempts_survive_a_restart_and_expiry_happens_on_a_later_retry() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=later.test,rx.later.test,10".into(),
        "--host-record=rx.later.test,127.0.0.2".into(),
    ]);
    let env = sender_with(&dns, port, &[("queuelifetime", "8")]);
    let rx = Scripted::start(
        env.root.join("..").join("rx"),
        "127.0.0.2",
        port,
        r#"{"rcpt": {"*": "451 4.2.0 not now"}}"#,
    );
    let local = env.mailbox_rcpt("notyet");
    local.write(".ferry", "|echo busy; exit 111\n");
    let b = env.mailbox_rcpt("bexp");
    sendmail(&env, &b.addr(), &local.addr(), "local-expiry");
    sendmail(&env, &b.addr(), "far@later.test", "remote-expiry");
    env.wait_for("two deferrals", Duration::from_secs(30), || {
        attempts_of(&env, &local.addr()) >= 1 && attempts_of(&env, "far@later.test") >= 1
    });
    env.flush();
    env.wait_for("second attempts", Duration::from_secs(30), || {
        attempts_of(&env, &local.addr()) >= 2 && attempts_of(&env, "far@later.test") >= 2
    });
    let before = (
        attempts_of(&env, &local.addr()),
        attempts_of(&env, "far@later.test"),
    );
    // Restart send (s6 brings it back): the counts are read back from info/.
    let send_pid = procs::named(&env.root, "send")[0].pid;
    procs::kill(send_pid);
    env.wait_for("send to come back", Duration::from_secs(20), || {
        procs::named(&env.root, "send")
            .first()
            .is_some_and(|p| p.pid != send_pid)
    });
    let after = (
        attempts_of(&env, &local.addr()),
        attempts_of(&env, "far@later.test"),
    );
    assert!(
        after.0 >= before.0 && after.1 >= before.1,
        "{before:?} then {after:?}"
    );
    assert!(after.0 >= 2 && after.1 >= 2, "{after:?}");
    // Past queuelifetime, the next retry bounces both with 4.4.7 and the last error.
    env.wait_for("the expiry", Duration::from_secs(60), || {
        env.flush();
        std::thread::sleep(Duration::from_millis(500));
        env.maildir_new(&b.maildir()).len() >= 2
    });
    let t = bounces_text(&env, &b.maildir(), 2);
    assert!(
        t.contains(&format!(
            "Final-Recipient: rfc822; {}\nAction: failed\nStatus: 4.4.7",
            local.addr()
        )),
        "{t}"
    );
    assert!(
        t.contains("Final-Recipient: rfc822; far@later.test\nAction: failed\nStatus: 4.4.7"),
        "{t}"
    );
    assert!(t.contains("busy") && t.contains("451 4.2.0 not now"), "{t}");
    // (The scripted receiver answers 354 even with no recipient; ferry ends that DATA empty.)
    assert!(rx.received().iter().all(|m| !m.contains("promised")));
    env.wait_queue_empty();
}
