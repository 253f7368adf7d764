//! start — the first program of the `send` service.
//!
//! Usage: `start [READY-FD]` (from service/send/run, as root; or as a normal user in
//! single-user mode). READY-FD is s6's notification fd, passed on to send.
//!
//! Creates one pair of pipes per helper and starts:
//! - `lspawn` as root (it must start local-deliver as each recipient user),
//! - `rspawn` as ferryr,
//! - `clean` as ferryq,
//!
//! each with fd 0 = requests from send and fd 1 = replies to send, stderr shared (the log),
//! and no other descriptor (not READY-FD: only send reports readiness).
//! Then it becomes `send` (exec, as ferrys) with the other ends at fixed numbers:
//! fds 3/4 = to/from lspawn, 5/6 = to/from rspawn, 7/8 = to/from clean, READY-FD passed on
//! as fd 9, and nothing else.
//! If any helper dies, send sees its pipe close, stops cleanly and exits; s6 then restarts the
//! whole service. Exit 111 if something cannot be set up.

use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use ferry_common::{config::Config, log};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn main() {
    log::init("start");
    let err = run();
    log!("fatal: {err:#}");
    std::process::exit(111);
}

struct Helper {
    /// send's ends: it writes requests to `to`, reads replies from `from`.
    to: OwnedFd,
    from: OwnedFd,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn spawn(root: &Root, program: &str, cred: Option<&ferry_sys::Cred>) -> std::io::Result<Helper> {
    let (req_r, req_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let mut cmd = Command::new(root.bin(program));
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(root.path())
        .stdin(Stdio::from(req_r))
        .stdout(Stdio::from(rep_w))
        .stderr(Stdio::inherit());
    ferry_sys::command_close_from(&mut cmd, 3);
    if let Some(c) = cred {
        ferry_sys::command_as(&mut cmd, c);
    }
    cmd.spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
    Ok(Helper {
        to: req_w,
        from: rep_r,
    })
}

fn run() -> std::io::Error {
    let root = match Root::from_exe() {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Err(e) = Config::load(&root) {
        return std::io::Error::other(format!("{e} (fix it; ferryctl check lists every problem)"));
    }
    let mode = Mode::current();
    log!("{}", mode.describe());
    let creds = (|| -> std::io::Result<_> {
        Ok(match mode {
            Mode::Separated => (
                Some(mode.cred(users::REMOTE)?),
                Some(mode.cred(users::QUEUE)?),
                Some(mode.cred(users::SEND)?),
            ),
            Mode::SingleUser => (None, None, None),
        })
    })();
    let (remote, queue, send) = match creds {
        Ok(c) => c,
        Err(e) => return e,
    };
    // READY-FD is taken (close-on-exec) so that no helper inherits it.
    let ready = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<i32>().ok())
        .and_then(ferry_sys::take_fd);
    let helpers = (|| -> std::io::Result<_> {
        Ok((
            spawn(&root, "lspawn", None)?,
            spawn(&root, "rspawn", remote.as_ref())?,
            spawn(&root, "clean", queue.as_ref())?,
        ))
    })();
    let (l, r, c) = match helpers {
        Ok(h) => h,
        Err(e) => return e,
    };
    let mut cmd = Command::new(root.bin("send"));
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(root.path());
    let mut fds = vec![
        (l.to.as_raw_fd(), 3),
        (l.from.as_raw_fd(), 4),
        (r.to.as_raw_fd(), 5),
        (r.from.as_raw_fd(), 6),
        (c.to.as_raw_fd(), 7),
        (c.from.as_raw_fd(), 8),
    ];
    // s6's notification fd becomes fd 9 of send, whatever number s6 gave it.
    if let Some(fd) = &ready {
        fds.push((fd.as_raw_fd(), 9));
        cmd.arg("9");
    }
    ferry_sys::command_fds(&mut cmd, fds);
    ferry_sys::command_close_from(&mut cmd, 10);
    if let Some(s) = &send {
        ferry_sys::command_as(&mut cmd, s);
    }
    cmd.exec()
}
