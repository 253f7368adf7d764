//! Delivery status notifications (RFC 3464): a multipart/report with a human part, a
//! message/delivery-status part, and the original message (its header, or all of it when the
//! sender asked RET=FULL of a failure report and it is at most [`MAX_RETURNED`]).
//!
//! One report per finished message covers what its sender asked for (RFC 3461 NOTIFY, the
//! default being failures): failed recipients (`Action: failed`), and with NOTIFY=SUCCESS the
//! delivered ones (`Action: delivered` into a mailbox here, `Action: relayed` to another
//! server, which gets no DSN parameters from ferry). NOTIFY=NEVER asks for none. A message
//! still being retried after `delaywarningtime` gets one warning (`Action: delayed`, with
//! `Will-Retry-Until`) for its pending recipients whose NOTIFY includes DELAY or is absent.
//!
//! No report goes to the null sender: a failed message from `<>` (itself a bounce) goes once
//! to `doublebounceto` with the internal sender `#@[]`, and a failure of that is dropped.

use ferry_common::config::Config;
use ferry_common::envelope::{DOUBLE_BOUNCE_SENDER, Envelope};
use ferry_common::{addr, date};

/// The largest message a RET=FULL failure report returns whole; a larger one returns its header.
pub const MAX_RETURNED: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delivered,
    Relayed,
    /// Still being retried (a delay warning).
    Delayed,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient of a report.
pub struct Entry {
    pub addr: String,
    pub action: Action,
    /// The failure, or what the delivery said.
    pub text: String,
    /// ORCPT of its RCPT (`rfc822;addr`).
    pub orcpt: Option<String>,
}

/// What the report returns of the original message.
pub enum Original<'a> {
    Header(&'a [u8]),
    /// The whole message (RET=FULL of a failure report).
    Full(&'a [u8]),
}

pub struct Bounce {
    pub envelope: Envelope,
    pub message: Vec<u8>,
}

/// The enhanced status code in a failure text (`5.1.1`), else 5.0.0.
pub fn status_of(text: &str) -> String {
    for word in
        text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
    {
        let parts: Vec<&str> = word.split('.').collect();
        if parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return word.to_string();
        }
    }
    "5.0.0".to_string()
}

/// "smtp; 550 ..." for a remote server's reply, "x-unix; ..." for a local failure.
fn diagnostic(text: &str) -> String {
    let b = text.as_bytes();
    let smtp =
        b.len() >= 4 && b[..3].iter().all(|c| c.is_ascii_digit()) && (b[3] == b' ' || b[3] == b'-');
    format!(
        "{}; {}",
        if smtp { "smtp" } else { "x-unix" },
        clean(text, 500)
    )
}

/// The server named in remote-deliver's failure text, `REPLY (HOST[IP] after STEP)`.
fn remote_mta(text: &str) -> Option<String> {
    let (_, tail) = text.rsplit_once(" (")?;
    let (host, _) = tail.split_once(" after ")?;
    let host = host.split('[').next()?.trim();
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| host.to_string())
}

fn clean(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// The report for a message whose `entries` have their final state, or None when nothing
/// may be sent (a failed double bounce; successes to the null sender).
pub fn build(
    cfg: &Config,
    id: &str,
    sender: &str,
    birth: u64,
    envid: Option<&str>,
    entries: &[Entry],
    original: Original<'_>,
) -> Option<Bounce> {
    if sender == DOUBLE_BOUNCE_SENDER {
        return None;
    }
    let double = sender.is_empty();
    // A bounce gets no success report: only its failures, to the postmaster.
    let entries: Vec<&Entry> = entries
        .iter()
        .filter(|e| !double || e.action == Action::Failed)
        .collect();
    if entries.is_empty() {
        return None;
    }
    let failures = entries
        .iter()
        .filter(|e| e.action == Action::Failed)
        .count();
    let delays = entries
        .iter()
        .filter(|e| e.action == Action::Delayed)
        .count();
    let (to, env_sender) = if double {
        (
            addr::qualify(&cfg.doublebounceto, &cfg.defaultdomain),
            DOUBLE_BOUNCE_SENDER.to_string(),
        )
    } else {
        (sender.to_string(), String::new())
    };
    let now = date::now_secs();
    let boundary = format!("ferry-{id}-{now}");
    let mut m = String::new();
    m.push_str(&format!("Date: {}\n", date::rfc5322(now)));
    m.push_str(&format!(
        "From: Mail Delivery System <{}@{}>\n",
        cfg.bouncefrom, cfg.me
    ));
    m.push_str(&format!("To: <{to}>\n"));
    m.push_str(if double {
        "Subject: Undelivered bounce message\n"
    } else if failures == entries.len() {
        "Subject: Undelivered Mail Returned to Sender\n"
    } else if delays > 0 {
        "Subject: Delayed Mail (still being retried)\n"
    } else if failures == 0 {
        "Subject: Successful Mail Delivery Report\n"
    } else {
        "Subject: Delivery Status Notification\n"
    });
    m.push_str(&format!("Message-ID: <{now}.bounce-{id}@{}>\n", cfg.me));
    m.push_str("Auto-Submitted: auto-replied\nMIME-Version: 1.0\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
    ));
    m.push_str("Content-Transfer-Encoding: 8bit\n\nThis is a MIME-encapsulated message.\n\n");
    m.push_str(&format!("--{boundary}\nContent-Description: Notification\nContent-Type: text/plain; charset=utf-8\n\n"));
    m.push_str(&format!("This is the mail system at host {}.\n\n", cfg.me));
    if double {
        m.push_str("A message with an empty sender (a bounce or a notification) could not be\ndelivered, so it comes to you, the postmaster.\n\n");
    } else if failures > 0 {
        m.push_str("I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. It's attached below.\n\n");
        m.push_str("For further assistance, please send mail to postmaster.\n\n");
    }
    let retry_until = birth.saturating_add(cfg.queuelifetime);
    if delays > 0 {
        m.push_str("THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.\n\n");
        m.push_str(&format!(
            "Your message could not be delivered for {} hour(s) to the recipients below.\nIt will be retried until {}.\n\n",
            now.saturating_sub(birth) / 3600,
            date::rfc5322(retry_until)
        ));
    }
    if failures + delays < entries.len() {
        m.push_str("Your message was delivered, or passed on, as you asked to be told:\n\n");
    }
    for e in &entries {
        let what = match e.action {
            Action::Failed => clean(&e.text, 2000),
            Action::Delayed => format!("still being retried: {}", clean(&e.text, 2000)),
            Action::Delivered => "delivered to mailbox".to_string(),
            Action::Relayed => "relayed to a server that sends no delivery report".to_string(),
        };
        m.push_str(&format!("<{}>: {what}\n\n", e.addr));
    }
    m.push_str(&format!("--{boundary}\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"));
    m.push_str(&format!("Reporting-MTA: dns; {}\n", cfg.me));
    if let Some(e) = envid {
        m.push_str(&format!("Original-Envelope-Id: {}\n", clean(e, 100)));
    }
    m.push_str(&format!("X-Ferry-Queue-ID: {id}\n"));
    if !double {
        m.push_str(&format!("X-Ferry-Sender: rfc822; {sender}\n"));
    }
    m.push_str(&format!("Arrival-Date: {}\n", date::rfc5322(birth)));
    for e in &entries {
        m.push('\n');
        if let Some(o) = &e.orcpt {
            m.push_str(&format!("Original-Recipient: {}\n", clean(o, 500)));
        }
        let status = match e.action {
            Action::Failed => status_of(&e.text),
            Action::Delayed => Some(status_of(&e.text))
                .filter(|s| s.starts_with("4."))
                .unwrap_or_else(|| "4.0.0".to_string()),
            _ => "2.0.0".to_string(),
        };
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\nAction: {}\nStatus: {status}\n",
            e.addr,
            e.action.name()
        ));
        if let Some(host) = remote_mta(&e.text) {
            m.push_str(&format!("Remote-MTA: dns; {host}\n"));
        }
        if matches!(e.action, Action::Failed | Action::Delayed) {
            m.push_str(&format!("Diagnostic-Code: {}\n", diagnostic(&e.text)));
        }
        m.push_str(&format!("Last-Attempt-Date: {}\n", date::rfc5322(now)));
        if e.action == Action::Delayed {
            m.push_str(&format!(
                "Will-Retry-Until: {}\n",
                date::rfc5322(retry_until)
            ));
        }
    }
    let (description, kind, body) = match original {
        Original::Full(b) => ("Undelivered Message", "message/rfc822", b),
        Original::Header(h) if failures > 0 => {
            ("Undelivered Message Headers", "text/rfc822-headers", h)
        }
        Original::Header(h) => ("Message Headers", "text/rfc822-headers", h),
    };
    m.push_str(&format!(
        "\n--{boundary}\nContent-Description: {description}\nContent-Type: {kind}\n\n"
    ));
    let mut message = m.into_bytes();
    message.extend_from_slice(body);
    if !body.ends_with(b"\n") {
        message.push(b'\n');
    }
    message.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    Some(Bounce {
        envelope: Envelope {
            sender: env_sender,
            recipients: vec![to],
            ..Default::default()
        },
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::root::Root;

    fn cfg() -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("control")).unwrap();
        std::fs::write(d.path().join("control/me"), "mx.example.org").unwrap();
        let c = Config::load(&Root::at(d.path())).unwrap();
        (d, c)
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of("550 5.1.1 <x@y>: no such user"), "5.1.1");
        assert_eq!(status_of("5.4.6 this message is looping"), "5.4.6");
        assert_eq!(status_of("program exited 100"), "5.0.0");
        assert_eq!(diagnostic("550 5.1.1 nope"), "smtp; 550 5.1.1 nope");
        assert_eq!(diagnostic("no mailbox"), "x-unix; no mailbox");
        assert_eq!(
            remote_mta("550 5.1.1 no (mx.example.org[192.0.2.1] after RCPT)").as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(remote_mta("no mailbox"), None);
    }

    #[test]
    fn bounce_double_bounce_and_drop() {
        let (_d, c) = cfg();
        let f = vec![Entry {
            addr: "x@mx.example.org".into(),
            action: Action::Failed,
            text: "5.1.1 no such user".into(),
            orcpt: None,
        }];
        let hi = Original::Header(b"Subject: hi\n");
        let b = build(&c, "abc", "s@else.example", 1, None, &f, hi).unwrap();
        assert_eq!(b.envelope.sender, "");
        assert_eq!(b.envelope.recipients, vec!["s@else.example"]);
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains(
            "Final-Recipient: rfc822; x@mx.example.org\nAction: failed\nStatus: 5.1.1\n"
        ));
        assert!(text.contains("Content-Type: text/rfc822-headers\n\nSubject: hi\n"));
        let d = build(&c, "abc", "", 1, None, &f, Original::Header(b"")).unwrap();
        assert_eq!(d.envelope.sender, "#@[]");
        assert_eq!(d.envelope.recipients, vec!["postmaster@mx.example.org"]);
        assert!(build(&c, "abc", "#@[]", 1, None, &f, Original::Header(b"")).is_none());
    }

    #[test]
    fn success_and_failure_in_one_report() {
        let (_d, c) = cfg();
        let e = vec![
            Entry {
                addr: "a@mx.example.org".into(),
                action: Action::Delivered,
                text: String::new(),
                orcpt: Some("rfc822;A@mx.example.org".into()),
            },
            Entry {
                addr: "b@far.example".into(),
                action: Action::Relayed,
                text: "250 ok (mx.far.example[192.0.2.9] after DATA)".into(),
                orcpt: None,
            },
        ];
        let b = build(
            &c,
            "id",
            "s@else.example",
            1,
            Some("E1"),
            &e,
            Original::Header(b"S: x\n"),
        )
        .unwrap();
        let t = String::from_utf8(b.message).unwrap();
        assert!(
            t.contains("Subject: Successful Mail Delivery Report\n"),
            "{t}"
        );
        assert!(t.contains("Original-Envelope-Id: E1\n"), "{t}");
        assert!(t.contains(
            "Original-Recipient: rfc822;A@mx.example.org\nFinal-Recipient: rfc822; a@mx.example.org\nAction: delivered\nStatus: 2.0.0\n"
        ));
        assert!(t.contains("Action: relayed\nStatus: 2.0.0\nRemote-MTA: dns; mx.far.example\n"));
        // Successes of a bounce are not reported.
        assert!(build(&c, "id", "", 1, None, &e, Original::Header(b"")).is_none());
    }

    #[test]
    fn delay_warning() {
        let (_d, c) = cfg();
        let e = vec![Entry {
            addr: "b@far.example".into(),
            action: Action::Delayed,
            text: "451 4.3.0 try later (mx.far.example[192.0.2.9] after RCPT)".into(),
            orcpt: None,
        }];
        let birth = date::now_secs() - 5 * 3600;
        let b = build(
            &c,
            "id",
            "s@else.example",
            birth,
            None,
            &e,
            Original::Header(b"S: x\n"),
        )
        .unwrap();
        let t = String::from_utf8(b.message).unwrap();
        assert!(
            t.contains("Subject: Delayed Mail (still being retried)\n"),
            "{t}"
        );
        assert!(t.contains("delivered for 5 hour(s)"), "{t}");
        assert!(
            t.contains("Action: delayed\nStatus: 4.3.0\nRemote-MTA: dns; mx.far.example\n"),
            "{t}"
        );
        assert!(
            t.contains("Diagnostic-Code: smtp; 451 4.3.0 try later"),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "Will-Retry-Until: {}\n",
                date::rfc5322(birth + 604_800)
            )),
            "{t}"
        );
        // No warning to the null sender: a bounce being retried is not reported.
        assert!(build(&c, "id", "", birth, None, &e, Original::Header(b"")).is_none());
    }
}
