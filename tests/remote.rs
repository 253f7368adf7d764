//! Remote delivery end to end: a real DNS server on loopback (dnsmasq), real receivers (a
//! second ferry, the scripted receiver of tests/peers, Postfix's smtp-sink), and each case
//! ending in the right state: delivered, deferred, bounced with the server's diagnostic, or
//! moved on to the next MX.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::{Dns, Scripted};
use ferry_e2e::{Env, free_port, message};
use std::time::Duration;

/// A sender: a ferry root whose remote deliveries use `dns` and go to port `port` by MX.
fn sender(dns: &Dns, port: u16) -> Env {
    sender_with(dns, port, &[])
}

fn sender_with(dns: &Dns, port: u16, controls: &[(&str, &str)]) -> Env {
    ferry_e2e::remote::sender(dns, port, controls)
}

fn send(env: &Env, from: &str, to: &[&str], subject: &str) {
    let mut args = vec!["-f", from];
    args.extend_from_slice(to);
    let out = env.sendmail(
        &args,
        &message(subject, &format!("body of {subject}\n.dot line\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scripted(env: &Env, name: &str, ip: &str, port: u16, cfg: &str) -> Scripted {
    Scripted::start(env.root.join("..").join(name), ip, port, cfg)
}

#[test]
fn to_a_second_ferry_byte_exact_by_mx() {
    let mut receiver = Env::new();
    receiver.control("virtualdomains", "localhost:mail/*\nb.test:mail/*\n");
    receiver.start_send();
    let port = receiver.start_smtpd();
    let dns = Dns::start(&[
        "--mx-host=b.test,mx.b.test,10".into(),
        "--host-record=mx.b.test,127.0.0.1".into(),
    ]);
    let env = sender(&dns, port);
    // Every header sendmail would add is there, so the message must arrive byte for byte.
    let mut sent_bytes = message("across", "body of across\n.dot line\n");
    sent_bytes.splice(
        0..0,
        b"Date: Tue, 1 Dec 2026 10:00:00 +0000\n".iter().copied(),
    );
    let out = env.sendmail(&["-f", "ann@test.example", "bob@b.test"], &sent_bytes);
    assert!(out.status.success());
    let got = receiver.wait_maildir(&receiver.mailbox("bob"), 1);
    let t = String::from_utf8_lossy(&got[0]).into_owned();
    // The whole path: the original Received of queue, then the receiver's, the body intact.
    assert!(
        t.contains(
            "Received: from test.example ([127.0.0.1])\n\tby test.example (ferry) with ESMTP"
        ),
        "{t}"
    );
    assert!(t.ends_with("\n\nbody of across\n.dot line\n"), "{t}");
    assert_eq!(
        String::from_utf8_lossy(&ferry_e2e::strip_trace(&got[0])),
        String::from_utf8_lossy(&sent_bytes)
    );
    env.wait_queue_empty();
    let log = env.log("send.log");
    assert!(
        log.contains("to=<bob@b.test> relay=mx.b.test[127.0.0.1]:")
            && log.contains("result=delivered"),
        "{log}"
    );
}

#[test]
fn mx_order_implicit_mx_null_mx_and_nxdomain() {
    let port = free_port();
    let dns = Dns::start(&[
        // Preference 10 refuses connections (nothing listens on 127.0.0.3), 20 takes the mail.
        "--mx-host=two.test,dead.two.test,10".into(),
        "--mx-host=two.test,live.two.test,20".into(),
        "--host-record=dead.two.test,127.0.0.3".into(),
        "--host-record=live.two.test,127.0.0.2".into(),
        // No MX: the domain's own address.
        "--host-record=nomx.test,127.0.0.2".into(),
        // Null MX (RFC 7505): preference 0, exchange ".".
        "--dns-rr=nullmx.test,15,000000".into(),
    ]);
    let env = sender(&dns, port);
    let rx = scripted(&env, "rx", "127.0.0.2", port, "{}");
    let bounces = env.mailbox_rcpt("bounces");
    send(&env, &bounces.addr(), &["a@two.test"], "second-mx");
    send(&env, &bounces.addr(), &["b@nomx.test"], "implicit-mx");
    send(&env, &bounces.addr(), &["c@nullmx.test"], "null-mx");
    send(&env, &bounces.addr(), &["d@nosuchdomain.test"], "nxdomain");
    env.wait_for(
        "two messages at the receiver",
        Duration::from_secs(30),
        || rx.received().len() >= 2,
    );
    let got = rx.received().join("\n");
    assert!(
        got.contains("Subject: second-mx") && got.contains("Subject: implicit-mx"),
        "{got}"
    );
    let bounced = env.wait_maildir(&bounces.maildir(), 2);
    let all: String = bounced
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        all.contains("Final-Recipient: rfc822; c@nullmx.test") && all.contains("Status: 5.1.10"),
        "{all}"
    );
    assert!(
        all.contains("Final-Recipient: rfc822; d@nosuchdomain.test")
            && all.contains("Status: 5.1.2"),
        "{all}"
    );
    env.wait_queue_empty();
    assert!(
        env.log("send.log").contains("dead.two.test[127.0.0.3]"),
        "the first MX was tried"
    );
}

#[test]
fn dns_failure_is_temporary() {
    // slow.test is forwarded to a port where nobody answers: the lookup fails, mail waits.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sport = silent.local_addr().unwrap().port();
    let dns = Dns::start(&[format!("--server=/slow.test/127.0.0.1#{sport}")]);
    let env = sender(&dns, free_port());
    send(&env, "s@test.example", &["x@slow.test"], "dns-timeout");
    env.wait_for("the deferral", Duration::from_secs(60), || {
        env.log("send.log").contains("<x@slow.test> deferred")
    });
    let q = String::from_utf8_lossy(&env.ferryctl(&["queue"]).stdout).into_owned();
    assert!(q.contains("x@slow.test [remote] deferred"), "{q}");
    // Deferred because of DNS, not for some other reason.
    let log = env.log("send.log");
    let line = log
        .lines()
        .find(|l| l.contains("to=<x@slow.test>") && l.contains("result=deferred"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("4.4.3 DNS lookup of MX for slow.test failed")
            || line.contains("DNS lookups for slow.test took longer"),
        "{line}"
    );
    drop(silent);
}

#[test]
fn replies_at_each_step_decide_each_recipient() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=s.test,rx.s.test,10".into(),
        "--host-record=rx.s.test,127.0.0.2".into(),
    ]);
    let env = sender(&dns, port);
    let rx = scripted(
        &env,
        "rx",
        "127.0.0.2",
        port,
        r#"{"rcpt": {"*": "250 2.1.5 ok", "gone@s.test": "550 5.1.1 no such user here", "later@s.test": "451 4.2.0 try later"}}"#,
    );
    let bounces = env.mailbox_rcpt("b2");
    // One transaction for all three recipients: one delivered, one bounced, one deferred.
    send(
        &env,
        &bounces.addr(),
        &["ok@s.test", "gone@s.test", "later@s.test"],
        "mixed",
    );
    env.wait_for("the delivery", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    assert!(
        rx.received()[0].starts_with("X-Envelope: <b2@virt.example> ok@s.test\r\n"),
        "{:?}",
        rx.received()
    );
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log").contains("<later@s.test> deferred")
    });
    // Later the server accepts it: delivered on the next try.
    rx.set("rcpt", r#"{"*": "250 2.1.5 ok"}"#);
    env.flush();
    env.wait_for("the retry", Duration::from_secs(30), || {
        rx.received().len() >= 2
    });
    // When the message is done, the bounce carries the remote server's diagnostic for the one
    // that failed (and nothing about the ones delivered).
    let b = env.wait_maildir(&bounces.maildir(), 1);
    let t = String::from_utf8_lossy(&b[0]);
    assert!(t.contains("Final-Recipient: rfc822; gone@s.test\nAction: failed\nStatus: 5.1.1\nRemote-MTA: dns; rx.s.test\nDiagnostic-Code: smtp; 550 5.1.1"), "{t}");
    assert!(!t.contains("Final-Recipient: rfc822; later@s.test"));
    env.wait_queue_empty();

    // 4xx at MAIL, 5xx at DATA, 4xx after the dot, a drop in the middle of DATA.
    for (key, value, outcome) in [
        ("mail", r#""452 4.3.1 full""#, "deferred"),
        ("data", r#""554 5.6.0 no thanks""#, "failed"),
        ("end", r#""451 4.3.0 later""#, "deferred"),
        ("drop_after_data_bytes", "10", "deferred"),
        ("greeting", r#""554 5.7.1 go away""#, "deferred"),
    ] {
        rx.set("mail", r#""250 ok""#);
        rx.set("data", r#""354 go""#);
        rx.set("end", r#""250 ok""#);
        rx.set("drop_after_data_bytes", "-1");
        rx.set("greeting", r#""220 hi""#);
        rx.set(key, value);
        let subject = format!("step-{key}");
        let to = format!("{key}@s.test");
        send(&env, "s@test.example", &[&to], &subject);
        env.wait_for(&subject, Duration::from_secs(30), || {
            env.log("send.log").contains(&format!("<{to}> {outcome}"))
        });
    }
}

#[test]
fn pipelining_and_extensions_offered_or_not() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=p.test,rx.p.test,10".into(),
        "--host-record=rx.p.test,127.0.0.2".into(),
    ]);
    let env = sender(&dns, port);
    // No PIPELINING, no 8BITMIME, no EHLO at all (HELO only): plain commands work.
    let rx = scripted(
        &env,
        "rx",
        "127.0.0.2",
        port,
        r#"{"ehlo_reply": "502 5.5.1 no EHLO here", "close_after_end": true}"#,
    );
    send(
        &env,
        "s@test.example",
        &["a@p.test", "b@p.test"],
        "helo-only",
    );
    env.wait_for("the delivery", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    assert!(
        rx.received()[0].starts_with("X-Envelope: <s@test.example> a@p.test b@p.test"),
        "{:?}",
        rx.received()
    );
    // Without PIPELINING each command waited for its reply.
    assert_eq!(rx.transactions(), ["MAIL pipelined=no"]);
    // With PIPELINING, MAIL, RCPT and DATA go in one write.
    rx.set("ehlo", r#"["PIPELINING", "8BITMIME"]"#);
    rx.set("ehlo_reply", "null");
    send(
        &env,
        "s@test.example",
        &["d@p.test", "e@p.test"],
        "pipelined",
    );
    env.wait_for("the pipelined delivery", Duration::from_secs(30), || {
        rx.received().len() == 2
    });
    assert_eq!(
        rx.transactions(),
        ["MAIL pipelined=no", "MAIL pipelined=yes"]
    );
    // An 8-bit message to a server without 8BITMIME bounces (RFC 6152), not garbled.
    rx.set("ehlo", r#"["PIPELINING"]"#);
    rx.set("ehlo_reply", "null");
    let out = env.sendmail(
        &["-f", "s@test.example", "c@p.test"],
        "Subject: 8bit\n\nh\u{e9}llo\n".as_bytes(),
    );
    assert!(out.status.success());
    env.wait_for("the failure", Duration::from_secs(30), || {
        env.log("send.log").contains("<c@p.test> failed")
    });
    assert!(env.log("send.log").contains("5.6.3"));
}

#[test]
fn starttls_opportunistic_broken_and_required() {
    let mut receiver = Env::new();
    receiver.control(
        "virtualdomains",
        "localhost:mail/*\nt.test:mail/*\nreq.test:mail/*\n",
    );
    ferry_e2e::write_test_certificate(&receiver.root, "mx.t.test");
    receiver.start_send();
    let port = receiver.start_smtpd();
    let dns = Dns::start(&[
        "--mx-host=t.test,mx.t.test,10".into(),
        "--mx-host=req.test,mx.t.test,10".into(),
        "--host-record=mx.t.test,127.0.0.1".into(),
        "--mx-host=broken.test,rx.broken.test,10".into(),
        "--host-record=rx.broken.test,127.0.0.2".into(),
    ]);
    let env = sender_with(&dns, port, &[("tlsdestinations", "req.test")]);
    // Opportunistic TLS: any certificate, a real handshake.
    send(&env, "s@test.example", &["tls@t.test"], "opportunistic");
    let got = receiver.wait_maildir(&receiver.mailbox("tls"), 1);
    assert!(
        String::from_utf8_lossy(&got[0]).contains("with ESMTPS (TLSv1.3"),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
    env.wait_for("the log line", Duration::from_secs(10), || {
        env.log("send.log").contains("tls=TLSv1.3")
    });
    // A broken handshake: retried in plaintext, delivered.
    let rx = scripted(
        &env,
        "broken",
        "127.0.0.2",
        port,
        r#"{"starttls": true, "tls_garbage": true}"#,
    );
    send(
        &env,
        "s@test.example",
        &["x@broken.test"],
        "after-broken-tls",
    );
    env.wait_for("the plaintext retry", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    // TLS required but the certificate does not verify (self-signed): deferred, never in clear.
    send(&env, "s@test.example", &["must@req.test"], "required");
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log").contains("<must@req.test> deferred")
    });
    assert!(
        env.log("send.log").contains("4.7.5 TLS required"),
        "{}",
        env.log("send.log")
    );
    assert!(!receiver.mailbox("must").exists());
}

#[test]
fn smtp_sink_takes_a_volume_of_mail_with_connection_reuse() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=sink.test,sink.sink.test,10".into(),
        "--host-record=sink.sink.test,127.0.0.1".into(),
    ]);
    let _sink = ferry_e2e::smtp_sink(port, &[], "100");
    let env = sender(&dns, port);
    for i in 0..200 {
        send(
            &env,
            "s@test.example",
            &[&format!("u{}@sink.test", i % 7), &format!("v{i}@sink.test")],
            &format!("vol{i}"),
        );
    }
    env.wait_queue_empty();
    let log = env.log("send.log");
    assert_eq!(log.matches("> delivered: 250").count(), 400, "{log}");
    // Connections were reused: most transactions ran on a kept connection (conn_use > 1),
    // so far fewer connections than the 200 messages were opened.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remote-deliver:") && l.contains("result=delivered"))
        .collect();
    let first_uses = lines.iter().filter(|l| l.contains(" conn_use=1 ")).count();
    let reused = lines
        .iter()
        .filter(|l| !l.contains(" conn_use=1 ") && l.contains(" conn_use="))
        .count();
    assert_eq!(lines.len(), 400, "{log}");
    assert!(
        reused > first_uses,
        "{first_uses} first uses, {reused} reused:\n{log}"
    );
}

#[test]
fn reload_makes_new_routes_count() {
    let port = free_port();
    let dns = Dns::start(&[]);
    // First the route points at an address where nothing listens: the mail waits.
    let env = sender_with(&dns, port, &[("smtproutes", "moved.test:[127.0.0.3]")]);
    let rx = scripted(&env, "rx", "127.0.0.2", port, "{}");
    send(&env, "s@test.example", &["x@moved.test"], "rerouted");
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log").contains("<x@moved.test> deferred")
    });
    // The route changes; HUP (ferryctl reload) makes send and the remote workers read it.
    env.control("smtproutes", &format!("moved.test:[127.0.0.2]:{port}"));
    let out = std::process::Command::new("s6-svc")
        .arg("-h")
        .arg(env.path("service/send"))
        .output()
        .unwrap();
    assert!(out.status.success());
    env.wait_for("the reload", Duration::from_secs(10), || {
        env.log("send.log").contains("workers restarted")
    });
    env.flush();
    env.wait_for("the delivery", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    env.wait_queue_empty();
}

#[test]
fn kept_connections_to_a_restarted_server_are_replaced() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=k.test,rx.k.test,10".into(),
        "--host-record=rx.k.test,127.0.0.2".into(),
    ]);
    let env = sender(&dns, port);
    let rx = scripted(&env, "rx1", "127.0.0.2", port, "{}");
    // Several at once, so that several connections are kept.
    for i in 0..6 {
        send(
            &env,
            "s@test.example",
            &[&format!("a{i}@k.test")],
            &format!("before-{i}"),
        );
    }
    env.wait_for("six deliveries", Duration::from_secs(30), || {
        rx.received().len() >= 6
    });
    // The server restarts: every kept connection is now dead.
    drop(rx);
    let rx = scripted(&env, "rx2", "127.0.0.2", port, "{}");
    send(&env, "s@test.example", &["after@k.test"], "after-restart");
    env.wait_for("the delivery", Duration::from_secs(20), || {
        !rx.received().is_empty()
    });
    assert!(
        !env.log("send.log").contains("<after@k.test> deferred"),
        "{}",
        env.log("send.log")
    );
}
