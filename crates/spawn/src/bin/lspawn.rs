//! lspawn — runs local deliveries for send (root).
//!
//! Started by `start` as root, the only long-lived root process of ferry besides s6. It parses
//! nothing but fixed records from send:
//!
//! - fd 0, from send: `D job msgid where kind name ext sender recipient local domain orig`
//!   (where `t`: the message is todo/ID, `m`: mess/XX/ID; kind `U`: deliver as the passwd user
//!   `name`; kind `M`: the mailbox `mail/name/`, delivered as ferrym; `orig`: the envelope
//!   recipient this one came from through aliases, or empty).
//! - fd 1, to send: `R job status text` with status 0, 100 or 111.
//!
//! Every record from send is checked before anything runs: the fields and their count, the
//! message id, a user name that passwd knows, whose uid is not 0 and who owns their home
//! directory (the rule of route.rs), a valid mailbox name, an extension without `/`, and no
//! control characters anywhere. A bad record fails its job (111; 100 for an impossible
//! extension) and starts nothing.
//!
//! For each job it opens the message file (only root and the ferry group can) and copies the
//! message bytes — not the envelope after them — into a sealed memfd (one copy per message,
//! shared by that message's deliveries while they run). It hands the job, with a read-only
//! descriptor of that copy attached (SCM_RIGHTS), to a `local-deliver` worker running as the
//! recipient user: a worker and its `|programs` can read the message and nothing else of the
//! queue. There is one worker per user or mailbox while it has work; it handles many
//! deliveries, and exits when lspawn closes its socket after a few idle seconds. A worker gets
//! fd 0 (its socket) and fd 2 (a second socket to lspawn, which logs each line it writes
//! prefixed with the worker's user; a socket cannot be reopened through /proc, so a program
//! cannot write into the log through it) and no other descriptor. A result for a job that was
//! not given to that worker ends the worker (its own jobs fail temporarily): a user who took
//! over their worker cannot mark other users' deliveries done or failed. A worker that dies
//! fails its jobs temporarily. lspawn never runs a delivery as root: uid 0 is refused.
//!
//! To a worker: `J job sender recipient local domain ext length msgid orig` with the
//! descriptor attached. A mailbox directory that exists but does not belong to the mailbox
//! user (`mkdir mail/bob` as root) is never changed: its jobs wait (111) with the fix in
//! the text (`chown`), which `ferryctl check` names too; a missing one is created by its
//! worker, as the mailbox user. Every log line about a job names its message id.
//! Exits when send closes fd 0.

use ferry_common::id::MsgId;
use ferry_common::log;
use ferry_common::queue::{Queue, QueueFile};
use ferry_common::record::{Reader, Record};
use ferry_common::root::Root;
use ferry_common::route;
use ferry_common::users::{self, Mode};
use ferry_spawn::{SendLink, result};
use ferry_sys::Cred;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most bytes of results read from one worker in one turn (it owes a few short records).
const MAX_RESULT_BYTES: usize = 256 * 1024;
/// Most bytes of log lines read from one worker in one turn before it is cut off.
const MAX_LOG_BYTES: usize = 64 * 1024;
const FROM_SEND: Token = Token(0);
const TO_SEND: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_WORKER: usize = 16;
const IDLE: Duration = Duration::from_secs(3);

type Key = (u8, String);

struct Worker {
    key: Key,
    pid: u32,
    sock: UnixStream,
    /// The worker's stderr (a socket): lines to log, and the token it is registered with.
    err: Option<(UnixStream, usize)>,
    err_buf: Vec<u8>,
    reader: Reader,
    /// Records not yet fully written, with the descriptor to attach to their first byte.
    out: VecDeque<(Vec<u8>, usize, Option<OwnedFd>)>,
    jobs: HashSet<u64>,
    idle_since: Instant,
}

impl Worker {
    fn flush(&mut self) -> io::Result<()> {
        while let Some((bytes, sent, fd)) = self.out.front_mut() {
            let r = match fd.take() {
                Some(f) => {
                    match ferry_sys::send_with_fd(&self.sock, &bytes[*sent..], f.as_raw_fd()) {
                        Ok(n) => Ok(n),
                        Err(e) => {
                            *fd = Some(f);
                            Err(e)
                        }
                    }
                }
                None => self.sock.write(&bytes[*sent..]),
            };
            match r {
                Ok(n) => {
                    *sent += n;
                    if *sent == bytes.len() {
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

struct Lspawn {
    root: Root,
    queue: Queue,
    mode: Mode,
    poll: Poll,
    send: SendLink,
    workers: HashMap<usize, Worker>,
    by_key: HashMap<Key, usize>,
    next_token: usize,
    /// Stderr tokens → worker tokens.
    err_tokens: HashMap<usize, usize>,
    /// Sealed copies of the messages being delivered, with how many jobs use each.
    copies: HashMap<MsgId, (File, u64, usize)>,
    /// The message of each job handed to a worker.
    job_msg: HashMap<u64, MsgId>,
}

/// Longest log line relayed from a worker; the rest of a longer one is cut.
const MAX_LOG_LINE: usize = 2000;
/// Longest envelope field accepted from send (addresses are at most 1000 bytes or so).
const MAX_FIELD: usize = 4096;

fn main() {
    log::init("lspawn");
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log!("fatal: {e}");
            std::process::exit(111);
        }
    }
}

fn run() -> io::Result<()> {
    let root = Root::from_exe()?;
    let mut ls = Lspawn {
        queue: Queue::new(&root),
        root,
        mode: Mode::current(),
        poll: Poll::new()?,
        send: SendLink::from_stdio()?,
        workers: HashMap::new(),
        by_key: HashMap::new(),
        next_token: FIRST_WORKER,
        err_tokens: HashMap::new(),
        copies: HashMap::new(),
        job_msg: HashMap::new(),
    };
    let mut signals = signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGCHLD,
        signal_hook::consts::SIGTERM,
    ])?;
    ls.poll
        .registry()
        .register(&mut ls.send.rx, FROM_SEND, Interest::READABLE)?;
    ls.poll
        .registry()
        .register(&mut ls.send.tx, TO_SEND, Interest::WRITABLE)?;
    ls.poll
        .registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let mut events = Events::with_capacity(256);
    loop {
        match ls.poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                FROM_SEND => {
                    let open = ls.send.reader.fill_from(&mut ls.send.rx)?;
                    while let Some(rec) = ls.send.reader.next_record()? {
                        ls.job(rec);
                    }
                    if !open {
                        return Ok(());
                    }
                }
                TO_SEND => {}
                SIGNALS => {
                    for sig in signals.pending() {
                        if sig == signal_hook::consts::SIGTERM {
                            return Ok(());
                        }
                    }
                    reap();
                }
                Token(t) => match ls.err_tokens.get(&t) {
                    Some(w) => ls.worker_log(*w),
                    None => ls.worker_event(t),
                },
            }
        }
        ls.retire_idle();
        ls.send.flush()?;
    }
}

/// A user or passwd name as lspawn accepts it from send: letters, digits, `.`, `_`, `-`,
/// not starting with `-`, at most 64 bytes (what useradd allows, and no path or option).
fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Logs one line a worker wrote: `local-deliver[KIND:NAME]: text`, its control characters
/// made visible, so that what a worker writes is always known to come from that worker.
fn relay_line(key: &Key, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_prefix("local-deliver: ").unwrap_or(&text);
    let mut out = format!("local-deliver[{}:{}]: ", key.0 as char, key.1);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c != '\t' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\n');
    let _ = io::stderr().lock().write_all(out.as_bytes());
}

/// A mailbox directory that exists must belong to the mailbox user: one made by hand as
/// root would defer every delivery with "Permission denied". It is not chowned here (a
/// human made it; it may be a mistake): the job waits with the fix.
fn mailbox_owner(dir: &std::path::Path, cred: &Cred) -> Result<(), (i32, String)> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && m.uid() == cred.uid => Ok(()),
        Ok(m) if m.is_dir() => {
            let group = nix::unistd::Group::from_gid(cred.gid.into())
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_else(|| cred.gid.to_string());
            let owner = nix::unistd::User::from_uid(m.uid().into())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {}", m.uid()));
            Err((
                111,
                format!(
                    "mailbox {} belongs to {owner}, not {} (made by hand?): chown -R {}:{group} {} (ferryctl mailbox add makes new ones right)",
                    dir.display(),
                    cred.name,
                    cred.name,
                    dir.display()
                ),
            ))
        }
        Ok(_) => Err((
            111,
            format!(
                "mailbox {} is not a directory: remove it, then ferryctl mailbox add",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err((111, format!("mailbox {}: {e}", dir.display()))),
    }
}

/// Collects exited workers (their jobs were failed when their sockets closed).
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        match st {
            WaitStatus::StillAlive => break,
            WaitStatus::Signaled(pid, sig, _) => log!("worker {pid} killed by {sig:?}"),
            WaitStatus::Exited(pid, code) if code != 0 => log!("worker {pid} exited {code}"),
            _ => {}
        }
    }
}

impl Lspawn {
    fn job(&mut self, rec: Record) {
        let job = rec.u64(0).unwrap_or(0);
        if let Err((code, why)) = self.start_job(&rec) {
            match rec.str(1).ok().and_then(MsgId::parse) {
                Some(id) => log!("{id}: job {job}: {why}"),
                None => log!("job {job}: {why}"),
            }
            self.send.reply(&result(job, code, &why));
        }
    }

    fn start_job(&mut self, rec: &Record) -> Result<(), (i32, String)> {
        let bad = |e: io::Error| (111, format!("bad job record: {e}"));
        if rec.kind != b'D' {
            return Err((111, format!("unknown record {:?}", rec.kind as char)));
        }
        if rec.fields.len() != 11 {
            return Err((111, format!("bad job record: {} fields", rec.fields.len())));
        }
        for (i, f) in rec.fields.iter().enumerate() {
            if f.len() > MAX_FIELD || f.iter().any(|b| *b < 0x20 || *b == 0x7f) {
                return Err((
                    111,
                    format!("bad job record: field {i} is too long or has control characters"),
                ));
            }
        }
        let job = rec.u64(0).map_err(bad)?;
        if self.job_msg.contains_key(&job) {
            return Err((111, format!("bad job record: job {job} is already running")));
        }
        let id =
            MsgId::parse(rec.str(1).map_err(bad)?).ok_or((111, "bad message id".to_string()))?;
        let path = match rec.bytes(2).map_err(bad)? {
            b"t" => self.queue.todo(&id),
            b"m" => self.queue.mess(&id),
            _ => return Err((111, "bad job record: where is neither t nor m".into())),
        };
        let kind = match rec.bytes(3).map_err(bad)? {
            b"U" => b'U',
            b"M" => b'M',
            _ => return Err((111, "bad job record: unknown delivery kind".into())),
        };
        let name = rec.str(4).map_err(bad)?.to_string();
        let ext = rec.str(5).map_err(bad)?;
        for i in 6..=9 {
            rec.str(i).map_err(bad)?;
        }
        if ext.contains('/') {
            return Err((100, format!("5.1.1 no such address: extension {ext:?}")));
        }
        match kind {
            b'M' if !route::is_mailbox_name(&name) => {
                return Err((111, format!("bad job record: {name:?} is no mailbox name")));
            }
            b'U' if !is_user_name(&name) => {
                return Err((111, format!("bad job record: {name:?} is no user name")));
            }
            _ => {}
        }
        let token = match self.by_key.get(&(kind, name.clone())) {
            Some(t) => *t,
            None => self.spawn(kind, &name)?,
        };
        let orig = rec.str(10).map_err(bad)?;
        let copy = self.copy_of(&id, &path)?;
        let mut out = Record::new(b'J').with_u64(job);
        for i in 6..=9 {
            out.push(rec.bytes(i).map_err(bad)?);
        }
        out.push(ext);
        out.push(copy.1.to_string());
        out.push(id.to_string());
        out.push(orig);
        let w = self
            .workers
            .get_mut(&token)
            .ok_or((111, "worker vanished".to_string()))?;
        w.out
            .push_back((out.encode(), 0, Some(OwnedFd::from(copy.0))));
        w.jobs.insert(job);
        self.job_msg.insert(job, id);
        if let Some(c) = self.copies.get_mut(&id) {
            c.2 += 1;
        }
        if let Err(e) = w.flush() {
            // Answered here (111) once: the job is no longer the worker's.
            w.jobs.remove(&job);
            self.release(job);
            return Err((111, format!("cannot hand the job to local-deliver: {e}")));
        }
        Ok(())
    }

    /// A read-only descriptor of the sealed copy of message `id` (made from `path` if no
    /// delivery of it runs), and the message length.
    fn copy_of(
        &mut self,
        id: &MsgId,
        path: &std::path::Path,
    ) -> Result<(File, u64), (i32, String)> {
        if !self.copies.contains_key(id) {
            let qf = QueueFile::open_strict(path)
                .map_err(|e| (111, format!("cannot open message {id}: {e}")))?;
            let mem = ferry_sys::sealed_copy(&qf.file, &qf.message_ranges())
                .map_err(|e| (111, format!("cannot copy message {id}: {e}")))?;
            self.copies.insert(*id, (mem, qf.message_len, 0));
        }
        let (mem, len, _) = self
            .copies
            .get(id)
            .ok_or((111, "copy vanished".to_string()))?;
        // A descriptor of its own, opened read-only (the memfd itself is read-write, sealed).
        let ro = File::open(format!("/proc/self/fd/{}", mem.as_raw_fd()))
            .map_err(|e| (111, format!("cannot reopen the copy of {id}: {e}")))?;
        Ok((ro, *len))
    }

    /// A job has its result: its message copy goes when no other job uses it.
    fn release(&mut self, job: u64) {
        if let Some(id) = self.job_msg.remove(&job)
            && let Some(c) = self.copies.get_mut(&id)
        {
            c.2 = c.2.saturating_sub(1);
            if c.2 == 0 {
                self.copies.remove(&id);
            }
        }
    }

    /// Starts a local-deliver worker for a user (`U`) or a mailbox (`M`).
    fn spawn(&mut self, kind: u8, name: &str) -> Result<usize, (i32, String)> {
        let (cred, home, create) = match kind {
            b'U' => {
                let cred = match self.mode {
                    Mode::Separated => Cred::lookup(name)
                        .map_err(|e| (111, format!("passwd lookup of {name}: {e}")))?,
                    Mode::SingleUser => Some(Cred::current()).filter(|c| c.name == name),
                }
                .ok_or((100, format!("no such user: {name}")))?;
                if cred.uid == 0 {
                    return Err((
                        100,
                        "refusing to deliver as root: add an alias for root".into(),
                    ));
                }
                let home = cred.home.clone();
                // The rule of route.rs: only users who own their home directory get mail.
                match std::fs::metadata(&home) {
                    Ok(m) if m.is_dir() && m.uid() == cred.uid => {}
                    Ok(_) => {
                        return Err((
                            100,
                            format!("{name} does not own the home directory {}", home.display()),
                        ));
                    }
                    Err(e) => return Err((111, format!("home directory of {name}: {e}"))),
                }
                (cred, home, false)
            }
            b'M' => {
                let cred = self
                    .mode
                    .cred(users::MAILBOX)
                    .map_err(|e| (111, e.to_string()))?;
                let dir = self.root.mail().join(name);
                mailbox_owner(&dir, &cred)?;
                (cred, dir, true)
            }
            _ => return Err((111, "unknown delivery kind".into())),
        };
        let (mine, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| (111, e.to_string()))?;
        let (err_mine, err_theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| (111, e.to_string()))?;
        let mut cmd = Command::new(self.root.bin("local-deliver"));
        cmd.arg(&home)
            .arg(if create { "create" } else { "existing" })
            .env_clear()
            .env("HOME", &home)
            .env("USER", &cred.name)
            .env("LOGNAME", &cred.name)
            .env("SHELL", "/bin/sh")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(OwnedFd::from(err_theirs)));
        ferry_sys::command_close_from(&mut cmd, 3);
        if self.mode == Mode::Separated {
            ferry_sys::command_as(&mut cmd, &cred);
        }
        let child = cmd
            .spawn()
            .map_err(|e| (111, format!("cannot start local-deliver: {e}")))?;
        drop(cmd);
        mine.set_nonblocking(true)
            .map_err(|e| (111, e.to_string()))?;
        err_mine
            .set_nonblocking(true)
            .map_err(|e| (111, e.to_string()))?;
        let mut sock = UnixStream::from_std(mine);
        let mut err = UnixStream::from_std(err_mine);
        let token = self.next_token;
        self.next_token += 2;
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| (111, e.to_string()))?;
        let err =
            match self
                .poll
                .registry()
                .register(&mut err, Token(token + 1), Interest::READABLE)
            {
                Ok(()) => {
                    self.err_tokens.insert(token + 1, token);
                    Some((err, token + 1))
                }
                Err(e) => {
                    log!("cannot watch the log of worker {}: {e}", child.id());
                    None
                }
            };
        let key = (kind, name.to_string());
        self.by_key.insert(key.clone(), token);
        self.workers.insert(
            token,
            Worker {
                key,
                pid: child.id(),
                sock,
                err,
                err_buf: Vec::new(),
                reader: Reader::new(),
                out: VecDeque::new(),
                jobs: HashSet::new(),
                idle_since: Instant::now(),
            },
        );
        Ok(token)
    }

    fn worker_event(&mut self, token: usize) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        let mut alive = w.flush().is_ok();
        let mut buf = [0u8; 16 * 1024];
        let mut taken = 0usize;
        let mut why = "local-deliver exited in the middle of a delivery";
        loop {
            // A worker owes a few short results: one that sends more in one go is not ours
            // any more (and must not keep root reading and buffering).
            if taken > MAX_RESULT_BYTES {
                why = "local-deliver sent more than the results it owes";
                alive = false;
                break;
            }
            match w.sock.read(&mut buf) {
                Ok(0) => {
                    alive = false;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    w.reader.feed(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    alive = false;
                    break;
                }
            }
        }
        let mut done = Vec::new();
        loop {
            match w.reader.next_record() {
                // Only a result for a job this worker was given, once, in the form send
                // expects: anything else means the worker is not ours any more.
                Ok(Some(r))
                    if r.kind == b'R'
                        && r.fields.len() == 3
                        && r.u64(0).is_ok_and(|j| w.jobs.contains(&j))
                        && r.str(1).is_ok_and(|c| matches!(c, "0" | "100" | "111")) =>
                {
                    let job = r.u64(0).unwrap_or(0);
                    w.jobs.remove(&job);
                    done.push(job);
                    self.send.outbox.push(&Record {
                        kind: b'R',
                        fields: r.fields,
                    });
                }
                Ok(Some(r)) => {
                    log!(
                        "worker {} ({}) sent a record that is not a result of one of its jobs (kind {:?}, job {:?}): stopping it",
                        w.pid,
                        w.key.1,
                        r.kind as char,
                        r.str(0).unwrap_or("?")
                    );
                    why = "local-deliver broke its protocol";
                    alive = false;
                    break;
                }
                Err(_) => {
                    alive = false;
                    break;
                }
                Ok(None) => break,
            }
        }
        if w.jobs.is_empty() {
            w.idle_since = Instant::now();
        }
        for job in done {
            self.release(job);
        }
        if !alive {
            self.drop_worker(token, why);
        }
    }

    /// Lines the worker wrote on stderr: logged with its user, one line each.
    fn worker_log(&mut self, token: usize) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        let Some((err, _)) = w.err.as_mut() else {
            return;
        };
        let mut buf = [0u8; 8192];
        let mut closed = false;
        let mut taken = 0usize;
        loop {
            // A worker logs a line or two per delivery: one that floods is cut off, so that
            // root never spends its turn writing somebody's log.
            if taken > MAX_LOG_BYTES {
                log!(
                    "worker {} ({}) floods its log: no more of its lines are logged",
                    w.pid,
                    w.key.1
                );
                closed = true;
                break;
            }
            match err.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            relay_line(&w.key, &w.err_buf);
                            w.err_buf.clear();
                        } else if w.err_buf.len() < MAX_LOG_LINE {
                            w.err_buf.push(b);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            if !w.err_buf.is_empty() {
                relay_line(&w.key, &w.err_buf);
                w.err_buf.clear();
            }
            if let Some((mut e, t)) = w.err.take() {
                let _ = self.poll.registry().deregister(&mut e);
                self.err_tokens.remove(&t);
            }
        }
    }

    fn drop_worker(&mut self, token: usize, why: &str) {
        if let Some(mut w) = self.workers.remove(&token) {
            let _ = self.poll.registry().deregister(&mut w.sock);
            if let Some((mut e, t)) = w.err.take() {
                // What it writes after this is not logged (it has nothing left to do).
                let _ = self.poll.registry().deregister(&mut e);
                self.err_tokens.remove(&t);
            }
            self.by_key.remove(&w.key);
            for job in w.jobs {
                match self.job_msg.get(&job) {
                    Some(id) => log!("{id}: job {job}: {why} (worker {})", w.pid),
                    None => log!("job {job}: {why} (worker {})", w.pid),
                }
                self.send.reply(&result(job, 111, why));
                self.release(job);
            }
        }
    }

    fn retire_idle(&mut self) {
        let idle: Vec<usize> = self
            .workers
            .iter()
            .filter(|(_, w)| w.jobs.is_empty() && w.out.is_empty() && w.idle_since.elapsed() > IDLE)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            self.drop_worker(t, "");
        }
    }
}
