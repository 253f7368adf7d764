//! Domains: RFC 5321 §4.1.2 `Domain` (dot-separated labels of letters,
//! digits and inner hyphens; no trailing dot) and `address-literal`
//! (`[192.0.2.1]`, `[IPv6:...]`), with RFC 6531 U-labels under SMTPUTF8.
//!
//! Names are lowercased (ASCII, or Unicode lowercasing for UTF-8 names; the
//! length limits are checked again on the result, since lowercasing can
//! lengthen a name).  The scan stops at the first byte that cannot belong to
//! a domain and never looks further than 256 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::address::{AddressError, Domain, MAX_DOMAIN, MAX_LABEL};
use crate::chars::{is_control, utf8_char_at};

/// What stopped a scan at byte `b`: a control, an 8-bit byte without
/// SMTPUTF8, or else the syntax error `other`.
pub(crate) fn stop_error(b: u8, utf8: bool, other: AddressError) -> AddressError {
    if is_control(b) {
        AddressError::ControlCharacter
    } else if b >= 0x80 && !utf8 {
        AddressError::NonAscii
    } else {
        other
    }
}

/// Parses the non-ASCII character at `s[i]` (with `utf8`), returning its length.
pub(crate) fn non_ascii_at(s: &[u8], i: usize, utf8: bool) -> Result<usize, AddressError> {
    if !utf8 {
        return Err(AddressError::NonAscii);
    }
    match utf8_char_at(s, i) {
        Some((c, _)) if c.is_control() => Err(AddressError::ControlCharacter),
        Some((_, len)) => Ok(len),
        None => Err(AddressError::InvalidUtf8),
    }
}

/// Parses an address literal `[...]` starting at `s[i]` (which is `[`).
fn parse_literal(s: &[u8], i: usize) -> Result<(IpAddr, usize), AddressError> {
    let rest = &s[i + 1..];
    // The longest literal is "IPv6:" and 45 characters: do not look further.
    let end = rest
        .iter()
        .take(64)
        .position(|&b| b == b']')
        .ok_or(AddressError::BadAddressLiteral)?;
    let inner = &rest[..end];
    if let Some(&b) = inner.iter().find(|&&b| is_control(b)) {
        return Err(stop_error(b, false, AddressError::BadAddressLiteral));
    }
    let inner = std::str::from_utf8(inner).map_err(|_| AddressError::BadAddressLiteral)?;
    let ip = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| AddressError::BadAddressLiteral)?,
        _ => inner
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| AddressError::BadAddressLiteral)?,
    };
    Ok((ip, i + 1 + end + 1))
}

/// Checks one label (already known to contain only label characters):
/// non-empty, at most 63 octets, no hyphen at either end.
fn check_label(label: &[u8]) -> Result<(), AddressError> {
    match (label.first(), label.last()) {
        (None, _) => Err(AddressError::BadDomain),
        _ if label.len() > MAX_LABEL => Err(AddressError::LabelTooLong),
        (Some(b'-'), _) | (_, Some(b'-')) => Err(AddressError::BadDomain),
        _ => Ok(()),
    }
}

/// Parses a domain (name or address literal) starting at `s[i]`; returns it
/// and the index just past it.  The scan stops at the first byte that cannot
/// be part of a domain; the caller checks what that byte is.
pub(crate) fn parse_domain(
    s: &[u8],
    i: usize,
    utf8: bool,
) -> Result<(Domain, usize), AddressError> {
    match s.get(i) {
        None => return Err(AddressError::BadDomain),
        Some(b'[') => return parse_literal(s, i).map(|(ip, j)| (Domain::Literal(ip), j)),
        Some(_) => {}
    }
    let mut j = i;
    let mut label_start = i;
    let mut non_ascii = false;
    loop {
        if j - label_start > MAX_LABEL {
            return Err(AddressError::LabelTooLong);
        }
        if j - i > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        match s.get(j) {
            Some(&b) if b.is_ascii_alphanumeric() || b == b'-' => j += 1,
            Some(&b) if b >= 0x80 => {
                j += non_ascii_at(s, j, utf8)?;
                non_ascii = true;
            }
            Some(b'.') => {
                if j == label_start {
                    return Err(AddressError::BadDomain);
                }
                check_label(&s[label_start..j])?;
                j += 1;
                label_start = j;
            }
            next => {
                if j == label_start {
                    return Err(match next {
                        _ if j == i => next.map_or(AddressError::BadDomain, |&b| {
                            stop_error(b, utf8, AddressError::BadDomain)
                        }),
                        Some(&b) if is_control(b) => AddressError::ControlCharacter,
                        _ => AddressError::TrailingDot,
                    });
                }
                check_label(&s[label_start..j])?;
                break;
            }
        }
    }
    if j - i > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    let raw = std::str::from_utf8(&s[i..j]).map_err(|_| AddressError::InvalidUtf8)?;
    let name = if non_ascii {
        let lower = raw.to_lowercase();
        // Lowercasing may change lengths: re-check the limits on the result.
        if lower.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if lower.split('.').any(|l| l.len() > MAX_LABEL) {
            return Err(AddressError::LabelTooLong);
        }
        lower
    } else {
        raw.to_ascii_lowercase()
    };
    Ok((Domain::Name(name), j))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(s: &str) -> Result<(Domain, usize), AddressError> {
        parse_domain(s.as_bytes(), 0, false)
    }

    fn name(s: &str) -> Domain {
        Domain::Name(s.into())
    }

    #[test]
    fn names() {
        assert_eq!(domain("x-y.example"), Ok((name("x-y.example"), 11)));
        assert_eq!(domain("123.Example>"), Ok((name("123.example"), 11)));
        assert_eq!(domain("LOCALHOST"), Ok((name("localhost"), 9)));
        assert_eq!(domain("a.b c"), Ok((name("a.b"), 3)));
        assert_eq!(domain("x_y"), Ok((name("x"), 1)));
        assert_eq!(domain("-x.example"), Err(AddressError::BadDomain));
        assert_eq!(domain("x-.example"), Err(AddressError::BadDomain));
        assert_eq!(domain("x..example"), Err(AddressError::BadDomain));
        assert_eq!(domain(".example"), Err(AddressError::BadDomain));
        assert_eq!(domain(""), Err(AddressError::BadDomain));
        assert_eq!(domain(">"), Err(AddressError::BadDomain));
        assert_eq!(domain("x.example."), Err(AddressError::TrailingDot));
        assert_eq!(domain("x.example.>"), Err(AddressError::TrailingDot));
        assert_eq!(domain("x.example.\r"), Err(AddressError::ControlCharacter));
        assert_eq!(domain("\0x"), Err(AddressError::ControlCharacter));
        assert_eq!(domain("bücher.example"), Err(AddressError::NonAscii));
    }

    #[test]
    fn utf8_names() {
        let utf = |s: &str| parse_domain(s.as_bytes(), 0, true);
        assert_eq!(utf("Bücher.EXAMPLE"), Ok((name("bücher.example"), 15)));
        assert_eq!(utf("ΣΑΣ.example"), Ok((name("σασ.example"), 14)));
        assert_eq!(utf("x\u{9f}.example"), Err(AddressError::ControlCharacter));
        assert_eq!(
            parse_domain(b"x\xc3.example", 0, true),
            Err(AddressError::InvalidUtf8)
        );
        assert_eq!(
            parse_domain(b"\xff", 0, true),
            Err(AddressError::InvalidUtf8)
        );
        // Lowercasing grows İ (2 octets) to i + U+0307 (3 octets): re-checked.
        assert_eq!(utf(&"İ".repeat(31)), Err(AddressError::LabelTooLong));
        let long = ["İ".repeat(20).as_str(); 6].join(".");
        assert_eq!(long.len(), 245);
        assert_eq!(utf(&long), Err(AddressError::DomainTooLong));
    }

    #[test]
    fn literals() {
        let lit = |s: &str| domain(s).map(|(d, n)| (d.to_string(), n));
        assert_eq!(lit("[127.0.0.1]>"), Ok(("[127.0.0.1]".into(), 11)));
        assert_eq!(
            lit("[IPv6:2001:DB8::1]"),
            Ok(("[IPv6:2001:db8::1]".into(), 18))
        );
        assert_eq!(lit("[ipv6:::1]"), Ok(("[IPv6:::1]".into(), 10)));
        assert_eq!(
            lit("[IPv6:::ffff:1.2.3.4]"),
            Ok(("[IPv6:::ffff:1.2.3.4]".into(), 21))
        );
        for bad in [
            "[1.2.3]",
            "[1.2.3.256]",
            "[01.2.3.4]",
            "[::1]",
            "[IPv6:1.2.3.4]",
            "[x-tag:foo]",
            "[1.2.3.4",
            "[]",
            "[",
            "[ 1.2.3.4]",
            "[IPv6:]",
        ] {
            assert_eq!(domain(bad), Err(AddressError::BadAddressLiteral), "{bad}");
        }
        assert_eq!(domain("[1.2.3.4\0]"), Err(AddressError::ControlCharacter));
        let far = format!("[{}]", "1".repeat(100));
        assert_eq!(domain(&far), Err(AddressError::BadAddressLiteral));
    }

    #[test]
    fn limits() {
        let label63 = "d".repeat(63);
        assert!(domain(&format!("{label63}.example")).is_ok());
        assert_eq!(
            domain(&format!("{label63}d.x")),
            Err(AddressError::LabelTooLong)
        );
        // 4 * 63 + 3 dots = 255: the longest domain.
        let d255 = [label63.as_str(); 4].join(".");
        assert_eq!(domain(&d255).map(|(_, n)| n), Ok(255));
        assert_eq!(
            domain(&format!("{d255}.x")),
            Err(AddressError::DomainTooLong)
        );
        assert_eq!(domain(&format!("{d255}x")), Err(AddressError::LabelTooLong));
        assert_eq!(
            domain(&"b".repeat(100_000)),
            Err(AddressError::LabelTooLong)
        );
        assert_eq!(
            domain(&"b.".repeat(100_000)),
            Err(AddressError::DomainTooLong)
        );
    }

    #[test]
    fn helo_check() {
        assert!(crate::is_valid_helo("mx.example"));
        assert!(crate::is_valid_helo("[192.0.2.1]"));
        assert!(crate::is_valid_helo("bücher.example"));
        assert!(!crate::is_valid_helo("mx.example."));
        assert!(!crate::is_valid_helo("two words"));
        assert!(!crate::is_valid_helo(""));
        assert!(!crate::is_valid_helo("[1.2.3.4"));
    }

    #[test]
    fn stop_errors() {
        assert_eq!(
            stop_error(0, true, AddressError::BadDomain),
            AddressError::ControlCharacter
        );
        assert_eq!(
            stop_error(0xc3, false, AddressError::BadDomain),
            AddressError::NonAscii
        );
        assert_eq!(
            stop_error(0xc3, true, AddressError::BadDomain),
            AddressError::BadDomain
        );
        assert_eq!(
            stop_error(b'_', false, AddressError::BadDomain),
            AddressError::BadDomain
        );
    }
}
