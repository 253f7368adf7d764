//! Mail authentication (issue 10), end to end: SPF, DKIM and DMARC of mail received on port 25
//! (authverify, its Authentication-Results on top, the policies spfpolicy and dmarcpolicy
//! with their SMTP replies), forged Authentication-Results of ours removed, and DKIM signing
//! of our own mail (local injection, relay clients, authenticated users) checked by an
//! independent verifier. DNS is dnsmasq on loopback (control/resolvconf); the other side is
//! Python: smtplib as the SMTP client and dkimpy (Debian python3-dkim, run by /usr/bin/python3)
//! to sign what ferry verifies and to verify what ferry signs, rsa-sha256 and ed25519-sha256.
//! Keys are made with openssl for each test process.

#![allow(clippy::unwrap_used)]

mod authkit;

use authkit::*;
use ferry_e2e::{Env, is_root};

#[test]
fn spf_results_are_marked() {
    let mut site = Site::new(None, None);
    let cases = [
        (
            "pass",
            "pass.test",
            "pass (test.example: domain of a@pass.test designates 127.0.0.1 as permitted sender)",
        ),
        (
            "fail",
            "fail.test",
            "fail (test.example: domain of a@fail.test does not designate 127.0.0.1 as permitted sender)",
        ),
        (
            "softfail",
            "soft.test",
            "softfail (test.example: domain of a@soft.test reports soft fail for 127.0.0.1)",
        ),
        (
            "neutral",
            "neutral.test",
            "neutral (test.example: domain of a@neutral.test reports neutral for 127.0.0.1)",
        ),
        (
            "none",
            "none.test",
            "none (test.example: no SPF records found for a@none.test)",
        ),
        (
            "permerror",
            "perm.test",
            "permerror (test.example: unable to verify SPF record for a@perm.test)",
        ),
        (
            "permerror2",
            "syntax.test",
            "permerror (test.example: unable to verify SPF record for a@syntax.test)",
        ),
        (
            "permerror3",
            "include.test",
            "permerror (test.example: unable to verify SPF record for a@include.test)",
        ),
        (
            "temperror",
            "tmp.test",
            "temperror (test.example: temporary dns error validating a@tmp.test)",
        ),
    ];
    for (word, domain, _) in &cases {
        let from = format!("a@{domain}");
        let r = site.send(
            "client.test",
            &from,
            &format!("spf-{word}@localhost"),
            &message(&from, word),
            &[],
        );
        assert!(r.starts_with("250 "), "{word}: {r}");
    }
    for (word, domain, text) in &cases {
        let m = site.delivered(&format!("spf-{word}"));
        let ar = ours(&m);
        assert_has(&ar, &[&format!("spf={text} smtp.mailfrom=a@{domain}")]);
        assert_eq!(all(&m, "Authentication-Results").len(), 1, "{m}");
        assert!(!m.contains("X-Ferry-Quarantine"), "{m}");
    }
    let log = site.env.log("smtpd.log");
    assert_has(
        &log,
        &[
            "auth=(spf=pass (pass.test)",
            "auth=(spf=temperror (tmp.test)",
        ],
    );
    // The verifier runs as ferryv (as root; single-user, as the one user).
    let want = if is_root() {
        nix::unistd::User::from_name(ferry_common::users::VERIFY)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    } else {
        nix::unistd::getuid().as_raw()
    };
    let verifiers: Vec<u32> = ferry_e2e::supervision::processes_of(&site.env.root)
        .into_iter()
        .filter(|(_, name)| name == "authverify")
        .map(|(pid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            uids.split_whitespace().nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(verifiers, [want]);
}

#[test]
fn spf_enforced_refuses_fail_defers_temperror_and_takes_softfail() {
    let mut site = Site::new(Some("enforce"), None);
    let send = |site: &mut Site, domain: &str, rcpt: &str| {
        let from = format!("a@{domain}");
        site.send(
            "client.test",
            &from,
            &format!("{rcpt}@localhost"),
            &message(&from, rcpt),
            &[],
        )
    };
    let r = send(&mut site, "fail.test", "refused");
    assert!(
        r.starts_with("550 5.7.23 SPF of fail.test does not allow this host"),
        "{r}"
    );
    let r = send(&mut site, "tmp.test", "deferred");
    assert!(
        r.starts_with("451 4.7.24 SPF of tmp.test cannot be checked now"),
        "{r}"
    );
    let r = send(&mut site, "soft.test", "soft");
    assert!(r.starts_with("250 "), "{r}");
    let r = send(&mut site, "perm.test", "perm");
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("soft");
    assert_has(
        &ours(&m),
        &[
            "spf=softfail (test.example: domain of a@soft.test reports soft fail for 127.0.0.1) smtp.mailfrom=a@soft.test",
        ],
    );
    site.delivered("perm");
    site.env.wait_queue_empty();
    for n in ["refused", "deferred"] {
        assert!(
            site.env.maildir_new(&site.env.mailbox(n)).is_empty(),
            "{n} was delivered"
        );
    }
    let log = site.env.log("smtpd.log");
    assert_has(&log, &["from=<a@fail.test> rcpts=1", "5.7.23", "4.7.24"]);
}

#[test]
fn dkim_signatures_of_dkimpy_are_verified() {
    let mut site = Site::new(None, None);
    let rsa = site.key_file(&keys().rsa_pkcs1);
    let ed = site.key_file(keys().ed_seed.as_bytes());
    let from = "a@dkim.test";
    let sign_rsa = ["--sign", "rsa-sha256", "rsa", "dkim.test", &rsa, "now"];
    let sign_ed = ["--sign", "ed25519-sha256", "ed", "dkim.test", &ed, "now"];
    let both: Vec<&str> = sign_rsa.iter().chain(sign_ed.iter()).copied().collect();
    let gone = ["--sign", "rsa-sha256", "gone", "dkim.test", &rsa, "now"];
    let expired = ["--sign", "rsa-sha256", "rsa", "dkim.test", &rsa, "expired"];
    let body_rsa = [&sign_rsa[..], &["--tamper", "body"]].concat();
    let body_ed = [&sign_ed[..], &["--tamper", "body"]].concat();
    let subject_rsa = [&sign_rsa[..], &["--tamper", "subject"]].concat();
    let subject_ed = [&sign_ed[..], &["--tamper", "subject"]].concat();
    // The other canonicalisations (the stored message has LF line ends, signed with CR LF).
    let simple = [&["--canon", "simple/simple"][..], &sign_rsa[..]].concat();
    let relaxed_simple = [&["--canon", "relaxed/simple"][..], &sign_ed[..]].concat();
    let cases: Vec<(&str, &[&str], Vec<&str>)> = vec![
        (
            "rsa",
            &sign_rsa,
            vec!["dkim=pass header.i=@dkim.test header.s=rsa header.b="],
        ),
        (
            "ed",
            &sign_ed,
            vec!["dkim=pass header.i=@dkim.test header.s=ed header.b="],
        ),
        (
            "both",
            &both,
            vec![
                "dkim=pass header.i=@dkim.test header.s=ed header.b=",
                "dkim=pass header.i=@dkim.test header.s=rsa header.b=",
            ],
        ),
        (
            "body-rsa",
            &body_rsa,
            vec!["dkim=neutral (body hash did not verify) header.i=@dkim.test header.s=rsa"],
        ),
        (
            "body-ed",
            &body_ed,
            vec!["dkim=neutral (body hash did not verify) header.i=@dkim.test header.s=ed"],
        ),
        (
            "subject-rsa",
            &subject_rsa,
            vec!["dkim=fail (verification failed) header.i=@dkim.test header.s=rsa"],
        ),
        (
            "subject-ed",
            &subject_ed,
            vec!["dkim=fail (verification failed) header.i=@dkim.test header.s=ed"],
        ),
        (
            "gone",
            &gone,
            vec!["dkim=permerror (dns record not found) header.i=@dkim.test header.s=gone"],
        ),
        (
            "expired",
            &expired,
            vec!["dkim=neutral (signature error) header.i=@dkim.test header.s=rsa"],
        ),
        // Not signed: mail-auth reports no dkim= at all (RFC 8601 allows leaving it out).
        ("unsigned", &[], vec![]),
        (
            "simple",
            &simple,
            vec!["dkim=pass header.i=@dkim.test header.s=rsa header.b="],
        ),
        (
            "relaxed-simple",
            &relaxed_simple,
            vec!["dkim=pass header.i=@dkim.test header.s=ed header.b="],
        ),
    ];
    for (name, opts, _) in &cases {
        let r = site.send(
            "client.test",
            from,
            &format!("dkim-{name}@localhost"),
            &message(from, name),
            opts,
        );
        assert!(r.starts_with("250 "), "{name}: {r}");
    }
    for (name, _, want) in &cases {
        let m = site.delivered(&format!("dkim-{name}"));
        let ar = ours(&m);
        assert_has(&ar, &want.iter().map(|w| w.as_ref()).collect::<Vec<&str>>());
        assert_eq!(ar.matches("dkim=").count(), want.len(), "{name}: {ar}");
        if !["rsa", "ed", "both", "simple", "relaxed-simple"].contains(name) {
            assert!(!ar.contains("dkim=pass"), "{name}: {ar}");
        }
    }
}

#[test]
fn dmarc_marked_passes_by_spf_or_dkim_alignment_and_marks_failures() {
    let mut site = Site::new(None, None);
    dmarc_cases(&mut site, false);
}

#[test]
fn dmarc_enforced_rejects_quarantines_and_defers() {
    let mut site = Site::new(Some("mark"), Some("enforce"));
    dmarc_cases(&mut site, true);
}

fn dmarc_cases(site: &mut Site, enforce: bool) {
    let rsa = site.key_file(&keys().rsa_pkcs1);
    let sign = [
        "--sign",
        "rsa-sha256",
        "rsa",
        "dkim-aligned.test",
        &rsa,
        "now",
    ];
    // SPF alone: the MAIL FROM domain passes and is the From domain.
    let r = site.send(
        "client.test",
        "a@spf-aligned.test",
        "by-spf@localhost",
        &message("a@spf-aligned.test", "by-spf"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    // DKIM alone: SPF fails (marked only), the From domain's signature passes.
    let r = site.send(
        "client.test",
        "bounce@dkim-aligned.test",
        "by-dkim@localhost",
        &message("a@dkim-aligned.test", "by-dkim"),
        &sign,
    );
    assert!(r.starts_with("250 "), "{r}");
    // A signature of another domain does not align.
    let other = site.key_file(&keys().rsa_pkcs1);
    let sign_other = ["--sign", "rsa-sha256", "rsa", "dkim.test", &other, "now"];
    let r = site.send(
        "client.test",
        "a@reject.test",
        "rejected@localhost",
        &message("a@reject.test", "rejected"),
        &sign_other,
    );
    if enforce {
        assert!(
            r.starts_with("550 5.7.1 DMARC policy of reject.test rejects this message"),
            "{r}"
        );
    } else {
        assert!(r.starts_with("250 "), "{r}");
    }
    let r = site.send(
        "client.test",
        "a@quarantine.test",
        "quarantined@localhost",
        &message("a@quarantine.test", "quarantined"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    // The From domain's DMARC record cannot be had.
    let r = site.send(
        "client.test",
        "a@pass.test",
        "dmarc-temp@localhost",
        &message("a@tmp.test", "dmarc-temp"),
        &[],
    );
    if enforce {
        assert!(
            r.starts_with("451 4.7.1 DMARC of tmp.test cannot be checked now"),
            "{r}"
        );
    } else {
        assert!(r.starts_with("250 "), "{r}");
    }

    let m = site.delivered("by-spf");
    assert_has(
        &ours(&m),
        &[
            "spf=pass (test.example: domain of a@spf-aligned.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=a@spf-aligned.test",
            "arc=none smtp.remote-ip=127.0.0.1",
            "dmarc=pass header.from=spf-aligned.test policy.dmarc=reject",
        ],
    );
    assert!(!ours(&m).contains("dkim="), "{m}");
    let m = site.delivered("by-dkim");
    assert_has(
        &ours(&m),
        &[
            "spf=fail (test.example: domain of bounce@dkim-aligned.test does not designate 127.0.0.1 as permitted sender) smtp.mailfrom=bounce@dkim-aligned.test",
            "dkim=pass header.i=@dkim-aligned.test header.s=rsa",
            "dmarc=pass header.from=dkim-aligned.test policy.dmarc=reject",
        ],
    );
    let m = site.delivered("quarantined");
    let ar = ours(&m);
    assert_has(
        &ar,
        &["dmarc=fail (policy not aligned) header.from=quarantine.test policy.dmarc=quarantine"],
    );
    let q = all(&m, "X-Ferry-Quarantine");
    if enforce {
        assert_eq!(
            q,
            ["DMARC policy of quarantine.test is quarantine and the message failed it"],
            "{m}"
        );
    } else {
        assert!(q.is_empty(), "{m}");
    }
    if enforce {
        site.env.wait_queue_empty();
        for n in ["rejected", "dmarc-temp"] {
            assert!(
                site.env.maildir_new(&site.env.mailbox(n)).is_empty(),
                "{n} was delivered"
            );
        }
    } else {
        let m = site.delivered("rejected");
        assert_has(
            &ours(&m),
            &[
                "dkim=pass header.i=@dkim.test header.s=rsa",
                "dmarc=fail (policy not aligned) header.from=reject.test policy.dmarc=reject",
            ],
        );
        let m = site.delivered("dmarc-temp");
        assert_has(
            &ours(&m),
            &["dmarc=temperror (dns error) header.from=tmp.test"],
        );
    }
}

#[test]
fn forged_authentication_results_of_ours_are_removed() {
    let mut site = Site::new(None, None);
    let msg = format!(
        "Authentication-Results: test.example; spf=pass smtp.mailfrom=a@fail.test\nAuthentication-Results: (our name) TEST.EXAMPLE.; dkim=pass header.d=fail.test\nAuthentication-Results:\n\ttest.example;\n\tdmarc=pass header.from=fail.test\nAuthentication-Results: mx.other.example; spf=pass smtp.mailfrom=a@fail.test\nAuthentication-Results: test.example.other.example; dkim=pass\n{}",
        message("a@fail.test", "forged")
    );
    let r = site.send("client.test", "a@fail.test", "forged@localhost", &msg, &[]);
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("forged");
    let ar = all(&m, "Authentication-Results");
    assert_eq!(ar.len(), 3, "{m}");
    assert!(
        ours(&m).contains("spf=fail (test.example: domain of a@fail.test does not designate"),
        "{m}"
    );
    assert_eq!(
        ar[1],
        "mx.other.example; spf=pass smtp.mailfrom=a@fail.test"
    );
    assert_eq!(ar[2], "test.example.other.example; dkim=pass");
    assert!(!m.contains("dmarc=pass"), "{m}");
}

#[test]
fn local_injection_is_signed_and_dkimpy_verifies_it() {
    let env = Env::new();
    install_keys(&env, "sign.test");
    let mut env = env;
    env.start_send();
    let out = env.sendmail(
        &["-f", "user@sign.test", "injected@localhost"],
        message("user@sign.test", "injected").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A From domain without keys goes unsigned.
    let out = env.sendmail(
        &["-f", "user@other.test", "unsigned@localhost"],
        message("user@other.test", "unsigned").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = String::from_utf8(env.wait_maildir(&env.mailbox("injected"), 1).remove(0)).unwrap();
    assert!(all(&m, "Authentication-Results").is_empty(), "{m}");
    assert_signed_by_us(&env.root.join(".."), &m, "sign.test");
    let m = String::from_utf8(env.wait_maildir(&env.mailbox("unsigned"), 1).remove(0)).unwrap();
    assert!(all(&m, "DKIM-Signature").is_empty(), "{m}");
}

#[test]
fn relayed_mail_is_signed_not_verified_and_verifies_at_a_far_ferry() {
    // The far ferry: a stranger's mail for far.test, verified.
    let far = Site::with(None, None, &[("virtualdomains", "far.test:mail/*")]);
    // Ours: 127.0.0.1 relays; far.test's MX is on loopback at the far ferry's port.
    let far_port = far.port.to_string();
    let mut site = Site::build(
        None,
        None,
        &[
            ("relayclients", "127.0.0.0/8"),
            ("remoteport", &far_port),
            ("timeoutconnect", "5"),
        ],
        |env| install_keys(env, "sign.test"),
    );
    let from = "user@sign.test";
    let r = site.send(
        "laptop.test",
        from,
        "relayed@localhost",
        &message(from, "relayed"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "laptop.test",
        from,
        "someone@far.test",
        &message(from, "far"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("relayed");
    assert!(all(&m, "Authentication-Results").is_empty(), "{m}");
    assert_signed_by_us(&site.scratch, &m, "sign.test");
    assert!(
        !site.env.log("smtpd.log").contains("auth=("),
        "{}",
        site.env.log("smtpd.log")
    );

    let m = far.delivered("someone");
    let ar = ours(&m);
    assert_has(
        &ar,
        &[
            "spf=pass (test.example: domain of user@sign.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=user@sign.test",
            "dkim=pass header.d=sign.test header.s=ed header.b=",
            "dkim=pass header.d=sign.test header.s=rsa header.b=",
            "dmarc=pass header.from=sign.test policy.dmarc=reject",
        ],
    );
    assert_signed_by_us(&far.scratch, &m, "sign.test");
}

#[test]
fn authenticated_mail_is_signed_not_verified() {
    let mut site = Site::build(None, None, &[], |env| {
        install_keys(env, "localhost");
        passwd(env, "bob@localhost", "bob's secret");
    });
    let (sub, _) = site.env.start_submission();
    let from = "bob@localhost";
    site.port = sub;
    let r = site.send(
        "laptop.test",
        from,
        "alice@localhost",
        &message(from, "submitted"),
        &["--auth", "bob@localhost", "bob's secret"],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("alice");
    assert!(all(&m, "Authentication-Results").is_empty(), "{m}");
    assert_signed_by_us(&site.scratch, &m, "localhost");
}

#[test]
fn arc_sets_of_dkimpy_are_verified() {
    let mut site = Site::new(None, None);
    let rsa = site.key_file(&keys().rsa_pkcs1);
    let from = "a@spf-aligned.test";
    let seal = ["--arc", "arc", "fwd.test", &rsa];
    let tampered = [&seal[..], &["--tamper", "body"]].concat();
    let subject = [&seal[..], &["--tamper", "subject"]].concat();
    let r = site.send(
        "fwd.test",
        from,
        "arc-pass@localhost",
        &message(from, "arc-pass"),
        &seal,
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "fwd.test",
        from,
        "arc-fail@localhost",
        &message(from, "arc-fail"),
        &tampered,
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "fwd.test",
        from,
        "arc-subject@localhost",
        &message(from, "arc-subject"),
        &subject,
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "fwd.test",
        from,
        "arc-none@localhost",
        &message(from, "arc-none"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    for (name, want) in [
        ("arc-pass", "arc=pass smtp.remote-ip=127.0.0.1"),
        // As for DKIM, mail-auth calls a body changed since the seal neutral.
        (
            "arc-fail",
            "arc=neutral (body hash did not verify) smtp.remote-ip=127.0.0.1",
        ),
        (
            "arc-subject",
            "arc=fail (verification failed) smtp.remote-ip=127.0.0.1",
        ),
        ("arc-none", "arc=none smtp.remote-ip=127.0.0.1"),
    ] {
        let m = site.delivered(name);
        let ar = ours(&m);
        assert_has(&ar, &[want]);
        // The forwarder's Authentication-Results stays, below ours.
        if name != "arc-none" {
            assert_eq!(all(&m, "Authentication-Results").len(), 2, "{m}");
        }
    }
}
