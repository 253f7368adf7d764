//! Putting a message into the queue from another program (sendmail, send's bounces,
//! local-deliver's forwards): runs ROOT/bin/queue with the message on its fd 0 and the
//! envelope on its fd 1, and returns its exit code (see [`crate::status`]).

use crate::envelope::Envelope;
use crate::root::Root;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

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
