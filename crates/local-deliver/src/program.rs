//! Program delivery (`|command` in a .ferry file): `/bin/sh -c command` in the home directory,
//! the message (with the added header lines) on stdin, the usual environment (SENDER,
//! RECIPIENT, LOCAL, EXT, HOST, DTLINE, ...). Exit 0 delivered; 99 delivered and the
//! remaining lines of the .ferry file are skipped; 100 and 64, 65, 70, 76, 77, 78, 112
//! permanent failure (qmail's rule); anything else, a signal or the timeout, temporary.
//! The first bytes of the program's output become the failure text.
//!
//! The program leads a process group of its own and gets only fds 0, 1 and 2. One loop
//! feeds its stdin and reads its stdout and stderr without blocking, so that neither a
//! program that does not read nor a background child that keeps a pipe open can hold the
//! worker: once `sh` has exited, what is already in the pipes is read and the pipes are
//! closed. On the timeout the whole process group is killed, not only `sh`.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
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
    run_for(cmd, home, env, prefix, msg, TIMEOUT)
}

fn nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// [`run`] with a timeout of `timeout`.
pub fn run_for(
    cmd: &str,
    home: &Path,
    env: &[(String, String)],
    prefix: &[u8],
    msg: &mut (dyn Read + Send),
    timeout: Duration,
) -> io::Result<ProgramResult> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .current_dir(home)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    ferry_sys::command_close_from(&mut command, 3);
    let mut child = command.spawn()?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdin = child.stdin.take();
    let mut outs = [
        child.stdout.take().map(Out::Stdout),
        child.stderr.take().map(Out::Stderr),
    ];
    if let Some(i) = &stdin {
        nonblocking(i)?;
    }
    for o in outs.iter().flatten() {
        nonblocking(o)?;
    }
    let mut text = Vec::new();
    // The input: the prefix, then the message, a chunk at a time.
    let mut chunk: Vec<u8> = prefix.to_vec();
    let mut sent = 0;
    let mut input_done = false;
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            // Exited: take what its output pipes already hold, and no more (a child of it
            // may keep them open for ever).
            for o in outs.iter_mut().flatten() {
                drain(o, &mut buf, &mut text);
            }
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        // Feed stdin while it takes data.
        if let Some(i) = stdin.as_mut() {
            loop {
                if sent == chunk.len() && !input_done {
                    let n = match msg.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return kill_and(pgid, &mut child, Err(e)),
                    };
                    chunk.clear();
                    chunk.extend_from_slice(&buf[..n]);
                    sent = 0;
                    input_done = n == 0;
                }
                if sent == chunk.len() {
                    break;
                }
                match i.write(&chunk[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // A program may exit without reading all of its input: not an error.
                    Err(_) => {
                        input_done = true;
                        sent = chunk.len();
                        break;
                    }
                }
            }
            if input_done && sent == chunk.len() {
                stdin = None;
            }
        }
        let mut open = 0;
        for o in outs.iter_mut() {
            if let Some(out) = o {
                if drain(out, &mut buf, &mut text) {
                    *o = None;
                } else {
                    open += 1;
                }
            }
        }
        // Wait for something to do: input room, output, or (polling) the exit.
        let mut fds = Vec::new();
        if let Some(i) = &stdin {
            fds.push(nix::poll::PollFd::new(
                i.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            ));
        }
        for o in outs.iter().flatten() {
            fds.push(nix::poll::PollFd::new(
                o.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        let wait: u16 = if open == 0 && stdin.is_none() { 5 } else { 20 };
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(wait.into()));
        } else {
            match nix::poll::poll(&mut fds, wait) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return kill_and(pgid, &mut child, Err(e.into())),
            }
        }
    };
    drop(stdin);
    drop(outs);
    let text = String::from_utf8_lossy(&text).into_owned();
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

/// The program's stdout or stderr.
enum Out {
    Stdout(std::process::ChildStdout),
    Stderr(std::process::ChildStderr),
}

impl AsFd for Out {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Out::Stdout(o) => o.as_fd(),
            Out::Stderr(e) => e.as_fd(),
        }
    }
}

/// Reads what the pipe holds now, keeping the first MAX_OUTPUT bytes, at most 16 buffers a
/// call (a writer faster than this reader must not keep it from checking the timeout). True
/// at its end.
fn drain(o: &mut Out, buf: &mut [u8], kept: &mut Vec<u8>) -> bool {
    for _ in 0..16 {
        let r = match o {
            Out::Stdout(x) => x.read(buf),
            Out::Stderr(x) => x.read(buf),
        };
        match r {
            Ok(0) => return true,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

fn kill_and<T>(pgid: nix::unistd::Pid, child: &mut std::process::Child, r: T) -> T {
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17, item 18: on the timeout the whole process group goes (here a background
    /// `sleep` that also holds stdout open), and the worker is not held by it.
    #[test]
    fn timeout_kills_the_process_group() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("bg.pid");
        let cmd = format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display());
        let started = Instant::now();
        let r = run_for(
            &cmd,
            d.path(),
            &[],
            b"",
            &mut &b"msg\n"[..],
            Duration::from_millis(500),
        )
        .unwrap();
        assert!(matches!(r, ProgramResult::Temporary(ref t) if t.contains("timed out")));
        assert!(started.elapsed() < Duration::from_secs(60));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed by SIGKILL: gone, or a zombie until init reaps it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = state
                .split(") ")
                .nth(1)
                .is_some_and(|s| !s.starts_with('Z'));
            if !alive {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the background child {pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A program that exits while its background child keeps stdout open is reported at once.
    #[test]
    fn a_child_holding_stdout_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("bg.pid");
        let cmd = format!(
            "sleep 300 & echo $! > {}; echo some output; exit 100",
            pidfile.display()
        );
        let r = run_for(
            &cmd,
            d.path(),
            &[],
            b"",
            &mut &b"msg\n"[..],
            Duration::from_secs(120),
        )
        .unwrap();
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(
            matches!(r, ProgramResult::Permanent(ref t) if t.contains("some output")),
            "{}",
            match r {
                ProgramResult::Permanent(t) | ProgramResult::Temporary(t) => t,
                _ => "delivered".into(),
            }
        );
    }

    /// A fast writer left behind after the program exits (from the security review): the
    /// worker takes what the pipe holds and returns, it does not read for ever.
    #[test]
    fn a_fast_writer_left_behind_does_not_hold_the_worker() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("bg.pid");
        let cmd = format!("yes & echo $! > {}; exit 0", pidfile.display());
        let r = run_for(
            &cmd,
            d.path(),
            &[],
            b"",
            &mut &b"msg\n"[..],
            Duration::from_secs(120),
        )
        .unwrap();
        if let Ok(pid) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(matches!(r, ProgramResult::Delivered));
    }

    /// A program that never reads its input does not block either.
    #[test]
    fn unread_input_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let big = vec![b'x'; 1 << 20];
        let r = run_for(
            "exit 0",
            d.path(),
            &[],
            b"",
            &mut &big[..],
            Duration::from_secs(120),
        )
        .unwrap();
        assert!(matches!(r, ProgramResult::Delivered));
        let r = run_for(
            "head -c 10 >/dev/null; sleep 0.2",
            d.path(),
            &[],
            b"",
            &mut &big[..],
            Duration::from_secs(120),
        )
        .unwrap();
        assert!(matches!(r, ProgramResult::Delivered));
    }
}
