//! Privilege separation as the docs promise it (docs/SECURITY.md), observed on the running
//! programs: an ordinary user reaches the setuid queue through sendmail; local-deliver refuses
//! to run as root; system accounts get no mail; deliveries get a cleared environment; a
//! group-writable .ferry is refused; s6-log runs as ferryl.

#![allow(clippy::unwrap_used)]

use ferry_e2e::smtp::Smtp;
use ferry_e2e::supervision::Tree;
use ferry_e2e::{Env, is_root, message};
use std::os::unix::process::CommandExt;
use std::time::Duration;

/// An ordinary user's sendmail runs the setuid queue (ferryq) and the message is delivered
/// with the user's address as sender; the user cannot write the queue directly.
#[test]
fn an_ordinary_user_queues_through_the_setuid_queue() {
    if !is_root() {
        eprintln!("single-user mode: no setuid program to reach");
        return;
    }
    let mut env = Env::new();
    env.start_send();
    let sender = env.user_rcpt();
    let box_ = env.mailbox_rcpt("from-user");
    let user = env.users.last().unwrap();
    let out = env.sendmail_as(Some(user), &[&box_.addr()], &message("as-user", "hi\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = env.wait_maildir(&box_.maildir(), 1);
    let t = String::from_utf8_lossy(&got[0]);
    assert!(
        t.starts_with(&format!("Return-Path: <{}@test.example>\n", sender.local)),
        "{t}"
    );
    // The user cannot put a file into the queue behind queue's back.
    let probe = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo x > {0}/queue/tmp/forged || echo x > {0}/queue/todo/forged",
            env.root.display()
        ))
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .unwrap();
    assert!(!probe.status.success());
    assert!(env.queue_files().iter().all(|f| !f.contains("forged")));
}

/// local-deliver started as root refuses (a delivery must never run as root).
#[test]
fn local_deliver_refuses_root() {
    if !is_root() {
        eprintln!("not root: nothing to refuse");
        return;
    }
    let env = Env::new();
    let out = std::process::Command::new(env.root.join("bin/local-deliver"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// System accounts (users who do not own their home, as daemon and bin) get no mail: smtpd
/// refuses them at RCPT. (root is aliased to postmaster by default; a delivery as root is
/// refused by local-deliver, above.)
#[test]
fn system_accounts_get_no_mail() {
    let mut env = Env::new();
    env.start_send();
    let port = env.start_smtpd();
    let mut c = Smtp::connect(port);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    for account in ["daemon", "bin", "sys", "nobody"] {
        let r = c.cmd(&format!("RCPT TO:<{account}@test.example>"));
        assert_eq!(r.0, 550, "{account}: {r:?}");
    }
}

/// A delivery program sees the documented environment and nothing the supervisor had.
#[test]
fn deliveries_get_a_cleared_environment() {
    let mut env = Env::new();
    // What the supervisor (and this test process) has in its environment must not reach a
    // delivery: only the documented variables (docs/DELIVERY.md), and what sh itself sets.
    let documented = [
        "USER",
        "LOGNAME",
        "SHELL",
        "PATH",
        "HOME",
        "SENDER",
        "RECIPIENT",
        "LOCAL",
        "HOST",
        "EXT",
        "EXT2",
        "EXT3",
        "EXT4",
        "HOST2",
        "HOST3",
        "HOST4",
        "DEFAULT",
        "DTLINE",
        "RPLINE",
        "UFLINE",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    env.start_send();
    let r = env.mailbox_rcpt("envdump");
    r.write(".ferry", "|env -0 > prog.env\n");
    let out = env.sendmail(&[&r.addr()], &message("env", "x\n"));
    assert!(out.status.success());
    env.wait_for("the program", Duration::from_secs(30), || {
        r.home.join("prog.env").exists() && env.queue_files().is_empty()
    });
    let dump = std::fs::read(r.home.join("prog.env")).unwrap();
    let names: Vec<String> = dump
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let s = String::from_utf8_lossy(v);
            s.split('=').next().unwrap_or("").to_string()
        })
        .collect();
    assert!(names.iter().any(|n| n == "RECIPIENT"), "{names:?}");
    let stray: Vec<&String> = names
        .iter()
        .filter(|n| !documented.contains(&n.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "undocumented variables reached the program: {stray:?}"
    );
}

/// A .ferry that others may write is not used: the delivery is deferred with the reason.
#[test]
fn group_writable_dot_ferry_is_refused() {
    let mut env = Env::new();
    env.start_send();
    let r = env.mailbox_rcpt("gw");
    r.write(".ferry", "./Maildir/\n");
    std::fs::set_permissions(
        r.home.join(".ferry"),
        std::os::unix::fs::PermissionsExt::from_mode(0o664),
    )
    .unwrap();
    let out = env.sendmail(&[&r.addr()], &message("gw", "x\n"));
    assert!(out.status.success());
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log").contains("<gw@virt.example> deferred")
    });
    let log = env.log("send.log");
    assert!(
        log.contains("is writable by others or not owned by the user"),
        "{log}"
    );
    assert!(env.maildir_new(&r.maildir()).is_empty());
}

/// The loggers run as ferryl (s6-log under s6-setuidgid, from each service's log/run).
#[test]
fn s6_log_runs_as_its_user() {
    if !is_root() {
        eprintln!("single-user mode: the loggers run as the invoking user");
        return;
    }
    let env = Env::new();
    let (tree, _port) = Tree::start(&env);
    let ferryl = nix::unistd::User::from_name("ferryl")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let loggers = || -> Vec<(i32, u32)> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let in_root = std::fs::read_link(e.path().join("cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&env.root));
            if !cmd.starts_with(b"s6-log") || !in_root {
                continue;
            }
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
                .unwrap_or(u32::MAX);
            v.push((pid, uid));
        }
        v
    };
    env.wait_for("two loggers", Duration::from_secs(20), || {
        loggers().len() >= 2
    });
    for (pid, uid) in loggers() {
        assert_eq!(uid, ferryl, "s6-log pid {pid}");
    }
    drop(tree);
}
