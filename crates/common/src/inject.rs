//! Putting a message into the queue from another program (sendmail, send's bounces,
//! local-deliver's forwards): runs ROOT/bin/queue with the message on its fd 0 and the
//! envelope on its fd 1, and returns its exit code (see [`crate::status`]). sendmail first
//! offers it to the `inject` service over ROOT/inject/socket ([`submit`]), which queues it
//! without starting a process.

use crate::envelope::Envelope;
use crate::record::{self, Record};
use crate::root::Root;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Largest `D` record a client sends (the server refuses larger ones).
pub const CHUNK: usize = 64 * 1024;
/// How long the client waits for the server's greeting before it runs `queue` itself.
const GREETING_WAIT: Duration = Duration::from_secs(5);
/// How long it waits for the verdict once the message is sent (the commit is a few syncs).
const VERDICT_WAIT: Duration = Duration::from_secs(600);

/// What `queue` said: its exit code and its one line of explanation (empty on success).
pub struct QueueResult {
    pub code: i32,
    pub message: String,
}

impl QueueResult {
    /// The explanation: queue's own line, else the meaning of the exit code.
    pub fn reason(&self) -> String {
        let m = self.message.trim().trim_start_matches("queue: ").trim();
        if m.is_empty() {
            crate::status::queue_exit(self.code).meaning.to_string()
        } else {
            m.to_string()
        }
    }
}

/// Runs `queue`, streaming the message from `message`. Err if it could not run at all.
pub fn run_queue(root: &Root, message: &mut dyn Read, env: &Envelope) -> io::Result<QueueResult> {
    run(root, Some(message), None, env)
}

/// Runs `queue --forward ADDRESS` for mail that came to `address`, with `message` (lspawn's
/// sealed copy of the queued message) as its fd 0: queue adds Delivered-To, rewrites the
/// sender by SRS and seals the message with ARC (crates/queue/src/main.rs).
pub fn run_queue_forward(
    root: &Root,
    message: &std::fs::File,
    address: &str,
    env: &Envelope,
) -> io::Result<QueueResult> {
    run(root, None, Some((message, address)), env)
}

fn run(
    root: &Root,
    stream: Option<&mut dyn Read>,
    forward: Option<(&std::fs::File, &str)>,
    env: &Envelope,
) -> io::Result<QueueResult> {
    let (env_r, env_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let mut cmd = Command::new(root.bin("queue"));
    match forward {
        Some((file, address)) => {
            cmd.arg("--forward")
                .arg(address)
                .stdin(Stdio::from(file.try_clone()?));
        }
        None => {
            cmd.stdin(Stdio::piped());
        }
    }
    let mut child = cmd
        .env_clear()
        .stdout(Stdio::from(env_r))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", root.bin("queue").display()),
            )
        })?;
    let copied = match (stream, child.stdin.take()) {
        (Some(message), Some(mut stdin)) => io::copy(message, &mut stdin),
        (Some(_), None) => Err(io::Error::other("no stdin pipe")),
        (None, _) => Ok(0),
    };
    let mut env_w = std::fs::File::from(env_w);
    // If queue refused early (e.g. too big) it exits without reading: ignore EPIPE here and
    // let the exit code tell.
    if copied.is_ok() {
        let _ = env_w.write_all(&env.encode());
    }
    drop(env_w);
    let mut text = String::new();
    if let Some(err) = child.stderr.take() {
        let _ = err.take(4096).read_to_string(&mut text);
    }
    let status = child.wait()?;
    if let Err(e) = copied
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(e);
    }
    Ok(QueueResult {
        code: status.code().unwrap_or(crate::status::QUEUE_BUG),
        message: text,
    })
}

/// Offers the message to the `inject` service (protocol in crates/queue/src/bin/inject.rs and
/// docs/INTERNALS.md). Ok(None) when the service is not running or is busy: nothing has been
/// read from `message`, so the caller runs `queue` instead. Err when the service went away
/// after the message was begun: it was not queued (the caller must say "try again").
pub fn submit(
    root: &Root,
    message: &mut dyn Read,
    env: &Envelope,
) -> io::Result<Option<QueueResult>> {
    let Ok(mut sock) = UnixStream::connect(root.inject_socket()) else {
        return Ok(None);
    };
    sock.set_read_timeout(Some(GREETING_WAIT))?;
    match record::read_blocking_max(&mut sock, 1024) {
        Ok(Some(r)) if r.kind == b'H' => {}
        // Busy, or not answering: queue it the old way.
        _ => return Ok(None),
    }
    sock.set_read_timeout(Some(VERDICT_WAIT))?;
    let sent = send_message(&mut sock, message, env);
    if sent.is_err() {
        // Cut short (no `.`): the server drops what it has and closes.
        let _ = sock.shutdown(std::net::Shutdown::Write);
    }
    // A refusal may come before the whole message was sent (the server reads it to its end,
    // so its verdict is there to read whatever happened to the writes).
    let verdict = record::read_blocking_max(&mut sock, 8192);
    match verdict {
        Ok(Some(r)) if r.kind == b'K' => Ok(Some(QueueResult {
            code: crate::status::QUEUE_OK,
            message: format!("queue: queued as {}", r.str(0).unwrap_or("?")),
        })),
        Ok(Some(r)) if r.kind == b'F' => Ok(Some(QueueResult {
            code: r
                .str(0)
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(crate::status::QUEUE_BUG),
            message: r.str(1).unwrap_or("").to_string(),
        })),
        Ok(_) => Err(sent.err().unwrap_or_else(|| {
            io::Error::other("the inject service closed the connection without a verdict")
        })),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("no verdict from the inject service: {e}"),
        )),
    }
}

fn send_message(sock: &mut UnixStream, message: &mut dyn Read, env: &Envelope) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(CHUNK + 64, &*sock);
    out.write_all(&Record::new(b'E').with(env.encode()).encode())?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match message.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The message is cut short: no `.`, so the server drops what it has.
            Err(e) => return Err(e),
        };
        out.write_all(&Record::new(b'D').with(&buf[..n]).encode())?;
    }
    out.write_all(&Record::new(b'.').encode())?;
    out.flush()
}
