//! Submission with SMTP AUTH (issue 9): `smtpd -submission` (STARTTLS, then AUTH) and
//! `smtpd -smtps` (implicit TLS), the password checker as ferrya, sender binding, relaying by
//! authenticated users, the fix-ups of submitted mail, throttling of failed AUTHs. Real
//! clients: swaks and Python's smtplib, against the real binaries in a temporary root.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::Scripted;
use ferry_e2e::{Env, free_port, is_root};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

fn passwd(env: &Env, name: &str, password: &str) {
    let mut c = Command::new(env.root.join("bin/ferryctl"))
        .args(["passwd", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ferryctl passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A root with the submission services and send running, and bob@localhost's password.
fn setup() -> (Env, u16, u16) {
    setup_with(&[])
}

fn setup_with(controls: &[(&str, &str)]) -> (Env, u16, u16) {
    let mut env = Env::new();
    for (name, value) in controls {
        env.control(name, value);
    }
    passwd(&env, "bob@localhost", PASSWORD);
    env.start_send();
    let (sub, smtps) = env.start_submission();
    (env, sub, smtps)
}

fn swaks(args: &[&str]) -> Output {
    Command::new("swaks")
        .args(["--timeout", "20"])
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a Python snippet with `smtplib`, `ssl` and `ctx` (no verification) imported; what it
/// prints.
fn python(code: &str) -> String {
    let script = format!(
        "import smtplib, ssl, sys\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\n{code}\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "python: {t}\n{script}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn swaks_plain_over_starttls_and_login_over_implicit_tls_deliver() {
    let (env, sub, smtps) = setup();
    let o = swaks(&[
        "--server",
        &format!("127.0.0.1:{sub}"),
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "bob@localhost",
        "--auth-password",
        PASSWORD,
        "--from",
        "bob@localhost",
        "--to",
        "alice@localhost",
        "--header",
        "Subject: plain",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("235 2.7.0"), "{t}");
    let o = swaks(&[
        "--server",
        &format!("127.0.0.1:{smtps}"),
        "--tlsc",
        "--auth",
        "LOGIN",
        "--auth-user",
        "bob@localhost",
        "--auth-password",
        PASSWORD,
        "--from",
        "bob+lists@localhost",
        "--to",
        "alice@localhost",
        "--header",
        "Subject: login",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("334 VXNlcm5hbWU6") && t.contains("235 2.7.0"),
        "{t}"
    );
    let got = env.wait_maildir(&env.mailbox("alice"), 2);
    for m in &got {
        let m = String::from_utf8_lossy(m);
        assert!(m.contains("with ESMTPSA ("), "{m}");
        assert!(m.contains("(authenticated as bob@localhost)"), "{m}");
        // submissionreceived full (the default): the client's address is shown.
        assert!(m.contains(" ([127.0.0.1])\n\tby "), "{m}");
    }
    let log = env.log("submission.log");
    assert!(
        log.contains("auth ip=127.0.0.1 user=bob@localhost ok"),
        "{log}"
    );
    assert!(log.contains("auth=bob@localhost"), "{log}");
    assert!(env.log("smtps.log").contains("auth=bob@localhost"));
}

#[test]
fn smtplib_starttls_login_and_the_refusals() {
    let (env, sub, _) = setup();
    let out = python(&format!(
        r#"
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=20)
code, ehlo = s.ehlo()
print("before-tls-auth" if b"AUTH" in ehlo else "before-tls-no-auth")
print("auth-before-tls", s.docmd("AUTH", "PLAIN AGJvYgB4")[0])
print("mail-before-tls", s.docmd("MAIL", "FROM:<bob@localhost>")[0])
s.starttls(context=ctx)
code, ehlo = s.ehlo()
print("after-tls-auth" if b"AUTH PLAIN LOGIN" in ehlo else "after-tls-no-auth")
print("mail-before-auth", s.docmd("MAIL", "FROM:<bob@localhost>")[0])
try:
    s.login("bob@localhost", "wrong")
except smtplib.SMTPAuthenticationError as e:
    print("wrong", e.smtp_code, e.smtp_error.decode()[:5])
print("bad-base64", s.docmd("AUTH", "PLAIN !!!!")[0])
print("cancel", s.docmd("AUTH", "LOGIN")[0], s.docmd("*")[0])
s.login("bob@localhost", "{PASSWORD}")
print("spoofed", s.docmd("MAIL", "FROM:<carol@localhost> AUTH=<>")[0])
print("own-ext", s.docmd("MAIL", "FROM:<bob-x@localhost> AUTH=bob@localhost")[0])
s.rset()
s.sendmail("bob@localhost", ["alice@localhost", "hidden@localhost"], b"Subject: smtplib\r\nTo: alice@localhost\r\nBcc: hidden@localhost\r\n\r\nhi\r\n")
s.quit()
"#
    ));
    for want in [
        "before-tls-no-auth",
        "auth-before-tls 538",
        "mail-before-tls 530",
        "after-tls-auth",
        "mail-before-auth 530",
        "wrong 535 5.7.8",
        "bad-base64 501",
        "cancel 334 501",
        "spoofed 553",
        "own-ext 250",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // Submitted mail is fixed up: Date, Message-ID and From added, Bcc removed.
    for who in ["alice", "hidden"] {
        let m = String::from_utf8_lossy(&env.wait_maildir(&env.mailbox(who), 1)[0]).into_owned();
        assert!(!m.contains("Bcc:"), "{m}");
        assert!(
            m.contains("\nDate: ") && m.contains("\nMessage-ID: <"),
            "{m}"
        );
        assert!(m.contains("\nFrom: <bob@localhost>"), "{m}");
    }
    let log = env.log("submission.log");
    assert!(
        log.contains("auth failed ip=127.0.0.1 user=bob@localhost reply=535 5.7.8"),
        "{log}"
    );
    assert!(
        log.contains("from=<carol@localhost>") && log.contains("553 5.7.1"),
        "{log}"
    );
}

#[test]
fn control_senders_adds_addresses() {
    let (_env, sub, _) = setup_with(&[("senders", "team@virt.example: bob@localhost")]);
    let out = python(&format!(
        r#"
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=20)
s.starttls(context=ctx)
s.login("BOB@localhost", "{PASSWORD}")
print("team", s.docmd("MAIL", "FROM:<team@virt.example>")[0])
s.rset()
print("other", s.docmd("MAIL", "FROM:<x@virt.example>")[0])
"#
    ));
    assert!(
        out.contains("team 250") && out.contains("other 553"),
        "{out}"
    );
}

#[test]
fn from_header_addresses_must_be_owned_too() {
    let (env, sub, _) = setup_with(&[("senders", "team@virt.example: bob@localhost")]);
    let out = python(&format!(
        r#"
def send(tag, frm):
    try:
        s.sendmail("bob@localhost", ["alice@localhost"], ("From: " + frm + "\r\nSubject: " + tag + "\r\n\r\nhi\r\n").encode())
        print(tag, "accepted")
    except smtplib.SMTPDataError as e:
        print(tag, e.smtp_code, e.smtp_error.decode())
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=20)
s.starttls(context=ctx)
s.login("bob@localhost", "{PASSWORD}")
send("spoofed", "Carol <carol@localhost>")
send("second-spoofed", "\"Bob\" <bob@localhost>,\r\n carol@localhost")
send("two-fields", "bob@localhost\r\nFrom: carol@localhost")
send("owned", "Bob <BOB-x@localhost>, team@virt.example (the team)")
s.quit()
"#
    ));
    for want in [
        "spoofed 553 5.7.1 <carol@localhost>: From: address not owned by user bob@localhost",
        "second-spoofed 553 5.7.1 <carol@localhost>",
        "two-fields 553 5.7.1 <carol@localhost>",
        "owned accepted",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // Nothing of the refused messages was queued: only the last one arrives.
    let got = env.wait_maildir(&env.mailbox("alice"), 1);
    env.wait_queue_empty();
    let got_now = env.maildir_new(&env.mailbox("alice"));
    assert_eq!(got_now.len(), 1, "{got_now:?}");
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: owned"));
    let log = env.log("submission.log");
    assert!(log.contains("From: address not owned"), "{log}");
}

#[test]
fn submissionreceived_hide_keeps_the_client_out_of_the_received_line() {
    let (env, sub, smtps) = setup_with(&[("submissionreceived", "hide")]);
    python(&format!(
        r#"
for port, tls in (({sub}, False), ({smtps}, True)):
    s = smtplib.SMTP_SSL("127.0.0.1", port, timeout=20, context=ctx, local_hostname="bobs-laptop.lan") if tls else smtplib.SMTP("127.0.0.1", port, timeout=20, local_hostname="bobs-laptop.lan")
    if not tls:
        s.starttls(context=ctx)
    s.login("bob@localhost", "{PASSWORD}")
    s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: hidden\r\n\r\nhi\r\n")
    s.quit()
"#
    ));
    for m in env.wait_maildir(&env.mailbox("alice"), 2) {
        let m = String::from_utf8_lossy(&m).into_owned();
        assert!(
            m.contains("\nReceived: from authenticated-user\n\tby "),
            "{m}"
        );
        assert!(m.contains("with ESMTPSA (TLS"), "{m}");
        assert!(m.contains("(authenticated as bob@localhost)"), "{m}");
        assert!(
            !m.contains("127.0.0.1") && !m.contains("bobs-laptop"),
            "{m}"
        );
    }
    // The log keeps the address (fail2ban, the admin).
    assert!(env.log("submission.log").contains("ip=127.0.0.1"));
}

#[test]
fn an_authenticated_user_relays_through_smtproutes() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Scripted::start(dir.path().join("rx"), "127.0.0.1", free_port(), "{}");
    let route = format!("far.example:[127.0.0.1]:{}", rx.port);
    let (env, sub, _) = setup_with(&[("smtproutes", &route)]);
    let out = python(&format!(
        r#"
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=20)
s.starttls(context=ctx)
s.login("bob@localhost", "{PASSWORD}")
print(s.sendmail("bob@localhost", ["friend@far.example"], b"Subject: out\r\n\r\nhi\r\n"))
"#
    ));
    assert!(out.contains("{}"), "{out}");
    env.wait_for("relayed mail", Duration::from_secs(30), || {
        rx.received().iter().any(|m| m.contains("Subject: out"))
    });
    let m = rx.received().join("");
    assert!(m.contains("(authenticated as bob@localhost)"), "{m}");
}

#[test]
fn failed_auths_are_throttled_per_ip() {
    let mut env = Env::new();
    passwd(&env, "bob@localhost", PASSWORD);
    env.control("authfailures", "3");
    let (sub, _) = env.start_submission();
    // Three wrong passwords (each 535 after a delay), then even the right one is refused.
    let out = python(&format!(
        r#"
import base64
def plain(pw):
    return "PLAIN " + base64.b64encode(b"\0bob@localhost\0" + pw.encode()).decode()
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=30)
s.starttls(context=ctx)
s.ehlo()
for i in range(3):
    print("fail", s.docmd("AUTH", plain("wrong"))[0])
try:
    print("fourth", s.docmd("AUTH", plain("{PASSWORD}"))[0])
except smtplib.SMTPServerDisconnected:
    print("fourth closed")
"#
    ));
    assert_eq!(out.matches("fail 535").count(), 3, "{out}");
    assert!(out.contains("fourth 421"), "{out}");
    let log = env.log("submission.log");
    assert!(
        log.contains("auth refused ip=127.0.0.1 user=bob@localhost reply=throttled"),
        "{log}"
    );
}

/// The failure counts are per service (docs/SMTP.md, Throttling): submission's do not
/// throttle smtps.
#[test]
fn failed_auth_counts_are_per_service() {
    let (_env, sub, smtps) = setup_with(&[("authfailures", "1")]);
    let out = python(&format!(
        r#"
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=30)
s.starttls(context=ctx)
s.ehlo()
import base64
print("fail", s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob@localhost\0wrong").decode())[0])
try:
    print("again", s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob@localhost\0{PASSWORD}").decode())[0])
except smtplib.SMTPServerDisconnected:
    print("again closed")
t = smtplib.SMTP_SSL("127.0.0.1", {smtps}, timeout=30, context=ctx)
print("smtps", t.login("bob@localhost", "{PASSWORD}")[0])
"#
    ));
    assert!(out.contains("fail 535"), "{out}");
    assert!(out.contains("again 421"), "{out}");
    assert!(out.contains("smtps 235"), "{out}");
}

#[test]
fn the_password_file_is_for_the_checker_only() {
    let env = Env::new();
    passwd(&env, "bob", PASSWORD);
    let path = env.path("control/passwords");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("bob:$argon2id$v=19$m=19456,t=2,p=1$"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD));
    let list = env.ferryctl(&["passwd", "--list"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "bob");
    if !is_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(m.mode() & 0o777, 0o640);
    assert_eq!(m.uid(), 0);
    let ferrya = nix::unistd::Group::from_name("ferrya").unwrap().unwrap();
    assert_eq!(m.gid(), ferrya.gid.as_raw());
    let can_read = |user: &str| {
        let u = nix::unistd::User::from_name(user).unwrap().unwrap();
        Command::new("cat")
            .arg(&path)
            .uid(u.uid.as_raw())
            .gid(u.gid.as_raw())
            .output()
            .unwrap()
            .status
            .success()
    };
    use std::os::unix::process::CommandExt;
    assert!(!can_read("ferryd"), "smtpd's user reads the password file");
    assert!(!can_read("ferryq"));
    assert!(can_read("ferrya"));
    let del = env.ferryctl(&["passwd", "--delete", "bob"]);
    assert!(del.status.success());
    assert_eq!(
        env.ferryctl(&["passwd", "--delete", "bob"]).status.code(),
        Some(1)
    );
}

#[test]
fn failed_auths_are_throttled_per_name_from_any_address() {
    let mut env = Env::new();
    passwd(&env, "bob@localhost", PASSWORD);
    env.control("authfailures", "2");
    let (sub, _) = env.start_submission();
    // Two failures for bob from 127.0.0.2, then bob's right password from 127.0.0.3: 454.
    let out = python(&format!(
        r#"
import base64
def plain(pw):
    return "PLAIN " + base64.b64encode(b"\0bob@localhost\0" + pw.encode()).decode()
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=30, source_address=("127.0.0.2", 0))
s.starttls(context=ctx)
s.ehlo()
for i in range(2):
    print("fail", s.docmd("AUTH", plain("wrong"))[0])
t = smtplib.SMTP("127.0.0.1", {sub}, timeout=30, source_address=("127.0.0.3", 0))
t.starttls(context=ctx)
t.ehlo()
print("other-address", t.docmd("AUTH", plain("{PASSWORD}"))[0])
"#
    ));
    assert_eq!(out.matches("fail 535").count(), 2, "{out}");
    assert!(out.contains("other-address 454"), "{out}");
    let log = env.log("submission.log");
    assert!(
        log.contains("auth failed ip=127.0.0.2 user=bob@localhost"),
        "{log}"
    );
    assert!(
        log.contains("auth refused ip=127.0.0.3 user=bob@localhost"),
        "{log}"
    );
}

#[test]
fn a_checkpassword_program_answers_for_names_not_in_the_file() {
    let mut env = Env::new();
    passwd(&env, "bob@localhost", PASSWORD);
    // qmail's interface: name NUL password NUL timestamp NUL on fd 3, then exec the rest.
    let script = env.path("checkpw.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\nIFS= read -r -d '' user <&3; IFS= read -r -d '' pw <&3\n\
         [ \"$user\" = carol@localhost ] && [ \"$pw\" = s3cret ] && exec \"$@\"\n\
         [ \"$user\" = down@localhost ] && exit 111\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.control("checkpassword", &script.display().to_string());
    let (sub, _) = env.start_submission();
    let out = python(&format!(
        r#"
import base64
def auth(s, user, pw):
    return s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode())[0]
for user, pw in [("carol@localhost", "s3cret"), ("carol@localhost", "nope"), ("down@localhost", "x"), ("bob@localhost", "{PASSWORD}"), ("bob@localhost", "s3cret")]:
    s = smtplib.SMTP("127.0.0.1", {sub}, timeout=30)
    s.starttls(context=ctx)
    s.ehlo()
    print(user, pw, auth(s, user, pw))
    s.close()
"#
    ));
    for want in [
        "carol@localhost s3cret 235",
        "carol@localhost nope 535",
        "down@localhost x 454",
        // Names in control/passwords are decided by the file alone.
        &format!("bob@localhost {PASSWORD} 235"),
        "bob@localhost s3cret 535",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
}

#[test]
fn ferryctl_check_reports_the_submission_services() {
    let mut env = Env::new();
    let said = String::from_utf8_lossy(&env.ferryctl(&["check"]).stdout).into_owned();
    assert!(
        said.lines().any(|l| l.starts_with("OK")
            && l.contains("submission is down (it needs control/tlscert and a password")),
        "{said}"
    );
    passwd(&env, "bob@localhost", PASSWORD);
    ferry_e2e::write_test_certificate(&env.root, "localhost");
    let said = String::from_utf8_lossy(&env.ferryctl(&["check"]).stdout).into_owned();
    if is_root() {
        // No supervision tree yet: the services are not up although they could be.
        assert!(
            said.lines().any(|l| l.starts_with("WARN")
                && l.contains("smtps is down, though TLS and 1 password(s) are in place")),
            "{said}"
        );
    }
    let (sub, _) = env.start_submission();
    let said = String::from_utf8_lossy(&env.ferryctl(&["check"]).stdout).into_owned();
    assert!(
        said.lines().any(|l| l.starts_with("OK")
            && l.contains(&format!(
                "submission is up on 127.0.0.1:{sub}: TLS and 1 password(s)"
            ))),
        "{said}"
    );
    if is_root() {
        std::fs::set_permissions(
            env.path("control/passwords"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let said = String::from_utf8_lossy(&env.ferryctl(&["check"]).stdout).into_owned();
        assert!(
            said.lines().any(|l| l.starts_with("FAIL")
                && l.contains("control/passwords is not mode 0640 root:ferrya (mode 644)")),
            "{said}"
        );
    }
}

#[test]
fn remote_deliver_authenticates_to_a_second_ferry_as_smarthost() {
    // The smarthost: a second ferry whose submission service has bob's password and a
    // certificate for relay.test from a CA the sender trusts.
    let (ca, cert, key) = ferry_e2e::ca_and_leaf("relay.test");
    let mut relay = Env::new();
    relay.control("virtualdomains", "localhost:mail/*\nfar.example:mail/*\n");
    relay.control("senders", "@test.example: bob@localhost");
    std::fs::write(relay.path("control/tlscert"), &cert).unwrap();
    std::fs::write(relay.path("control/tlskey"), &key).unwrap();
    passwd(&relay, "bob@localhost", PASSWORD);
    relay.start_send();
    let (sub, _) = relay.start_submission();
    let dns = ferry_e2e::remote::Dns::start(&["--host-record=relay.test,127.0.0.1".into()]);
    let mut env = Env::new();
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("smtproutes", &format!(":relay.test:{sub}"));
    env.control("smtpauth", &format!("relay.test bob@localhost {PASSWORD}"));
    env.control("timeoutconnect", "5");
    env.control("timeoutremote", "10");
    std::fs::write(env.path("control/tlsca"), &ca).unwrap();
    env.start_send();
    let out = env.sendmail(
        &["-f", "s@test.example", "friend@far.example"],
        &ferry_e2e::message("via-smarthost", "hello\n"),
    );
    assert!(out.status.success());
    let got = relay.wait_maildir(&relay.mailbox("friend"), 1);
    let m = String::from_utf8_lossy(&got[0]);
    assert!(m.contains("with ESMTPSA (TLSv1.3"), "{m}");
    assert!(m.contains("(authenticated as bob@localhost)"), "{m}");
    let log = env.log("send.log");
    assert!(
        log.contains("verified=yes") && log.contains("result=delivered"),
        "{log}"
    );
}

#[test]
fn smarthost_credentials_never_go_over_plaintext() {
    // A smarthost without STARTTLS: the mail waits (4.7.4), no AUTH is ever sent.
    let dns = ferry_e2e::remote::Dns::start(&["--host-record=plain.test,127.0.0.2".into()]);
    let mut env = Env::new();
    let rx = Scripted::start(env.path("../plainrx"), "127.0.0.2", free_port(), "{}");
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("smtproutes", &format!(":plain.test:{}", rx.port));
    env.control("smtpauth", "plain.test bob secret");
    env.control("timeoutconnect", "5");
    env.control("timeoutremote", "10");
    env.start_send();
    let out = env.sendmail(
        &["-f", "s@test.example", "friend@far.example"],
        &ferry_e2e::message("no-plaintext", "hello\n"),
    );
    assert!(out.status.success());
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log")
            .contains("<friend@far.example> deferred")
    });
    let log = env.log("send.log");
    assert!(
        log.contains("4.7.4 plain.test does not offer STARTTLS"),
        "{log}"
    );
    assert!(rx.transactions().is_empty() && rx.received().is_empty());
}

/// ferryctl knows the submission services: setup says how to add the first user and bring
/// them up; start leaves them down (not a failure) until a certificate and a password exist,
/// then enables and starts them; stat, reload (smtpd's verdict from their logs), restart, log
/// and stop handle them.
#[test]
fn ferryctl_start_stat_reload_restart_stop_handle_the_submission_services() {
    use ferry_e2e::supervision::Tree;
    let env = Env::new();
    let setup = env.ferryctl(&["setup", "test.example", "--dry-run", "--ip", "192.0.2.1"]);
    let t = text(&setup);
    assert!(setup.status.success(), "{t}");
    assert!(
        t.contains("add the first user: ") && t.contains("ferryctl passwd NAME"),
        "{t}"
    );
    assert!(
        t.contains("ferryctl start   (brings up submission on port 587"),
        "{t}"
    );
    let (sub, smtps) = (free_port(), free_port());
    env.control("submissionlisten", &format!("127.0.0.1:{sub}"));
    env.control("smtpslisten", &format!("127.0.0.1:{smtps}"));
    let (tree, _) = Tree::start(&env);
    let stat = tree.expect(&["stat"], 0);
    for svc in ["submission", "smtps"] {
        assert!(
            stat.contains(&format!(
                "{svc:<10} down  (not configured: no control/tlscert and tlskey, no password"
            )),
            "{stat}"
        );
    }
    let out = tree.expect(&["start"], 0);
    assert!(
        out.contains("submission: not started (not configured: ")
            && out.contains("smtps: not started (not configured: "),
        "{out}"
    );
    // A certificate and a user: start enables and starts both.
    ferry_e2e::write_test_certificate(&env.root, "localhost");
    passwd(&env, "bob@localhost", PASSWORD);
    let out = tree.expect(&["start"], 0);
    for svc in ["submission", "smtps"] {
        assert!(
            out.contains(&format!("{svc}: configured: removed "))
                && out.contains(&format!("{svc}: started (pid ")),
            "{out}"
        );
        assert!(!env.path(&format!("service/{svc}/down")).exists());
    }
    ferry_e2e::wait_for_greeting(sub);
    let stat = tree.expect(&["stat"], 0);
    let pid = tree.pid("submission").unwrap();
    assert!(
        stat.contains(&format!("submission up    pid {pid} "))
            && stat.contains("smtps      up    pid "),
        "{stat}"
    );
    let out = tree.expect(&["reload"], 0);
    assert!(
        out.contains(&format!("submission: sent HUP to pid {pid}: reloaded"))
            && out.contains("smtps: sent HUP to pid ")
            && out.contains("smtpd: sent HUP to pid "),
        "{out}"
    );
    let out = tree.expect(&["restart"], 0);
    assert!(
        out.contains(&format!("submission: restarted (pid {pid} → pid "))
            && out.contains("smtps: restarted (pid "),
        "{out}"
    );
    let mut tail = Command::new(env.path("bin/ferryctl"))
        .args(["log", "smtps", "-n", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tail.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(first.contains("smtpd: "), "{first:?}");
    let out = tree.expect(&["stop"], 0);
    assert!(
        out.contains("submission: stopped") && out.contains("smtps: stopped"),
        "{out}"
    );
    // Stopped but enabled: stat counts them as down.
    let stat = tree.expect(&["stat"], 1);
    assert!(stat.contains("submission DOWN"), "{stat}");
}
