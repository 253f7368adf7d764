//! `ferryctl init`: makes the root a complete install: the ferry users (as root), every
//! directory of the manifest with its owner and mode, the s6 service directories, and (with
//! `--demo PORT`) the embedded demo configuration and a self-signed certificate. Existing
//! control files and service scripts are never overwritten.

use crate::users;
use anyhow::{Context, Result};
use ferry_common::layout;
use ferry_common::root::Root;
use ferry_common::users::Mode;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The service directories, embedded from the repository's supervise/ at build time.
pub const SERVICES: &[(&str, &str, u32)] = &[
    (
        "send/run",
        include_str!("../../../supervise/send/run"),
        0o755,
    ),
    (
        "send/notification-fd",
        include_str!("../../../supervise/send/notification-fd"),
        0o644,
    ),
    (
        "send/timeout-kill",
        include_str!("../../../supervise/send/timeout-kill"),
        0o644,
    ),
    (
        "send/log/run",
        include_str!("../../../supervise/send/log/run"),
        0o755,
    ),
    (
        "smtpd/run",
        include_str!("../../../supervise/smtpd/run"),
        0o755,
    ),
    (
        "smtpd/notification-fd",
        include_str!("../../../supervise/smtpd/notification-fd"),
        0o644,
    ),
    (
        "smtpd/timeout-kill",
        include_str!("../../../supervise/smtpd/timeout-kill"),
        0o644,
    ),
    (
        "smtpd/log/run",
        include_str!("../../../supervise/smtpd/log/run"),
        0o755,
    ),
    (
        "inject/run",
        include_str!("../../../supervise/inject/run"),
        0o755,
    ),
    (
        "inject/notification-fd",
        include_str!("../../../supervise/inject/notification-fd"),
        0o644,
    ),
    (
        "inject/timeout-kill",
        include_str!("../../../supervise/inject/timeout-kill"),
        0o644,
    ),
    (
        "inject/log/run",
        include_str!("../../../supervise/inject/log/run"),
        0o755,
    ),
    (
        "submission/run",
        include_str!("../../../supervise/submission/run"),
        0o755,
    ),
    (
        "submission/notification-fd",
        include_str!("../../../supervise/submission/notification-fd"),
        0o644,
    ),
    (
        "submission/timeout-kill",
        include_str!("../../../supervise/submission/timeout-kill"),
        0o644,
    ),
    (
        "submission/log/run",
        include_str!("../../../supervise/submission/log/run"),
        0o755,
    ),
    (
        "smtps/run",
        include_str!("../../../supervise/smtps/run"),
        0o755,
    ),
    (
        "smtps/notification-fd",
        include_str!("../../../supervise/smtps/notification-fd"),
        0o644,
    ),
    (
        "smtps/timeout-kill",
        include_str!("../../../supervise/smtps/timeout-kill"),
        0o644,
    ),
    (
        "smtps/log/run",
        include_str!("../../../supervise/smtps/log/run"),
        0o755,
    ),
];

/// Services that start down (a `down` file when their directory is first written): they need
/// a certificate and at least one password first.
pub const DOWN_UNTIL_CONFIGURED: &[&str] = &["submission", "smtps"];

/// The configuration `make run` starts with: a catch-all demo domain `localhost`, loopback
/// only, never an open relay.
pub fn demo_control(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("me", "localhost".into()),
        (
            "locals",
            "# none: in the demo every address is a mailbox under mail/\n".into(),
        ),
        ("virtualdomains", "localhost:mail/*\n".into()),
        ("smtplisten", format!("127.0.0.1:{port}\n")),
        ("relayclients", "# nobody may relay in the demo\n".into()),
        ("concurrencyincoming", "200\n".into()),
        // Every demo client is 127.0.0.1 and none may relay: no per-IP limit below the total.
        ("concurrencyperip", "200\n".into()),
    ]
}

pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

/// The layout's changes with the 256 hashed subdirectories of a queue directory (`mess/00`
/// ... `mess/ff`) folded into one line each: "created queue/mess/00..ff (256 directories)".
pub fn summarise(lines: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut folded: Vec<(String, usize)> = Vec::new();
    for line in lines {
        let key = line.split(' ').find_map(|word| {
            let (parent, last) = word.rsplit_once('/')?;
            (last.len() == 2 && last.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| line.replacen(word, &format!("{parent}/00..ff"), 1))
        });
        match key {
            Some(k) => match folded.iter_mut().find(|(f, _)| *f == k) {
                Some(f) => f.1 += 1,
                None => folded.push((k, 1)),
            },
            None => out.push(line),
        }
    }
    for (key, n) in folded {
        let what = if n == 1 { "directory" } else { "directories" };
        out.push(format!("{key} ({n} {what})"));
    }
    out
}

pub fn run(root: &Root, demo_port: Option<u16>) -> Result<Vec<String>> {
    let mode = Mode::current();
    let mut done = Vec::new();
    if mode == Mode::Separated {
        done.extend(users::ensure()?);
    }
    std::fs::create_dir_all(root.path())
        .with_context(|| format!("cannot create {}", root.path().display()))?;
    done.extend(summarise(
        layout::apply(root, mode).context("laying out the root")?,
    ));
    // One line per service directory: "wrote service/smtpd (run, notification-fd, ...)".
    let mut wrote: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut down: Vec<&str> = Vec::new();
    for (path, text, m) in SERVICES {
        if write_new(&root.service().join(path), text, *m)? {
            let (svc, file) = path.split_once('/').unwrap_or((path, ""));
            match wrote.iter_mut().find(|(s, _)| *s == svc) {
                Some((_, files)) => files.push(file),
                None => wrote.push((svc, vec![file])),
            }
            // A new submission service stays down until the admin has a certificate and a
            // password (an existing one keeps whatever the admin chose).
            if file == "run"
                && DOWN_UNTIL_CONFIGURED.contains(&svc)
                && write_new(&root.service().join(svc).join("down"), "", 0o644)?
            {
                down.push(svc);
            }
        }
    }
    for (svc, files) in wrote {
        let note = if down.contains(&svc) {
            "; down until control/tlscert and a password exist: docs/SMTP.md"
        } else {
            ""
        };
        done.push(format!("wrote service/{svc} ({}{note})", files.join(", ")));
    }
    if let Some(port) = demo_port {
        for (name, value) in demo_control(port) {
            if write_new(&root.control_file(name), &value, 0o644)? {
                done.push(format!("wrote control/{name}"));
            }
        }
        // STARTTLS out of the box: a self-signed certificate for the demo's name.
        if crate::tls::ensure(root, "localhost", false)? == crate::tls::Outcome::Written {
            done.push(
                "wrote control/tlscert and control/tlskey (self-signed for localhost)".into(),
            );
        }
    }
    if write_srs_secret(root, mode)? {
        done.push(
            "wrote control/srssecret (the key of SRS addresses: docs/AUTHENTICATION.md)".into(),
        );
    }
    let readme = root.control_file("README");
    std::fs::write(&readme, include_str!("../../../etc/control/README")).ok();
    Ok(done)
}

/// A new random control/srssecret unless one exists: mode 0640, ferryq:ferry with privilege
/// separation (the setuid queue reads it as its owner, send through the group, smtpd
/// before it drops root).
pub fn write_srs_secret(root: &Root, mode: Mode) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.control_file("srssecret");
    if path.exists() {
        return Ok(false);
    }
    let mut key = [0u8; 24];
    ferry_sys::random_bytes(&mut key).context("cannot get random bytes")?;
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = root.control_file(".srssecret.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(format!("{text}\n").as_bytes())?;
    f.sync_all()?;
    if mode == Mode::Separated {
        let g = nix::unistd::Group::from_name(ferry_common::users::GROUP)?
            .context("the group ferry does not exist")?;
        let q = nix::unistd::User::from_name(ferry_common::users::QUEUE)?
            .context("the user ferryq does not exist")?;
        nix::unistd::chown(&tmp, Some(q.uid), Some(g.gid))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_directories_are_folded() {
        let mut lines = vec![
            "created queue".to_string(),
            "created queue/mess".to_string(),
        ];
        for i in 0..256 {
            lines.push(format!("created queue/mess/{i:02x}"));
            lines.push(format!("mode of queue/info/{i:02x} set to 700"));
        }
        lines.push("created queue/tmp".into());
        assert_eq!(
            summarise(lines),
            [
                "created queue",
                "created queue/mess",
                "created queue/tmp",
                "created queue/mess/00..ff (256 directories)",
                "mode of queue/info/00..ff set to 700 (256 directories)",
            ]
        );
    }
}
