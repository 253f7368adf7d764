//! Hardening tests (issue 17): see the items named in each test.
//!
//! Items 13 to 19: the queue, send and local delivery. Item 17 (a group commit syncs every
//! filesystem it touched) is a unit test in crates/common/src/durable.rs, and the process
//! group kill of item 18 one in crates/local-deliver/src/program.rs (the program timeout is
//! an hour and has no control file).

#![allow(clippy::unwrap_used)]

use ferry_e2e::rcpt::Rcpt;
use ferry_e2e::{Env, message};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn sendmail_ok(env: &Env, to: &[&str], msg: &[u8]) {
    let mut args = vec!["-f", "sender@test.example"];
    args.extend_from_slice(to);
    let out = env.sendmail(&args, msg);
    assert!(
        out.status.success(),
        "sendmail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Subjects of the messages in a Maildir's new/, with how often each came.
fn subjects(env: &Env, maildir: &Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for f in env.maildir_new(maildir) {
        let t = std::fs::read_to_string(&f).unwrap_or_default();
        if let Some(s) = t.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *seen.entry(s.to_string()).or_default() += 1;
        }
    }
    seen
}

/// Item 13: messages finished while send rescans todo/ are not taken again. A thread writes
/// a line that is no id into the trigger FIFO every few milliseconds during the load, which
/// makes send scan todo/ on each loop turn (as an overflowed FIFO or the minute timer does);
/// N accepted messages must give exactly N delivered files.
#[test]
fn sustained_load_across_todo_scans_delivers_each_message_once() {
    const N: usize = 300;
    const BOXES: usize = 3;
    let mut env = Env::new();
    env.start_send();
    let stop = Arc::new(AtomicBool::new(false));
    let poker = {
        let (stop, fifo) = (stop.clone(), env.path("queue/lock/trigger"));
        std::thread::spawn(move || {
            let mut pokes = 0u64;
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            while !stop.load(Ordering::Relaxed) {
                // Not an id: send looks at todo/ itself.
                if f.write_all(b"scan\n").is_ok() {
                    pokes += 1;
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            pokes
        })
    };
    std::thread::scope(|s| {
        let env = &env;
        for t in 0..4 {
            s.spawn(move || {
                for i in (t..N).step_by(4) {
                    let to = format!("scan{}@localhost", i % BOXES);
                    sendmail_ok(env, &[&to], &message(&format!("scan-{i}"), "x\n"));
                }
            });
        }
    });
    env.wait_queue_empty();
    stop.store(true, Ordering::Relaxed);
    let pokes = poker.join().unwrap();
    let mut total: HashMap<String, usize> = HashMap::new();
    for b in 0..BOXES {
        total.extend(subjects(&env, &env.mailbox(&format!("scan{b}"))));
    }
    let dups: Vec<(&String, &usize)> = total.iter().filter(|(_, n)| **n > 1).collect();
    let files: usize = total.values().sum();
    eprintln!("{N} messages, {pokes} scans asked, {files} files");
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    assert_eq!(files, N, "{N} messages accepted, {files} files delivered");
    assert!(
        !env.log("send.log").contains("cannot take"),
        "{}",
        env.log("send.log")
    );
}

/// Writes `script` as ROOT/bin/local-deliver (a wrapper around the real one, which moves to
/// local-deliver.real). The old name is unlinked first: it is a hard link to the build.
fn wrap_local_deliver(env: &Env, script: &str) {
    let bin = env.path("bin");
    std::fs::rename(bin.join("local-deliver"), bin.join("local-deliver.real")).unwrap();
    std::fs::write(bin.join("local-deliver"), script).unwrap();
    std::fs::set_permissions(
        bin.join("local-deliver"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn record(kind: u8, fields: &[&str]) -> Vec<u8> {
    let body: usize = 2 + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
    let mut v = (body as u32).to_be_bytes().to_vec();
    v.push(1);
    v.push(kind);
    for f in fields {
        v.extend_from_slice(&(f.len() as u32).to_be_bytes());
        v.extend_from_slice(f.as_bytes());
    }
    v
}

/// Item 14: a worker (here a fake local-deliver for the mailbox `evil`, standing for a user
/// who took over their own worker with ptrace) writes results for job ids it was never
/// given. lspawn must not pass them on: the victim's delivery is neither failed nor marked
/// done by them, and is delivered.
#[test]
fn lspawn_ignores_results_for_jobs_of_other_workers() {
    let mut env = Env::new();
    let dir = env.path("forge");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut forged = Vec::new();
    for job in 2..=200u64 {
        forged.extend(record(b'R', &[&job.to_string(), "100", "forged failure"]));
    }
    std::fs::write(dir.join("forged.bin"), &forged).unwrap();
    std::fs::set_permissions(
        dir.join("forged.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let d = dir.display();
    wrap_local_deliver(
        &env,
        &format!(
            "#!/bin/sh\ncase \"$1\" in\n*/evil)\n  touch {d}/started\n  while [ ! -e {d}/go ]; do sleep 0.05; done\n  cat {d}/forged.bin >&0\n  touch {d}/sent\n  exec sleep 20 ;;\nesac\nexec \"$(dirname \"$0\")/local-deliver.real\" \"$@\"\n"
        ),
    );
    env.start_send();
    let evil = env.mailbox_rcpt("evil");
    let victim = env.mailbox_rcpt("victim");
    for d in ["Maildir/new", "Maildir/cur", "Maildir/tmp"] {
        victim.mkdir(d);
    }
    victim.write(
        ".ferry",
        &format!("|touch {d}/running; while [ ! -e {d}/sent ]; do sleep 0.05; done; sleep 0.5\n./Maildir/\n"),
    );
    sendmail_ok(&env, &[&evil.addr()], &message("evil", "x\n"));
    env.wait_for("the fake worker", Duration::from_secs(20), || {
        dir.join("started").exists()
    });
    sendmail_ok(&env, &[&victim.addr()], &message("victim", "x\n"));
    env.wait_for("the victim's program", Duration::from_secs(20), || {
        dir.join("running").exists()
    });
    std::fs::write(dir.join("go"), "").unwrap();
    env.wait_for("the forged results", Duration::from_secs(20), || {
        dir.join("sent").exists()
    });
    let got = env.wait_maildir(&victim.maildir(), 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: victim"));
    env.wait_for("the victim's result", Duration::from_secs(20), || {
        env.log("send.log")
            .contains("<victim@virt.example> delivered")
    });
    let log = env.log("send.log");
    assert!(!log.contains("forged failure"), "{log}");
    assert!(!log.contains("bounce to"), "{log}");
}

/// A `|program` that reports what it can reach: its own descriptors, its parent's (the
/// local-deliver worker) and what it can read through them, and the queue by path.
const PEEK: &str = "|ls -l /proc/self/fd/ >fds.self; exec 3>peek.out; echo \"out $(readlink /proc/$$/fd/1)\" >&3; for f in /proc/$PPID/fd/*; do echo \"parent $f $(readlink $f)\" >&3; case \"$(readlink $f)\" in socket:*) ;; *) timeout 2 cat \"$f\" >&3 2>/dev/null;; esac; done; echo FORGED-LOG-LINE 2>/dev/null >/proc/$PPID/fd/2; cat QUEUE/todo/* QUEUE/mess/*/* >&3 2>/dev/null; echo END >&3; cat >/dev/null\n";

fn peek(env: &mut Env, r: &Rcpt) -> String {
    let queue = env.path("queue").display().to_string();
    r.write(".ferry", &PEEK.replace("QUEUE", &queue));
    let hidden = "hidden-bcc@localhost";
    sendmail_ok(
        env,
        &[&r.addr(), hidden],
        &message(&format!("peek-{}", r.label()), "the body\n"),
    );
    let out = r.home.join("peek.out");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned();
        if t.ends_with("END\n") {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the peeking program did not finish; it wrote:\n{t}\n--- send.log ---\n{}",
            env.log("send.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 15: a recipient's program can read its message and nothing else of the queue: not
/// the envelope (the Bcc recipient after the message in the queue file), not other queue
/// files, neither by path nor through /proc/$PPID/fd of its worker.
#[test]
fn a_delivery_cannot_read_the_envelope_or_the_queue() {
    let mut env = Env::new();
    env.start_send();
    let rs = env.recipients("peek");
    let n = rs.len();
    for r in rs {
        let seen = peek(&mut env, &r);
        assert!(seen.contains("the body"), "the program saw\n{seen}");
        assert!(
            !seen.contains("hidden-bcc"),
            "{}: the Bcc recipient is readable:\n{seen}",
            r.label()
        );
        assert!(
            !seen.contains("ferryq1"),
            "a queue file was readable:\n{seen}"
        );
    }
    let _ = env.wait_maildir(&env.mailbox("hidden-bcc"), n);
    env.wait_queue_empty();
}

/// Item 16: a `|program` gets stdin, stdout and stderr and nothing else; its worker holds no
/// descriptor outside its protocol (no s6 notification fd, no log pipe that a program could
/// open through /proc to forge log lines).
#[test]
fn programs_and_workers_get_only_their_protocol_descriptors() {
    let mut env = Env::new();
    env.start_send();
    for r in env.recipients("fds") {
        let seen = peek(&mut env, &r);
        // `ls -l /proc/self/fd/ >fds.self` as the program's first command: what a command
        // of the program inherits (less ls's own handle on the directory it lists).
        let listing = std::fs::read_to_string(r.home.join("fds.self")).unwrap();
        let own: Vec<(&str, &str)> = listing
            .lines()
            .filter_map(|l| l.split_once(" -> "))
            .filter_map(|(a, b)| Some((a.split_whitespace().last()?, b.trim())))
            .filter(|(_, b)| !(b.starts_with("/proc/") && b.ends_with("/fd")))
            .collect();
        let numbers: Vec<&str> = own.iter().map(|o| o.0).collect();
        assert_eq!(numbers, ["0", "1", "2"], "{}: {listing}", r.label());
        let mut pipes: Vec<&str> = own.iter().map(|o| o.1).collect();
        pipes.extend(seen.lines().filter_map(|l| l.strip_prefix("out ")));
        for l in seen.lines().filter_map(|l| l.strip_prefix("parent ")) {
            let mut w = l.split_whitespace();
            let (fd, target) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            let ok = target.starts_with("socket:")
                || target == "/dev/null"
                || target.starts_with("/memfd:")
                || pipes.contains(&target);
            assert!(
                ok,
                "{}: the worker holds {fd} -> {target}\n{seen}",
                r.label()
            );
        }
    }
    let log = env.log("send.log");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a program wrote into the log:\n{log}"
    );
    env.wait_queue_empty();
}

/// Item 18: one recipient whose program never ends (`|sleep 3000`) gets at most
/// `concurrencyuser` deliveries at once; another recipient's mail is still delivered while
/// all of them hang. And a program whose background child keeps stdout open does not block
/// its worker: the delivery is reported when the program itself exits.
#[test]
fn one_slow_recipient_does_not_stop_local_delivery() {
    // The programs lead their own process groups: stop the service, then end them, even
    // if the test fails.
    let mut guard = KillPids(Env::new(), vec!["mail/slow/pids", "mail/bg/pids"]);
    let env = &mut guard.0;
    env.control("concurrencylocal", "4");
    env.control("concurrencyuser", "2");
    env.start_send();
    let slow = env.mailbox_rcpt("slow");
    slow.write(".ferry", "|echo $$ >> pids; exec sleep 3000\n");
    let bg = env.mailbox_rcpt("bg");
    for d in ["Maildir/new", "Maildir/cur", "Maildir/tmp"] {
        bg.mkdir(d);
    }
    bg.write(
        ".ferry",
        "|sleep 3000 & echo $! >> pids; echo started\n./Maildir/\n",
    );
    let fast = env.mailbox_rcpt("fast");
    for i in 0..6 {
        sendmail_ok(env, &[&slow.addr()], &message(&format!("slow-{i}"), "x\n"));
    }
    env.wait_for("the slow programs", Duration::from_secs(20), || {
        std::fs::read_to_string(slow.home.join("pids")).is_ok_and(|t| !t.is_empty())
    });
    sendmail_ok(env, &[&bg.addr()], &message("bg-1", "x\n"));
    sendmail_ok(env, &[&bg.addr()], &message("bg-2", "x\n"));
    sendmail_ok(env, &[&fast.addr()], &message("fast", "x\n"));
    let got = env.wait_maildir(&fast.maildir(), 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: fast"));
    // Both messages of `bg`: its worker was not stuck on the first program's child.
    env.wait_maildir(&bg.maildir(), 2);
}

/// A test root whose programs wrote their process ids into files (relative to the root):
/// when dropped, it stops the services, then kills those processes.
struct KillPids(Env, Vec<&'static str>);

impl Drop for KillPids {
    fn drop(&mut self) {
        self.0.stop();
        for p in &self.1 {
            for pid in std::fs::read_to_string(self.0.path(p))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    ferry_e2e::procs::kill(pid);
                }
            }
        }
    }
}

/// Item 19: a `queue` killed in the middle of a message leaves tmp/ID unlocked; it is
/// removed while everything keeps running (clean sweeps tmp/ regularly, not only at start).
#[test]
fn abandoned_tmp_files_are_removed_without_a_restart() {
    let mut env = Env::new();
    env.start_send();
    let (env_r, env_w) = nix::unistd::pipe().unwrap();
    let mut child = std::process::Command::new(env.path("bin/queue"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::from(env_r))
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&vec![b'x'; 256 * 1024]).unwrap();
    stdin.flush().unwrap();
    let tmp = env.path("queue/tmp");
    let count = || std::fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(0);
    env.wait_for("queue's tmp file", Duration::from_secs(20), || count() == 1);
    child.kill().unwrap();
    child.wait().unwrap();
    drop((stdin, env_w));
    assert_eq!(count(), 1, "the killed queue left its file");
    env.wait_for(
        "the abandoned tmp file to go",
        Duration::from_secs(40),
        || count() == 0,
    );
    // clean logs the removal after the unlink: wait for the line rather than race it.
    env.wait_for("clean's log line", Duration::from_secs(10), || {
        env.log("send.log").contains("clean: removed tmp/")
    });
    // Mail still flows.
    let r = env.mailbox_rcpt("after");
    sendmail_ok(&env, &[&r.addr()], &message("after", "x\n"));
    env.wait_maildir(&r.maildir(), 1);
}

/// From the security review: a worker taken over by its user that floods lspawn (its log
/// socket with empty lines, or its result socket) must not keep root busy: lspawn stops
/// logging a flooding worker (and drops one that sends more results than it owes), and other
/// users' mail is delivered meanwhile.
#[test]
fn a_flooding_worker_does_not_stall_lspawn() {
    let mut env = Env::new();
    let dir = env.path("flood");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.display();
    wrap_local_deliver(
        &env,
        &format!(
            "#!/bin/sh\ncase \"$1\" in\n*/noisy)\n  touch {d}/noisy\n  yes '' >&2 &\n  exec sleep 30 ;;\n*/chatty)\n  touch {d}/chatty\n  head -c 2000000 /dev/zero | tr '\\\\0' 'x' >&0 &\n  exec sleep 30 ;;\nesac\nexec \"$(dirname \"$0\")/local-deliver.real\" \"$@\"\n"
        ),
    );
    env.start_send();
    let noisy = env.mailbox_rcpt("noisy");
    let chatty = env.mailbox_rcpt("chatty");
    let victim = env.mailbox_rcpt("bystander");
    sendmail_ok(&env, &[&noisy.addr()], &message("noisy", "x\n"));
    sendmail_ok(&env, &[&chatty.addr()], &message("chatty", "x\n"));
    env.wait_for("the fake workers", Duration::from_secs(20), || {
        dir.join("noisy").exists() && dir.join("chatty").exists()
    });
    sendmail_ok(&env, &[&victim.addr()], &message("bystander", "x\n"));
    env.wait_maildir(&victim.maildir(), 1);
    let log = env.log("send.log");
    assert!(
        log.contains("floods its log"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(log.len() < 8 << 20, "the log grew to {} bytes", log.len());
}
