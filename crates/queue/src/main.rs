//! queue — puts one message into the ferry queue (the qmail-queue contract).
//!
//! Installed setuid `ferryq` (mode 4711). Run by sendmail, by send for bounces and by
//! local-deliver for forwards.
//!
//! - fd 0: the message (LF line ends). It is read to the end.
//! - fd 1: the envelope, read after the message: `F<sender>\0`, `T<recipient>\0`..., `\0`.
//! - Arguments: none, or `--forward ADDRESS` from local-deliver forwarding mail that came to
//!   ADDRESS (an `&address` line): `Delivered-To: ADDRESS` is added below the Received line;
//!   when a recipient is in another domain, the envelope sender is rewritten by SRS (crates/common/src/srs.rs) unless it is null or
//!   ours, and when fd 0 is lspawn's sealed copy of the queued message (owned by root, sealed:
//!   what it says was recorded here on receipt) the message gets an ARC set of the
//!   Authentication-Results ferry added on receipt (crates/auth/src/arc.rs), signed with the
//!   RSA key of ADDRESS's domain. The environment is not read (setuid; docs/SECURITY.md).
//! - Root: the parent of the directory holding this executable (/proc/self/exe).
//! - Control files: `databytes` (size limit of the message as given, without the line added
//!   here), `maxhops` (a message with more Received lines in its header is refused: exit 32,
//!   a mail loop).
//! - Adds `Received: (ferry PID invoked by uid UID); DATE` at the top of the message, and
//!   above it (and above an ARC set) a DKIM-Signature per key of the From domain (control/dkim/DOMAIN/SELECTOR.key,
//!   readable by ferryq only: crates/auth/src/sign.rs), made once, so that every delivery
//!   attempt sends the same bytes.
//! - Commits per the protocol in docs/INTERNALS.md (message durable, then linked into todo/,
//!   todo/ durable), pulls queue/lock/trigger, writes `queue: queued as ID` on fd 2, exits 0.
//!   Only exit 0 means queued.
//! - Exit codes: the table in crates/common/src/status.rs (11 bad address, 31 too big,
//!   32 too many hops, 53 write error/disk full, 54 read error, 55 control file, 62 queue dir, 91 bad envelope, ...).

use ferry_common::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE};
use ferry_common::hops::HopCounter;
use ferry_common::queue::{self, Queue, QueueError};
use ferry_common::root::Root;
use ferry_common::{control, date, status};
use std::io::Read;

fn main() {
    ferry_sys::no_core_dumps();
    ferry_sys::set_umask(0o022);
    // A day to get the message and envelope, as qmail-queue allows.
    nix::unistd::alarm::set(86_400);
    let code = match run() {
        Ok(()) => status::QUEUE_OK,
        Err(e) => {
            eprintln!("queue: {}", e.message);
            e.code
        }
    };
    std::process::exit(code);
}

fn run() -> Result<(), QueueError> {
    let root = Root::from_exe().map_err(|e| {
        QueueError::new(status::QUEUE_DIR_ERROR, format!("cannot find my root: {e}"))
    })?;
    let cfg_err =
        |e: control::ControlError| QueueError::new(status::QUEUE_CONFIG_ERROR, e.to_string());
    let limit = control::read_number(&root.control(), "databytes", 26_214_400).map_err(cfg_err)?;
    let maxhops = control::read_number(&root.control(), "maxhops", 100)
        .map_err(cfg_err)?
        .max(1);
    let forward = forward_argument()?;
    let (ruid, euid) = ferry_sys::uids();
    let received = format!(
        "Received: (ferry {} invoked by uid {ruid});\n\t{}\n",
        std::process::id(),
        date::rfc5322(date::now_secs())
    );
    // databytes counts the message as given, as smtpd counts it; the lines added here are extra.
    let q = Queue::new(&root);
    let mut msg = q.begin(limit)?;
    msg.write_added(received.as_bytes())?;
    let mut added = received.len() as u64;
    // lspawn's sealed copy of a queued message: read from its start, whatever its offset.
    let sealed = forward
        .as_ref()
        .and_then(|_| {
            use std::os::fd::AsFd;
            std::io::stdin().as_fd().try_clone_to_owned().ok()
        })
        .map(std::fs::File::from)
        .filter(|f| ferry_sys::is_sealed_copy(f, euid));
    if let Some(a) = &forward {
        let line = format!("Delivered-To: {a}\n");
        msg.write_added(line.as_bytes())?;
        added += line.len() as u64;
    }
    let mut hops = HopCounter::new();
    let mut input: Box<dyn Read> = match &sealed {
        Some(f) => Box::new(SealedReader { file: f, pos: 0 }),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hops.feed(&buf[..n]);
                msg.write(&buf[..n])?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                msg.abort();
                return Err(QueueError::new(
                    status::QUEUE_READ_ERROR,
                    format!("cannot read the message: {e}"),
                ));
            }
        }
    }
    if hops.count() > maxhops {
        msg.abort();
        return Err(QueueError::new(
            status::QUEUE_TOO_MANY_HOPS,
            format!(
                "{} Received lines, more than maxhops {maxhops}: mail loop",
                hops.count()
            ),
        ));
    }
    drop(input);
    let mut env = match read_envelope() {
        Ok(e) => e,
        Err(e) => {
            msg.abort();
            return Err(e);
        }
    };
    let mut head = Vec::new();
    // Forwarded to another domain (not only to addresses of ours): SRS and ARC.
    if let Some(address) = &forward
        && let Ok(cfg) = ferry_common::config::Config::load(&root)
        && env
            .recipients
            .iter()
            .any(|r| !cfg.is_ours(&ferry_common::addr::split(r).1.to_lowercase()))
    {
        env.sender = cfg.forward_sender(&env.sender);
        if sealed.is_some() {
            head = arc_set(&root, &cfg, &mut msg, added, address);
        }
    }
    head.splice(0..0, dkim_signature(&root, &mut msg));
    let prepared = msg.finish_with_head(&head, &env)?;
    match queue::commit(&q, vec![prepared]).pop() {
        Some(Ok(id)) => {
            // For `smtpd -bs`'s "queued as ID" (callers read fd 2 only for text).
            eprintln!("queue: queued as {id}");
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Err(QueueError::new(
            status::QUEUE_BUG,
            "commit returned nothing",
        )),
    }
}

/// The DKIM-Signature fields for the message (crates/auth/src/sign.rs): signed with the keys
/// of its From domain under control/dkim, readable by ferryq only; none when that domain has
/// no key. A key that does not load or sign is left out (`ferryctl check` names it): the
/// message is still queued.
fn dkim_signature(root: &Root, msg: &mut queue::Incoming) -> Vec<u8> {
    let (signer, _problems) = ferry_auth::sign::Signer::load(&root.control());
    if signer.is_empty() || msg.flush().is_err() {
        return Vec::new();
    }
    signer.sign_file(msg.path(), msg.bytes()).0
}

/// `--forward ADDRESS`, or nothing. ADDRESS becomes a header line: no control characters.
fn forward_argument() -> Result<Option<String>, QueueError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, a]
            if flag == "--forward"
                && !a.is_empty()
                && a.len() <= 320
                && a.contains('@')
                && !a.chars().any(|c| c.is_control()) =>
        {
            Ok(Some(a.clone()))
        }
        _ => Err(QueueError::new(
            status::QUEUE_BUG,
            "usage: queue [--forward ADDRESS] (message on fd 0, envelope on fd 1)",
        )),
    }
}

/// The ARC set of a forwarded message: the Authentication-Results ferry recorded on receipt
/// (in the message as it was queued, after the `added` lines written here), sealed with the
/// RSA key of the forwarding address's domain. None (nothing added) when any is missing.
fn arc_set(
    root: &Root,
    cfg: &ferry_common::config::Config,
    msg: &mut queue::Incoming,
    added: u64,
    address: &str,
) -> Vec<u8> {
    let sealer = ferry_auth::arc::Sealer::load(&root.control());
    if sealer.is_empty() || msg.flush().is_err() {
        return Vec::new();
    }
    let domain = ferry_common::addr::split(address).1;
    match sealer.seal_file(
        b"",
        msg.path(),
        msg.bytes(),
        added as usize,
        &cfg.me,
        domain,
    ) {
        Ok(set) => set,
        Err(ferry_auth::arc::NotSealed::NoResults) => Vec::new(),
        Err(why) => {
            eprintln!("queue: forwarded without an ARC set: {why}");
            Vec::new()
        }
    }
}

/// Reads a file from its start with pread, leaving the descriptor's offset alone (a
/// descriptor local-deliver shares with every forward of the message).
struct SealedReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for SealedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_envelope() -> Result<Envelope, QueueError> {
    let fd = ferry_sys::take_fd(1).ok_or_else(|| {
        QueueError::new(status::QUEUE_READ_ERROR, "fd 1 (the envelope) is not open")
    })?;
    let mut f = std::fs::File::from(fd);
    let mut buf = Vec::new();
    (&mut f)
        .take(MAX_ENVELOPE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            QueueError::new(
                status::QUEUE_READ_ERROR,
                format!("cannot read the envelope on fd 1: {e}"),
            )
        })?;
    Envelope::parse(&buf).map_err(|e| {
        let code = match e {
            EnvelopeError::BadAddress(_) => status::QUEUE_BAD_ADDRESS,
            _ => status::QUEUE_BAD_ENVELOPE,
        };
        QueueError::new(code, e.to_string())
    })
}
