//! Durability (issue 16): an acknowledged message is on disk. SIGKILL cannot see a missing
//! sync (the page cache survives a killed process), so these tests trace the real programs
//! with strace and check, per acknowledged message, the commit protocol of docs/INTERNALS.md:
//!
//! - smtpd path: qwriter wrote queue/tmp/ID, synced it (fsync/fdatasync, or a syncfs of its
//!   filesystem) after its last write, linked it to queue/todo/ID, synced todo/ — all before
//!   its `K txn ID` record to smtpd, which came before smtpd's "250 ... queued as ID";
//! - sendmail: the same before `queue` exited 0, or, through the inject service, before the
//!   `K ID` record of the connection's thread to sendmail;
//! - local delivery: Maildir/tmp/NAME synced, linked to new/NAME, new/ synced, before
//!   local-deliver's `R job 0` record to lspawn for the job whose recipient is the file's
//!   Delivered-To.
//!
//! The checker (ferry_e2e::trace) is tested first on hand-written traces that lack a sync or
//! have one in the wrong place: that is what proves the end-to-end test fails when a sync is
//! removed.

#![allow(clippy::unwrap_used)]

use ferry_common::record::Record;
use ferry_e2e::smtp::Smtp;
use ferry_e2e::trace::{self, Trace};
use ferry_e2e::{Env, procs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// The checker, on hand-written traces.

fn hx(s: &[u8]) -> String {
    s.iter().map(|b| format!("\\x{b:02x}")).collect()
}
fn fd(n: i32, p: &str) -> String {
    format!("{n}<{}>", hx(p.as_bytes()))
}
fn cwd(p: &str) -> String {
    format!("AT_FDCWD<{}>", hx(p.as_bytes()))
}
fn s(p: &str) -> String {
    format!("\"{}\"", hx(p.as_bytes()))
}

/// /r and everything under it is filesystem 1, /other filesystem 2.
fn fake_fs(p: &Path) -> Option<u64> {
    if p.starts_with("/r") {
        Some(1)
    } else if p.starts_with("/other") {
        Some(2)
    } else {
        None
    }
}

fn k_record(id: &str) -> Vec<u8> {
    Record::new(b'K').with_u64(7).with(id).encode()
}

/// A queue writer's commit of /r/q/tmp/A, then its K record. Lines by role:
/// 0 create, 1 write, 2 file sync, 3 link, 4 open todo/, 5 todo/ sync, 6 the K record.
fn writer_lines() -> Vec<String> {
    let tmp = "/r/q/tmp/A";
    let k = k_record("A");
    vec![
        format!(
            "100 1.0 openat({}, {}, O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0640) = {}",
            cwd("/"),
            s(tmp),
            fd(5, tmp)
        ),
        format!("100 1.1 write({}, {}, 5) = 5", fd(5, tmp), s("hello")),
        format!("100 1.2 fsync({}) = 0", fd(5, tmp)),
        format!(
            "100 1.3 linkat({}, {}, {}, {}, 0) = 0",
            cwd("/"),
            s(tmp),
            cwd("/"),
            s("/r/q/todo/A")
        ),
        format!(
            "100 1.4 openat({}, {}, O_RDONLY|O_CLOEXEC) = {}",
            cwd("/"),
            s("/r/q/todo"),
            fd(6, "/r/q/todo")
        ),
        format!("100 1.5 fsync({}) = 0", fd(6, "/r/q/todo")),
        format!(
            "100 1.6 write({}, \"{}\", {n}) = {n}",
            fd(3, "socket:[99]"),
            hx(&k),
            n = k.len()
        ),
    ]
}

/// Checks the writer trace `lines`, acknowledged by its K record.
fn check_writer(lines: &[String]) -> Result<[usize; 3], String> {
    let t = Trace::parse(&lines.join("\n"));
    let recs = t.records(100, true)?;
    let (_, ci) = recs
        .iter()
        .find(|(r, _)| r.kind == b'K' && r.fields.get(1).map(|f| f.as_slice()) == Some(b"A"))
        .ok_or("no K record")?;
    t.check_commit(
        Path::new("/r/q/tmp/A"),
        Path::new("/r/q/todo/A"),
        t.calls[*ci].start,
        &fake_fs,
    )
}

#[test]
fn checker_accepts_the_protocol() {
    assert_eq!(check_writer(&writer_lines()).unwrap(), [2, 3, 5]);
}

#[test]
fn checker_accepts_syncfs_of_the_same_filesystem() {
    let mut l = writer_lines();
    // Group commit: one syncfs through another file of the filesystem, and for todo/ too.
    l[2] = format!("100 1.2 syncfs({}) = 0", fd(9, "/r/q/tmp/B"));
    l[5] = format!("100 1.5 syncfs({}) = 0", fd(9, "/r/q/tmp/B"));
    check_writer(&l).unwrap();
    l[2] = "100 1.2 sync() = 0".into();
    check_writer(&l).unwrap();
}

#[test]
fn checker_refuses_a_missing_file_sync() {
    let mut l = writer_lines();
    l.remove(2);
    let e = check_writer(&l).unwrap_err();
    assert!(e.contains("the file was not synced"), "{e}");
}

#[test]
fn checker_refuses_a_syncfs_of_another_filesystem() {
    let mut l = writer_lines();
    l[2] = format!("100 1.2 syncfs({}) = 0", fd(9, "/other/x"));
    assert!(check_writer(&l).unwrap_err().contains("not synced"));
    // Nor a sync of a memfd or a socket (no known filesystem).
    l[2] = format!("100 1.2 syncfs({}) = 0", fd(9, "/memfd:ferry"));
    assert!(check_writer(&l).unwrap_err().contains("not synced"));
}

#[test]
fn checker_refuses_a_sync_before_the_last_write() {
    let mut l = writer_lines();
    l.swap(1, 2);
    assert!(check_writer(&l).unwrap_err().contains("not synced"));
    // A second write after the sync, before the link.
    let mut l = writer_lines();
    l.insert(
        3,
        format!("100 1.25 write({}, {}, 1) = 1", fd(5, "/r/q/tmp/A"), s("x")),
    );
    assert!(check_writer(&l).unwrap_err().contains("not synced"));
}

#[test]
fn checker_refuses_a_failed_sync() {
    let mut l = writer_lines();
    l[2] = format!(
        "100 1.2 fsync({}) = -1 EIO (Input/output error)",
        fd(5, "/r/q/tmp/A")
    );
    assert!(check_writer(&l).unwrap_err().contains("not synced"));
}

#[test]
fn checker_refuses_a_missing_directory_sync() {
    let mut l = writer_lines();
    l.remove(5);
    let e = check_writer(&l).unwrap_err();
    assert!(e.contains("directory /r/q/todo was not synced"), "{e}");
    // The sync of another directory does not count.
    let mut l = writer_lines();
    l[5] = format!("100 1.5 fsync({}) = 0", fd(6, "/r/q/tmp"));
    assert!(check_writer(&l).unwrap_err().contains("directory"));
}

#[test]
fn checker_refuses_a_directory_sync_before_the_link() {
    let mut l = writer_lines();
    let link = l.remove(3);
    l.insert(5, link);
    assert!(check_writer(&l).unwrap_err().contains("directory"));
}

#[test]
fn checker_refuses_an_ack_before_the_directory_sync() {
    let mut l = writer_lines();
    l.swap(5, 6);
    assert!(check_writer(&l).unwrap_err().contains("directory"));
    // An ack before the link.
    let mut l = writer_lines();
    let ack = l.remove(6);
    l.insert(3, ack);
    assert!(check_writer(&l).unwrap_err().contains("before its link"));
}

#[test]
fn checker_refuses_a_missing_link() {
    let mut l = writer_lines();
    l.remove(3);
    assert!(check_writer(&l).unwrap_err().contains("no link"));
}

#[test]
fn checker_orders_interleaved_calls_by_their_ends() {
    // The todo/ fsync is still running (another pid's line in between) when the ack starts.
    let mut l = writer_lines();
    l[5] = format!("100 1.5 fsync({} <unfinished ...>", fd(6, "/r/q/todo"));
    let ack = l.remove(6);
    l.push(ack.clone());
    l.push("100 1.7 <... fsync resumed>) = 0".into());
    assert!(check_writer(&l).unwrap_err().contains("directory"));
    // Finished before the ack: fine, whatever another process did in between.
    let mut l = writer_lines();
    l[5] = format!("100 1.5 fsync({} <unfinished ...>", fd(6, "/r/q/todo"));
    l.insert(
        6,
        format!("200 1.55 write({}, {}, 2) = 2", fd(1, "/dev/null"), s("hi")),
    );
    l.insert(7, "100 1.56 <... fsync resumed>) = 0".into());
    check_writer(&l).unwrap();
}

/// A worker's Maildir delivery: relative paths after chdir, a record in two writes.
#[test]
fn checker_resolves_relative_paths_and_records() {
    let home = "/r/mail/box";
    let tmp = "./Maildir/tmp/N1";
    let r = Record::new(b'R')
        .with_u64(4)
        .with("0")
        .with("Maildir")
        .encode();
    let (r1, r2) = r.split_at(3);
    let lines = [
        format!("300 1.0 chdir({}) = 0", s(home)),
        format!(
            "300 1.1 recvmsg({}, {{msg_name=NULL, msg_namelen=0, msg_iov=[{{iov_base=\"{}\", iov_len=65536}}], msg_iovlen=1, msg_control=[{{cmsg_len=20, cmsg_level=SOL_SOCKET, cmsg_type=SCM_RIGHTS, cmsg_data=[{}]}}], msg_controllen=24, msg_flags=MSG_CMSG_CLOEXEC}}, MSG_CMSG_CLOEXEC) = {}",
            fd(0, "socket:[5]"),
            hx(&Record::new(b'J')
                .with_u64(4)
                .with("s@x")
                .with("box-a@virt.example")
                .encode()),
            fd(4, "/memfd:ferry (deleted)"),
            Record::new(b'J')
                .with_u64(4)
                .with("s@x")
                .with("box-a@virt.example")
                .encode()
                .len()
        ),
        // A log line on the log socket, and garbage that looks like a short record.
        format!(
            "300 1.15 write({}, {}, 9) = 9",
            fd(2, "socket:[6]"),
            s("log line\n")
        ),
        format!(
            "300 1.16 write({}, {}, 6) = 6",
            fd(2, "socket:[7]"),
            s("\0\0\0\x02xy")
        ),
        format!(
            "300 1.2 write({}, {}, 3) = 3",
            fd(5, "/r/mail/box/Maildir/tmp/N1"),
            s("abc")
        ),
        format!(
            "300 1.3 fdatasync({}) = 0",
            fd(5, "/r/mail/box/Maildir/tmp/N1")
        ),
        format!("300 1.4 link({}, {}) = 0", s(tmp), s("./Maildir/new/N1")),
        format!("300 1.5 fsync({}) = 0", fd(6, "/r/mail/box/Maildir/new")),
        format!(
            "300 1.6 write({}, \"{}\", 3) = 3",
            fd(0, "socket:[5]"),
            hx(r1)
        ),
        format!(
            "300 1.7 write({}, \"{}\", {n}) = {n}",
            fd(0, "socket:[5]"),
            hx(r2),
            n = r2.len()
        ),
    ];
    let t = Trace::parse(&lines.join("\n"));
    let j = t.records(300, false).unwrap();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].0.fields[2], b"box-a@virt.example");
    let w = t.records(300, true).unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0.kind, b'R');
    // The record began in the write of line 8.
    assert_eq!(t.calls[w[0].1].start, 8);
    let md = Path::new("/r/mail/box/Maildir");
    t.check_commit(
        &md.join("tmp/N1"),
        &md.join("new/N1"),
        t.calls[w[0].1].start,
        &fake_fs,
    )
    .unwrap();
    // Without the fdatasync, refused.
    let mut l = lines.to_vec();
    l.remove(5);
    let t = Trace::parse(&l.join("\n"));
    assert!(
        t.check_commit(&md.join("tmp/N1"), &md.join("new/N1"), 7, &fake_fs)
            .unwrap_err()
            .contains("not synced")
    );
}

#[test]
fn checker_finds_exit_0() {
    let t = Trace::parse(
        "10 1.0 exit_group(0) = ?\n11 1.1 exit_group(1) = ?\n10 1.2 +++ exited with 0 +++\n11 1.3 +++ exited with 1 +++\n",
    );
    assert_eq!(t.exit0_line(10), Some(0));
    assert_eq!(t.exit0_line(11), None);
}

// ---------------------------------------------------------------------------------------
// The real programs.

/// A running `strace -p`.
struct Strace {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

fn strace_command() -> Command {
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace (package strace) must be installed: scripts/deps.sh test installs it"
    );
    Command::new("strace")
}

/// Attaches strace to `pids` (and their future children), writing into `out`. Err (strace's
/// words) only if ptrace is not permitted here (EPERM: Yama, a container without
/// CAP_SYS_PTRACE); any other failure fails the test.
fn attach(pids: &[i32], out: &Path) -> Result<Strace, String> {
    let err = out.with_extension("err");
    let mut cmd = strace_command();
    cmd.args(trace::strace_args()).arg("-o").arg(out);
    for p in pids {
        cmd.arg("-p").arg(p.to_string());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut st = Strace {
        child,
        out: out.to_path_buf(),
        err,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&st.err).unwrap_or_default();
        if text.contains("Operation not permitted") {
            st.stop();
            return Err(text);
        }
        if pids
            .iter()
            .all(|p| text.contains(&format!("Process {p} attached")))
        {
            return Ok(st);
        }
        if let Ok(Some(status)) = st.child.try_wait() {
            return Err(format!("strace exited ({status}): {text}"));
        }
        assert!(Instant::now() < deadline, "strace did not attach: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Strace {
    /// Detaches (SIGINT) and waits for strace to finish its output.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The filesystem (device) of a path, or of its nearest existing ancestor inside `root`
/// (a file may be gone by now); None for sockets, memfds and the like.
fn fs_of(root: &Path) -> impl Fn(&Path) -> Option<u64> + '_ {
    move |p: &Path| {
        let mut q = Some(p);
        while let Some(x) = q {
            if let Ok(m) = std::fs::metadata(x) {
                return Some(m.dev());
            }
            if !x.starts_with(root) || x == root {
                return None;
            }
            q = x.parent();
        }
        None
    }
}

/// Keeps a trace where a failing test can point to it.
fn keep(trace: &Path) -> String {
    let name = trace.file_name().unwrap().to_string_lossy().into_owned();
    let to = std::env::temp_dir().join(format!("ferry-durability-{}-{name}", std::process::id()));
    let _ = std::fs::copy(trace, &to);
    to.display().to_string()
}

/// The processes of `program` (smtpd may run a helper of its own besides the server).
fn pids_of(root: &Path, program: &str) -> Vec<i32> {
    let p: Vec<i32> = procs::named(root, program).iter().map(|p| p.pid).collect();
    assert!(!p.is_empty(), "no {program} is running");
    p
}

/// Counts how each check was satisfied ("qwriter: syncfs, linkat, fsync" ×N), for the log.
fn note(
    proofs: &mut std::collections::BTreeMap<String, usize>,
    who: &str,
    t: &Trace,
    lines: [usize; 3],
) {
    let name = |l: usize| {
        t.calls
            .iter()
            .find(|c| c.start == l)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    };
    let key = format!(
        "{who}: {} file, {}, {} dir",
        name(lines[0]),
        name(lines[1]),
        name(lines[2])
    );
    *proofs.entry(key).or_default() += 1;
}

/// Starts `cmd` (sendmail, or strace running it) with `-f sender@test.example TO` and writes
/// a message with `subject` to its stdin.
fn start_sendmail(mut cmd: std::process::Command, to: &str, subject: &str) -> std::process::Child {
    use std::io::Write;
    let mut child = cmd
        .args(["-f", "sender@test.example", to])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&ferry_e2e::message(subject, "hello\n"))
        .unwrap();
    child
}

const SMTP_MESSAGES: usize = 5;
const SENDMAIL_MESSAGES: usize = 3;
const INJECTED_MESSAGES: usize = 3;

#[test]
fn acknowledged_messages_were_synced_first() {
    let mut env = Env::new();
    let rcpts = env.recipients("dur");
    for r in &rcpts {
        r.write(".ferry-default", "./Maildir/\n");
        for d in ["Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"] {
            r.mkdir(d);
        }
    }
    env.start_send();
    let port = env.start_smtpd();
    env.start_inject();
    let root = std::fs::canonicalize(&env.root).unwrap();
    let fs = fs_of(&root);
    let queue = root.join("queue");

    // The daemons, traced from now on: smtpd, its queue writer, and lspawn with the workers
    // it will start.
    let smtpd = pids_of(&root, "smtpd");
    let qwriter = pids_of(&root, "qwriter");
    assert_eq!(qwriter.len(), 1, "one queue writer");
    let qwriter = qwriter[0];
    let inject = pids_of(&root, "inject");
    assert_eq!(inject.len(), 1, "one inject service");
    let inject = inject[0];
    let mut all = smtpd.clone();
    all.push(qwriter);
    all.push(inject);
    all.extend(pids_of(&root, "lspawn"));
    // Workers already running would not be followed (none should be, nothing was sent yet).
    all.extend(procs::named(&root, "local-deliver").iter().map(|p| p.pid));
    let out = root.join("strace-daemons.txt");
    let mut daemons = match attach(&all, &out) {
        Ok(st) => Some(st),
        Err(why) => {
            eprintln!(
                "ptrace of the running programs is not permitted here ({}): only the sendmail \
                 path is checked",
                why.trim()
            );
            None
        }
    };

    // sendmail without the inject service (its socket moved away): strace runs it and the
    // setuid queue it starts (its own child, so this works wherever ptrace does).
    let socket = root.join("inject/socket");
    let aside = root.join("inject/socket.aside");
    std::fs::rename(&socket, &aside).unwrap();
    let mut sendmail_ids = Vec::new();
    let mut errors = Vec::new();
    let mut proofs = std::collections::BTreeMap::new();
    let mut expected_rcpts = Vec::new();
    let mut per_rcpt = vec![0usize; rcpts.len()];
    for i in 0..SENDMAIL_MESSAGES {
        per_rcpt[i % rcpts.len()] += 1;
        let to = rcpts[i % rcpts.len()].ext_addr(&format!("m{i}"));
        expected_rcpts.push(to.clone());
        let out = root.join(format!("strace-sendmail-{i}.txt"));
        let mut cmd = strace_command();
        cmd.args(trace::strace_args())
            .arg("-o")
            .arg(&out)
            .arg(root.join("bin/sendmail"));
        let res = start_sendmail(cmd, &to, &format!("durability-m{i}"))
            .wait_with_output()
            .unwrap();
        assert!(
            res.status.success(),
            "strace sendmail: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let t = Trace::read(&out);
        let links = t.links_into(&queue.join("todo"));
        assert_eq!(links.len(), 1, "one link into todo/ in {}", keep(&out));
        let dest = links[0].paths[1].clone();
        let id = dest.file_name().unwrap().to_string_lossy().into_owned();
        let Some(exit) = t.exit0_line(links[0].pid) else {
            panic!("the queue process did not exit 0: {}", keep(&out));
        };
        match t.check_commit(&queue.join("tmp").join(&id), &dest, exit, &fs) {
            Ok(lines) => note(&mut proofs, "queue", &t, lines),
            Err(e) => errors.push(format!("sendmail/queue: {e} (trace {})", keep(&out))),
        }
        sendmail_ids.push(id);
    }

    std::fs::rename(&aside, &socket).unwrap();
    let Some(mut st) = daemons.take() else {
        assert!(errors.is_empty(), "{}", errors.join("\n"));
        return;
    };

    // sendmail through the inject service, three at once so that it may commit them together.
    let mut injections = Vec::new();
    for i in 0..INJECTED_MESSAGES {
        per_rcpt[i % rcpts.len()] += 1;
        let to = rcpts[i % rcpts.len()].ext_addr(&format!("i{i}"));
        expected_rcpts.push(to.clone());
        let cmd = std::process::Command::new(root.join("bin/sendmail"));
        injections.push(start_sendmail(cmd, &to, &format!("durability-i{i}")));
    }
    for child in injections {
        let res = child.wait_with_output().unwrap();
        assert!(
            res.status.success(),
            "sendmail through inject: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }

    // Five SMTP sessions at once, so that the queue writer may commit several together.
    let mut threads = Vec::new();
    for i in 0..SMTP_MESSAGES {
        per_rcpt[i % rcpts.len()] += 1;
        let to = rcpts[i % rcpts.len()].ext_addr(&format!("s{i}"));
        expected_rcpts.push(to.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Smtp::connect(port);
            let body =
                format!("From: t@test.example\r\nSubject: durability-s{i}\r\n\r\nhello {i}\r\n");
            let r = c.mail("sender@test.example", &[&to], &body);
            c.cmd("QUIT");
            r
        }));
    }
    let mut smtp_ids = Vec::new();
    for t in threads {
        let (code, text) = t.join().unwrap();
        assert_eq!(code, 250, "{text}");
        let id = text.rsplit("queued as ").next().unwrap().trim().to_string();
        assert_eq!(id.len(), 32, "{text}");
        smtp_ids.push(id);
    }

    // Every message delivered and finished (its result went through lspawn to send).
    for (r, n) in rcpts.iter().zip(&per_rcpt) {
        env.wait_maildir(&r.maildir(), *n);
    }
    env.wait_queue_empty();
    st.stop();
    let t = Trace::read(&st.out);

    // smtpd path: the K record, then the 250.
    let writes = t.records(qwriter as u32, true).unwrap();
    for id in &smtp_ids {
        let Some((_, ci)) = writes.iter().find(|(r, _)| {
            r.kind == b'K' && r.fields.get(1).map(|f| f.as_slice()) == Some(id.as_bytes())
        }) else {
            errors.push(format!("qwriter: no K record for {id}"));
            continue;
        };
        let k = &t.calls[*ci];
        let (tmp, dest) = (queue.join("tmp").join(id), queue.join("todo").join(id));
        match t.check_commit(&tmp, &dest, k.start, &fs) {
            Ok(lines) => note(&mut proofs, "qwriter", &t, lines),
            Err(e) => errors.push(format!("qwriter: {e}")),
        }
        let needle = format!("queued as {id}");
        let reply = smtpd
            .iter()
            .filter_map(|p| t.first_write_containing(*p as u32, needle.as_bytes()))
            .min_by_key(|c| c.start);
        match reply {
            Some(w) if w.start > k.end => {
                if let Err(e) = t.check_commit(&tmp, &dest, w.start, &fs) {
                    errors.push(format!("smtpd 250: {e}"));
                }
            }
            Some(w) => errors.push(format!(
                "smtpd: 250 for {id} (line {}) before qwriter's K record (line {})",
                w.start + 1,
                k.start + 1
            )),
            None => errors.push(format!("smtpd: no 250 for {id} in the trace")),
        }
    }

    // inject path: its connection threads' K records (the verdict sendmail exits 0 on).
    let mut threads_of_inject = vec![inject as u32];
    threads_of_inject.extend(
        t.calls
            .iter()
            .filter(|c| c.pid == inject as u32 && c.name.starts_with("clone"))
            .filter_map(|c| c.ret.and_then(|r| u32::try_from(r).ok())),
    );
    let mut injected = 0;
    for tid in threads_of_inject {
        for (r, ci) in t.records(tid, true).unwrap() {
            if r.kind != b'K' || r.fields.len() != 1 {
                continue;
            }
            let id = String::from_utf8_lossy(&r.fields[0]).into_owned();
            let (tmp, dest) = (queue.join("tmp").join(&id), queue.join("todo").join(&id));
            match t.check_commit(&tmp, &dest, t.calls[ci].start, &fs) {
                Ok(lines) => note(&mut proofs, "inject", &t, lines),
                Err(e) => errors.push(format!("inject: {e}")),
            }
            injected += 1;
        }
    }
    if injected != INJECTED_MESSAGES {
        errors.push(format!(
            "inject: {injected} K records traced, {INJECTED_MESSAGES} messages sent"
        ));
    }

    // Local delivery: every Maildir file, by its Delivered-To.
    let mut delivered = Vec::new();
    for r in &rcpts {
        let md = std::fs::canonicalize(r.maildir()).unwrap();
        for f in env.maildir_new(&md) {
            let name = f.file_name().unwrap().to_owned();
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            let rcpt = text
                .lines()
                .find_map(|l| l.strip_prefix("Delivered-To: "))
                .unwrap_or_default()
                .to_string();
            let (tmp, dest) = (md.join("tmp").join(&name), md.join("new").join(&name));
            let Some(link) = t.links(&tmp, &dest).first().copied() else {
                errors.push(format!(
                    "{}: no link of tmp/ to new/ traced",
                    dest.display()
                ));
                continue;
            };
            let worker = link.pid;
            let jobs: Vec<Vec<u8>> = t
                .records(worker, false)
                .unwrap()
                .into_iter()
                .filter(|(j, _)| {
                    j.kind == b'J' && j.fields.get(2).map(|f| f.as_slice()) == Some(rcpt.as_bytes())
                })
                .map(|(j, _)| j.fields[0].clone())
                .collect();
            let ack = t
                .records(worker, true)
                .unwrap()
                .into_iter()
                .find(|(r, _)| {
                    r.kind == b'R'
                        && jobs.contains(&r.fields[0])
                        && r.fields.get(1).map(|f| f.as_slice()) == Some(b"0")
                })
                .map(|(_, ci)| t.calls[ci].start);
            let Some(ack) = ack else {
                errors.push(format!(
                    "{}: no success record from local-deliver (pid {worker}) for {rcpt}",
                    dest.display()
                ));
                continue;
            };
            match t.check_commit(&tmp, &dest, ack, &fs) {
                Ok(lines) => note(&mut proofs, "local-deliver", &t, lines),
                Err(e) => errors.push(format!("local-deliver: {e}")),
            }
            delivered.push(rcpt);
        }
    }
    delivered.sort();
    expected_rcpts.sort();
    assert_eq!(
        delivered,
        expected_rcpts,
        "{}\n(trace kept in {})",
        errors.join("\n"),
        keep(&st.out)
    );
    assert!(
        errors.is_empty(),
        "{}\n(trace kept in {})",
        errors.join("\n"),
        keep(&st.out)
    );
    eprintln!(
        "checked: {} SMTP commits and 250s, {} sendmail commits through queue, {injected} \
         through inject, {} Maildir deliveries",
        smtp_ids.len(),
        sendmail_ids.len(),
        delivered.len()
    );
    for (k, n) in &proofs {
        eprintln!("  {k}: {n}");
    }
}
