//! The crash test: inject 500 messages while send, local-deliver and queue are killed with
//! SIGKILL at random moments (s6-supervise restarts the send service, as in production).
//! Every message whose `queue` exited 0 must be delivered at least once, and the queue must
//! end empty and free of stray files. Duplicates are allowed only as far as kills explain them
//! (delivery is at-least-once, as in every MTA): none without a kill of send or local-deliver,
//! and a bounded number per such kill; a Maildir tmp/ file only per killed local-deliver.

#![allow(clippy::unwrap_used)]

use ferry_e2e::{Env, message, procs};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MESSAGES: usize = 500;
const MAX_KILLS: usize = 40;
const BOXES: usize = 5;

fn rand(n: u32) -> u32 {
    let mut b = [0u8; 4];
    ferry_sys::random_bytes(&mut b).unwrap();
    u32::from_ne_bytes(b) % n.max(1)
}

#[test]
fn kill_programs_while_injecting_loses_nothing() {
    let mut env = Env::new();
    env.start_send();
    let root = env.root.clone();
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, kills, root) = (done.clone(), kills.clone(), root.clone());
        std::thread::spawn(move || {
            let mut by_prog: HashMap<String, usize> = HashMap::new();
            while !done.load(Ordering::Relaxed) && kills.load(Ordering::Relaxed) < MAX_KILLS {
                std::thread::sleep(Duration::from_millis(10 + rand(40) as u64));
                let victims: Vec<procs::Proc> = procs::under(&root)
                    .into_iter()
                    .filter(|p| {
                        p.exe
                            .file_name()
                            .is_some_and(|n| n == "send" || n == "local-deliver" || n == "queue")
                    })
                    .collect();
                // Each kind of program present is as likely to be hit (queue runs are many).
                let mut kinds: Vec<&std::ffi::OsStr> =
                    victims.iter().filter_map(|p| p.exe.file_name()).collect();
                kinds.sort();
                kinds.dedup();
                let Some(kind) = kinds.get(rand(kinds.len() as u32) as usize).copied() else {
                    continue;
                };
                let of_kind: Vec<&procs::Proc> = victims
                    .iter()
                    .filter(|p| p.exe.file_name() == Some(kind))
                    .collect();
                if let Some(p) = of_kind.get(rand(of_kind.len() as u32) as usize) {
                    procs::kill(p.pid);
                    kills.fetch_add(1, Ordering::Relaxed);
                    let name = p.exe.file_name().unwrap().to_string_lossy().into_owned();
                    *by_prog.entry(name).or_default() += 1;
                }
            }
            by_prog
        })
    };
    // Four injectors at once, so that queue runs overlap deliveries and kills.
    let results: Vec<(Vec<String>, usize)> = std::thread::scope(|s| {
        let env = &env;
        let hs: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    let (mut ok, mut refused) = (Vec::new(), 0);
                    for i in (t..MESSAGES).step_by(4) {
                        let subject = format!("crash-{i}");
                        let to = format!("crash{}@localhost", i % BOXES);
                        let out =
                            env.sendmail(&[&to], &message(&subject, &format!("message {i}\n")));
                        if out.status.success() {
                            ok.push(subject);
                        } else {
                            refused += 1;
                        }
                        // Spread the injection over a few seconds, so that kills land in
                        // every phase (send restarts take a second under s6).
                        std::thread::sleep(Duration::from_millis(15));
                    }
                    (ok, refused)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<String> = results.iter().flat_map(|r| r.0.clone()).collect();
    let refused: usize = results.iter().map(|r| r.1).sum();
    done.store(true, Ordering::Relaxed);
    let by_prog = killer.join().unwrap();
    eprintln!(
        "injected {MESSAGES}: {} accepted, {refused} refused (queue killed); kills: {by_prog:?}",
        accepted.len()
    );

    // Wait for every accepted message, flushing now and then (a killed delivery is retried
    // on the schedule; flush makes it now).
    let deadline = Instant::now() + Duration::from_secs(180);
    let count = || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for b in 0..BOXES {
            for f in env.maildir_new(&env.mailbox(&format!("crash{b}"))) {
                let t = std::fs::read_to_string(&f).unwrap_or_default();
                if let Some(s) = t.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                    *seen.entry(s.to_string()).or_default() += 1;
                }
            }
        }
        seen
    };
    loop {
        let seen = count();
        let missing: Vec<&String> = accepted.iter().filter(|s| !seen.contains_key(*s)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{} accepted messages never delivered, e.g. {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                env.log("send.log")
            );
        }
        let _ = env.ferryctl(&["flush"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    env.wait_queue_empty();
    let seen = count();
    let dups: usize = seen.values().map(|n| n - 1).sum();
    let extra: Vec<&String> = seen.keys().filter(|s| !accepted.contains(s)).collect();
    eprintln!(
        "delivered: {} distinct, {dups} duplicates; {} delivered although queue was killed before answering",
        seen.len(),
        extra.len()
    );
    // Maildir tmp/ may keep a file from a local-deliver killed mid-write (readers remove
    // such files after 36 hours, as the Maildir convention says); report how many.
    let stray: usize = (0..BOXES)
        .map(|b| {
            std::fs::read_dir(env.mailbox(&format!("crash{b}")).join("tmp"))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum();
    eprintln!("Maildir tmp/ files left by killed deliveries: {stray}");

    // The run tested something: most messages were accepted, and programs were killed.
    let killed = |name: &str| by_prog.get(name).copied().unwrap_or(0);
    let total: usize = by_prog.values().sum();
    assert!(
        accepted.len() >= MESSAGES / 2,
        "only {} of {MESSAGES} accepted",
        accepted.len()
    );
    assert!(total >= 10, "only {total} kills: {by_prog:?}");
    assert!(killed("send") >= 1, "send was never killed: {by_prog:?}");
    // Only a killed send or local-deliver repeats deliveries: those in hand at the kill (at
    // most concurrencyuser = 16 jobs, one recipient each, for each of the BOXES mailboxes).
    let repeaters = killed("send") + killed("local-deliver");
    assert!(
        dups <= repeaters * BOXES * 16,
        "{dups} duplicates for {repeaters} kills of send and local-deliver: {by_prog:?}"
    );
    // A Maildir tmp/ file is left by a delivery killed mid-write: a killed local-deliver, or
    // the workers that go down with a killed send (at most concurrencylocal each time).
    assert!(
        stray <= killed("local-deliver") + killed("send") * 10,
        "{stray} Maildir tmp/ files for these kills: {by_prog:?}"
    );
}
