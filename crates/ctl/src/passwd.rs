//! `ferryctl passwd`: the password file of submission, `control/passwords`.
//!
//! One `name:$argon2id$v=19$m=19456,t=2,p=1$salt$hash` line per name (argon2id with the
//! argon2 crate's default parameters: 19 MiB, 2 passes, 1 lane, a random salt each). NAME is
//! a local user (`bob`: authenticates as bob, sends as bob@ each local domain) or a virtual
//! mailbox address (`bob@virt.example`). The file is replaced atomically, mode 0640 owned by
//! root:ferrya with privilege separation (so that smtpd's checker, `smtpd -auth` as ferrya,
//! can read it and nothing else of ferry can), 0600 single-user.
//!
//! `ferryctl passwd NAME` reads the password from stdin: its first line, or, on a terminal,
//! typed twice without echo. `--delete NAME` removes the line, `--list` prints the names.

use crate::{problem, usage};
use anyhow::{Context, Result};
use argon2::password_hash::PasswordHasher;
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Longest password accepted (as smtpd's SASL parser: crates/smtp/src/sasl.rs).
pub const MAX_PASSWORD: usize = 1024;

/// A name the file can hold: a user name or an address, no `:`, no space or control.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 300
        && !name.starts_with('#')
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_graphic() && c != ':')
        && name.matches('@').count() <= 1
        && !name.ends_with('@')
        && !name.starts_with('@')
}

fn read_file(root: &Root) -> Result<Vec<String>> {
    match std::fs::read_to_string(root.control_file("passwords")) {
        Ok(s) => Ok(s.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(problem(format!("cannot read control/passwords: {e}"))),
    }
}

fn line_name(line: &str) -> Option<&str> {
    let l = line.trim();
    if l.is_empty() || l.starts_with('#') {
        return None;
    }
    l.split_once(':').map(|(n, _)| n)
}

fn write_file(root: &Root, lines: &[String]) -> Result<()> {
    let path = root.control_file("passwords");
    let tmp = root.control_file(".passwords.new");
    let _ = std::fs::remove_file(&tmp);
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if Mode::of_root(root) == Mode::Separated && ferry_sys::running_as_root() {
        let g = nix::unistd::Group::from_name(users::AUTH)?.ok_or_else(|| {
            problem(format!(
                "group {} does not exist (ferryctl init creates it)",
                users::AUTH
            ))
        })?;
        nix::unistd::chown(&tmp, Some(nix::unistd::Uid::from_raw(0)), Some(g.gid))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(root.control()) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads one line without echo when stdin is a terminal.
fn read_hidden(prompt: &str) -> Result<String> {
    use nix::sys::termios::{self, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let old = termios::tcgetattr(&stdin)?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    eprint!("{prompt}");
    termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)?;
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &old)?;
    r?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    let pw = if stdin.is_terminal() {
        let a = read_hidden("New password: ")?;
        let b = read_hidden("Again: ")?;
        if a != b {
            return Err(problem("the passwords differ; nothing changed"));
        }
        a
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .take(MAX_PASSWORD as u64 + 2)
            .read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if pw.is_empty() {
        return Err(problem("empty password; nothing changed"));
    }
    if pw.len() > MAX_PASSWORD {
        return Err(problem(format!(
            "password longer than {MAX_PASSWORD} bytes"
        )));
    }
    Ok(pw)
}

/// The PHC string of `password` (argon2id, default parameters, random salt).
pub fn hash(password: &str) -> Result<String> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| problem(format!("cannot hash the password: {e}")))
}

pub fn set(root: &Root, name: &str) -> Result<Vec<String>> {
    if !valid_name(name) {
        return Err(usage(format!(
            "{name:?} is not a user name or a mailbox address"
        )));
    }
    let password = read_password()?;
    let line = format!("{name}:{}", hash(&password)?);
    let mut lines = read_file(root)?;
    let mut replaced = false;
    for l in lines.iter_mut() {
        if line_name(l).is_some_and(|n| n.eq_ignore_ascii_case(name)) {
            *l = line.clone();
            replaced = true;
        }
    }
    if !replaced {
        lines.push(line);
    }
    write_file(root, &lines)?;
    Ok(vec![format!(
        "{} the password of {name} in control/passwords (takes effect at once)",
        if replaced { "changed" } else { "set" }
    )])
}

pub fn delete(root: &Root, name: &str) -> Result<(Vec<String>, i32)> {
    let lines = read_file(root)?;
    let kept: Vec<String> = lines
        .iter()
        .filter(|l| !line_name(l).is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    if kept.len() == lines.len() {
        return Ok((
            vec![format!("{name} has no password in control/passwords")],
            1,
        ));
    }
    write_file(root, &kept)?;
    Ok((vec![format!("deleted {name} from control/passwords")], 0))
}

pub fn list(root: &Root) -> Result<Vec<String>> {
    Ok(read_file(root)?
        .iter()
        .filter_map(|l| line_name(l).map(str::to_string))
        .collect())
}

/// `ferryctl check`'s lines for submission: the password file's owner and mode, and each of the
/// two services (down until configured, or up with what it needs).
pub fn check(root: &Root, cfg: &ferry_common::config::Config) -> Vec<crate::check::Item> {
    use crate::check::{fail, ok, warn};
    use std::os::unix::fs::MetadataExt;
    let mut items = Vec::new();
    let path = root.control_file("passwords");
    let names = match std::fs::metadata(&path) {
        Err(_) => Some(0),
        Ok(m) => {
            if Mode::of_root(root) == Mode::Separated {
                let ferrya = nix::unistd::Group::from_name(users::AUTH)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw());
                if m.uid() != 0 || Some(m.gid()) != ferrya || m.mode() & 0o777 != 0o640 {
                    items.push(fail(
                        format!(
                            "control/passwords is not mode 0640 root:{} (mode {:o})",
                            users::AUTH,
                            m.mode() & 0o777
                        ),
                        format!(
                            "chown root:{} {p}; chmod 0640 {p}",
                            users::AUTH,
                            p = path.display()
                        ),
                    ));
                }
            }
            list(root).ok().map(|l| l.len())
        }
    };
    let tls = cfg.tlscert.is_some() && cfg.tlskey.is_some();
    for (svc, addrs) in [
        ("submission", &cfg.submissionlisten),
        ("smtps", &cfg.smtpslisten),
    ] {
        let dir = crate::s6::service_dir(root, svc);
        if !dir.join("run").exists() {
            items.push(warn(
                format!("service/{svc} is missing (an install older than submission)"),
                "ferryctl init installs it (down until configured)",
            ));
            continue;
        }
        let on = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let up = matches!(crate::s6::status(&dir), Ok(Some(st)) if st.up);
        let ready = tls && names.is_some_and(|n| n > 0);
        let counted = match names {
            Some(n) => format!("{n} password(s)"),
            None => "control/passwords unreadable here".into(),
        };
        items.push(match (up, ready) {
            (true, true) => ok(format!("{svc} is up on {on}: TLS and {counted}")),
            (true, false) => warn(
                format!("{svc} is up on {on} but has {} and {counted}", if tls { "TLS" } else { "no certificate" }),
                "ferryctl passwd NAME adds a user; control/tlscert and tlskey the certificate",
            ),
            (false, true) => warn(
                format!("{svc} is down, though TLS and {counted} are in place"),
                "ferryctl start brings it up",
            ),
            (false, false) => ok(format!(
                "{svc} is down (it needs control/tlscert and a password: ferryctl passwd NAME; then ferryctl start)"
            )),
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["bob", "bob@virt.example", "a.b-c_d"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a:b", "a b", "@x", "x@", "a@b@c", "-x", "#x", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn hashes_are_argon2id_and_salted() {
        let a = hash("pw").unwrap_or_default();
        let b = hash("pw").unwrap_or_default();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
    }
}
