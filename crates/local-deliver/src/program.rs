//! Program delivery (`|command` in a .ferry file): `/bin/sh -c command` in the home directory,
//! the message (with the added header lines) on stdin, the usual environment (SENDER,
//! RECIPIENT, LOCAL, EXT, HOST, DTLINE, ...). Exit 0 delivered; 99 delivered and the
//! remaining lines of the .ferry file are skipped; 100 and 64, 65, 70, 76, 77, 78, 112
//! permanent failure (qmail's rule); anything else, a signal or the timeout, temporary.
//! The first bytes of the program's output become the failure text.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub enum ProgramResult {
    Delivered,
    DeliveredStop,
    Permanent(String),
    Temporary(String),
}

const TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_OUTPUT: usize = 1000;

pub fn run(
    cmd: &str,
    home: &Path,
    env: &[(String, String)],
    prefix: &[u8],
    msg: &mut (dyn Read + Send),
) -> io::Result<ProgramResult> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(home)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    let out = std::thread::spawn(move || collect(&mut stdout));
    let err = std::thread::spawn(move || collect(&mut stderr));
    let stdin = child.stdin.take();
    let status = std::thread::scope(|scope| -> io::Result<_> {
        if let Some(mut stdin) = stdin {
            // A program may exit without reading all of its input: that is not an error.
            // The writer is a thread so that the timeout below holds even if it never reads.
            scope.spawn(move || {
                let _ = stdin
                    .write_all(prefix)
                    .and_then(|_| io::copy(msg, &mut stdin).map(|_| ()));
            });
        }
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })?;
    let mut text = out.join().unwrap_or_default();
    text.push_str(&err.join().unwrap_or_default());
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(status) = status else {
        return Ok(ProgramResult::Temporary(format!(
            "program timed out after {}s: {cmd}",
            TIMEOUT.as_secs()
        )));
    };
    let describe = |what: &str| {
        if text.is_empty() {
            format!("{what}: {cmd}")
        } else {
            format!("{what}: {text}")
        }
    };
    Ok(match status.code() {
        Some(0) => ProgramResult::Delivered,
        Some(99) => ProgramResult::DeliveredStop,
        Some(c @ (64 | 65 | 70 | 76 | 77 | 78 | 100 | 112)) => {
            ProgramResult::Permanent(describe(&format!("program exited {c}")))
        }
        Some(c) => ProgramResult::Temporary(describe(&format!("program exited {c}"))),
        None => ProgramResult::Temporary(describe("program killed by a signal")),
    })
}

fn collect(r: &mut dyn Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}
