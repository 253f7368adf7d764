//! The queue on disk and the commit protocol (docs/INTERNALS.md has the full state table).
//!
//! ```text
//! queue/tmp/ID        a message being written; its writer holds an flock on it
//! queue/todo/ID       committed, waiting for send (a hard link of tmp/ID: the commit point)
//! queue/mess/XX/ID    the message while it is being delivered (send has taken it)
//! queue/info/XX/ID    send's per-recipient state (see crate::info)
//! queue/lock/trigger  FIFO: writers announce committed ids (one per line) to send
//! queue/ctl/send      send's control socket (ferryctl)
//! ```
//!
//! A queue file holds the message as it was streamed in (the writer's Received line and the
//! client's bytes), then the fields added once the whole message was known (the head:
//! Authentication-Results, DKIM-Signature), then the envelope (qmail format), then a 24-byte
//! trailer: the magic `ferryq2\n`, the streamed length and the head length (u64 each,
//! little-endian). The message is the head followed by the streamed bytes; deliverers read it
//! through [`QueueFile`] (`message_reader`, `read_at`); send reads the envelope. Files of the
//! first format (trailer `ferryq1\n` + length, 16 bytes, no head) are still read. One file per
//! message means one file to make durable and one directory entry to commit.
//!
//! Commit: write tmp/ID; make it durable (fsync, or one syncfs for a batch); link it into
//! todo/; fsync todo/ (one fsync covers every link of the batch); only then confirm; remove
//! tmp/ID; announce the ids to send. A writer that dies leaves tmp/ID unlocked: `clean`
//! removes such files at start.

use crate::envelope::Envelope;
use crate::id::MsgId;
use crate::root::Root;
use crate::status;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The trailer of the current format: magic, streamed length, head length.
pub const TRAILER_MAGIC: &[u8; 8] = b"ferryq2\n";
pub const TRAILER_LEN: u64 = 24;
/// The trailer of the first format (no head): magic, message length.
pub const TRAILER1_MAGIC: &[u8; 8] = b"ferryq1\n";
pub const TRAILER1_LEN: u64 = 16;
/// Mode of queue files: the owner (ferryq) and the group ferry (send, remote delivery) read
/// them, nobody else. tmp/ is set-group-id (ferryq:ferry 2700), so a file gets the group
/// ferry even when the setuid `queue` runs with the caller's group. Local deliveries never
/// get a queue file: lspawn gives them a sealed copy of the message bytes only.
pub const FILE_MODE: u32 = 0o640;

#[derive(Clone, Debug)]
pub struct Queue {
    dir: PathBuf,
    pool: crate::pool::Pool,
}

/// A failure of the queue, with the `queue` exit code that tells the caller what to answer.
#[derive(Debug)]
pub struct QueueError {
    pub code: i32,
    pub message: String,
}

impl QueueError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        QueueError {
            code,
            message: message.into(),
        }
    }
    fn io(what: &str, e: io::Error) -> Self {
        let code = match e.raw_os_error() {
            Some(libc_enospc)
                if libc_enospc == nix::libc::ENOSPC || libc_enospc == nix::libc::EDQUOT =>
            {
                status::QUEUE_WRITE_ERROR
            }
            Some(c)
                if c == nix::libc::EACCES || c == nix::libc::ENOENT || c == nix::libc::EPERM =>
            {
                status::QUEUE_DIR_ERROR
            }
            _ => status::QUEUE_WRITE_ERROR,
        };
        QueueError::new(code, format!("{what}: {e}"))
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (exit {})", self.message, self.code)
    }
}

impl std::error::Error for QueueError {}

impl Queue {
    pub fn new(root: &Root) -> Queue {
        Queue::at(root.queue())
    }
    pub fn at(dir: impl Into<PathBuf>) -> Queue {
        let dir = dir.into();
        Queue {
            pool: crate::pool::Pool::new(&dir),
            dir,
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    pub fn tmp(&self, id: &MsgId) -> PathBuf {
        self.dir.join("tmp").join(id.to_string())
    }
    pub fn todo_dir(&self) -> PathBuf {
        self.dir.join("todo")
    }
    pub fn todo(&self, id: &MsgId) -> PathBuf {
        self.dir.join("todo").join(id.to_string())
    }
    pub fn mess(&self, id: &MsgId) -> PathBuf {
        self.dir.join("mess").join(id.split()).join(id.to_string())
    }
    pub fn info(&self, id: &MsgId) -> PathBuf {
        self.dir.join("info").join(id.split()).join(id.to_string())
    }
    pub fn trigger(&self) -> PathBuf {
        self.dir.join("lock").join("trigger")
    }
    /// The control socket of send (ferryctl's requests).
    pub fn ctl_socket(&self) -> PathBuf {
        self.dir.join("ctl").join("send")
    }

    /// Starts a new message: takes a recycled file or creates one as tmp/ID, locked. `limit` is `databytes` (0: none).
    pub fn begin(&self, limit: u64) -> Result<Incoming, QueueError> {
        for _ in 0..8 {
            let id = MsgId::random()
                .map_err(|e| QueueError::new(status::QUEUE_BUG, format!("random id: {e}")))?;
            let path = self.tmp(&id);
            // A recycled file (queue/pool/, crate::pool) if there is one, else a new one.
            let lock = match self.pool.take(&path) {
                Some(l) => l,
                None => {
                    let file = match OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(FILE_MODE)
                        .open(&path)
                    {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => {
                            return Err(QueueError::io(
                                &format!("cannot create {}", path.display()),
                                e,
                            ));
                        }
                    };
                    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                        QueueError::new(
                            status::QUEUE_BUG,
                            format!("cannot lock {}: {e}", path.display()),
                        )
                    })?
                }
            };
            let out = Some(BufWriter::with_capacity(64 * 1024, Locked(lock)));
            return Ok(Incoming {
                id,
                path,
                out,
                bytes: 0,
                added: 0,
                limit,
                too_big: false,
            });
        }
        Err(QueueError::new(
            status::QUEUE_BUG,
            "could not find a free message id",
        ))
    }

    /// Pulls the trigger: tells send about newly committed messages by writing their ids, one
    /// per line, into lock/trigger (each write a whole number of lines, at most PIPE_BUF bytes,
    /// so writes of several writers never mix). Anything else in the FIFO (a lone byte) makes
    /// send scan todo/. Errors are ignored: send also scans todo/ every minute and at start.
    pub fn announce(&self, ids: &[MsgId]) {
        let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(self.trigger())
        else {
            return;
        };
        for chunk in ids.chunks(4096 / 33) {
            let mut buf = String::with_capacity(chunk.len() * 33);
            for id in chunk {
                buf.push_str(&id.to_string());
                buf.push('\n');
            }
            if f.write(buf.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// A message being written into tmp/ID. Dropped before [`Incoming::finish`], it removes
/// its file, so that a refused or failed message leaves nothing behind.
pub struct Incoming {
    id: MsgId,
    path: PathBuf,
    out: Option<BufWriter<Locked>>,
    bytes: u64,
    /// Bytes the writer added itself (its Received line): not counted against `limit`.
    added: u64,
    limit: u64,
    too_big: bool,
}

impl Incoming {
    pub fn id(&self) -> MsgId {
        self.id
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// True once more than `databytes` was offered; the rest is counted but not written.
    pub fn too_big(&self) -> bool {
        self.too_big
    }

    /// Writes what the writer itself adds (its Received line): stored, but not counted
    /// against `databytes`, which counts the message as the client gave it (as smtpd does).
    pub fn write_added(&mut self, data: &[u8]) -> Result<(), QueueError> {
        self.added += data.len() as u64;
        self.write(data)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), QueueError> {
        self.bytes += data.len() as u64;
        if self.limit > 0 && self.bytes - self.added > self.limit {
            self.too_big = true;
            return Ok(());
        }
        match self.out.as_mut() {
            Some(out) => out
                .write_all(data)
                .map_err(|e| QueueError::io("cannot write message", e)),
            None => Err(QueueError::new(status::QUEUE_BUG, "write after finish")),
        }
    }

    /// Appends the envelope and the trailer. Nothing is durable yet: pass the result to [`commit`].
    pub fn finish(self, env: &Envelope) -> Result<Prepared, QueueError> {
        self.finish_with_head(b"", env)
    }

    /// Makes what was written so far readable through the file (by the verifier, by the
    /// signer), without finishing the message.
    pub fn flush(&mut self) -> Result<(), QueueError> {
        match self.out.as_mut() {
            Some(out) => out
                .flush()
                .map_err(|e| QueueError::io("cannot write message", e)),
            None => Err(QueueError::new(status::QUEUE_BUG, "flush after finish")),
        }
    }

    /// The path of tmp/ID, for a read-only descriptor of the message being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Like [`Incoming::finish`], with `head` (complete header fields, LF line ends) put in
    /// front of the streamed message.
    pub fn finish_with_head(mut self, head: &[u8], env: &Envelope) -> Result<Prepared, QueueError> {
        if self.too_big {
            return Err(QueueError::new(
                status::QUEUE_TOO_BIG,
                format!("message larger than {} bytes", self.limit),
            ));
        }
        let Some(mut out) = self.out.take() else {
            return Err(QueueError::new(status::QUEUE_BUG, "finish twice"));
        };
        let mut tail = head.to_vec();
        tail.extend_from_slice(&env.encode());
        tail.extend_from_slice(TRAILER_MAGIC);
        tail.extend_from_slice(&self.bytes.to_le_bytes());
        tail.extend_from_slice(&(head.len() as u64).to_le_bytes());
        out.write_all(&tail)
            .and_then(|_| out.flush())
            .map_err(|e| QueueError::io("cannot write message", e))?;
        match out.into_inner() {
            Ok(Locked(file)) => Ok(Prepared {
                id: self.id,
                path: std::mem::take(&mut self.path),
                file,
            }),
            Err(e) => Err(QueueError::io("cannot write message", e.into_error())),
        }
    }

    /// Gives up on the message (the client went away, or it was refused).
    pub fn abort(self) {}
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The locked tmp file, writable through the lock guard.
struct Locked(Flock<File>);

impl Write for Locked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A complete message in tmp/ID, still locked, not yet durable.
pub struct Prepared {
    id: MsgId,
    path: PathBuf,
    file: Flock<File>,
}

impl Prepared {
    pub fn id(&self) -> MsgId {
        self.id
    }
    /// Gives up on the message: dropping it removes tmp/ID.
    pub fn abort(self) {}
}

/// The tmp/ name goes when a prepared message is dropped: after its commit (the todo/ link
/// keeps the file) or instead of it.
impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Commits a batch: makes every file durable (fsync for one, one syncfs for several), links
/// each into todo/, fsyncs todo/ once, removes the tmp names and pulls the trigger.
/// The result for each message is in the order given.
pub fn commit(queue: &Queue, batch: Vec<Prepared>) -> Vec<Result<MsgId, QueueError>> {
    if batch.is_empty() {
        return Vec::new();
    }
    let synced = if batch.len() == 1 {
        batch[0].file.sync_all()
    } else {
        crate::durable::syncfs(&*batch[0].file)
    };
    if let Err(e) = synced {
        return batch
            .into_iter()
            .map(|_| {
                Err(QueueError::io(
                    "cannot sync message",
                    io::Error::new(e.kind(), e.to_string()),
                ))
            })
            .collect();
    }
    let mut results: Vec<Result<MsgId, QueueError>> = Vec::with_capacity(batch.len());
    let mut linked = Vec::new();
    for p in &batch {
        match std::fs::hard_link(&p.path, queue.todo(&p.id)) {
            Ok(()) => {
                results.push(Ok(p.id));
                linked.push(p);
            }
            Err(e) => results.push(Err(QueueError::io("cannot link into todo", e))),
        }
    }
    if !linked.is_empty()
        && let Err(e) = crate::durable::sync_dir(&queue.todo_dir())
    {
        // The links may or may not survive a crash; the caller must not confirm. send will
        // still deliver what it finds (at-least-once); the client retries the rest.
        for (r, p) in results.iter_mut().zip(&batch) {
            if r.is_ok() {
                let _ = std::fs::remove_file(queue.todo(&p.id));
                *r = Err(QueueError::io(
                    "cannot sync todo",
                    io::Error::new(e.kind(), e.to_string()),
                ));
            }
        }
    }
    drop(batch);
    let ok: Vec<MsgId> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    if !ok.is_empty() {
        queue.announce(&ok);
    }
    results
}

/// An open queue file (todo/ID or mess/XX/ID): where the message's two parts and the
/// envelope are.
pub struct QueueFile {
    pub file: File,
    /// The whole message: head and streamed bytes.
    pub message_len: u64,
    pub total_len: u64,
    /// The streamed bytes, at offset 0.
    stream_len: u64,
    /// The head, at offset `stream_len`, read first.
    head_len: u64,
    trailer_len: u64,
}

impl QueueFile {
    pub fn open(path: &Path) -> io::Result<QueueFile> {
        Self::from_file(File::open(path)?)
    }

    /// For root (lspawn): never follows a symlink, never blocks on a FIFO or device, and takes
    /// only a regular file, so that whoever can write the queue cannot make root open
    /// anything else.
    pub fn open_strict(path: &Path) -> io::Result<QueueFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(path)?;
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad queue file: not a regular file",
            ));
        }
        Self::from_file(file)
    }

    pub fn from_file(file: File) -> io::Result<QueueFile> {
        let total_len = file.metadata()?.len();
        let bad = |why: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad queue file: {why}"))
        };
        let u64_at = |t: &[u8], i: usize| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&t[i..i + 8]);
            u64::from_le_bytes(n)
        };
        let mut t = [0u8; TRAILER_LEN as usize];
        let (stream_len, head_len, trailer) = if total_len >= TRAILER_LEN
            && file.read_exact_at(&mut t, total_len - TRAILER_LEN).is_ok()
            && &t[..8] == TRAILER_MAGIC
        {
            (u64_at(&t, 8), u64_at(&t, 16), TRAILER_LEN)
        } else if total_len >= TRAILER1_LEN {
            let t = &mut t[..TRAILER1_LEN as usize];
            file.read_exact_at(t, total_len - TRAILER1_LEN)?;
            if &t[..8] != TRAILER1_MAGIC {
                return Err(bad("no trailer"));
            }
            (u64_at(t, 8), 0, TRAILER1_LEN)
        } else {
            return Err(bad("shorter than its trailer"));
        };
        let message_len = stream_len
            .checked_add(head_len)
            .filter(|n| *n <= total_len - trailer)
            .ok_or_else(|| bad("message length beyond the end"))?;
        Ok(QueueFile {
            file,
            message_len,
            total_len,
            stream_len,
            head_len,
            trailer_len: trailer,
        })
    }

    /// When the message was queued: the file's modification time (it is never written after
    /// the commit), or now if that cannot be read.
    pub fn birth(&self) -> u64 {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_else(crate::date::now_secs)
    }

    /// Where the envelope starts in the file (it ends at the trailer).
    pub fn envelope_offset(&self) -> u64 {
        self.message_len
    }

    /// The envelope's length.
    pub fn envelope_len(&self) -> u64 {
        self.total_len - self.trailer_len - self.message_len
    }

    pub fn envelope(&self) -> io::Result<Envelope> {
        let len = self.envelope_len();
        if len > crate::envelope::MAX_ENVELOPE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "envelope too large",
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, self.envelope_offset())?;
        Envelope::parse(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Reads message bytes at `pos` (0 is the first byte of the head) into `buf`, from one
    /// part at a time; 0 only at the end of the message.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let (offset, left) = if pos < self.head_len {
            (self.stream_len + pos, self.head_len - pos)
        } else if pos < self.message_len {
            (pos - self.head_len, self.message_len - pos)
        } else {
            return Ok(0);
        };
        let want = (buf.len() as u64).min(left) as usize;
        let n = self.file.read_at(&mut buf[..want], offset)?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "message file shorter than recorded",
            ));
        }
        Ok(n)
    }

    /// Where the message's bytes are in the file, in order: (offset, length) of the head,
    /// then of the streamed bytes. What [`QueueFile::message_reader`] reads.
    pub fn message_ranges(&self) -> [(u64, u64); 2] {
        [(self.stream_len, self.head_len), (0, self.stream_len)]
    }

    /// A reader over the message bytes only: the head, then the streamed bytes.
    pub fn message_reader(&mut self) -> io::Result<impl Read + '_> {
        Ok(MessageReader { qf: self, pos: 0 })
    }

    /// [`QueueFile::message_reader`] through a shared reference (it reads with pread).
    pub fn message_reader_ref(&self) -> impl Read + '_ {
        MessageReader { qf: self, pos: 0 }
    }

    /// The message's header section (up to the first empty line), at most `max` bytes.
    pub fn read_head(&self, max: usize) -> io::Result<Vec<u8>> {
        let want = (self.message_len as usize).min(max);
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = self.read_at(&mut buf[got..], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            buf.truncate(end + 1);
        }
        Ok(buf)
    }
}

struct MessageReader<'a> {
    qf: &'a QueueFile,
    pos: u64,
}

impl Read for MessageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.qf.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Removes tmp/ files whose writer died (no lock held on them). Returns the names removed.
/// A live writer holds its lock from creation to commit, so its file is never touched.
/// Used at clean's start; a writer caught between its create and its flock would only see
/// its message refused (its link into todo/ fails), never lost.
pub fn recover_tmp(queue: &Queue) -> io::Result<Vec<String>> {
    recover_tmp_older(queue, std::time::Duration::ZERO)
}

/// [`recover_tmp`] for files not changed for `min_age`: the periodic sweep, which must not
/// take a file in the instant between its writer's create and its flock.
pub fn recover_tmp_older(queue: &Queue, min_age: std::time::Duration) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let now = std::time::SystemTime::now();
    for entry in std::fs::read_dir(queue.tmp_dir())? {
        let entry = entry?;
        let path = entry.path();
        let Ok(f) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        let young = f
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() < min_age)
            .unwrap_or(true);
        if young && !min_age.is_zero() {
            continue;
        }
        if let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn make_queue() -> (tempfile::TempDir, Queue) {
        let d = tempfile::tempdir().unwrap();
        for sub in ["tmp", "todo", "lock"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
        }
        let q = Queue::at(d.path());
        (d, q)
    }

    fn env() -> Envelope {
        Envelope {
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into()],
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
        }
    }

    #[test]
    fn the_head_is_read_before_the_streamed_bytes() {
        let (_d, q) = make_queue();
        let mut inc = q.begin(0).unwrap();
        inc.write(b"Received: x\nSubject: hi\n\nbody\n").unwrap();
        let id = inc.id();
        let head = b"Authentication-Results: me; spf=pass\n";
        let prep = inc.finish_with_head(head, &env()).unwrap();
        commit(&q, vec![prep]).remove(0).unwrap();
        let mut qf = QueueFile::open(&q.todo(&id)).unwrap();
        let mut all = Vec::new();
        qf.message_reader().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(
            all,
            b"Authentication-Results: me; spf=pass\nReceived: x\nSubject: hi\n\nbody\n"
        );
        assert_eq!(qf.message_len, all.len() as u64);
        assert_eq!(qf.envelope().unwrap().recipients, vec!["c@d.example"]);
        assert_eq!(
            qf.read_head(1000).unwrap(),
            b"Authentication-Results: me; spf=pass\nReceived: x\nSubject: hi\n"
        );
        // Reads never cross from the head into the streamed part.
        let mut b = [0u8; 100];
        assert_eq!(qf.read_at(&mut b, 30).unwrap(), head.len() - 30);
        assert_eq!(qf.read_at(&mut b, all.len() as u64).unwrap(), 0);
    }

    #[test]
    fn files_of_the_first_format_are_read() {
        let (d, _q) = make_queue();
        let body = b"Subject: old\n\nx\n";
        let mut v = body.to_vec();
        v.extend(env().encode());
        v.extend_from_slice(TRAILER1_MAGIC);
        v.extend_from_slice(&(body.len() as u64).to_le_bytes());
        let p = d.path().join("old");
        std::fs::write(&p, &v).unwrap();
        let mut qf = QueueFile::open(&p).unwrap();
        let mut all = Vec::new();
        qf.message_reader().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, body);
        assert_eq!(qf.envelope().unwrap().sender, "a@b.example");
    }

    #[test]
    fn write_commit_read() {
        let (_d, q) = make_queue();
        let mut inc = q.begin(0).unwrap();
        inc.write(b"Subject: hi\n\nbody\n").unwrap();
        let id = inc.id();
        let prep = inc.finish(&env()).unwrap();
        let res = commit(&q, vec![prep]);
        assert_eq!(res[0].as_ref().unwrap(), &id);
        assert!(!q.tmp(&id).exists());
        let mut qf = QueueFile::open(&q.todo(&id)).unwrap();
        assert_eq!(qf.envelope().unwrap(), env());
        let mut s = String::new();
        qf.message_reader().unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "Subject: hi\n\nbody\n");
        assert_eq!(qf.read_head(100).unwrap(), b"Subject: hi\n");
    }

    #[test]
    fn batch_commit_and_limit() {
        let (_d, q) = make_queue();
        let mut batch = Vec::new();
        for i in 0..5 {
            let mut inc = q.begin(0).unwrap();
            inc.write(format!("m{i}\n").as_bytes()).unwrap();
            batch.push(inc.finish(&env()).unwrap());
        }
        assert!(commit(&q, batch).iter().all(|r| r.is_ok()));
        assert_eq!(std::fs::read_dir(q.todo_dir()).unwrap().count(), 5);
        let mut inc = q.begin(10).unwrap();
        inc.write(b"0123456789abc").unwrap();
        assert!(inc.too_big());
        assert_eq!(
            inc.finish(&env()).err().unwrap().code,
            status::QUEUE_TOO_BIG
        );
        assert_eq!(std::fs::read_dir(q.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn recover_skips_locked_files() {
        let (_d, q) = make_queue();
        let live = q.begin(0).unwrap();
        std::fs::write(q.tmp_dir().join("deadbeef"), b"partial").unwrap();
        let removed = recover_tmp(&q).unwrap();
        assert_eq!(removed, vec!["deadbeef".to_string()]);
        assert!(q.tmp(&live.id()).exists());
        live.abort();
    }

    #[test]
    fn periodic_sweep_spares_young_and_locked_files() {
        let (_d, q) = make_queue();
        let live = q.begin(0).unwrap();
        std::fs::write(q.tmp_dir().join("young"), b"partial").unwrap();
        let old = q.tmp_dir().join("old");
        std::fs::write(&old, b"partial").unwrap();
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(then)
            .unwrap();
        let removed = recover_tmp_older(&q, std::time::Duration::from_secs(3)).unwrap();
        assert_eq!(removed, vec!["old".to_string()]);
        assert!(q.tmp_dir().join("young").exists());
        assert!(q.tmp(&live.id()).exists());
        live.abort();
    }

    #[test]
    fn corrupt_files_are_errors() {
        let (d, _q) = make_queue();
        let p = d.path().join("x");
        std::fs::write(&p, b"short").unwrap();
        assert!(QueueFile::open(&p).is_err());
        let mut v = b"msg".to_vec();
        v.extend_from_slice(TRAILER_MAGIC);
        v.extend_from_slice(&100u64.to_le_bytes());
        std::fs::write(&p, &v).unwrap();
        assert!(QueueFile::open(&p).is_err());
    }

    #[test]
    fn strict_open_takes_regular_files_only() {
        let (d, _q) = make_queue();
        let good = d.path().join("good");
        let mut v = b"msg".to_vec();
        v.extend_from_slice(TRAILER1_MAGIC);
        v.extend_from_slice(&3u64.to_le_bytes());
        std::fs::write(&good, &v).unwrap();
        assert_eq!(QueueFile::open_strict(&good).unwrap().message_len, 3);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(QueueFile::open_strict(&link).is_err());
        // A FIFO would block a plain open for ever: refused at once.
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(QueueFile::open_strict(&fifo).is_err());
    }
}
