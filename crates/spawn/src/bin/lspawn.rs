//! lspawn — runs local deliveries for send (root).
//!
//! Started by `start` as root, the only long-lived root process of ferry besides s6. It parses
//! nothing but fixed records from send:
//!
//! - fd 0, from send: `D job msgid where kind name ext sender recipient local domain`
//!   (where `t`: the message is todo/ID, `m`: mess/XX/ID; kind `U`: deliver as the passwd user
//!   `name`; kind `M`: the mailbox `mail/name/`, delivered as ferrym).
//! - fd 1, to send: `R job status text` with status 0, 100 or 111.
//!
//! For each job it opens the message file (only root and ferryq can) and hands the job, with
//! the open file attached (SCM_RIGHTS), to a `local-deliver` worker running as the recipient
//! user. There is one worker per user or mailbox while it has work; it handles many
//! deliveries, and exits when lspawn closes its socket after a few idle seconds. A worker
//! that dies fails its jobs temporarily. lspawn never runs a delivery as root: uid 0 is refused.
//! Exits when send closes fd 0.

use ferry_common::id::MsgId;
use ferry_common::queue::{Queue, QueueFile};
use ferry_common::record::{Reader, Record};
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use ferry_common::{log, status};
use ferry_spawn::{SendLink, result};
use ferry_sys::Cred;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
}

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
                Token(t) => ls.worker_event(t),
            }
        }
        ls.retire_idle();
        ls.send.flush()?;
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
            log!("job {job}: {why}");
            self.send.reply(&result(job, code, &why));
        }
    }

    fn start_job(&mut self, rec: &Record) -> Result<(), (i32, String)> {
        let bad = |e: io::Error| {
            (
                status::Outcome::Temporary.code(),
                format!("bad job record: {e}"),
            )
        };
        if rec.kind != b'D' {
            return Err((111, format!("unknown record {:?}", rec.kind as char)));
        }
        let job = rec.u64(0).map_err(bad)?;
        let id =
            MsgId::parse(rec.str(1).map_err(bad)?).ok_or((111, "bad message id".to_string()))?;
        let path = match rec.bytes(2).map_err(bad)? {
            b"t" => self.queue.todo(&id),
            _ => self.queue.mess(&id),
        };
        let kind = *rec
            .bytes(3)
            .map_err(bad)?
            .first()
            .ok_or((111, "empty kind".to_string()))?;
        let name = rec.str(4).map_err(bad)?.to_string();
        let qf =
            QueueFile::open(&path).map_err(|e| (111, format!("cannot open message {id}: {e}")))?;
        let token = match self.by_key.get(&(kind, name.clone())) {
            Some(t) => *t,
            None => self.spawn(kind, &name)?,
        };
        let mut out = Record::new(b'J').with_u64(job);
        for i in 6..=9 {
            out.push(rec.bytes(i).map_err(bad)?);
        }
        out.push(rec.bytes(5).map_err(bad)?);
        out.push(qf.message_len.to_string());
        let w = self
            .workers
            .get_mut(&token)
            .ok_or((111, "worker vanished".to_string()))?;
        w.out
            .push_back((out.encode(), 0, Some(OwnedFd::from(qf.file))));
        w.jobs.insert(job);
        if let Err(e) = w.flush() {
            return Err((111, format!("cannot hand the job to local-deliver: {e}")));
        }
        Ok(())
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
                (cred, home, false)
            }
            b'M' => {
                let cred = self
                    .mode
                    .cred(users::MAILBOX)
                    .map_err(|e| (111, e.to_string()))?;
                (cred, self.root.mail().join(name), true)
            }
            _ => return Err((111, "unknown delivery kind".into())),
        };
        let (mine, theirs) =
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
            .stderr(Stdio::inherit());
        if self.mode == Mode::Separated {
            ferry_sys::command_as(&mut cmd, &cred);
        }
        let child = cmd
            .spawn()
            .map_err(|e| (111, format!("cannot start local-deliver: {e}")))?;
        mine.set_nonblocking(true)
            .map_err(|e| (111, e.to_string()))?;
        let mut sock = UnixStream::from_std(mine);
        let token = self.next_token;
        self.next_token += 1;
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| (111, e.to_string()))?;
        let key = (kind, name.to_string());
        self.by_key.insert(key.clone(), token);
        self.workers.insert(
            token,
            Worker {
                key,
                pid: child.id(),
                sock,
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
        loop {
            match w.sock.read(&mut buf) {
                Ok(0) => {
                    alive = false;
                    break;
                }
                Ok(n) => w.reader.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    alive = false;
                    break;
                }
            }
        }
        loop {
            match w.reader.next_record() {
                Ok(Some(r)) if r.kind == b'R' => {
                    if let Ok(job) = r.u64(0) {
                        w.jobs.remove(&job);
                        self.send.outbox.push(&Record {
                            kind: b'R',
                            fields: r.fields,
                        });
                    }
                }
                Ok(Some(_)) | Err(_) => {
                    alive = false;
                    break;
                }
                Ok(None) => break,
            }
        }
        if w.jobs.is_empty() {
            w.idle_since = Instant::now();
        }
        if !alive {
            self.drop_worker(token, "local-deliver exited in the middle of a delivery");
        }
    }

    fn drop_worker(&mut self, token: usize, why: &str) {
        if let Some(mut w) = self.workers.remove(&token) {
            let _ = self.poll.registry().deregister(&mut w.sock);
            self.by_key.remove(&w.key);
            for job in w.jobs {
                log!("job {job}: {why} (worker {})", w.pid);
                self.send.reply(&result(job, 111, why));
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
