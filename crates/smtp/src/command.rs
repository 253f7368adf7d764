//! SMTP command lines (RFC 5321 §4.1) parsed into [`Command`].
//!
//! The input is one line without its CRLF.  Verbs are case-insensitive;
//! extra spaces between the verb and its argument and trailing spaces are
//! tolerated, as is one space after `MAIL FROM:` / `RCPT TO:` (as Postfix
//! does).  Any control byte (NUL, TAB, bare CR or LF, DEL) refuses the line.
//!
//! SMTPUTF8: `MAIL` allows UTF-8 in its path when it carries the `SMTPUTF8`
//! parameter.  For `RCPT`, `VRFY` and `EXPN` that depends on the transaction,
//! which this parser cannot see: [`parse_command`] assumes no SMTPUTF8 and
//! [`parse_command_with`] takes it as an argument.

use std::fmt;

use crate::address::{ForwardPath, ReversePath, parse_forward_path, parse_reverse_path};
use crate::chars::is_control;
use crate::params::{parse_mail_params, parse_rcpt_params, split_params};

pub use crate::params::{Body, MailParams, Notify, RcptParams, Ret};

/// The longest command line the server should accept, without CRLF
/// (RFC 5321 §4.5.3.1.4 says 512 with CRLF; ESMTP parameters raise it).
/// Enforced by the caller's line reader, not by [`parse_command`].
pub const MAX_COMMAND_LINE: usize = 2048;

/// The longest HELO/EHLO argument accepted.
pub const MAX_HELO: usize = 255;

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO` and its argument as given.
    Helo(String),
    /// `EHLO` and its argument as given.
    Ehlo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(ReversePath, MailParams),
    /// `RCPT TO:<path> [params]`.
    Rcpt(ForwardPath, RcptParams),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of the chunk that follows the command line.
        size: u64,
        /// `LAST` was given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP` (any argument ignored).
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `HELP [string]`.
    Help(Option<String>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism, uppercased.
        mechanism: String,
        /// The initial response as sent (base64, or `=` for empty).
        initial: Option<String>,
    },
}

/// A refused command, with the reply to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandError {
    /// The SMTP reply code.
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `"5.5.2"`.
    pub enhanced: &'static str,
    /// The reply text.
    pub text: &'static str,
}

impl CommandError {
    const fn new(code: u16, enhanced: &'static str, text: &'static str) -> Self {
        CommandError {
            code,
            enhanced,
            text,
        }
    }
    /// `500 5.5.2`: the line is empty.
    pub const EMPTY: Self = Self::new(500, "5.5.2", "Error: empty command");
    /// `500 5.5.2`: unknown verb.
    pub const UNRECOGNIZED: Self = Self::new(500, "5.5.2", "Error: command not recognized");
    /// `500 5.5.2`: NUL or another control byte in the line.
    pub const CONTROL: Self = Self::new(
        500,
        "5.5.2",
        "Error: command line contains NUL or control characters",
    );
    /// `501 5.5.4`: bad arguments.
    pub const SYNTAX: Self = Self::new(501, "5.5.4", "Syntax error in parameters or arguments");
    /// `501 5.1.7`: bad `MAIL FROM` address.
    pub const BAD_SENDER: Self = Self::new(501, "5.1.7", "Bad sender address syntax");
    /// `501 5.1.3`: bad `RCPT TO` address.
    pub const BAD_RECIPIENT: Self = Self::new(501, "5.1.3", "Bad recipient address syntax");
    /// `555 5.5.4`: unknown `MAIL` parameter.
    pub const MAIL_PARAM: Self = Self::new(555, "5.5.4", "Unsupported MAIL FROM parameter");
    /// `555 5.5.4`: unknown `RCPT` parameter.
    pub const RCPT_PARAM: Self = Self::new(555, "5.5.4", "Unsupported RCPT TO parameter");
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl std::error::Error for CommandError {}

/// Parses one command line (without CRLF), assuming the transaction has no
/// SMTPUTF8: `RCPT`, `VRFY` and `EXPN` refuse 8-bit addresses.  `MAIL`
/// decides from its own `SMTPUTF8` parameter.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    parse_command_with(line, false)
}

/// Parses one command line (without CRLF).  `smtputf8` says whether the
/// current transaction's `MAIL` carried `SMTPUTF8`; it allows UTF-8 in
/// `RCPT` paths and `VRFY`/`EXPN` arguments.
pub fn parse_command_with(line: &[u8], smtputf8: bool) -> Result<Command, CommandError> {
    if line.iter().any(|&b| is_control(b)) {
        return Err(CommandError::CONTROL);
    }
    let line = trim_end_spaces(line);
    if line.is_empty() {
        return Err(CommandError::EMPTY);
    }
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (verb, rest) = line.split_at(verb_end);
    let arg = trim_start_spaces(rest);
    let upper = |v: &[u8]| -> Option<[u8; 8]> {
        let mut out = [0u8; 8];
        out.get_mut(..v.len())?.copy_from_slice(v);
        out.make_ascii_uppercase();
        Some(out)
    };
    let verb = upper(verb).ok_or(CommandError::UNRECOGNIZED)?;
    let verb = &verb[..verb_end];
    match verb {
        b"HELO" => Ok(Command::Helo(helo_arg(arg)?)),
        b"EHLO" => Ok(Command::Ehlo(helo_arg(arg)?)),
        b"MAIL" => parse_mail(arg),
        b"RCPT" => parse_rcpt(arg, smtputf8),
        b"DATA" => no_arg(arg, Command::Data),
        b"RSET" => no_arg(arg, Command::Rset),
        b"QUIT" => no_arg(arg, Command::Quit),
        b"STARTTLS" => no_arg(arg, Command::StartTls),
        b"NOOP" => Ok(Command::Noop),
        b"HELP" if arg.is_empty() => Ok(Command::Help(None)),
        b"HELP" => Ok(Command::Help(Some(text_arg(arg, true)?))),
        b"VRFY" => Ok(Command::Vrfy(text_arg(arg, smtputf8)?)),
        b"EXPN" => Ok(Command::Expn(text_arg(arg, smtputf8)?)),
        b"BDAT" => parse_bdat(arg),
        b"AUTH" => parse_auth(arg),
        _ => Err(CommandError::UNRECOGNIZED),
    }
}

fn trim_end_spaces(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &s[..end]
}

fn trim_start_spaces(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[start..]
}

fn no_arg(arg: &[u8], command: Command) -> Result<Command, CommandError> {
    if arg.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::SYNTAX)
    }
}

/// A free-text argument: non-empty, UTF-8 only when allowed.
fn text_arg(arg: &[u8], utf8: bool) -> Result<String, CommandError> {
    if arg.is_empty() || (!utf8 && !arg.is_ascii()) {
        return Err(CommandError::SYNTAX);
    }
    let s = std::str::from_utf8(arg).map_err(|_| CommandError::SYNTAX)?;
    if s.chars().any(char::is_control) {
        return Err(CommandError::SYNTAX);
    }
    Ok(s.to_owned())
}

/// The HELO/EHLO argument as given (spaces inside are kept, as Postfix
/// does); see [`crate::is_valid_helo`] for a strict check.
fn helo_arg(arg: &[u8]) -> Result<String, CommandError> {
    if arg.len() > MAX_HELO {
        return Err(CommandError::SYNTAX);
    }
    text_arg(arg, true)
}

/// Strips a case-insensitive `prefix` (e.g. `FROM:`) and at most one space.
fn after_prefix<'a>(arg: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &arg[prefix.len()..];
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// The bytes after a path: empty, or a space and parameters.
fn params_after(rest: &[u8]) -> Option<&[u8]> {
    match rest.first() {
        None => Some(rest),
        Some(b' ') => Some(rest),
        Some(_) => None,
    }
}

fn parse_mail(arg: &[u8]) -> Result<Command, CommandError> {
    let s = after_prefix(arg, b"FROM:").ok_or(CommandError::SYNTAX)?;
    // Where the path ends does not depend on SMTPUTF8, which only comes
    // after it: parse permissively first, then again strictly if needed.
    let (path, used) = parse_reverse_path(s, true).map_err(|_| CommandError::BAD_SENDER)?;
    let rest = params_after(&s[used..]).ok_or(CommandError::BAD_SENDER)?;
    let params = parse_mail_params(split_params(rest))?;
    if params.smtputf8 {
        return Ok(Command::Mail(path, params));
    }
    let (path, _) = parse_reverse_path(s, false).map_err(|_| CommandError::BAD_SENDER)?;
    Ok(Command::Mail(path, params))
}

fn parse_rcpt(arg: &[u8], smtputf8: bool) -> Result<Command, CommandError> {
    let s = after_prefix(arg, b"TO:").ok_or(CommandError::SYNTAX)?;
    let (path, used) = parse_forward_path(s, smtputf8).map_err(|_| CommandError::BAD_RECIPIENT)?;
    let rest = params_after(&s[used..]).ok_or(CommandError::BAD_RECIPIENT)?;
    let params = parse_rcpt_params(split_params(rest))?;
    Ok(Command::Rcpt(path, params))
}

/// A decimal number of 1 to 20 digits that fits in a `u64`.
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn parse_bdat(arg: &[u8]) -> Result<Command, CommandError> {
    let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .and_then(parse_u64)
        .ok_or(CommandError::SYNTAX)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(CommandError::SYNTAX),
    };
    if words.next().is_some() {
        return Err(CommandError::SYNTAX);
    }
    Ok(Command::Bdat { size, last })
}

/// The longest SASL mechanism name (RFC 4422 §3.1).
const MAX_MECHANISM: usize = 20;

fn parse_auth(arg: &[u8]) -> Result<Command, CommandError> {
    let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(CommandError::SYNTAX)?;
    let mech_ok = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    if mechanism.len() > MAX_MECHANISM || !mechanism.iter().all(mech_ok) {
        return Err(CommandError::SYNTAX);
    }
    let b64_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let initial = match words.next() {
        None => None,
        Some(w) if w.iter().all(b64_ok) => Some(String::from_utf8_lossy(w).into_owned()),
        Some(_) => return Err(CommandError::SYNTAX),
    };
    if words.next().is_some() {
        return Err(CommandError::SYNTAX);
    }
    let mechanism = String::from_utf8_lossy(mechanism).to_ascii_uppercase();
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Domain, Mailbox};

    fn cmd(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: Domain::Name(domain.into()),
        }
    }

    fn code(s: &str) -> (u16, &'static str) {
        match cmd(s) {
            Err(e) => (e.code, e.enhanced),
            Ok(c) => panic!("{s:?} accepted as {c:?}"),
        }
    }

    #[test]
    fn simple_verbs() {
        assert_eq!(cmd("DATA"), Ok(Command::Data));
        assert_eq!(cmd("data"), Ok(Command::Data));
        assert_eq!(cmd("RsEt"), Ok(Command::Rset));
        assert_eq!(cmd("QUIT  "), Ok(Command::Quit));
        assert_eq!(cmd("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(cmd("NOOP"), Ok(Command::Noop));
        assert_eq!(cmd("NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(cmd("HELP"), Ok(Command::Help(None)));
        assert_eq!(cmd("HELP mail"), Ok(Command::Help(Some("mail".into()))));
        assert_eq!(
            cmd("VRFY postmaster"),
            Ok(Command::Vrfy("postmaster".into()))
        );
        assert_eq!(cmd("EXPN list"), Ok(Command::Expn("list".into())));
        assert_eq!(code("VRFY"), (501, "5.5.4"));
        assert_eq!(code("VRFY jö"), (501, "5.5.4"));
        let utf = parse_command_with("VRFY jö".as_bytes(), true);
        assert_eq!(utf, Ok(Command::Vrfy("jö".into())));
    }

    #[test]
    fn no_argument_allowed() {
        for verb in ["DATA", "RSET", "QUIT", "STARTTLS"] {
            assert_eq!(code(&format!("{verb} x")), (501, "5.5.4"), "{verb}");
        }
    }

    #[test]
    fn unknown_and_bad_lines() {
        assert_eq!(code(""), (500, "5.5.2"));
        assert_eq!(code("   "), (500, "5.5.2"));
        assert_eq!(code("FOO"), (500, "5.5.2"));
        assert_eq!(code("DATAX"), (500, "5.5.2"));
        assert_eq!(code("STARTTLSX"), (500, "5.5.2"));
        assert_eq!(code(" DATA"), (500, "5.5.2"));
        assert_eq!(code("DATA\0"), (500, "5.5.2"));
        assert_eq!(code("MAIL FROM:<a@b>\0"), (500, "5.5.2"));
        assert_eq!(code("DATA\r"), (500, "5.5.2"));
        assert_eq!(code("NOOP \n"), (500, "5.5.2"));
        assert_eq!(code("HELO\tx"), (500, "5.5.2"));
        assert_eq!(code("NOOP \x7f"), (500, "5.5.2"));
        assert_eq!(parse_command(b"\xff\xfe"), Err(CommandError::UNRECOGNIZED));
    }

    #[test]
    fn helo() {
        assert_eq!(
            cmd("HELO mx.example"),
            Ok(Command::Helo("mx.example".into()))
        );
        assert_eq!(
            cmd("ehlo [192.0.2.1]"),
            Ok(Command::Ehlo("[192.0.2.1]".into()))
        );
        assert_eq!(
            cmd("EHLO  two words "),
            Ok(Command::Ehlo("two words".into()))
        );
        assert_eq!(
            cmd("EHLO bücher.example"),
            Ok(Command::Ehlo("bücher.example".into()))
        );
        assert_eq!(code("EHLO"), (501, "5.5.4"));
        assert_eq!(code("HELO "), (501, "5.5.4"));
        assert_eq!(parse_command(b"EHLO \xff"), Err(CommandError::SYNTAX));
        assert!(cmd(&format!("EHLO {}", "a".repeat(255))).is_ok());
        assert_eq!(code(&format!("EHLO {}", "a".repeat(256))), (501, "5.5.4"));
    }

    #[test]
    fn mail() {
        let plain = Command::Mail(
            ReversePath::Mailbox(mb("a", "b.example")),
            MailParams::default(),
        );
        assert_eq!(cmd("MAIL FROM:<a@b.example>"), Ok(plain.clone()));
        assert_eq!(cmd("mail from:<a@B.example>"), Ok(plain.clone()));
        assert_eq!(cmd("MAIL FROM: <a@b.example>"), Ok(plain.clone()));
        assert_eq!(cmd("MAIL FROM:a@b.example"), Ok(plain.clone()));
        assert_eq!(
            cmd("MAIL FROM:<>"),
            Ok(Command::Mail(ReversePath::Null, MailParams::default()))
        );
        assert_eq!(code("MAIL FROM:  <a@b.example>"), (501, "5.1.7"));
        assert_eq!(code("MAIL FROM <a@b.example>"), (501, "5.5.4"));
        assert_eq!(code("MAIL TO:<a@b.example>"), (501, "5.5.4"));
        assert_eq!(code("MAIL"), (501, "5.5.4"));
        assert_eq!(code("MAIL FROM:"), (501, "5.1.7"));
        assert_eq!(code("MAIL FROM:<a@b.example.>"), (501, "5.1.7"));
        assert_eq!(code("MAIL FROM:<a@b.example>x"), (501, "5.1.7"));
        assert_eq!(code("MAIL FROM:a b@c.example"), (501, "5.1.7"));
    }

    #[test]
    fn mail_smtputf8() {
        let line = "MAIL FROM:<jö@bü.example> SMTPUTF8";
        let Ok(Command::Mail(ReversePath::Mailbox(m), p)) = cmd(line) else {
            panic!()
        };
        assert_eq!(m, mb("jö", "bü.example"));
        assert!(p.smtputf8);
        assert_eq!(code("MAIL FROM:<jö@bü.example>"), (501, "5.1.7"));
        assert_eq!(
            code("MAIL FROM:<jö@bü.example> BODY=8BITMIME"),
            (501, "5.1.7")
        );
        assert_eq!(code("MAIL FROM:<a@b> SMTPUTF8=yes"), (501, "5.5.4"));
    }

    #[test]
    fn mail_params() {
        let line = "MAIL FROM:<a@b> size=1000 BODY=8bitmime RET=HDRS ENVID=QQ+2Bx AUTH=<>";
        let Ok(Command::Mail(_, p)) = cmd(line) else {
            panic!()
        };
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+x"));
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert!(!p.smtputf8);
        let Ok(Command::Mail(_, p)) = cmd("MAIL FROM:<a@b>   BODY=BINARYMIME  ") else {
            panic!()
        };
        assert_eq!(p.body, Some(Body::BinaryMime));
        assert_eq!(code("MAIL FROM:<a@b> FOO=bar"), (555, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b> NOTIFY=NEVER"), (555, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b> SIZE"), (501, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b> SIZE=12x"), (501, "5.5.4"));
        assert_eq!(
            code("MAIL FROM:<a@b> SIZE=99999999999999999999"),
            (501, "5.5.4")
        );
        assert_eq!(code("MAIL FROM:<a@b> SIZE=1 SIZE=2"), (501, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b> BODY=9BIT"), (501, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b> RET=ALL"), (501, "5.5.4"));
    }

    #[test]
    fn rcpt() {
        let rcpt = |s: &str| match cmd(s) {
            Ok(Command::Rcpt(p, params)) => (p, params),
            other => panic!("{s}: {other:?}"),
        };
        let (p, params) = rcpt("RCPT TO:<u@x.example>");
        assert_eq!(p, ForwardPath::Mailbox(mb("u", "x.example")));
        assert_eq!(params, RcptParams::default());
        assert_eq!(rcpt("rcpt to: <Postmaster>").0, ForwardPath::Postmaster);
        let (_, params) = rcpt("RCPT TO:<u@x> NOTIFY=success,DELAY ORCPT=rfc822;u+40x");
        assert_eq!(params.notify, Some(vec![Notify::Success, Notify::Delay]));
        assert_eq!(params.orcpt.as_deref(), Some("rfc822;u@x"));
        assert_eq!(
            rcpt("RCPT TO:<u@x> NOTIFY=NEVER").1.notify,
            Some(vec![Notify::Never])
        );
        assert_eq!(code("RCPT TO:<u@x> SIZE=10"), (555, "5.5.4"));
        assert_eq!(code("RCPT TO:<u@x.example.>"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<>"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<jö@x>"), (501, "5.1.3"));
        assert_eq!(code("RCPT FROM:<u@x>"), (501, "5.5.4"));
        let utf = parse_command_with("RCPT TO:<jö@x>".as_bytes(), true);
        assert!(matches!(utf, Ok(Command::Rcpt(ForwardPath::Mailbox(_), _))));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            cmd("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            cmd("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        let max = format!("BDAT {}", u64::MAX);
        assert_eq!(
            cmd(&max),
            Ok(Command::Bdat {
                size: u64::MAX,
                last: false
            })
        );
        assert_eq!(code("BDAT 18446744073709551616"), (501, "5.5.4"));
        assert_eq!(code("BDAT"), (501, "5.5.4"));
        assert_eq!(code("BDAT -1"), (501, "5.5.4"));
        assert_eq!(code("BDAT 1 FIRST"), (501, "5.5.4"));
        assert_eq!(code("BDAT 1 LAST x"), (501, "5.5.4"));
    }

    #[test]
    fn auth() {
        let auth = |m: &str, i: Option<&str>| Command::Auth {
            mechanism: m.into(),
            initial: i.map(Into::into),
        };
        assert_eq!(cmd("AUTH plain"), Ok(auth("PLAIN", None)));
        assert_eq!(
            cmd("AUTH PLAIN AGEAYg=="),
            Ok(auth("PLAIN", Some("AGEAYg==")))
        );
        assert_eq!(cmd("AUTH PLAIN ="), Ok(auth("PLAIN", Some("="))));
        assert_eq!(cmd("AUTH CRAM-MD5"), Ok(auth("CRAM-MD5", None)));
        assert_eq!(code("AUTH"), (501, "5.5.4"));
        assert_eq!(code("AUTH PL@IN"), (501, "5.5.4"));
        assert_eq!(code("AUTH PLAIN a b"), (501, "5.5.4"));
        assert_eq!(code("AUTH PLAIN a*b"), (501, "5.5.4"));
        assert_eq!(code(&format!("AUTH {}", "X".repeat(21))), (501, "5.5.4"));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            CommandError::BAD_SENDER.to_string(),
            "501 5.1.7 Bad sender address syntax"
        );
        assert_eq!(MAX_COMMAND_LINE, 2048);
    }
}
