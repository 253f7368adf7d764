//! `make install` and `make uninstall` (scripts/install.sh, scripts/uninstall.sh) into a
//! temporary PREFIX, with the PATH links and the systemd unit redirected into the test's
//! directory (BINDIR, SBINDIR, UNITDIR), so that the machine's own files are never touched.

#![allow(clippy::unwrap_used)]

use ferry_common::layout;
use ferry_common::root::Root;
use ferry_common::users::Mode;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn script(name: &str, args: &[&str], dir: &Path) -> std::process::Output {
    script_with(name, args, dir, &[])
}

fn script_with(
    name: &str,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    Command::new(repo().join("scripts").join(name))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo())
        .env("FERRY_BIN_DIR", ferry_e2e::bin_dir())
        .env("BINDIR", dir.join("bin"))
        .env("SBINDIR", dir.join("sbin"))
        .env("UNITDIR", dir.join("systemd"))
        .output()
        .unwrap()
}

#[test]
fn destdir_install_stages_the_programs_only() {
    let t = tempfile::tempdir().unwrap();
    let stage = t.path().join("stage");
    let out = script(
        "install.sh",
        &[stage.to_str().unwrap(), "/var/ferry", "no"],
        t.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in layout::PROGRAMS {
        assert!(stage.join("var/ferry/bin").join(p).is_file(), "{p}");
    }
    assert!(
        !stage.join("var/ferry/queue").exists(),
        "a staged install lays out nothing else"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ferryctl init"));
}

/// A directory for a real install: in /tmp, open to the ferry users (0755).
fn install_dir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("ferry-install-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    t
}

#[test]
fn install_then_uninstall_keeps_mail_and_settings() {
    if !ferry_e2e::is_root() {
        eprintln!("a real install needs root (users, owners); only the staged install is tested");
        return;
    }
    let t = install_dir();
    let prefix = t.path().join("ferry");
    let out = script_with(
        "install.sh",
        &["", prefix.to_str().unwrap(), "no"],
        t.path(),
        &[("LINKS", "yes")],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The manifest holds: owners, modes, the setuid queue.
    let problems = layout::verify(&Root::at(&prefix), Mode::Separated);
    assert!(problems.is_empty(), "{problems:?}");
    for f in [
        "service/send/run",
        "service/send/log/run",
        "service/smtpd/run",
        "service/smtpd/notification-fd",
        "control/me",
    ] {
        assert!(prefix.join(f).exists(), "{f}");
    }
    assert_eq!(
        std::fs::read_link(t.path().join("bin/ferryctl")).unwrap(),
        prefix.join("bin/ferryctl")
    );
    // sendmail goes on PATH only with SENDMAIL=yes (it would shadow the system's).
    assert!(!t.path().join("sbin/sendmail").exists() && !t.path().join("bin/mailq").exists());
    let unit = std::fs::read_to_string(t.path().join("systemd/ferry.service")).unwrap();
    assert!(unit.contains(&format!(
        "ExecStart=/usr/bin/s6-svscan {}/service",
        prefix.display()
    )));
    // The installed tree works: ferryctl check finds no FAIL in the configuration and manifest.
    let check = Command::new(prefix.join("bin/ferryctl"))
        .args(["check", "--no-dns"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        !said
            .lines()
            .any(|l| l.starts_with("FAIL") && !l.contains("smtpd")),
        "{said}"
    );
    // A second install keeps the control files; uninstall keeps queue, mail, control, log.
    std::fs::write(prefix.join("control/me"), "kept.example\n").unwrap();
    std::fs::create_dir_all(prefix.join("mail/someone")).unwrap();
    let out = script(
        "install.sh",
        &["", prefix.to_str().unwrap(), "no"],
        t.path(),
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(prefix.join("control/me")).unwrap(),
        "kept.example\n"
    );
    let out = script("uninstall.sh", &["", prefix.to_str().unwrap()], t.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!prefix.join("bin").exists() && !prefix.join("service").exists());
    for kept in ["queue/todo", "mail/someone", "control/me", "log"] {
        assert!(prefix.join(kept).exists(), "{kept} must be kept");
    }
    assert!(
        !t.path().join("bin/ferryctl").exists() && !t.path().join("systemd/ferry.service").exists()
    );
}

/// Issue 8, items 12-14: a non-default prefix is private (no link, no unit outside it), the
/// programs are stripped, the output is a summary with the next steps, and uninstall says
/// what it kept, or with PURGE=yes removes the root.
#[test]
fn private_prefix_stripped_programs_short_output_and_purge() {
    if !ferry_e2e::is_root() {
        eprintln!("a real install needs root (users, owners); only the staged install is tested");
        return;
    }
    let t = install_dir();
    let prefix = t.path().join("opt-ferry");
    let out = script(
        "install.sh",
        &["", prefix.to_str().unwrap(), "no"],
        t.path(),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for outside in [
        "bin/ferryctl",
        "sbin/sendmail",
        "bin/mailq",
        "systemd/ferry.service",
    ] {
        assert!(!t.path().join(outside).exists(), "{outside} was written");
    }
    assert!(said.lines().count() < 40, "{said}");
    assert!(
        said.contains("Next:") && said.contains("setup YOUR.DOMAIN"),
        "{said}"
    );
    for p in layout::PROGRAMS {
        let sections = Command::new("readelf")
            .args(["-S", "-W"])
            .arg(prefix.join("bin").join(p))
            .output()
            .unwrap();
        let sections = String::from_utf8_lossy(&sections.stdout);
        assert!(sections.contains(".text"), "{p}: {sections}");
        assert!(!sections.contains(".debug_info"), "{p} has debug info");
    }
    let out = script("uninstall.sh", &["", prefix.to_str().unwrap()], t.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("kept:") && said.contains("TLS key"),
        "{said}"
    );
    assert!(prefix.join("queue").exists());
    // The users are shared with every other test root on this machine: keep them.
    let out = script_with(
        "uninstall.sh",
        &["", prefix.to_str().unwrap()],
        t.path(),
        &[("PURGE", "yes"), ("KEEP_USERS", "yes")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!prefix.exists());
    let ferryq = nix::unistd::User::from_name(ferry_common::users::QUEUE)
        .unwrap()
        .unwrap();
    assert_eq!(ferryq.dir, Path::new("/nonexistent"));
}

/// Through make: `make install SENDMAIL=yes` puts ferry's sendmail and mailq in place of the
/// system's (kept as NAME.pre-ferry), mailq lists the queue, and `make uninstall` puts the
/// old ones back. The link paths are moved into the test's directory with SENDMAIL_LINKS.
#[test]
fn make_install_sendmail_yes_and_uninstall_restores() {
    if !ferry_e2e::is_root() {
        eprintln!("a real install needs root (users, owners)");
        return;
    }
    let t = install_dir();
    let prefix = t.path().join("ferry");
    let sys = t.path().join("sys");
    std::fs::create_dir_all(sys.join("sbin")).unwrap();
    std::fs::write(
        sys.join("sbin/sendmail"),
        "#!/bin/sh\necho the old sendmail\n",
    )
    .unwrap();
    let links = format!(
        "{} {}",
        sys.join("sbin/sendmail").display(),
        sys.join("bin/mailq").display()
    );
    let make = |target: &str| {
        Command::new("make")
            .args([
                "--no-print-directory",
                target,
                "CARGO=true",
                "SENDMAIL=yes",
                "LINKS=no",
            ])
            .arg(format!("PREFIX={}", prefix.display()))
            .arg(format!("SENDMAIL_LINKS={links}"))
            .arg(format!("FERRY_BIN_DIR={}", ferry_e2e::bin_dir().display()))
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let out = make("install");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_link(sys.join("sbin/sendmail")).unwrap(),
        prefix.join("bin/sendmail")
    );
    assert!(sys.join("sbin/sendmail.pre-ferry").is_file());
    let mailq = Command::new(sys.join("bin/mailq")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&mailq.stdout).contains("-- 0 messages in the queue"),
        "{}{}",
        String::from_utf8_lossy(&mailq.stdout),
        String::from_utf8_lossy(&mailq.stderr)
    );
    let out = make("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(sys.join("sbin/sendmail")).unwrap(),
        "#!/bin/sh\necho the old sendmail\n"
    );
    assert!(!sys.join("bin/mailq").exists() && !sys.join("sbin/sendmail.pre-ferry").exists());
}
