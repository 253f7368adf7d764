//! Bad input to the spine: each case gets its documented exit code or log line, and nothing
//! is lost or left half-written.

#![allow(clippy::unwrap_used)]

use ferry_e2e::{Env, is_root, message};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs bin/queue with `msg` on fd 0 and `envelope` on fd 1, returns its exit code.
fn run_queue(env: &Env, msg: &[u8], envelope: &[u8]) -> i32 {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = Command::new(env.path("bin/queue"))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(r))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // queue may refuse before reading everything (a broken control file): EPIPE is fine.
    let _ = child.stdin.take().unwrap().write_all(msg);
    let mut w = std::fs::File::from(w);
    let _ = w.write_all(envelope);
    drop(w);
    let out = child.wait_with_output().unwrap();
    eprintln!("queue: {}", String::from_utf8_lossy(&out.stderr));
    out.status.code().unwrap()
}

#[test]
fn queue_refuses_bad_envelopes_and_leaves_nothing() {
    let env = Env::new();
    assert_eq!(
        run_queue(&env, b"Subject: x\n\nx\n", b"Fa@b\0Tc@d\0"),
        91,
        "no final NUL"
    );
    assert_eq!(
        run_queue(&env, b"Subject: x\n\nx\n", b"Fa@b\0\0"),
        91,
        "no recipient"
    );
    let long = format!("Fa@b\0T{}@test.example\0\0", "x".repeat(2000));
    assert_eq!(
        run_queue(&env, b"Subject: x\n\nx\n", long.as_bytes()),
        11,
        "recipient of 2000 bytes"
    );
    assert_eq!(
        run_queue(&env, b"Subject: x\n\nx\n", b"Fa@b\0Tc\nd@e\0\0"),
        11,
        "control character"
    );
    env.control("databytes", "1000");
    assert_eq!(
        run_queue(&env, &vec![b'x'; 5000], b"Fa@b\0Tc@d\0\0"),
        31,
        "over databytes"
    );
    env.control("databytes", "lots");
    assert_eq!(
        run_queue(&env, b"x\n", b"Fa@b\0Tc@d\0\0"),
        55,
        "broken control file"
    );
    assert!(env.queue_files().is_empty(), "{:?}", env.queue_files());
    env.control("databytes", "1000");
    // sendmail says it in one line, with a sysexits code.
    let out = env.sendmail(&["c@d.example"], &vec![b'x'; 5000]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("larger than 1000 bytes") && err.lines().count() == 1,
        "{err}"
    );
    assert!(env.queue_files().is_empty());
}

#[test]
fn delivery_problems_defer_with_a_clear_log_line() {
    let mut env = Env::new();
    env.start_send();
    // A .ferry naming a Maildir that does not exist.
    let r1 = env.mailbox_rcpt("nomaildir");
    r1.write(".ferry", "./Elsewhere/\n");
    // A broken line in a .ferry file.
    let r2 = env.mailbox_rcpt("brokenline");
    r2.write(".ferry", "./Maildir/\n|\n");
    // A mailbox directory that local-deliver may not write.
    let r3 = env.mailbox_rcpt("readonly");
    if is_root() {
        nix::unistd::chown(
            &r3.home,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(0)),
        )
        .unwrap();
    }
    std::fs::set_permissions(&r3.home, std::fs::Permissions::from_mode(0o555)).unwrap();
    for r in [&r1, &r2, &r3] {
        let out = env.sendmail(&[&r.addr()], &message(&format!("bad-{}", r.local), "x\n"));
        assert!(out.status.success());
    }
    let wants = [
        "Elsewhere/ does not exist",
        "line 2: | with no command",
        "cannot create Maildir",
    ];
    env.wait_for("three deferrals", Duration::from_secs(30), || {
        let l = env.log("send.log");
        l.matches("> deferred:").count() >= 3
    });
    let log = env.log("send.log");
    for w in &wants[..2] {
        assert!(log.contains(w), "{w} not in\n{log}");
    }
    // The readonly mailbox's deferral says what is wrong and where.
    let line = log
        .lines()
        .find(|l| l.contains("<readonly@virt.example> deferred"))
        .unwrap_or_else(|| panic!("{log}"));
    if is_root() {
        // Owned by root (made by hand): lspawn says so, with the fix, before trying.
        assert!(
            line.contains(&format!(
                "belongs to root, not ferrym (made by hand?): chown -R ferrym:ferrym {}",
                r3.home.display()
            )),
            "{line}"
        );
    } else {
        assert!(
            line.contains(wants[2])
                && line.contains(&r3.maildir().display().to_string())
                && line.contains("Permission denied"),
            "{line}"
        );
    }
    // Nothing was lost: all three are still queued, and nothing half-written in mailboxes.
    let listing = String::from_utf8_lossy(&env.ferryctl(&["queue"]).stdout).into_owned();
    assert!(listing.contains("-- 3 messages in the queue"), "{listing}");
    // Fixing the problems and flushing delivers them.
    r1.mkdir("Elsewhere/new");
    r1.mkdir("Elsewhere/cur");
    r1.mkdir("Elsewhere/tmp");
    r2.write(".ferry", "./Maildir/\n");
    std::fs::set_permissions(&r3.home, std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        nix::unistd::chown(
            &r3.home,
            Some(nix::unistd::Uid::from_raw(r3.uid)),
            Some(nix::unistd::Gid::from_raw(r3.gid)),
        )
        .unwrap();
    }
    env.flush();
    env.wait_maildir(&r1.home.join("Elsewhere"), 1);
    env.wait_maildir(&r2.maildir(), 1);
    env.wait_maildir(&r3.maildir(), 1);
    env.wait_queue_empty();
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    Mount(dir.to_path_buf())
}

fn fill(dir: &std::path::Path, leave: u64) -> std::path::PathBuf {
    let p = dir.join("filler");
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    std::fs::write(&p, vec![0u8; free.saturating_sub(leave) as usize]).ok();
    p
}

#[test]
fn full_disk_loses_nothing() {
    if !is_root() {
        eprintln!("needs root to mount a tmpfs; skipped in single-user mode");
        return;
    }
    let mut env = Env::new();
    // The queue on a small tmpfs: init lays it out again inside.
    let _q = mount_tmpfs(&env.path("queue"), "4m");
    let out = env.ferryctl(&["init"]);
    assert!(out.status.success());
    let r = env.mailbox_rcpt("diskfull");
    let _m = mount_tmpfs(&r.home, "2m");
    nix::unistd::chown(
        &r.home,
        Some(nix::unistd::Uid::from_raw(r.uid)),
        Some(nix::unistd::Gid::from_raw(r.gid)),
    )
    .unwrap();
    env.start_send();

    // Queue full: queue answers 53, sendmail 75 with one clear line; nothing left behind.
    let filler = fill(&env.path("queue"), 16 * 1024);
    let big = message("too-big-for-disk", &"y".repeat(200_000));
    let out = env.sendmail(&[&r.addr()], &big);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("disk full"));
    assert!(
        env.queue_files().iter().all(|f| f.ends_with("filler")),
        "{:?}",
        env.queue_files()
    );
    // The same over SMTP: 452 4.3.1 (insufficient storage), nothing kept, the session goes on.
    let port = env.start_smtpd();
    let mut c = ferry_e2e::smtp::Smtp::connect(port);
    assert_eq!(c.cmd("EHLO full.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<s@test.example>").0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{}>", r.addr())).0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(format!("Subject: full\r\n\r\n{}\r\n", "y".repeat(200_000)).as_bytes());
    let (code, text) = c.cmd(".");
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.3.1"), "{text}");
    assert_eq!(c.cmd("NOOP").0, 250);
    assert!(env.queue_files().is_empty(), "{:?}", env.queue_files());
    std::fs::remove_file(&filler).unwrap();

    // Mailbox full: the delivery is deferred, no half-written file; after space is freed it
    // arrives exactly once.
    let mfill = fill(&r.home, 64 * 1024);
    nix::unistd::chown(&mfill, Some(nix::unistd::Uid::from_raw(r.uid)), None).unwrap();
    let out = env.sendmail(&[&r.addr()], &message("mailbox-full", &"z".repeat(300_000)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait_for("the deferral", Duration::from_secs(30), || {
        env.log("send.log").contains("disk full")
    });
    let md = r.maildir();
    let count = |d: &str| {
        std::fs::read_dir(md.join(d))
            .map(|rd| rd.count())
            .unwrap_or(0)
    };
    assert_eq!((count("tmp"), count("new")), (0, 0));
    std::fs::remove_file(&mfill).unwrap();
    env.flush();
    let got = env.wait_maildir(&md, 1);
    assert_eq!(got.len(), 1);
    env.wait_queue_empty();
    env.stop();
}
