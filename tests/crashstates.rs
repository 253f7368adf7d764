//! Each row of docs/INTERNALS.md's crash table, seeded on disk while nothing runs, then send
//! (and clean) started: each state is recovered as the table says. And qwriter, smtpd and
//! clean killed mid-work under load lose nothing that was answered 250.

#![allow(clippy::unwrap_used)]

use ferry_common::envelope::Envelope;
use ferry_common::id::MsgId;
use ferry_common::info::{self, Channel, RcptInit, State};
use ferry_common::queue::TRAILER1_MAGIC;
use ferry_e2e::{Env, is_root, procs};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn queue_file_bytes(subject: &str, to: &str) -> Vec<u8> {
    let body = format!("Subject: {subject}\n\nseeded {subject}\n");
    let mut v = body.as_bytes().to_vec();
    v.extend(
        Envelope {
            sender: "seed@test.example".into(),
            recipients: vec![to.into()],
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
        }
        .encode(),
    );
    v.extend_from_slice(TRAILER1_MAGIC);
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v
}

/// Writes `path` owned as the queue's programs expect (ferryq:ferry 0640, or the info file
/// ferrys 0600) when root.
fn put(path: &Path, bytes: &[u8], owner: &str, mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if is_root() {
        let u = nix::unistd::User::from_name(owner).unwrap().unwrap();
        let g = nix::unistd::Group::from_name("ferry").unwrap().unwrap();
        nix::unistd::chown(path, Some(u.uid), Some(g.gid)).unwrap();
    }
}

struct Seeded {
    id: MsgId,
}

fn new_id() -> Seeded {
    Seeded {
        id: MsgId::random().unwrap(),
    }
}

impl Seeded {
    fn split(&self) -> String {
        self.id.to_string()[..2].to_string()
    }
    fn tmp(&self, env: &Env) -> std::path::PathBuf {
        env.path(&format!("queue/tmp/{}", self.id))
    }
    fn todo(&self, env: &Env) -> std::path::PathBuf {
        env.path(&format!("queue/todo/{}", self.id))
    }
    fn mess(&self, env: &Env) -> std::path::PathBuf {
        env.path(&format!("queue/mess/{}/{}", self.split(), self.id))
    }
    fn info(&self, env: &Env) -> std::path::PathBuf {
        env.path(&format!("queue/info/{}/{}", self.split(), self.id))
    }
    fn info_tmp(&self, env: &Env) -> std::path::PathBuf {
        env.path(&format!("queue/info/{}/{}.tmp", self.split(), self.id))
    }
}

fn pending_info(to: &str) -> Vec<u8> {
    info::encode(
        ferry_common::date::now_secs(),
        "seed@test.example",
        &[(to.to_string(), Channel::Local)],
    )
}

#[test]
fn every_crash_state_is_recovered_as_documented() {
    let mut env = Env::new();
    let box_ = env.mailbox_rcpt("seeded");
    let to = box_.addr();
    let ctl_mode = 0o640;
    // writing: tmp/ID, unlocked, no todo/ID: removed, never delivered.
    let writing = new_id();
    put(
        &writing.tmp(&env),
        &queue_file_bytes("writing", &to),
        "ferryq",
        ctl_mode,
    );
    // linked, not confirmed: tmp/ID + todo/ID: the tmp name goes, the message is delivered.
    let linked = new_id();
    put(
        &linked.todo(&env),
        &queue_file_bytes("linked", &to),
        "ferryq",
        ctl_mode,
    );
    std::fs::hard_link(linked.todo(&env), linked.tmp(&env)).unwrap();
    // committed: todo/ID: delivered.
    let committed = new_id();
    put(
        &committed.todo(&env),
        &queue_file_bytes("committed", &to),
        "ferryq",
        ctl_mode,
    );
    // persisting: todo/ID + info/XX/ID.tmp: the .tmp goes, the message is delivered.
    let persisting = new_id();
    put(
        &persisting.todo(&env),
        &queue_file_bytes("persisting", &to),
        "ferryq",
        ctl_mode,
    );
    put(
        &persisting.info_tmp(&env),
        &pending_info(&to),
        "ferrys",
        0o600,
    );
    // persisted, not moved: todo/ID + info/XX/ID: loaded, moved to mess/, delivered.
    let unmoved = new_id();
    put(
        &unmoved.todo(&env),
        &queue_file_bytes("unmoved", &to),
        "ferryq",
        ctl_mode,
    );
    put(&unmoved.info(&env), &pending_info(&to), "ferrys", 0o600);
    // persisted: mess/XX/ID + info/XX/ID: retried (no failure yet: now), delivered.
    let persisted = new_id();
    put(
        &persisted.mess(&env),
        &queue_file_bytes("persisted", &to),
        "ferryq",
        ctl_mode,
    );
    put(&persisted.info(&env), &pending_info(&to), "ferrys", 0o600);
    // all recipients final (bounce queued, not removed): finished, not delivered again.
    let finished = new_id();
    put(
        &finished.mess(&env),
        &queue_file_bytes("finished", &to),
        "ferryq",
        ctl_mode,
    );
    let done = info::encode_state(
        ferry_common::date::now_secs(),
        "seed@test.example",
        false,
        None,
        &[RcptInit {
            addr: &to,
            channel: Channel::Local,
            state: State::Delivered,
            errors: &[],
            failure: None,
        }],
    );
    put(&finished.info(&env), &done, "ferrys", 0o600);
    // being removed: info without the message; and mess/ without info.
    let orphan_info = new_id();
    put(&orphan_info.info(&env), &pending_info(&to), "ferrys", 0o600);
    let orphan_mess = new_id();
    put(
        &orphan_mess.mess(&env),
        &queue_file_bytes("orphan", &to),
        "ferryq",
        ctl_mode,
    );

    // recycled: an empty todo/ID (a finished message's file emptied for the pool, its name
    // back after a crash): removed, nothing delivered.
    let recycled = new_id();
    put(&recycled.todo(&env), b"", "ferryq", ctl_mode);

    env.start_send();
    let got = env.wait_maildir(&box_.maildir(), 5);
    env.wait_queue_empty();
    // Exactly the five that were committed, once each.
    let mut subjects: Vec<String> = got
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(String::from))
                .unwrap()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["committed", "linked", "persisted", "persisting", "unmoved"]
    );
    // Nothing left behind: the queue is empty (tmp/ included) and no info remains.
    for s in [
        &writing,
        &linked,
        &persisting,
        &unmoved,
        &finished,
        &orphan_info,
        &orphan_mess,
        &recycled,
    ] {
        for p in [
            s.tmp(&env),
            s.todo(&env),
            s.mess(&env),
            s.info(&env),
            s.info_tmp(&env),
        ] {
            assert!(!p.exists(), "{} is left", p.display());
        }
    }
    // Give a late duplicate the chance to show: still five.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.maildir_new(&box_.maildir()).len(), 5);
}

/// One message over SMTP without panicking: true only when the final reply was 250.
fn try_send(port: u16, to: &str, subject: &str) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut w) = stream.try_clone() else {
        return false;
    };
    let mut r = BufReader::new(stream);
    let mut reply = || -> u16 {
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(n) if n >= 4 => {
                    if line.as_bytes()[3] != b'-' {
                        return line[..3].parse().unwrap_or(0);
                    }
                }
                _ => return 0,
            }
        }
    };
    if reply() != 220 {
        return false;
    }
    let steps = [
        ("EHLO load.test\r\n".to_string(), 250),
        ("MAIL FROM:<load@test.example>\r\n".to_string(), 250),
        (format!("RCPT TO:<{to}>\r\n"), 250),
        ("DATA\r\n".to_string(), 354),
        (format!("Subject: {subject}\r\n\r\nx\r\n.\r\n"), 250),
    ];
    for (cmd, want) in steps {
        if w.write_all(cmd.as_bytes()).is_err() || reply() != want {
            return false;
        }
    }
    let _ = w.write_all(b"QUIT\r\n");
    true
}

/// qwriter, smtpd and clean killed one after another while SMTP clients send: every message
/// answered 250 is delivered, and the queue ends empty.
#[test]
fn killing_qwriter_smtpd_and_clean_under_load_loses_nothing_acknowledged() {
    let mut env = Env::new();
    env.start_send();
    let port = env.start_smtpd();
    let box_ = env.mailbox_rcpt("load");
    let to = box_.addr();
    let root = env.root.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut killed = Vec::new();
            let names = ["qwriter", "clean", "smtpd"];
            let mut i = 0;
            // s6 waits a second before restarting a service: one kill every 1.5 s.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && killed.len() < 6 {
                std::thread::sleep(Duration::from_millis(1500));
                let name = names[i % names.len()];
                i += 1;
                if let Some(p) = procs::named(&root, name).first() {
                    procs::kill(p.pid);
                    killed.push(name);
                }
            }
            killed
        })
    };
    let accepted: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let (to, stop) = (to.clone(), stop.clone());
                s.spawn(move || {
                    let mut ok = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                        let subject = format!("load-{t}-{i}");
                        i += 1;
                        if try_send(port, &to, &subject) {
                            ok.push(subject);
                        }
                        // A steady stream, not a flood: the point is the kills.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    ok
                })
            })
            .collect();
        let killed = killer.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("killed: {killed:?}");
        assert!(
            killed.contains(&"qwriter") && killed.contains(&"smtpd") && killed.contains(&"clean"),
            "{killed:?}"
        );
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!("{} messages acknowledged", accepted.len());
    assert!(accepted.len() >= 50, "only {} acknowledged", accepted.len());
    env.wait_for(
        "every acknowledged message",
        Duration::from_secs(120),
        || {
            let have: std::collections::HashSet<String> = env
                .maildir_new(&box_.maildir())
                .iter()
                .filter_map(|p| {
                    std::fs::read_to_string(p).ok().and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("Subject: ").map(String::from))
                    })
                })
                .collect();
            accepted.iter().all(|s| have.contains(s))
        },
    );
    env.wait_queue_empty();
}
