//! The administrator's side of mail authentication, end to end against dnsmasq on loopback:
//! `ferryctl spf` for every result (pass, fail with its exp= text, softfail, neutral, none,
//! temperror, permerror) and through include:, redirect=, a macro in exists:, the
//! void-lookup limit and the HELO identity of a null sender; `ferryctl dkim keygen` and
//! `list` for RSA and Ed25519, the keys checked by openssl, and `ferryctl check` comparing
//! each key with its published record (OK, FAIL for another key's record, WARN for none),
//! and failing a key file that does not load or that others may read.

#![allow(clippy::unwrap_used)]

use ferry_e2e::Env;
use ferry_e2e::supervision::{Dnsmasq, Tree};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

fn spf_records(dead_port: u16) -> Vec<String> {
    [
        // pass / fail (with an exp= text made of macros)
        "--txt-record=pass.test,v=spf1 ip4:192.0.2.10 -all exp=why.pass.test",
        "--txt-record=why.pass.test,%{i} is not a server of %{d}",
        "--txt-record=soft.test,v=spf1 ip4:192.0.2.10 ~all",
        "--txt-record=neutral.test,v=spf1 ip4:192.0.2.10 ?all",
        // none: a TXT record that is no SPF record; ghost.test does not exist at all
        "--txt-record=nospf.test,hello world",
        // temperror: the include's zone is served by a server that does not answer
        "--txt-record=temp.test,v=spf1 include:_spf.broken.test -all",
        // permerror: two records; a syntax error
        "--txt-record=two.test,v=spf1 ip4:192.0.2.10 -all",
        "--txt-record=two.test,v=spf1 -all",
        "--txt-record=syntax.test,v=spf1 a:%{q}.x.test -all",
        "--txt-record=syntax2.test,v=spf1 include -all",
        // include: and redirect= to a provider's record
        "--txt-record=_spf.provider.test,v=spf1 ip4:192.0.2.0/24 -all",
        "--txt-record=inc.test,v=spf1 include:_spf.provider.test -all",
        "--txt-record=redir.test,v=spf1 redirect=_spf.provider.test",
        // a macro: exists:%{i}.allow.macro.test (an A record for 192.0.2.10 only)
        "--txt-record=macro.test,v=spf1 exists:%{i}.allow.macro.test -all",
        "--host-record=192.0.2.10.allow.macro.test,127.0.0.2",
        // void lookups: two are allowed, the third is a permerror (a: and exists: alike)
        "--txt-record=void2.test,v=spf1 a:n1.void.test a:n2.void.test ip4:192.0.2.10 -all",
        "--txt-record=void3.test,v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test ip4:192.0.2.10 -all",
        "--txt-record=voidx.test,v=spf1 exists:x1.void.test exists:x2.void.test exists:x3.void.test ip4:192.0.2.10 -all",
        // a HELO name with its own record
        "--txt-record=helo.test,v=spf1 ip4:192.0.2.10 -all",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--server=/broken.test/127.0.0.1#{dead_port}")])
    .collect()
}

/// `ferryctl spf IP HELO SENDER`: (result word, explanation).
fn spf(tree: &Tree, ip: &str, helo: &str, sender: &str) -> (String, String) {
    let out = tree.expect(&["spf", ip, helo, sender], 0);
    let mut lines = out.lines();
    let word = lines.next().unwrap_or_default().to_string();
    let why = lines.collect::<Vec<_>>().join("\n");
    (word, why)
}

#[test]
fn spf_results_against_dnsmasq() {
    let env = Env::new();
    // A UDP port nobody answers on (the socket is closed again at once).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = Dnsmasq::start(&env.root.join(".."), &spf_records(dead));
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    let tree = Tree::new(&env.root);
    let check = |ip: &str, sender: &str, word: &str, says: &[&str]| {
        let (w, why) = spf(&tree, ip, "client.example", sender);
        assert_eq!(w, word, "{ip} {sender}: {why}");
        for s in says {
            assert!(why.contains(s), "{ip} {sender}: {s:?} not in {why:?}");
        }
    };
    check(
        "192.0.2.10",
        "a@pass.test",
        "pass",
        &["pass.test (the MAIL FROM domain) authorises 192.0.2.10"],
    );
    check(
        "192.0.2.99",
        "a@pass.test",
        "fail",
        &[
            "does not authorise 192.0.2.99",
            "192.0.2.99 is not a server of pass.test",
        ],
    );
    check("192.0.2.99", "a@soft.test", "softfail", &["soft.test"]);
    check("192.0.2.99", "a@neutral.test", "neutral", &["neutral.test"]);
    check(
        "192.0.2.99",
        "a@nospf.test",
        "none",
        &["nospf.test (the MAIL FROM domain) publishes no SPF record"],
    );
    check("192.0.2.99", "a@ghost.test", "none", &["ghost.test"]);
    check("192.0.2.10", "a@temp.test", "temperror", &["temp.test"]);
    check(
        "192.0.2.10",
        "a@two.test",
        "permerror",
        &["two.test publishes 2 SPF records"],
    );
    check("192.0.2.10", "a@syntax.test", "permerror", &["syntax.test"]);
    check(
        "192.0.2.10",
        "a@syntax2.test",
        "permerror",
        &["syntax2.test"],
    );
    check("192.0.2.10", "a@inc.test", "pass", &["inc.test"]);
    check("198.51.100.1", "a@inc.test", "fail", &["inc.test"]);
    check("192.0.2.10", "a@redir.test", "pass", &[]);
    check("198.51.100.1", "a@redir.test", "fail", &[]);
    check("192.0.2.10", "a@macro.test", "pass", &[]);
    check("192.0.2.11", "a@macro.test", "fail", &[]);
    check("192.0.2.10", "a@void2.test", "pass", &[]);
    check(
        "192.0.2.10",
        "a@void3.test",
        "permerror",
        &["3 lookups found no record (more than 2 void lookups)"],
    );
    check("192.0.2.10", "a@voidx.test", "permerror", &["void lookups"]);
    // The null sender: the HELO name is evaluated.
    for null in ["", "<>"] {
        let (w, why) = spf(&tree, "192.0.2.10", "helo.test", null);
        assert_eq!(w, "pass", "{why}");
        assert!(why.starts_with("helo.test (the HELO name"), "{why}");
        let (w, _) = spf(&tree, "192.0.2.99", "helo.test", null);
        assert_eq!(w, "fail");
    }
    // IPv6 clients are evaluated too (no ip6: term: -all).
    check("2001:db8::1", "a@pass.test", "fail", &[]);
    // Usage errors.
    tree.expect(&["spf", "not-an-ip", "h.example", "a@pass.test"], 2);
    tree.expect(&["spf", "192.0.2.10", "h.example"], 2);

    // No name server answers at all: temperror, still exit 0.
    env.control("resolvconf", &format!("127.0.0.1:{dead}"));
    check("192.0.2.10", "a@pass.test", "temperror", &["pass.test"]);
}

/// The strings of the zone line keygen prints: `NAME. IN TXT ( "a" "b" )`.
fn zone_strings(out: &str) -> (String, Vec<String>) {
    let line = out
        .lines()
        .find(|l| l.contains("._domainkey.") && l.contains(" IN TXT ( "))
        .unwrap_or_else(|| panic!("no zone line in:\n{out}"));
    let name = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.');
    let inner = line
        .split_once("( ")
        .unwrap()
        .1
        .rsplit_once(" )")
        .unwrap()
        .0;
    let strings: Vec<String> = inner
        .split("\" \"")
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    (name.to_string(), strings)
}

/// dnsmasq's option for a TXT record of several strings (it takes quotes literally here:
/// no shell removes them).
fn txt_option(name: &str, strings: &[String]) -> String {
    format!("--txt-record={name},{}", strings.join(","))
}

fn b64decode(s: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.argv[1], validate=True))",
            s,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// openssl's view of a private key file: its public key, SubjectPublicKeyInfo DER.
fn openssl_public(key: &std::path::Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn dkim_keygen_list_and_check() {
    let env = Env::new();
    env.control("me", "mail.good.test");
    env.control("locals", "good.test");
    let tree = Tree::new(&env.root);
    let mut zone = std::collections::HashMap::new();
    for (sel, ed) in [
        ("ok-rsa", false),
        ("bad-rsa", false),
        ("none-rsa", false),
        ("ok-ed", true),
        ("bad-ed", true),
        ("none-ed", true),
    ] {
        let mut args = vec!["dkim", "keygen", "good.test", sel];
        if ed {
            args.push("--ed25519");
        }
        let out = tree.expect(&args, 0);
        let kind = if ed { "ed25519" } else { "rsa 2048" };
        assert!(
            out.contains(&format!(
                "wrote control/dkim/good.test/{sel}.key ({kind}, mode 0600"
            )),
            "{out}"
        );
        let (name, strings) = zone_strings(&out);
        assert_eq!(name, format!("{sel}._domainkey.good.test"));
        assert!(strings.iter().all(|s| s.len() <= 255), "{strings:?}");
        let k = if ed { "ed25519" } else { "rsa" };
        assert_eq!(strings[0], format!("v=DKIM1; k={k}; "), "{out}");
        let value = strings.concat();
        assert!(
            out.contains(&format!("(name {name}, value {value})")),
            "{out}"
        );
        if !ed {
            assert!(
                strings.len() >= 3,
                "an RSA 2048 key needs two strings: {strings:?}"
            );
        }
        zone.insert(sel, strings);
    }
    // The files: mode 0600, owned by the signer (ferryq as root: the owner of queue/).
    let queue_owner = std::fs::metadata(env.path("queue")).unwrap().uid();
    for sel in ["ok-rsa", "ok-ed"] {
        let m = std::fs::metadata(env.path(&format!("control/dkim/good.test/{sel}.key"))).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o777, m.uid()),
            (0o600, queue_owner)
        );
    }
    if ferry_e2e::is_root() {
        let ferryq = nix::unistd::User::from_name("ferryq")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert_eq!(queue_owner, ferryq);
    }
    // An existing key is never replaced.
    let before = std::fs::read(env.path("control/dkim/good.test/ok-rsa.key")).unwrap();
    tree.expect(&["dkim", "keygen", "good.test", "ok-rsa"], 1);
    assert_eq!(
        std::fs::read(env.path("control/dkim/good.test/ok-rsa.key")).unwrap(),
        before
    );
    // The default selector is the month (sYYYYMM, eYYYYMM for Ed25519), once.
    let out = tree.expect(&["dkim", "keygen", "other.test"], 0);
    let (name, _) = zone_strings(&out);
    let sel = name.split('.').next().unwrap().to_string();
    assert!(
        sel.len() == 7 && sel.starts_with('s') && sel[1..].bytes().all(|b| b.is_ascii_digit()),
        "{sel}"
    );
    tree.expect(&["dkim", "keygen", "other.test"], 1);
    let out = tree.expect(&["dkim", "keygen", "other.test", "--ed25519"], 0);
    assert!(
        out.contains(&format!("control/dkim/other.test/e{}.key", &sel[1..])),
        "{out}"
    );
    tree.expect(&["dkim", "keygen", "nodot"], 2);
    tree.expect(&["dkim", "keygen", "good.test", "../x"], 2);
    tree.expect(&["dkim", "bogus"], 2);

    // list: one line per key, with kind, file and the record value.
    let list = tree.expect(&["dkim", "list"], 0);
    assert_eq!(list.lines().count(), 8, "{list}");
    for (sel, strings) in &zone {
        let kind = if sel.ends_with("ed") {
            "ed25519"
        } else {
            "rsa"
        };
        let line = format!(
            "good.test  {sel}  {kind}  control/dkim/good.test/{sel}.key  {}",
            strings.concat()
        );
        assert!(
            list.lines().any(|l| l == line),
            "missing {line:?} in:\n{list}"
        );
    }

    // The keys as openssl reads them: the RSA record is the SubjectPublicKeyInfo of the
    // private key; the Ed25519 record its 32 raw bytes.
    if have_openssl() {
        for sel in ["ok-rsa", "ok-ed"] {
            let key = env.path(&format!("control/dkim/good.test/{sel}.key"));
            let spki = openssl_public(&key);
            let p = b64decode(zone[sel].concat().split("p=").nth(1).unwrap());
            if sel == "ok-rsa" {
                assert_eq!(p, spki);
                let der = env.root.join("../p.der");
                std::fs::write(&der, &p).unwrap();
                let out = Command::new("openssl")
                    .args(["pkey", "-pubin", "-inform", "DER", "-noout", "-text", "-in"])
                    .arg(&der)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("Public-Key: (2048 bit)"),
                    "{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            } else {
                assert_eq!(p.len(), 32);
                assert!(spki.ends_with(&p), "openssl: {spki:?}, record: {p:?}");
            }
        }
    } else {
        eprintln!("openssl is not installed: the keys are not checked with it");
    }

    // DNS: ok-* publish their own key, bad-* the other key of their kind, none-* nothing.
    let records = vec![
        txt_option("ok-rsa._domainkey.good.test", &zone["ok-rsa"]),
        txt_option("bad-rsa._domainkey.good.test", &zone["ok-rsa"]),
        txt_option("ok-ed._domainkey.good.test", &zone["ok-ed"]),
        txt_option("bad-ed._domainkey.good.test", &zone["ok-ed"]),
        "--host-record=mail.good.test,192.0.2.25".to_string(),
    ];
    let dns = Dnsmasq::start(&env.root.join(".."), &records);
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    // other.test's keys would only add WARNs: out of the way.
    std::fs::rename(
        env.path("control/dkim/other.test"),
        env.path("control/dkim/.other.test"),
    )
    .unwrap();
    let out = tree.ferryctl(&["check"]);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "OK    DKIM: control/dkim/good.test/ok-rsa.key (rsa): owner and mode right",
        "OK    DKIM: control/dkim/good.test/none-ed.key (ed25519): owner and mode right",
        "OK    DNS: DKIM record ok-rsa._domainkey.good.test publishes the key of control/dkim/good.test/ok-rsa.key (rsa)",
        "OK    DNS: DKIM record ok-ed._domainkey.good.test publishes the key of control/dkim/good.test/ok-ed.key (ed25519)",
        "FAIL  DNS: DKIM record bad-rsa._domainkey.good.test does not publish the key of control/dkim/good.test/bad-rsa.key: published \"v=DKIM1; k=rsa; ",
        "FAIL  DNS: DKIM record bad-ed._domainkey.good.test does not publish the key of control/dkim/good.test/bad-ed.key: published \"v=DKIM1; k=ed25519; ",
        "WARN  DNS: no DKIM record at none-rsa._domainkey.good.test for control/dkim/good.test/none-rsa.key: receivers cannot verify its signatures — publish: none-rsa._domainkey.good.test. IN TXT ( \"v=DKIM1; k=rsa; \" \"p=",
        "WARN  DNS: no DKIM record at none-ed._domainkey.good.test for control/dkim/good.test/none-ed.key",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // The FAIL names the published and the key on disk, and the fix is the right record.
    let bad = out
        .lines()
        .find(|l| l.contains("bad-rsa._domainkey"))
        .unwrap();
    assert!(bad.contains("on disk \"v=DKIM1; k=rsa; p="), "{bad}");
    let fix = format!(
        "publish: bad-rsa._domainkey.good.test. IN TXT ( \"{}\" )",
        zone["bad-rsa"].join("\" \"")
    );
    assert!(bad.contains(&fix), "{bad}\nwanted {fix}");
    assert_eq!(
        out.lines().filter(|l| l.contains("DKIM")).count(),
        12,
        "{out}"
    );

    // A key others may read, one with another owner, and a file that is no key: FAIL each,
    // named by its path (without DNS too).
    let loose = env.path("control/dkim/good.test/ok-ed.key");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(env.path("control/dkim/good.test/junk.key"), "not a key\n").unwrap();
    std::fs::set_permissions(
        env.path("control/dkim/good.test/junk.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let wrong_owner = env.path("control/dkim/good.test/none-ed.key");
    if ferry_e2e::is_root() {
        nix::unistd::chown(&wrong_owner, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    }
    let out = tree.expect(&["check", "--no-dns"], 1);
    assert!(
        out.contains("FAIL  DKIM: control/dkim/good.test/ok-ed.key is readable by others than its owner (mode 644) — chmod 600 "),
        "{out}"
    );
    assert!(
        out.contains("FAIL  DKIM: key not loaded: ")
            && out.contains("good.test/junk.key: not a PEM private key"),
        "{out}"
    );
    if ferry_e2e::is_root() {
        assert!(
            out.contains("FAIL  DKIM: control/dkim/good.test/none-ed.key belongs to root, not to the signer ferryq — chown ferryq "),
            "{out}"
        );
    }
    assert!(!out.contains("DNS:"), "{out}");
    // control/dkim is no unknown control file.
    assert!(!out.contains("unknown control file"), "{out}");
    let list = tree.ferryctl(&["dkim", "list"]);
    assert_eq!(list.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("not loaded: "),
        "{list:?}"
    );

    // setup prints the records of the keys there are, and says how to make one.
    let out = tree.expect(
        &[
            "setup",
            "good.test",
            "--me",
            "mail.good.test",
            "--dry-run",
            "--admin",
            "a@elsewhere.example",
        ],
        0,
    );
    assert!(
        out.contains(&format!(
            "  ok-rsa._domainkey.good.test. IN TXT ( \"{}\" )",
            zone["ok-rsa"].join("\" \"")
        )),
        "{out}"
    );
    assert!(!out.contains("ferryctl dkim keygen good.test"), "{out}");
    let out = tree.expect(
        &[
            "setup",
            "new.test",
            "--dry-run",
            "--admin",
            "a@elsewhere.example",
        ],
        0,
    );
    assert!(
        out.contains("DKIM: no key for new.test yet: ferryctl dkim keygen new.test"),
        "{out}"
    );
    drop(dns);
}
