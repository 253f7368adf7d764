//! Delivery status notifications (issue 11, item 1): DSN offered in EHLO, RET/ENVID and
//! NOTIFY/ORCPT kept in the queue file and honoured in the reports: success for NOTIFY=SUCCESS
//! (`delivered` into a mailbox here, `relayed` to Postfix's smtp-sink without DSN; a second
//! ferry, which offers DSN, gets the parameters and reports itself), nothing for NOTIFY=NEVER,
//! the header only for RET=HDRS, the whole message for RET=FULL, the ENVID back, and one delay
//! warning after `delaywarningtime`. Each report is parsed with Python's email package and
//! checked field by field.

#![allow(clippy::unwrap_used)]

use ferry_e2e::smtp::Smtp;
use ferry_e2e::{Env, free_port};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The report in `path` as Python's email package reads it: one JSON object with the
/// message's content type and report type, the parts' types, the per-message fields and
/// the per-recipient field groups of the message/delivery-status part, and the returned part.
fn parse_report(path: &std::path::Path) -> Value {
    let script = r#"
import email, json, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.compat32)
parts = m.get_payload()
status = [p for p in parts if p.get_content_type() == 'message/delivery-status'][0]
groups = status.get_payload()
returned = parts[2]
ret_body = returned.get_payload()
if isinstance(ret_body, list):
    ret_body = ret_body[0].as_string()
print(json.dumps({
  'type': m.get_content_type(),
  'report_type': m.get_param('report-type'),
  'subject': m['Subject'],
  'parts': [p.get_content_type() for p in parts],
  'message': dict(groups[0].items()),
  'recipients': [dict(g.items()) for g in groups[1:]],
  'returned': ret_body,
}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python could not parse {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A string field of a JSON object ("" when missing).
fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// A list field of a JSON object (empty when missing).
fn list<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// One SMTP transaction with raw MAIL and RCPT parameters.
fn transaction(port: u16, mail: &str, rcpts: &[&str], body: &str) {
    let mut s = Smtp::connect(port);
    let (code, ehlo) = s.cmd("EHLO client.test");
    assert!(code == 250 && ehlo.contains("DSN"), "{ehlo}");
    assert_eq!(s.cmd(&format!("MAIL FROM:{mail}")).0, 250);
    for r in rcpts {
        let (code, text) = s.cmd(&format!("RCPT TO:{r}"));
        assert_eq!(code, 250, "{r}: {text}");
    }
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(body.as_bytes());
    let (code, text) = s.cmd(".");
    assert_eq!(code, 250, "{text}");
    s.cmd("QUIT");
}

/// The reports in `mailbox` (each a file path), waiting for `n`.
fn reports(env: &Env, mailbox: &std::path::Path, n: usize) -> Vec<std::path::PathBuf> {
    env.wait_maildir(mailbox, n);
    env.maildir_new(mailbox)
}

#[test]
fn success_reports_delivered_and_relayed_with_envid_and_orcpt() {
    let sink_port = free_port();
    // -N: smtp-sink does not announce DSN, so ferry reports `relayed` itself.
    let _sink = ferry_e2e::smtp_sink(sink_port, &["-N"], "10");
    let mut env = Env::new();
    env.control("smtproutes", &format!("far.test:[127.0.0.1]:{sink_port}"));
    env.control("relayclients", "127.0.0.1");
    env.start_send();
    let port = env.start_smtpd();
    let sender = env.mailbox_rcpt("snd");
    let rcpt = env.mailbox_rcpt("rcpt");
    transaction(
        port,
        "<snd@virt.example> ENVID=run+2B1",
        &[
            "<rcpt@virt.example> NOTIFY=SUCCESS ORCPT=rfc822;Rcpt@virt.example",
            "<away@far.test> NOTIFY=SUCCESS,FAILURE",
            // The default (no NOTIFY): no report of its success.
            "<quiet@far.test>",
        ],
        "Subject: tell me\r\n\r\nhello\r\n",
    );
    env.wait_maildir(&rcpt.maildir(), 1);
    let got = reports(&env, &sender.maildir(), 1);
    env.wait_queue_empty();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.maildir_new(&sender.maildir()).len(), 1, "one report");
    let r = parse_report(&got[0]);
    assert_eq!(field(&r, "type"), "multipart/report");
    assert_eq!(field(&r, "report_type"), "delivery-status");
    assert_eq!(field(&r, "subject"), "Successful Mail Delivery Report");
    let parts: Vec<&str> = list(&r, "parts")
        .iter()
        .map(|p| p.as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        parts,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    let m = &r["message"];
    assert_eq!(field(m, "Reporting-MTA"), "dns; test.example");
    assert_eq!(field(m, "Original-Envelope-Id"), "run+1");
    assert!(!field(m, "Arrival-Date").is_empty());
    let rs = list(&r, "recipients");
    assert_eq!(rs.len(), 2, "{rs:?}");
    let find = |addr: &str| {
        rs.iter()
            .find(|g| field(g, "Final-Recipient") == format!("rfc822; {addr}"))
            .unwrap_or_else(|| panic!("no group for {addr}: {rs:?}"))
    };
    let local = find("rcpt@virt.example");
    assert_eq!(field(local, "Action"), "delivered");
    assert_eq!(field(local, "Status"), "2.0.0");
    assert_eq!(
        field(local, "Original-Recipient"),
        "rfc822;Rcpt@virt.example"
    );
    let far = find("away@far.test");
    assert_eq!(field(far, "Action"), "relayed");
    assert_eq!(field(far, "Status"), "2.0.0");
    assert!(field(&r, "returned").contains("Subject: tell me"));
    assert!(!field(&r, "returned").contains("hello"));
}

#[test]
fn failure_reports_honour_never_hdrs_and_full() {
    let mut env = Env::new();
    env.start_send();
    let port = env.start_smtpd();
    let sender = env.mailbox_rcpt("snd");
    // Mailboxes whose delivery fails for good (a program that exits 100).
    for name in ["never", "hdrs", "full"] {
        env.mailbox_rcpt(name).write(".ferry", "|exit 100\n");
    }
    transaction(
        port,
        "<snd@virt.example>",
        &["<never@virt.example> NOTIFY=NEVER"],
        "Subject: never\r\n\r\nsecret body\r\n",
    );
    transaction(
        port,
        "<snd@virt.example> RET=HDRS ENVID=hdrs-1",
        &["<hdrs@virt.example>"],
        "Subject: hdrs\r\n\r\nsecret body\r\n",
    );
    transaction(
        port,
        "<snd@virt.example> RET=FULL",
        &["<full@virt.example> NOTIFY=FAILURE"],
        "Subject: full\r\n\r\nthe whole body\r\n",
    );
    let got = reports(&env, &sender.maildir(), 2);
    env.wait_queue_empty();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.maildir_new(&sender.maildir()).len(),
        2,
        "NOTIFY=NEVER gets no report"
    );
    let mut seen = Vec::new();
    for path in got {
        let r = parse_report(&path);
        assert_eq!(field(&r, "subject"), "Undelivered Mail Returned to Sender");
        let g = &list(&r, "recipients")[0];
        assert_eq!(field(g, "Action"), "failed");
        assert!(field(g, "Status").starts_with("5."), "{g:?}");
        assert!(field(g, "Diagnostic-Code").starts_with("x-unix; "), "{g:?}");
        let parts: Vec<&str> = list(&r, "parts")
            .iter()
            .map(|p| p.as_str().unwrap_or(""))
            .collect();
        let returned = field(&r, "returned");
        match field(g, "Final-Recipient") {
            "rfc822; hdrs@virt.example" => {
                assert_eq!(parts[2], "text/rfc822-headers");
                assert!(returned.contains("Subject: hdrs") && !returned.contains("secret"));
                assert_eq!(field(&r["message"], "Original-Envelope-Id"), "hdrs-1");
                seen.push("hdrs");
            }
            "rfc822; full@virt.example" => {
                assert_eq!(parts[2], "message/rfc822");
                assert!(returned.contains("Subject: full") && returned.contains("the whole body"));
                seen.push("full");
            }
            other => panic!("unexpected report for {other}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["full", "hdrs"]);
}

#[test]
fn sendmail_takes_dsn_options() {
    let mut env = Env::new();
    env.start_send();
    let sender = env.mailbox_rcpt("snd");
    let rcpt = env.mailbox_rcpt("rcpt");
    let out = env.sendmail(
        &[
            "-f",
            "snd@virt.example",
            "-N",
            "success",
            "-V",
            "sm-1",
            &rcpt.addr(),
        ],
        b"Subject: from sendmail\n\nhi\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = reports(&env, &sender.maildir(), 1);
    let r = parse_report(&got[0]);
    assert_eq!(field(&r["message"], "Original-Envelope-Id"), "sm-1");
    assert_eq!(field(&list(&r, "recipients")[0], "Action"), "delivered");
    let bad = env.sendmail(&["-N", "sometimes", &rcpt.addr()], b"Subject: x\n\nx\n");
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("-N"));
}

/// To a server that offers DSN (a second ferry), the parameters go on: that server reports
/// the delivery (with the ENVID and ORCPT it was given), and the first sends no `relayed`.
#[test]
fn parameters_go_on_to_a_server_that_offers_dsn() {
    let mut rx = Env::new();
    rx.control("me", "rx.example");
    rx.control(
        "virtualdomains",
        "localhost:mail/*\nvirt.example:mail/\nfar.example:mail/*\n",
    );
    rx.start_send();
    let rx_port = rx.start_smtpd();
    let bob = rx.mailbox_rcpt("bob");
    let rx_snd = rx.mailbox_rcpt("snd");
    let mut tx = Env::new();
    tx.control("smtproutes", &format!("far.example:[127.0.0.1]:{rx_port}"));
    tx.control("relayclients", "127.0.0.1");
    tx.start_send();
    let port = tx.start_smtpd();
    let tx_snd = tx.mailbox_rcpt("snd");
    transaction(
        port,
        "<snd@virt.example> RET=HDRS ENVID=relay+3D1",
        &["<bob@far.example> NOTIFY=SUCCESS ORCPT=rfc822;Bob+2Bx@far.example"],
        "Subject: passed on\r\n\r\nhello\r\n",
    );
    rx.wait_maildir(&bob.maildir(), 1);
    let got = reports(&rx, &rx_snd.maildir(), 1);
    let r = parse_report(&got[0]);
    assert_eq!(field(&r["message"], "Reporting-MTA"), "dns; rx.example");
    assert_eq!(field(&r["message"], "Original-Envelope-Id"), "relay=1");
    let g = &list(&r, "recipients")[0];
    assert_eq!(field(g, "Action"), "delivered");
    assert_eq!(field(g, "Original-Recipient"), "rfc822;Bob+x@far.example");
    assert_eq!(field(g, "Final-Recipient"), "rfc822; bob@far.example");
    tx.wait_queue_empty();
    let log = tx.log("send.log");
    assert!(log.contains("DSN passed on"), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tx.maildir_new(&tx_snd.maildir()).is_empty(),
        "no relayed report from the first server"
    );
}

/// How many times send has logged `<addr> deferred`.
fn deferrals(env: &Env, addr: &str) -> usize {
    env.log("send.log")
        .matches(&format!("<{addr}> deferred"))
        .count()
}

/// A message still being retried after `delaywarningtime` gets one delay warning (item 1):
/// `Action: delayed` with a 4.x.x status, the last error and `Will-Retry-Until`, only for
/// the recipients whose NOTIFY allows it, once, also across a restart of send (the `W` note
/// in its info file).
#[test]
fn delay_warning_once_for_those_who_want_it() {
    let mut env = Env::new();
    env.control("delaywarningtime", "1");
    env.start_send();
    let port = env.start_smtpd();
    let sender = env.mailbox_rcpt("snd");
    for name in ["slow", "quiet"] {
        env.mailbox_rcpt(name).write(".ferry", "|exit 111\n");
    }
    transaction(
        port,
        "<snd@virt.example> ENVID=late-1",
        &["<slow@virt.example>", "<quiet@virt.example> NOTIFY=FAILURE"],
        "Subject: slow one\r\n\r\nsecret body\r\n",
    );
    env.wait_for("the first attempts", Duration::from_secs(30), || {
        deferrals(&env, "slow@virt.example") >= 1 && deferrals(&env, "quiet@virt.example") >= 1
    });
    std::thread::sleep(Duration::from_millis(1100));
    env.flush();
    let got = reports(&env, &sender.maildir(), 1);
    let r = parse_report(&got[0]);
    assert_eq!(field(&r, "subject"), "Delayed Mail (still being retried)");
    assert_eq!(field(&r["message"], "Original-Envelope-Id"), "late-1");
    let rs = list(&r, "recipients");
    assert_eq!(rs.len(), 1, "NOTIFY=FAILURE gets no warning: {rs:?}");
    let g = &rs[0];
    assert_eq!(field(g, "Final-Recipient"), "rfc822; slow@virt.example");
    assert_eq!(field(g, "Action"), "delayed");
    assert!(field(g, "Status").starts_with("4."), "{g:?}");
    assert!(field(g, "Diagnostic-Code").starts_with("x-unix; "), "{g:?}");
    assert!(!field(g, "Will-Retry-Until").is_empty(), "{g:?}");
    assert!(field(&r, "returned").contains("Subject: slow one"));
    assert!(!field(&r, "returned").contains("secret body"));
    // More attempts, and a restart of send, bring no second warning.
    let before = deferrals(&env, "slow@virt.example");
    env.flush();
    env.wait_for("another attempt", Duration::from_secs(30), || {
        deferrals(&env, "slow@virt.example") > before
    });
    let out = Command::new("s6-svc")
        .arg("-t")
        .arg(env.path("service/send"))
        .output()
        .unwrap();
    assert!(out.status.success());
    env.wait_for("send to restart", Duration::from_secs(30), || {
        env.log("send.log").matches("send: started").count() >= 2
    });
    let before = deferrals(&env, "slow@virt.example");
    env.flush();
    env.wait_for(
        "an attempt after the restart",
        Duration::from_secs(30),
        || deferrals(&env, "slow@virt.example") > before,
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = env.log("send.log");
    assert_eq!(
        env.maildir_new(&sender.maildir()).len(),
        1,
        "one warning per message: {log}"
    );
    let id = log
        .lines()
        .find_map(|l| l.split_once(": delay warning to <snd@virt.example> queued"))
        .and_then(|(head, _)| head.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no warning in the log: {log}"));
    let show = env.ferryctl(&["queue", "show", id]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("delay warning sent: "), "{show}");
}
