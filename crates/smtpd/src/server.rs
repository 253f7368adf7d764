//! The event loop: every session of the server in one mio loop, and the link to the queue
//! writer that all messages are streamed to.
//!
//! Bounds: a session's input is read at most [`INPUT_CAP`] ahead and not consumed at all while
//! more than [`OUT_CAP`] of its replies wait for the client (backpressure); its deadline
//! (`timeoutsmtpd`) moves only when the client sends a line or takes some of our output, so a
//! client that stops reading is closed like one that stops writing. Past the soft error limit a
//! session is held for [`TARPIT`] (its reply and its next input wait; a per-session timer, the
//! loop goes on). If the queue writer dies, every session is told (451 4.3.0 for a message in
//! flight, then 421) and smtpd exits 111, so that s6 starts it and a new writer again.

use crate::auth::{Checker, Verdict};
use crate::conn::{Conn, ReadResult};
use crate::policy::{Client, ConfigPolicy};
use crate::session::{AuthOutcome, Event, OUT_CAP, Service, Session};
use ferry_common::config::{Config, canonical_ip};
use ferry_common::log;
use ferry_common::record::{Outbox, Reader, Record};
use ferry_common::root::Root;
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITER: Token = Token(0);
const SIGNALS: Token = Token(1);
const CHECKER: Token = Token(2);
const FIRST_LISTENER: usize = 10;
const FIRST_CONN: usize = 1000;
/// Input read ahead per session while it waits (commit, TLS switch).
const INPUT_CAP: usize = 64 * 1024;
/// Stop reading message data while this much is waiting for the writer, resume below a tenth.
const WRITER_BACKLOG: usize = 32 << 20;
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Input one session may read in one turn of the loop, and replies it may make (at most
/// OUT_CAP); a session with more waiting is served again after the others had their turn, so
/// neither a fast sender nor a flood of short commands starves the rest or the listener
/// (500 clients pipelining EHLO once kept a new client waiting 30 s for its greeting).
const TURN_BYTES: usize = 256 * 1024;
/// The delay of each error reply past the soft error limit (Postfix: smtpd_error_sleep_time).
pub const TARPIT: Duration = Duration::from_secs(1);
/// The delay of each failed AUTH's 535 (the session waits; the loop goes on).
pub const AUTH_DELAY: Duration = Duration::from_secs(2);
/// Most client addresses and names whose failures are remembered (the oldest go first).
const AUTH_MEMORY: usize = 100_000;

pub struct Server {
    pub root: Root,
    pub policy: ConfigPolicy,
    pub tls: Option<Arc<ServerConfig>>,
    keeper: crate::tlskeys::Keeper,
    poll: Poll,
    listeners: Vec<TcpListener>,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    writer: UnixStream,
    writer_in: Reader,
    writer_out: Outbox,
    txns: HashMap<u64, usize>,
    next_txn: u64,
    per_ip: HashMap<IpAddr, u64>,
    paused: HashSet<usize>,
    /// Sessions in the tarpit (their `hold_until` says until when).
    held: HashSet<usize>,
    /// Sessions that used up their turn with input still waiting.
    again: Vec<usize>,
    scratch: Vec<u8>,
    stopping: Option<Instant>,
    service: Service,
    /// The password checker (submission services only).
    checker: Option<Checker>,
    /// Sessions waiting for the checker, with the name they gave.
    auth_pending: HashMap<usize, String>,
    /// Recent failed AUTHs (within AUTH_WINDOW) per client address and per lowercase name.
    fail_ip: HashMap<IpAddr, VecDeque<Instant>>,
    fail_user: HashMap<String, VecDeque<Instant>>,
}

/// Failures of `key` still within the window (older ones are forgotten).
fn recent<K: std::hash::Hash + Eq>(map: &mut HashMap<K, VecDeque<Instant>>, key: &K) -> usize {
    let now = Instant::now();
    match map.get_mut(key) {
        Some(q) => {
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) > ferry_common::config::AUTH_WINDOW)
            {
                q.pop_front();
            }
            if q.is_empty() {
                map.remove(key);
                0
            } else {
                q.len()
            }
        }
        None => 0,
    }
}

fn remember<K: std::hash::Hash + Eq>(map: &mut HashMap<K, VecDeque<Instant>>, key: K, most: usize) {
    if map.len() >= AUTH_MEMORY {
        map.clear();
    }
    let q = map.entry(key).or_default();
    q.push_back(Instant::now());
    while q.len() > most {
        q.pop_front();
    }
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: Root,
        policy: ConfigPolicy,
        tls: Option<Arc<ServerConfig>>,
        keeper: crate::tlskeys::Keeper,
        listeners: Vec<std::net::TcpListener>,
        writer: std::os::unix::net::UnixStream,
        service: Service,
        checker: Option<Checker>,
    ) -> io::Result<Server> {
        writer.set_nonblocking(true)?;
        Ok(Server {
            root,
            policy,
            tls,
            keeper,
            poll: Poll::new()?,
            listeners: listeners.into_iter().map(TcpListener::from_std).collect(),
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            writer: UnixStream::from_std(writer),
            writer_in: Reader::new(),
            writer_out: Outbox::default(),
            txns: HashMap::new(),
            next_txn: 1,
            per_ip: HashMap::new(),
            paused: HashSet::new(),
            held: HashSet::new(),
            again: Vec::new(),
            scratch: vec![0u8; 64 * 1024],
            stopping: None,
            service,
            checker,
            auth_pending: HashMap::new(),
            fail_ip: HashMap::new(),
            fail_user: HashMap::new(),
        })
    }

    fn cfg(&self) -> &Config {
        &self.policy.cfg
    }

    pub fn run(&mut self, ready: impl FnOnce()) -> io::Result<i32> {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(l, Token(FIRST_LISTENER + i), Interest::READABLE)?;
        }
        self.poll.registry().register(
            &mut self.writer,
            WRITER,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if let Some(ch) = self.checker.as_mut() {
            self.poll
                .registry()
                .register(&mut ch.sock, CHECKER, Interest::READABLE)?;
        }
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        ready();
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            let wait = if self.again.is_empty() {
                self.next_release().map_or(Duration::from_millis(500), |t| {
                    t.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(500))
                })
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    WRITER => {
                        if let Err(e) = self.writer_event() {
                            self.writer_lost();
                            return Err(e);
                        }
                    }
                    CHECKER => {
                        if let Err(e) = self.checker_event() {
                            log!("{e}; exiting so that s6 restarts smtpd and its checker");
                            self.writer_lost();
                            return Err(e);
                        }
                    }
                    SIGNALS => {
                        for s in signals.pending() {
                            if s == SIGHUP {
                                self.reload();
                            } else if self.stopping.is_none() {
                                self.stop();
                            }
                        }
                    }
                    Token(t) if (FIRST_LISTENER..FIRST_CONN).contains(&t) => {
                        self.accept(t - FIRST_LISTENER)
                    }
                    Token(t) => self.conn_event(t),
                }
            }
            self.release_held();
            for t in std::mem::take(&mut self.again) {
                self.conn_event(t);
            }
            if last_sweep.elapsed() >= Duration::from_millis(500) {
                last_sweep = Instant::now();
                self.sweep();
            }
            if let Some(since) = self.stopping
                && (self.conns.is_empty() || since.elapsed() > STOP_GRACE)
            {
                let _ = self.writer_out.flush_to(&mut self.writer);
                log!("stopped");
                return Ok(0);
            }
        }
    }

    fn accept(&mut self, idx: usize) {
        loop {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let (mut stream, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log!("accept: {e}");
                    return;
                }
            };
            let ip = canonical_ip(peer.ip());
            // Relay clients (by default loopback) are exempt from the per-IP limit.
            let relay = self.cfg().is_relay_client(ip);
            let limited = !relay;
            if self.conns.len() as u64 >= self.cfg().concurrencyincoming {
                let _ = io::Write::write(
                    &mut stream,
                    b"421 4.3.2 Too many connections; try again later\r\n",
                );
                log!(
                    "refused {ip}: {} sessions already (concurrencyincoming)",
                    self.conns.len()
                );
                continue;
            }
            if limited && self.per_ip.get(&ip).copied().unwrap_or(0) >= self.cfg().concurrencyperip
            {
                let _ = io::Write::write(
                    &mut stream,
                    b"421 4.7.0 Too many connections from your address; try again later\r\n",
                );
                log!("refused {ip}: too many sessions from it (concurrencyperip)");
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(token),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            if limited {
                *self.per_ip.entry(ip).or_insert(0) += 1;
            }
            let mut session = Session::new(Client { ip, relay }, self.tls.is_some());
            session.service = self.service;
            session.greeting(&self.policy.cfg.smtpgreeting);
            let deadline = Instant::now() + self.timeout();
            let mut conn = Conn::new(stream, peer, session, deadline, limited);
            if self.service == Service::Smtps {
                // RFC 8314: TLS from the first byte; the greeting waits in rustls.
                let started = match &self.tls {
                    Some(cfg) => conn.start_tls(cfg.clone()).map_err(|e| e.to_string()),
                    None => Err("no certificate (control/tlscert)".to_string()),
                };
                if let Err(e) = started {
                    log!("refused {ip}: implicit TLS impossible: {e}");
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    if limited && let Some(n) = self.per_ip.get_mut(&ip) {
                        *n = n.saturating_sub(1);
                    }
                    continue;
                }
            }
            self.conns.insert(token, conn);
            self.conn_event(token);
        }
    }

    fn next_release(&self) -> Option<Instant> {
        self.held
            .iter()
            .filter_map(|t| self.conns.get(t).and_then(|c| c.hold_until))
            .min()
    }

    /// Sessions whose tarpit delay is over go on.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<usize> = self
            .held
            .iter()
            .copied()
            .filter(|t| {
                self.conns
                    .get(t)
                    .is_none_or(|c| c.hold_until.is_none_or(|h| h <= now))
            })
            .collect();
        for t in due {
            self.held.remove(&t);
            if let Some(c) = self.conns.get_mut(&t) {
                // The delayed reply goes out before the next input is looked at.
                c.hold_until = None;
                if let Err(e) = c.flush() {
                    self.close(t, &format!("error: {e}"));
                    continue;
                }
                self.conn_event(t);
            }
        }
    }

    /// The queue writer died: every session is told and closed (451 for a message in flight).
    fn writer_lost(&mut self) {
        log!(
            "the queue writer died: closing {} sessions; exiting so that s6 restarts smtpd and qwriter",
            self.conns.len()
        );
        let all: Vec<usize> = self.conns.keys().copied().collect();
        for t in all {
            if let Some(c) = self.conns.get_mut(&t) {
                let mut ev = Vec::new();
                c.txn = None;
                c.session.writer_lost(&mut ev);
                let _ = c.flush();
            }
            self.close(t, "queue writer died");
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg().timeoutsmtpd)
    }

    /// Reads, processes and writes for one connection, until nothing more can be done now.
    fn conn_event(&mut self, token: usize) {
        let timeout = self.timeout();
        let tls_now = self.tls.is_some();
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let mut events = Vec::new();
        let mut failed: Option<String> = None;
        let mut turn = 0usize;
        let mut replies = 0usize;
        loop {
            let backlogged = self.writer_out.pending() > WRITER_BACKLOG;
            let paused = backlogged && c.session.in_data();
            let held = c.hold_until.is_some();
            // Backpressure: no more input while the client does not take our replies.
            let backed_up = c.backlog() >= OUT_CAP;
            let can_read = !c.eof
                && !paused
                && !held
                && !backed_up
                && !c.tls_pending
                && !c.session.is_closed();
            if backlogged && c.session.in_data() {
                self.paused.insert(token);
            }
            let mut progress = false;
            let over = turn >= TURN_BYTES || replies >= OUT_CAP;
            if over && (can_read || !c.inbuf.is_empty()) {
                // Enough for this turn: the others go first, then this session again.
                if !self.again.contains(&token) {
                    self.again.push(token);
                }
            } else if can_read {
                let before = c.inbuf.len();
                let r = c.read_in(&mut self.scratch, INPUT_CAP);
                turn += c.inbuf.len().saturating_sub(before);
                match r {
                    Ok(ReadResult::Eof) => c.eof = true,
                    Ok(ReadResult::Got { progress: p }) => {
                        if p {
                            c.deadline = Instant::now() + timeout;
                        }
                        progress = true;
                    }
                    Ok(ReadResult::Nothing) => {}
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            // STARTTLS is offered and honoured from the current settings (a reload may have
            // removed the certificate).
            c.session.tls_offered = tls_now;
            let consumed = if held || backed_up || over {
                false
            } else {
                let before = c.session.out.len();
                let r = c.session.input(&mut c.inbuf, &self.policy, &mut events);
                replies += c.session.out.len().saturating_sub(before);
                r
            };
            if c.session.take_tarpit() {
                // A failed AUTH's longer delay is never shortened by the tarpit's.
                let t = Instant::now() + TARPIT;
                c.hold_until = Some(c.hold_until.map_or(t, |h| h.max(t)));
                self.held.insert(token);
            }
            for ev in events.drain(..) {
                match ev {
                    Event::Begin {
                        helo,
                        protocol,
                        sender,
                        smtputf8,
                        requiretls,
                        rcpts,
                        auth,
                        dsn,
                    } => {
                        let txn = self.next_txn;
                        self.next_txn += 1;
                        c.txn = Some(txn);
                        self.txns.insert(txn, token);
                        // submissionreceived hide: neither the address nor the HELO name
                        // of an authenticated client goes into the Received line.
                        let (helo, ip) =
                            if auth.is_some() && self.policy.cfg.submission_hides_client {
                                (String::new(), String::new())
                            } else {
                                (helo, c.peer.ip().to_string())
                            };
                        let mut r = Record::new(b'B')
                            .with_u64(txn)
                            .with(helo)
                            .with(ip)
                            .with(protocol)
                            .with(c.session.tls.clone().unwrap_or_default())
                            .with(message_flags(
                                &self.policy.cfg,
                                self.service,
                                c.peer.ip(),
                                (smtputf8, requiretls),
                                auth.as_deref(),
                                &rcpts,
                            ))
                            .with(sender);
                        for rc in rcpts {
                            r.push(rc);
                        }
                        self.writer_out.push(&r);
                        if dsn != Default::default() {
                            self.writer_out
                                .push(&ferry_common::writer::dsn_record(txn, &dsn));
                        }
                    }
                    Event::Chunk(bytes) => {
                        if let Some(t) = c.txn {
                            self.writer_out
                                .push(&Record::new(b'C').with_u64(t).with(bytes));
                        }
                    }
                    Event::End => {
                        if let Some(t) = c.txn {
                            self.writer_out.push(&Record::new(b'E').with_u64(t));
                        }
                    }
                    Event::Abort => {
                        if let Some(t) = c.txn.take() {
                            self.txns.remove(&t);
                            self.writer_out.push(&Record::new(b'A').with_u64(t));
                        }
                    }
                    Event::StartTls => c.tls_pending = true,
                    Event::Auth(cred) => {
                        let ip = canonical_ip(c.peer.ip());
                        let user = cred.user.to_lowercase();
                        let most = self.policy.cfg.authfailures as usize;
                        let outcome = if recent(&mut self.fail_ip, &ip) >= most {
                            Some(AuthOutcome::IpThrottled)
                        } else if recent(&mut self.fail_user, &user) >= most {
                            Some(AuthOutcome::UserThrottled)
                        } else {
                            None
                        };
                        match (outcome, self.checker.as_mut()) {
                            (Some(o), _) => {
                                log!(
                                    "auth refused ip={ip} user={} reply=throttled ({o:?}, authfailures {most})",
                                    log::quote(&cred.user, 300)
                                );
                                c.session.auth_result(o, &mut Vec::new());
                            }
                            (None, Some(ch)) => {
                                ch.ask(token as u64, &cred.user, &cred.password);
                                self.auth_pending.insert(token, cred.user.clone());
                            }
                            (None, None) => c
                                .session
                                .auth_result(AuthOutcome::Temporary, &mut Vec::new()),
                        }
                    }
                    Event::Close => {}
                    Event::Denied {
                        sender,
                        rcpt,
                        reply,
                    } => {
                        let rcpt = match rcpt {
                            Some(r) => format!(" rcpt=<{}>", log::quote(&r, 300)),
                            None => String::new(),
                        };
                        log!(
                            "refused ip={} from=<{}>{rcpt} reply={}",
                            c.peer.ip(),
                            log::quote(&sender, 300),
                            log::quote(&reply, 200)
                        );
                    }
                    Event::Refused {
                        sender,
                        rcpts,
                        reply,
                    } => {
                        log!(
                            "message ip={} from=<{}> rcpts={rcpts} result={}",
                            c.peer.ip(),
                            log::quote(&sender, 300),
                            log::quote(&reply, 200)
                        );
                    }
                }
            }
            // A session in the tarpit keeps its reply until the delay is over.
            let mut wrote = false;
            if c.hold_until.is_none() {
                match c.flush() {
                    Ok(f) => {
                        wrote = f.wrote;
                        if f.wrote {
                            c.deadline = Instant::now() + timeout;
                        }
                        if f.done && c.tls_pending {
                            match &self.tls {
                                Some(cfg) => {
                                    if let Err(e) = c.start_tls(cfg.clone()) {
                                        failed = Some(e.to_string());
                                        break;
                                    }
                                }
                                None => {
                                    failed = Some("STARTTLS: the certificate is gone".into());
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if !(progress || consumed || wrote) || c.session.is_closed() || c.eof {
                break;
            }
        }
        let _ = self.writer_out.flush_to(&mut self.writer);
        let Some(c) = self.conns.get(&token) else {
            return;
        };
        let done = (c.session.is_closed() || c.eof) && c.hold_until.is_none();
        if let Some(why) = failed {
            self.close(token, &format!("error: {why}"));
        } else if done && !c.session.waiting_for_commit() && !c.session.waiting_for_auth() {
            let why = if c.session.is_closed() {
                "quit"
            } else {
                "client closed"
            };
            self.close(token, why);
        }
    }

    pub fn close(&mut self, token: usize, why: &str) {
        let Some(mut c) = self.conns.remove(&token) else {
            return;
        };
        if let Some(t) = c.txn.take() {
            self.txns.remove(&t);
            self.writer_out.push(&Record::new(b'A').with_u64(t));
        }
        c.send_close_notify();
        let _ = c.flush();
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.paused.remove(&token);
        self.held.remove(&token);
        self.auth_pending.remove(&token);
        let ip = canonical_ip(c.peer.ip());
        if c.limited
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        log!(
            "session ip={ip} helo={} tls={}{} messages={} rejected_rcpts={} seconds={} end={why}",
            log::quote(c.session.helo.as_deref().unwrap_or("-"), 100),
            c.tls_description(),
            auth_field(&c.session.auth),
            c.session.messages,
            c.session.rejected_rcpts,
            c.started.elapsed().as_secs()
        );
    }

    fn writer_event(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.writer.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::other(
                        "the queue writer exited; stopping so that s6 restarts smtpd",
                    ));
                }
                Ok(n) => self.writer_in.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let timeout = self.timeout();
        while let Some(r) = self.writer_in.next_record()? {
            let txn = r.u64(0)?;
            let Some(token) = self.txns.remove(&txn) else {
                continue;
            };
            let result = match r.kind {
                b'K' => Ok((
                    r.str(1)?.to_string(),
                    r.str(2).map(str::to_string).unwrap_or_default(),
                )),
                _ => Err((
                    r.str(1)?
                        .parse::<i32>()
                        .unwrap_or(ferry_common::status::QUEUE_BUG),
                    r.str(2).unwrap_or("").to_string(),
                )),
            };
            if let Some(c) = self.conns.get_mut(&token) {
                c.txn = None;
                let (sender, rcpts, bytes) = c.session.committed(
                    result
                        .as_ref()
                        .map(|s| s.0.as_str())
                        .map_err(|e| (e.0, e.1.as_str())),
                );
                let res = match &result {
                    Ok((id, summary)) if summary.is_empty() => format!("250 queued id={id}"),
                    Ok((id, summary)) => {
                        format!("250 queued id={id} auth=({})", log::quote(summary, 500))
                    }
                    Err((code, text)) => format!(
                        "{} ({})",
                        ferry_common::status::queue_exit_reply(*code),
                        log::quote(text, 200)
                    ),
                };
                log!(
                    "message ip={} from=<{}> rcpts={rcpts} size={bytes} tls={}{} result={res}",
                    c.peer.ip(),
                    log::quote(&sender, 300),
                    c.tls_description(),
                    auth_field(&c.session.auth)
                );
                c.deadline = Instant::now() + timeout;
                // Pipelined commands that waited for this answer go on now.
                self.conn_event(token);
            }
        }
        self.writer_out.flush_to(&mut self.writer)?;
        if self.writer_out.pending() < WRITER_BACKLOG / 10 && !self.paused.is_empty() {
            let resume: Vec<usize> = self.paused.drain().collect();
            for t in resume {
                self.conn_event(t);
            }
        }
        Ok(())
    }

    /// The password checker's answers: each waiting session gets its reply (a failure after
    /// [`AUTH_DELAY`]).
    fn checker_event(&mut self) -> io::Result<()> {
        let Some(ch) = self.checker.as_mut() else {
            return Ok(());
        };
        let answers = ch.event()?;
        let most = self.policy.cfg.authfailures as usize;
        let timeout = self.timeout();
        for (id, verdict) in answers {
            let token = id as usize;
            let Some(user) = self.auth_pending.remove(&token) else {
                continue;
            };
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            let ip = canonical_ip(c.peer.ip());
            let outcome = match verdict {
                Verdict::Ok(name) => {
                    log!("auth ip={ip} user={} ok", log::quote(&name, 300));
                    AuthOutcome::Ok(name)
                }
                Verdict::Bad => {
                    remember(&mut self.fail_ip, ip, most);
                    remember(&mut self.fail_user, user.to_lowercase(), most);
                    log!(
                        "auth failed ip={ip} user={} reply=535 5.7.8",
                        log::quote(&user, 300)
                    );
                    c.hold_until = Some(Instant::now() + AUTH_DELAY);
                    self.held.insert(token);
                    AuthOutcome::Bad
                }
                Verdict::Temporary => {
                    log!(
                        "auth failed ip={ip} user={} reply=454 4.7.0 (the checker cannot read control/passwords)",
                        log::quote(&user, 300)
                    );
                    AuthOutcome::Temporary
                }
            };
            c.session.auth_result(outcome, &mut Vec::new());
            c.deadline = Instant::now() + timeout;
            self.conn_event(token);
        }
        Ok(())
    }

    /// Closes sessions past their deadline (a client that does not send a full line or take
    /// our reply in `timeoutsmtpd` seconds).
    fn sweep(&mut self) {
        let now = Instant::now();
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now > c.deadline && !c.session.waiting_for_commit())
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(c) = self.conns.get_mut(&t) {
                let mut ev = Vec::new();
                c.session
                    .close_with("4.4.2", "Error: timeout exceeded", &mut ev);
                let _ = c.flush();
            }
            self.close(t, "timeout");
        }
        let _ = self.writer_out.flush_to(&mut self.writer);
    }

    fn reload(&mut self) {
        match Config::load(&self.root) {
            Ok(mut cfg) => {
                // srssecret is readable by root and the group ferry only: smtpd read it
                // before it dropped root, and keeps that key while the file is there.
                if cfg.srs.is_none() && self.root.control_file("srssecret").exists() {
                    cfg.srs = self.policy.cfg.srs.take();
                }
                // The pair as root reads it now (a renewed certificate, a root-only key);
                // sessions already in TLS keep the settings they started with.
                self.tls = match self.keeper.fetch().and_then(|p| {
                    p.map(|(c, k)| crate::tls::server_config(&c, &k))
                        .transpose()
                }) {
                    Ok(t) => t,
                    Err(e) => {
                        log!("reload: {e}; keeping the old TLS settings");
                        self.tls.clone()
                    }
                };
                self.policy.cfg = cfg;
                self.policy.passwd.clear();
                // qwriter's settings (the Received line's `by`, databytes) follow too.
                self.writer_out.push(&Record::new(b'R').with_u64(0));
                let _ = self.writer_out.flush_to(&mut self.writer);
                log!(
                    "control files reloaded; STARTTLS {}",
                    if self.tls.is_some() { "on" } else { "off" }
                );
            }
            Err(e) => log!("reload refused: {e}"),
        }
    }

    /// Stops taking connections; idle sessions get 421, the others finish (at most 10 s).
    fn stop(&mut self) {
        log!("stopping: {} sessions open", self.conns.len());
        self.stopping = Some(Instant::now());
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.session.in_message())
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            if let Some(c) = self.conns.get_mut(&t) {
                let mut ev = Vec::new();
                c.session
                    .close_with("4.3.2", "Service shutting down", &mut ev);
                let _ = c.flush();
            }
            self.close(t, "shutdown");
        }
    }
}

/// ` auth=NAME` for the log lines of an authenticated session.
fn auth_field(auth: &Option<String>) -> String {
    match auth {
        Some(a) => format!(" auth={}", log::quote(a, 300)),
        None => String::new(),
    }
}

/// The flags of a message's `B` record (crates/common/src/writer.rs): verified when it
/// comes to port 25 from a stranger (and ARC-sealed when an alias forwards it to another
/// domain), signed when it comes from a relay client or an authenticated user.
fn message_flags(
    cfg: &ferry_common::config::Config,
    service: Service,
    ip: std::net::IpAddr,
    (smtputf8, requiretls): (bool, bool),
    auth: Option<&str>,
    rcpts: &[String],
) -> String {
    use ferry_common::config::AuthMode;
    let ours = auth.is_some() || cfg.is_relay_client(ip);
    let checks = (cfg.spfpolicy, cfg.dmarcpolicy);
    let verify = service == Service::Smtp && !ours && checks != (AuthMode::Off, AuthMode::Off);
    // Verified mail that an alias forwards to another domain is sealed with ARC, with the
    // key of the (first such) alias's domain.
    let arc = verify
        .then(|| {
            rcpts
                .iter()
                .find(|r| ferry_common::route::forwards_elsewhere(cfg, r))
        })
        .flatten()
        .map(|r| ferry_common::addr::split(r).1.to_lowercase());
    ferry_common::writer::Flags {
        smtputf8,
        requiretls,
        auth: auth.map(str::to_string),
        verify: verify.then_some(checks),
        sign: ours,
        arc,
    }
    .encode()
}
