//! The envelope in the qmail-queue format: `F<sender>\0`, then `T<recipient>\0` for each
//! recipient, then a final `\0`. One extension: a `U\0` record right after the sender marks a
//! transaction that was received with SMTPUTF8 (RFC 6531), which relaying must keep. `queue` reads it on fd 1; the queue file keeps it after the
//! message (see [`crate::queue`]).

use std::fmt;

/// Longest envelope address accepted (RFC 5321 allows 256 octets in a path; this leaves room).
pub const MAX_ADDRESS: usize = 1000;
/// Most recipients in one envelope.
pub const MAX_RECIPIENTS: usize = 100_000;
/// Largest envelope accepted, in bytes.
pub const MAX_ENVELOPE: usize = 16 << 20;
/// The internal sender of a double bounce (qmail's convention): its failures are dropped.
pub const DOUBLE_BOUNCE_SENDER: &str = "#@[]";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message was received with the SMTPUTF8 parameter (recorded as `U\0`).
    pub smtputf8: bool,
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
        let mut recipients = Vec::new();
        loop {
            match buf.get(pos) {
                None => return Err(EnvelopeError::Truncated),
                Some(0) if pos + 1 == buf.len() => break,
                Some(0) => return Err(EnvelopeError::BadRecord),
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
        Ok(Envelope {
            sender,
            recipients,
            smtputf8,
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
        for r in &self.recipients {
            v.push(b'T');
            v.extend_from_slice(r.as_bytes());
            v.push(0);
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
        };
        assert_eq!(e.encode(), b"Fa@b.example\0Tc@d.example\0Te@f\0\0");
        assert_eq!(Envelope::parse(&e.encode()).unwrap(), e);
        let u = Envelope {
            smtputf8: true,
            ..e.clone()
        };
        assert_eq!(u.encode(), b"Fa@b.example\0U\0Tc@d.example\0Te@f\0\0");
        assert_eq!(Envelope::parse(&u.encode()).unwrap(), u);
        let null = Envelope {
            sender: String::new(),
            recipients: vec!["x@y".into()],
            smtputf8: false,
        };
        assert_eq!(Envelope::parse(&null.encode()).unwrap(), null);
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
