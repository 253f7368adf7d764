//! Virtual mailboxes (`ROOT/mail/NAME/`, delivered as ferrym): `ferryctl mailbox add NAME`
//! makes one with the right owner, and `ferryctl check` fails a mailbox that has the wrong
//! one (a `mkdir mail/bob` as root: every delivery to it would wait on "Permission denied").
//! ferryctl never chowns a directory it did not make: the check names the fix instead.

use crate::check::{Item, fail, ok, warn};
use crate::{problem, usage};
use anyhow::Result;
use ferry_common::config::{Config, VirtualTarget};
use ferry_common::root::Root;
use ferry_common::route;
use ferry_common::users::{self, Mode};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Most wrong mailboxes named one by one by check (then one line for the rest).
const MAX_LISTED: usize = 20;

/// Who must own the mailboxes: ferrym with privilege separation, else the root's owner.
struct Owner {
    name: String,
    group: String,
    uid: u32,
    gid: u32,
}

fn owner(root: &Root) -> Result<Owner, String> {
    let (uid, gid) = match Mode::of_root(root) {
        Mode::Separated => {
            let u = nix::unistd::User::from_name(users::MAILBOX)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "user {} does not exist (make install creates it)",
                        users::MAILBOX
                    )
                })?;
            (u.uid.as_raw(), u.gid.as_raw())
        }
        Mode::SingleUser => {
            let m = std::fs::metadata(root.queue())
                .map_err(|e| format!("{}: {e}", root.queue().display()))?;
            (m.uid(), m.gid())
        }
    };
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let group = nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    Ok(Owner {
        name,
        group,
        uid,
        gid,
    })
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The domains whose addresses are mailboxes (`domain:mail/` or `domain:mail/*`).
fn mailbox_domains(root: &Root) -> Vec<String> {
    Config::load(root)
        .map(|c| {
            c.virtualdomains
                .iter()
                .filter(|v| matches!(v.target, VirtualTarget::Mailboxes { .. }))
                .map(|v| v.domain.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn mkdir_owned(path: &Path, o: &Owner) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| problem(format!("cannot create {}: {e}", path.display())))?;
    if ferry_sys::uids().1 != o.uid {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))
            .map_err(|e| problem(format!("cannot give {} to {}: {e}", path.display(), o.name)))?;
    }
    Ok(())
}

/// `ferryctl mailbox add NAME`: ROOT/mail/NAME/ and its Maildir/ (tmp, new, cur), 0700,
/// owned by the mailbox user. An existing directory is left as it is: fine if its owner is
/// right, else the command fails with the chown to run.
pub fn add(root: &Root, name: &str) -> Result<(Vec<String>, i32)> {
    if !route::is_mailbox_name(name) {
        return Err(usage(format!(
            "{name:?} is no mailbox name: lower-case letters, digits, '.', '_', '+', '-'"
        )));
    }
    let o = owner(root).map_err(problem)?;
    let me = ferry_sys::uids().1;
    if me != 0 && me != o.uid {
        return Err(problem(format!(
            "the mailboxes of {} belong to {}: run ferryctl as root (or as {})",
            root.path().display(),
            o.name,
            o.name
        )));
    }
    let dir = root.mail().join(name);
    let mut lines = Vec::new();
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == o.uid => {
            lines.push(format!(
                "mailbox {name}: {} exists, owned by {}: nothing to do",
                dir.display(),
                o.name
            ));
        }
        Ok(m) if m.is_dir() => {
            return Err(problem(format!(
                "{} exists but belongs to {}, not {}: its mail waits (Permission denied). ferryctl does not change a directory it did not make: chown -R {}:{} {}",
                dir.display(),
                user_name(m.uid()),
                o.name,
                o.name,
                o.group,
                dir.display()
            )));
        }
        Ok(_) => {
            return Err(problem(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            mkdir_owned(&dir, &o)?;
            let md = dir.join("Maildir");
            mkdir_owned(&md, &o)?;
            for sub in ["tmp", "new", "cur"] {
                mkdir_owned(&md.join(sub), &o)?;
            }
            lines.push(format!(
                "mailbox {name}: created {}/ and its Maildir/ (owner {}, mode 0700)",
                dir.display(),
                o.name
            ));
        }
        Err(e) => return Err(problem(format!("{}: {e}", dir.display()))),
    }
    let domains = mailbox_domains(root);
    if domains.is_empty() {
        lines.push(
            "note: no virtual domain delivers into mail/ yet: add DOMAIN:mail/ to control/virtualdomains (and rcpthosts), then ferryctl reload"
                .into(),
        );
    } else {
        let addrs: Vec<String> = domains.iter().map(|d| format!("{name}@{d}")).collect();
        lines.push(format!("it receives the mail of {}", addrs.join(", ")));
    }
    Ok((lines, 0))
}

/// check's verdict on the owners of the mailboxes under mail/ (and of their Maildir/).
pub fn check(root: &Root) -> Vec<Item> {
    let o = match owner(root) {
        Ok(o) => o,
        Err(e) => {
            return vec![fail(
                format!("mailboxes: {e}"),
                "make install creates the ferry users",
            )];
        }
    };
    let rd = match std::fs::read_dir(root.mail()) {
        Ok(rd) => rd,
        // The install check names a missing mail/.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            return vec![warn(
                format!("mailboxes: not checked: {}: {e}", root.mail().display()),
                "run ferryctl check as root",
            )];
        }
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| route::is_mailbox_name(n))
        .collect();
    names.sort();
    let mut count = 0;
    let mut wrong = Vec::new();
    for n in &names {
        let dir = root.mail().join(n);
        if !dir.is_dir() {
            continue;
        }
        count += 1;
        let md = dir.join("Maildir");
        let paths = [
            dir.clone(),
            md.clone(),
            md.join("tmp"),
            md.join("new"),
            md.join("cur"),
        ];
        if let Some((p, uid)) = paths.iter().find_map(|p| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.uid() != o.uid)
                .map(|m| (p.clone(), m.uid()))
        }) {
            wrong.push((n.clone(), p, uid));
        }
    }
    if wrong.is_empty() {
        return vec![ok(format!(
            "mailboxes: {count} under {}, each owned by {}",
            root.mail().display(),
            o.name
        ))];
    }
    let mut items: Vec<Item> = wrong
        .iter()
        .take(MAX_LISTED)
        .map(|(n, p, uid)| {
            fail(
                format!(
                    "mailbox {n}: {} belongs to {}, not {}: its mail waits (Permission denied)",
                    p.display(),
                    user_name(*uid),
                    o.name
                ),
                format!(
                    "chown -R {}:{} {} (ferryctl mailbox add NAME makes new ones right)",
                    o.name,
                    o.group,
                    root.mail().join(n).display()
                ),
            )
        })
        .collect();
    if wrong.len() > MAX_LISTED {
        items.push(fail(
            format!(
                "mailboxes: {} more with the wrong owner",
                wrong.len() - MAX_LISTED
            ),
            format!(
                "chown -R {}:{} each of them (find {} -maxdepth 1 ! -user {})",
                o.name,
                o.group,
                root.mail().display(),
                o.name
            ),
        ));
    }
    items
}
