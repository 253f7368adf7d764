//! inject — the local injection service: queues the messages of `sendmail` without starting a
//! `queue` process for each (the service `inject`, run as ferryq).
//!
//! Usage: `inject [READY-FD]` (from service/inject/run, as root: it drops to ferryq at once;
//! or as a normal user in single-user mode). Writes a newline to READY-FD once it listens.
//!
//! Listens on ROOT/inject/socket (a Unix stream socket, mode 0666 in a directory 0755: every
//! local user may connect, as every user may run the setuid `queue`). The protocol, in the
//! records of crates/common/src/record.rs (docs/INTERNALS.md):
//! - server: `H` (ready) at once, or `B` (busy: [`MAX_CLIENTS`] connections, or
//!   [`MAX_PER_UID`] of this uid) and it closes; the client then runs `queue` itself
//!   (crates/common/src/inject.rs), having sent nothing.
//! - client: `E envelope` (queue's envelope bytes, crates/common/src/envelope.rs), then the
//!   message (LF line ends) in `D bytes` records of at most 64 KiB, then `.`.
//! - server: `K id` once the message and its todo/ entry are durable, or `F code text` with
//!   `queue`'s exit code (crates/common/src/status.rs); then it closes. A refusal (bad
//!   envelope, too big, too many Received lines) is only sent after the `.`: the rest of the
//!   message is read and dropped, so that the client always reads the verdict.
//! - A connection that ends without `.` (the client died) or is idle for [`IDLE`] queues
//!   nothing: its tmp/ file is removed. A broken record ends the connection the same way.
//!
//! Each message gets `queue`'s line, `Received: (ferry PID invoked by uid UID); DATE`, with
//! the pid and uid the kernel gives for the peer (SO_PEERCRED: they cannot be forged), and
//! DKIM-Signatures of its From domain as `queue` adds them. The same limits apply:
//! `databytes`, `maxhops`. Settings and DKIM keys are read at start and on HUP (`ferryctl
//! reload`; the log says `control files reloaded` or `reload refused`).
//!
//! One thread per connection reads and writes the message; one committing thread commits every
//! message completed while the previous commit synced, as one batch (queue::commit: one
//! sync, the todo/ links, one fsync of todo/), so concurrent sendmails share their syncs.
//! A log line per message: `queued ID uid UID pid PID from <SENDER> N recipients B bytes`.

use ferry_auth::sign::Signer;
use ferry_common::envelope::{Envelope, EnvelopeError};
use ferry_common::hops::HopCounter;
use ferry_common::id::MsgId;
use ferry_common::queue::{self, Prepared, Queue, QueueError};
use ferry_common::record::{self, Record};
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use ferry_common::{control, date, inject, log, status};
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Connections served at once; more are told `B` (the client runs `queue`).
const MAX_CLIENTS: usize = 64;
/// Connections of one uid at once: no user can take every slot.
const MAX_PER_UID: usize = 8;
/// A client silent this long is dropped (its message is not queued).
const IDLE: Duration = Duration::from_secs(600);
/// Largest record read from a client: a `D` of [`inject::CHUNK`] bytes, or an `E`.
const MAX_CLIENT_RECORD: usize = inject::CHUNK + 64 * 1024;

struct Settings {
    limit: u64,
    maxhops: u64,
    signer: Signer,
}

type Verdict = Result<MsgId, QueueError>;

struct Shared {
    queue: Queue,
    settings: RwLock<Arc<Settings>>,
    /// Connections per uid.
    clients: Mutex<HashMap<u32, usize>>,
    commits: Mutex<Sender<(Prepared, Sender<Verdict>)>>,
}

fn main() {
    log::init("inject");
    ferry_sys::no_core_dumps();
    ferry_sys::set_umask(0o022);
    let err = run().err().map(|e| e.to_string()).unwrap_or_default();
    log!("fatal: {err}");
    std::process::exit(111);
}

fn load_settings(root: &Root) -> Result<Settings, String> {
    let dir = root.control();
    let limit = control::read_number(&dir, "databytes", 26_214_400).map_err(|e| e.to_string())?;
    let maxhops = control::read_number(&dir, "maxhops", 100)
        .map_err(|e| e.to_string())?
        .max(1);
    let (signer, problems) = Signer::load(&dir);
    for p in problems {
        log!("reload: DKIM key not used: {p}");
    }
    Ok(Settings {
        limit,
        maxhops,
        signer,
    })
}

fn run() -> io::Result<()> {
    let root = Root::from_exe()?;
    let mode = Mode::current();
    if mode == Mode::Separated {
        ferry_sys::drop_privileges(&mode.cred(users::QUEUE)?)?;
    }
    let settings = load_settings(&root).map_err(io::Error::other)?;
    // HUP is taken by its own thread (sigwait); every thread inherits the mask.
    let mut hup = nix::sys::signal::SigSet::empty();
    hup.add(nix::sys::signal::Signal::SIGHUP);
    hup.thread_block().map_err(io::Error::from)?;

    let path = root.inject_socket();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;

    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        queue: Queue::new(&root),
        settings: RwLock::new(Arc::new(settings)),
        clients: Mutex::new(HashMap::new()),
        commits: Mutex::new(tx),
    });
    let q = shared.queue.clone();
    std::thread::Builder::new()
        .name("commit".into())
        .spawn(move || committer(&q, &rx))?;
    let (s, r) = (shared.clone(), root.clone());
    std::thread::Builder::new()
        .name("hup".into())
        .spawn(move || reloader(&r, &s, hup))?;

    log!("listening on {}", path.display());
    if let Some(fd) = std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        ferry_sys::notify_ready(fd);
    }
    loop {
        let (conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Ok(cred) =
            nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        else {
            continue;
        };
        let (uid, pid) = (cred.uid(), cred.pid());
        if !admit(&shared, uid) {
            let _ = (&conn).write_all(&Record::new(b'B').encode());
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            serve(conn, uid, pid, &s);
            leave(&s, uid);
        });
        if let Err(e) = spawned {
            log!("cannot start a thread: {e}");
            leave(&shared, uid);
        }
    }
}

/// Takes a connection slot for `uid`, if one is free.
fn admit(shared: &Shared, uid: u32) -> bool {
    let mut c = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
    let total: usize = c.values().sum();
    let mine = c.entry(uid).or_insert(0);
    if total >= MAX_CLIENTS || *mine >= MAX_PER_UID {
        return false;
    }
    *mine += 1;
    true
}

fn leave(shared: &Shared, uid: u32) {
    let mut c = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = c.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            c.remove(&uid);
        }
    }
}

/// Commits what the connections have completed, in batches: all that is waiting.
fn committer(queue: &Queue, rx: &Receiver<(Prepared, Sender<Verdict>)>) {
    while let Ok(first) = rx.recv() {
        let mut prepared = vec![first.0];
        let mut replies = vec![first.1];
        while let Ok((p, r)) = rx.try_recv() {
            prepared.push(p);
            replies.push(r);
        }
        for (verdict, reply) in queue::commit(queue, prepared).into_iter().zip(replies) {
            if let Err(e) = &verdict {
                log!("commit failed: {e}");
            }
            let _ = reply.send(verdict);
        }
    }
}

/// Re-reads the settings on every HUP; a broken control file keeps the old ones.
fn reloader(root: &Root, shared: &Shared, hup: nix::sys::signal::SigSet) {
    while hup.wait().is_ok() {
        match load_settings(root) {
            Ok(s) => {
                log!(
                    "control files reloaded (databytes {}, maxhops {})",
                    s.limit,
                    s.maxhops
                );
                *shared.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
            }
            Err(e) => log!("reload refused: {e}; keeping the old settings"),
        }
    }
}

fn serve(mut conn: UnixStream, uid: u32, pid: i32, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(IDLE));
    let _ = conn.set_write_timeout(Some(IDLE));
    if record::write_blocking(&mut conn, &Record::new(b'H')).is_err() {
        return;
    }
    let settings = shared
        .settings
        .read()
        .map(|s| s.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let reply = match receive(&mut conn, uid, pid, shared, &settings) {
        Ok(Some((id, env, bytes))) => {
            log!(
                "queued {id} uid {uid} pid {pid} from <{}> {} recipients {bytes} bytes",
                log::quote(&env.sender, 200),
                env.recipients.len()
            );
            Record::new(b'K').with(id.to_string())
        }
        Ok(None) => return,
        Err(e) => {
            log!("not queued (uid {uid} pid {pid}): {}", e.message);
            Record::new(b'F').with(e.code.to_string()).with(&e.message)
        }
    };
    let _ = record::write_blocking(&mut conn, &reply);
}

/// The next record of a client; None when it is gone, silent too long or broken (logged).
fn next(conn: &mut UnixStream, uid: u32) -> Option<Record> {
    match record::read_blocking_max(conn, MAX_CLIENT_RECORD) {
        Ok(Some(r)) => Some(r),
        Ok(None) => None,
        Err(e) => {
            log!("uid {uid}: connection dropped, nothing queued: {e}");
            None
        }
    }
}

/// Reads one message and queues it. Ok(None): the client went away, nothing is queued and
/// there is nobody to answer. Err: the verdict is a refusal.
fn receive(
    conn: &mut UnixStream,
    uid: u32,
    pid: i32,
    shared: &Shared,
    settings: &Settings,
) -> Result<Option<(MsgId, Envelope, u64)>, QueueError> {
    let Some(first) = next(conn, uid) else {
        return Ok(None);
    };
    let env = match (first.kind, first.bytes(0).map(Envelope::parse)) {
        (b'E', Ok(Ok(env))) => env,
        (b'E', Ok(Err(e))) => {
            let code = match e {
                EnvelopeError::BadAddress(_) => status::QUEUE_BAD_ADDRESS,
                _ => status::QUEUE_BAD_ENVELOPE,
            };
            return drain(conn, uid, QueueError::new(code, e.to_string()));
        }
        _ => {
            log!("uid {uid}: the first record is not an envelope; connection dropped");
            return Ok(None);
        }
    };
    let mut msg = match shared.queue.begin(settings.limit) {
        Ok(m) => m,
        Err(e) => return drain(conn, uid, e),
    };
    let received = format!(
        "Received: (ferry {pid} invoked by uid {uid});\n\t{}\n",
        date::rfc5322(date::now_secs())
    );
    if let Err(e) = msg.write_added(received.as_bytes()) {
        return drain(conn, uid, e);
    }
    let mut hops = HopCounter::new();
    loop {
        let Some(r) = next(conn, uid) else {
            return Ok(None);
        };
        match r.kind {
            b'D' => {
                let data = r.bytes(0).unwrap_or_default();
                hops.feed(data);
                if let Err(e) = msg.write(data) {
                    return drain(conn, uid, e);
                }
            }
            b'.' => break,
            other => {
                log!(
                    "uid {uid}: unknown record {:?}; connection dropped",
                    other as char
                );
                return Ok(None);
            }
        }
    }
    if hops.count() > settings.maxhops {
        return Err(QueueError::new(
            status::QUEUE_TOO_MANY_HOPS,
            format!(
                "{} Received lines, more than maxhops {}: mail loop",
                hops.count(),
                settings.maxhops
            ),
        ));
    }
    // Too big: finish says so; nothing to sign.
    let head = if msg.too_big() {
        Vec::new()
    } else {
        sign(&settings.signer, &mut msg)
    };
    let bytes = msg.bytes();
    let prepared = msg.finish_with_head(&head, &env)?;
    let (tx, rx) = mpsc::channel();
    shared
        .commits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((prepared, tx))
        .map_err(|_| QueueError::new(status::QUEUE_BUG, "the committing thread is gone"))?;
    match rx.recv() {
        Ok(Ok(id)) => Ok(Some((id, env, bytes))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(QueueError::new(status::QUEUE_BUG, "no commit verdict")),
    }
}

/// Reads the rest of a refused message to its `.` and returns the refusal (Ok(None) when the
/// client goes away meanwhile: nobody to tell).
fn drain(
    conn: &mut UnixStream,
    uid: u32,
    refusal: QueueError,
) -> Result<Option<(MsgId, Envelope, u64)>, QueueError> {
    loop {
        match next(conn, uid) {
            Some(r) if r.kind == b'.' => return Err(refusal),
            Some(r) if r.kind == b'D' => {}
            _ => return Ok(None),
        }
    }
}

/// The DKIM-Signature fields of the message (none if its From domain has no key).
fn sign(signer: &Signer, msg: &mut queue::Incoming) -> Vec<u8> {
    if signer.is_empty() || msg.flush().is_err() {
        return Vec::new();
    }
    let (head, problem) = signer.sign_file(msg.path(), msg.bytes());
    if let Some(p) = problem {
        log!("{p}; it goes unsigned");
    }
    head
}
