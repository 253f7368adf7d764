//! ferry-smtp: the SMTP protocol without I/O.
//!
//! * [`address`]: envelope paths and mailboxes (RFC 5321 §4.1.2, RFC 6531).
//! * [`command`]: one command line to a [`Command`] (RFC 5321 §4.1, ESMTP
//!   parameters of RFC 1870, 6152, 3030, 3461, 4954, 6531).
//! * [`reply`]: building server replies and parsing a server's replies.
//! * [`data`]: the DATA decoder (end-of-data, dot-unstuffing, CRLF to LF),
//!   written against SMTP smuggling: only CR LF "." CR LF ends a message.
//! * [`sasl`]: SMTP AUTH's base64, PLAIN and LOGIN (RFC 4954, 4616).
//!
//! Every parser works on the bytes it is given and allocates at most in
//! proportion to them.

pub mod address;
mod chars;
pub mod command;
pub mod data;
mod domain;
mod params;
mod path;
pub mod reply;
pub mod sasl;

pub use address::{
    AddressError, Domain, ForwardPath, Mailbox, ReversePath, parse_forward_path, parse_mailbox,
    parse_reverse_path,
};
pub use command::{
    Body, Command, CommandError, MAX_COMMAND_LINE, MailParams, Notify, RcptParams, Ret,
    parse_command, parse_command_with,
};
pub use data::{DataDecoder, DataEvent, LineEndFlags, finish_crlf, normalize_crlf};
pub use reply::{ParsedReply, Reply, ReplyError, ReplyParser};

/// True when `s` is a syntactically valid HELO/EHLO argument in the strict
/// sense: a domain name (without a trailing dot, UTF-8 labels allowed) or an
/// address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
/// [`command::parse_command`] is more lenient; a server may use this to be
/// strict.
pub fn is_valid_helo(s: &str) -> bool {
    let bytes = s.as_bytes();
    matches!(domain::parse_domain(bytes, 0, true), Ok((_, end)) if end == bytes.len())
}
