//! authverify — the verifier of mail received over SMTP: SPF, DKIM, ARC and DMARC
//! (crates/auth/src/verify.rs), for smtpd's queue writer.
//!
//! Started by smtpd (port 25 only) as root before it drops privileges, running as `ferryv`,
//! a user that owns nothing: it parses what strangers send and asks the DNS, so it gets no
//! right to the queue. fd 0 is one end of a Unix stream socket whose other end is qwriter's
//! fd 3. Records (crates/common/src/record.rs):
//!
//! qwriter → authverify:
//! - `S txn ip helo sender spfpolicy dmarcpolicy me` a message begins (its `B`): start the
//!   SPF checks of HELO and MAIL FROM now, while the data arrives. Policies are
//!   off/mark/enforce; `me` is the authserv-id (qwriter's `me`, which follows reloads).
//! - `V txn length` with a descriptor (SCM_RIGHTS, read-only, of qwriter's tmp file): the
//!   message is complete, its first `length` bytes are it: verify it.
//! - `A txn` forget it (the client went away).
//!
//! authverify → qwriter:
//! - `v txn action head summary code enhanced text`: action `accept`, `quarantine`,
//!   `refuse` (code 5xx) or `defer` (451); head is the fields to put on top (LF line ends):
//!   Authentication-Results with `me` as authserv-id (and X-Ferry-Quarantine); summary is a
//!   line for smtpd's log; code, enhanced and text are the SMTP reply of a refusal.
//!
//! One tokio runtime on one thread: each message is a task, at most [`MAX_TASKS`] verify
//! at once (the rest wait, their messages still buffered on disk only), each bounded in
//! time (ferry_auth::verify::MAX_VERIFY_TIME). DNS: control/resolvconf or /etc/resolv.conf,
//! one resolver whose cache keeps answers for their TTL. Reads the control files (for
//! `resolvconf`) at start.
//! Exits 0 when qwriter closes the socket, 111 on a setup error or a broken record.

use ferry_auth::verify::{self, Action, Client, Policies, Spf};
use ferry_common::config::{AuthMode, Config};
use ferry_common::log;
use ferry_common::record::{Reader, Record};
use ferry_common::root::Root;
use mail_auth::MessageAuthenticator;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, watch};

/// Most messages verified at the same time.
const MAX_TASKS: usize = 64;
/// Most messages whose SPF is kept while they arrive (one per open transaction of smtpd).
const MAX_PENDING: usize = 100_000;
/// The largest message read whole for DKIM (more than the default databytes).
const MAX_MESSAGE: u64 = 64 << 20;

fn main() {
    log::init("authverify");
    ferry_sys::no_core_dumps();
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            log!("fatal: {e}");
            111
        }
    };
    std::process::exit(code);
}

/// What is known of one message while it arrives: its client and, once done, its SPF.
struct Pending {
    client: Client,
    policies: Policies,
    spf: watch::Receiver<Option<Spf>>,
}

struct State {
    auth: MessageAuthenticator,
    pending: RefCell<HashMap<u64, Pending>>,
    replies: mpsc::UnboundedSender<Record>,
    tasks: Semaphore,
}

fn run() -> io::Result<()> {
    let root = Root::from_exe()?;
    let cfg = Config::load(&root).map_err(|e| io::Error::other(e.to_string()))?;
    let sock = std::os::unix::net::UnixStream::from(
        ferry_sys::take_fd(0).ok_or_else(|| io::Error::other("fd 0 is not open"))?,
    );
    sock.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let resolver = ferry_dns::resolver(&cfg.resolvconf, Duration::from_secs(5))
            .map_err(io::Error::other)?;
        let sock = tokio::net::UnixStream::from_std(sock)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        let state = Rc::new(State {
            auth: MessageAuthenticator(resolver),
            pending: RefCell::new(HashMap::new()),
            replies: tx,
            tasks: Semaphore::new(MAX_TASKS),
        });
        let (read_half, mut write_half) = sock.into_split();
        let writer = tokio::task::spawn_local(async move {
            while let Some(r) = rx.recv().await {
                if write_half.write_all(&r.encode()).await.is_err() {
                    break;
                }
            }
        });
        let result = read_loop(&read_half, &state).await;
        drop(state);
        let _ = writer.await;
        result
    })
}

async fn read_loop(sock: &tokio::net::unix::OwnedReadHalf, state: &Rc<State>) -> io::Result<()> {
    let mut reader = Reader::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let raw = sock.as_ref().as_raw_fd();
    loop {
        sock.as_ref().readable().await?;
        let got = sock.as_ref().try_io(tokio::io::Interest::READABLE, || {
            ferry_sys::recv_with_fds(&RawSock(raw), &mut buf)
        });
        let (n, new_fds) = match got {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        fds.extend(new_fds);
        if n == 0 {
            return Ok(());
        }
        reader.feed(&buf[..n]);
        while let Some(r) = reader.next_record()? {
            handle(state, r, &mut fds)?;
        }
    }
}

struct RawSock(std::os::fd::RawFd);
impl AsRawFd for RawSock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

fn mode(s: &str) -> io::Result<AuthMode> {
    AuthMode::parse(s).ok_or_else(|| io::Error::other(format!("bad policy {s:?}")))
}

fn handle(state: &Rc<State>, r: Record, fds: &mut VecDeque<OwnedFd>) -> io::Result<()> {
    let txn = r.u64(0)?;
    match r.kind {
        b'S' => {
            let ip = r
                .str(1)?
                .parse()
                .map_err(|_| io::Error::other("S: bad address"))?;
            let client = Client {
                ip,
                helo: r.str(2)?.to_string(),
                sender: r.str(3)?.to_string(),
                me: r.str(6)?.to_string(),
            };
            let policies = Policies {
                spf: mode(r.str(4)?)?,
                dmarc: mode(r.str(5)?)?,
            };
            if state.pending.borrow().len() >= MAX_PENDING {
                return Err(io::Error::other("too many messages pending"));
            }
            let (tx, rx) = watch::channel(None);
            let st = state.clone();
            let c = client.clone();
            tokio::task::spawn_local(async move {
                let spf = verify::spf(&st.auth, &c).await;
                let _ = tx.send(Some(spf));
            });
            state.pending.borrow_mut().insert(
                txn,
                Pending {
                    client,
                    policies,
                    spf: rx,
                },
            );
        }
        b'V' => {
            let len = r.u64(1)?;
            let fd = fds
                .pop_front()
                .ok_or_else(|| io::Error::other("V without a descriptor"))?;
            let Some(p) = state.pending.borrow_mut().remove(&txn) else {
                return Err(io::Error::other(format!("V for unknown transaction {txn}")));
            };
            let st = state.clone();
            tokio::task::spawn_local(async move {
                let reply = check(&st, txn, p, fd, len).await;
                let _ = st.replies.send(reply);
            });
        }
        b'A' => {
            state.pending.borrow_mut().remove(&txn);
        }
        other => {
            return Err(io::Error::other(format!(
                "unknown record {:?} from qwriter",
                other as char
            )));
        }
    }
    Ok(())
}

async fn check(st: &State, txn: u64, mut p: Pending, fd: OwnedFd, len: u64) -> Record {
    let _permit = st.tasks.acquire().await;
    let spf = loop {
        if let Some(s) = p.spf.borrow().clone() {
            break s;
        }
        if p.spf.changed().await.is_err() {
            // The SPF task ended without a result (it cannot): check again here.
            break verify::spf(&st.auth, &p.client).await;
        }
    };
    let file = std::fs::File::from(fd);
    let want = len.min(MAX_MESSAGE) as usize;
    let mut message = vec![0u8; want];
    let verdict = match file.read_exact_at(&mut message, 0) {
        Ok(()) => verify::verify(&st.auth, &p.client, &spf, &message, p.policies).await,
        Err(e) => {
            log!("cannot read message of transaction {txn}: {e}");
            return reply(
                txn,
                "defer",
                "",
                "read error",
                451,
                "4.3.0",
                "cannot read the message to verify it",
            );
        }
    };
    let (action, code, enhanced, text) = match &verdict.action {
        Action::Accept => ("accept", 250, "2.0.0", String::new()),
        Action::Quarantine(_) => ("quarantine", 250, "2.0.0", String::new()),
        Action::Refuse(code, enh, text) => ("refuse", *code, *enh, text.clone()),
        Action::Defer(enh, text) => ("defer", 451, *enh, text.clone()),
    };
    reply(
        txn,
        action,
        &verdict.head,
        &verdict.summary,
        code,
        enhanced,
        &text,
    )
}

fn reply(
    txn: u64,
    action: &str,
    head: &str,
    summary: &str,
    code: u16,
    enhanced: &str,
    text: &str,
) -> Record {
    Record::new(b'v')
        .with_u64(txn)
        .with(action)
        .with(head)
        .with(summary)
        .with(code.to_string())
        .with(enhanced)
        .with(text)
}
