//! Hardening of remote delivery (issue 17, items 4, 5, 20, 21): what goes on the wire, how
//! long the final dot is waited for, mail routed back to ourselves, and SMTPUTF8 kept on relay.
//! Real DNS (dnsmasq on loopback), the scripted receiver of tests/peers, ferry's own smtpd.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::{Dns, Scripted};
use ferry_e2e::smtp::Smtp;
use ferry_e2e::{Env, free_port};
use std::time::Duration;

fn sender_with(dns: &Dns, port: u16, controls: &[(&str, &str)]) -> Env {
    ferry_e2e::remote::sender(dns, port, controls)
}

fn scripted(env: &Env, name: &str, ip: &str, port: u16, cfg: &str) -> Scripted {
    Scripted::start(env.root.join("..").join(name), ip, port, cfg)
}

fn sendmail(env: &Env, from: &str, to: &str, message: &[u8]) {
    let out = env.sendmail(&["-f", from, to], message);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The DATA bytes the receiver stored, without its X-Envelope line.
fn body_of(received: &str) -> &str {
    received.split_once("\r\n").map(|(_, b)| b).unwrap_or("")
}

/// Item 20: a bare CR (or LF) in a locally injected message is sent as a CR LF line end, so a
/// lax receiver cannot be smuggled into with "\r.\r".
#[test]
fn bare_cr_and_lf_never_reach_the_wire() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=cr.test,rx.cr.test,10".into(),
        "--host-record=rx.cr.test,127.0.0.2".into(),
    ]);
    let env = sender_with(&dns, port, &[]);
    let rx = scripted(&env, "rx", "127.0.0.2", port, "{}");
    let bounces = env.mailbox_rcpt("b20");
    sendmail(
        &env,
        &bounces.addr(),
        "joe@cr.test",
        b"Subject: cr\n\nline one\rhidden\r.\rMAIL FROM:<x@y>\rend\n",
    );
    env.wait_for("the delivery", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    let got = rx.received();
    let body = body_of(&got[0]).as_bytes();
    for (i, b) in body.iter().enumerate() {
        if *b == b'\r' {
            assert_eq!(
                body.get(i + 1),
                Some(&b'\n'),
                "bare CR on the wire: {body:?}"
            );
        }
        if *b == b'\n' {
            assert!(
                i > 0 && body[i - 1] == b'\r',
                "bare LF on the wire: {body:?}"
            );
        }
    }
    // The bare CRs became line ends; the lone dot was stuffed (and unstuffed by the receiver).
    let text = String::from_utf8_lossy(body);
    assert!(
        text.ends_with("line one\r\nhidden\r\n.\r\nMAIL FROM:<x@y>\r\nend\r\n"),
        "{text:?}"
    );
    env.wait_queue_empty();
}

/// Item 21: the reply to the final dot is waited for 10 minutes (RFC 5321 §4.5.3.2.6), not
/// timeoutremote: a slow scanner gets the message once, not again on the next try.
#[test]
fn final_dot_waits_longer_than_timeoutremote() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=slow.test,rx.slow.test,10".into(),
        "--host-record=rx.slow.test,127.0.0.2".into(),
    ]);
    let env = sender_with(&dns, port, &[("timeoutremote", "2")]);
    let rx = scripted(&env, "rx", "127.0.0.2", port, r#"{"end_delay": 5}"#);
    let bounces = env.mailbox_rcpt("b21");
    sendmail(
        &env,
        &bounces.addr(),
        "joe@slow.test",
        b"Subject: slow\n\nscanned slowly\n",
    );
    env.wait_for("the delivery", Duration::from_secs(60), || {
        env.log("send.log").contains("to=<joe@slow.test>")
    });
    let log = env.log("send.log");
    assert!(
        log.contains("to=<joe@slow.test> relay=rx.slow.test[127.0.0.2]")
            && log.contains("result=delivered"),
        "{log}"
    );
    assert!(!log.contains("result=deferred"), "{log}");
    env.wait_queue_empty();
    assert_eq!(rx.received().len(), 1);
}

/// Item 5: an MX that is this host (our smtplisten address and port, or named `me`) is a mail
/// loop: 5.4.6 "loops back to myself", bounced; as a backup MX we use only the better ones.
#[test]
fn mx_that_is_ourselves_is_a_loop() {
    // Our smtpd listens on 127.0.0.1:P, and remote servers are reached on port P too.
    let mut env = Env::new();
    let port = env.start_smtpd();
    let dns = Dns::start(&[
        "--mx-host=loop.test,mx.loop.test,10".into(),
        "--host-record=mx.loop.test,127.0.0.1".into(),
        "--mx-host=backup.test,rx.backup.test,10".into(),
        "--mx-host=backup.test,mx.loop.test,20".into(),
        "--host-record=rx.backup.test,127.0.0.2".into(),
        "--mx-host=named.test,mx.me.test,10".into(),
        "--host-record=mx.me.test,127.0.0.3".into(),
        "--host-record=implicit.test,127.0.0.1".into(),
    ]);
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("remoteport", &port.to_string());
    env.control("timeoutconnect", "5");
    env.control("timeoutremote", "10");
    env.control("me", "mx.me.test");
    env.start_send();
    let rx = scripted(&env, "rx", "127.0.0.2", port, "{}");
    let never = scripted(&env, "never", "127.0.0.3", port, "{}");
    let bounces = env.mailbox_rcpt("b5");
    for to in ["a@loop.test", "b@named.test", "c@implicit.test"] {
        sendmail(
            &env,
            &bounces.addr(),
            to,
            b"Subject: loop\n\nround and round\n",
        );
    }
    sendmail(
        &env,
        &bounces.addr(),
        "d@backup.test",
        b"Subject: backup\n\nto the better MX\n",
    );
    let got = env.wait_maildir(&bounces.maildir(), 3);
    let all: String = got
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    for (rcpt, domain) in [
        ("a@loop.test", "loop.test"),
        ("b@named.test", "named.test"),
        ("c@implicit.test", "implicit.test"),
    ] {
        assert!(
            all.contains(&format!(
                "Final-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: 5.4.6\n"
            )) && all.contains(&format!("mail for {domain} loops back to myself")),
            "{rcpt}: {all}"
        );
    }
    env.wait_for("the backup-MX delivery", Duration::from_secs(30), || {
        !rx.received().is_empty()
    });
    assert!(rx.received()[0].contains("to the better MX"));
    env.wait_queue_empty();
    assert!(never.received().is_empty());
    // Nothing came back in through our own smtpd.
    assert!(
        !env.log("smtpd.log").contains("loop.test"),
        "{}",
        env.log("smtpd.log")
    );
}

/// Item 4 (relay side): a message received with SMTPUTF8 is relayed with SMTPUTF8; one with
/// UTF-8 headers is not sent to a server without SMTPUTF8 (5.6.7, RFC 6531 §3.2); one that
/// turns out to be plain ASCII goes to such a server without the parameter.
#[test]
fn smtputf8_is_kept_on_relay() {
    let port = free_port();
    let dns = Dns::start(&[
        "--mx-host=utf.test,rx.utf.test,10".into(),
        "--host-record=rx.utf.test,127.0.0.2".into(),
        "--mx-host=old.test,rx.old.test,10".into(),
        "--host-record=rx.old.test,127.0.0.3".into(),
    ]);
    let mut env = sender_with(&dns, port, &[]);
    let smtpd = env.start_smtpd();
    let modern = scripted(
        &env,
        "modern",
        "127.0.0.2",
        port,
        r#"{"ehlo": ["PIPELINING", "8BITMIME", "SMTPUTF8"]}"#,
    );
    let old = scripted(
        &env,
        "old",
        "127.0.0.3",
        port,
        r#"{"ehlo": ["PIPELINING", "8BITMIME"]}"#,
    );
    let bounces = env.mailbox_rcpt("b4");
    let from = bounces.addr();
    let submit = |to: &str, subject: &str| {
        let mut c = Smtp::connect(smtpd);
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        let r = c.cmd(&format!("MAIL FROM:<{from}> SMTPUTF8"));
        assert_eq!(r.0, 250, "{r:?}");
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        assert_eq!(r.0, 250, "{r:?}");
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes());
        let r = c.cmd(".");
        assert_eq!(r.0, 250, "{r:?}");
    };
    submit("joe@utf.test", "caf\u{e9} to a modern server");
    submit("joe@old.test", "caf\u{e9} to an old server");
    submit("ann@old.test", "plain ascii");
    env.wait_for("the deliveries", Duration::from_secs(30), || {
        !modern.received().is_empty() && !old.received().is_empty()
    });
    let m = &modern.received()[0];
    assert!(
        m.starts_with(&format!(
            "X-Envelope: <{from}> BODY=8BITMIME SMTPUTF8 joe@utf.test\r\n"
        )),
        "{m}"
    );
    assert!(m.contains("Subject: caf\u{e9} to a modern server"), "{m}");
    let b = env.wait_maildir(&bounces.maildir(), 1);
    let t = String::from_utf8_lossy(&b[0]);
    assert!(
        t.contains("Final-Recipient: rfc822; joe@old.test\nAction: failed\nStatus: 5.6.7"),
        "{t}"
    );
    env.wait_queue_empty();
    let o = old.received();
    assert_eq!(o.len(), 1, "{o:?}");
    assert!(
        o[0].starts_with(&format!("X-Envelope: <{from}> ann@old.test\r\n")),
        "{}",
        o[0]
    );
}
