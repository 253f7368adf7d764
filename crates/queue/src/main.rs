//! queue — puts one message into the ferry queue (the qmail-queue contract).
//!
//! Installed setuid `ferryq` (mode 4711). Run by sendmail, by send for bounces and by
//! local-deliver for forwards.
//!
//! - fd 0: the message (LF line ends). It is read to the end.
//! - fd 1: the envelope, read after the message: `F<sender>\0`, `T<recipient>\0`..., `\0`.
//! - Arguments and environment: none are read (the program is setuid; see docs/SECURITY.md).
//! - Root: the parent of the directory holding this executable (/proc/self/exe).
//! - Control files: `databytes` (size limit of the message as given, without the line added
//!   here), `maxhops` (a message with more Received lines in its header is refused: exit 32,
//!   a mail loop).
//! - Adds `Received: (ferry PID invoked by uid UID); DATE` at the top of the message, and
//!   above it a DKIM-Signature per key of the From domain (control/dkim/DOMAIN/SELECTOR.key,
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
    let (ruid, _) = ferry_sys::uids();
    let received = format!(
        "Received: (ferry {} invoked by uid {ruid});\n\t{}\n",
        std::process::id(),
        date::rfc5322(date::now_secs())
    );
    // databytes counts the message as given, as smtpd counts it; the line added here is extra.
    let q = Queue::new(&root);
    let mut msg = q.begin(limit)?;
    msg.write_added(received.as_bytes())?;
    let mut hops = HopCounter::new();
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
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
    let env = match read_envelope() {
        Ok(e) => e,
        Err(e) => {
            msg.abort();
            return Err(e);
        }
    };
    let head = dkim_signature(&root, &mut msg);
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
