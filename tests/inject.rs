//! The inject service (crates/queue/src/bin/inject.rs): sendmail hands its message over
//! ROOT/inject/socket instead of starting `queue`; the service records the caller's uid from
//! the kernel, applies queue's limits, and a client that breaks the protocol, dies half-way
//! or holds connections queues nothing and stops nobody else.

#![allow(clippy::unwrap_used)]

use ferry_common::envelope::Envelope;
use ferry_common::record::{self, Record};
use ferry_e2e::{Env, is_root, message, procs};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn connect(env: &Env) -> UnixStream {
    let s = UnixStream::connect(env.path("inject/socket")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Connects and reads the greeting: `H` or `B`.
fn greeting(env: &Env) -> (UnixStream, u8) {
    let mut s = connect(env);
    let r = record::read_blocking(&mut s).unwrap().unwrap();
    (s, r.kind)
}

fn envelope(rcpt: &str) -> Vec<u8> {
    Envelope {
        sender: "sender@test.example".into(),
        recipients: vec![rcpt.into()],
        smtputf8: false,
        requiretls: false,
        dsn: Default::default(),
    }
    .encode()
}

/// Sends a whole message the way sendmail does and returns the verdict record.
fn inject(env: &Env, env_bytes: &[u8], msg: &[u8]) -> Record {
    let (mut s, kind) = greeting(env);
    assert_eq!(kind, b'H');
    s.write_all(&Record::new(b'E').with(env_bytes).encode())
        .unwrap();
    for chunk in msg.chunks(1000) {
        s.write_all(&Record::new(b'D').with(chunk).encode())
            .unwrap();
    }
    s.write_all(&Record::new(b'.').encode()).unwrap();
    record::read_blocking(&mut s).unwrap().unwrap()
}

fn tmp_files(env: &Env) -> Vec<String> {
    env.queue_files()
        .into_iter()
        .filter(|f| f.starts_with("tmp/"))
        .collect()
}

#[test]
fn sendmail_goes_through_the_inject_service() {
    let mut env = Env::new();
    env.start_send();
    env.start_inject();
    let box_ = env.mailbox_rcpt("via-inject");
    let out = env.sendmail(&[&box_.addr()], &message("via inject", "hello\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = env.wait_maildir(&box_.maildir(), 1);
    let text = String::from_utf8_lossy(&got[0]).into_owned();
    let me = nix::unistd::getuid().as_raw();
    assert!(
        text.contains(&format!(" invoked by uid {me});\n")),
        "{text}"
    );
    let log = env.log("inject.log");
    assert!(
        log.lines()
            .any(|l| l.contains("inject: queued ") && l.contains(&format!(" uid {me} "))),
        "{log}"
    );
    if !is_root() {
        return;
    }
    // Separated: the service runs as ferryq; an ordinary user's uid is what the kernel says.
    let ferryq = nix::unistd::User::from_name("ferryq").unwrap().unwrap();
    let ps = procs::named(&env.root, "inject");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].uids, [ferryq.uid.as_raw(); 3]);
    let sender = env.user_rcpt();
    let user = env.users.last().unwrap();
    let out = env.sendmail_as(Some(user), &[&box_.addr()], &message("as user", "hi\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = env.wait_maildir(&box_.maildir(), 2);
    let text = got
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .find(|t| t.contains("Subject: as user"))
        .unwrap();
    assert!(
        text.starts_with(&format!("Return-Path: <{}@test.example>\n", sender.local))
            && text.contains(&format!(" invoked by uid {});\n", user.uid)),
        "{text}"
    );
}

#[test]
fn sendmail_runs_queue_when_the_service_is_not_there() {
    let mut env = Env::new();
    env.start_send();
    // A socket nobody listens on (the service died): connect is refused.
    drop(std::os::unix::net::UnixListener::bind(env.path("inject/socket")).unwrap());
    let box_ = env.mailbox_rcpt("no-inject");
    let out = env.sendmail(&[&box_.addr()], &message("no inject", "hello\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = env.wait_maildir(&box_.maildir(), 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: no inject"));
}

#[test]
fn bad_clients_queue_nothing_and_stop_nobody() {
    let mut env = Env::new();
    env.control("databytes", "2000");
    env.control("maxhops", "3");
    env.start_send();
    env.start_inject();
    let box_ = env.mailbox_rcpt("after-bad");
    let rcpt = box_.addr();

    // A record longer than any the protocol allows: dropped, nothing begun.
    let (mut s, _) = greeting(&env);
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert!(matches!(record::read_blocking(&mut s), Ok(None) | Err(_)));

    // Dies half-way (no `.`): nothing queued, its tmp/ file removed.
    let (mut s, _) = greeting(&env);
    s.write_all(&Record::new(b'E').with(envelope(&rcpt)).encode())
        .unwrap();
    s.write_all(&Record::new(b'D').with(b"Subject: half\n\nhal").encode())
        .unwrap();
    drop(s);

    // Refusals, each after the whole message was read, with queue's exit codes.
    let bad_env = inject(&env, b"Fno-terminator", b"Subject: x\n\nx\n");
    assert_eq!(
        (bad_env.kind, bad_env.str(0).unwrap()),
        (b'F', "91"),
        "{bad_env:?}"
    );
    let big = format!("Subject: big\n\n{}\n", "x".repeat(5000));
    let too_big = inject(&env, &envelope(&rcpt), big.as_bytes());
    assert_eq!((too_big.kind, too_big.str(0).unwrap()), (b'F', "31"));
    let looped = "Received: a\nReceived: b\nReceived: c\nReceived: d\nSubject: loop\n\nx\n";
    let hops = inject(&env, &envelope(&rcpt), looped.as_bytes());
    assert_eq!((hops.kind, hops.str(0).unwrap()), (b'F', "32"), "{hops:?}");

    // One uid holds at most 8 connections: the 9th is told busy (sendmail would then run
    // queue itself), and a slot is free again once one closes.
    let mut held: Vec<UnixStream> = (0..8)
        .map(|_| {
            let (s, kind) = greeting(&env);
            assert_eq!(kind, b'H');
            s
        })
        .collect();
    assert_eq!(greeting(&env).1, b'B');
    let out = env.sendmail(&[&rcpt], &message("while busy", "x\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    held.pop();
    env.wait_for("a free slot", Duration::from_secs(10), || {
        greeting(&env).1 == b'H'
    });
    drop(held);

    // The service still serves; the good message arrives, the refused and cut ones never do.
    let ok = inject(&env, &envelope(&rcpt), b"Subject: fine\n\nfine\n");
    assert_eq!(ok.kind, b'K', "{ok:?}");
    let got = env.wait_maildir(&box_.maildir(), 2);
    let subjects: Vec<String> = got
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .find(|l| l.starts_with("Subject: "))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        subjects.contains(&"Subject: fine".to_string())
            && subjects.contains(&"Subject: while busy".to_string()),
        "{subjects:?}"
    );
    env.wait_queue_empty();
    assert!(tmp_files(&env).is_empty(), "{:?}", tmp_files(&env));
    assert_eq!(env.maildir_new(&box_.maildir()).len(), 2);
    let log = env.log("inject.log");
    assert!(log.contains("connection dropped"), "{log}");
}
