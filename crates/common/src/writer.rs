//! The protocol between smtpd and its queue writer (`qwriter`, running as ferryq), over one
//! Unix stream socket carrying records of many sessions at once (crate::record framing):
//!
//! smtpd → qwriter:
//! - `B txn helo ip protocol tls flags sender rcpt...` begin a message; `txn` is smtpd's number
//!   for it; helo, ip, protocol (ESMTP, ESMTPS, ...) and tls (version and cipher, or empty) go
//!   into the Received line (ip empty: the client is hidden, `submissionreceived hide`, and the
//!   line says `from authenticated-user` without address and HELO name); flags is a
//!   space-separated list ([`Flags`]) of: `U` when the transaction had the SMTPUTF8 parameter
//!   (recorded in the envelope, crate::envelope), `auth=NAME` when the client authenticated
//!   (submission; NAME goes into the Received line), `verify=SPF:DMARC` when the message is
//!   to be verified (port 25, neither a relay client nor authenticated: qwriter asks
//!   authverify, with spfpolicy and dmarcpolicy), `sign` when it is to be DKIM-signed (a relay
//!   client's or an authenticated user's). smtpd keeps every `B`
//!   within [`MAX_RCPT_BYTES`] of recipients, so that it always fits in one record.
//! - `N txn ret envid notify orcpt notify orcpt ...` right after `B` when the transaction had
//!   DSN parameters (RFC 3461; [`dsn_record`]): RET (`FULL`, `HDRS` or empty), ENVID, and for
//!   each recipient of `B` in order its NOTIFY (as crate::envelope writes it, or empty) and
//!   ORCPT (or empty). qwriter keeps them in the envelope.
//! - `C txn bytes` the next piece of the message (LF line ends, dot-unstuffed).
//! - `E txn` the message is complete: commit it.
//! - `A txn` forget it (the client went away, or it was refused).
//! - `R 0` re-read the control files qwriter uses (`me`, `databytes`): smtpd got HUP.
//!
//! qwriter → smtpd:
//! - `K txn id [summary]` committed (durable, in todo/): smtpd may answer 250; summary is
//!   the verification's result for smtpd's log line (spf=... dkim=... dmarc=...), if verified.
//! - `F txn code text` not queued; `code` is a `queue` exit code (crate::status), which gives
//!   the SMTP reply; for [`crate::status::QUEUE_AUTH_REFUSED`] and
//!   [`crate::status::QUEUE_AUTH_DEFERRED`] (the verification refused it) text is the whole
//!   reply: `550 5.7.1 text`.
//!
//! qwriter commits every message whose `E` it has read whenever its input runs dry, or at the
//! latest [`MAX_COMMIT_WAIT`] after the first of them, with one syncfs and one fsync of todo/
//! for the whole batch (crate::queue::commit).
//!
//! Sizes: smtpd counts the message as it arrives (LF line ends, without the Received line)
//! against `databytes`; qwriter's own limit is `databytes` plus the length of the Received line
//! it adds, so both count one way.

use crate::config::AuthMode;
use crate::date;
use crate::envelope::{Dsn, Notify, RcptDsn, Ret};
use crate::record::Record;
use std::time::Duration;

/// Bytes of recipient fields (4 + length each) one `B` record may carry: the record limit less
/// room for the other fields (each bounded: helo 512, sender 1000, tls 100, ...).
pub const MAX_RCPT_BYTES: usize = crate::record::MAX_RECORD - 64 * 1024;

/// The `N` record of transaction `txn`.
pub fn dsn_record(txn: u64, dsn: &Dsn) -> Record {
    let ret = match dsn.ret {
        Some(Ret::Full) => "FULL",
        Some(Ret::Hdrs) => "HDRS",
        None => "",
    };
    let mut r = Record::new(b'N')
        .with_u64(txn)
        .with(ret)
        .with(dsn.envid.as_deref().unwrap_or(""));
    for d in &dsn.rcpts {
        r.push(d.notify.map(|n| n.encode()).unwrap_or_default());
        r.push(d.orcpt.as_deref().unwrap_or(""));
    }
    r
}

/// The DSN parameters of an `N` record (checked again when the envelope is parsed).
pub fn parse_dsn_record(r: &Record) -> std::io::Result<Dsn> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad N record");
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let ret = match r.str(1)? {
        "" => None,
        "FULL" => Some(Ret::Full),
        "HDRS" => Some(Ret::Hdrs),
        _ => return Err(bad()),
    };
    let mut rcpts = Vec::new();
    let mut i = 3;
    while i + 1 < r.fields.len() {
        let notify = match r.str(i)? {
            "" => None,
            n => Some(Notify::parse(n).ok_or_else(bad)?),
        };
        rcpts.push(RcptDsn {
            notify,
            orcpt: text(r.str(i + 1)?),
        });
        i += 2;
    }
    Ok(Dsn {
        ret,
        envid: text(r.str(2)?),
        rcpts,
    })
}

/// The longest message qwriter waits for its commit while input keeps coming.
pub const MAX_COMMIT_WAIT: Duration = Duration::from_millis(50);

/// An upper bound of the length of the Received line qwriter adds (every field is bounded).
pub const MAX_RECEIVED: usize = 2048;

/// flags field of `B` for an SMTPUTF8 transaction.
pub const FLAG_SMTPUTF8: &str = "U";
/// flags field of `B` for a transaction with REQUIRETLS (RFC 8689).
pub const FLAG_REQUIRETLS: &str = "requiretls";
/// The prefix of the authenticated name in the flags field of `B`.
pub const FLAG_AUTH: &str = "auth=";
/// The prefix of the verification policies (`verify=SPF:DMARC`, each off/mark/enforce).
pub const FLAG_VERIFY: &str = "verify=";
/// Sign the message with the DKIM keys of its From domain.
pub const FLAG_SIGN: &str = "sign";
/// A recipient is an alias that forwards to another domain: seal the message with ARC,
/// with the key of this domain (the alias's).
pub const FLAG_ARC: &str = "arc=";

/// What the flags field of `B` says of a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub smtputf8: bool,
    pub requiretls: bool,
    /// The authenticated name (submission).
    pub auth: Option<String>,
    /// Verify it (port 25, a stranger): spfpolicy and dmarcpolicy.
    pub verify: Option<(AuthMode, AuthMode)>,
    /// Sign it (a relay client or an authenticated user).
    pub sign: bool,
    /// ARC-seal it after verification, with the key of this domain.
    pub arc: Option<String>,
}

impl Flags {
    /// The flags field: space-separated.
    pub fn encode(&self) -> String {
        let mut f = Vec::new();
        if self.smtputf8 {
            f.push(FLAG_SMTPUTF8.to_string());
        }
        if self.requiretls {
            f.push(FLAG_REQUIRETLS.to_string());
        }
        if let Some(a) = &self.auth {
            f.push(format!("{FLAG_AUTH}{}", clean(a, 300).replace(' ', "?")));
        }
        if let Some((spf, dmarc)) = self.verify {
            f.push(format!("{FLAG_VERIFY}{}:{}", spf.name(), dmarc.name()));
        }
        if self.sign {
            f.push(FLAG_SIGN.to_string());
        }
        if let Some(d) = &self.arc {
            f.push(format!("{FLAG_ARC}{}", clean(d, 255).replace(' ', "?")));
        }
        f.join(" ")
    }

    /// Reads a flags field; unknown flags are ignored.
    pub fn parse(flags: &str) -> Flags {
        let mut out = Flags::default();
        for f in flags.split(' ') {
            if f == FLAG_SMTPUTF8 {
                out.smtputf8 = true;
            } else if f == FLAG_REQUIRETLS {
                out.requiretls = true;
            } else if f == FLAG_SIGN {
                out.sign = true;
            } else if let Some(a) = f.strip_prefix(FLAG_AUTH) {
                out.auth = Some(a.to_string());
            } else if let Some(d) = f.strip_prefix(FLAG_ARC) {
                out.arc = Some(d.to_string());
            } else if let Some((s, d)) = f.strip_prefix(FLAG_VERIFY).and_then(|v| v.split_once(':'))
                && let (Some(s), Some(d)) = (AuthMode::parse(s), AuthMode::parse(d))
            {
                out.verify = Some((s, d));
            }
        }
        out
    }
}

/// The Received line qwriter puts on top of each message (RFC 5321 §4.4). Every field is
/// reduced to printable ASCII without spaces at the edges and bounded, so that nothing a
/// client sends can add a line or a header.
pub struct Received<'a> {
    pub helo: &'a str,
    pub ip: &'a str,
    /// This host (`me`).
    pub by: &'a str,
    /// ESMTP, ESMTPS, ...
    pub protocol: &'a str,
    /// "TLSv1.3 TLS13_..." or empty.
    pub tls: &'a str,
    /// The name the client authenticated as (submission).
    pub auth: Option<&'a str>,
    pub id: &'a str,
    /// The recipient, when there is only one.
    pub rcpt: Option<&'a str>,
    pub now: u64,
}

impl Received<'_> {
    pub fn line(&self) -> String {
        // An empty ip: the client is not shown (submissionreceived hide), nor its HELO name.
        let from = if self.ip.is_empty() {
            "authenticated-user".to_string()
        } else {
            format!("{} ([{}])", clean_helo(self.helo), clean(self.ip, 64))
        };
        let mut s = format!(
            "Received: from {from}\n\tby {} (ferry) with {}",
            clean(self.by, 255),
            clean(self.protocol, 16)
        );
        if !self.tls.is_empty() {
            s.push_str(&format!(" ({})", clean(self.tls, 100)));
        }
        if let Some(a) = self.auth {
            s.push_str(&format!("\n\t(authenticated as {})", clean(a, 300)));
        }
        s.push_str(&format!("\n\tid {}", clean(self.id, 40)));
        if let Some(r) = self.rcpt {
            s.push_str(&format!("\n\tfor <{}>", clean(r, 300)));
        }
        s.push_str(&format!(";\n\t{}\n", date::rfc5322(self.now)));
        s
    }
}

/// Printable ASCII only (anything else becomes `?`), trimmed, at most `max` characters.
pub fn clean(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let out = out.trim().to_string();
    if out.is_empty() {
        "unknown".to_string()
    } else {
        out
    }
}

/// The HELO name as the Received line shows it: an address literal (`[192.0.2.1]`,
/// `[IPv6:...]`) as it is, anything else without brackets, parentheses or spaces (each
/// becomes `?`), so that a client cannot make its name look like a verified address.
pub fn clean_helo(helo: &str) -> String {
    let h = clean(helo, 255);
    let inner = h.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if let Some(inner) = inner
        && !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':'))
    {
        return h;
    }
    h.chars()
        .map(|c| {
            if matches!(c, '(' | ')' | '[' | ']' | ' ') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_cannot_be_split() {
        let r = Received {
            helo: "evil\r\nX-Injected: 1",
            ip: "192.0.2.1",
            by: "mx.example",
            protocol: "ESMTPS",
            tls: "TLSv1.3 TLS13_AES_128_GCM_SHA256",
            auth: None,
            id: "abc",
            rcpt: Some("a@b"),
            now: 0,
        }
        .line();
        assert_eq!(r.matches('\n').count(), 5);
        assert!(r.starts_with("Received: from evil??X-Injected:?1 ([192.0.2.1])\n\tby mx.example (ferry) with ESMTPS (TLSv1.3 "));
        assert!(!r.contains("\nX-Injected"));
        assert!(r.ends_with("Thu, 1 Jan 1970 00:00:00 +0000\n"));
    }

    #[test]
    fn a_hidden_client_shows_neither_address_nor_helo() {
        let r = Received {
            helo: "bobs-laptop.lan",
            ip: "",
            by: "mx.example",
            protocol: "ESMTPSA",
            tls: "",
            auth: Some("bob"),
            id: "abc",
            rcpt: None,
            now: 0,
        }
        .line();
        assert!(
            r.starts_with("Received: from authenticated-user\n\tby mx.example (ferry) with ESMTPSA\n\t(authenticated as bob)\n"),
            "{r}"
        );
        assert!(!r.contains("laptop"));
    }

    #[test]
    fn helo_cannot_pose_as_an_address() {
        assert_eq!(clean_helo("x ([127.0.0.1])"), "x???127.0.0.1??");
        assert_eq!(clean_helo("[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(clean_helo("[IPv6:2001:db8::1]"), "[IPv6:2001:db8::1]");
        assert_eq!(clean_helo("[1.2.3.4] (x)"), "?1.2.3.4???x?");
        assert_eq!(clean_helo("mx.example"), "mx.example");
    }

    #[test]
    fn longest_received_line_is_bounded() {
        let long = "x".repeat(5000);
        let r = Received {
            helo: &long,
            ip: &long,
            by: &long,
            protocol: &long,
            tls: &long,
            auth: None,
            id: &long,
            rcpt: Some(&long),
            now: u64::from(u32::MAX),
        }
        .line();
        assert!(r.len() < MAX_RECEIVED, "{}", r.len());
    }

    proptest::proptest! {
        /// Whatever the HELO name, the Received line has its five lines and the name shows
        /// brackets only as one whole address literal, never a parenthesis.
        #[test]
        fn any_helo_is_neutralised(helo in "\\PC{0,80}") {
            let h = clean_helo(&helo);
            proptest::prop_assert!(!h.contains(['(', ')', ' ', '\n', '\r']));
            if h.contains(['[', ']']) {
                proptest::prop_assert!(h.starts_with('[') && h.ends_with(']'));
                proptest::prop_assert_eq!(h.matches('[').count() + h.matches(']').count(), 2);
            }
            let r = Received { helo: &helo, ip: "192.0.2.1", by: "mx", protocol: "ESMTP",
                tls: "", auth: None, id: "abc", rcpt: None, now: 0 }.line();
            proptest::prop_assert_eq!(r.matches('\n').count(), 4);
        }
    }
}
