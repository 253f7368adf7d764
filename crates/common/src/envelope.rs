//! The envelope in the qmail-queue format: `F<sender>\0`, then `T<recipient>\0` for each
//! recipient, then a final `\0`. Extensions, each a record of its own that older files simply
//! lack:
//! - `U\0` right after the sender: the transaction was received with SMTPUTF8 (RFC 6531),
//!   which relaying must keep;
//! - `S\0` after the sender (and `U`): REQUIRETLS (RFC 8689): the message goes on only over
//!   TLS with a verified certificate to servers that offer REQUIRETLS themselves;
//! - after the sender (and `U`), the DSN parameters of MAIL (RFC 3461): `RFULL\0` or
//!   `RHDRS\0`, and `E<envid>\0` (xtext-decoded);
//! - after a `T` record, the DSN parameters of that recipient's RCPT: `N<notify>\0` (NEVER, or
//!   a comma-separated list of SUCCESS, FAILURE, DELAY) and `O<orcpt>\0` (e.g.
//!   `rfc822;joe@example.org`, xtext-decoded).
//!
//! `queue` reads it on fd 1; the queue file keeps it after the message (see [`crate::queue`]).

use std::fmt;

/// Longest envelope address accepted (RFC 5321 allows 256 octets in a path; this leaves room).
pub const MAX_ADDRESS: usize = 1000;
/// Most recipients in one envelope.
pub const MAX_RECIPIENTS: usize = 100_000;
/// Largest envelope accepted, in bytes.
pub const MAX_ENVELOPE: usize = 16 << 20;
/// The internal sender of a double bounce (qmail's convention): its failures are dropped.
pub const DOUBLE_BOUNCE_SENDER: &str = "#@[]";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message was received with the SMTPUTF8 parameter (recorded as `U\0`).
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689; recorded as `S\0`).
    pub requiretls: bool,
    /// The DSN parameters (RFC 3461), if any were given.
    pub dsn: Dsn,
}

/// `RET=`: what a failure report returns of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// The NOTIFY of one recipient: which reports its sender asked for (RFC 3461 §4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
    /// NOTIFY=NEVER (all three false).
    pub never: bool,
}

impl Notify {
    /// No NOTIFY given: failures and delays are reported (RFC 3461 §4.1: the MTA's choice;
    /// this is what Postfix and Exim do).
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: true,
        never: false,
    };

    /// `NEVER`, or a comma-separated list of SUCCESS, FAILURE, DELAY (any case).
    pub fn parse(s: &str) -> Option<Notify> {
        if s.eq_ignore_ascii_case("NEVER") {
            return Some(Notify {
                never: true,
                ..Notify::default()
            });
        }
        let mut n = Notify::default();
        for w in s.split(',') {
            match w.to_ascii_uppercase().as_str() {
                "SUCCESS" => n.success = true,
                "FAILURE" => n.failure = true,
                "DELAY" => n.delay = true,
                _ => return None,
            }
        }
        Some(n)
    }

    pub fn encode(&self) -> String {
        if self.never {
            return "NEVER".into();
        }
        let mut w = Vec::new();
        for (on, name) in [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ] {
            if on {
                w.push(name);
            }
        }
        w.join(",")
    }
}

/// The DSN parameters of one recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptDsn {
    pub notify: Option<Notify>,
    /// ORCPT, xtext-decoded: `addr-type;address`.
    pub orcpt: Option<String>,
}

impl RcptDsn {
    /// The reports asked for: its NOTIFY, else [`Notify::DEFAULT`].
    pub fn wants(&self) -> Notify {
        self.notify.unwrap_or(Notify::DEFAULT)
    }
}

/// The DSN parameters of a transaction (RFC 3461).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dsn {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// One per recipient, in the envelope's order; empty when no recipient had any.
    pub rcpts: Vec<RcptDsn>,
}

impl Dsn {
    /// The parameters of recipient `i` (none given: the default).
    pub fn rcpt(&self, i: usize) -> RcptDsn {
        self.rcpts.get(i).cloned().unwrap_or_default()
    }
}

/// What remote-deliver adds to a success text when it passed the DSN parameters on to a
/// server that offers DSN: that server reports from then on, so send does not (`relayed`).
pub const DSN_PASSED_ON: &str = "; DSN passed on)";

/// RFC 3461 §4 xtext: `+XX` for `+`, `=` and anything outside `!`..`~`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

impl Dsn {
    /// The DSN parameters of MAIL FROM (with a leading space each), for a server that offers DSN.
    pub fn mail_params(&self) -> String {
        let mut p = String::new();
        match self.ret {
            Some(Ret::Full) => p.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => p.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(e) = &self.envid {
            p.push_str(&format!(" ENVID={}", xtext(e)));
        }
        p
    }
}

impl RcptDsn {
    /// The DSN parameters of RCPT TO (with a leading space each).
    pub fn rcpt_params(&self) -> String {
        let mut p = String::new();
        if let Some(n) = self.notify {
            p.push_str(&format!(" NOTIFY={}", n.encode()));
        }
        if let Some(o) = &self.orcpt {
            // addr-type ";" xtext: the type stays as it is.
            let (kind, addr) = o.split_once(';').unwrap_or(("rfc822", o));
            p.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
        }
        p
    }
}

/// ENVID is at most 100 characters, ORCPT 500 (RFC 3461 §4.4, §4.2); both printable ASCII.
fn check_dsn_text(v: &[u8], max: usize) -> Result<String, EnvelopeError> {
    if v.is_empty() || v.len() > max || !v.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(EnvelopeError::BadRecord);
    }
    Ok(String::from_utf8_lossy(v).into_owned())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The envelope does not end with the final NUL.
    Truncated,
    /// A record does not start with F (first) or T (then).
    BadRecord,
    NoRecipients,
    TooManyRecipients,
    TooLarge,
    /// An address is too long, not UTF-8, or has control characters.
    BadAddress(String),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Truncated => write!(f, "envelope has no final NUL (truncated)"),
            EnvelopeError::BadRecord => {
                write!(f, "envelope record is not F<sender> then T<recipient>")
            }
            EnvelopeError::NoRecipients => write!(f, "envelope has no recipient"),
            EnvelopeError::TooManyRecipients => {
                write!(f, "envelope has more than {MAX_RECIPIENTS} recipients")
            }
            EnvelopeError::TooLarge => write!(f, "envelope larger than {MAX_ENVELOPE} bytes"),
            EnvelopeError::BadAddress(why) => write!(f, "bad envelope address: {why}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// Checks an envelope address: UTF-8, at most [`MAX_ADDRESS`] bytes, no control characters.
pub fn check_address(a: &[u8]) -> Result<&str, EnvelopeError> {
    if a.len() > MAX_ADDRESS {
        return Err(EnvelopeError::BadAddress(format!(
            "{} bytes, more than {MAX_ADDRESS}",
            a.len()
        )));
    }
    let s = std::str::from_utf8(a).map_err(|_| EnvelopeError::BadAddress("not UTF-8".into()))?;
    if s.chars().any(|c| c.is_control()) {
        return Err(EnvelopeError::BadAddress("control character".into()));
    }
    Ok(s)
}

impl Envelope {
    pub fn parse(buf: &[u8]) -> Result<Envelope, EnvelopeError> {
        if buf.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge);
        }
        // One record: from `pos` up to the next NUL. None if there is no NUL (truncated).
        let record = |pos: usize| {
            buf[pos..]
                .iter()
                .position(|b| *b == 0)
                .map(|n| (&buf[pos..pos + n], pos + n + 1))
        };
        if buf.first() != Some(&b'F') {
            return Err(if buf.is_empty() {
                EnvelopeError::Truncated
            } else {
                EnvelopeError::BadRecord
            });
        }
        let (rec, mut pos) = record(0).ok_or(EnvelopeError::Truncated)?;
        let sender = check_address(&rec[1..])?.to_string();
        let smtputf8 = buf.get(pos..pos + 2) == Some(b"U\0");
        if smtputf8 {
            pos += 2;
        }
        let requiretls = buf.get(pos..pos + 2) == Some(b"S\0");
        if requiretls {
            pos += 2;
        }
        let mut dsn = Dsn::default();
        let mut recipients = Vec::new();
        loop {
            match buf.get(pos) {
                None => return Err(EnvelopeError::Truncated),
                Some(0) if pos + 1 == buf.len() => break,
                Some(0) => return Err(EnvelopeError::BadRecord),
                Some(k @ (b'R' | b'E')) if recipients.is_empty() => {
                    let (rec, next) = record(pos).ok_or(EnvelopeError::Truncated)?;
                    if *k == b'R' {
                        dsn.ret = Some(match &rec[1..] {
                            b"FULL" => Ret::Full,
                            b"HDRS" => Ret::Hdrs,
                            _ => return Err(EnvelopeError::BadRecord),
                        });
                    } else {
                        dsn.envid = Some(check_dsn_text(&rec[1..], 100)?);
                    }
                    pos = next;
                }
                Some(k @ (b'N' | b'O')) if !recipients.is_empty() => {
                    let (rec, next) = record(pos).ok_or(EnvelopeError::Truncated)?;
                    dsn.rcpts.resize(recipients.len(), RcptDsn::default());
                    let last = dsn.rcpts.last_mut().ok_or(EnvelopeError::BadRecord)?;
                    if *k == b'N' {
                        let text =
                            std::str::from_utf8(&rec[1..]).map_err(|_| EnvelopeError::BadRecord)?;
                        last.notify = Some(Notify::parse(text).ok_or(EnvelopeError::BadRecord)?);
                    } else {
                        last.orcpt = Some(check_dsn_text(&rec[1..], 500)?);
                    }
                    pos = next;
                }
                Some(b'T') => {
                    let (rec, next) = record(pos).ok_or(EnvelopeError::Truncated)?;
                    if recipients.len() >= MAX_RECIPIENTS {
                        return Err(EnvelopeError::TooManyRecipients);
                    }
                    let r = check_address(&rec[1..])?;
                    if r.is_empty() {
                        return Err(EnvelopeError::BadAddress("empty recipient".into()));
                    }
                    recipients.push(r.to_string());
                    pos = next;
                }
                Some(_) => return Err(EnvelopeError::BadRecord),
            }
        }
        if recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        if !dsn.rcpts.is_empty() {
            dsn.rcpts.resize(recipients.len(), RcptDsn::default());
        }
        Ok(Envelope {
            sender,
            recipients,
            smtputf8,
            requiretls,
            dsn,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            self.sender.len() + 3 + self.recipients.iter().map(|r| r.len() + 2).sum::<usize>(),
        );
        v.push(b'F');
        v.extend_from_slice(self.sender.as_bytes());
        v.push(0);
        if self.smtputf8 {
            v.extend_from_slice(b"U\0");
        }
        if self.requiretls {
            v.extend_from_slice(b"S\0");
        }
        let field = |v: &mut Vec<u8>, kind: u8, text: &str| {
            v.push(kind);
            v.extend_from_slice(text.as_bytes());
            v.push(0);
        };
        match self.dsn.ret {
            Some(Ret::Full) => field(&mut v, b'R', "FULL"),
            Some(Ret::Hdrs) => field(&mut v, b'R', "HDRS"),
            None => {}
        }
        if let Some(e) = &self.dsn.envid {
            field(&mut v, b'E', e);
        }
        for (i, r) in self.recipients.iter().enumerate() {
            field(&mut v, b'T', r);
            if let Some(d) = self.dsn.rcpts.get(i) {
                if let Some(n) = d.notify {
                    field(&mut v, b'N', &n.encode());
                }
                if let Some(o) = &d.orcpt {
                    field(&mut v, b'O', o);
                }
            }
        }
        v.push(0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let e = Envelope {
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into(), "e@f".into()],
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
        };
        assert_eq!(e.encode(), b"Fa@b.example\0Tc@d.example\0Te@f\0\0");
        assert_eq!(Envelope::parse(&e.encode()).unwrap(), e);
        let u = Envelope {
            smtputf8: true,
            requiretls: true,
            ..e.clone()
        };
        assert_eq!(u.encode(), b"Fa@b.example\0U\0S\0Tc@d.example\0Te@f\0\0");
        assert_eq!(Envelope::parse(&u.encode()).unwrap(), u);
        let null = Envelope {
            sender: String::new(),
            recipients: vec!["x@y".into()],
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
        };
        assert_eq!(Envelope::parse(&null.encode()).unwrap(), null);
    }

    #[test]
    fn dsn_roundtrip() {
        let e = Envelope {
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into(), "e@f".into()],
            smtputf8: false,
            requiretls: false,
            dsn: Dsn {
                ret: Some(Ret::Hdrs),
                envid: Some("QQ314159".into()),
                rcpts: vec![
                    RcptDsn::default(),
                    RcptDsn {
                        notify: Notify::parse("success,Delay"),
                        orcpt: Some("rfc822;e@f".into()),
                    },
                ],
            },
        };
        assert_eq!(
            e.encode(),
            b"Fa@b.example\0RHDRS\0EQQ314159\0Tc@d.example\0Te@f\0NSUCCESS,DELAY\0Orfc822;e@f\0\0"
        );
        assert_eq!(Envelope::parse(&e.encode()).unwrap(), e);
        assert_eq!(e.dsn.rcpt(0).wants(), Notify::DEFAULT);
        assert!(e.dsn.rcpt(1).wants().success && !e.dsn.rcpt(1).wants().failure);
        assert!(Notify::parse("NEVER").unwrap().never);
        assert_eq!(e.dsn.mail_params(), " RET=HDRS ENVID=QQ314159");
        assert_eq!(
            e.dsn.rcpt(1).rcpt_params(),
            " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;e@f"
        );
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert!(Notify::parse("NEVER,SUCCESS").is_none());
        // DSN records out of place, or with bad values, are refused.
        for bad in [
            &b"Fa\0Tb\0RFULL\0\0"[..],
            b"Fa\0NSUCCESS\0Tb\0\0",
            b"Fa\0RSOME\0Tb\0\0",
            b"Fa\0Tb\0NSOMETIMES\0\0",
            b"Fa\0E\0Tb\0\0",
        ] {
            assert_eq!(
                Envelope::parse(bad),
                Err(EnvelopeError::BadRecord),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed() {
        assert_eq!(Envelope::parse(b"Fa\0Tb\0"), Err(EnvelopeError::Truncated));
        assert_eq!(Envelope::parse(b"Fa\0Tb"), Err(EnvelopeError::Truncated));
        assert_eq!(Envelope::parse(b""), Err(EnvelopeError::Truncated));
        assert_eq!(Envelope::parse(b"Fa\0\0"), Err(EnvelopeError::NoRecipients));
        assert_eq!(Envelope::parse(b"Tb\0\0"), Err(EnvelopeError::BadRecord));
        assert_eq!(
            Envelope::parse(b"Fa\0Xb\0\0"),
            Err(EnvelopeError::BadRecord)
        );
        assert_eq!(
            Envelope::parse(b"Fa\0Tb\0\0junk"),
            Err(EnvelopeError::BadRecord)
        );
        assert!(matches!(
            Envelope::parse(b"Fa\0Tb\nc\0\0"),
            Err(EnvelopeError::BadAddress(_))
        ));
        let long = format!("Fa\0T{}@x\0\0", "u".repeat(2000));
        assert!(matches!(
            Envelope::parse(long.as_bytes()),
            Err(EnvelopeError::BadAddress(_))
        ));
    }
}
