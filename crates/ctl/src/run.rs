//! Running an outside program (the s6 tools, `hostname -f`) with a time limit and bounded
//! output, so that ferryctl never hangs on a stuck helper.

use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a program said and how it ended.
pub struct Out {
    /// The exit code; None if it was killed by a signal or ran over the limit.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The first line of stderr (or stdout), for a one-line message.
    pub fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        if self.timed_out {
            format!(
                "timed out{}",
                if line.is_empty() {
                    String::new()
                } else {
                    format!(": {line}")
                }
            )
        } else if line.is_empty() {
            format!(
                "exit {}",
                self.code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "by a signal".into())
            )
        } else {
            line.to_string()
        }
    }
}

const MAX_OUTPUT: u64 = 64 * 1024;

fn reader(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            let _ = p.take(MAX_OUTPUT).read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Runs `cmd` (stdin from /dev/null) for at most `limit`; kills it after that.
/// Err only if it cannot be started at all (not installed, not executable).
pub fn run(cmd: &mut Command, limit: Duration) -> io::Result<Out> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out_rx = reader(child.stdout.take());
    let err_rx = reader(child.stderr.take());
    let deadline = Instant::now() + limit;
    let (code, timed_out) = loop {
        match child.try_wait()? {
            Some(st) => break (st.code(), false),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // A grandchild may hold a pipe open: wait for the output only a little longer.
    let grace = Duration::from_millis(500);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Ok(Out {
        code,
        stdout,
        stderr,
        timed_out,
    })
}

/// `program` could not be started: say which package provides it.
pub fn not_installed(program: &str, e: &io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound {
        let pkg = if program.starts_with("s6-") {
            "s6"
        } else {
            program
        };
        anyhow::anyhow!("{program} is not installed (apt-get install {pkg})")
    } else {
        anyhow::anyhow!("cannot run {program}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_exit_and_timeout() {
        let o = run(
            Command::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            (o.code, o.stdout.as_str(), o.message()),
            (Some(3), "hi\n", "oops".to_string())
        );
        let o = run(Command::new("sleep").arg("5"), Duration::from_millis(100)).unwrap();
        assert!(o.timed_out && o.code.is_none());
        assert!(run(&mut Command::new("/nonexistent/x"), Duration::from_secs(1)).is_err());
    }
}
