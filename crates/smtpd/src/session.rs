//! One SMTP session as a state machine without I/O: bytes in, replies and events out.
//!
//! The server feeds it the plaintext the client sent ([`Session::input`]); it consumes whole
//! command lines and DATA/BDAT bytes, appends replies to [`Session::out`] and pushes
//! [`Event`]s for the server to act on (stream to the queue writer, start TLS, close). While a
//! message is being committed it stops consuming input, so pipelined commands are answered
//! in order once [`Session::committed`] gives the result.

use crate::headers::Fixer;
use crate::policy::{Client, Policy};
use ferry_common::hops::HopCounter;
use ferry_smtp::sasl::{self, Credentials, Exchange, Step};
use ferry_smtp::{
    Body, Command, CommandError, DataDecoder, DataEvent, ForwardPath, Reply, ReversePath,
};

/// Which service this smtpd is: port 25, submission (587, STARTTLS then AUTH) or implicit
/// TLS (465, then AUTH). Both submission services require AUTH before MAIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Smtp,
    Submission,
    Smtps,
}

impl Service {
    /// AUTH is offered (over TLS) and required before MAIL.
    pub fn submission(self) -> bool {
        self != Service::Smtp
    }
}

/// The answer to an [`Event::Auth`].
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated as this name (as the password file spells it).
    Ok(String),
    /// Wrong name or password (535 5.7.8).
    Bad,
    /// The checker cannot answer now (454 4.7.0).
    Temporary,
    /// Too many failures for this name lately (454 4.7.0, without checking).
    UserThrottled,
    /// Too many failures from this client lately (421 4.7.0, closed).
    IpThrottled,
}

/// Longest command line (RFC 5321 allows 512; extensions make it longer).
pub const MAX_LINE: usize = ferry_smtp::MAX_COMMAND_LINE;
/// Errors (bad commands, refused senders and recipients) after which every further error
/// reply is delayed ([`Session::take_tarpit`]), as Postfix's smtpd_soft_error_limit.
pub const SOFT_ERRORS: u32 = 10;
/// Errors before the session is closed with 421 (Postfix's smtpd_hard_error_limit).
pub const MAX_ERRORS: u32 = 20;
/// Replies waiting to be sent beyond which no more input is consumed (backpressure).
pub const OUT_CAP: usize = 64 * 1024;
/// Pieces of a message go to the writer in chunks of about this size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A message starts: envelope and what the Received line says.
    Begin {
        helo: String,
        protocol: String,
        sender: String,
        smtputf8: bool,
        /// REQUIRETLS (RFC 8689) on MAIL.
        requiretls: bool,
        rcpts: Vec<String>,
        /// The authenticated name (submission).
        auth: Option<String>,
        /// The DSN parameters of MAIL and of each RCPT (RFC 3461).
        dsn: ferry_common::envelope::Dsn,
    },
    Chunk(Vec<u8>),
    /// AUTH gave these credentials: check them and call [`Session::auth_result`].
    Auth(Credentials),
    /// The message is complete: commit it and call `committed`.
    End,
    /// Forget the message being written.
    Abort,
    /// Reply sent ("220 Ready to start TLS"): switch to TLS once it is on the wire.
    StartTls,
    /// Close after sending what is in `out`.
    Close,
    /// A sender (MAIL) or recipient (RCPT) was refused: one log line, for the admin and for
    /// fail2ban. `rcpt` is None for a refused sender.
    Denied {
        sender: String,
        rcpt: Option<String>,
        reply: String,
    },
    /// A transaction ended without reaching the queue (for the log).
    Refused {
        sender: String,
        rcpts: usize,
        reply: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Command,
    Data,
    Bdat {
        left: u64,
        last: bool,
    },
    /// Waiting for the writer's answer.
    Commit,
    /// AUTH: waiting for the client's next line of the exchange.
    AuthLine,
    /// AUTH: waiting for the password checker.
    AuthCheck,
    Closed,
}

struct Txn {
    sender: String,
    smtputf8: bool,
    requiretls: bool,
    rcpts: Vec<String>,
    /// DSN parameters: RET and ENVID of MAIL, NOTIFY and ORCPT of each accepted RCPT.
    dsn: ferry_common::envelope::Dsn,
    /// Bytes the recipients take in the writer's `B` record (4 + length each).
    rcpt_bytes: usize,
    /// Begin was sent to the writer.
    begun: bool,
    bytes: u64,
    too_big: bool,
    bare_cr: bool,
    hops: HopCounter,
    /// Adds missing Date, Message-ID, From (a relay client's or a local submission).
    fix: Option<Fixer>,
}

impl Txn {
    fn new(sender: String, smtputf8: bool) -> Txn {
        Txn {
            fix: None,
            sender,
            smtputf8,
            requiretls: false,
            rcpts: Vec::new(),
            dsn: Default::default(),
            rcpt_bytes: 0,
            begun: false,
            bytes: 0,
            too_big: false,
            bare_cr: false,
            hops: HopCounter::new(),
        }
    }
}

pub struct Session {
    pub client: Client,
    pub service: Service,
    /// The name the client authenticated as (AUTH, submission only).
    pub auth: Option<String>,
    sasl: Option<Exchange>,
    pub helo: Option<String>,
    esmtp: bool,
    pub tls: Option<String>,
    /// STARTTLS can be offered now (the server sets it from its current TLS settings).
    pub tls_offered: bool,
    txn: Option<Txn>,
    /// The BDAT chunk being read is refused with this reply (read and dropped, RFC 3030 §2).
    bdat_refused: Option<Reply>,
    /// An error reply was just given past [`SOFT_ERRORS`]: the server delays the session.
    tarpit: bool,
    phase: Phase,
    decoder: DataDecoder,
    pending_cr: bool,
    chunk: Vec<u8>,
    errors: u32,
    discarding_line: bool,
    pub out: Vec<u8>,
    pub messages: u32,
    pub rejected_rcpts: u32,
}

fn reply(code: u16, enhanced: &str, text: &str) -> Vec<u8> {
    Reply::new(code, enhanced, text).to_bytes()
}

impl Session {
    pub fn new(client: Client, tls_offered: bool) -> Session {
        Session {
            client,
            service: Service::Smtp,
            auth: None,
            sasl: None,
            helo: None,
            esmtp: false,
            tls: None,
            tls_offered,
            txn: None,
            bdat_refused: None,
            tarpit: false,
            phase: Phase::Command,
            decoder: DataDecoder::new(),
            pending_cr: false,
            chunk: Vec::new(),
            errors: 0,
            discarding_line: false,
            out: Vec::new(),
            messages: 0,
            rejected_rcpts: 0,
        }
    }

    pub fn greeting(&mut self, name: &str) {
        self.out
            .extend_from_slice(format!("220 {name} ESMTP ferry\r\n").as_bytes());
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }
    pub fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Data | Phase::Bdat { .. } | Phase::Commit)
    }
    pub fn waiting_for_commit(&self) -> bool {
        self.phase == Phase::Commit
    }
    /// Waiting for the password checker's answer.
    pub fn waiting_for_auth(&self) -> bool {
        self.phase == Phase::AuthCheck
    }
    /// True while streaming DATA or BDAT: input is message content, not commands.
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data | Phase::Bdat { .. })
    }

    /// After STARTTLS: the session starts over (RFC 3207 §4.2), now over TLS.
    pub fn tls_started(&mut self, description: String) {
        self.tls = Some(description);
        self.sasl = None;
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        self.phase = Phase::Command;
    }

    /// True once after an error reply past [`SOFT_ERRORS`]: the server should hold the reply
    /// and the session's next input for a moment (the tarpit), without blocking anyone else.
    pub fn take_tarpit(&mut self) -> bool {
        std::mem::take(&mut self.tarpit)
    }

    /// The queue writer is gone: a message in flight gets 451 4.3.0 (it was not stored), then
    /// the session is closed with 421.
    pub fn writer_lost(&mut self, events: &mut Vec<Event>) {
        if self.in_message() {
            self.txn = None;
            self.send(
                451,
                "4.3.0",
                "Error: queue writer failed; message not accepted",
            );
        }
        self.txn = None;
        self.close_with("4.3.0", "Service restarting; try again shortly", events);
    }

    /// Closes with a 421 (timeout, shutdown, too many errors).
    pub fn close_with(&mut self, enhanced: &str, text: &str, events: &mut Vec<Event>) {
        if self.txn.as_ref().is_some_and(|t| t.begun) {
            events.push(Event::Abort);
        }
        self.out.extend(reply(421, enhanced, text));
        self.phase = Phase::Closed;
        events.push(Event::Close);
    }

    /// Consumes what it can of `input` (removing it from the front). Returns true if it
    /// consumed something.
    pub fn input(&mut self, input: &mut Vec<u8>, p: &dyn Policy, events: &mut Vec<Event>) -> bool {
        let mut used = 0;
        let before = input.len();
        while used < input.len() && self.out.len() < OUT_CAP && !self.tarpit {
            match self.phase {
                Phase::Closed | Phase::Commit | Phase::AuthCheck => break,
                Phase::Data => used += self.data(&input[used..], p, events),
                Phase::Bdat { .. } => used += self.bdat(&input[used..], p, events),
                Phase::Command | Phase::AuthLine => {
                    let rest = &input[used..];
                    let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                        if rest.len() > MAX_LINE {
                            // A line too long to be a command: say so once, drop it to its end.
                            if !self.discarding_line {
                                self.sasl = None;
                                self.phase = Phase::Command;
                                self.error(500, "5.5.2", "Error: line too long", events);
                            }
                            self.discarding_line = true;
                            used = input.len();
                        }
                        break;
                    };
                    let line = &rest[..nl];
                    used += nl + 1;
                    if std::mem::take(&mut self.discarding_line) {
                        continue;
                    }
                    let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
                    if line.len() > MAX_LINE {
                        self.sasl = None;
                        self.phase = Phase::Command;
                        self.error(500, "5.5.2", "Error: line too long", events);
                        continue;
                    }
                    if self.phase == Phase::AuthLine {
                        self.auth_line(&line, events);
                        continue;
                    }
                    if self.command(&line, p, events) {
                        if used < input.len() {
                            // CVE-2011-0411: plaintext pipelined after STARTTLS must never
                            // be taken as if it had come through TLS.
                            self.out.extend(reply(
                                554,
                                "5.5.1",
                                "Error: plaintext after STARTTLS; closing",
                            ));
                            self.phase = Phase::Closed;
                            events.push(Event::Close);
                            used = input.len();
                        } else {
                            self.send(220, "2.0.0", "Ready to start TLS");
                            events.push(Event::StartTls);
                        }
                        break;
                    }
                }
            }
        }
        input.drain(..used.min(input.len()));
        before != input.len()
    }

    fn error(&mut self, code: u16, enhanced: &str, text: &str, events: &mut Vec<Event>) {
        self.refuse(Reply::new(code, enhanced, text), events);
    }

    /// An error reply that counts toward the error limits: past [`SOFT_ERRORS`] the server
    /// delays it (tarpit), at [`MAX_ERRORS`] the session is closed with 421.
    fn refuse(&mut self, r: Reply, events: &mut Vec<Event>) {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.close_with("4.7.0", "Error: too many errors; closing", events);
        } else {
            self.out.extend(r.to_bytes());
            if self.errors >= SOFT_ERRORS {
                self.tarpit = true;
            }
        }
    }

    fn send(&mut self, code: u16, enhanced: &str, text: &str) {
        self.out.extend(reply(code, enhanced, text));
    }

    /// Handles one command line. Returns true for an acceptable STARTTLS (the caller answers).
    fn command(&mut self, line: &[u8], p: &dyn Policy, events: &mut Vec<Event>) -> bool {
        let utf8 = self.txn.as_ref().is_some_and(|t| t.smtputf8);
        let cmd = match ferry_smtp::parse_command_with(line, utf8) {
            Ok(c) => c,
            Err(e) => {
                let CommandError {
                    code,
                    enhanced,
                    text,
                } = e;
                self.error(code, enhanced, text, events);
                return false;
            }
        };
        match cmd {
            Command::Helo(h) | Command::Ehlo(h) if h.is_empty() => {
                self.error(501, "5.5.4", "Error: HELO needs a name", events)
            }
            Command::Helo(h) | Command::Ehlo(h) if !helo_acceptable(&h) => self.error(
                501,
                "5.5.2",
                "Error: HELO needs a domain name or an address literal",
                events,
            ),
            Command::Helo(h) => {
                self.reset(events);
                self.helo = Some(h);
                self.esmtp = false;
                self.out
                    .extend(format!("250 {}\r\n", p.hostname()).as_bytes());
            }
            Command::Ehlo(h) => {
                self.reset(events);
                self.esmtp = true;
                let mut lines = vec![format!(
                    "{} Hello {} [{}]",
                    p.hostname(),
                    clip(&h),
                    self.client.ip
                )];
                lines.push("PIPELINING".into());
                lines.push(if p.databytes() > 0 {
                    format!("SIZE {}", p.databytes())
                } else {
                    "SIZE".into()
                });
                lines.extend(
                    [
                        "8BITMIME",
                        "ENHANCEDSTATUSCODES",
                        "SMTPUTF8",
                        "CHUNKING",
                        "DSN",
                    ]
                    .map(String::from),
                );
                if self.tls_offered && self.tls.is_none() {
                    lines.push("STARTTLS".into());
                }
                if self.tls.is_some() {
                    lines.push("REQUIRETLS".into());
                }
                // RFC 4954 §4 and RFC 8314: only over TLS.
                if self.service.submission() && self.tls.is_some() && self.auth.is_none() {
                    lines.push(format!("AUTH {}", sasl::MECHANISMS));
                }
                lines.push("HELP".into());
                self.helo = Some(h);
                let n = lines.len();
                for (i, l) in lines.into_iter().enumerate() {
                    self.out.extend(
                        format!("250{}{l}\r\n", if i + 1 < n { "-" } else { " " }).as_bytes(),
                    );
                }
            }
            Command::Mail(from, params) => {
                if self.helo.is_none() {
                    return self.sequence("Error: send HELO/EHLO first", events);
                }
                if self.txn.is_some() {
                    return self.sequence("Error: nested MAIL command", events);
                }
                if self.service.submission() && self.tls.is_none() {
                    self.error(530, "5.7.0", "Must issue a STARTTLS command first", events);
                    return false;
                }
                if self.service.submission() && self.auth.is_none() {
                    self.error(530, "5.7.0", "Authentication required", events);
                    return false;
                }
                // Not advertised (no BINARYMIME; AUTH= only where AUTH is): refused.
                if (params.auth.is_some() && !self.service.submission())
                    || params.body == Some(Body::BinaryMime)
                {
                    self.error(555, "5.5.4", "Error: MAIL parameter not supported", events);
                    return false;
                }
                let sender = match &from {
                    ReversePath::Null => String::new(),
                    ReversePath::Mailbox(m) => m.to_string(),
                };
                if let Some(size) = params.size
                    && p.databytes() > 0
                    && size > p.databytes()
                {
                    let r = Reply::new(552, "5.3.4", "Error: message size exceeds fixed limit");
                    denied(events, &sender, None, &r);
                    self.out.extend(r.to_bytes());
                    return false;
                }
                if let Err(r) = p.check_mail(&sender, &self.client) {
                    denied(events, &sender, None, &r);
                    self.refuse(r, events);
                    return false;
                }
                // RFC 8689: REQUIRETLS is offered, and taken, only over TLS.
                if params.requiretls && self.tls.is_none() {
                    let r = Reply::new(
                        530,
                        "5.7.10",
                        "REQUIRETLS needs a TLS session: STARTTLS first",
                    );
                    denied(events, &sender, None, &r);
                    self.out.extend(r.to_bytes());
                    return false;
                }
                if let Some(name) = &self.auth
                    && let Err(r) = p.check_auth_sender(&sender, name)
                {
                    denied(events, &sender, None, &r);
                    self.refuse(r, events);
                    return false;
                }
                let mut txn = Txn::new(sender, params.smtputf8);
                txn.requiretls = params.requiretls;
                txn.dsn.ret = params.ret.map(|r| match r {
                    ferry_smtp::Ret::Full => ferry_common::envelope::Ret::Full,
                    ferry_smtp::Ret::Hdrs => ferry_common::envelope::Ret::Hdrs,
                });
                txn.dsn.envid = params.envid.clone();
                txn.fix = Some(if self.client.relay || self.auth.is_some() {
                    // Submitted mail (RFC 6409 §8): missing fields added; Bcc removed.
                    Fixer::new(&txn.sender, p.me(), self.auth.is_some())
                } else {
                    // Anybody else's: only forged Authentication-Results removed.
                    Fixer::incoming(p.me())
                });
                self.txn = Some(txn);
                self.send(250, "2.1.0", "Ok");
            }
            Command::Rcpt(to, params) => {
                let Some(txn) = &self.txn else {
                    return self.sequence("Error: need MAIL command", events);
                };
                let addr = match &to {
                    // RFC 5321 §4.5.1: always accepted, whatever the domains.
                    ForwardPath::Postmaster => p.postmaster(),
                    ForwardPath::Mailbox(m) => m.to_string(),
                };
                // Every accepted envelope must fit in the writer's records and the queue file
                // (its DSN parameters go into the `N` record: counted with it).
                let d = rcpt_dsn(&params);
                let size = 4 + addr.len() + d.orcpt.as_ref().map_or(0, |o| 16 + o.len());
                if txn.rcpts.len() as u64 >= p.maxrcpt()
                    || txn.rcpts.len() >= ferry_common::envelope::MAX_RECIPIENTS
                    || txn.rcpt_bytes + size > ferry_common::writer::MAX_RCPT_BYTES
                {
                    let r = Reply::new(452, "4.5.3", "Error: too many recipients");
                    denied(events, &txn.sender, Some(&addr), &r);
                    self.rejected_rcpts += 1;
                    self.out.extend(r.to_bytes());
                    return false;
                }
                let verdict = match &to {
                    ForwardPath::Postmaster => Ok(()),
                    ForwardPath::Mailbox(_) => p.check_rcpt(&addr, &self.client),
                };
                match verdict {
                    Ok(()) => {
                        if let Some(t) = self.txn.as_mut() {
                            t.rcpt_bytes += size;
                            t.rcpts.push(addr);
                            if d != ferry_common::envelope::RcptDsn::default() {
                                t.dsn.rcpts.resize(t.rcpts.len() - 1, Default::default());
                                t.dsn.rcpts.push(d);
                            }
                        }
                        self.send(250, "2.1.5", "Ok");
                    }
                    Err(r) => {
                        let sender = self.txn.as_ref().map(|t| t.sender.as_str()).unwrap_or("");
                        denied(events, sender, Some(&addr), &r);
                        self.rejected_rcpts += 1;
                        self.refuse(r, events);
                    }
                }
            }
            Command::Data => {
                match &self.txn {
                    None => return self.sequence("Error: need MAIL command", events),
                    Some(t) if t.rcpts.is_empty() => {
                        self.send(554, "5.5.1", "Error: no valid recipients");
                        return false;
                    }
                    Some(t) if t.begun => return self.sequence("Error: DATA after BDAT", events),
                    _ => {}
                }
                self.begin(events);
                self.decoder = DataDecoder::new();
                self.phase = Phase::Data;
                self.send(354, "", "End data with <CR><LF>.<CR><LF>");
            }
            Command::Bdat { size, last } => {
                let ok = self.txn.as_ref().is_some_and(|t| !t.rcpts.is_empty());
                if !ok {
                    // The chunk still follows and is read and dropped (RFC 3030 §2); the
                    // transaction, if there was one, is over: what follows needs a new MAIL.
                    let why = if self.txn.is_none() {
                        "Error: need MAIL command"
                    } else {
                        "Error: no valid recipients"
                    };
                    self.reset(events);
                    self.bdat_refused = Some(Reply::new(503, "5.5.1", why));
                } else if !self.txn.as_ref().is_some_and(|t| t.begun) {
                    self.begin(events);
                    self.pending_cr = false;
                }
                self.phase = Phase::Bdat { left: size, last };
                if size == 0 {
                    self.bdat_chunk_done(p, events);
                }
            }
            Command::Rset => {
                self.reset(events);
                self.send(250, "2.0.0", "Ok");
            }
            Command::Noop => self.send(250, "2.0.0", "Ok"),
            Command::Quit => {
                self.reset(events);
                self.send(221, "2.0.0", "Bye");
                self.phase = Phase::Closed;
                events.push(Event::Close);
            }
            Command::Vrfy(_) => self.send(
                252,
                "2.5.2",
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Expn(_) => self.send(502, "5.5.1", "Error: EXPN not available"),
            Command::Help(_) => self.send(
                214,
                "2.0.0",
                "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
            ),
            Command::Auth { .. } if !self.service.submission() => {
                self.send(503, "5.5.1", "Error: authentication not enabled")
            }
            Command::Auth { .. } if self.tls.is_none() => self.send(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ),
            Command::Auth { .. } if self.auth.is_some() => {
                self.sequence("Error: already authenticated", events);
            }
            Command::Auth { .. } if self.txn.is_some() => {
                self.sequence(
                    "Error: AUTH not permitted during a mail transaction",
                    events,
                );
            }
            Command::Auth { .. } if self.helo.is_none() => {
                self.sequence("Error: send EHLO first", events);
            }
            Command::Auth { mechanism, initial } => {
                let started = Exchange::start(&mechanism, initial.as_deref());
                self.sasl_step(started, events);
            }
            Command::StartTls => {
                if !self.tls_offered {
                    self.send(502, "5.5.1", "Error: STARTTLS not available");
                } else if self.tls.is_some() {
                    self.send(503, "5.5.1", "Error: TLS already active");
                } else if self.txn.is_some() {
                    self.send(
                        503,
                        "5.5.1",
                        "Error: STARTTLS in the middle of a transaction",
                    );
                } else {
                    return true;
                }
            }
        }
        false
    }

    /// The next step of an AUTH exchange.
    fn sasl_step(
        &mut self,
        step: Result<(Option<Exchange>, Step), sasl::SaslError>,
        events: &mut Vec<Event>,
    ) {
        self.phase = Phase::Command;
        match step {
            Err(e) => {
                let (code, enhanced, text) = e.reply();
                self.error(code, enhanced, text, events);
            }
            Ok((ex, Step::Challenge(c))) => {
                self.sasl = ex;
                self.phase = Phase::AuthLine;
                self.out.extend(format!("334 {c}\r\n").as_bytes());
            }
            Ok((_, Step::Done(c))) => {
                // No proxy authorization: an authzid must be the user itself.
                if !c.authzid.is_empty() && !c.authzid.eq_ignore_ascii_case(&c.user) {
                    self.error(535, "5.7.8", "Authentication credentials invalid", events);
                } else {
                    self.phase = Phase::AuthCheck;
                    events.push(Event::Auth(c));
                }
            }
        }
    }

    fn auth_line(&mut self, line: &[u8], events: &mut Vec<Event>) {
        match self.sasl.take() {
            Some(ex) => self.sasl_step(ex.line(line), events),
            None => self.phase = Phase::Command,
        }
    }

    /// The checker's verdict on the credentials of [`Event::Auth`].
    pub fn auth_result(&mut self, outcome: AuthOutcome, events: &mut Vec<Event>) {
        if self.phase != Phase::AuthCheck {
            return;
        }
        self.phase = Phase::Command;
        match outcome {
            AuthOutcome::Ok(name) => {
                self.auth = Some(name);
                // Authenticated clients may relay.
                self.client.relay = true;
                self.send(235, "2.7.0", "Authentication successful");
            }
            AuthOutcome::Bad => {
                self.error(535, "5.7.8", "Authentication credentials invalid", events)
            }
            AuthOutcome::Temporary => self.send(454, "4.7.0", "Temporary authentication failure"),
            AuthOutcome::UserThrottled => self.send(
                454,
                "4.7.0",
                "Temporary authentication failure: too many failures; try later",
            ),
            AuthOutcome::IpThrottled => self.close_with(
                "4.7.0",
                "Error: too many failed authentications from your address; try later",
                events,
            ),
        }
    }

    fn sequence(&mut self, text: &str, events: &mut Vec<Event>) -> bool {
        self.error(503, "5.5.1", text, events);
        false
    }

    /// Drops the transaction (RSET, HELO, EHLO, QUIT).
    fn reset(&mut self, events: &mut Vec<Event>) {
        if let Some(t) = self.txn.take()
            && t.begun
        {
            events.push(Event::Abort);
        }
    }

    fn begin(&mut self, events: &mut Vec<Event>) {
        let utf8 = self.txn.as_ref().is_some_and(|t| t.smtputf8);
        // RFC 3848 and RFC 6531 §3.7.4 (the A forms come with AUTH).
        let protocol = match (utf8, self.esmtp, self.tls.is_some()) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, false, false) => "SMTP",
            (false, false, true) => "SMTPS",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
        };
        let protocol = if self.auth.is_some() {
            format!("{protocol}A")
        } else {
            protocol.to_string()
        };
        let helo = self.helo.clone().unwrap_or_default();
        if let Some(t) = self.txn.as_mut() {
            t.begun = true;
            t.bytes = 0;
            t.hops = HopCounter::new();
            events.push(Event::Begin {
                helo,
                protocol,
                sender: t.sender.clone(),
                smtputf8: t.smtputf8,
                requiretls: t.requiretls,
                rcpts: t.rcpts.clone(),
                auth: self.auth.clone(),
                dsn: t.dsn.clone(),
            });
        }
        self.chunk.clear();
    }

    /// Message bytes decoded so far go to the writer (unless the message is too big).
    fn emit(&mut self, p: &dyn Policy, events: &mut Vec<Event>, force: bool) {
        let Some(t) = self.txn.as_mut() else {
            self.chunk.clear();
            return;
        };
        if t.too_big {
            self.chunk.clear();
            return;
        }
        if p.databytes() > 0 && t.bytes + self.chunk.len() as u64 > p.databytes() {
            t.too_big = true;
            self.chunk.clear();
            events.push(Event::Abort);
            return;
        }
        let ready = !self.chunk.is_empty() && (force || self.chunk.len() >= CHUNK);
        if ready || (force && t.fix.is_some()) {
            let data = std::mem::take(&mut self.chunk);
            // databytes and the hop count see the message as the client sent it.
            t.bytes += data.len() as u64;
            t.hops.feed(&data);
            let data = match t.fix.as_mut() {
                Some(f) => f.feed(data, force),
                None => data,
            };
            if !data.is_empty() {
                events.push(Event::Chunk(data));
            }
        }
    }

    fn data(&mut self, input: &[u8], p: &dyn Policy, events: &mut Vec<Event>) -> usize {
        match self.decoder.feed(input, &mut self.chunk) {
            DataEvent::More => {
                self.emit(p, events, false);
                input.len()
            }
            DataEvent::End { consumed } => {
                if let Some(t) = self.txn.as_mut() {
                    t.bare_cr = self.decoder.saw_bare_cr();
                }
                self.emit(p, events, true);
                self.finish_message(p, events);
                consumed
            }
        }
    }

    fn bdat(&mut self, input: &[u8], p: &dyn Policy, events: &mut Vec<Event>) -> usize {
        let Phase::Bdat { left, last } = self.phase else {
            return 0;
        };
        let take = (left.min(input.len() as u64)) as usize;
        if self.bdat_refused.is_some() {
            let left = left - take as u64;
            self.phase = Phase::Bdat { left, last };
            if left == 0 {
                self.bdat_chunk_done(p, events);
            }
            return take;
        }
        let flags =
            ferry_smtp::normalize_crlf(&input[..take], &mut self.pending_cr, &mut self.chunk);
        if flags.bare_cr
            && let Some(t) = self.txn.as_mut()
        {
            t.bare_cr = true;
        }
        let left = left - take as u64;
        self.phase = Phase::Bdat { left, last };
        if left == 0 {
            if last
                && ferry_smtp::finish_crlf(&mut self.pending_cr, &mut self.chunk)
                && let Some(t) = self.txn.as_mut()
            {
                t.bare_cr = true;
            }
            self.emit(p, events, last);
            self.bdat_chunk_done(p, events);
        } else {
            self.emit(p, events, false);
        }
        take
    }

    fn bdat_chunk_done(&mut self, p: &dyn Policy, events: &mut Vec<Event>) {
        let Phase::Bdat { last, .. } = self.phase else {
            return;
        };
        if let Some(r) = self.bdat_refused.take() {
            self.phase = Phase::Command;
            self.refuse(r, events);
            return;
        }
        if self.txn.as_ref().is_some_and(|t| t.too_big) && !last {
            // RFC 3030 §4.2: the chunk gets 552 and the transaction is over (the writer was
            // told to forget it): later chunks are refused until a new MAIL.
            let t = self.txn.take();
            self.phase = Phase::Command;
            if let Some(t) = t {
                events.push(Event::Refused {
                    sender: t.sender,
                    rcpts: t.rcpts.len(),
                    reply: "552 5.3.4 message size exceeds fixed limit".into(),
                });
            }
            self.send(552, "5.3.4", "Error: message size exceeds fixed limit");
            return;
        }
        if last {
            self.emit(p, events, true);
            self.finish_message(p, events);
        } else {
            let n = self
                .txn
                .as_ref()
                .map(|t| t.bytes + self.chunk.len() as u64)
                .unwrap_or(0);
            self.send(250, "2.0.0", &format!("{n} octets received"));
            self.phase = Phase::Command;
        }
    }

    /// The end of the message: commit it, or refuse it.
    fn finish_message(&mut self, p: &dyn Policy, events: &mut Vec<Event>) {
        let Some(t) = self.txn.as_ref() else {
            self.phase = Phase::Command;
            return;
        };
        let refuse = if t.too_big {
            Some(Reply::new(
                552,
                "5.3.4",
                "Error: message size exceeds fixed limit",
            ))
        } else if t.hops.count() > p.maxhops() {
            Some(Reply::new(
                554,
                "5.4.6",
                &format!(
                    "Error: too many hops ({} Received lines): mail loop?",
                    t.hops.count()
                ),
            ))
        } else if t.bare_cr {
            Some(Reply::new(
                550,
                "5.6.0",
                "Error: message contains a bare CR (RFC 5321 section 2.3.8)",
            ))
        } else if let (Some(name), Some(f)) = (&self.auth, &t.fix) {
            // An authenticated user's From addresses are bound like its envelope senders.
            from_refused(f.from(), name, p)
        } else {
            None
        };
        match refuse {
            Some(r) => {
                if !t.too_big {
                    events.push(Event::Abort);
                }
                events.push(Event::Refused {
                    sender: t.sender.clone(),
                    rcpts: t.rcpts.len(),
                    reply: r.lines.join(" "),
                });
                self.out.extend(r.to_bytes());
                self.txn = None;
                self.phase = Phase::Command;
            }
            None => {
                events.push(Event::End);
                self.phase = Phase::Commit;
            }
        }
    }

    /// The writer's answer: the queue id, or (queue exit code, text).
    pub fn committed(&mut self, result: Result<&str, (i32, &str)>) -> (String, usize, u64) {
        let t = self.txn.take();
        let (sender, rcpts, bytes) = t
            .map(|t| (t.sender, t.rcpts.len(), t.bytes))
            .unwrap_or_default();
        match result {
            Ok(id) => {
                self.messages += 1;
                let text = if id.is_empty() {
                    "Ok: queued".to_string()
                } else {
                    format!("Ok: queued as {id}")
                };
                self.send(250, "2.0.0", &text);
            }
            Err((code, text)) => {
                use ferry_common::status::{QUEUE_AUTH_DEFERRED, QUEUE_AUTH_REFUSED};
                let e = ferry_common::status::queue_exit(code);
                // The verifier's refusal carries its own reply: "550 5.7.23 text".
                let own = (code == QUEUE_AUTH_REFUSED || code == QUEUE_AUTH_DEFERRED)
                    .then(|| {
                        let mut w = text.splitn(3, ' ');
                        let smtp = w.next()?.parse::<u16>().ok()?;
                        let enhanced = w.next()?;
                        let ok = smtp / 100 == (e.smtp / 100)
                            && enhanced.starts_with(if smtp >= 500 { "5." } else { "4." });
                        ok.then(|| {
                            (
                                smtp,
                                enhanced.to_string(),
                                w.next().unwrap_or("").to_string(),
                            )
                        })
                    })
                    .flatten();
                match own {
                    Some((smtp, enhanced, t)) => self.send(smtp, &enhanced, &t),
                    None => self.send(e.smtp, e.enhanced, &format!("Error: {}", e.meaning)),
                }
            }
        }
        if self.phase == Phase::Commit {
            self.phase = Phase::Command;
        }
        (sender, rcpts, bytes)
    }
}

/// The reply to a message of the authenticated `name` whose From addresses (`from`, None:
/// the header was too long to be read) are not all its own; None when they are.
fn from_refused(from: Option<&[String]>, name: &str, p: &dyn Policy) -> Option<Reply> {
    let Some(from) = from else {
        return Some(Reply::new(
            553,
            "5.7.1",
            &format!(
                "Error: header longer than {} KiB: From: cannot be checked",
                crate::headers::MAX_HEADER / 1024
            ),
        ));
    };
    if from.len() > crate::headers::MAX_FROM {
        return Some(Reply::new(
            553,
            "5.7.1",
            &format!(
                "Error: more than {} From: addresses",
                crate::headers::MAX_FROM
            ),
        ));
    }
    from.iter().find_map(|a| {
        p.check_auth_sender(a, name).err().map(|_| {
            Reply::new(
                553,
                "5.7.1",
                &format!(
                    "<{}>: From: address not owned by user {}",
                    clip(a),
                    clip(name)
                ),
            )
        })
    })
}

/// A refused MAIL or RCPT, for the log.
fn denied(events: &mut Vec<Event>, sender: &str, rcpt: Option<&str>, r: &Reply) {
    events.push(Event::Denied {
        sender: sender.to_string(),
        rcpt: rcpt.map(str::to_string),
        reply: String::from_utf8_lossy(&r.to_bytes())
            .trim_end()
            .replace("\r\n", " "),
    });
}

/// RFC 5321 §4.1.4: a domain or an address literal. Names with spaces or odd characters are
/// tolerated (many clients send them), but brackets and parentheses only as a well-formed
/// address literal, so that nothing in the Received line looks like a checked address.
fn helo_acceptable(h: &str) -> bool {
    if h.contains(['(', ')', '[', ']']) {
        h.starts_with('[') && ferry_smtp::is_valid_helo(h)
    } else {
        true
    }
}

/// A client's HELO name as we repeat it: bounded, printable.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// The DSN parameters of a RCPT command, in the envelope's terms.
fn rcpt_dsn(params: &ferry_smtp::RcptParams) -> ferry_common::envelope::RcptDsn {
    use ferry_smtp::Notify as N;
    let notify = params.notify.as_ref().map(|items| {
        let has = |n: N| items.contains(&n);
        ferry_common::envelope::Notify {
            never: has(N::Never),
            success: has(N::Success),
            failure: has(N::Failure),
            delay: has(N::Delay),
        }
    });
    ferry_common::envelope::RcptDsn {
        notify,
        orcpt: params.orcpt.clone(),
    }
}
