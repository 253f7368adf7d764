//! Creating the ferry users and groups (root only), with nologin shells and no home
//! directories of their own. Serialised by a lock file, so that parallel `ferryctl init`
//! runs (the tests) do not trip over each other's useradd.

use anyhow::{Context, Result, bail};
use ferry_common::root::Root;
use ferry_common::users;
use std::process::Command;

fn nologin() -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/false")
}

fn run(cmd: &mut Command) -> Result<()> {
    for attempt in 0..20 {
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        match out.status.code() {
            Some(0) => return Ok(()),
            // 9: the name exists already (someone else was quicker); 10: /etc/passwd is locked.
            Some(9) => return Ok(()),
            Some(10) if attempt < 19 => std::thread::sleep(std::time::Duration::from_millis(100)),
            _ => bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
    Ok(())
}

/// Creates what is missing. Returns one line per user or group created.
pub fn ensure(root: &Root) -> Result<Vec<String>> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/etc/.ferry-users.lock")?;
    let _held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)?;
    let mut made = Vec::new();
    let group_exists = |g: &str| nix::unistd::Group::from_name(g).ok().flatten().is_some();
    for g in [users::GROUP, users::SMTPD, users::LOG, users::MAILBOX] {
        if !group_exists(g) {
            run(Command::new("groupadd").arg("--system").arg(g))?;
            made.push(format!("created group {g}"));
        }
    }
    for (name, _) in users::ALL {
        if nix::unistd::User::from_name(name)?.is_some() {
            continue;
        }
        let (group, home) = match *name {
            users::QUEUE | users::SEND | users::REMOTE => (users::GROUP, root.path().to_path_buf()),
            users::MAILBOX => (users::MAILBOX, root.mail()),
            other => (other, root.path().to_path_buf()),
        };
        run(Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                nologin(),
                "--gid",
                group,
                "--home-dir",
            ])
            .arg(&home)
            .arg(name))?;
        made.push(format!("created user {name}"));
    }
    Ok(made)
}
