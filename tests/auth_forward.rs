//! Forwarding with SPF and DMARC intact (issue 10, item 6), end to end: mail that ferry
//! forwards to another domain, through an alias or an `&address` line of a `.ferry` file,
//! leaves with an SRS envelope sender in ferry's own domain and an ARC set sealed with the
//! forwarding domain's key; a far ferry (SPF, ARC) and dkimpy's arc_verify check what
//! arrives; a bounce to the SRS address goes back to the original sender, and SRS addresses
//! ferry did not make are refused at RCPT. DNS: dnsmasq on loopback (tests/authkit).

#![allow(clippy::unwrap_used)]

mod authkit;

use authkit::*;

/// The far ferry (a stranger's mail for far.test, verified and marked) and ours: a stranger
/// on 127.0.0.1, `list@virt.example` an alias for someone@far.test, keys for virt.example,
/// far.test's MX the far ferry.
fn sites() -> (Site, Site) {
    let far = Site::with(None, None, &[("virtualdomains", "far.test:mail/*")]);
    let far_port = far.port.to_string();
    let ours = Site::build(
        None,
        None,
        &[
            ("aliases", "list@virt.example: someone@far.test"),
            ("remoteport", &far_port),
            ("timeoutconnect", "5"),
        ],
        |env| install_keys(env, "virt.example"),
    );
    (far, ours)
}

/// Runs ROOT/bin/queue --forward ADDRESS as the test's user: the message on a pipe (fd 0),
/// the envelope on another (fd 1).
fn queue_forward(
    env: &ferry_e2e::Env,
    address: &str,
    sender: &str,
    rcpt: &str,
    msg: &[u8],
) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (env_r, env_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = Command::new(env.root.join("bin/queue"))
        .args(["--forward", address])
        .stdin(Stdio::piped())
        .stdout(Stdio::from(env_r))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(msg).unwrap();
    let mut w = std::fs::File::from(env_w);
    w.write_all(format!("F{sender}\0T{rcpt}\0\0").as_bytes())
        .unwrap();
    drop(w);
    child.wait_with_output().unwrap()
}

/// The envelope sender the far ferry got (its Return-Path).
fn return_path(m: &str) -> String {
    let rp = all(m, "Return-Path");
    assert_eq!(rp.len(), 1, "{m}");
    rp[0].trim_matches(['<', '>']).to_string()
}

/// dkimpy's ARC verdict on `m`, with our sealing key as the only DNS.
fn dkimpy_arc(dir: &std::path::Path, m: &str) -> String {
    let f = tempfile::NamedTempFile::new_in(dir)
        .unwrap()
        .into_temp_path();
    std::fs::write(&f, m).unwrap();
    python(&[
        "arcverify",
        f.to_str().unwrap(),
        &format!("rsa._domainkey.virt.example={}", dkim_txt("rsa")),
    ])
}

/// What a forwarded message must show at the far ferry: an SRS sender in test.example that
/// passes SPF there, and our ARC set (i=1, cv=none) carrying what we saw on receipt, which
/// the far ferry and dkimpy both verify.
fn assert_forwarded(far: &Site, m: &str, original: &str) {
    let sender = return_path(m);
    assert!(
        sender.starts_with("SRS0=")
            && sender.ends_with(&format!(
                "={}={}@test.example",
                original.split('@').nth(1).unwrap(),
                original.split('@').next().unwrap()
            )),
        "{sender}"
    );
    let ar = ours(m);
    assert_has(
        &ar,
        &[
            &format!("smtp.mailfrom=\"{sender}\""),
            "arc=pass smtp.remote-ip=127.0.0.1",
        ],
    );
    assert!(ar.contains("spf=pass"), "{ar}");
    let aar = all(m, "ARC-Authentication-Results");
    assert_eq!(aar.len(), 1, "{m}");
    assert_has(
        &aar[0],
        &[
            "i=1; test.example;",
            &format!("smtp.mailfrom={original}"),
            "spf=pass",
        ],
    );
    let seal = all(m, "ARC-Seal").join(" ");
    assert_has(&seal, &["i=1;", "cv=none", "d=virt.example", "s=rsa"]);
    let ams = all(m, "ARC-Message-Signature").join(" ");
    assert_has(&ams, &["i=1;", "c=relaxed/relaxed", "d=virt.example"]);
    let v = dkimpy_arc(&far.scratch, m);
    assert!(v.starts_with("pass"), "dkimpy: {v}\n{m}");
    // Changed after sealing, the chain fails for dkimpy too.
    let changed = m.replace("pay 10 euros", "pay 1000 euros");
    let v = dkimpy_arc(&far.scratch, &changed);
    assert!(v.starts_with("fail"), "dkimpy on a changed body: {v}");
}

#[test]
fn an_alias_to_another_domain_forwards_with_srs_and_an_arc_seal() {
    let (far, mut ours_site) = sites();
    let from = "a@spf-aligned.test";
    let r = ours_site.send(
        "client.test",
        from,
        "list@virt.example",
        &message(from, "via-alias"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = far.delivered("someone");
    assert_forwarded(&far, &m, from);
    // The ARC set carries our verdict on receipt: DMARC passed here, through SPF.
    let aar = all(&m, "ARC-Authentication-Results").remove(0);
    assert_has(&aar, &["dmarc=pass header.from=spf-aligned.test"]);
    let log = ours_site.env.log("send.log");
    assert!(
        log.contains("<list@virt.example> → someone@far.test"),
        "{log}"
    );
}

#[test]
fn a_dot_ferry_forward_goes_out_with_srs_and_an_arc_seal() {
    let (far, mut ours_site) = sites();
    let fan = ours_site.env.mailbox_rcpt("fan");
    fan.write(".ferry", "&someone@far.test\n");
    let from = "a@spf-aligned.test";
    let r = ours_site.send(
        "client.test",
        from,
        "fan@virt.example",
        &message(from, "via-dot-ferry"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = far.delivered("someone");
    assert_forwarded(&far, &m, from);
    assert_has(&m, &["Delivered-To: fan@virt.example"]);

    // A local user who runs queue --forward himself, with a message of his making (a pipe,
    // not lspawn's sealed copy), gets an SRS sender but no seal: what the message claims
    // to have been checked here was not.
    let forged = format!(
        "Authentication-Results: test.example; spf=pass smtp.mailfrom={from}; arc=none; dmarc=pass\n{}",
        message(from, "forged")
    );
    let out = queue_forward(
        &ours_site.env,
        "fan@virt.example",
        from,
        "someone@far.test",
        forged.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = far.env.wait_maildir(&far.env.mailbox("someone"), 2);
    let m = got
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .find(|m| m.contains("Subject: forged"))
        .unwrap();
    assert!(return_path(&m).starts_with("SRS0="), "{m}");
    assert!(all(&m, "ARC-Seal").is_empty(), "{m}");
}

#[test]
fn bounces_to_srs_addresses_go_back_and_forged_ones_are_refused() {
    let (far, mut ours_site) = sites();
    // Mail from far.test through the alias comes back to far.test as someone's.
    let from = "orig@far.test";
    let r = ours_site.send(
        "client.test",
        from,
        "list@virt.example",
        &message(from, "to-bounce"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let srs = return_path(&far.delivered("someone"));
    assert!(
        srs.starts_with("SRS0=") && srs.ends_with("=far.test=orig@test.example"),
        "{srs}"
    );

    // The bounce, from the null sender to the SRS address: accepted, and it reaches orig.
    let r = ours_site.send(
        "mx.far.test",
        "",
        &srs,
        &message("MAILER-DAEMON@far.test", "bounce"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = far.delivered("orig");
    assert_has(&m, &["Subject: bounce"]);
    assert_eq!(return_path(&m), "");

    // Not made here: another hash, or another original address with the same hash.
    let (local, _) = srs.split_once('@').unwrap();
    let mut parts: Vec<String> = local.split('=').map(str::to_string).collect();
    parts[1] = if parts[1] == "aaaaaa" {
        "bbbbbb"
    } else {
        "aaaaaa"
    }
    .into();
    let bad_hash = format!("{}@test.example", parts.join("="));
    let other_user = srs.replace("=orig@", "=root@");
    for rcpt in [
        bad_hash.as_str(),
        other_user.as_str(),
        "SRS0=abc@test.example",
    ] {
        let r = ours_site.send(
            "mx.far.test",
            "",
            rcpt,
            &message("x@far.test", "forged"),
            &[],
        );
        assert!(r.starts_with("RCPT 550 5.1.1"), "{rcpt}: {r}");
    }
}
