//! Bounces (RFC 3464 delivery status notifications): a multipart/report with a human part,
//! a message/delivery-status part, and the original message's header.
//!
//! No bounce goes to the null sender: a failed message from `<>` (itself a bounce) goes once
//! to `doublebounceto` with the internal sender `#@[]`, and a failure of that is dropped.

use ferry_common::config::Config;
use ferry_common::envelope::{DOUBLE_BOUNCE_SENDER, Envelope};
use ferry_common::{addr, date};

pub struct Failed {
    pub addr: String,
    pub text: String,
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
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    format!("{}; {}", if smtp { "smtp" } else { "x-unix" }, clean)
}

/// The bounce for a message whose `failed` recipients could not be delivered, or None when
/// it must be dropped (a failed double bounce).
pub fn build(
    cfg: &Config,
    id: &str,
    sender: &str,
    birth: u64,
    failed: &[Failed],
    original_header: &[u8],
) -> Option<Bounce> {
    if sender == DOUBLE_BOUNCE_SENDER {
        return None;
    }
    let double = sender.is_empty();
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
    } else {
        "Subject: Undelivered Mail Returned to Sender\n"
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
    } else {
        m.push_str("I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. It's attached below.\n\n");
        m.push_str("For further assistance, please send mail to postmaster.\n\n");
    }
    for f in failed {
        m.push_str(&format!(
            "<{}>: {}\n\n",
            f.addr,
            f.text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        ));
    }
    m.push_str(&format!("--{boundary}\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"));
    m.push_str(&format!(
        "Reporting-MTA: dns; {}\nX-Ferry-Queue-ID: {id}\n",
        cfg.me
    ));
    if !double {
        m.push_str(&format!("X-Ferry-Sender: rfc822; {sender}\n"));
    }
    m.push_str(&format!("Arrival-Date: {}\n", date::rfc5322(birth)));
    for f in failed {
        m.push_str(&format!(
            "\nFinal-Recipient: rfc822; {}\nAction: failed\nStatus: {}\nDiagnostic-Code: {}\nLast-Attempt-Date: {}\n",
            f.addr,
            status_of(&f.text),
            diagnostic(&f.text),
            date::rfc5322(now)
        ));
    }
    m.push_str(&format!("\n--{boundary}\nContent-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n"));
    let mut message = m.into_bytes();
    message.extend_from_slice(original_header);
    if !original_header.ends_with(b"\n") {
        message.push(b'\n');
    }
    message.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    Some(Bounce {
        envelope: Envelope {
            sender: env_sender,
            recipients: vec![to],
            smtputf8: false,
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
    }

    #[test]
    fn bounce_double_bounce_and_drop() {
        let (_d, c) = cfg();
        let f = vec![Failed {
            addr: "x@mx.example.org".into(),
            text: "5.1.1 no such user".into(),
        }];
        let b = build(&c, "abc", "s@else.example", 1, &f, b"Subject: hi\n").unwrap();
        assert_eq!(b.envelope.sender, "");
        assert_eq!(b.envelope.recipients, vec!["s@else.example"]);
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains(
            "Final-Recipient: rfc822; x@mx.example.org\nAction: failed\nStatus: 5.1.1\n"
        ));
        assert!(text.contains("Content-Type: text/rfc822-headers\n\nSubject: hi\n"));
        let d = build(&c, "abc", "", 1, &f, b"").unwrap();
        assert_eq!(d.envelope.sender, "#@[]");
        assert_eq!(d.envelope.recipients, vec!["postmaster@mx.example.org"]);
        assert!(build(&c, "abc", "#@[]", 1, &f, b"").is_none());
    }
}
