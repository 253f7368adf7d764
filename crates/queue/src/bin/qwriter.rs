//! qwriter — the queue writer of smtpd (runs as ferryq).
//!
//! Started by smtpd (as root, before it drops to ferryd) with fd 0 a Unix stream socket; lives
//! as long as smtpd. Speaks the protocol of crates/common/src/writer.rs: many sessions'
//! messages arrive interleaved as `B`/`N`/`C`/`E`/`A` records; each is streamed into its own
//! tmp/ID as it comes (memory stays bounded), and every message completed (`E`) by the time
//! the input runs dry — or at the latest `writer::MAX_COMMIT_WAIT` after the first of them
//! completed, so that a steady stream cannot defer commits — is committed in one batch — one
//! syncfs, the todo/ links, one fsync of todo/ — before any of them is confirmed with
//! `K txn id`. Input is read at most [`READ_TURN`] bytes per turn. Failures are
//! `F txn code text` with a `queue` exit code. The envelope keeps the SMTPUTF8 flag of `B`.
//! A message with flag `verify` goes to authverify (fd 3) at `E` and is committed with the
//! head of its verdict on top; with `arc=DOMAIN` too (an alias forwards it to another domain)
//! that head gets an ARC set of authverify's results, sealed with DOMAIN's RSA key; with
//! `sign`, DKIM-Signatures. Keys are read at start and on `R`.
//! Reads `databytes` (the body limit; the Received line it adds is not counted, as smtpd does
//! not count it) and `me` at start and again on `R` (smtpd sends it when it reloads). Exits when smtpd closes the socket (after committing what is
//! complete) or on a broken record (111).

use ferry_auth::arc::Sealer;
use ferry_auth::sign::Signer;
use ferry_common::envelope::{self, Envelope};
use ferry_common::queue::{self, Incoming, Prepared, Queue, QueueError};
use ferry_common::record::{self, Outbox, Reader, Record};
use ferry_common::root::Root;
use ferry_common::{control, date, log, rfc5322, status, writer};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Most bytes read from smtpd before the records are handled and a commit is considered.
const READ_TURN: usize = 1 << 20;

struct Open {
    msg: Incoming,
    env: Envelope,
    /// Verify it (authverify): spfpolicy, dmarcpolicy.
    verify: bool,
    /// DKIM-sign it.
    sign: bool,
    /// ARC-seal it once verified, with the key of this domain (an alias forwards it there).
    arc: Option<String>,
}

struct Writer {
    root: Root,
    queue: Queue,
    limit: u64,
    me: String,
    open: HashMap<u64, Open>,
    /// Transactions that failed before their `E`: the failure is reported at `E`.
    failed: HashMap<u64, QueueError>,
    /// Each with the verification's summary for smtpd's log (empty if not verified).
    batch: Vec<(u64, Prepared, String)>,
    /// When the oldest message of `batch` completed.
    batch_since: Option<Instant>,
    out: Outbox,
    /// authverify, on fd 3 (port 25 only; blocking: its records are small and it always
    /// reads), and what it has sent.
    verifier: Option<UnixStream>,
    verifier_in: Reader,
    /// Messages complete and sent to authverify, waiting for its verdict.
    verifying: HashMap<u64, Open>,
    signer: Signer,
    sealer: Sealer,
}

fn main() {
    log::init("qwriter");
    ferry_sys::no_core_dumps();
    ferry_sys::set_umask(0o022);
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log!("fatal: {e}");
            std::process::exit(111);
        }
    }
}

/// The settings qwriter uses: `databytes` and `me` (read at start and on smtpd's `R`).
fn settings(root: &Root) -> io::Result<(u64, String)> {
    let dir = root.control();
    let limit = control::read_number(&dir, "databytes", 26_214_400)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let me = control::read_text(&dir, "me")
        .map_err(|e| io::Error::other(e.to_string()))?
        .unwrap_or_else(ferry_sys::hostname);
    Ok((limit, me))
}

/// The DKIM keys (control/dkim); problems are logged, the other keys still sign.
fn load_signer(root: &Root) -> Signer {
    let (signer, problems) = Signer::load(&root.control());
    for p in problems {
        log!("DKIM key not used: {p}");
    }
    signer
}

fn run() -> io::Result<()> {
    let root = Root::from_exe()?;
    let (limit, me) = settings(&root)?;
    ferry_sys::raise_nofile(65_536);
    let mut sock = UnixStream::from(
        ferry_sys::take_fd(0).ok_or_else(|| io::Error::other("fd 0 is not open"))?,
    );
    sock.set_nonblocking(true)?;
    let mut w = Writer {
        root: root.clone(),
        queue: Queue::new(&root),
        limit,
        me,
        open: HashMap::new(),
        failed: HashMap::new(),
        batch: Vec::new(),
        batch_since: None,
        out: Outbox::default(),
        verifier: ferry_sys::take_fd(3).map(UnixStream::from),
        verifier_in: Reader::new(),
        verifying: HashMap::new(),
        signer: load_signer(&root),
        sealer: Sealer::load(&root.control()),
    };
    let mut reader = Reader::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut eof = false;
    loop {
        // Block only when nothing is waiting to be committed or sent.
        let idle = w.batch.is_empty() && w.out.is_empty();
        if !eof {
            let mut flags = PollFlags::POLLIN;
            if !w.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            let timeout = if idle {
                PollTimeout::NONE
            } else {
                PollTimeout::ZERO
            };
            let verdicts_waiting = match &w.verifier {
                Some(v) => {
                    let mut fds = [
                        PollFd::new(sock.as_fd(), flags),
                        PollFd::new(v.as_fd(), PollFlags::POLLIN),
                    ];
                    match poll(&mut fds, timeout) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                    fds[1].revents().is_some_and(|r| !r.is_empty())
                }
                None => {
                    let mut fds = [PollFd::new(sock.as_fd(), flags)];
                    match poll(&mut fds, timeout) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                    false
                }
            };
            if verdicts_waiting {
                w.read_verdicts()?;
            }
        }
        let mut got = 0;
        while !eof && got < READ_TURN {
            match sock.read(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) => {
                    reader.feed(&buf[..n]);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while let Some(rec) = reader.next_record()? {
            w.handle(rec)?;
        }
        // The input ran dry, or the oldest complete message has waited long enough: commit
        // what is complete, as one batch.
        let overdue = w
            .batch_since
            .is_some_and(|t| t.elapsed() >= writer::MAX_COMMIT_WAIT);
        if (got == 0 || overdue) && !w.batch.is_empty() {
            w.commit();
        }
        if let Err(e) = w.out.flush_to(&mut sock) {
            return Err(io::Error::other(format!("smtpd went away: {e}")));
        }
        if eof {
            w.commit();
            let _ = sock.set_nonblocking(false);
            let _ = w.out.flush_to(&mut sock);
            return Ok(());
        }
    }
}

impl Writer {
    fn handle(&mut self, r: Record) -> io::Result<()> {
        let txn = r.u64(0)?;
        match r.kind {
            b'B' => {
                let (helo, ip, proto, tls) = (r.str(1)?, r.str(2)?, r.str(3)?, r.str(4)?);
                let flags = writer::Flags::parse(r.str(5)?);
                let (smtputf8, auth) = (flags.smtputf8, flags.auth.as_deref());
                let sender = r.str(6)?.to_string();
                let mut rcpts = Vec::with_capacity(r.fields.len().saturating_sub(7));
                for i in 7..r.fields.len() {
                    rcpts.push(r.str(i)?.to_string());
                }
                let env = Envelope {
                    sender,
                    recipients: rcpts,
                    smtputf8,
                    requiretls: flags.requiretls,
                    dsn: Default::default(),
                };
                // The envelope is checked now, so that a bad one never gets as far as a file.
                if let Err(e) = Envelope::parse(&env.encode()) {
                    let code = if matches!(e, envelope::EnvelopeError::BadAddress(_)) {
                        status::QUEUE_BAD_ADDRESS
                    } else {
                        status::QUEUE_BAD_ENVELOPE
                    };
                    self.failed
                        .insert(txn, QueueError::new(code, e.to_string()));
                    return Ok(());
                }
                // smtpd counted the body against databytes; the Received line is extra.
                match self.queue.begin(self.limit) {
                    Ok(mut msg) => {
                        let id = msg.id().to_string();
                        let one = (env.recipients.len() == 1).then(|| env.recipients[0].as_str());
                        let line = writer::Received {
                            helo,
                            ip,
                            by: &self.me,
                            protocol: proto,
                            tls,
                            auth,
                            id: &id,
                            rcpt: one,
                            now: date::now_secs(),
                        }
                        .line();
                        match msg.write_added(line.as_bytes()) {
                            Ok(()) => {
                                let client_ip = ip.parse::<std::net::IpAddr>().is_ok();
                                let verify = match (flags.verify, &mut self.verifier) {
                                    (Some((spf, dmarc)), Some(v)) if client_ip => {
                                        let start = Record::new(b'S')
                                            .with_u64(txn)
                                            .with(ip)
                                            .with(helo)
                                            .with(&env.sender)
                                            .with(spf.name())
                                            .with(dmarc.name())
                                            .with(&self.me);
                                        record::write_blocking(v, &start).map_err(|e| {
                                            io::Error::other(format!("authverify went away: {e}"))
                                        })?;
                                        true
                                    }
                                    _ => false,
                                };
                                self.open.insert(
                                    txn,
                                    Open {
                                        msg,
                                        env,
                                        verify,
                                        sign: flags.sign,
                                        arc: flags.arc,
                                    },
                                );
                            }
                            Err(e) => {
                                self.failed.insert(txn, e);
                            }
                        }
                    }
                    Err(e) => {
                        log!("cannot start a message: {e}");
                        self.failed.insert(txn, e);
                    }
                }
            }
            // The DSN parameters of the message begun by `B`; checked as part of the envelope.
            b'N' => {
                let dsn = writer::parse_dsn_record(&r)?;
                if let Some(o) = self.open.get_mut(&txn) {
                    let mut env = o.env.clone();
                    env.dsn = dsn;
                    match Envelope::parse(&env.encode()) {
                        Ok(_) if env.dsn.rcpts.len() <= env.recipients.len() => o.env = env,
                        _ => {
                            self.open.remove(&txn);
                            self.failed.insert(
                                txn,
                                QueueError::new(status::QUEUE_BAD_ENVELOPE, "bad DSN parameters"),
                            );
                        }
                    }
                }
            }
            b'C' => {
                if let Some(o) = self.open.get_mut(&txn)
                    && let Err(e) = o.msg.write(r.bytes(1)?)
                {
                    log!("cannot write a message: {e}");
                    self.open.remove(&txn);
                    self.failed.insert(txn, e);
                }
            }
            b'E' => {
                if let Some(e) = self.failed.remove(&txn) {
                    self.reply_failure(txn, &e);
                } else if let Some(o) = self.open.remove(&txn) {
                    if o.verify {
                        self.send_to_verifier(txn, o)?;
                    } else {
                        let mut o = o;
                        let head = if o.sign {
                            self.sign(&mut o)
                        } else {
                            Vec::new()
                        };
                        self.finish(txn, o, &head, String::new());
                    }
                } else {
                    self.reply_failure(
                        txn,
                        &QueueError::new(status::QUEUE_BUG, "no such transaction"),
                    );
                }
            }
            b'A' => {
                if let Some(o) = self.open.remove(&txn)
                    && o.verify
                    && let Some(v) = &mut self.verifier
                {
                    record::write_blocking(v, &Record::new(b'A').with_u64(txn))
                        .map_err(|e| io::Error::other(format!("authverify went away: {e}")))?;
                }
                // A verdict still to come for it finds nothing and is dropped.
                self.verifying.remove(&txn);
                self.failed.remove(&txn);
            }
            // smtpd was told to reload: messages begun from now on use the new settings.
            b'R' => match settings(&self.root) {
                Ok((limit, me)) => {
                    self.limit = limit;
                    self.me = me;
                    self.signer = load_signer(&self.root);
                    self.sealer = Sealer::load(&self.root.control());
                    log!("control files reloaded (me {}, databytes {limit})", self.me);
                }
                Err(e) => log!("reload refused: {e}; keeping the old settings"),
            },
            other => {
                return Err(io::Error::other(format!(
                    "unknown record {:?} from smtpd",
                    other as char
                )));
            }
        }
        Ok(())
    }

    /// Adds `head` on top and puts the message into the next commit.
    fn finish(&mut self, txn: u64, o: Open, head: &[u8], summary: String) {
        match o.msg.finish_with_head(head, &o.env) {
            Ok(p) => {
                if self.batch.is_empty() {
                    self.batch_since = Some(Instant::now());
                }
                self.batch.push((txn, p, summary));
            }
            Err(e) => self.reply_failure(txn, &e),
        }
    }

    /// The DKIM-Signature fields of a complete message (none if its From domain has no key).
    fn sign(&self, o: &mut Open) -> Vec<u8> {
        if self.signer.is_empty() {
            return Vec::new();
        }
        if let Err(e) = o.msg.flush() {
            log!("cannot sign a message: {e}; it goes unsigned");
            return Vec::new();
        }
        let (head, problem) = self.signer.sign_file(o.msg.path(), o.msg.bytes());
        if let Some(p) = problem {
            log!("{p}; it goes unsigned");
        }
        head
    }

    /// The ARC set of a verified message that an alias forwards to another domain: the
    /// results authverify put in `head`, sealed with the key of `domain`. None when the key
    /// or the results are missing, or the chain did not pass (logged).
    fn seal(&self, o: &Open, head: &[u8], domain: &str) -> Vec<u8> {
        if self.sealer.is_empty() {
            return Vec::new();
        }
        match self
            .sealer
            .seal_file(head, o.msg.path(), o.msg.bytes(), 0, &self.me, domain)
        {
            Ok(set) => set,
            Err(ferry_auth::arc::NotSealed::NoResults) => Vec::new(),
            Err(why) => {
                log!("forwarded without an ARC set: {why}");
                Vec::new()
            }
        }
    }

    /// Gives authverify a read-only descriptor of the complete message.
    fn send_to_verifier(&mut self, txn: u64, mut o: Open) -> io::Result<()> {
        let Some(v) = &self.verifier else {
            let head = Vec::new();
            self.finish(txn, o, &head, String::new());
            return Ok(());
        };
        if let Err(e) = o.msg.flush() {
            self.reply_failure(txn, &e);
            return Ok(());
        }
        let file = match std::fs::File::open(o.msg.path()) {
            Ok(f) => f,
            Err(e) => {
                self.reply_failure(
                    txn,
                    &QueueError::new(status::QUEUE_WRITE_ERROR, format!("cannot reopen: {e}")),
                );
                return Ok(());
            }
        };
        let rec = Record::new(b'V')
            .with_u64(txn)
            .with_u64(o.msg.bytes())
            .encode();
        let sent = ferry_sys::send_with_fd(v, &rec, file.as_raw_fd())
            .and_then(|n| (&*v).write_all(&rec[n..]));
        sent.map_err(|e| io::Error::other(format!("authverify went away: {e}")))?;
        self.verifying.insert(txn, o);
        Ok(())
    }

    /// Reads what authverify has sent (poll said it has something), and acts on each verdict.
    fn read_verdicts(&mut self) -> io::Result<()> {
        let Some(v) = &mut self.verifier else {
            return Ok(());
        };
        let mut buf = vec![0u8; 64 * 1024];
        let n = match v.read(&mut buf) {
            Ok(0) => return Err(io::Error::other("authverify exited")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(io::Error::other(format!("authverify: {e}"))),
        };
        self.verifier_in.feed(&buf[..n]);
        while let Some(r) = self.verifier_in.next_record()? {
            if r.kind != b'v' {
                return Err(io::Error::other("unknown record from authverify"));
            }
            let txn = r.u64(0)?;
            let Some(o) = self.verifying.remove(&txn) else {
                continue;
            };
            let (action, head, summary) = (r.str(1)?, r.bytes(2)?, r.str(3)?);
            let reply = format!("{} {} {}", r.str(4)?, r.str(5)?, r.str(6)?);
            match action {
                // Only header fields go on top of a message, whatever authverify says.
                "accept" | "quarantine" if !rfc5322::is_field_block(head, 64 * 1024) => {
                    log!("authverify sent a head that is not header fields; message not queued");
                    self.reply_failure(
                        txn,
                        &QueueError::new(status::QUEUE_BUG, "bad verdict from authverify"),
                    );
                }
                "accept" | "quarantine" => {
                    let mut head = head.to_vec();
                    if let Some(domain) = &o.arc {
                        head.splice(0..0, self.seal(&o, &head, domain));
                    }
                    self.finish(txn, o, &head, summary.to_string());
                }
                "refuse" => {
                    self.reply_failure(txn, &QueueError::new(status::QUEUE_AUTH_REFUSED, reply))
                }
                _ => self.reply_failure(txn, &QueueError::new(status::QUEUE_AUTH_DEFERRED, reply)),
            }
        }
        Ok(())
    }

    fn reply_failure(&mut self, txn: u64, e: &QueueError) {
        self.out.push(
            &Record::new(b'F')
                .with_u64(txn)
                .with(e.code.to_string())
                .with(&e.message),
        );
    }

    fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch_since = None;
        let mut txns = Vec::with_capacity(self.batch.len());
        let mut prepared = Vec::with_capacity(self.batch.len());
        for (txn, p, summary) in std::mem::take(&mut self.batch) {
            txns.push((txn, summary));
            prepared.push(p);
        }
        for ((txn, summary), r) in txns.into_iter().zip(queue::commit(&self.queue, prepared)) {
            match r {
                Ok(id) => {
                    let mut k = Record::new(b'K').with_u64(txn).with(id.to_string());
                    if !summary.is_empty() {
                        k.push(summary);
                    }
                    self.out.push(&k);
                }
                Err(e) => {
                    log!("commit failed: {e}");
                    self.reply_failure(txn, &e);
                }
            }
        }
    }
}
