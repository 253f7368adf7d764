//! MTA-STS (issue 11, item 3) end to end: dnsmasq publishes `_mta-sts.DOMAIN` TXT records and
//! the MX and `mta-sts.` hosts, Python's http.server over TLS serves the policies (its
//! certificate from a test CA in `tlsca`), a second ferry with a certificate of that CA takes
//! the mail. In `enforce`, a matching MX with a valid certificate gets the mail over verified
//! TLS; a certificate without the MX name, and an MX the policy does not list, defer with
//! 4.7.5 and nothing goes in the clear; `testing` delivers and logs what enforce would skip.
//! The policy is cached in queue/sts and enforced from there when its server is gone; a
//! message with `TLS-Required: No` sets it aside.
//! REQUIRETLS (item 5) rides on it: such a message goes only to an MX a policy vouches for.

#![allow(clippy::unwrap_used)]

use ferry_e2e::remote::Dns;
use ferry_e2e::{Env, KillOnDrop, free_port, message};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Serves BASE/HOST/PATH for the request's Host over HTTPS (text/plain), logging each request.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys, os
base, certf, keyf, port, logf = sys.argv[1:]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get('Host') or '').split(':')[0]
        with open(logf, 'a') as f:
            f.write(f"{host} {self.path}\n")
        try:
            body = open(os.path.join(base, host, self.path.lstrip('/')), 'rb').read()
        except OSError:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(certf, keyf)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

fn https_server(dir: &Path, port: u16) -> KillOnDrop {
    let child = Command::new("python3")
        .arg("-c")
        .arg(HTTPS_SERVER)
        .arg(dir.join("www"))
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(port.to_string())
        .arg(dir.join("requests.log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    let guard = KillOnDrop(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the HTTPS server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

fn policy(dir: &Path, domain: &str, text: &str) {
    let d = dir
        .join("www")
        .join(format!("mta-sts.{domain}/.well-known"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("mta-sts.txt"), text).unwrap();
}

/// A receiving ferry with `cert` and `key` that takes mail for `domains` (catch-alls of
/// mail/, so `x@d` lands in mailbox `x`), and its SMTP port.
fn receiver(cert: &str, key: &str, domains: &[&str]) -> (Env, u16) {
    let mut receiver = Env::new();
    let vd: String = domains.iter().map(|d| format!("{d}:mail/*\n")).collect();
    receiver.control("virtualdomains", &format!("localhost:mail/*\n{vd}"));
    std::fs::write(receiver.root.join("control/tlscert"), cert).unwrap();
    std::fs::write(receiver.root.join("control/tlskey"), key).unwrap();
    receiver.start_send();
    let port = receiver.start_smtpd();
    (receiver, port)
}

/// The HTTPS server's directory (its certificate and key, www/), beside `env`'s root.
fn sts_dir(env: &Env, cert: &str, key: &str) -> PathBuf {
    let dir = env.root.join("..").join("sts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    dir
}

/// Points the sending ferry at `dns`, the receiver's `port` and the policies' `https_port`,
/// trusting `ca`.
fn sender_controls(env: &Env, dns: &Dns, port: u16, https_port: u16, ca: &str) {
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("remoteport", &port.to_string());
    env.control("mtastsport", &https_port.to_string());
    std::fs::write(env.root.join("control/tlsca"), ca).unwrap();
}

/// Runs a Python script with `args`; what it prints, as JSON.
fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `good` of `good.test`.
fn label(domain: &str) -> &str {
    domain.split('.').next().unwrap_or(domain)
}

/// The remote-deliver log line of `rcpt` that says `word` (delivered, deferred).
fn result_line(env: &Env, rcpt: &str, word: &str) -> Option<String> {
    env.log("send.log")
        .lines()
        .find(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains(&format!("result={word}")))
        .map(str::to_string)
}

#[test]
fn enforce_verifies_matches_and_caches_testing_only_reports() {
    let domains = ["good.test", "badname.test", "nomatch.test", "testing.test"];
    let mut names: Vec<String> = domains.iter().map(|d| format!("mta-sts.{d}")).collect();
    // The receiver's certificate names mx.good.test only of the MX hosts.
    names.push("mx.good.test".into());
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (ca, cert, key) = ferry_e2e::ca_and_leaf_for(&name_refs);

    let (receiver, port) = receiver(&cert, &key, &domains);

    let mut args = Vec::new();
    for d in domains {
        args.push(format!("--mx-host={d},mx.{d},10"));
        args.push(format!("--host-record=mx.{d},127.0.0.1"));
        args.push(format!("--host-record=mta-sts.{d},127.0.0.1"));
        args.push(format!("--txt-record=_mta-sts.{d},v=STSv1; id=20261202"));
    }
    let dns = Dns::start(&args);

    let mut env = Env::new();
    let dir = sts_dir(&env, &cert, &key);
    let enforce =
        |mx: &str| format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n");
    policy(&dir, "good.test", &enforce("mx.good.test"));
    policy(&dir, "badname.test", &enforce("*.badname.test"));
    policy(&dir, "nomatch.test", &enforce("mx.elsewhere.test"));
    policy(
        &dir,
        "testing.test",
        "version: STSv1\nmode: testing\nmx: mx.elsewhere.test\nmax_age: 86400\n",
    );
    let https_port = free_port();
    let https = https_server(&dir, https_port);

    sender_controls(&env, &dns, port, https_port, &ca);
    env.control("timeoutconnect", "5");
    env.control("timeoutremote", "10");
    env.start_send();
    // Each domain's mail to its own mailbox (the receiver's domains are all catch-alls of mail/).
    for d in domains {
        let to = format!("{}@{d}", label(d));
        let out = env.sendmail(&["-f", "s@test.example", &to], &message(&to, "secret\n"));
        assert!(out.status.success());
    }
    env.wait_for("four outcomes", Duration::from_secs(60), || {
        result_line(&env, "good@good.test", "delivered").is_some()
            && result_line(&env, "badname@badname.test", "deferred").is_some()
            && result_line(&env, "nomatch@nomatch.test", "deferred").is_some()
            && result_line(&env, "testing@testing.test", "delivered").is_some()
    });
    let log = env.log("send.log");
    let good = result_line(&env, "good@good.test", "delivered").unwrap();
    assert!(good.contains("verified=yes"), "{log}");
    let bad = result_line(&env, "badname@badname.test", "deferred").unwrap();
    assert!(bad.contains("4.7.5"), "{log}");
    let nomatch = result_line(&env, "nomatch@nomatch.test", "deferred").unwrap();
    assert!(
        nomatch.contains("4.7.5 no MX host of nomatch.test matches its MTA-STS policy"),
        "{log}"
    );
    // testing: delivered as without a policy (the certificate is not checked), and reported.
    let testing = result_line(&env, "testing@testing.test", "delivered").unwrap();
    assert!(testing.contains("verified=no"), "{log}");
    assert!(
        log.contains("MTA-STS policy (testing) would skip MX mx.testing.test"),
        "{log}"
    );
    assert!(!log.contains("trying again without TLS"), "{log}");
    for d in ["good.test", "testing.test"] {
        receiver.wait_maildir(&receiver.mailbox(label(d)), 1);
    }
    for d in ["badname.test", "nomatch.test"] {
        assert!(
            receiver.maildir_new(&receiver.mailbox(label(d))).is_empty(),
            "{d}: {log}"
        );
    }
    // Each policy was fetched once and is cached in queue/sts.
    let cached = std::fs::read_to_string(env.path("queue/sts/nomatch.test")).unwrap();
    assert!(cached.contains("mx: mx.elsewhere.test"), "{cached}");

    // With its server gone, the cached policy is still enforced.
    drop(https);
    let before = env
        .log("send.log")
        .matches("to=<nomatch@nomatch.test>")
        .count();
    env.flush();
    env.wait_for("another attempt", Duration::from_secs(30), || {
        env.log("send.log")
            .matches("to=<nomatch@nomatch.test>")
            .count()
            > before
    });
    let log = env.log("send.log");
    let last = log
        .lines()
        .rfind(|l| l.contains("to=<nomatch@nomatch.test>"))
        .unwrap();
    assert!(
        last.contains("result=deferred") && last.contains("4.7.5"),
        "{log}"
    );
    assert!(!log.contains("cannot fetch the MTA-STS policy"), "{log}");
    // TLS-Required: No (RFC 8689 §4.3): the policy is set aside, the mail goes.
    let out = env.sendmail(
        &["-f", "s@test.example", "no@nomatch.test"],
        b"To: no@nomatch.test\nTLS-Required: No\nSubject: anyway\n\nnot secret\n",
    );
    assert!(out.status.success());
    receiver.wait_maildir(&receiver.mailbox("no"), 1);
    assert!(
        env.log("send.log").contains(
            "nomatch.test: TLS-Required: No; its MTA-STS policy (enforce) is not applied"
        ),
        "{}",
        env.log("send.log")
    );
    let requests = std::fs::read_to_string(dir.join("requests.log")).unwrap();
    assert_eq!(
        requests
            .matches("mta-sts.nomatch.test /.well-known/mta-sts.txt")
            .count(),
        1,
        "{requests}"
    );
}

/// Talks to smtpd on `port` with Python's smtplib: MAIL with REQUIRETLS before STARTTLS
/// (must be refused), then over STARTTLS one REQUIRETLS message to each of `rcpts`. Prints
/// one JSON object: EHLO keywords before and after TLS, the refusal, each send's outcome.
const REQUIRETLS_CLIENT: &str = r#"
import json, smtplib, ssl, sys
port, sender, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
s = smtplib.SMTP('127.0.0.1', port, timeout=30)
s.ehlo('client.test')
before = sorted(s.esmtp_features)
refused = s.docmd('MAIL FROM:<%s> REQUIRETLS' % sender)
s.rset()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo('client.test')
after = sorted(s.esmtp_features)
sent = {}
for r in rcpts:
    msg = 'From: <%s>\r\nTo: <%s>\r\nSubject: sealed\r\n\r\nsecret body\r\n' % (sender, r)
    try:
        s.sendmail(sender, [r], msg, mail_options=['REQUIRETLS'])
        sent[r] = 'ok'
    except smtplib.SMTPException as e:
        sent[r] = str(e)
s.quit()
print(json.dumps({'before': before, 'after': after,
                  'refused': [refused[0], refused[1].decode()], 'sent': sent}))
"#;

/// REQUIRETLS (RFC 8689, issue 11 item 5): smtpd offers and takes it only over TLS (530
/// 5.7.10 before); the message goes on only over verified TLS to an MX host its domain's
/// MTA-STS policy lists, with REQUIRETLS on MAIL (the receiving ferry logs it); to a domain
/// whose MX hosts no policy vouches for it bounces (5.7.30) with the header only.
#[test]
fn requiretls_only_over_verified_tls_and_vouched_mx() {
    let (ca, cert, key) = ferry_e2e::ca_and_leaf_for(&["mta-sts.good.test", "mx.good.test"]);
    let (receiver, port) = receiver(&cert, &key, &["good.test", "plain.test"]);
    let dns = Dns::start(&[
        "--mx-host=good.test,mx.good.test,10".into(),
        "--host-record=mx.good.test,127.0.0.1".into(),
        "--host-record=mta-sts.good.test,127.0.0.1".into(),
        "--txt-record=_mta-sts.good.test,v=STSv1; id=1".into(),
        // No MTA-STS: nothing vouches for this MX.
        "--mx-host=plain.test,mx.plain.test,10".into(),
        "--host-record=mx.plain.test,127.0.0.1".into(),
    ]);

    let mut env = Env::new();
    let dir = sts_dir(&env, &cert, &key);
    policy(
        &dir,
        "good.test",
        "version: STSv1\nmode: testing\nmx: mx.good.test\nmax_age: 86400\n",
    );
    let https_port = free_port();
    let _https = https_server(&dir, https_port);
    sender_controls(&env, &dns, port, https_port, &ca);
    env.control("relayclients", "127.0.0.1");
    ferry_e2e::write_test_certificate(&env.root, "localhost");
    env.start_send();
    let smtp_port = env.start_smtpd();
    let snd = env.mailbox_rcpt("snd");

    let r = python_json(
        REQUIRETLS_CLIENT,
        &[
            &smtp_port.to_string(),
            "snd@virt.example",
            "good@good.test",
            "plain@plain.test",
        ],
    );
    let has = |k: &str, w: &str| {
        r[k].as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str() == Some(w))
    };
    assert!(
        !has("before", "requiretls") && has("after", "requiretls"),
        "{r}"
    );
    assert_eq!(r["refused"][0], 530, "{r}");
    assert!(
        r["refused"][1].as_str().unwrap().starts_with("5.7.10"),
        "{r}"
    );
    assert_eq!(r["sent"]["good@good.test"], "ok", "{r}");
    assert_eq!(r["sent"]["plain@plain.test"], "ok", "{r}");

    // good.test: over verified TLS (its testing policy vouches for the MX), REQUIRETLS on.
    receiver.wait_maildir(&receiver.mailbox("good"), 1);
    env.wait_for("the delivery", Duration::from_secs(30), || {
        result_line(&env, "good@good.test", "delivered").is_some()
    });
    let good = result_line(&env, "good@good.test", "delivered").unwrap();
    assert!(good.contains("verified=yes"), "{good}");
    assert!(
        receiver
            .log("send.log")
            .contains("REQUIRETLS: it goes on only")
    );
    // plain.test: bounced for good, the header only.
    let bounce = env.wait_maildir(&snd.maildir(), 1);
    let text = String::from_utf8_lossy(&bounce[0]);
    assert!(text.contains("Status: 5.7.30"), "{text}");
    assert!(
        text.contains("Subject: sealed") && !text.contains("secret body"),
        "{text}"
    );
    assert!(receiver.maildir_new(&receiver.mailbox("plain")).is_empty());
}

/// Reads a TLS report mail: its Subject and TLS-Report-Domain, the attachment's type and
/// file name, and the gunzipped JSON.
const READ_TLSRPT: &str = r#"
import email, gzip, json, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'))
att = [p for p in m.walk() if p.get_content_type() == 'application/tlsrpt+gzip'][0]
print(json.dumps({
  'subject': m['Subject'], 'domain': m['TLS-Report-Domain'],
  'report_type': m.get_param('report-type'), 'filename': att.get_filename(),
  'report': json.loads(gzip.decompress(att.get_payload(decode=True))),
}))
"#;

/// TLS-RPT (RFC 8460, issue 11 item 4): sessions to domains with an MTA-STS policy are
/// counted (a verified session to good.test, a certificate-host-mismatch at badname.test);
/// `ferryctl tls report` prints the period's JSON, and when the period (tlsrptperiod, 10 s
/// here) ends remote-deliver mails each domain's report, gzipped, to its `_smtp._tls` rua.
#[test]
fn tls_reports_count_sessions_and_are_mailed_to_the_rua() {
    let (ca, cert, key) = ferry_e2e::ca_and_leaf_for(&[
        "mta-sts.good.test",
        "mta-sts.badname.test",
        "mta-sts.nofetch.test",
        "mx.good.test",
    ]);
    // nofetch.test publishes the TXT records but serves no policy (404).
    let domains = ["good.test", "badname.test", "nofetch.test"];
    let (_receiver, port) = receiver(&cert, &key, &domains);
    let mut args = Vec::new();
    for d in domains {
        args.push(format!("--mx-host={d},mx.{d},10"));
        args.push(format!("--host-record=mx.{d},127.0.0.1"));
        args.push(format!("--host-record=mta-sts.{d},127.0.0.1"));
        args.push(format!("--txt-record=_mta-sts.{d},v=STSv1; id=7"));
        args.push(format!(
            "--txt-record=_smtp._tls.{d},v=TLSRPTv1; rua=mailto:rpt@virt.example"
        ));
    }
    let dns = Dns::start(&args);
    let mut env = Env::new();
    let dir = sts_dir(&env, &cert, &key);
    for d in ["good.test", "badname.test"] {
        policy(
            &dir,
            d,
            &format!("version: STSv1\nmode: enforce\nmx: mx.{d}\nmax_age: 86400\n"),
        );
    }
    let https_port = free_port();
    let _https = https_server(&dir, https_port);
    let period = 10u64;
    sender_controls(&env, &dns, port, https_port, &ca);
    env.control("tlsrptperiod", &period.to_string());
    env.start_send();
    let rpt = env.mailbox_rcpt("rpt");
    // Start early in a period, so that the deliveries and the first look share it.
    let now = ferry_common::date::now_secs();
    if now % period > period - 5 {
        std::thread::sleep(Duration::from_secs(period - now % period));
    }
    for to in [
        "good@good.test",
        "badname@badname.test",
        "nofetch@nofetch.test",
    ] {
        let out = env.sendmail(&["-f", "s@test.example", to], &message(to, "hello\n"));
        assert!(out.status.success());
    }
    env.wait_for("both outcomes", Duration::from_secs(30), || {
        result_line(&env, "good@good.test", "delivered").is_some()
            && result_line(&env, "badname@badname.test", "deferred").is_some()
            && result_line(&env, "nofetch@nofetch.test", "delivered").is_some()
    });
    // A failed fetch is not repeated for the next message (sts::FETCH_RETRY).
    let to = "again@nofetch.test";
    let out = env.sendmail(&["-f", "s@test.example", to], &message(to, "hello\n"));
    assert!(out.status.success());
    env.wait_for("the second delivery", Duration::from_secs(30), || {
        result_line(&env, to, "delivered").is_some()
    });
    let requests = std::fs::read_to_string(dir.join("requests.log")).unwrap();
    assert_eq!(
        requests.matches("mta-sts.nofetch.test ").count(),
        1,
        "{requests}"
    );
    let out = env.ferryctl(&["tls", "report", "good.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &now["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{now}");
    assert_eq!(p["policy"]["mx-host"][0], "mx.good.test", "{now}");
    assert_eq!(p["summary"]["total-successful-session-count"], 1, "{now}");
    assert_eq!(p["summary"]["total-failure-session-count"], 0, "{now}");

    // When the period ends, one report per domain comes to the rua.
    let got = env.wait_maildir(&rpt.maildir(), 3);
    assert_eq!(got.len(), 3);
    let mut seen = Vec::new();
    for path in env.maildir_new(&rpt.maildir()) {
        let r = python_json(READ_TLSRPT, &[&path.to_string_lossy()]);
        assert_eq!(r["report_type"], "tlsrpt", "{r}");
        let domain = r["domain"].as_str().unwrap().to_string();
        assert!(
            r["subject"].as_str().unwrap().starts_with(&format!(
                "Report Domain: {domain} Submitter: test.example Report-ID: "
            )),
            "{r}"
        );
        assert!(r["filename"].as_str().unwrap().ends_with(".json.gz"), "{r}");
        let rep = &r["report"];
        assert_eq!(rep["organization-name"], "test.example", "{r}");
        let p = &rep["policies"][0];
        assert_eq!(p["policy"]["policy-domain"], domain.as_str(), "{r}");
        match domain.as_str() {
            "good.test" => {
                assert_eq!(p["summary"]["total-successful-session-count"], 1, "{r}");
                assert_eq!(p["summary"]["total-failure-session-count"], 0, "{r}");
            }
            "badname.test" => {
                assert_eq!(p["summary"]["total-successful-session-count"], 0, "{r}");
                let f = &p["failure-details"][0];
                assert_eq!(f["result-type"], "certificate-host-mismatch", "{r}");
                assert_eq!(f["receiving-mx-hostname"], "mx.badname.test", "{r}");
                assert_eq!(f["receiving-ip"], "127.0.0.1", "{r}");
            }
            "nofetch.test" => {
                assert_eq!(p["policy"]["policy-type"], "no-policy-found", "{r}");
                let f = &p["failure-details"][0];
                assert_eq!(f["result-type"], "sts-policy-fetch-error", "{r}");
            }
            other => panic!("a report for {other}"),
        }
        seen.push(domain);
    }
    seen.sort();
    assert_eq!(seen, ["badname.test", "good.test", "nofetch.test"]);
    env.wait_for(
        "the sent periods to be removed",
        Duration::from_secs(10),
        || {
            std::fs::read_dir(env.path("queue/tlsrpt"))
                .map(|d| {
                    d.flatten().all(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        ferry_common::tlsrpt::parse_name(&n).is_some_and(|(_, start)| {
                            start + period > ferry_common::date::now_secs()
                        })
                    })
                })
                .unwrap_or(false)
        },
    );
}
