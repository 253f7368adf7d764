//! ferryctl setup and check end to end: setup on an empty root (what it writes, --dry-run
//! writing nothing, its certificate verified by smtplib's STARTTLS), check on broken and clean
//! control files and installs, and check's DNS verdicts against dnsmasq on loopback. Every
//! test tears its s6 tree down at the end, even when it fails (supervision::Tree).

#![allow(clippy::unwrap_used)]

use ferry_e2e::supervision::{Dnsmasq, Tree};
use ferry_e2e::{Env, free_port};
use std::process::Command;
use std::time::{Duration, Instant};

/// An empty control directory (but for the README).
fn empty_control(env: &Env) {
    for e in std::fs::read_dir(env.path("control")).unwrap().flatten() {
        if e.file_name() != "README" {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

fn control_names(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.path("control"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn setup_on_an_empty_root_and_its_certificate() {
    let env = Env::new();
    empty_control(&env);
    let tree = Tree::new(&env.root);
    let args = [
        "setup",
        "example.org",
        "--me",
        "mx.example.org",
        "--admin",
        "admin@elsewhere.example",
        "--ip",
        "192.0.2.7",
    ];

    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = tree.expect(&dry, 0);
    assert_eq!(
        control_names(&env),
        vec!["README"],
        "--dry-run wrote something:\n{out}"
    );
    assert!(out.contains("dry run: nothing is written"), "{out}");
    assert!(
        out.contains("control/me: mx.example.org (would write)"),
        "{out}"
    );
    assert!(
        out.contains("self-signed certificate for mx.example.org (would write)"),
        "{out}"
    );
    assert!(out.contains("control/aliases: would add postmaster, root, abuse, mailer-daemon → admin@elsewhere.example"), "{out}");

    let out = tree.expect(&args, 0);
    for line in [
        "control/me: mx.example.org (wrote)",
        "control/defaultdomain: example.org (wrote)",
        "control/locals: example.org, mx.example.org (wrote)",
        "control/rcpthosts: example.org, mx.example.org (wrote)",
        "control/aliases: added postmaster, root, abuse, mailer-daemon → admin@elsewhere.example",
        "  mx.example.org.  IN A       192.0.2.7",
        "  example.org.  IN MX    10 mx.example.org.",
        "  example.org.  IN TXT   \"v=spf1 mx -all\"",
        "  _dmarc.example.org.  IN TXT   \"v=DMARC1; p=none; rua=mailto:postmaster@example.org\"",
        "  PTR of 192.0.2.7 → mx.example.org.",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
        // The address was given with --ip: no advice to give it (issue 8, item 18).
        assert!(!out.contains("give --ip"), "{out}");
    }
    assert!(out.contains("DKIM"), "{out}");
    let read = |n: &str| std::fs::read_to_string(env.path(&format!("control/{n}"))).unwrap();
    assert_eq!(read("me"), "mx.example.org\n");
    assert_eq!(read("locals"), "example.org\nmx.example.org\n");
    assert_eq!(read("aliases").lines().count(), 4);
    assert!(read("aliases").contains("postmaster: admin@elsewhere.example\n"));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let key = std::fs::metadata(env.path("control/tlskey")).unwrap();
    if ferry_e2e::is_root() {
        let ferryd = nix::unistd::Group::from_name("ferryd")
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        assert_eq!(
            (key.permissions().mode() & 0o777, key.uid(), key.gid()),
            (0o640, 0, ferryd)
        );
    } else {
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
    // The result passes check (but for DNS, not asked here, and smtpd, not started yet).
    let port = free_port();
    env.control("smtplisten", &format!("127.0.0.1:{port}"));
    let check = tree.expect(&["check", "--no-dns"], 1);
    assert_eq!(
        check.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{check}"
    );
    assert!(
        check.contains("FAIL  smtpd does not answer on 127.0.0.1:"),
        "{check}"
    );
    assert!(!check.lines().any(|l| l.starts_with("WARN")), "{check}");

    // A second run: replaces me (saying so), keeps the certificate and the aliases.
    let cert = read("tlscert");
    let out = tree.expect(
        &[
            "setup",
            "example.org",
            "--me",
            "mail.example.org",
            "--admin",
            "other@elsewhere.example",
        ],
        0,
    );
    assert!(
        out.contains("control/me: mx.example.org → mail.example.org (replaced)"),
        "{out}"
    );
    assert!(
        out.contains("control/defaultdomain: example.org (unchanged)"),
        "{out}"
    );
    assert!(
        out.contains("control/tlscert, control/tlskey: kept (already there)"),
        "{out}"
    );
    assert!(
        out.contains("control/aliases: postmaster → admin@elsewhere.example already, kept"),
        "{out}"
    );
    assert_eq!(read("tlscert"), cert);
    assert_eq!(read("aliases").lines().count(), 4);

    // Usage errors.
    tree.expect(&["setup"], 2);
    tree.expect(&["setup", "nodot"], 2);
    tree.expect(&["setup", "example.org", "--admin", "root"], 2);
    tree.expect(&["setup", "example.org", "--bogus"], 2);

    // The certificate works for STARTTLS: smtplib verifies it, as the trust anchor, for the
    // name it was made for (the first run's me).
    tree.expect(&["start"], 0);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{cert}")
ctx.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
s._host = "mx.example.org"
s.ehlo("py.client")
assert s.has_extn("starttls"), s.esmtp_features
s.starttls(context=ctx)
peer = s.sock.getpeercert()
assert ("DNS", "mx.example.org") in peer["subjectAltName"], peer
s.ehlo("py.client")
s.quit()
"#,
        cert = env.path("control/tlscert").display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = tree.expect(&["check", "--no-dns"], 0);
    assert!(
        check.contains("OK    control/tlscert and control/tlskey: STARTTLS offered"),
        "{check}"
    );
}

#[test]
fn check_names_broken_files_and_passes_clean_ones() {
    let env = Env::new();
    let (tree, port) = Tree::start(&env);
    let out = tree.expect(&["check", "--no-dns"], 0);
    assert!(!out.lines().any(|l| l.starts_with("FAIL")), "{out}");
    assert!(out.contains("OK    control files: "), "{out}");
    assert!(
        out.contains("OK    install: owners and modes as the manifest says"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "OK    smtpd answers on 127.0.0.1:{port}: 220 test.example"
        )),
        "{out}"
    );
    assert!(out.contains("WARN  no control/tlscert"), "{out}");
    // Once a certificate is there, nothing is left to warn about (DNS aside).
    tree.expect(&["tls-selfsigned"], 0);
    tree.expect(&["reload"], 0);
    let out = tree.expect(&["check", "--no-dns"], 0);
    assert!(
        out.lines()
            .all(|l| l.starts_with("OK ") || l.starts_with("-- ")),
        "{out}"
    );

    env.control("databytes", "# the limit\nlots");
    std::fs::write(env.path("control/smtplsiten"), "127.0.0.1:25\n").unwrap();
    std::fs::set_permissions(
        env.path("queue/todo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = tree.expect(&["check", "--no-dns"], 1);
    let ctl = env.path("control");
    assert!(
        out.contains(&format!(
            "FAIL  control/databytes line 2: not a number: \"lots\" — edit {}/databytes",
            ctl.display()
        )),
        "{out}"
    );
    assert!(out.contains(&format!("FAIL  control/smtplsiten: unknown control file (misspelt? see control/README) — rename or remove {}/smtplsiten", ctl.display())), "{out}");
    assert!(
        out.contains("FAIL  install: queue/todo has mode 777, should be 750 — run ferryctl init"),
        "{out}"
    );
    assert!(
        out.contains("WARN  smtpd and DNS not checked: the control files have errors"),
        "{out}"
    );
    // stat still works and says where the problem is.
    let stat = tree.expect(&["stat"], 0);
    assert!(
        stat.contains("config     control/databytes line 2"),
        "{stat}"
    );
}

fn dns_records() -> Vec<String> {
    [
        // this host, with its PTR (dnsmasq makes it from --host-record)
        "--host-record=mail.good.test,192.0.2.25",
        // good.test: everything right
        "--mx-host=good.test,mail.good.test,10",
        "--txt-record=good.test,v=spf1 mx -all",
        "--txt-record=_dmarc.good.test,v=DMARC1; p=reject",
        // alias.test: MX at another name with this host's address; SPF by ip4
        "--mx-host=alias.test,mx.alias.test,5",
        "--host-record=mx.alias.test,192.0.2.25",
        "--txt-record=alias.test,v=spf1 ip4:192.0.2.0/24 -all",
        "--txt-record=_dmarc.alias.test,v=DMARC1; p=none",
        // bad.test: MX elsewhere, SPF not for us, no DMARC
        "--mx-host=bad.test,mx.elsewhere.test,10",
        "--host-record=mx.elsewhere.test,192.0.2.99",
        "--txt-record=bad.test,v=spf1 ip4:198.51.100.0/24 -all",
        // nomx.test: no MX, an SPF include, two DMARC records
        "--host-record=nomx.test,192.0.2.98",
        "--txt-record=nomx.test,v=spf1 include:_spf.provider.test -all",
        "--txt-record=_dmarc.nomx.test,v=DMARC1; p=none",
        "--txt-record=_dmarc.nomx.test,v=DMARC1; p=reject",
        // soft.test: MX right, SPF soft-fails us, no DMARC
        "--mx-host=soft.test,mail.good.test,10",
        "--txt-record=soft.test,v=spf1 ~all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn check_dns_verdicts_against_dnsmasq() {
    let env = Env::new();
    let dns = Dnsmasq::start(&env.root.join(".."), &dns_records());
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("me", "mail.good.test");
    env.control(
        "locals",
        "good.test\nalias.test\nbad.test\nnomx.test\nsoft.test\nghost.test",
    );
    env.control("virtualdomains", "localhost:mail/*");
    let tree = Tree::new(&env.root);
    let out = tree.expect(&["check"], 1);
    for line in [
        "OK    DNS: me (mail.good.test) has address 192.0.2.25",
        "OK    DNS: MX of good.test → mail.good.test (preference 10)",
        "OK    DNS: SPF of good.test authorises 192.0.2.25: \"v=spf1 mx -all\"",
        "OK    DNS: DMARC of good.test: p=reject",
        "OK    DNS: MX of alias.test → mx.alias.test (preference 5), an address of mail.good.test",
        "OK    DNS: SPF of alias.test authorises 192.0.2.25: \"v=spf1 ip4:192.0.2.0/24 -all\"",
        "OK    DNS: DMARC of alias.test: p=none",
        "FAIL  DNS: MX of bad.test points at mx.elsewhere.test, not at this host (mail.good.test) — publish: bad.test. IN MX 10 mail.good.test.",
        "FAIL  DNS: SPF of bad.test does not authorise 192.0.2.25: \"v=spf1 ip4:198.51.100.0/24 -all\" — publish: bad.test. IN TXT \"v=spf1 mx -all\", or add ip4:192.0.2.25",
        "WARN  DNS: bad.test has no DMARC record — publish: _dmarc.bad.test. IN TXT \"v=DMARC1; p=none; rua=mailto:postmaster@bad.test\"",
        "FAIL  DNS: nomx.test has no MX record — publish: nomx.test. IN MX 10 mail.good.test.",
        "FAIL  DNS: SPF of nomx.test is a permerror for receivers (nomx.test (the MAIL FROM domain) has an SPF record that cannot be evaluated",
        "FAIL  DNS: nomx.test has 2 DMARC records (receivers ignore them all)",
        "OK    DNS: MX of soft.test → mail.good.test",
        "WARN  DNS: SPF of soft.test soft-fails 192.0.2.25: \"v=spf1 ~all\"",
        "WARN  DNS: soft.test has no DMARC record",
        "FAIL  DNS: ghost.test does not exist",
        "WARN  DNS: ghost.test has no SPF record",
        "OK    DNS: PTR of 192.0.2.25 → mail.good.test",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    // A root with only the good domain, a certificate and smtpd running: all OK, exit 0.
    env.control("locals", "good.test");
    let (tree, _port) = Tree::start(&env);
    tree.expect(&["tls-selfsigned", "mail.good.test"], 0);
    tree.expect(&["reload"], 0);
    let out = tree.expect(&["check"], 0);
    assert!(
        out.lines().filter(|l| l.contains("DNS:")).count() >= 5,
        "{out}"
    );
    assert!(
        out.lines()
            .filter(|l| !l.starts_with("--"))
            .all(|l| l.starts_with("OK ")),
        "{out}"
    );
    assert!(out.contains(" 0 FAIL, 0 WARN"), "{out}");
    drop(tree);

    // No name server answering: one WARN, no hang.
    drop(dns);
    env.control("resolvconf", &format!("127.0.0.1:{}", free_port()));
    let started_at = Instant::now();
    let (code, out) = tree_check(&env);
    assert!(
        out.contains("WARN  DNS: not checked further: cannot look up me (mail.good.test)"),
        "{out}"
    );
    // The only FAIL is smtpd's (stopped above with the tree): the DNS WARN is no failure.
    assert_eq!(code, Some(1), "{out}");
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.len() == 1 && fails[0].contains("smtpd does not answer"),
        "{out}"
    );
    assert!(started_at.elapsed() < Duration::from_secs(40));
}

fn tree_check(env: &Env) -> (Option<i32>, String) {
    let out = env.ferryctl(&["check"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
