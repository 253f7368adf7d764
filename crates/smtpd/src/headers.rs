//! Missing header fields of submitted mail (RFC 6409 §8.1-8.3): a message from a client in
//! `relayclients`, from an authenticated client (submission) or injected with `smtpd -bs`,
//! gets `Date`, `Message-ID` and `From` at the end of its header when it has none, as
//! sendmail adds them (Postfix's `local_header_rewrite_clients`); an authenticated client's
//! message also loses its `Bcc` fields. Mail from anybody else gets no field.
//!
//! From every message, whoever sent it, Authentication-Results fields that claim this host
//! (`me`) as their authserv-id are removed (RFC 8601 §5): only authverify's, added on top
//! once the message is complete, may say what this host found.
//!
//! The header also gives the addresses of its From fields ([`Fixer::from`]), which an
//! authenticated client must own like its envelope senders (session.rs checks them at the
//! final dot: 553 5.7.1; a header too long to be read is refused too).
//!
//! The header is found as the message streams: [`Fixer::feed`] holds back the bytes until the
//! header section has ended (an empty line, or the first line that is not a field), at most
//! [`MAX_HEADER`] bytes (a longer header is passed on unchanged), then passes everything on.

use ferry_common::{date, rfc5322};

/// Most bytes held back while looking for the end of the header.
pub const MAX_HEADER: usize = 256 * 1024;
/// Most From addresses kept (RFC 5322 allows several authors; more than this is refused).
pub const MAX_FROM: usize = 32;

pub struct Fixer {
    held: Vec<u8>,
    done: bool,
    /// The envelope sender (for From), and this host (`me`, for Message-ID and a null sender).
    sender: String,
    me: String,
    /// Submission by an authenticated client: Bcc fields are removed (RFC 6409 §8.1 leaves
    /// it to the client; many do not).
    strip_bcc: bool,
    /// The addresses of the From fields, once the header has ended (at most MAX_FROM + 1).
    from: Option<Vec<String>>,
    /// Submitted mail: missing Date, Message-ID and From are added.
    add_missing: bool,
}

impl Fixer {
    pub fn new(sender: &str, me: &str, strip_bcc: bool) -> Fixer {
        Fixer {
            held: Vec::new(),
            done: false,
            sender: sender.to_string(),
            me: me.to_string(),
            strip_bcc,
            from: None,
            add_missing: true,
        }
    }

    /// For mail from anybody else: nothing added, only forged Authentication-Results removed.
    pub fn incoming(me: &str) -> Fixer {
        Fixer {
            add_missing: false,
            ..Fixer::new("", me, false)
        }
    }

    /// The addresses of the message's own From fields (every one of them; none when it had
    /// none and one was added from the envelope sender), at most [`MAX_FROM`] + 1 of them.
    /// None until the header has ended, and for a header longer than [`MAX_HEADER`].
    pub fn from(&self) -> Option<&[String]> {
        self.from.as_deref()
    }

    /// The next piece of the message (LF line ends); returns what may go on now. `last`: the
    /// message ends here (what is held goes out).
    pub fn feed(&mut self, data: Vec<u8>, last: bool) -> Vec<u8> {
        if self.done {
            return data;
        }
        self.held.extend_from_slice(&data);
        let end = header_end(&self.held, last);
        match end {
            Some((at, blank)) => {
                self.done = true;
                let held = std::mem::take(&mut self.held);
                self.from = Some(from_addresses(&held[..at]));
                let mut out = Vec::with_capacity(held.len() + 256);
                let me = self.me.as_str();
                let strip_bcc = self.strip_bcc;
                out.extend_from_slice(&without_fields(&held[..at], |field| {
                    (strip_bcc && field_name_is(field, b"bcc"))
                        || rfc5322::claims_authserv_id(field, me)
                }));
                if self.add_missing {
                    if !out.is_empty() && !out.ends_with(b"\n") {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(self.missing(&held[..at]).as_bytes());
                }
                if !blank {
                    out.push(b'\n');
                }
                out.extend_from_slice(&held[at..]);
                out
            }
            None if self.held.len() > MAX_HEADER || last => {
                self.done = true;
                std::mem::take(&mut self.held)
            }
            None => Vec::new(),
        }
    }

    /// The fields to add to `header` (possibly none).
    fn missing(&self, header: &[u8]) -> String {
        let fields = rfc5322::fields(header);
        let has = |n: &str| fields.iter().any(|(f, _)| f.eq_ignore_ascii_case(n));
        let mut add = String::new();
        if !has("Date") {
            add.push_str(&format!("Date: {}\n", date::rfc5322(date::now_secs())));
        }
        if !has("Message-ID") {
            let mut r = [0u8; 8];
            let _ = ferry_sys::random_bytes(&mut r);
            add.push_str(&format!(
                "Message-ID: <{}.{:016x}@{}>\n",
                date::now_secs(),
                u64::from_ne_bytes(r),
                ferry_common::writer::clean(&self.me, 255)
            ));
        }
        if !has("From") {
            let from = if self.sender.is_empty() {
                format!("MAILER-DAEMON@{}", self.me)
            } else {
                self.sender.clone()
            };
            add.push_str(&format!(
                "From: <{}>\n",
                ferry_common::writer::clean(&from, 300)
            ));
        }
        add
    }
}

/// The addresses of every From field of `header`, at most MAX_FROM + 1.
fn from_addresses(header: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in rfc5322::fields(header) {
        if name.eq_ignore_ascii_case("From") {
            out.extend(rfc5322::addresses(&value));
            if out.len() > MAX_FROM {
                out.truncate(MAX_FROM + 1);
                break;
            }
        }
    }
    out
}

/// The header without the fields (each with its continuation lines) for which `drop` is true.
fn without_fields(header: &[u8], drop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut field: &[u8] = &[];
    let mut start = 0;
    let flush = |field: &[u8], out: &mut Vec<u8>| {
        if !field.is_empty() && !drop(field) {
            out.extend_from_slice(field);
        }
    };
    let mut pos = 0;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let cont = line.starts_with(b" ") || line.starts_with(b"\t");
        if !cont && pos > start {
            flush(field, &mut out);
            start = pos;
        }
        pos += line.len();
        field = &header[start..pos];
    }
    flush(field, &mut out);
    out
}

/// Is this field (name: value) named `name` (lower case)?
fn field_name_is(field: &[u8], name: &[u8]) -> bool {
    field.contains(&b':')
        && field
            .split(|b| *b == b':')
            .next()
            .unwrap_or_default()
            .trim_ascii_end()
            .eq_ignore_ascii_case(name)
}

/// Where the header section of `msg` ends: (offset where the fields go, whether a blank line
/// follows there). None while it may still go on (`last` false).
fn header_end(msg: &[u8], last: bool) -> Option<(usize, bool)> {
    let mut pos = 0;
    let mut first = true;
    loop {
        let rest = &msg[pos..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            // An unterminated last line: a field or not, the header ends with the message.
            if !last {
                return None;
            }
            if rest.is_empty() {
                return Some((pos, false));
            }
            let field = rfc5322::is_field_line(rest) || (!first && rest.starts_with(b" "));
            return Some(if field {
                (msg.len(), false)
            } else {
                (pos, false)
            });
        };
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some((pos, true));
        }
        let cont = !first && (line.starts_with(b" ") || line.starts_with(b"\t"));
        if !cont && !rfc5322::is_field_line(line) {
            return Some((pos, false));
        }
        first = false;
        pos += nl + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(msg: &[u8]) -> String {
        let mut f = Fixer::new("a@ours.example", "mx.ours.example", true);
        let mut out = Vec::new();
        for piece in msg.chunks(3) {
            out.extend(f.feed(piece.to_vec(), false));
        }
        out.extend(f.feed(Vec::new(), true));
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn missing_fields_go_at_the_end_of_the_header() {
        let out = fix(b"Subject: hi\nTo: b@x\n\nbody\n\nmore\n");
        assert!(out.starts_with("Subject: hi\nTo: b@x\nDate: "), "{out}");
        assert!(out.contains("\nMessage-ID: <"), "{out}");
        assert!(out.contains("@mx.ours.example>\nFrom: <a@ours.example>\n\nbody\n\nmore\n"));
    }

    #[test]
    fn present_fields_are_kept_and_nothing_added() {
        let m = b"From: x@y\nDate: Thu, 1 Jan 1970 00:00:00 +0000\nMessage-Id: <1@y>\n\nbody\n";
        assert_eq!(fix(m), String::from_utf8_lossy(m));
    }

    #[test]
    fn bcc_is_removed_with_its_continuation() {
        let m = b"From: x@y\nBcc: a@b,\n c@d\nDate: Thu, 1 Jan 1970 00:00:00 +0000\nBCC: e@f\nMessage-Id: <1@y>\nSubject: Bcc: no\n\nBcc: body stays\n";
        assert_eq!(
            fix(m),
            "From: x@y\nDate: Thu, 1 Jan 1970 00:00:00 +0000\nMessage-Id: <1@y>\nSubject: Bcc: no\n\nBcc: body stays\n"
        );
    }

    #[test]
    fn from_addresses_are_read_from_every_from_field() {
        let mut f = Fixer::new("a@ours.example", "mx", true);
        let m = b"Subject: x\nFrom: \"A, B\" <a@ours.example>,\n c@ours.example (C)\nfrom: d@x\n\nFrom: body@x\n";
        assert_eq!(f.from(), None);
        let _ = f.feed(m[..20].to_vec(), false);
        assert_eq!(f.from(), None);
        let _ = f.feed(m[20..].to_vec(), true);
        assert_eq!(
            f.from(),
            Some(
                &[
                    "a@ours.example".to_string(),
                    "c@ours.example".into(),
                    "d@x".into()
                ][..]
            )
        );
        let mut f = Fixer::new("a@ours.example", "mx", true);
        let _ = f.feed(b"Subject: x\n\nhi\n".to_vec(), true);
        assert_eq!(f.from(), Some(&[][..]));
        let mut f = Fixer::new("a@ours.example", "mx", true);
        let _ = f.feed(
            format!("X: {}\n", "y".repeat(MAX_HEADER)).into_bytes(),
            false,
        );
        let _ = f.feed(b"From: z@x\n\nhi\n".to_vec(), true);
        assert_eq!(f.from(), None);
        let many = (0..100)
            .map(|i| format!("a{i}@x"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut f = Fixer::new("a@ours.example", "mx", true);
        let _ = f.feed(format!("From: {many}\n\nhi\n").into_bytes(), true);
        assert_eq!(f.from().map(|a| a.len()), Some(MAX_FROM + 1));
    }

    #[test]
    fn a_message_without_header_gets_one() {
        let out = fix(b"just text\n");
        assert!(out.starts_with("Date: "), "{out}");
        assert!(
            out.ends_with("From: <a@ours.example>\n\njust text\n"),
            "{out}"
        );
        let out = fix(b"Subject: only a header");
        assert!(out.starts_with("Subject: only a header\nDate: "), "{out}");
    }
}
