//! Required TLS (`tlsdestinations`) end to end: a certificate that chains to a trusted CA
//! (`tlsca`) and names the MX host delivers with verified=yes; a name mismatch, a server
//! without STARTTLS (4.7.4) and a broken handshake (4.7.5) defer and never fall back to
//! plaintext. Receivers: a second ferry with STARTTLS, and the scripted receiver.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::{Dns, Scripted};
use ferry_e2e::{Env, free_port, message};
use std::time::Duration;

#[test]
fn required_tls_verifies_and_never_falls_back() {
    // The receiver presents a CA-signed certificate for mx.good.test.
    let (ca, cert, key) = ferry_e2e::ca_and_leaf("mx.good.test");
    let mut receiver = Env::new();
    receiver.control(
        "virtualdomains",
        "localhost:mail/*\ngood.test:mail/*\nwrong.test:mail/*\n",
    );
    std::fs::write(receiver.root.join("control/tlscert"), &cert).unwrap();
    std::fs::write(receiver.root.join("control/tlskey"), &key).unwrap();
    receiver.start_send();
    let port = receiver.start_smtpd();
    let dns = Dns::start(&[
        "--mx-host=good.test,mx.good.test,10".into(),
        "--host-record=mx.good.test,127.0.0.1".into(),
        // The same server under a name its certificate does not have.
        "--mx-host=wrong.test,mx.wrong.test,10".into(),
        "--host-record=mx.wrong.test,127.0.0.1".into(),
        "--mx-host=plain.test,rx.plain.test,10".into(),
        "--host-record=rx.plain.test,127.0.0.2".into(),
    ]);
    let mut env = Env::new();
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("remoteport", &port.to_string());
    env.control("timeoutconnect", "5");
    env.control("timeoutremote", "10");
    env.control("tlsdestinations", "good.test\nwrong.test\nplain.test");
    std::fs::write(env.root.join("control/tlsca"), &ca).unwrap();
    env.start_send();
    // A plaintext-only receiver, and later one whose TLS handshake is garbage.
    let plain = Scripted::start(env.root.join("..").join("plain"), "127.0.0.2", port, "{}");
    for to in ["ok@good.test", "mismatch@wrong.test", "clear@plain.test"] {
        let out = env.sendmail(&["-f", "s@test.example", to], &message(to, "secret\n"));
        assert!(out.status.success());
    }
    let got = receiver.wait_maildir(&receiver.mailbox("ok"), 1);
    assert!(
        String::from_utf8_lossy(&got[0]).contains("with ESMTPS (TLSv1.3"),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
    env.wait_for("three outcomes", Duration::from_secs(30), || {
        let l = env.log("send.log");
        l.contains("<ok@good.test> delivered")
            && l.contains("<mismatch@wrong.test> deferred")
            && l.contains("<clear@plain.test> deferred")
    });
    let log = env.log("send.log");
    let line = |rcpt: &str| {
        log.lines()
            .find(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains("remote-deliver:"))
            .unwrap_or_else(|| panic!("{rcpt}: {log}"))
            .to_string()
    };
    assert!(line("ok@good.test").contains("verified=yes"), "{log}");
    assert!(line("mismatch@wrong.test").contains("4.7.5"), "{log}");
    assert!(line("clear@plain.test").contains("4.7.4"), "{log}");
    // Nothing went in the clear, and the mismatched name got nothing either.
    assert!(plain.received().is_empty());
    assert!(
        receiver
            .maildir_new(&receiver.mailbox("mismatch"))
            .is_empty()
    );

    // A broken handshake (garbage after 220 to STARTTLS) defers; no plaintext retry.
    plain.set("starttls", "true");
    plain.set("tls_garbage", "true");
    env.flush();
    env.wait_for("the handshake failure", Duration::from_secs(30), || {
        env.log("send.log")
            .lines()
            .any(|l| l.contains("to=<clear@plain.test>") && l.contains("4.7.5"))
    });
    assert!(plain.received().is_empty());
    assert!(
        !env.log("send.log").contains("trying again without TLS"),
        "{}",
        env.log("send.log")
    );
}

/// A broken tlsca is named: remote-deliver refuses to start rather than trust nothing.
#[test]
fn a_broken_tlsca_is_named() {
    let port = free_port();
    let dns = Dns::start(&[]);
    let mut env = Env::new();
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("remoteport", &port.to_string());
    std::fs::write(env.root.join("control/tlsca"), "not a certificate\n").unwrap();
    env.start_send();
    env.wait_for("the complaint", Duration::from_secs(20), || {
        env.log("send.log").contains("control/tlsca")
    });
}
