//! local-deliver — delivers mail as the recipient user; a worker that serves many deliveries.
//!
//! Usage: `local-deliver HOME create|existing`, started by lspawn as the recipient user (never
//! as root: it refuses), with cwd /, a clean environment (HOME, USER, LOGNAME, SHELL, PATH)
//! fd 0 a Unix stream socket to lspawn, fd 1 /dev/null, fd 2 a second socket to lspawn for
//! log lines (lspawn logs them with this worker's user), and no other descriptor.
//! `create`: HOME is a virtual mailbox directory, created (0700) if missing.
//!
//! Protocol on fd 0 (records, crates/common/src/record.rs):
//! - in: `J job sender recipient local domain ext length msgid orig`, with a read-only
//!   descriptor of a sealed memfd attached (SCM_RIGHTS) holding the message, `length` bytes
//!   (never the queue file: its envelope names every recipient). `orig`: the envelope
//!   recipient this one came from through aliases (written as X-Original-To), or empty.
//! - out: `R job status text`, status 0 delivered, 100 permanent failure, 111 temporary;
//!   lspawn ends a worker that sends anything else, or a result for a job it was not given.
//!
//! Every job already sent when one arrives (up to 64: a job's descriptor ends a read, so the
//! socket is read again without waiting) is delivered in one batch: Maildir files are
//! written, then made durable together (crate::maildir), and only then reported. Each result is logged as
//! `MSGID: delivery JOB to RECIPIENT delivered|failed|deferred: text`, so that the queue id
//! follows a message from smtpd through send into its delivery. The delivery rules (.ferry
//! files, Maildir, mbox, forwards, programs) are in docs/DELIVERY.md. A forward runs
//! `queue --forward RECIPIENT` with the memfd itself as its fd 0 (queue adds Delivered-To,
//! SRS and an ARC set, trusting what the sealed copy records). Exits 0 when lspawn closes
//! the socket.

mod deliver;
mod dotfile;
mod maildir;
mod mbox;
mod message;
mod program;

use deliver::{Context, Job, Outcome};
use ferry_common::record::{Reader, Record};
use ferry_common::root::Root;
use ferry_common::{control, log};
use message::Message;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

fn main() {
    log::init("local-deliver");
    if ferry_sys::uids().0 == 0 || ferry_sys::uids().1 == 0 {
        log!("refusing to run as root");
        std::process::exit(111);
    }
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log!("fatal: {e}");
            std::process::exit(111);
        }
    }
}

fn run() -> io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let home = PathBuf::from(
        args.next()
            .ok_or_else(|| io::Error::other("usage: local-deliver HOME create|existing"))?,
    );
    let create = args.next().is_some_and(|a| a == "create");
    let root = Root::from_exe()?;
    let sock = UnixStream::from(
        ferry_sys::take_fd(0).ok_or_else(|| io::Error::other("fd 0 is not open"))?,
    );
    let setup = setup(&root, &home, create);
    let mut reader = Reader::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 0u64;
    loop {
        if !read_batch(&sock, &mut reader, &mut fds, &mut buf)? {
            return Ok(());
        }
        let mut jobs = Vec::new();
        while let Some(rec) = reader.next_record()? {
            let fd = fds
                .pop_front()
                .ok_or_else(|| io::Error::other("job without its message descriptor"))?;
            jobs.push(job(rec, fd)?);
        }
        if jobs.is_empty() {
            continue;
        }
        let results = match &setup {
            Ok((host, default_delivery)) => {
                let uid = ferry_sys::uids().1;
                let mut cx = Context {
                    root: &root,
                    home: &home,
                    host,
                    default_delivery,
                    uid,
                    seq: &mut seq,
                };
                batch(&mut cx, &jobs)
            }
            Err(e) => jobs.iter().map(|_| (111, e.clone())).collect(),
        };
        let mut out = Vec::new();
        for (j, (code, text)) in jobs.iter().zip(results) {
            log!(
                "{}: delivery {} to {} {}: {}",
                j.msgid,
                j.id,
                j.recipient,
                word(code),
                text
            );
            out.extend(
                Record::new(b'R')
                    .with_u64(j.id)
                    .with(code.to_string())
                    .with(text)
                    .encode(),
            );
        }
        (&sock).write_all(&out)?;
    }
}

/// Most reads of jobs gathered into one batch.
const MAX_BATCH: usize = 64;

/// Waits for jobs, then takes every one already sent (at most [`MAX_BATCH`] reads): each job
/// comes with its descriptor, which ends a read, so the socket is read again without waiting
/// until it is empty, and the jobs share one commit. False when lspawn closed the socket.
fn read_batch(
    sock: &UnixStream,
    reader: &mut Reader,
    fds: &mut VecDeque<OwnedFd>,
    buf: &mut [u8],
) -> io::Result<bool> {
    let (n, got) = ferry_sys::recv_with_fds(sock, buf)?;
    if n == 0 {
        return Ok(false);
    }
    reader.feed(&buf[..n]);
    fds.extend(got);
    for _ in 1..MAX_BATCH {
        match ferry_sys::try_recv_with_fds(sock, buf)? {
            Some((0, _)) | None => break,
            Some((n, got)) => {
                reader.feed(&buf[..n]);
                fds.extend(got);
            }
        }
    }
    Ok(true)
}

fn word(code: i32) -> &'static str {
    match code {
        0 => "delivered",
        100 => "failed",
        _ => "deferred",
    }
}

/// Checks and prepares the home directory; returns (host for Maildir names, default delivery).
fn setup(root: &Root, home: &std::path::Path, create: bool) -> Result<(String, String), String> {
    if create && !home.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(home)
            .map_err(|e| format!("cannot create mailbox {}: {e}", home.display()))?;
    }
    std::env::set_current_dir(home)
        .map_err(|e| format!("home directory {}: {e}", home.display()))?;
    let dir = root.control();
    let host = control::read_text(&dir, "me")
        .map_err(|e| e.to_string())?
        .unwrap_or_else(ferry_sys::hostname);
    let default = control::read_text(&dir, "defaultdelivery")
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| "./Maildir/".into());
    Ok((host, default))
}

fn job(rec: Record, fd: OwnedFd) -> io::Result<Job> {
    if rec.kind != b'J' {
        return Err(io::Error::other("unexpected record from lspawn"));
    }
    Ok(Job {
        id: rec.u64(0)?,
        sender: rec.str(1)?.to_string(),
        recipient: rec.str(2)?.to_string(),
        local: rec.str(3)?.to_string(),
        domain: rec.str(4)?.to_string(),
        ext: rec.str(5)?.to_string(),
        msg: Message {
            file: std::fs::File::from(fd),
            len: rec.u64(6)?,
        },
        msgid: rec.str(7)?.to_string(),
        orig: rec.str(8)?.to_string(),
    })
}

/// Delivers a batch and commits its Maildir files together.
fn batch(cx: &mut Context<'_>, jobs: &[Job]) -> Vec<(i32, String)> {
    let mut pending = Vec::new();
    let mut owner = Vec::new();
    let mut results: Vec<(i32, String)> = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        let before = pending.len();
        let r = match deliver::deliver(cx, j, &mut pending) {
            Outcome::Done(what) => (0, what),
            Outcome::Permanent(t) => (100, t),
            Outcome::Temporary(t) => (111, t),
        };
        owner.extend(std::iter::repeat_n(i, pending.len() - before));
        results.push(r);
    }
    for (i, r) in owner.into_iter().zip(maildir::commit(pending)) {
        if let Err(e) = r
            && results[i].0 == 0
        {
            results[i] = (111, e.to_string());
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Jobs sent one by one, each with its descriptor, arrive as one batch.
    #[test]
    fn jobs_already_sent_are_one_batch() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        for j in 0..5u64 {
            let rec = Record::new(b'J').with_u64(j).encode();
            let n = ferry_sys::send_with_fd(&a, &rec, f.as_raw_fd()).unwrap();
            assert_eq!(n, rec.len());
        }
        let (mut reader, mut fds, mut buf) = (Reader::new(), VecDeque::new(), vec![0u8; 4096]);
        assert!(read_batch(&b, &mut reader, &mut fds, &mut buf).unwrap());
        let mut jobs = 0;
        while reader.next_record().unwrap().is_some() {
            jobs += 1;
        }
        assert_eq!((jobs, fds.len()), (5, 5));
        drop(a);
        assert!(!read_batch(&b, &mut reader, &mut fds, &mut buf).unwrap());
    }
}
