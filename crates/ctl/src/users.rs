//! Creating the ferry users and groups (root only), with nologin shells and the fixed home
//! `/nonexistent` (Debian's convention for system users: never a path of whichever root
//! created them first, which may be a deleted test root; an existing user is corrected). Serialised by a lock file, so that parallel `ferryctl init`
//! runs (the tests) do not trip over each other's useradd.

use anyhow::{Context, Result, bail};
use ferry_common::users;
use std::process::Command;

/// The home directory of every ferry user: none (nothing of theirs lives in a home).
pub const HOME: &str = "/nonexistent";

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
pub fn ensure() -> Result<Vec<String>> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/etc/.ferry-users.lock")?;
    let _held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)?;
    let mut made = Vec::new();
    let group_exists = |g: &str| nix::unistd::Group::from_name(g).ok().flatten().is_some();
    for g in [
        users::GROUP,
        users::SMTPD,
        users::LOG,
        users::MAILBOX,
        users::AUTH,
        users::VERIFY,
    ] {
        if !group_exists(g) {
            run(Command::new("groupadd").arg("--system").arg(g))?;
            made.push(format!("created group {g}"));
        }
    }
    for (name, _) in users::ALL {
        if let Some(u) = nix::unistd::User::from_name(name)? {
            if u.dir != std::path::Path::new(HOME) {
                // usermod refuses (exit 8) while a process runs as the user: then it is
                // corrected by a later init; nothing depends on the home.
                let done = Command::new("usermod")
                    .args(["--home", HOME])
                    .arg(name)
                    .output()
                    .is_ok_and(|o| o.status.success());
                made.push(if done {
                    format!("set the home of user {name} to {HOME}")
                } else {
                    format!(
                        "could not set the home of user {name} to {HOME} (in use); ferryctl init again later does"
                    )
                });
            }
            continue;
        }
        let group = match *name {
            users::QUEUE | users::SEND | users::REMOTE => users::GROUP,
            other => other,
        };
        let home = std::path::PathBuf::from(HOME);
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
