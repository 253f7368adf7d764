//! SMTP replies (RFC 5321 §4.2): [`Reply`] for a server to send, and the
//! incremental [`ReplyParser`] for a client reading a server.
//!
//! `Reply::to_bytes` can never emit a split or forged reply: control
//! characters (CR and LF included) in the text become spaces.
//!
//! `ReplyParser` bounds memory: a line is at most [`MAX_REPLY_LINE`] octets
//! (without its line end) and a reply at most [`MAX_REPLY_LINES`] lines.
//! LF alone is accepted as a line end.  Errors are final: once one is
//! returned, every later `next_reply` returns it again and `feed` discards
//! its input, because the peer's byte stream can no longer be trusted.

use std::fmt;

use crate::command::CommandError;

/// The longest reply line the parser accepts, without CR LF.
pub const MAX_REPLY_LINE: usize = 4096;
/// The most lines one reply may have.
pub const MAX_REPLY_LINES: usize = 100;

/// A reply to send: code, optional enhanced status code, text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `"2.1.0"`, or `None`.
    pub enhanced: Option<String>,
    /// The text lines (at least one line is sent, maybe empty).
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply; an empty `enhanced` means none.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Reply {
        Reply {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_owned()),
            lines: vec![text.to_owned()],
        }
    }

    /// Adds a line (for multi-line replies such as the EHLO response).
    pub fn with_line(mut self, text: &str) -> Reply {
        self.lines.push(text.to_owned());
        self
    }

    /// The wire form: `250-first` ... `250 last`, each line ending in CR LF,
    /// the enhanced code after the separator on every line.  A code outside
    /// 100..=999 is clamped so the reply always starts with three digits.
    pub fn to_bytes(&self) -> Vec<u8> {
        let code = self.code.clamp(100, 999);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{code}{sep}").as_bytes());
            let mut text = String::new();
            if let Some(enhanced) = &self.enhanced {
                text.push_str(enhanced);
                if !line.is_empty() {
                    text.push(' ');
                }
            }
            text.push_str(line);
            if sep == ' ' && text.is_empty() {
                out.pop(); // "250" alone, not "250 " (textstring is 1*char)
            }
            let clean: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            out.extend_from_slice(clean.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

impl From<CommandError> for Reply {
    fn from(e: CommandError) -> Reply {
        Reply::new(e.code, e.enhanced, e.text)
    }
}

/// A reply read from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    /// The reply code.
    pub code: u16,
    /// The enhanced status code of the first line, if it had one.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The text of each line, without code, separator and enhanced code.
    pub lines: Vec<String>,
}

impl ParsedReply {
    /// The first digit: 2 success, 3 intermediate, 4 temporary, 5 permanent.
    pub fn class(&self) -> u8 {
        (self.code / 100) as u8
    }
}

/// Why a server's reply could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyError {
    /// A line longer than [`MAX_REPLY_LINE`].
    LineTooLong,
    /// More than [`MAX_REPLY_LINES`] lines.
    TooManyLines,
    /// The line does not start with a valid three-digit code.
    BadCode,
    /// The code is not followed by space, `-` or the line end.
    BadSeparator,
    /// A continuation line has a different code.
    CodeMismatch,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::LineTooLong => "reply line too long",
            ReplyError::TooManyLines => "too many reply lines",
            ReplyError::BadCode => "bad reply code",
            ReplyError::BadSeparator => "bad separator after reply code",
            ReplyError::CodeMismatch => "reply code changed within a multi-line reply",
        })
    }
}

impl std::error::Error for ReplyError {}

/// Incremental parser of a server's replies; see the module documentation.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// Bytes fed and not yet turned into lines; `buf[start..]` is pending.
    buf: Vec<u8>,
    start: usize,
    /// `buf[start..start + scanned]` is known to contain no LF.
    scanned: usize,
    code: Option<u16>,
    enhanced: Option<(u8, u16, u16)>,
    /// The enhanced code's text, to strip it from continuation lines.
    enhanced_text: Vec<u8>,
    lines: Vec<String>,
    failed: Option<ReplyError>,
}

/// Parses `class.subject.detail` at the start of `text`, followed by a space
/// or the end; returns it and its length.  Its class must match `code`.
fn parse_enhanced(text: &[u8], code: u16) -> Option<((u8, u16, u16), usize)> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let token = std::str::from_utf8(&text[..end]).ok()?;
    let mut parts = token.split('.');
    let mut number = |max_digits: usize| -> Option<u16> {
        let p = parts.next()?;
        let ok = !p.is_empty() && p.len() <= max_digits && p.bytes().all(|b| b.is_ascii_digit());
        if ok { p.parse().ok() } else { None }
    };
    let class = number(1)?;
    let subject = number(3)?;
    let detail = number(3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || class != code / 100 {
        return None;
    }
    Some(((class as u8, subject, detail), end))
}

/// The text of a line, as a String with control characters as spaces.
fn clean_text(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl ReplyParser {
    /// A parser expecting the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn fail(&mut self, e: ReplyError) -> Option<Result<ParsedReply, ReplyError>> {
        self.failed = Some(e);
        self.buf = Vec::new();
        self.start = 0;
        self.scanned = 0;
        self.lines = Vec::new();
        Some(Err(e))
    }

    /// The next complete reply, `None` if more bytes are needed.
    pub fn next_reply(&mut self) -> Option<Result<ParsedReply, ReplyError>> {
        loop {
            if let Some(e) = self.failed {
                return Some(Err(e));
            }
            let pending = &self.buf[self.start..];
            let Some(lf) = pending[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = pending.len();
                // Room for the line and its CR.
                if self.scanned > MAX_REPLY_LINE + 1 {
                    return self.fail(ReplyError::LineTooLong);
                }
                return None;
            };
            let line_end = self.start + self.scanned + lf;
            let line_start = self.start;
            self.start = line_end + 1;
            self.scanned = 0;
            let mut line = &self.buf[line_start..line_end];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.len() > MAX_REPLY_LINE {
                return self.fail(ReplyError::LineTooLong);
            }
            match self.line(line_start, line.len()) {
                Ok(None) => continue,
                Ok(Some(reply)) => return Some(Ok(reply)),
                Err(e) => return self.fail(e),
            }
        }
    }

    /// Handles the line `buf[at..at + len]`; returns the reply if it was the
    /// last line.
    fn line(&mut self, at: usize, len: usize) -> Result<Option<ParsedReply>, ReplyError> {
        let line = &self.buf[at..at + len];
        let digits = line.get(..3).ok_or(ReplyError::BadCode)?;
        let valid = matches!(digits, [b'2'..=b'5', b'0'..=b'5', b'0'..=b'9']);
        if !valid {
            return Err(ReplyError::BadCode);
        }
        let code = digits
            .iter()
            .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::BadSeparator),
        };
        let mut text = line.get(4..).unwrap_or_default();
        match self.code {
            Some(c) if c != code => return Err(ReplyError::CodeMismatch),
            Some(_) => {
                let strip = match text.strip_prefix(&self.enhanced_text[..]) {
                    Some(rest) if !self.enhanced_text.is_empty() => {
                        rest.is_empty() || rest.starts_with(b" ")
                    }
                    _ => false,
                };
                if strip {
                    text = text.get(self.enhanced_text.len() + 1..).unwrap_or_default();
                }
            }
            None => {
                self.code = Some(code);
                if let Some((enhanced, n)) = parse_enhanced(text, code) {
                    self.enhanced = Some(enhanced);
                    self.enhanced_text = text[..n].to_vec();
                    text = text.get(n + 1..).unwrap_or_default();
                }
            }
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.lines.push(clean_text(text));
        if !last {
            return Ok(None);
        }
        self.code = None;
        self.enhanced_text.clear();
        Ok(Some(ParsedReply {
            code,
            enhanced: self.enhanced.take(),
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Result<ParsedReply, ReplyError>> {
        let mut p = ReplyParser::new();
        p.feed(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply() {
            let stop = r.is_err();
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, lines: &[&str]) -> ParsedReply {
        ParsedReply {
            code,
            enhanced,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn to_bytes() {
        assert_eq!(
            Reply::new(250, "2.0.0", "Ok").to_bytes(),
            b"250 2.0.0 Ok\r\n"
        );
        assert_eq!(
            Reply::new(220, "", "mx ESMTP").to_bytes(),
            b"220 mx ESMTP\r\n"
        );
        assert_eq!(Reply::new(250, "", "").to_bytes(), b"250\r\n");
        assert_eq!(Reply::new(250, "2.0.0", "").to_bytes(), b"250 2.0.0\r\n");
        let multi = Reply::new(250, "", "mx.example")
            .with_line("PIPELINING")
            .with_line("8BITMIME");
        assert_eq!(
            multi.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
        let enh = Reply::new(550, "5.1.1", "No such user").with_line("Really");
        assert_eq!(
            enh.to_bytes(),
            b"550-5.1.1 No such user\r\n550 5.1.1 Really\r\n"
        );
        let empty = Reply {
            code: 354,
            enhanced: None,
            lines: vec![],
        };
        assert_eq!(empty.to_bytes(), b"354\r\n");
        let clamped = Reply {
            code: 5,
            enhanced: None,
            lines: vec!["x".into()],
        };
        assert_eq!(clamped.to_bytes(), b"100 x\r\n");
    }

    #[test]
    fn to_bytes_cannot_be_split() {
        let evil = Reply::new(250, "2.0.0", "Ok\r\n250 forged\n\r\0\x7f");
        assert_eq!(evil.to_bytes(), b"250 2.0.0 Ok  250 forged    \r\n");
        let evil = Reply::new(250, "2.0.0\r\n", "x");
        assert_eq!(evil.to_bytes(), b"250 2.0.0   x\r\n");
        let from = Reply::from(crate::command::CommandError::SYNTAX);
        assert_eq!(
            from.to_bytes(),
            b"501 5.5.4 Syntax error in parameters or arguments\r\n"
        );
    }

    #[test]
    fn parse_simple() {
        assert_eq!(
            parse_all(b"220 mx ESMTP\r\n"),
            vec![Ok(reply(220, None, &["mx ESMTP"]))]
        );
        assert_eq!(
            parse_all(b"250 2.1.0 Ok\r\n"),
            vec![Ok(reply(250, Some((2, 1, 0)), &["Ok"]))]
        );
        assert_eq!(parse_all(b"250\r\n"), vec![Ok(reply(250, None, &[""]))]);
        assert_eq!(parse_all(b"250 \n"), vec![Ok(reply(250, None, &[""]))]);
        assert_eq!(parse_all(b"354 go\n"), vec![Ok(reply(354, None, &["go"]))]);
        // The enhanced class must match the reply class.
        assert_eq!(
            parse_all(b"250 5.1.0 x\r\n"),
            vec![Ok(reply(250, None, &["5.1.0 x"]))]
        );
        assert_eq!(
            parse_all(b"550 5.1.1\r\n"),
            vec![Ok(reply(550, Some((5, 1, 1)), &[""]))]
        );
        assert_eq!(
            parse_all(b"550 5.1.1.1 x\r\n"),
            vec![Ok(reply(550, None, &["5.1.1.1 x"]))]
        );
        assert_eq!(
            parse_all(b"550 5.1000.1 x\r\n"),
            vec![Ok(reply(550, None, &["5.1000.1 x"]))]
        );
        assert_eq!(
            parse_all(b"250 ok\r\nbad"),
            vec![Ok(reply(250, None, &["ok"]))]
        );
    }

    #[test]
    fn parse_multiline() {
        let input = b"250-mx.example\r\n250-PIPELINING\n250 8BITMIME\r\n221 2.0.0 Bye\r\n";
        assert_eq!(
            parse_all(input),
            vec![
                Ok(reply(250, None, &["mx.example", "PIPELINING", "8BITMIME"])),
                Ok(reply(221, Some((2, 0, 0)), &["Bye"])),
            ]
        );
        let input = b"550-5.1.1 No such\r\n550-5.1.1\r\n550 5.1.1 user\r\n";
        assert_eq!(
            parse_all(input),
            vec![Ok(reply(550, Some((5, 1, 1)), &["No such", "", "user"]))]
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            parse_all(b"250-a\r\n251 b\r\n"),
            vec![Err(ReplyError::CodeMismatch)]
        );
        assert_eq!(parse_all(b"25x ok\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"650 ok\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"25\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"250ok\r\n"), vec![Err(ReplyError::BadSeparator)]);
        let mut many = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            many.extend_from_slice(b"250-x\r\n");
        }
        let mut ok = many.clone();
        ok.truncate(ok.len() - 7);
        ok.extend_from_slice(b"250 x\r\n");
        assert!(matches!(&parse_all(&ok)[..], [Ok(r)] if r.lines.len() == MAX_REPLY_LINES));
        many.extend_from_slice(b"250 x\r\n");
        assert_eq!(parse_all(&many), vec![Err(ReplyError::TooManyLines)]);
    }

    #[test]
    fn line_limit() {
        let mut line = b"250 ".to_vec();
        line.resize(MAX_REPLY_LINE, b'x');
        line.extend_from_slice(b"\r\n");
        assert!(matches!(&parse_all(&line)[..], [Ok(_)]));
        line.insert(5, b'x');
        assert_eq!(parse_all(&line), vec![Err(ReplyError::LineTooLong)]);
        // Without any line end, the error comes as soon as the limit is passed.
        let mut p = ReplyParser::new();
        p.feed(b"250 ");
        for _ in 0..MAX_REPLY_LINE {
            p.feed(b"x");
            if let Some(r) = p.next_reply() {
                assert_eq!(r, Err(ReplyError::LineTooLong));
                return;
            }
        }
        panic!("no error");
    }

    #[test]
    fn errors_are_final() {
        let mut p = ReplyParser::new();
        p.feed(b"xyz\r\n");
        assert_eq!(p.next_reply(), Some(Err(ReplyError::BadCode)));
        p.feed(b"250 ok\r\n");
        assert_eq!(p.next_reply(), Some(Err(ReplyError::BadCode)));
    }

    #[test]
    fn split_anywhere() {
        let input: &[u8] = b"220 hi\r\n250-a\r\n250-2.0.0 b\n250 c\r\n550 5.7.1 no\r\n";
        let whole = parse_all(input);
        assert_eq!(whole.len(), 3);
        for step in 1..input.len() {
            let mut p = ReplyParser::new();
            let mut got = Vec::new();
            for chunk in input.chunks(step) {
                p.feed(chunk);
                while let Some(r) = p.next_reply() {
                    got.push(r);
                }
            }
            assert_eq!(got, whole, "step {step}");
        }
    }

    #[test]
    fn text_is_cleaned() {
        let got = parse_all(b"250 a\rb\x00c\xffd\r\n");
        assert_eq!(got, vec![Ok(reply(250, None, &["a b c\u{fffd}d"]))]);
        assert_eq!(reply(451, None, &[]).class(), 4);
    }
}
