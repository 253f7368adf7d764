//! sendmail — the command that mutt, cron, git send-email and PHP call.
//!
//! Usage: `sendmail [-t] [-i|-oi] [-f sender] [-F fullname] [-N notify] [-R ret] [-V envid]
//! [--] [recipient...]` (-N never or success,failure,delay; -R full or hdrs: the DSN
//! parameters of RFC 3461);
//! `-bp` lists the queue (mailq), `-q` retries it now, `-bi` is accepted (nothing to rebuild).
//! Other historic options (-oem, -B8BITMIME, -v, ...) are accepted and ignored.
//!
//! Reads the message on stdin (CRLF or LF line ends; without -i a line with a single `.` ends
//! it). Adds `Date`, `Message-ID` and `From` when missing, removes `Bcc`, takes recipients
//! from To/Cc/Bcc with -t, qualifies bare names with `defaultdomain`, and hands the message to
//! the `inject` service over ROOT/inject/socket when it runs (crates/queue/src/bin/inject.rs),
//! else to `queue` (ROOT/bin/queue, setuid ferryq). Runs as the caller.
//!
//! Exit codes (sysexits.h): 0 queued; 64 bad usage or no recipient; 65 the message or an
//! address was refused; 75 temporary failure, try again; 78 a control file is broken.
//! Every failure prints one line on stderr saying what went wrong.

mod args;

use args::Mode;
use ferry_common::config::Config;
use ferry_common::envelope::{self, Envelope};
use ferry_common::root::Root;
use ferry_common::{addr, date, inject, rfc5322, status};
use std::io::{self, BufRead, Read};
use std::os::unix::process::CommandExt;
use std::process::Command;

const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_SOFTWARE: i32 = 70;
const EX_TEMPFAIL: i32 = 75;
const EX_CONFIG: i32 = 78;
/// Largest header section read into memory; the body is streamed.
const MAX_HEADER: usize = 1 << 20;

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("sendmail: {msg}");
    std::process::exit(code);
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut a = args::parse(&argv).unwrap_or_else(|e| fail(EX_USAGE, e));
    // Called as mailq (a link): list the queue.
    if std::env::args()
        .next()
        .is_some_and(|a0| a0.rsplit('/').next() == Some("mailq"))
    {
        a.mode = Mode::ListQueue;
    }
    let root = Root::from_exe()
        .unwrap_or_else(|e| fail(EX_SOFTWARE, format!("cannot find the ferry root: {e}")));
    let ctl = |args: &[&str]| -> ! {
        let e = Command::new(root.bin("ferryctl")).args(args).exec();
        fail(EX_SOFTWARE, format!("cannot run ferryctl: {e}"))
    };
    match &a.mode {
        Mode::Send => {}
        Mode::ListQueue => ctl(&["queue"]),
        Mode::Flush => ctl(&["flush"]),
        Mode::NewAliases => {
            eprintln!("sendmail: ferry reads control/aliases directly; nothing to rebuild");
            std::process::exit(0);
        }
        Mode::Smtp => {
            let e = Command::new(root.bin("smtpd")).arg("-bs").exec();
            fail(EX_SOFTWARE, format!("cannot run smtpd: {e}"))
        }
        Mode::Unsupported(m) => fail(EX_USAGE, format!("{m} is not supported (use ferryctl)")),
    }
    let cfg = Config::load(&root).unwrap_or_else(|e| fail(EX_CONFIG, e));
    std::process::exit(send(&root, &cfg, a));
}

fn send(root: &Root, cfg: &Config, a: args::Args) -> i32 {
    let me = ferry_sys::Cred::current();
    let mut input = io::BufReader::with_capacity(64 * 1024, io::stdin().lock());
    let head = read_header(&mut input, !a.ignore_dots)
        .unwrap_or_else(|e| fail(EX_TEMPFAIL, format!("cannot read the message: {e}")));
    let fields = rfc5322::fields(&head.bytes);
    let has = |name: &str| fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));

    // Command-line recipients: addresses, several per argument when separated by commas.
    let mut recipients: Vec<String> = Vec::new();
    for arg in &a.recipients {
        if arg.contains(['<', '(', '"']) {
            // "Joe <joe@example.org>": parsed as an address list.
            recipients.extend(rfc5322::addresses(arg));
        } else {
            recipients.extend(
                arg.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(String::from),
            );
        }
    }
    if a.extract {
        for (n, v) in &fields {
            if ["to", "cc", "bcc"].contains(&n.to_ascii_lowercase().as_str()) {
                recipients.extend(rfc5322::addresses(v));
            }
        }
    }
    if recipients.is_empty() {
        fail(
            EX_USAGE,
            "no recipients: name them on the command line, or use -t with To/Cc/Bcc headers",
        );
    }
    let recipients: Vec<String> = recipients
        .iter()
        .map(|r| {
            check_recipient(r, &cfg.defaultdomain).unwrap_or_else(|why| {
                fail(
                    EX_DATAERR,
                    format!("recipient {r:?}: {why}; nothing was sent"),
                )
            })
        })
        .collect();
    let user_address = format!("{}@{}", me.name, cfg.defaultdomain);
    let sender = match a.sender.as_deref() {
        None => user_address.clone(),
        Some(raw) => check_sender(raw, &cfg.defaultdomain).unwrap_or_else(|why| {
            fail(
                EX_DATAERR,
                format!("sender {raw:?} (-f): {why}; nothing was sent"),
            )
        }),
    };
    if let Err(e) = envelope::check_address(sender.as_bytes()) {
        fail(EX_DATAERR, format!("sender {sender:?}: {e}"));
    }

    let mut header = strip_bcc(&head.bytes);
    if !has("Date") {
        header.extend(format!("Date: {}\n", date::rfc5322(date::now_secs())).as_bytes());
    }
    if !has("Message-ID") {
        let mut r = [0u8; 8];
        let _ = ferry_sys::random_bytes(&mut r);
        header.extend(
            format!(
                "Message-ID: <{}.{:016x}@{}>\n",
                date::now_secs(),
                u64::from_ne_bytes(r),
                cfg.me
            )
            .as_bytes(),
        );
    }
    if !has("From") {
        let name = a
            .fullname
            .clone()
            .or_else(|| gecos(&me))
            .unwrap_or_default();
        // From the envelope sender, as Postfix does; the caller's address for a null sender.
        let from = if sender.is_empty() {
            user_address.clone()
        } else {
            sender.clone()
        };
        let line = if name.is_empty() {
            format!("From: {from}\n")
        } else {
            format!("From: {} <{from}>\n", quote_phrase(&name))
        };
        header.extend(line.as_bytes());
    }
    header.push(b'\n');
    if let Some(first) = &head.first_body_line {
        header.extend_from_slice(first);
    }
    let dsn = dsn_options(&a, recipients.len()).unwrap_or_else(|why| fail(EX_USAGE, why));
    let env = Envelope {
        sender,
        recipients,
        smtputf8: false,
        requiretls: false,
        dsn,
    };
    let mut body = Body {
        input,
        dots: !a.ignore_dots,
        done: head.ended,
        line: Vec::new(),
        pos: 0,
    };
    let mut message = header.as_slice().chain(&mut body);
    // The inject service if it runs (no process to start), else `queue`.
    let queued = match inject::submit(root, &mut message, &env) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => inject::run_queue(root, &mut message, &env),
        Err(e) => Err(e),
    };
    match queued {
        Ok(r) if r.code == 0 => 0,
        Ok(r) => {
            let meaning = status::queue_exit(r.code).meaning;
            eprintln!(
                "sendmail: message not sent: {} ({meaning}, queue exit {})",
                r.reason(),
                r.code
            );
            if status::queue_exit_is_permanent(r.code) {
                EX_DATAERR
            } else {
                EX_TEMPFAIL
            }
        }
        Err(e) => fail(EX_TEMPFAIL, format!("cannot queue the message: {e}")),
    }
}

/// The DSN parameters of `-N`, `-R` and `-V` (RFC 3461, as Sendmail's and Postfix's
/// sendmail take them), for every recipient.
fn dsn_options(a: &args::Args, recipients: usize) -> Result<envelope::Dsn, String> {
    let mut dsn = envelope::Dsn::default();
    if let Some(n) = &a.notify {
        let notify = envelope::Notify::parse(n)
            .ok_or_else(|| format!("-N {n:?}: say never, or a list of success, failure, delay"))?;
        dsn.rcpts = vec![
            envelope::RcptDsn {
                notify: Some(notify),
                orcpt: None,
            };
            recipients
        ];
    }
    dsn.ret = match a.ret.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("full") => Some(envelope::Ret::Full),
        Some("hdrs") => Some(envelope::Ret::Hdrs),
        Some(other) => return Err(format!("-R {other:?}: say full or hdrs")),
    };
    if let Some(v) = &a.envid {
        if v.is_empty() || v.len() > 100 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("-V {v:?}: at most 100 printable characters"));
        }
        dsn.envid = Some(v.clone());
    }
    Ok(dsn)
}

/// The envelope sender of `-f`: `''` or `<>` is the null sender; anything else must be an
/// address (bare names get `defaultdomain`), checked as a recipient is.
fn check_sender(raw: &str, defaultdomain: &str) -> Result<String, String> {
    let s = raw.trim();
    let s = match s.strip_prefix('<') {
        Some(inner) => inner.strip_suffix('>').ok_or("unbalanced angle brackets")?,
        None => s,
    };
    if s.is_empty() {
        return Ok(String::new());
    }
    check_recipient(s, defaultdomain)
}

/// A recipient as it goes into the envelope (bare names get `defaultdomain`), or why not.
/// The checks are smtpd's (ferry-smtp's RFC 5321 mailbox parser), so that sendmail never
/// queues an address that SMTP would refuse.
fn check_recipient(raw: &str, defaultdomain: &str) -> Result<String, String> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("white space or control characters in an address".into());
    }
    let full = addr::normalize(&addr::qualify(raw, defaultdomain));
    if let Err(e) = ferry_smtp::parse_mailbox(full.as_bytes(), true) {
        return Err(e.describe().to_string());
    }
    let (local, domain) = addr::split(&full);
    if local.is_empty() {
        return Err("no local part before the @".into());
    }
    if domain.is_empty() {
        return Err("no domain after the @".into());
    }
    if local.contains('@') && !local.starts_with('"') {
        return Err("more than one @".into());
    }
    let literal = domain.starts_with('[') && domain.ends_with(']');
    if !literal && ferry_common::config::parse_domain(domain).is_err() {
        return Err(format!("{domain:?} is not a domain name"));
    }
    envelope::check_address(full.as_bytes()).map_err(|e| e.to_string())?;
    Ok(full)
}

struct Head {
    bytes: Vec<u8>,
    /// The first line after the header when there was no blank line (it belongs to the body).
    first_body_line: Option<Vec<u8>>,
    /// The message ended in the header (end of input, or a lone "." without -i).
    ended: bool,
}

/// Reads header lines (normalised to LF) up to the blank line or the first line that is not
/// a header field.
fn read_header(input: &mut impl BufRead, dots: bool) -> io::Result<Head> {
    let mut bytes = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(Head {
                bytes,
                first_body_line: None,
                ended: true,
            });
        }
        normalize(&mut line);
        if dots && line == b".\n" {
            return Ok(Head {
                bytes,
                first_body_line: None,
                ended: true,
            });
        }
        if line == b"\n" {
            return Ok(Head {
                bytes,
                first_body_line: None,
                ended: false,
            });
        }
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if (continuation && !bytes.is_empty()) || rfc5322::is_field_line(&line) {
            bytes.extend_from_slice(&line);
            if bytes.len() > MAX_HEADER {
                fail(
                    EX_DATAERR,
                    format!("the message header is larger than {MAX_HEADER} bytes"),
                );
            }
        } else {
            return Ok(Head {
                bytes,
                first_body_line: Some(line),
                ended: false,
            });
        }
    }
}

fn normalize(line: &mut Vec<u8>) {
    if line.ends_with(b"\r\n") {
        line.truncate(line.len() - 2);
        line.push(b'\n');
    } else if !line.ends_with(b"\n") {
        line.push(b'\n');
    }
}

/// The header without its Bcc fields (and their continuation lines).
fn strip_bcc(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut skipping = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if !skipping {
                out.extend_from_slice(line);
            }
            continue;
        }
        skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

fn gecos(me: &ferry_sys::Cred) -> Option<String> {
    let u = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(me.uid)).ok()??;
    let g = u
        .gecos
        .to_string_lossy()
        .split(',')
        .next()?
        .trim()
        .to_string();
    (!g.is_empty()).then_some(g)
}

/// A display name, quoted when it has characters that are special in a phrase.
fn quote_phrase(name: &str) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if clean
        .chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '\'')
    {
        clean
    } else {
        format!("\"{}\"", clean.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The rest of stdin, line ends normalised to LF, ending at a lone "." unless -i.
struct Body<R: BufRead> {
    input: R,
    dots: bool,
    done: bool,
    line: Vec<u8>,
    pos: usize,
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.line.len() {
            if self.done {
                return Ok(0);
            }
            self.line.clear();
            self.pos = 0;
            if self.input.read_until(b'\n', &mut self.line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            normalize(&mut self.line);
            if self.dots && self.line == b".\n" {
                self.done = true;
                self.line.clear();
                return Ok(0);
            }
        }
        let n = buf.len().min(self.line.len() - self.pos);
        buf[..n].copy_from_slice(&self.line[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_body() {
        let mut input = io::Cursor::new(
            b"Subject: hi\r\nBcc: x@y,\r\n  z@w\r\nTo: a@b\r\n\r\nline\r\n.\r\nafter\r\n".to_vec(),
        );
        let h = read_header(&mut input, true).unwrap();
        assert_eq!(strip_bcc(&h.bytes), b"Subject: hi\nTo: a@b\n");
        let mut body = Body {
            input,
            dots: true,
            done: h.ended,
            line: Vec::new(),
            pos: 0,
        };
        let mut s = String::new();
        body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "line\n");
    }

    #[test]
    fn recipients_are_checked() {
        assert_eq!(
            check_recipient("joe", "h.example").unwrap(),
            "joe@h.example"
        );
        assert_eq!(
            check_recipient("Joe@Example.ORG", "h").unwrap(),
            "Joe@example.org"
        );
        for bad in [
            "joe@",
            "@x.example",
            "x@@localhost",
            "a b@localhost",
            "x@bad..domain",
            "x@-bad.example",
        ] {
            assert!(check_recipient(bad, "h.example").is_err(), "{bad}");
        }
        assert!(check_recipient("x@[127.0.0.1]", "h").is_ok());
        // What smtpd refuses with 501 5.1.3, sendmail refuses too.
        for bad in [
            "bad/../x@localhost",
            ".x@localhost",
            "x.@localhost",
            "x@a_b.example",
        ] {
            assert!(check_recipient(bad, "h.example").is_err(), "{bad}");
        }
    }

    #[test]
    fn senders_are_checked() {
        assert_eq!(check_sender("", "h").unwrap(), "");
        assert_eq!(check_sender("<>", "h").unwrap(), "");
        assert_eq!(check_sender("<a@b.example>", "h").unwrap(), "a@b.example");
        assert_eq!(check_sender("fn", "h.example").unwrap(), "fn@h.example");
        for bad in ["@", "x y@", "x@", "<a@b", "a@@b", "@b.example"] {
            assert!(check_sender(bad, "h.example").is_err(), "{bad}");
        }
    }

    #[test]
    fn no_header_at_all() {
        let mut input = io::Cursor::new(b"just text\nmore\n".to_vec());
        let h = read_header(&mut input, false).unwrap();
        assert!(h.bytes.is_empty());
        assert_eq!(h.first_body_line.as_deref(), Some(&b"just text\n"[..]));
        assert_eq!(quote_phrase("Cron Daemon"), "Cron Daemon");
        assert_eq!(quote_phrase("Doe, J."), "\"Doe, J.\"");
    }
}
