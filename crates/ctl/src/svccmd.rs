//! `ferryctl start | stop [--all] | restart | reload`: drive the services under s6, one line
//! of report per service. `start` also starts the supervision tree (s6-svscan on
//! ROOT/service) when it is not running, as `make run` and systemd do.
//!
//! The submission services (submission, smtps) are handled when they are up or enabled (no
//! `down` file: crate::s6::handled). `start` enables one (removes its `down` file) and starts
//! it once it is configured (a certificate and a credential: crate::s6::not_configured);
//! until then it says `not started (not configured: ...)`, which is not a failure.

use crate::problem;
use crate::s6::{self, Status};
use anyhow::Result;
use ferry_common::root::Root;
use ferry_common::users::Mode;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Refuses to run the tree as the wrong user: a separated root needs root (the services
/// switch users); a single-user root belongs to one user and must not be run by another.
fn right_user(root: &Root) -> Result<()> {
    let me = ferry_sys::uids().1;
    match Mode::of_root(root) {
        Mode::Separated if me != 0 => {
            return Err(problem(format!(
                "{} separates privileges: run ferryctl as root (sudo {})",
                root.path().display(),
                root.bin("ferryctl").display()
            )));
        }
        Mode::SingleUser => {
            let owner = std::fs::metadata(root.queue()).map(|m| m.uid()).ok();
            if let Some(o) = owner
                && o != me
            {
                let name = nix::unistd::User::from_uid(o.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or(o.to_string());
                return Err(problem(format!(
                    "{} is a single-user root of {name}: run ferryctl as {name}",
                    root.path().display()
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_services(root: &Root) -> Result<()> {
    for name in s6::SERVICES {
        if !s6::service_dir(root, name).join("run").exists() {
            return Err(problem(format!(
                "{} has no service {name}: run {} init",
                root.service().display(),
                root.bin("ferryctl").display()
            )));
        }
    }
    Ok(())
}

fn up_text(st: &Status) -> String {
    let pid = st.pid.map(|p| format!("pid {p}, ")).unwrap_or_default();
    format!(
        "{pid}up {}{}",
        s6::duration(st.updownfor),
        if st.ready {
            ", ready"
        } else {
            ", not ready yet"
        }
    )
}

/// Why an `s6-svc -w…` failed, in words (exit 99 is its own time limit).
fn wait_failure(out: &crate::run::Out) -> String {
    if out.code == Some(99) {
        "s6 timed out waiting".into()
    } else {
        out.message()
    }
}

fn failed_up(root: &Root, name: &str, why: &str) -> Vec<String> {
    let mut v = vec![format!(
        "{name}: did not come up within {} s ({why}); see {} log {name}",
        s6::WAIT_MS / 1000,
        root.bin("ferryctl").display()
    )];
    v.extend(
        s6::log_tail(root, name, 5)
            .into_iter()
            .map(|l| format!("    {l}")),
    );
    v
}

/// Brings one service up and ready; returns the report lines and whether it worked.
fn bring_up(root: &Root, name: &str, fresh_tree: bool) -> Result<(Vec<String>, bool)> {
    let dir = s6::service_dir(root, name);
    let before = s6::status(&dir)?;
    if let Some(st) = &before
        && st.up
        && st.ready
        && !fresh_tree
    {
        return Ok((vec![format!("{name}: already up ({})", up_text(st))], true));
    }
    let out = s6::svc(&["-wU", "-u"], &dir)?;
    // The logger too, in case someone stopped it.
    let _ = s6::svc(&["-u"], &dir.join("log"));
    if !out.ok() {
        return Ok((failed_up(root, name, &wait_failure(&out)), false));
    }
    match s6::status(&dir)? {
        Some(st) if st.up => Ok((vec![format!("{name}: started ({})", up_text(&st))], true)),
        _ => Ok((failed_up(root, name, "it went down again"), false)),
    }
}

pub fn start(root: &Root) -> Result<(Vec<String>, i32)> {
    check_services(root)?;
    right_user(root)?;
    let mut lines = Vec::new();
    let fresh = !s6::svscan_running(root)?;
    let all_supervised = || {
        s6::svscan_running(root).unwrap_or(false)
            && s6::ALL
                .iter()
                .filter(|n| s6::installed(root, n))
                .all(|n| s6::supervised(&s6::service_dir(root, n)).unwrap_or(false))
    };
    if fresh {
        let pid = s6::spawn_svscan(root)?;
        lines.push(format!(
            "supervision: started s6-svscan on {} (pid {pid}, its own output in {})",
            root.service().display(),
            root.log().join("svscan.log").display()
        ));
    } else if !all_supervised() {
        // A service directory s6-svscan has not picked up yet: ask it to rescan.
        let out = s6::tool(
            "s6-svscanctl",
            &["-a"],
            &root.service(),
            Duration::from_secs(10),
        )?;
        lines.push(format!(
            "supervision: asked s6-svscan to rescan {} ({})",
            root.service().display(),
            if out.ok() { "ok".into() } else { out.message() }
        ));
    }
    if !s6::wait_until(Duration::from_secs(10), all_supervised) {
        lines.push(format!(
            "supervision: s6-svscan did not take up the services within 10 s; see {}",
            root.log().join("svscan.log").display()
        ));
        return Ok((lines, 1));
    }
    let mut code = 0;
    for name in s6::SERVICES {
        let (l, ok) = bring_up(root, name, fresh)?;
        lines.extend(l);
        if !ok {
            code = 1;
        }
    }
    for name in s6::SUBMISSION {
        let (l, ok) = start_submission(root, name, fresh)?;
        lines.extend(l);
        if !ok {
            code = 1;
        }
    }
    Ok((lines, code))
}

/// A submission service at `start`: left alone when it is not installed, kept down while it is
/// not configured (not a failure), else enabled (its `down` file removed) and brought up.
fn start_submission(root: &Root, name: &str, fresh: bool) -> Result<(Vec<String>, bool)> {
    if !s6::installed(root, name) {
        return Ok((Vec::new(), true));
    }
    let dir = s6::service_dir(root, name);
    let up = s6::status(&dir)?.is_some_and(|s| s.up);
    if !up && let Some(why) = s6::not_configured(root) {
        if s6::enabled(root, name) {
            // Enabled by hand but unable to run: keep s6 from restarting it every second.
            let _ = s6::svc(&["-d"], &dir);
        }
        return Ok((
            vec![format!(
                "{name}: not started (not configured: {why}; {} setup says how)",
                root.bin("ferryctl").display()
            )],
            true,
        ));
    }
    let mut lines = Vec::new();
    let down = dir.join("down");
    if down.exists() {
        std::fs::remove_file(&down)
            .map_err(|e| problem(format!("cannot remove {}: {e}", down.display())))?;
        lines.push(format!(
            "{name}: configured: removed {} (s6 starts it with the tree from now on)",
            down.display()
        ));
    }
    let (l, ok) = bring_up(root, name, fresh)?;
    lines.extend(l);
    Ok((lines, ok))
}

fn tree_down(root: &Root) -> Vec<String> {
    vec![format!(
        "the supervision tree is not running: {} start starts it",
        root.bin("ferryctl").display()
    )]
}

pub fn stop(root: &Root, all: bool) -> Result<(Vec<String>, i32)> {
    check_services(root)?;
    let mut lines = Vec::new();
    let mut code = 0;
    if !s6::svscan_running(root)? {
        lines.push("supervision: s6-svscan is not running; nothing to stop".into());
        return Ok((lines, 0));
    }
    right_user(root)?;
    // smtpd (and submission) first: stop taking mail before the scheduler goes.
    for name in s6::handled(root)?.iter().rev() {
        let dir = s6::service_dir(root, name);
        match s6::status(&dir)? {
            None => lines.push(format!("{name}: not supervised")),
            // Down now, maybe between two crashes: still tell s6 to keep it down.
            Some(st) => {
                let out = s6::svc(&["-wD", "-d"], &dir)?;
                if !out.ok() {
                    lines.push(format!(
                        "{name}: did not stop within {} s ({})",
                        s6::WAIT_MS / 1000,
                        wait_failure(&out)
                    ));
                    code = 1;
                } else if st.up {
                    lines.push(format!(
                        "{name}: stopped (pid {} was up {})",
                        st.pid.unwrap_or(0),
                        s6::duration(st.updownfor)
                    ));
                } else {
                    lines.push(format!("{name}: already down (now kept down)"));
                }
            }
        }
    }
    if all {
        let out = s6::tool(
            "s6-svscanctl",
            &["-t"],
            &root.service(),
            Duration::from_secs(10),
        )?;
        let gone = out.ok()
            && s6::wait_until(Duration::from_millis(s6::WAIT_MS), || {
                !s6::svscan_running(root).unwrap_or(true)
            });
        if gone {
            lines.push("supervision: s6-svscan and the loggers stopped".into());
        } else {
            lines.push(format!(
                "supervision: s6-svscan did not stop ({})",
                out.message()
            ));
            code = 1;
        }
    } else {
        lines.push(
            "supervision: s6-svscan and the loggers keep running (stop --all stops them too)"
                .into(),
        );
    }
    lines.push("the queue is kept: start delivers what is in it".into());
    Ok((lines, code))
}

pub fn restart(root: &Root) -> Result<(Vec<String>, i32)> {
    check_services(root)?;
    if !s6::svscan_running(root)? {
        return Ok((tree_down(root), 1));
    }
    right_user(root)?;
    let mut lines = Vec::new();
    let mut code = 0;
    for name in s6::handled(root)? {
        let dir = s6::service_dir(root, name);
        let before = s6::status(&dir)?;
        let was_up = before.as_ref().is_some_and(|s| s.up);
        let out = if was_up {
            s6::svc(&["-wR", "-r"], &dir)?
        } else {
            s6::svc(&["-wU", "-u"], &dir)?
        };
        let after = s6::status(&dir)?;
        match (out.ok(), &after) {
            (true, Some(st)) if st.up => {
                let old = before
                    .and_then(|b| b.pid)
                    .map(|p| format!("pid {p} → "))
                    .unwrap_or_default();
                let verb = if was_up {
                    "restarted"
                } else {
                    "was down, started"
                };
                lines.push(format!("{name}: {verb} ({old}{})", up_text(st)));
            }
            _ => {
                lines.extend(failed_up(root, name, &wait_failure(&out)));
                code = 1;
            }
        }
    }
    Ok((lines, code))
}

/// `ferryctl reload`: each service's verdict, not only that a HUP went out. send is asked
/// over queue/ctl/send (it answers `reloaded` or `refused: why`); smtpd, which has no control
/// socket, gets HUP and its answer is read back from its log (crate::logverdict); so do the
/// submission services (smtpd too: their lines say `smtpd:` in log/submission, log/smtps). Exit 1 when
/// a service is down, refused, reloaded only in part (`reload: ...` warnings: e.g. the
/// certificate could not be read, the old one stays), or its verdict could not be read.
pub fn reload(root: &Root) -> Result<(Vec<String>, i32)> {
    check_services(root)?;
    if !s6::svscan_running(root)? {
        return Ok((tree_down(root), 1));
    }
    right_user(root)?;
    let mut lines = Vec::new();
    let mut code = 0;
    for name in s6::handled(root)? {
        let dir = s6::service_dir(root, name);
        let (line, ok) = match s6::status(&dir)? {
            Some(st) if st.up => {
                let pid = st.pid.unwrap_or(0);
                if name == "send" {
                    reload_send(root, &dir, pid)?
                } else {
                    reload_by_hup(root, name, &dir, pid)?
                }
            }
            _ => (
                format!(
                    "{name}: down, not reloaded ({} start)",
                    root.bin("ferryctl").display()
                ),
                false,
            ),
        };
        lines.push(line);
        if !ok {
            code = 1;
        }
    }
    Ok((lines, code))
}

/// send answers over its control socket; if it cannot be asked, HUP and its log.
fn reload_send(root: &Root, dir: &std::path::Path, pid: u32) -> Result<(String, bool)> {
    let q = ferry_common::queue::Queue::new(root);
    match crate::ctlsock::ask(&q, ferry_common::record::Record::new(b'R')) {
        Ok(Ok(_)) => Ok((
            format!(
                "send: reloaded (pid {pid}, asked over queue/ctl/send): it uses the control files now"
            ),
            true,
        )),
        Ok(Err(why)) => {
            let why = why.strip_prefix("refused: ").unwrap_or(&why);
            Ok((
                format!("send: reload refused (pid {pid}), the old settings stay: {why}"),
                false,
            ))
        }
        Err(e) => {
            let (line, ok) = reload_by_hup(root, "send", dir, pid)?;
            Ok((format!("{line} (queue/ctl/send: {e:#})"), ok))
        }
    }
}

/// HUP, then the verdict from the service's log.
fn reload_by_hup(
    root: &Root,
    name: &str,
    dir: &std::path::Path,
    pid: u32,
) -> Result<(String, bool)> {
    use crate::logverdict::{self, Verdict};
    let mark = logverdict::mark(&root.log().join(name));
    let out = s6::svc(&["-h"], dir)?;
    if !out.ok() {
        return Ok((
            format!("{name}: cannot send HUP ({})", out.message()),
            false,
        ));
    }
    let verdict = match &mark {
        Ok(m) => logverdict::wait(m, s6::program(name), logverdict::WAIT),
        Err(e) => Verdict::Unknown(e.clone()),
    };
    Ok(match verdict {
        Verdict::Reloaded(said, warnings) if warnings.is_empty() => (
            format!("{name}: sent HUP to pid {pid}: reloaded (its log: {said})"),
            true,
        ),
        Verdict::Reloaded(said, warnings) => (
            format!(
                "{name}: sent HUP to pid {pid}: reloaded in part (its log: {said}; {})",
                warnings.join("; ")
            ),
            false,
        ),
        Verdict::Refused(why) => (
            format!("{name}: sent HUP to pid {pid}: reload refused, the old settings stay: {why}"),
            false,
        ),
        Verdict::Unknown(why) => (
            format!("{name}: HUP sent, verdict unknown (pid {pid}): {why}"),
            false,
        ),
    })
}
