//! The install manifest: every directory and special file of an install root with its owner,
//! group and mode. `ferryctl init` (run by `make install`, `make run` and the tests) creates
//! what is missing and fixes owners and modes; `ferryctl check` verifies the same list.
//!
//! In single-user mode everything belongs to the invoking user; the modes are the same.

use crate::id;
use crate::root::Root;
use crate::users::{self, Mode};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Fifo,
    /// A program in bin/ (checked, not created: `make install` copies it).
    Program,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub owner: &'static str,
    pub group: &'static str,
    pub mode: u32,
}

const ROOT: &str = "root";

fn e(
    path: impl Into<String>,
    kind: Kind,
    owner: &'static str,
    group: &'static str,
    mode: u32,
) -> Entry {
    Entry {
        path: path.into(),
        kind,
        owner,
        group,
        mode,
    }
}

/// The programs installed in bin/.
pub const PROGRAMS: &[&str] = &[
    "queue",
    "qwriter",
    "inject",
    "start",
    "send",
    "lspawn",
    "rspawn",
    "clean",
    "local-deliver",
    "remote-deliver",
    "smtpd",
    "authverify",
    "sendmail",
    "ferryctl",
];

pub fn manifest() -> Vec<Entry> {
    use users::{GROUP, LOG, MAILBOX, QUEUE, REMOTE, SEND};
    let mut m = vec![
        e("", Kind::Dir, ROOT, ROOT, 0o755),
        e("bin", Kind::Dir, ROOT, ROOT, 0o755),
        e("control", Kind::Dir, ROOT, ROOT, 0o755),
        e("service", Kind::Dir, ROOT, ROOT, 0o755),
        e("log", Kind::Dir, ROOT, ROOT, 0o755),
        e("log/smtpd", Kind::Dir, LOG, LOG, 0o750),
        e("log/send", Kind::Dir, LOG, LOG, 0o750),
        e("log/inject", Kind::Dir, LOG, LOG, 0o750),
        e("log/submission", Kind::Dir, LOG, LOG, 0o750),
        e("log/smtps", Kind::Dir, LOG, LOG, 0o750),
        e("mail", Kind::Dir, MAILBOX, MAILBOX, 0o755),
        e("queue", Kind::Dir, QUEUE, GROUP, 0o750),
        // The inject service's socket (every local user may connect, as to the setuid queue).
        e("inject", Kind::Dir, QUEUE, GROUP, 0o755),
        // Set-group-id: queue files get the group ferry, whoever runs the setuid queue.
        e("queue/tmp", Kind::Dir, QUEUE, GROUP, 0o2700),
        e("queue/todo", Kind::Dir, QUEUE, GROUP, 0o750),
        e("queue/mess", Kind::Dir, QUEUE, GROUP, 0o750),
        e("queue/info", Kind::Dir, SEND, GROUP, 0o700),
        e("queue/lock", Kind::Dir, QUEUE, GROUP, 0o750),
        // Emptied files of delivered messages, taken again by new ones (crate::pool).
        e("queue/pool", Kind::Dir, QUEUE, GROUP, 0o700),
        e("queue/lock/trigger", Kind::Fifo, SEND, GROUP, 0o622),
        e("queue/ctl", Kind::Dir, SEND, GROUP, 0o700),
        // remote-deliver's cache of MTA-STS policies, a file per domain.
        e("queue/sts", Kind::Dir, REMOTE, GROUP, 0o700),
        // remote-deliver's TLS outcomes per domain and period, for the TLS reports.
        e("queue/tlsrpt", Kind::Dir, REMOTE, GROUP, 0o700),
    ];
    for s in id::splits() {
        m.push(e(format!("queue/mess/{s}"), Kind::Dir, QUEUE, GROUP, 0o750));
        m.push(e(format!("queue/info/{s}"), Kind::Dir, SEND, GROUP, 0o700));
    }
    for p in PROGRAMS {
        if *p == "queue" {
            m.push(e("bin/queue", Kind::Program, QUEUE, GROUP, 0o4711));
        } else {
            m.push(e(format!("bin/{p}"), Kind::Program, ROOT, ROOT, 0o755));
        }
    }
    m
}

/// Numeric owner and group of an entry in this mode.
fn ids(entry: &Entry, mode: Mode) -> io::Result<(u32, u32)> {
    match mode {
        Mode::SingleUser => {
            let (ruid, _) = ferry_sys::uids();
            Ok((ruid, nix::unistd::getgid().as_raw()))
        }
        Mode::Separated => {
            let uid = if entry.owner == ROOT {
                0
            } else {
                nix::unistd::User::from_name(entry.owner)
                    .map_err(io::Error::from)?
                    .ok_or_else(|| {
                        io::Error::other(format!("user {} does not exist", entry.owner))
                    })?
                    .uid
                    .as_raw()
            };
            let gid = if entry.group == ROOT {
                0
            } else {
                nix::unistd::Group::from_name(entry.group)
                    .map_err(io::Error::from)?
                    .ok_or_else(|| {
                        io::Error::other(format!("group {} does not exist", entry.group))
                    })?
                    .gid
                    .as_raw()
            };
            Ok((uid, gid))
        }
    }
}

/// Creates what is missing and sets owners (when root) and modes. Programs must already be
/// in bin/. Returns one line per change made: `created PATH` for a new entry (which gets its
/// owner and mode with it), `owner of PATH set to ...` and `mode of PATH set to ...` for one
/// that was there.
pub fn apply(root: &Root, mode: Mode) -> io::Result<Vec<String>> {
    let mut changes = Vec::new();
    for entry in manifest() {
        let path = root.path().join(&entry.path);
        let meta = std::fs::symlink_metadata(&path);
        let before = changes.len();
        match (entry.kind, &meta) {
            (Kind::Dir, Err(err)) if err.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&path)?;
                changes.push(format!("created {}", entry.path));
            }
            (Kind::Fifo, Err(err)) if err.kind() == io::ErrorKind::NotFound => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(entry.mode))?;
                changes.push(format!("created {}", entry.path));
            }
            (Kind::Program, Err(_)) => continue,
            (_, Err(err)) => return Err(io::Error::other(format!("{}: {err}", path.display()))),
            _ => {}
        }
        let created = changes.len() > before;
        let (uid, gid) = ids(&entry, mode)?;
        let meta = std::fs::symlink_metadata(&path)?;
        if mode == Mode::Separated && (meta.uid() != uid || meta.gid() != gid) {
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )?;
            if !created {
                changes.push(format!(
                    "owner of {} set to {}:{}",
                    entry.path, entry.owner, entry.group
                ));
            }
        }
        let want = if mode == Mode::SingleUser {
            entry.mode & 0o777
        } else {
            entry.mode
        };
        if meta.permissions().mode() & 0o7777 != want {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))?;
            if !created {
                changes.push(format!("mode of {} set to {:o}", entry.path, want));
            }
        }
    }
    Ok(changes)
}

/// Every difference between the root and the manifest, one line each.
pub fn verify(root: &Root, mode: Mode) -> Vec<String> {
    let mut problems = Vec::new();
    for entry in manifest() {
        let path = root.path().join(&entry.path);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => {
                problems.push(format!("{} is missing", display(&entry.path)));
                continue;
            }
        };
        let kind_ok = match entry.kind {
            Kind::Dir => meta.is_dir(),
            Kind::Fifo => std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()),
            Kind::Program => meta.is_file(),
        };
        if !kind_ok {
            problems.push(format!(
                "{} is not a {:?}",
                display(&entry.path),
                entry.kind
            ));
            continue;
        }
        match ids(&entry, mode) {
            Ok((uid, gid))
                if (meta.uid() != uid || meta.gid() != gid) && mode == Mode::Separated =>
            {
                problems.push(format!(
                    "{} is owned by {}:{}, should be {}:{}",
                    display(&entry.path),
                    meta.uid(),
                    meta.gid(),
                    entry.owner,
                    entry.group
                ));
            }
            Err(err) => problems.push(format!("{}: {err}", display(&entry.path))),
            _ => {}
        }
        let want = if mode == Mode::SingleUser {
            entry.mode & 0o777
        } else {
            entry.mode
        };
        if meta.permissions().mode() & 0o7777 != want {
            problems.push(format!(
                "{} has mode {:o}, should be {:o}",
                display(&entry.path),
                meta.permissions().mode() & 0o7777,
                want
            ));
        }
    }
    problems
}

fn display(p: &str) -> &str {
    if p.is_empty() { "the root" } else { p }
}

/// Is `dir` inside a tree where other users can reach it (every ancestor searchable)?
pub fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|a| {
        std::fs::metadata(a)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_apply_then_verify() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::at(d.path());
        let changes = apply(&root, Mode::SingleUser).unwrap();
        assert!(changes.iter().any(|c| c == "created queue/mess/ff"));
        let problems = verify(&root, Mode::SingleUser);
        // Programs are not there in this test; everything else is right.
        assert!(
            problems.iter().all(|p| p.starts_with("bin/")),
            "{problems:?}"
        );
        assert!(apply(&root, Mode::SingleUser).unwrap().is_empty());
        std::fs::set_permissions(
            root.queue().join("tmp"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert!(
            verify(&root, Mode::SingleUser)
                .iter()
                .any(|p| p.starts_with("queue/tmp has mode 777"))
        );
    }
}
