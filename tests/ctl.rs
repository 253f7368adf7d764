//! ferryctl end to end, on a real s6 tree that `ferryctl start` brings up in a temporary root:
//! start, stat, stop, restart, reload, log, the queue commands on held and deferred messages,
//! help and usage. (setup and check: ctlcheck.rs.) Every test tears its tree down at the
//! end, even when it fails (supervision::Tree).

#![allow(clippy::unwrap_used)]

use ferry_e2e::smtp::Smtp;
use ferry_e2e::supervision::{Tree, processes_of, wait_gone};
use ferry_e2e::{Env, message, procs};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line of `stat` for a service.
fn stat_line(stat: &str, service: &str) -> String {
    stat.lines()
        .find(|l| l.starts_with(&format!("{service:<10} ")))
        .unwrap_or_default()
        .to_string()
}

fn ehlo_size(port: u16) -> String {
    let mut s = Smtp::connect(port);
    let (code, text) = s.cmd("EHLO ctl.test");
    assert_eq!(code, 250, "{text}");
    s.cmd("QUIT");
    text.lines()
        .find_map(|l| {
            l.get(4..)
                .and_then(|t| t.strip_prefix("SIZE"))
                .map(|t| t.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn start_stat_reload_restart_stop() {
    let env = Env::new();
    let (tree, port) = Tree::start(&env);
    let send_pid = tree.pid("send").unwrap();
    let smtpd_pid = tree.pid("smtpd").unwrap();

    let stat = tree.expect(&["stat"], 0);
    let mode = if ferry_e2e::is_root() {
        "privilege separation"
    } else {
        "single-user mode"
    };
    assert!(stat.lines().next().unwrap().contains(mode), "{stat}");
    assert!(stat.contains("s6-svscan  running on "), "{stat}");
    for (name, pid) in [("send", send_pid), ("smtpd", smtpd_pid)] {
        let l = stat_line(&stat, name);
        assert!(
            l.contains(&format!("up    pid {pid} "))
                && l.contains(" up ")
                && l.contains("ready")
                && l.ends_with("log up"),
            "{stat}"
        );
    }
    assert!(
        stat.contains(&format!(
            "listen     127.0.0.1:{port} as test.example, no STARTTLS"
        )),
        "{stat}"
    );
    assert!(stat.contains("queue      empty"), "{stat}");
    // start again: nothing to do.
    let out = tree.expect(&["start"], 0);
    assert!(
        out.contains("send: already up")
            && out.contains("smtpd: already up")
            && !out.contains("s6-svscan"),
        "{out}"
    );

    // reload: smtpd re-reads databytes.
    assert_eq!(ehlo_size(port), "26214400");
    env.control("databytes", "12345");
    let out = tree.expect(&["reload"], 0);
    assert!(
        out.contains(&format!("smtpd: sent HUP to pid {smtpd_pid}"))
            && out.contains("send: reloaded (pid "),
        "{out}"
    );
    wait_until(
        "smtpd to announce SIZE 12345",
        Duration::from_secs(10),
        || ehlo_size(port) == "12345",
    );
    assert_eq!(
        tree.pid("smtpd"),
        Some(smtpd_pid),
        "reload must not restart"
    );

    // The log, as s6-log writes it: ISO 8601 timestamps first.
    let mut tail = Command::new(env.path("bin/ferryctl"))
        .args(["log", "smtpd", "-n", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(tail.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    procs::kill(tail.id() as i32);
    let _ = tail.wait();
    let b = first.as_bytes();
    assert!(
        b.len() > 30 && b[4] == b'-' && b[7] == b'-' && b[13] == b':' && first.contains("smtpd: "),
        "{first:?}"
    );

    // restart: new pids.
    let out = tree.expect(&["restart"], 0);
    assert!(
        out.contains(&format!("send: restarted (pid {send_pid} → pid ")),
        "{out}"
    );
    let (new_send, new_smtpd) = (tree.pid("send").unwrap(), tree.pid("smtpd").unwrap());
    assert!(new_send != send_pid && new_smtpd != smtpd_pid);
    assert_eq!(ehlo_size(port), "12345");

    // stop: the services go, the tree and the loggers stay.
    let out = tree.expect(&["stop"], 0);
    assert!(
        out.contains("smtpd: stopped") && out.contains("send: stopped"),
        "{out}"
    );
    wait_until("the programs to exit", Duration::from_secs(15), || {
        procs::under(&env.root).is_empty()
    });
    assert!(
        processes_of(&env.root)
            .iter()
            .any(|(_, n)| n == "s6-svscan")
    );
    assert!(processes_of(&env.root).iter().any(|(_, n)| n == "s6-log"));
    let stat = tree.expect(&["stat"], 1);
    assert!(
        stat_line(&stat, "smtpd").contains("DOWN") && stat_line(&stat, "send").contains("log up"),
        "{stat}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    tree.expect(&["reload"], 1);
    let out = tree.expect(&["check", "--no-dns"], 1);
    assert!(
        out.contains("FAIL  smtpd is down (last log line:") && out.contains("smtpd: stopped"),
        "{out}"
    );

    // restart of a stopped service starts it; stop --all takes the whole tree down.
    let out = tree.expect(&["restart"], 0);
    assert!(out.contains("send: was down, started"), "{out}");
    let out = tree.expect(&["stop", "--all"], 0);
    assert!(
        out.contains("supervision: s6-svscan and the loggers stopped"),
        "{out}"
    );
    assert!(
        wait_gone(&env.root, Duration::from_secs(15)),
        "left: {:?}",
        processes_of(&env.root)
    );
    let stat = tree.expect(&["stat"], 1);
    assert!(stat.contains("s6-svscan  NOT running"), "{stat}");
    tree.expect(&["restart"], 1);
    tree.expect(&["stop"], 0);
    // And start from nothing again.
    let (_again, _) = Tree::start(&env);
    tree.expect(&["stat"], 0);
}

/// The queue listing, and the ids of the messages in a given state.
fn ids_in_state(tree: &Tree, state: &str) -> Vec<String> {
    let out = tree.expect(&["queue"], 0);
    out.lines()
        .filter(|l| l.len() > 32 && !l.starts_with(' ') && l.trim_end().ends_with(state))
        .map(|l| l[..32].to_string())
        .collect()
}

/// How many delivery attempts the listing shows for a recipient.
fn attempts(tree: &Tree, addr: &str) -> u32 {
    let out = tree.expect(&["queue"], 0);
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("    {addr} ")))
        .unwrap_or_default();
    line.split_once("deferred (")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn queue_held_deferred_delete_flush_and_stop_keeps_it() {
    let env = Env::new();
    let (tree, _port) = Tree::start(&env);
    let later = env.mailbox_rcpt("later");
    later.write(".ferry", "|echo not today; exit 111\n");
    let held = env.mailbox_rcpt("held");
    held.write(".ferry", "|echo not today; exit 111\n");
    for r in [&later, &held] {
        let out = env.sendmail(
            &["-f", "s@test.example", &r.addr()],
            &message(&format!("to-{}", r.local), "hello\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until("two deferred messages", Duration::from_secs(30), || {
        ids_in_state(&tree, "deferred").len() == 2
    });
    let listing = tree.expect(&["queue"], 0);
    assert!(
        listing.contains("    later@virt.example [local] deferred ("),
        "{listing}"
    );
    assert!(listing.contains("not today"), "{listing}");
    let id_of = |addr: &str| {
        let pos = listing.find(&format!("    {addr} ")).unwrap();
        let head = listing[..pos]
            .lines()
            .rfind(|l| !l.starts_with(' '))
            .unwrap();
        head[..32].to_string()
    };
    let (later_id, held_id) = (id_of(&later.addr()), id_of(&held.addr()));

    let out = tree.expect(&["queue", "hold", &held_id], 0);
    assert!(!out.trim().is_empty());
    assert_eq!(ids_in_state(&tree, "held"), vec![held_id.clone()]);
    assert_eq!(ids_in_state(&tree, "deferred"), vec![later_id.clone()]);
    let show = tree.expect(&["queue", "show", &held_id], 0);
    assert!(
        show.contains("(held)") && show.contains("Subject: to-held"),
        "{show}"
    );
    // The same words as the listing (issue 8, item 18), not Debug names.
    assert!(
        show.contains("recipient: held@virt.example [local] deferred (")
            && !show.contains("Pending"),
        "{show}"
    );
    let stat = tree.expect(&["stat"], 0);
    assert!(stat.contains("queue      2 messages: 1 held, 1 deferred, 0 new; recipients pending: 2 local, 0 remote"), "{stat}");

    // flush retries the deferred one now (not the held one).
    let (later_tries, held_tries) = (
        attempts(&tree, &later.addr()),
        attempts(&tree, &held.addr()),
    );
    let out = tree.expect(&["flush"], 0);
    assert!(out.contains("flushed"), "{out}");
    wait_until("another attempt", Duration::from_secs(20), || {
        attempts(&tree, &later.addr()) > later_tries
    });
    assert_eq!(attempts(&tree, &held.addr()), held_tries);

    // stop: processes gone, the queue as it was; actions need send.
    let before = env.queue_files();
    tree.expect(&["stop"], 0);
    wait_until("the programs to exit", Duration::from_secs(15), || {
        procs::under(&env.root).is_empty()
    });
    assert_eq!(env.queue_files(), before);
    tree.expect(&["flush"], 111);
    tree.expect(&["queue", "release", &held_id], 111);
    assert_eq!(
        ids_in_state(&tree, "held"),
        vec![held_id.clone()],
        "the listing works without send"
    );

    // start: send takes the queue up again.
    tree.expect(&["start"], 0);
    let stat = tree.expect(&["stat"], 0);
    assert!(
        stat.contains("queue      2 messages: 1 held, 1 deferred"),
        "{stat}"
    );
    tree.expect(&["queue", "delete", &later_id], 0);
    wait_until("the deleted message to go", Duration::from_secs(10), || {
        !tree.expect(&["queue"], 0).contains(&later_id)
    });
    assert!(env.maildir_new(&later.maildir()).is_empty());
    // Bad ids: malformed is usage (2), unknown is refused by send (1).
    tree.expect(&["queue", "delete", "not-an-id"], 2);
    tree.expect(&["queue", "delete", &"0".repeat(32)], 1);
    tree.expect(&["queue", "show", &"0".repeat(32)], 1);

    // release + a working .ferry + flush: delivered, queue empty.
    held.write(".ferry", "./Maildir/\n");
    tree.expect(&["queue", "release", &held_id], 0);
    tree.expect(&["flush"], 0);
    env.wait_maildir(&held.maildir(), 1);
    env.wait_queue_empty();
    assert!(tree.expect(&["stat"], 0).contains("queue      empty"));
}

#[test]
fn help_and_usage() {
    let env = Env::new();
    let tree = Tree::new(&env.root);
    let help = tree.expect(&["help"], 0);
    for c in [
        "start", "stop", "restart", "reload", "stat", "check", "setup", "log", "queue", "flush",
        "init",
    ] {
        assert!(
            help.contains(&format!("\n  {c:<8} ")),
            "{c} missing from help:\n{help}"
        );
        let out = tree.expect(&[c, "--help"], 0);
        assert!(out.starts_with(&format!("usage: ferryctl {c}")), "{out}");
    }
    assert!(!help.contains("tls-selfsigned"));
    tree.expect(&["tls-selfsigned", "--help"], 0);
    tree.expect(&[], 2);
    tree.expect(&["frobnicate"], 2);
    tree.expect(&["stop", "--bogus"], 2);
    tree.expect(&["stat", "extra"], 2);
    tree.expect(&["log", "nosuchservice"], 2);
    // Not running: stat says so (1), stop has nothing to do (0).
    let stat = tree.expect(&["stat"], 1);
    assert!(stat.contains("s6-svscan  NOT running"), "{stat}");
    tree.expect(&["stop"], 0);
}
