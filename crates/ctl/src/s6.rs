//! The s6 side of ferryctl: is the supervision tree running, what state is each service in,
//! and the s6 tools that change it (`s6-svc`, `s6-svscanctl`), each with a time limit.
//!
//! The scan directory is ROOT/service; each service directory there (smtpd, send, inject, and the
//! submission services submission and smtps) has a `log/` service running s6-log into
//! ROOT/log/NAME.
//!
//! send, inject and smtpd are always handled. The submission services are installed down (a `down`
//! file, crate::init) until they are configured (a certificate and a credential:
//! [`not_configured`]); ferryctl handles them when they are up or enabled (no `down` file):
//! [`handled`]. `ferryctl start` enables and starts them once they are configured.

use crate::run::{self, Out};
use anyhow::{Context, Result};
use ferry_common::root::Root;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The supervised services, in the order they are started.
pub const SERVICES: &[&str] = &["send", "inject", "smtpd"];
/// The submission services (issue 9), started after those, down until configured.
pub const SUBMISSION: &[&str] = &["submission", "smtps"];
/// Every service ferryctl knows, in start order.
pub const ALL: &[&str] = &["send", "inject", "smtpd", "submission", "smtps"];

/// The program a service runs (the name its log lines carry): smtpd for the submission ones.
pub fn program(name: &str) -> &str {
    if SUBMISSION.contains(&name) {
        "smtpd"
    } else {
        name
    }
}

/// Is the service installed (its directory has a `run` script)?
pub fn installed(root: &Root, name: &str) -> bool {
    service_dir(root, name).join("run").exists()
}

/// Is the service installed and enabled (no `down` file: s6 starts it with the tree)?
pub fn enabled(root: &Root, name: &str) -> bool {
    installed(root, name) && !service_dir(root, name).join("down").exists()
}

/// What a submission service still needs before it can run, in words (None: nothing). It needs
/// control/tlscert and control/tlskey, and a password in control/passwords or a
/// control/checkpassword program. A password file this user cannot read counts as there.
pub fn not_configured(root: &Root) -> Option<String> {
    let mut missing = Vec::new();
    let control = |n: &str| root.control_file(n);
    if !control("tlscert").exists() || !control("tlskey").exists() {
        missing.push("no control/tlscert and tlskey".to_string());
    }
    let checkpassword = std::fs::read_to_string(control("checkpassword")).is_ok_and(|t| {
        t.lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
    });
    let passwords = match crate::passwd::list(root) {
        Ok(names) => !names.is_empty(),
        Err(_) => control("passwords").exists(),
    };
    if !passwords && !checkpassword {
        missing.push("no password (ferryctl passwd NAME) nor control/checkpassword".into());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The services ferryctl handles now, in start order: send and smtpd, and each submission
/// service that is up, or enabled and configured.
pub fn handled(root: &Root) -> Result<Vec<&'static str>> {
    let mut out = SERVICES.to_vec();
    let configured = not_configured(root).is_none();
    for name in SUBMISSION {
        if !installed(root, name) {
            continue;
        }
        let up = status(&service_dir(root, name))?.is_some_and(|s| s.up);
        if up || (configured && enabled(root, name)) {
            out.push(name);
        }
    }
    Ok(out)
}

/// How long s6-svc waits for a service to come up, go down or restart (its -T).
pub const WAIT_MS: u64 = 20_000;

pub fn service_dir(root: &Root, name: &str) -> PathBuf {
    root.service().join(name)
}

/// One service as `s6-svstat -o up,ready,pid,updownfor,readyfor` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub up: bool,
    pub ready: bool,
    pub pid: Option<u32>,
    /// Seconds since the service went up (or down).
    pub updownfor: u64,
    /// Seconds since it became ready (meaningful when ready).
    pub readyfor: u64,
}

pub fn parse_status(line: &str) -> Option<Status> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [up, ready, pid, updown, readyfor] = f.as_slice() else {
        return None;
    };
    let b = |s: &str| match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    Some(Status {
        up: b(up)?,
        ready: b(ready)?,
        pid: pid
            .parse::<i64>()
            .ok()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0),
        updownfor: updown.parse().ok()?,
        readyfor: readyfor.parse().ok()?,
    })
}

/// Is a process reading this control FIFO? (s6 opens it for reading while it runs; opening
/// it for writing without blocking fails with ENXIO when nobody does.)
fn fifo_listening(path: &Path) -> io::Result<bool> {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn reachable(path: &Path) -> Result<bool> {
    fifo_listening(path).with_context(|| {
        format!(
            "cannot reach {} (the supervision tree belongs to another user: run ferryctl as root)",
            path.display()
        )
    })
}

/// Is s6-svscan running on ROOT/service?
pub fn svscan_running(root: &Root) -> Result<bool> {
    reachable(&root.service().join(".s6-svscan/control"))
}

/// Is an s6-supervise process running for this service directory?
pub fn supervised(dir: &Path) -> Result<bool> {
    reachable(&dir.join("supervise/control"))
}

/// The service's state; None when no s6-supervise runs for it.
pub fn status(dir: &Path) -> Result<Option<Status>> {
    if !supervised(dir)? {
        return Ok(None);
    }
    // s6-supervise opens supervise/control a moment before it writes supervise/status: a
    // service taken up just now may have no status yet (ctlcheck met that window).
    let mut tries = 0;
    let out = loop {
        let out = tool(
            "s6-svstat",
            &["-o", "up,ready,pid,updownfor,readyfor"],
            dir,
            Duration::from_secs(10),
        )?;
        tries += 1;
        if out.ok() || !out.stderr.contains("unable to read status") || tries >= 100 {
            break out;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !out.ok() {
        if out.stderr.contains("not running") {
            return Ok(None);
        }
        anyhow::bail!("s6-svstat {}: {}", dir.display(), out.message());
    }
    parse_status(out.stdout.trim())
        .with_context(|| {
            format!(
                "s6-svstat {}: unexpected output {:?}",
                dir.display(),
                out.stdout.trim()
            )
        })
        .map(Some)
}

/// Runs an s6 tool on `dir` with a time limit.
pub fn tool(program: &str, args: &[&str], dir: &Path, limit: Duration) -> Result<Out> {
    run::run(Command::new(program).args(args).arg(dir), limit)
        .map_err(|e| run::not_installed(program, &e))
}

/// `s6-svc FLAGS DIR` with its own -T limit (when waiting) and ours a little longer.
pub fn svc(flags: &[&str], dir: &Path) -> Result<Out> {
    let t = WAIT_MS.to_string();
    let mut args: Vec<&str> = Vec::new();
    if flags.iter().any(|f| f.starts_with("-w")) {
        args.extend(["-T", t.as_str()]);
    }
    args.extend(flags);
    tool("s6-svc", &args, dir, Duration::from_millis(WAIT_MS + 5000))
}

/// Starts `s6-svscan ROOT/service` in a session of its own, detached from this terminal:
/// stdin /dev/null, output appended to ROOT/log/svscan.log (or /dev/null), a clean
/// environment with only PATH. Returns its pid.
pub fn spawn_svscan(root: &Root) -> Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.log().join("svscan.log"));
    let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut cmd = Command::new("s6-svscan");
    cmd.arg(root.service())
        .env_clear()
        .env("PATH", path)
        .current_dir(root.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    ferry_sys::command_setsid(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| run::not_installed("s6-svscan", &e))?;
    Ok(child.id())
}

/// Waits until `cond` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "5m 3s", "2h 10m", "3d 4h": an uptime.
pub fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// The last `n` lines of a service's current log, to show why it did not come up.
pub fn log_tail(root: &Root, service: &str, n: usize) -> Vec<String> {
    let path = root.log().join(service).join("current");
    let Ok(f) = std::fs::File::open(&path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f;
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let _ = f.take(8192).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svstat_lines() {
        assert_eq!(
            parse_status("true true 7141 12 11"),
            Some(Status {
                up: true,
                ready: true,
                pid: Some(7141),
                updownfor: 12,
                readyfor: 11
            })
        );
        let down = parse_status("false false -1 3 3").unwrap();
        assert!(!down.up && down.pid.is_none());
        assert_eq!(parse_status("true"), None);
        assert_eq!(parse_status("yes true 1 2 3"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(303), "5m 3s");
        assert_eq!(duration(7800), "2h 10m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d 4h");
    }

    #[test]
    fn no_tree_is_not_running() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::at(d.path());
        assert!(!svscan_running(&root).unwrap());
        assert!(!supervised(&d.path().join("service/send")).unwrap());
    }
}
