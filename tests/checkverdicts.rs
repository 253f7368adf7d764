//! The verdicts of `ferryctl check` that docs/OPERATIONS.md's table promises and no other
//! test reaches: a `me` that is no FQDN, each broken TLS pair, an install with a wrong mode
//! or a missing program, another server on smtpd's port, and the implicit-MX WARN.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::{Dns, Scripted};
use ferry_e2e::{Env, free_port};
use std::os::unix::fs::PermissionsExt;

fn check(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let mut a = vec!["check"];
    a.extend_from_slice(args);
    let out = env.ferryctl(&a);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn has_line(out: &str, verdict: &str, text: &str) -> bool {
    out.lines()
        .any(|l| l.starts_with(verdict) && l.contains(text))
}

#[test]
fn control_and_tls_verdicts() {
    let env = Env::new();
    env.control("me", "mailhost");
    let (code, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(
            &out,
            "WARN",
            "me is \"mailhost\", not a fully qualified name"
        ),
        "{out}"
    );
    assert!(
        has_line(&out, "WARN", "no control/tlscert: smtpd offers no STARTTLS"),
        "{out}"
    );
    assert_eq!(code, Some(1), "smtpd is not running: {out}");
    env.control("me", "mail.example.org");

    // A certificate without its key, then a key without its certificate.
    ferry_e2e::write_test_certificate(&env.root, "mail.example.org");
    let key = env.root.join("control/tlskey");
    let key_pem = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (_, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(&out, "FAIL", "control/tlscert without control/tlskey"),
        "{out}"
    );
    std::fs::write(&key, &key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cert = env.root.join("control/tlscert");
    let cert_pem = std::fs::read(&cert).unwrap();
    std::fs::remove_file(&cert).unwrap();
    let (_, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(&out, "FAIL", "control/tlskey without control/tlscert"),
        "{out}"
    );
    // Not PEM, and a key everybody may read.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let (_, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(&out, "FAIL", "control/tlscert holds no PEM certificate"),
        "{out}"
    );
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(
            &out,
            "FAIL",
            "control/tlskey is readable by everybody (mode 644)"
        ),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, "garbage\n").unwrap();
    let (_, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(&out, "FAIL", "control/tlskey holds no PEM private key"),
        "{out}"
    );
}

#[test]
fn install_verdicts() {
    let env = Env::new();
    let (_, out) = check(&env, &["--no-dns"]);
    assert!(
        has_line(&out, "OK", "install: owners and modes as the manifest says"),
        "{out}"
    );
    // A queue directory opened to everybody, and a missing program.
    std::fs::set_permissions(
        env.root.join("queue/mess"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    std::fs::remove_file(env.root.join("bin/clean")).unwrap();
    let (code, out) = check(&env, &["--no-dns"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        has_line(
            &out,
            "FAIL",
            "install: queue/mess has mode 777, should be 750"
        ),
        "{out}"
    );
    assert!(has_line(&out, "FAIL", "install: bin/clean"), "{out}");
    if ferry_e2e::is_root() {
        // The queue program without its setuid bit: sendmail as a user could not queue.
        std::fs::set_permissions(
            env.root.join("bin/queue"),
            std::fs::Permissions::from_mode(0o711),
        )
        .unwrap();
        let (_, out) = check(&env, &["--no-dns"]);
        assert!(has_line(&out, "FAIL", "install: bin/queue"), "{out}");
    }
}

#[test]
fn another_server_on_smtpds_port() {
    let env = Env::new();
    let port = free_port();
    let other = Scripted::start(
        env.root.join("..").join("other"),
        "127.0.0.1",
        port,
        r#"{"greeting": "220 other.example ESMTP Postfix"}"#,
    );
    env.control("smtplisten", &format!("127.0.0.1:{}", other.port));
    let (code, out) = check(&env, &["--no-dns"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        has_line(
            &out,
            "FAIL",
            &format!(
                "another server answers on 127.0.0.1:{}, not ferry's smtpd",
                other.port
            )
        ),
        "{out}"
    );
}

#[test]
fn implicit_mx_is_a_warning() {
    // A local domain with no MX whose own address is this host's: mail works (implicit MX),
    // but an MX record is what receivers expect.
    let dns = Dns::start(&[
        "--host-record=mail.imp.test,192.0.2.30".into(),
        "--host-record=imp.test,192.0.2.30".into(),
    ]);
    let env = Env::new();
    env.control("me", "mail.imp.test");
    env.control("locals", "imp.test");
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    let (_, out) = check(&env, &[]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN") && l.contains("imp.test") && l.contains("MX")),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("MX") && l.contains("imp.test")),
        "{out}"
    );
}
