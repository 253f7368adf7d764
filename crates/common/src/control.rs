//! Control files: one setting per file under `control/`, lists one entry a line.
//!
//! [`FILES`] is the one table of every control file: its name, meaning, default and the
//! programs that read it. `etc/control/README` mirrors it (a unit test keeps the two in step),
//! and `ferryctl check` uses it to flag unknown and malformed files.
//!
//! Syntax shared by all files: blank lines and lines starting with `#` are ignored;
//! surrounding white space is trimmed. A single-value file holds exactly one value line.
//! A missing file means the default. Errors name the file and the line.

use std::fmt;
use std::io;
use std::path::Path;

/// What a control file holds, which decides how it is parsed and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One line of text (a host name, an address).
    Text,
    /// One unsigned decimal number (sizes in bytes, times in seconds, counts).
    Number,
    /// One entry per line (domains, addresses).
    List,
    /// One CIDR per line (`127.0.0.0/8`, `::1/128`, or a bare address).
    Cidrs,
    /// `domain:host[:port]` per line (`:host` is the default route).
    Routes,
    /// `domain:user`, `domain:mail/` or `domain:mail/*` per line.
    VirtualDomains,
    /// `name: target, target` per line.
    Aliases,
    /// `address:port` per line, IPv6 as `[::]:25`.
    Listen,
    /// `ip[:port]` per line, IPv6 as `[::1]:53`.
    NameServers,
    /// A PEM file (certificate chain or private key); may be a symlink.
    Pem,
    /// `name:hash` per line; read only by smtpd's password checker (never by Config).
    Passwords,
    /// `address: name` per line.
    Senders,
    /// `HOST USER PASSWORD` per line; read only by remote-deliver (never by Config).
    SmtpAuth,
}

pub struct ControlFile {
    pub name: &'static str,
    pub kind: Kind,
    /// The value used when the file is missing, in words.
    pub default: &'static str,
    pub meaning: &'static str,
    pub readers: &'static str,
}

/// Every control file ferry reads. Keep `etc/control/README` in step (a test checks it).
pub const FILES: &[ControlFile] = &[
    cf(
        "me",
        Kind::Text,
        "the host name (gethostname)",
        "this host's fully qualified name: greeting, Received lines, bounces",
        "all",
    ),
    cf(
        "defaultdomain",
        Kind::Text,
        "me",
        "domain added to bare user names by sendmail and in aliases",
        "sendmail, send",
    ),
    cf(
        "locals",
        Kind::List,
        "me",
        "domains whose mail goes to local Unix users (user-ext@domain)",
        "smtpd, send",
    ),
    cf(
        "virtualdomains",
        Kind::VirtualDomains,
        "none",
        "domain:user (qmail style: x@domain is user's extension x), domain:mail/ (mailboxes under mail/ that exist), domain:mail/* (any name: catch-all, created on first delivery)",
        "smtpd, send",
    ),
    cf(
        "aliases",
        Kind::Aliases,
        "root, mailer-daemon, abuse -> postmaster",
        "name: target, target (name is a local part in every local domain, or a full address); postmaster falls back to the mailbox mail/postmaster",
        "smtpd, send",
    ),
    cf(
        "rcpthosts",
        Kind::List,
        "locals and virtual domains",
        "domains smtpd accepts mail for from any client",
        "smtpd",
    ),
    cf(
        "relayclients",
        Kind::Cidrs,
        "127.0.0.0/8, ::1",
        "clients allowed to relay to any domain; also exempt from the per-IP limit",
        "smtpd",
    ),
    cf(
        "badmailfrom",
        Kind::List,
        "none",
        "senders refused at MAIL (address, or @domain for a whole domain)",
        "smtpd",
    ),
    cf(
        "badrcptto",
        Kind::List,
        "none",
        "recipients refused at RCPT (address, or @domain)",
        "smtpd",
    ),
    cf(
        "databytes",
        Kind::Number,
        "26214400",
        "largest message accepted, in bytes (0: no limit)",
        "smtpd, queue",
    ),
    cf(
        "maxrcpt",
        Kind::Number,
        "1000",
        "most recipients per message over SMTP",
        "smtpd",
    ),
    cf(
        "maxhops",
        Kind::Number,
        "100",
        "a message with more Received lines than this is refused as a mail loop (554 5.4.6)",
        "smtpd, queue",
    ),
    cf(
        "smtplisten",
        Kind::Listen,
        "0.0.0.0:25 and [::]:25",
        "addresses and ports smtpd listens on",
        "smtpd",
    ),
    cf(
        "submissionlisten",
        Kind::Listen,
        "0.0.0.0:587 and [::]:587",
        "addresses and ports `smtpd -submission` listens on (STARTTLS, then AUTH)",
        "smtpd",
    ),
    cf(
        "smtpslisten",
        Kind::Listen,
        "0.0.0.0:465 and [::]:465",
        "addresses and ports `smtpd -smtps` listens on (TLS from the first byte, then AUTH)",
        "smtpd",
    ),
    cf(
        "passwords",
        Kind::Passwords,
        "none: nobody can authenticate",
        "name:$argon2id$... per line (ferryctl passwd NAME); name is a local user or a virtual mailbox address; mode 0640 root:ferrya, read only by smtpd's checker",
        "smtpd -auth",
    ),
    cf(
        "checkpassword",
        Kind::Text,
        "none",
        "a checkpassword program and its arguments (qmail's interface: name, password on fd 3; exit 0 good, 1 bad, 111 temporary), run as ferrya for names not in passwords",
        "smtpd -auth",
    ),
    cf(
        "senders",
        Kind::Senders,
        "NAME@each local domain and NAME-ext@; an address NAME: it and its +ext/-ext forms",
        "address: name per line (or @domain: name): the envelope senders an authenticated name may use besides its own",
        "smtpd",
    ),
    cf(
        "srsdomain",
        Kind::Text,
        "me",
        "the domain of SRS addresses: the envelope sender of mail forwarded to another domain (aliases, &address forwards) is rewritten to SRS0=...@srsdomain, whose bounces come back and go on to the original sender; it must be a domain this host receives mail for, with an SPF record naming it",
        "smtpd, send, queue",
    ),
    cf(
        "srssecret",
        Kind::Text,
        "(made by ferryctl init)",
        "the key of SRS addresses (random; mode 0640, owner ferryq, group ferry); without it forwarded mail keeps its sender. Change it and bounces to addresses made with the old one are refused",
        "smtpd, send, queue",
    ),
    cf(
        "authfailures",
        Kind::Number,
        "5",
        "failed AUTHs per client address, and per user name, in 10 minutes before AUTH is refused (421 4.7.0 / 454 4.7.0), counted by each service (submission, smtps) on its own; each failure is delayed 2 s",
        "smtpd",
    ),
    cf(
        "spfpolicy",
        Kind::Text,
        "mark",
        "SPF of mail received on port 25 (not from relayclients or authenticated users): off, mark (checked, recorded in Authentication-Results) or enforce (also a -all fail is refused 550 5.7.23, a DNS failure 451 4.7.24)",
        "smtpd (authverify)",
    ),
    cf(
        "dmarcpolicy",
        Kind::Text,
        "mark",
        "DKIM, ARC and DMARC of mail received on port 25: off, mark (checked, recorded in Authentication-Results) or enforce (also a DMARC p=reject failure is refused 550 5.7.1, p=quarantine gets X-Ferry-Quarantine, a DNS failure 451 4.7.1)",
        "smtpd (authverify)",
    ),
    cf(
        "submissionreceived",
        Kind::Text,
        "full",
        "the Received line of authenticated mail (submission, smtps): full (the client's address and HELO name, as Postfix) or hide (neither: from authenticated-user)",
        "smtpd",
    ),
    cf(
        "smtpgreeting",
        Kind::Text,
        "me",
        "the name in smtpd's 220 greeting and EHLO reply",
        "smtpd",
    ),
    cf(
        "timeoutsmtpd",
        Kind::Number,
        "300",
        "seconds smtpd waits for a client to send or take data",
        "smtpd",
    ),
    cf(
        "concurrencyincoming",
        Kind::Number,
        "1000",
        "most simultaneous SMTP sessions",
        "smtpd",
    ),
    cf(
        "concurrencyperip",
        Kind::Number,
        "30",
        "most simultaneous sessions from one client address (relayclients exempt)",
        "smtpd",
    ),
    cf(
        "tlscert",
        Kind::Pem,
        "none: no STARTTLS",
        "the server certificate chain, PEM",
        "smtpd",
    ),
    cf(
        "tlskey",
        Kind::Pem,
        "none",
        "the private key of tlscert, PEM; readable by root and ferryd only",
        "smtpd",
    ),
    cf(
        "concurrencylocal",
        Kind::Number,
        "10",
        "most users and mailboxes delivered to at once (each one's worker delivers its mail in batches)",
        "send",
    ),
    cf(
        "concurrencyremote",
        Kind::Number,
        "40",
        "most simultaneous remote deliveries",
        "send",
    ),
    cf(
        "concurrencydomain",
        Kind::Number,
        "20",
        "most simultaneous remote deliveries to one domain",
        "send",
    ),
    cf(
        "concurrencyuser",
        Kind::Number,
        "16",
        "most deliveries to one user or mailbox handed to its worker at once (delivered as one batch with one commit; a user whose program hangs holds one concurrencylocal slot)",
        "send",
    ),
    cf(
        "queuelifetime",
        Kind::Number,
        "604800",
        "seconds a message may stay in the queue before it bounces",
        "send",
    ),
    cf(
        "delaywarningtime",
        Kind::Number,
        "14400",
        "seconds in the queue after which the sender of a message still being retried gets one delay warning (RFC 3464 Action: delayed, unless NOTIFY excludes DELAY); 0: never",
        "send",
    ),
    cf(
        "bouncefrom",
        Kind::Text,
        "MAILER-DAEMON",
        "local part of the From of bounces",
        "send",
    ),
    cf(
        "doublebounceto",
        Kind::Text,
        "postmaster",
        "where a bounce that cannot be delivered goes, once",
        "send",
    ),
    cf(
        "defaultdelivery",
        Kind::Text,
        "./Maildir/",
        "delivery for a user without a .ferry file (./Maildir/ or ./mbox)",
        "local-deliver",
    ),
    cf(
        "smtproutes",
        Kind::Routes,
        "none: MX lookup",
        "domain:host[:port] per line (host: a name, a bare IPv4 address, or [ip]); :host[:port] routes every other domain (smarthost)",
        "remote-deliver",
    ),
    cf(
        "smtpauth",
        Kind::SmtpAuth,
        "none",
        "HOST USER PASSWORD per line: AUTH PLAIN/LOGIN credentials for a smtproutes host (as written there), given only after STARTTLS with a verified certificate; mode 0600, owner ferryr",
        "remote-deliver",
    ),
    cf(
        "remoteport",
        Kind::Number,
        "25",
        "port of remote SMTP servers found by MX",
        "remote-deliver",
    ),
    cf(
        "mtastsport",
        Kind::Number,
        "443",
        "HTTPS port of mta-sts.DOMAIN where MTA-STS policies are fetched (RFC 8461 fixes 443; another is for tests)",
        "remote-deliver",
    ),
    cf(
        "tlsrptperiod",
        Kind::Number,
        "86400",
        "seconds one TLS report (RFC 8460) covers, mailed to the rua of _smtp._tls.DOMAIN when it ends (RFC 8460 asks for a day; less is for tests)",
        "remote-deliver",
    ),
    cf(
        "resolvconf",
        Kind::NameServers,
        "/etc/resolv.conf",
        "name servers to ask, ip[:port] per line",
        "remote-deliver, ferryctl",
    ),
    cf(
        "helohost",
        Kind::Text,
        "me",
        "name remote-deliver gives in EHLO",
        "remote-deliver",
    ),
    cf(
        "timeoutconnect",
        Kind::Number,
        "30",
        "seconds to wait for a remote server to accept a connection",
        "remote-deliver",
    ),
    cf(
        "timeoutremote",
        Kind::Number,
        "300",
        "seconds to wait for a remote server's reply",
        "remote-deliver",
    ),
    cf(
        "tlsdestinations",
        Kind::List,
        "none",
        "domains that get mail only over TLS with a verified certificate",
        "remote-deliver",
    ),
    cf(
        "tlsca",
        Kind::Pem,
        "none: the system's roots",
        "more trust anchors (PEM certificates) for tlsdestinations, e.g. a private CA",
        "remote-deliver",
    ),
];

const fn cf(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    meaning: &'static str,
    readers: &'static str,
) -> ControlFile {
    ControlFile {
        name,
        kind,
        default,
        meaning,
        readers,
    }
}

pub fn lookup(name: &str) -> Option<&'static ControlFile> {
    FILES.iter().find(|f| f.name == name)
}

/// A problem with a control file, named by file and line for the log and `ferryctl check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ControlError {
    pub fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ControlError {
            file: file.to_string(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "control/{} line {}: {}", self.file, n, self.message),
            None => write!(f, "control/{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ControlError {}

/// Control files larger than this are refused (a list of a few thousand domains fits).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The meaningful lines of a control file with their line numbers, or None if it is missing.
pub fn read_lines(dir: &Path, name: &str) -> Result<Option<Vec<(usize, String)>>, ControlError> {
    let path = dir.join(name);
    let text = match read_bounded(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ControlError::new(name, None, format!("cannot read: {e}"))),
    };
    let text = String::from_utf8(text).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
        ControlError::new(name, Some(line), "not valid UTF-8")
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ControlError::new(
                name,
                Some(i + 1),
                "contains control characters",
            ));
        }
        out.push((i + 1, l.to_string()));
    }
    Ok(Some(out))
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(buf)
}

/// A single-value file: its one value line, or None if missing. Two value lines is an error.
pub fn read_value(dir: &Path, name: &str) -> Result<Option<(usize, String)>, ControlError> {
    match read_lines(dir, name)? {
        None => Ok(None),
        Some(lines) => match lines.len() {
            0 => Err(ControlError::new(
                name,
                None,
                "is empty: remove it to get the default, or write a value",
            )),
            1 => Ok(lines.into_iter().next()),
            _ => Err(ControlError::new(
                name,
                Some(lines[1].0),
                "holds a second value; this file takes one",
            )),
        },
    }
}

pub fn read_number(dir: &Path, name: &str, default: u64) -> Result<u64, ControlError> {
    match read_value(dir, name)? {
        None => Ok(default),
        Some((line, v)) => v
            .parse::<u64>()
            .map_err(|_| ControlError::new(name, Some(line), format!("not a number: {v:?}"))),
    }
}

pub fn read_text(dir: &Path, name: &str) -> Result<Option<String>, ControlError> {
    Ok(read_value(dir, name)?.map(|(_, v)| v))
}

/// A list file: None if missing (so that the caller picks the default), else its entries.
pub fn read_list(dir: &Path, name: &str) -> Result<Option<Vec<(usize, String)>>, ControlError> {
    read_lines(dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_comments_and_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("databytes"), "# size\n\n 1000 \n").unwrap();
        assert_eq!(read_number(d.path(), "databytes", 5).unwrap(), 1000);
        assert_eq!(read_number(d.path(), "maxrcpt", 7).unwrap(), 7);
        std::fs::write(d.path().join("databytes"), "10\n20\n").unwrap();
        let e = read_number(d.path(), "databytes", 5).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("databytes", Some(2)));
        std::fs::write(d.path().join("databytes"), "ten\n").unwrap();
        let e = read_number(d.path(), "databytes", 5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "control/databytes line 1: not a number: \"ten\""
        );
        std::fs::write(d.path().join("me"), "").unwrap();
        assert!(read_text(d.path(), "me").is_err());
    }

    #[test]
    fn readme_lists_every_file() {
        let readme = include_str!("../../../etc/control/README");
        for f in FILES {
            assert!(
                readme
                    .lines()
                    .any(|l| l.starts_with(&format!("| `{}` ", f.name))),
                "etc/control/README lacks a row for {}",
                f.name
            );
        }
    }
}
