//! The address parser: RFC 5321 §4.1.2 `Reverse-path` / `Forward-path`, with
//! RFC 6531 UTF-8 when SMTPUTF8 is in effect.  See the [`crate::address`]
//! module documentation for the rules and the one lenience (no brackets).
//!
//! Everything here indexes into the input slice; allocation is limited to the
//! local part (at most 64 octets) and the domain (see [`crate::domain`]).

use crate::address::{AddressError, ForwardPath, MAX_LOCAL_PART, MAX_PATH, Mailbox, ReversePath};
use crate::chars::{is_atext, is_control};
use crate::domain::{non_ascii_at, parse_domain, stop_error};

/// Parses a local part starting at `s[i]`; returns it unquoted and the index
/// just past it.
fn parse_local(s: &[u8], i: usize, utf8: bool) -> Result<(String, usize), AddressError> {
    let mut out = Vec::new();
    let mut j = i;
    if s.get(i) == Some(&b'"') {
        j += 1;
        loop {
            if j - i >= MAX_LOCAL_PART {
                return Err(AddressError::LocalPartTooLong);
            }
            let b = *s.get(j).ok_or(AddressError::UnbalancedQuote)?;
            match b {
                b'"' => {
                    j += 1;
                    break;
                }
                b'\\' => match s.get(j + 1) {
                    Some(&q) if (32..=126).contains(&q) => {
                        out.push(q);
                        j += 2;
                    }
                    // quoted-pairSMTP is ASCII only, even with SMTPUTF8
                    Some(&q) => return Err(stop_error(q, true, AddressError::BadLocalPart)),
                    None => return Err(AddressError::UnbalancedQuote),
                },
                0x80.. => {
                    let len = non_ascii_at(s, j, utf8)?;
                    out.extend_from_slice(&s[j..j + len]);
                    j += len;
                }
                _ if is_control(b) => return Err(AddressError::ControlCharacter),
                _ => {
                    out.push(b);
                    j += 1;
                }
            }
        }
    } else {
        // Dot-string = Atom *("." Atom)
        let mut atom_len = 0;
        while let Some(&b) = s.get(j) {
            if j - i > MAX_LOCAL_PART {
                return Err(AddressError::LocalPartTooLong);
            }
            if b == b'.' {
                if atom_len == 0 {
                    return Err(AddressError::BadLocalPart);
                }
                atom_len = 0;
                j += 1;
            } else if is_atext(b) {
                atom_len += 1;
                j += 1;
            } else if b >= 0x80 {
                j += non_ascii_at(s, j, utf8)?;
                atom_len += 1;
            } else {
                break;
            }
        }
        if j == i {
            return match s.get(j) {
                None | Some(b'@') => Err(AddressError::EmptyLocalPart),
                Some(&b) => Err(stop_error(b, utf8, AddressError::BadLocalPart)),
            };
        }
        if atom_len == 0 {
            return Err(AddressError::BadLocalPart); // trailing dot
        }
        out.extend_from_slice(&s[i..j]);
    }
    if j - i > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    if out.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    let local = String::from_utf8(out).map_err(|_| AddressError::InvalidUtf8)?;
    Ok((local, j))
}

/// Parses `local@domain` starting at `s[i]`; returns it and the index past it.
pub(crate) fn parse_mailbox_at(
    s: &[u8],
    i: usize,
    utf8: bool,
) -> Result<(Mailbox, usize), AddressError> {
    let (local, j) = parse_local(s, i, utf8)?;
    match s.get(j) {
        Some(b'@') => {}
        None => return Err(AddressError::MissingAt),
        Some(&b) => return Err(stop_error(b, utf8, AddressError::MissingAt)),
    }
    let (domain, k) = parse_domain(s, j + 1, utf8)?;
    if s.get(k) == Some(&b'@') {
        return Err(AddressError::MultipleAt);
    }
    let mailbox = Mailbox { local, domain };
    // Lowercasing may lengthen a UTF-8 domain: the canonical form must fit too.
    if mailbox.canonical_len() + 2 > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    Ok((mailbox, k))
}

/// Skips a source route `@d1,@d2:` starting at `s[i]` (an `@`); returns the
/// index just past the colon.
fn skip_source_route(s: &[u8], mut i: usize, utf8: bool) -> Result<usize, AddressError> {
    let start = i;
    loop {
        if s.get(i) != Some(&b'@') {
            return Err(AddressError::BadSourceRoute);
        }
        let (_, j) = parse_domain(s, i + 1, utf8)?;
        if j - start > MAX_PATH {
            return Err(AddressError::PathTooLong);
        }
        match s.get(j) {
            Some(b',') => i = j + 1,
            Some(b':') => return Ok(j + 1),
            None => return Err(AddressError::BadSourceRoute),
            Some(&b) => return Err(stop_error(b, utf8, AddressError::BadSourceRoute)),
        }
    }
}

/// A parsed path, before it is told apart as a reverse or forward path.
enum Parsed {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

fn is_postmaster(s: &[u8]) -> bool {
    s.eq_ignore_ascii_case(b"postmaster")
}

fn parse_path(s: &[u8], utf8: bool) -> Result<(Parsed, usize), AddressError> {
    match s.first() {
        None | Some(b' ') => Err(AddressError::Empty),
        Some(b'<') => {
            if s.get(1) == Some(&b'>') {
                return Ok((Parsed::Null, 2));
            }
            if s.get(11) == Some(&b'>') && is_postmaster(&s[1..11]) {
                return Ok((Parsed::Postmaster, 12));
            }
            let mut i = 1;
            if s.get(i) == Some(&b'@') {
                i = skip_source_route(s, i, utf8)?;
            }
            let (mailbox, j) = parse_mailbox_at(s, i, utf8)?;
            match s.get(j) {
                Some(b'>') if j < MAX_PATH => Ok((Parsed::Mailbox(mailbox), j + 1)),
                Some(b'>') => Err(AddressError::PathTooLong),
                None => Err(AddressError::MissingAngleBracket),
                Some(&b) => Err(stop_error(b, utf8, AddressError::TrailingGarbage)),
            }
        }
        Some(_) => {
            // Broken but common: no angle brackets.  The address is the run of
            // bytes up to the first space and must be exactly one mailbox.
            let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
            let token = &s[..end];
            if is_postmaster(token) {
                return Ok((Parsed::Postmaster, end));
            }
            let (mailbox, j) = parse_mailbox_at(token, 0, utf8)?;
            match token.get(j) {
                None if j + 2 <= MAX_PATH => Ok((Parsed::Mailbox(mailbox), j)),
                None => Err(AddressError::PathTooLong),
                Some(b'>' | b'<') => Err(AddressError::MissingAngleBracket),
                Some(&b) => Err(stop_error(b, utf8, AddressError::TrailingGarbage)),
            }
        }
    }
}

/// Parses the argument of `MAIL FROM:` at the start of `s`.  Returns the path
/// and how many bytes it took (through the closing `>`).  `utf8` allows
/// UTF-8 (SMTPUTF8 was given).
pub fn parse_reverse_path(s: &[u8], utf8: bool) -> Result<(ReversePath, usize), AddressError> {
    match parse_path(s, utf8)? {
        (Parsed::Null, n) => Ok((ReversePath::Null, n)),
        // `<postmaster>` as a sender is just an unqualified local part.
        (Parsed::Postmaster, _) => Err(AddressError::MissingAt),
        (Parsed::Mailbox(m), n) => Ok((ReversePath::Mailbox(m), n)),
    }
}

/// Parses the argument of `RCPT TO:` at the start of `s`.  Returns the path
/// and how many bytes it took (through the closing `>`).
pub fn parse_forward_path(s: &[u8], utf8: bool) -> Result<(ForwardPath, usize), AddressError> {
    match parse_path(s, utf8)? {
        (Parsed::Null, _) => Err(AddressError::MissingAngleBracket),
        (Parsed::Postmaster, n) => Ok((ForwardPath::Postmaster, n)),
        (Parsed::Mailbox(m), n) => Ok((ForwardPath::Mailbox(m), n)),
    }
}

/// Parses a whole string as one mailbox `local@domain` (no angle brackets).
pub fn parse_mailbox(s: &[u8], utf8: bool) -> Result<Mailbox, AddressError> {
    let (mailbox, j) = parse_mailbox_at(s, 0, utf8)?;
    match s.get(j) {
        None => Ok(mailbox),
        Some(&b) => Err(stop_error(b, utf8, AddressError::TrailingGarbage)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Domain;
    use std::net::IpAddr;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: Domain::Name(domain.into()),
        }
    }

    fn rev(s: &str) -> Result<(ReversePath, usize), AddressError> {
        parse_reverse_path(s.as_bytes(), false)
    }

    fn fwd(s: &str) -> Result<(ForwardPath, usize), AddressError> {
        parse_forward_path(s.as_bytes(), false)
    }

    fn fwd_mailbox(s: &str) -> Mailbox {
        match fwd(s) {
            Ok((ForwardPath::Mailbox(m), n)) => {
                assert_eq!(n, s.len(), "{s}");
                m
            }
            other => panic!("{s}: {other:?}"),
        }
    }

    fn fwd_err(s: &str) -> AddressError {
        match fwd(s) {
            Err(e) => e,
            Ok(ok) => panic!("{s}: accepted as {ok:?}"),
        }
    }

    #[test]
    fn simple_paths() {
        assert_eq!(rev("<>"), Ok((ReversePath::Null, 2)));
        assert_eq!(rev("<> SIZE=1"), Ok((ReversePath::Null, 2)));
        assert_eq!(
            rev("<a@b.example>"),
            Ok((ReversePath::Mailbox(mb("a", "b.example")), 13))
        );
        assert_eq!(
            fwd_mailbox("<User.Name+tag@Example.COM>"),
            mb("User.Name+tag", "example.com")
        );
        assert_eq!(fwd("<postmaster>"), Ok((ForwardPath::Postmaster, 12)));
        assert_eq!(
            fwd("<PostMaster> NOTIFY=NEVER"),
            Ok((ForwardPath::Postmaster, 12))
        );
        assert_eq!(
            fwd_mailbox("<postmaster@Ours.Example>"),
            mb("postmaster", "ours.example")
        );
        assert_eq!(fwd_err("<>"), AddressError::MissingAngleBracket);
        assert_eq!(rev("<postmaster>"), Err(AddressError::MissingAt));
    }

    #[test]
    fn consumed_stops_at_bracket() {
        let s = b"<a@b.example> SIZE=10";
        assert_eq!(parse_reverse_path(s, false).map(|(_, n)| n), Ok(13));
        let s = b"<\"a>b\"@b.example> x";
        assert_eq!(parse_reverse_path(s, false).map(|(_, n)| n), Ok(17));
    }

    #[test]
    fn relay_tricks() {
        assert_eq!(
            fwd_mailbox("<user%other@ours.example>"),
            mb("user%other", "ours.example")
        );
        assert_eq!(
            fwd_mailbox("<\"user@other\"@ours.example>"),
            mb("user@other", "ours.example")
        );
        assert_eq!(
            fwd_mailbox("<@ours.example:user@other.example>"),
            mb("user", "other.example")
        );
        assert_eq!(
            fwd_mailbox("<@a.example,@b.example:user@c.example>"),
            mb("user", "c.example")
        );
        assert_eq!(
            fwd_mailbox("<other!user@ours.example>"),
            mb("other!user", "ours.example")
        );
        let m = fwd_mailbox("<user@[127.0.0.1]>");
        assert_eq!(m.domain, Domain::Literal(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(fwd_err("<user@ours.example.>"), AddressError::TrailingDot);
        assert_eq!(fwd_mailbox("<u@MiXeD.ExAmPlE>"), mb("u", "mixed.example"));
    }

    #[test]
    fn source_route_errors() {
        assert_eq!(
            fwd_err("<@a.example user@b.example>"),
            AddressError::BadSourceRoute
        );
        assert_eq!(
            fwd_err("<@a.example,user@b.example>"),
            AddressError::BadSourceRoute
        );
        assert_eq!(fwd_err("<@:user@b.example>"), AddressError::BadDomain);
        assert_eq!(fwd_err("<@a.example."), AddressError::TrailingDot);
    }

    #[test]
    fn quoted_local_parts() {
        assert_eq!(fwd_mailbox("<\"a b\"@x.example>"), mb("a b", "x.example"));
        assert_eq!(
            fwd_mailbox("<\"a\\\"b\\\\c\"@x.example>"),
            mb("a\"b\\c", "x.example")
        );
        assert_eq!(fwd_mailbox("<\"\\a\"@x.example>"), mb("a", "x.example"));
        assert_eq!(
            fwd_mailbox("<\"Plain\"@x.example>"),
            mb("Plain", "x.example")
        );
        assert_eq!(fwd_err("<\"ab@x.example>"), AddressError::UnbalancedQuote);
        assert_eq!(fwd_err("<\"ab"), AddressError::UnbalancedQuote);
        assert_eq!(
            fwd_err("<\"a\tb\"@x.example>"),
            AddressError::ControlCharacter
        );
        assert_eq!(
            fwd_err("<\"a\\\nb\"@x.example>"),
            AddressError::ControlCharacter
        );
        assert_eq!(
            fwd_err("<\"a\0b\"@x.example>"),
            AddressError::ControlCharacter
        );
        assert_eq!(
            fwd_err("<\"a\x7fb\"@x.example>"),
            AddressError::ControlCharacter
        );
        assert_eq!(fwd_err("<\"\"@x.example>"), AddressError::EmptyLocalPart);
        assert_eq!(fwd_err("<\"a\"b@x.example>"), AddressError::MissingAt);
    }

    #[test]
    fn dot_string_errors() {
        assert_eq!(fwd_err("<@x.example>"), AddressError::BadSourceRoute);
        assert_eq!(fwd_err("<.a@x.example>"), AddressError::BadLocalPart);
        assert_eq!(fwd_err("<a.@x.example>"), AddressError::BadLocalPart);
        assert_eq!(fwd_err("<a..b@x.example>"), AddressError::BadLocalPart);
        assert_eq!(fwd_err("<a b@x.example>"), AddressError::MissingAt);
        assert_eq!(fwd_err("<a\0b@x.example>"), AddressError::ControlCharacter);
        assert_eq!(fwd_err("<a\r@x.example>"), AddressError::ControlCharacter);
        assert_eq!(fwd_err("<ab>"), AddressError::MissingAt);
        assert_eq!(fwd_err("<ab"), AddressError::MissingAt);
        assert_eq!(fwd_err("<(c)ab@x>"), AddressError::BadLocalPart);
        assert_eq!(fwd_err("<a@b@x.example>"), AddressError::MultipleAt);
        assert_eq!(fwd_err("<a@x.example"), AddressError::MissingAngleBracket);
        assert_eq!(fwd_err("<a@x.example >"), AddressError::TrailingGarbage);
        assert_eq!(fwd_err("< a@x.example>"), AddressError::BadLocalPart);
        assert_eq!(fwd_err(""), AddressError::Empty);
        assert_eq!(fwd_err(" <a@b>"), AddressError::Empty);
    }

    #[test]
    fn limits() {
        let local64 = "l".repeat(64);
        let m = fwd_mailbox(&format!("<{local64}@x.example>"));
        assert_eq!(m.local.len(), 64);
        assert_eq!(
            fwd_err(&format!("<{local64}l@x.example>")),
            AddressError::LocalPartTooLong
        );
        let q = format!("<\"{}\"@x.example>", "q".repeat(62));
        assert_eq!(fwd_mailbox(&q).local.len(), 62);
        let q = format!("<\"{}\"@x.example>", "q".repeat(63));
        assert_eq!(fwd_err(&q), AddressError::LocalPartTooLong);
        let label63 = "d".repeat(63);
        assert!(fwd(&format!("<a@{label63}.example>")).is_ok());
        assert_eq!(
            fwd_err(&format!("<a@{label63}d.example>")),
            AddressError::LabelTooLong
        );
        let d255 = [label63.as_str(); 4].join(".");
        // "<a@" + 252 + ">" is 256, the longest path.
        let d252 = format!("{}.{}", [label63.as_str(); 3].join("."), "d".repeat(60));
        assert!(fwd(&format!("<a@{d252}>")).is_ok());
        assert_eq!(fwd_err(&format!("<ab@{d252}>")), AddressError::PathTooLong);
        assert_eq!(fwd_err(&format!("ab@{d252}.x")), AddressError::PathTooLong);
        assert_eq!(
            fwd_err(&format!("<{local64}@{d255}>")),
            AddressError::PathTooLong
        );
        let route = "@r.example,".repeat(30);
        assert_eq!(
            fwd_err(&format!("<{route}@r.example:a@b.example>")),
            AddressError::PathTooLong
        );
        assert_eq!(
            fwd_err(&"a".repeat(100_000)),
            AddressError::LocalPartTooLong
        );
        assert_eq!(
            fwd_err(&format!("<a@{}", "b".repeat(100_000))),
            AddressError::LabelTooLong
        );
    }

    #[test]
    fn without_brackets() {
        let (p, n) = rev("user@Example.com SIZE=100").unwrap();
        assert_eq!(p, ReversePath::Mailbox(mb("user", "example.com")));
        assert_eq!(n, 16);
        assert_eq!(fwd_mailbox("user@example.com"), mb("user", "example.com"));
        assert_eq!(fwd("postmaster"), Ok((ForwardPath::Postmaster, 10)));
        assert_eq!(
            fwd_err("user@example.com>"),
            AddressError::MissingAngleBracket
        );
        assert_eq!(
            fwd_err("\"a b\"@example.com"),
            AddressError::UnbalancedQuote
        );
        assert_eq!(
            fwd_err("@a.example:u@b.example"),
            AddressError::EmptyLocalPart
        );
        assert_eq!(fwd_err("user"), AddressError::MissingAt);
    }

    #[test]
    fn eight_bit() {
        assert_eq!(fwd_err("<jös@x.example>"), AddressError::NonAscii);
        assert_eq!(fwd_err("<a@bücher.example>"), AddressError::NonAscii);
        assert_eq!(fwd_err("<\"jö\"@x.example>"), AddressError::NonAscii);
        let utf = |s: &str| parse_forward_path(s.as_bytes(), true);
        let (p, _) = utf("<Jös@Bücher.Example>").unwrap();
        assert_eq!(p, ForwardPath::Mailbox(mb("Jös", "bücher.example")));
        let (p, _) = utf("<\"j ö\"@ÄÖ.example>").unwrap();
        assert_eq!(p, ForwardPath::Mailbox(mb("j ö", "äö.example")));
        assert_eq!(
            utf("<a\u{85}b@x.example>"),
            Err(AddressError::ControlCharacter)
        );
        assert_eq!(
            utf("<a@x\u{9f}.example>"),
            Err(AddressError::ControlCharacter)
        );
        assert_eq!(
            parse_forward_path(b"<a\xff@x.example>", true),
            Err(AddressError::InvalidUtf8)
        );
        assert_eq!(
            parse_forward_path(b"<a@x\xc3.example>", true),
            Err(AddressError::InvalidUtf8)
        );
        assert_eq!(
            parse_forward_path(b"<\"\\\xc3\xa4\"@x>", true),
            Err(AddressError::BadLocalPart)
        );
        // Lowercasing grows İ (2 octets) to i + U+0307 (3 octets): re-checked.
        let long = format!("<a@{}.example>", "İ".repeat(31));
        assert_eq!(utf(&long), Err(AddressError::LabelTooLong));
    }

    #[test]
    fn mailbox_only() {
        assert_eq!(
            parse_mailbox(b"a@b.example", false),
            Ok(mb("a", "b.example"))
        );
        assert_eq!(
            parse_mailbox(b"a@b.example ", false),
            Err(AddressError::TrailingGarbage)
        );
        assert_eq!(
            parse_mailbox(b"<a@b.example>", false),
            Err(AddressError::BadLocalPart)
        );
    }
}
