//! Envelope addresses: RFC 5321 §4.1.2 `Path`, `Mailbox`, `Domain`, and the
//! RFC 6531 (SMTPUTF8) extensions.
//!
//! * A source route (`<@a.example,@b.example:user@c.example>`) is parsed and
//!   ignored, as RFC 5321 §3.3/§4.1.2 recommends.
//! * The local part is stored *unquoted* (quoted-pairs resolved); `Display`
//!   re-quotes it only when it is not a valid Dot-string.
//! * Domain names are lowercased; address literals become an [`IpAddr`].
//! * Limits (RFC 5321 §4.5.3.1): local part 64 octets, domain 255 octets,
//!   label 63 octets, whole path 256 octets including the angle brackets.
//! * Lenience: a path without angle brackets (`MAIL FROM:user@example.com`) is
//!   accepted when it is a plain mailbox that contains no space: the address
//!   ends at the first space.  Many clients send this form.
//! * Control characters (0x00-0x1f, 0x7f, and with SMTPUTF8 also C1 controls
//!   U+0080-U+009F) are refused everywhere, even inside quotes.

use std::fmt;
use std::net::IpAddr;

use crate::chars::is_atext;

pub use crate::path::{parse_forward_path, parse_mailbox, parse_reverse_path};

/// Maximum local-part length in octets (as sent, with quoting).
pub const MAX_LOCAL_PART: usize = 64;
/// Maximum domain length in octets.
pub const MAX_DOMAIN: usize = 255;
/// Maximum length of one domain label in octets.
pub const MAX_LABEL: usize = 63;
/// Maximum length of a reverse- or forward-path, including `<` and `>`.
pub const MAX_PATH: usize = 256;

/// The domain of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name, lowercased (ASCII, or UTF-8 U-labels under SMTPUTF8).
    Name(String),
    /// An address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
}

/// A mailbox `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part, unquoted (quotes and quoted-pair backslashes removed),
    /// case preserved.
    pub local: String,
    /// The domain.
    pub domain: Domain,
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the null sender (bounces).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// The bare `<postmaster>` (case-insensitive), RFC 5321 §4.5.1.
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

/// Why an address was refused.  Every variant is a syntax error: the command
/// layer replies `501 5.1.7` for a sender and `501 5.1.3` for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressError {
    /// Nothing where an address was expected.
    Empty,
    /// `<` without `>`, `<>` as a recipient, or a space in a bare address.
    MissingAngleBracket,
    /// Bytes after the mailbox that do not belong there.
    TrailingGarbage,
    /// The local part is empty (`<@example.com>`, `<""@example.com>`).
    EmptyLocalPart,
    /// No `@` between the local part and the domain.
    MissingAt,
    /// A second `@` outside quotes.
    MultipleAt,
    /// The local part is not a Dot-string or Quoted-string.
    BadLocalPart,
    /// A quoted string without its closing quote.
    UnbalancedQuote,
    /// A control character (anywhere, even inside quotes).
    ControlCharacter,
    /// An 8-bit byte without SMTPUTF8.
    NonAscii,
    /// Invalid UTF-8 (with SMTPUTF8).
    InvalidUtf8,
    /// The domain is not a valid name.
    BadDomain,
    /// The domain ends with a dot (`user@example.com.`).
    TrailingDot,
    /// A malformed `[...]` address literal.
    BadAddressLiteral,
    /// A malformed source route (`@a,@b:`).
    BadSourceRoute,
    /// Local part over 64 octets.
    LocalPartTooLong,
    /// Domain over 255 octets.
    DomainTooLong,
    /// Domain label over 63 octets.
    LabelTooLong,
    /// Path over 256 octets.
    PathTooLong,
}

impl AddressError {
    /// A short human-readable description.
    pub fn describe(self) -> &'static str {
        match self {
            AddressError::Empty => "empty address",
            AddressError::MissingAngleBracket => "missing or unbalanced angle brackets",
            AddressError::TrailingGarbage => "unexpected characters after the address",
            AddressError::EmptyLocalPart => "empty local part",
            AddressError::MissingAt => "missing @",
            AddressError::MultipleAt => "more than one @",
            AddressError::BadLocalPart => "invalid local part",
            AddressError::UnbalancedQuote => "unbalanced quote",
            AddressError::ControlCharacter => "control character in address",
            AddressError::NonAscii => "8-bit address without SMTPUTF8",
            AddressError::InvalidUtf8 => "invalid UTF-8 in address",
            AddressError::BadDomain => "invalid domain",
            AddressError::TrailingDot => "domain ends with a dot",
            AddressError::BadAddressLiteral => "invalid address literal",
            AddressError::BadSourceRoute => "invalid source route",
            AddressError::LocalPartTooLong => "local part too long",
            AddressError::DomainTooLong => "domain too long",
            AddressError::LabelTooLong => "domain label too long",
            AddressError::PathTooLong => "path too long",
        }
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for AddressError {}

impl Mailbox {
    /// True when the local part is not a valid Dot-string and so must be
    /// sent as a Quoted-string.
    pub fn local_is_quoted_needed(&self) -> bool {
        let bytes = self.local.as_bytes();
        bytes.is_empty()
            || bytes.first() == Some(&b'.')
            || bytes.last() == Some(&b'.')
            || bytes.windows(2).any(|w| w == b"..")
            || !bytes.iter().all(|&b| is_atext(b) || b == b'.' || b >= 0x80)
    }

    /// True when the whole mailbox is ASCII (usable without SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii()
            && match &self.domain {
                Domain::Name(n) => n.is_ascii(),
                Domain::Literal(_) => true,
            }
    }

    pub(crate) fn canonical_len(&self) -> usize {
        self.to_string().len()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(IpAddr::V4(ip)) => write!(f, "[{ip}]"),
            Domain::Literal(IpAddr::V6(ip)) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

/// The canonical form: the local part quoted only when needed, `@`, domain.
impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local_is_quoted_needed() {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: Domain) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain,
        }
    }

    fn name(d: &str) -> Domain {
        Domain::Name(d.into())
    }

    #[test]
    fn canonical_form() {
        assert_eq!(mb("user", name("x.example")).to_string(), "user@x.example");
        assert_eq!(mb("a.b+c", name("x")).to_string(), "a.b+c@x");
        assert_eq!(mb("user@other", name("x")).to_string(), "\"user@other\"@x");
        assert_eq!(mb("a b", name("x")).to_string(), "\"a b\"@x");
        assert_eq!(mb("a\"b\\c", name("x")).to_string(), "\"a\\\"b\\\\c\"@x");
        assert_eq!(mb(".a", name("x")).to_string(), "\".a\"@x");
        assert_eq!(mb("a.", name("x")).to_string(), "\"a.\"@x");
        assert_eq!(mb("a..b", name("x")).to_string(), "\"a..b\"@x");
        assert_eq!(mb("jöß", name("bü.example")).to_string(), "jöß@bü.example");
        let v4 = Domain::Literal(IpAddr::from([192, 0, 2, 1]));
        assert_eq!(mb("a", v4).to_string(), "a@[192.0.2.1]");
        let v6 = Domain::Literal("2001:db8::1".parse().unwrap());
        assert_eq!(mb("a", v6).to_string(), "a@[IPv6:2001:db8::1]");
    }

    #[test]
    fn quoting_needed() {
        assert!(!mb("simple", name("x")).local_is_quoted_needed());
        assert!(!mb("other!user%x", name("x")).local_is_quoted_needed());
        assert!(mb("", name("x")).local_is_quoted_needed());
        assert!(mb("a(b)", name("x")).local_is_quoted_needed());
        assert!(mb("a,b", name("x")).local_is_quoted_needed());
    }

    #[test]
    fn paths_display() {
        assert_eq!(ReversePath::Null.to_string(), "<>");
        assert_eq!(ForwardPath::Postmaster.to_string(), "<postmaster>");
        let m = mb("u", name("x"));
        assert_eq!(ReversePath::Mailbox(m.clone()).to_string(), "<u@x>");
        assert_eq!(ForwardPath::Mailbox(m).to_string(), "<u@x>");
    }

    #[test]
    fn ascii() {
        assert!(mb("u", name("x")).is_ascii());
        assert!(!mb("ü", name("x")).is_ascii());
        assert!(!mb("u", name("ü")).is_ascii());
        assert!(mb("u", Domain::Literal(IpAddr::from([1, 2, 3, 4]))).is_ascii());
    }

    #[test]
    fn reparse_canonical() {
        for s in [
            "<\"a..b\"@x>",
            "<\"\\q\"@X>",
            "<\"a\\\\\"@x>",
            "<\"a b\"@[1.2.3.4]>",
        ] {
            let (p, _) = parse_forward_path(s.as_bytes(), false).unwrap();
            let ForwardPath::Mailbox(m) = p else {
                panic!("{s}")
            };
            let again = parse_mailbox(m.to_string().as_bytes(), false).unwrap();
            assert_eq!(again, m, "{s}");
        }
    }

    #[test]
    fn errors_describe() {
        assert_eq!(
            AddressError::TrailingDot.to_string(),
            "domain ends with a dot"
        );
        assert_eq!(AddressError::PathTooLong.describe(), "path too long");
    }
}
