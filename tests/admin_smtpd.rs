//! What administrators trip over, smtpd's side (issue 8: items 1, 3, 6, 9, 15, and the
//! UTF8SMTP protocol name of RFC 6531 §3.7.4). The real binaries in a temporary root.

#![allow(clippy::unwrap_used)]

use ferry_e2e::smtp::Smtp;
use ferry_e2e::{Env, is_root};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A self-signed certificate for test.example that expires in `days` days: (cert PEM, key
/// PEM, cert DER).
fn certificate(days: u64) -> (String, String, Vec<u8>) {
    let iso = ferry_common::date::iso(ferry_common::date::now_secs() + days * 86_400);
    let (y, m, d): (i32, u8, u8) = (
        iso[0..4].parse().unwrap(),
        iso[5..7].parse().unwrap(),
        iso[8..10].parse().unwrap(),
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["test.example".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// certbot's layout: live/test.example/{fullchain,privkey}.pem are symlinks to archive/...N.pem,
/// the whole tree 0700 root, the key 0600. Renewal N writes the new files and moves the links.
fn certbot_issue(le: &Path, n: u32, days: u64) -> Vec<u8> {
    let archive = le.join("archive/test.example");
    let live = le.join("live/test.example");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    for d in [
        le.to_path_buf(),
        le.join("archive"),
        le.join("live"),
        archive.clone(),
        live.clone(),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let (cert, key, der) = certificate(days);
    let write = |name: &str, text: &str, mode: u32| {
        let p = archive.join(format!("{name}{n}.pem"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let tmp = live.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("../../archive/test.example/{name}{n}.pem"), &tmp)
            .unwrap();
        std::fs::rename(&tmp, live.join(format!("{name}.pem"))).unwrap();
    };
    write("privkey", &key, 0o600);
    write("fullchain", &cert, 0o644);
    der
}

fn check(env: &Env) -> String {
    let out = env.ferryctl(&["check", "--no-dns"]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// What `ferryctl reload` does (the harness runs s6-supervise without s6-svscan, which
/// ferryctl wants to see): HUP through s6.
fn reload(env: &Env) {
    let out = Command::new("s6-svc")
        .arg("-h")
        .arg(env.path("service/smtpd"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reloads(env: &Env) -> usize {
    env.log("smtpd.log")
        .matches("control files reloaded")
        .count()
}

/// The TLS sessions, in Python's ssl (any certificate accepted, the served one printed): A
/// opens a transaction, waits for a line on stdin (the renewal and reload happen then), B is a
/// new session, then A finishes its message.
const SESSIONS: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def session():
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.test")
    s.starttls(context=ctx)
    s.ehlo("client.test")
    return s
a = session()
print("A", a.sock.getpeercert(binary_form=True).hex(), flush=True)
assert a.mail("a@test.example")[0] == 250
assert a.rcpt("open@localhost")[0] == 250
sys.stdin.readline()
b = session()
print("B", b.sock.getpeercert(binary_form=True).hex(), flush=True)
b.sendmail("b@test.example", ["new@localhost"], "Subject: new\r\n\r\nafter the reload\r\n")
b.quit()
code, text = a.data("Subject: open\r\n\r\nacross the reload\r\n")
print("A-DATA", code, flush=True)
a.quit()
"#;

/// Item 1: a certificate renewed in certbot's layout (a root-only key behind a symlink) is
/// served after `ferryctl reload`; a session open across the reload goes on; `check` compares
/// the served certificate with the one on disk and counts the days left.
#[test]
fn renewed_root_only_certificate_loads_on_reload_without_dropping_sessions() {
    let mut env = Env::new();
    let le = env.root.parent().unwrap().join("letsencrypt");
    let old = certbot_issue(&le, 1, 90);
    let live = le.join("live/test.example");
    std::os::unix::fs::symlink(live.join("fullchain.pem"), env.path("control/tlscert")).unwrap();
    std::os::unix::fs::symlink(live.join("privkey.pem"), env.path("control/tlskey")).unwrap();
    env.start_send();
    let port = env.start_smtpd();
    let c = check(&env);
    assert!(
        c.contains("serves control/tlscert over STARTTLS") && c.contains("days left"),
        "{c}"
    );
    let mut py = Command::new("python3")
        .args(["-c", SESSIONS, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let a = lines.next().unwrap().unwrap();
    assert_eq!(a, format!("A {}", hex(&old)));
    // Renewal: a new certificate that expires in 10 days (check must WARN), a new key.
    let new = certbot_issue(&le, 2, 10);
    let c = check(&env);
    assert!(
        c.contains("FAIL") && c.contains("serves another certificate than control/tlscert"),
        "before the reload\n{c}"
    );
    let before = reloads(&env);
    reload(&env);
    env.wait_for("the reload", Duration::from_secs(20), || {
        reloads(&env) > before
    });
    assert!(
        !env.log("smtpd.log")
            .contains("keeping the old TLS settings"),
        "{}",
        env.log("smtpd.log")
    );
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let b = lines.next().unwrap().unwrap();
    assert_eq!(
        b,
        format!("B {}", hex(&new)),
        "the new session gets the new certificate"
    );
    assert_eq!(lines.next().unwrap().unwrap(), "A-DATA 250");
    assert!(py.wait().unwrap().success());
    env.wait_maildir(&env.mailbox("open"), 1);
    env.wait_maildir(&env.mailbox("new"), 1);
    let c = check(&env);
    let line = c
        .lines()
        .find(|l| l.contains("serves control/tlscert"))
        .unwrap_or_else(|| panic!("{c}"));
    assert!(
        line.starts_with("WARN")
            && (line.contains(" 9 days left") || line.contains(" 10 days left")),
        "{c}"
    );
    if is_root() {
        // The key really is root's only: ferryd could not have read it.
        let st = std::fs::metadata(le.join("archive/test.example/privkey2.pem")).unwrap();
        assert_eq!(st.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(st.uid(), 0);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn header_of(msg: &[u8]) -> String {
    let s = String::from_utf8_lossy(msg).to_string();
    s.split("\n\n").next().unwrap_or("").to_string()
}

/// Item 3 and 6: `sendmail -bs` by a normal user reaches other users and virtual domains (the
/// install's routing, not the caller's uid), answers `queued as ID`, and a message without
/// Date, Message-ID and From gets them.
#[test]
fn sendmail_bs_by_a_user_routes_as_the_install_and_completes_the_header() {
    let mut env = Env::new();
    env.start_send();
    let (caller, carol) = if is_root() {
        let caller = env.user_rcpt();
        let carol = env.user_rcpt();
        (Some(caller), Some(carol))
    } else {
        (None, None)
    };
    let mut rcpts = vec!["bs@localhost".to_string()];
    if let Some(c) = &carol {
        rcpts.push(c.addr());
    }
    let mut script = String::from("EHLO local\r\nMAIL FROM:<me@test.example>\r\n");
    for r in &rcpts {
        script.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    script.push_str("DATA\r\nSubject: via -bs\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let user = caller.as_ref().map(|c| ferry_e2e::users::TestUser {
        name: c.local.clone(),
        uid: c.uid,
        gid: c.gid,
        home: c.home.clone(),
    });
    let out = env.sendmail_as(user.as_ref(), &["-bs"], script.as_bytes());
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        said.matches("250 2.1.5 Ok").count(),
        rcpts.len(),
        "every recipient accepted\n{said}"
    );
    let id = said
        .split("250 2.0.0 Ok: queued as ")
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{said}"
    );
    let got = env.wait_maildir(&env.mailbox("bs"), 1);
    let h = header_of(&got[0]);
    assert!(h.contains("\nSubject: via -bs\nDate: "), "{h}");
    assert!(
        h.contains("\nMessage-ID: <") && h.contains("@test.example>\n"),
        "{h}"
    );
    assert!(h.ends_with("\nFrom: <me@test.example>"), "{h}");
    if let Some(c) = &carol {
        env.wait_maildir(&c.maildir(), 1);
    }
}

/// Item 6: a relay client's message gets the missing Date, Message-ID and From; a message
/// from anybody else is stored as it came.
#[test]
fn relay_clients_get_missing_header_fields_others_do_not() {
    let mut env = Env::new();
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    let (code, text) = s.mail(
        "sub@test.example",
        &["relayed@localhost"],
        "Subject: bare\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = env.wait_maildir(&env.mailbox("relayed"), 1);
    let h = header_of(&got[0]);
    assert!(h.contains("\nSubject: bare\nDate: "), "{h}");
    assert!(h.contains("\nMessage-ID: <"), "{h}");
    assert!(h.ends_with("\nFrom: <sub@test.example>"), "{h}");
    // A complete header is left alone.
    let full = "From: A <a@x.example>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@x.example>\r\nSubject: full\r\n\r\nbody\r\n";
    let mut s = Smtp::connect(port);
    assert_eq!(s.mail("a@x.example", &["full@localhost"], full).0, 250);
    let got = env.wait_maildir(&env.mailbox("full"), 1);
    assert_eq!(
        ferry_e2e::strip_trace(&got[0]),
        full.replace("\r\n", "\n").into_bytes()
    );
    // Not a relay client: as it came.
    env.control("relayclients", "# none");
    let before = reloads(&env);
    reload(&env);
    env.wait_for("the reload", Duration::from_secs(20), || {
        reloads(&env) > before
    });
    let mut s = Smtp::connect(port);
    assert_eq!(
        s.mail(
            "x@else.example",
            &["inbound@localhost"],
            "Subject: bare\r\n\r\nbody\r\n"
        )
        .0,
        250
    );
    let got = env.wait_maildir(&env.mailbox("inbound"), 1);
    assert_eq!(ferry_e2e::strip_trace(&got[0]), b"Subject: bare\n\nbody\n");
}

/// Item 9: after `me` changes, `ferryctl reload` makes the Received line say the new name
/// (qwriter reloads with smtpd).
#[test]
fn reload_changes_the_received_by_name() {
    let mut env = Env::new();
    env.start_send();
    let port = env.start_smtpd();
    env.control("me", "renamed.example");
    let before = reloads(&env);
    reload(&env);
    env.wait_for("the reload", Duration::from_secs(20), || {
        reloads(&env) > before
            && env
                .log("smtpd.log")
                .contains("qwriter: control files reloaded")
    });
    let mut s = Smtp::connect(port);
    let (code, text) = s.mail(
        "a@test.example",
        &["by@localhost"],
        "Subject: by\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = env.wait_maildir(&env.mailbox("by"), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(
        text.contains("\n\tby renamed.example (ferry) with "),
        "{text}"
    );
}

/// Item 15: one log line per refused sender or recipient, with the client's address, the
/// address and the reply; 452s count in rejected_rcpts.
#[test]
fn every_refusal_is_logged_with_ip_address_and_code() {
    let mut env = Env::new();
    env.control("relayclients", "# none");
    env.control("badmailfrom", "spam@bad.example");
    env.control("badrcptto", "blocked@localhost");
    env.control("databytes", "1000");
    env.control("maxrcpt", "1");
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO f2b.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<spam@bad.example>").0, 553);
    assert_eq!(s.cmd("MAIL FROM:<big@x.example> SIZE=5000").0, 552);
    assert_eq!(s.cmd("MAIL FROM:<ok@x.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<victim@elsewhere.example>").0, 554);
    assert_eq!(s.cmd("RCPT TO:<nosuch@test.example>").0, 550);
    assert_eq!(s.cmd("RCPT TO:<blocked@localhost>").0, 550);
    assert_eq!(s.cmd("RCPT TO:<first@localhost>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<second@localhost>").0, 452);
    assert_eq!(s.cmd("QUIT").0, 221);
    env.wait_for("the session line", Duration::from_secs(10), || {
        env.log("smtpd.log").contains("helo=f2b.test")
    });
    let log = env.log("smtpd.log");
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("smtpd: refused ip="))
        .collect();
    let want = [
        "refused ip=127.0.0.1 from=<spam@bad.example> reply=553 5.7.1",
        "refused ip=127.0.0.1 from=<big@x.example> reply=552 5.3.4",
        "refused ip=127.0.0.1 from=<ok@x.example> rcpt=<victim@elsewhere.example> reply=554 5.7.1",
        "refused ip=127.0.0.1 from=<ok@x.example> rcpt=<nosuch@test.example> reply=550 5.1.1",
        "refused ip=127.0.0.1 from=<ok@x.example> rcpt=<blocked@localhost> reply=550 5.7.1",
        "refused ip=127.0.0.1 from=<ok@x.example> rcpt=<second@localhost> reply=452 4.5.3",
    ];
    assert_eq!(refused.len(), want.len(), "{log}");
    for (line, w) in refused.iter().zip(want) {
        assert!(line.contains(w), "{line:?} does not say {w:?}\n{log}");
    }
    assert!(
        log.contains("helo=f2b.test") && log.contains("rejected_rcpts=4"),
        "{log}"
    );
}

/// RFC 6531 §3.7.4: a message received with SMTPUTF8 says so in its Received line.
#[test]
fn smtputf8_message_is_received_with_utf8smtp() {
    let mut env = Env::new();
    env.start_send();
    let port = env.start_smtpd();
    let mut s = Smtp::connect(port);
    assert_eq!(s.cmd("EHLO u.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@test.example> SMTPUTF8").0, 250);
    assert_eq!(s.cmd("RCPT TO:<utf@localhost>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send("Subject: ünïcode\r\n\r\nx\r\n".as_bytes());
    assert_eq!(s.cmd(".").0, 250);
    let mut plain = Smtp::connect(port);
    assert_eq!(
        plain
            .mail(
                "a@test.example",
                &["ascii@localhost"],
                "Subject: a\r\n\r\nx\r\n"
            )
            .0,
        250
    );
    let got = env.wait_maildir(&env.mailbox("utf"), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.contains("(ferry) with UTF8SMTP\n"), "{text}");
    let got = env.wait_maildir(&env.mailbox("ascii"), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.contains("(ferry) with ESMTP\n"), "{text}");
}
