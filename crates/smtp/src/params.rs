//! ESMTP parameters of `MAIL FROM` and `RCPT TO` (RFC 5321 §4.1.2
//! `esmtp-param`): SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8
//! (RFC 6531), RET / ENVID / NOTIFY / ORCPT (RFC 3461), AUTH (RFC 4954), REQUIRETLS
//! (RFC 8689).
//!
//! A parameter is `keyword[=value]`, keyword case-insensitive.  Unknown
//! keywords get `555 5.5.4`; a bad or duplicated value gets `501 5.5.4`.
//! xtext values (ENVID, ORCPT, AUTH) are decoded and must decode to
//! printable ASCII.

use crate::command::{CommandError, parse_u64};

/// `BODY=` (RFC 6152 8BITMIME, RFC 3030 BINARYMIME).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (requires BDAT).
    BinaryMime,
}

/// `RET=` (RFC 3461): what a DSN should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the headers only.
    Hdrs,
}

/// One `NOTIFY=` item (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `NEVER` (always alone).
    Never,
    /// `SUCCESS`.
    Success,
    /// `FAILURE`.
    Failure,
    /// `DELAY`.
    Delay,
}

/// Parameters of `MAIL FROM`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n`: the declared message size.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// `REQUIRETLS` was given (RFC 8689): relay only over verified TLS.
    pub requiretls: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<String>,
    /// `AUTH=`, xtext-decoded (`<>` when the client gave no identity).
    pub auth: Option<String>,
}

/// Parameters of `RCPT TO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`: `[Never]`, or a non-empty set of Success/Failure/Delay.
    pub notify: Option<Vec<Notify>>,
    /// `ORCPT=`, xtext-decoded, e.g. `rfc822;user@example.com`.
    pub orcpt: Option<String>,
}

/// RFC 3461 §4.4: ENVID is at most 100 characters.
const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: ORCPT is at most 500 characters.
const MAX_ORCPT: usize = 500;

/// One `keyword[=value]`.
pub(crate) struct Param<'a> {
    keyword: &'a [u8],
    value: Option<&'a [u8]>,
}

/// Splits the parameter part of a `MAIL`/`RCPT` line at spaces.
pub(crate) fn split_params(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

fn parse_param(word: &[u8]) -> Result<Param<'_>, CommandError> {
    let (keyword, value) = match word.iter().position(|&b| b == b'=') {
        Some(i) => (&word[..i], Some(&word[i + 1..])),
        None => (word, None),
    };
    let key_ok = keyword.first().is_some_and(u8::is_ascii_alphanumeric)
        && keyword
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    // esmtp-value = 1*(%d33-60 / %d62-126)
    let value_ok =
        value.is_none_or(|v| !v.is_empty() && v.iter().all(|&b| matches!(b, 33..=60 | 62..=126)));
    if key_ok && value_ok {
        Ok(Param { keyword, value })
    } else {
        Err(CommandError::SYNTAX)
    }
}

/// Sets `slot` once; a second time is a syntax error.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), CommandError> {
    if slot.replace(value).is_some() {
        return Err(CommandError::SYNTAX);
    }
    Ok(())
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes).  The decoded text must be
/// printable ASCII (space allowed only when `space`) and at most `max` long.
pub(crate) fn decode_xtext(s: &[u8], space: bool, max: usize) -> Option<String> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = String::new();
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let c = if b == b'+' {
            let hi = hex(*s.get(i + 1)?)?;
            let lo = hex(*s.get(i + 2)?)?;
            i += 3;
            char::from_u32(hi * 16 + lo)?
        } else {
            i += 1;
            char::from(b)
        };
        let printable = c.is_ascii_graphic() || (space && c == ' ');
        if !printable || out.len() >= max {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

fn value_of<'a>(p: &Param<'a>) -> Result<&'a [u8], CommandError> {
    p.value.ok_or(CommandError::SYNTAX)
}

fn is(p: &Param<'_>, keyword: &str) -> bool {
    p.keyword.eq_ignore_ascii_case(keyword.as_bytes())
}

/// Parses the parameters of `MAIL FROM`.
pub(crate) fn parse_mail_params<'a>(
    words: impl Iterator<Item = &'a [u8]>,
) -> Result<MailParams, CommandError> {
    let mut params = MailParams::default();
    for word in words {
        let p = parse_param(word)?;
        if is(&p, "SIZE") {
            let size = parse_u64(value_of(&p)?).ok_or(CommandError::SYNTAX)?;
            set_once(&mut params.size, size)?;
        } else if is(&p, "BODY") {
            let v = value_of(&p)?;
            let body = [
                (&b"7BIT"[..], Body::SevenBit),
                (b"8BITMIME", Body::EightBitMime),
                (b"BINARYMIME", Body::BinaryMime),
            ]
            .into_iter()
            .find(|(name, _)| v.eq_ignore_ascii_case(name))
            .map(|(_, body)| body)
            .ok_or(CommandError::SYNTAX)?;
            set_once(&mut params.body, body)?;
        } else if is(&p, "SMTPUTF8") {
            if p.value.is_some() || params.smtputf8 {
                return Err(CommandError::SYNTAX);
            }
            params.smtputf8 = true;
        } else if is(&p, "REQUIRETLS") {
            if p.value.is_some() || params.requiretls {
                return Err(CommandError::SYNTAX);
            }
            params.requiretls = true;
        } else if is(&p, "RET") {
            let v = value_of(&p)?;
            let ret = if v.eq_ignore_ascii_case(b"FULL") {
                Ret::Full
            } else if v.eq_ignore_ascii_case(b"HDRS") {
                Ret::Hdrs
            } else {
                return Err(CommandError::SYNTAX);
            };
            set_once(&mut params.ret, ret)?;
        } else if is(&p, "ENVID") {
            let envid =
                decode_xtext(value_of(&p)?, false, MAX_ENVID).ok_or(CommandError::SYNTAX)?;
            set_once(&mut params.envid, envid)?;
        } else if is(&p, "AUTH") {
            let auth = decode_xtext(value_of(&p)?, false, MAX_ORCPT).ok_or(CommandError::SYNTAX)?;
            set_once(&mut params.auth, auth)?;
        } else {
            return Err(CommandError::MAIL_PARAM);
        }
    }
    Ok(params)
}

fn parse_notify(v: &[u8]) -> Result<Vec<Notify>, CommandError> {
    if v.eq_ignore_ascii_case(b"NEVER") {
        return Ok(vec![Notify::Never]);
    }
    let mut out = Vec::new();
    for item in v.split(|&b| b == b',') {
        let n = if item.eq_ignore_ascii_case(b"SUCCESS") {
            Notify::Success
        } else if item.eq_ignore_ascii_case(b"FAILURE") {
            Notify::Failure
        } else if item.eq_ignore_ascii_case(b"DELAY") {
            Notify::Delay
        } else {
            return Err(CommandError::SYNTAX); // includes NEVER in a list
        };
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Parses the parameters of `RCPT TO`.
pub(crate) fn parse_rcpt_params<'a>(
    words: impl Iterator<Item = &'a [u8]>,
) -> Result<RcptParams, CommandError> {
    let mut params = RcptParams::default();
    for word in words {
        let p = parse_param(word)?;
        if is(&p, "NOTIFY") {
            set_once(&mut params.notify, parse_notify(value_of(&p)?)?)?;
        } else if is(&p, "ORCPT") {
            let orcpt = decode_xtext(value_of(&p)?, true, MAX_ORCPT).ok_or(CommandError::SYNTAX)?;
            // addr-type ";" xtext, e.g. rfc822;user@example.com
            match orcpt.split_once(';') {
                Some((kind, addr)) if !kind.is_empty() && !addr.is_empty() => {}
                _ => return Err(CommandError::SYNTAX),
            }
            set_once(&mut params.orcpt, orcpt)?;
        } else {
            return Err(CommandError::RCPT_PARAM);
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(s: &str) -> Result<MailParams, CommandError> {
        parse_mail_params(split_params(s.as_bytes()))
    }

    fn rcpt(s: &str) -> Result<RcptParams, CommandError> {
        parse_rcpt_params(split_params(s.as_bytes()))
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext(b"abc", false, 100).as_deref(), Some("abc"));
        assert_eq!(
            decode_xtext(b"a+2Bb+3d", false, 100).as_deref(),
            Some("a+b=")
        );
        assert_eq!(decode_xtext(b"a+20b", true, 100).as_deref(), Some("a b"));
        assert_eq!(decode_xtext(b"a+20b", false, 100), None);
        assert_eq!(decode_xtext(b"a+0Ab", true, 100), None);
        assert_eq!(decode_xtext(b"a+00", true, 100), None);
        assert_eq!(decode_xtext(b"a+C3+A4", true, 100), None);
        assert_eq!(decode_xtext(b"a+2", true, 100), None);
        assert_eq!(decode_xtext(b"a+", true, 100), None);
        assert_eq!(decode_xtext(b"a+GG", true, 100), None);
        assert_eq!(decode_xtext(b"abcd", true, 3), None);
        assert_eq!(decode_xtext(b"abc", true, 3).as_deref(), Some("abc"));
    }

    #[test]
    fn mail_params() {
        assert_eq!(mail(""), Ok(MailParams::default()));
        assert_eq!(mail("SIZE=0").map(|p| p.size), Ok(Some(0)));
        assert_eq!(mail("body=7bit").map(|p| p.body), Ok(Some(Body::SevenBit)));
        assert_eq!(mail("ret=full").map(|p| p.ret), Ok(Some(Ret::Full)));
        assert_eq!(mail("SmtpUtf8").map(|p| p.smtputf8), Ok(true));
        assert_eq!(mail("SMTPUTF8 SMTPUTF8"), Err(CommandError::SYNTAX));
        assert_eq!(mail("requiretls").map(|p| p.requiretls), Ok(true));
        assert_eq!(mail("REQUIRETLS=yes"), Err(CommandError::SYNTAX));
        assert_eq!(mail("REQUIRETLS REQUIRETLS"), Err(CommandError::SYNTAX));
        assert_eq!(mail("BODY=8BITMIME BODY=7BIT"), Err(CommandError::SYNTAX));
        assert_eq!(mail("ENVID=a ENVID=b"), Err(CommandError::SYNTAX));
        assert_eq!(
            mail(&format!("ENVID={}", "e".repeat(100))).map(|p| p.envid.is_some()),
            Ok(true)
        );
        assert_eq!(
            mail(&format!("ENVID={}", "e".repeat(101))),
            Err(CommandError::SYNTAX)
        );
        assert_eq!(mail("SIZE="), Err(CommandError::SYNTAX));
        assert_eq!(mail("=1"), Err(CommandError::SYNTAX));
        assert_eq!(mail("-X=1"), Err(CommandError::SYNTAX));
        assert_eq!(mail("X_Y=1"), Err(CommandError::SYNTAX));
        assert_eq!(mail("XFOO"), Err(CommandError::MAIL_PARAM));
        assert_eq!(mail("X-FOO=1"), Err(CommandError::MAIL_PARAM));
        assert_eq!(mail("ENVID=a=b"), Err(CommandError::SYNTAX));
        assert_eq!(
            parse_mail_params(split_params(b"ENVID=\xc3\xa4")),
            Err(CommandError::SYNTAX)
        );
    }

    #[test]
    fn rcpt_params() {
        assert_eq!(rcpt(""), Ok(RcptParams::default()));
        let all = rcpt("NOTIFY=FAILURE,SUCCESS,DELAY,FAILURE").map(|p| p.notify);
        assert_eq!(
            all,
            Ok(Some(vec![Notify::Failure, Notify::Success, Notify::Delay]))
        );
        assert_eq!(
            rcpt("NOTIFY=never").map(|p| p.notify),
            Ok(Some(vec![Notify::Never]))
        );
        assert_eq!(rcpt("NOTIFY=NEVER,SUCCESS"), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("NOTIFY=SUCCESS,"), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("NOTIFY="), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("NOTIFY"), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("NOTIFY=DELAY NOTIFY=DELAY"), Err(CommandError::SYNTAX));
        let orcpt = rcpt("ORCPT=rfc822;\"a+20b\"@x").map(|p| p.orcpt);
        assert_eq!(orcpt, Ok(Some("rfc822;\"a b\"@x".into())));
        assert_eq!(rcpt("ORCPT=user@x"), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("ORCPT=;user@x"), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("ORCPT=rfc822;"), Err(CommandError::SYNTAX));
        assert_eq!(rcpt("SIZE=1"), Err(CommandError::RCPT_PARAM));
    }
}
