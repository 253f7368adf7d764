//! The end-to-end test harness: a complete ferry root in a temporary directory, laid out by
//! the real `ferryctl init` from the real binaries, with the services started the way s6 starts
//! them. Run as root, the root uses the ferry users (created if missing) and tests can add
//! recipient users of their own; as a normal user everything runs single-user.
//!
//! Waits are deadlines for failing, never timings that are asserted.

#![allow(clippy::unwrap_used)]

pub mod procs;
pub mod rcpt;
pub mod remote;
pub mod smtp;
pub mod supervision;
pub mod trace;
pub mod users;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the binaries under test are: FERRY_BIN_DIR, or target/<profile> of this workspace.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FERRY_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    })
}

/// Copies a program with cp(1), not in this process: a file this process had open for
/// writing could be inherited by a child another test thread forks at that moment, and then
/// running the program fails with "Text file busy" (ETXTBSY) until that child execs.
pub fn copy_program(from: &Path, to: &Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// A copy of the programs under test that roots link to, so that `ferryctl init` setting the
/// owners and modes of a root's bin/ never touches the build outputs. One per build (keyed by
/// the programs' sizes and times), made once and shared by every test process.
fn staged_bin_dir() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let src = bin_dir();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in ferry_common::layout::PROGRAMS {
        let m = std::fs::metadata(src.join(p)).unwrap_or_else(|_| {
            panic!(
                "{}/{p} is missing: build first (make test does)",
                src.display()
            )
        });
        (p, m.len(), m.modified().ok()).hash(&mut h);
    }
    let base_name = format!("/tmp/ferry-stage-{}", nix::unistd::getuid());
    let base = Path::new(&base_name);
    let dir = base.join(format!("{:016x}", h.finish()));
    if dir.is_dir() {
        return dir;
    }
    std::fs::create_dir_all(base).unwrap();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(".stage-")
        .tempdir_in(base)
        .unwrap();
    for p in ferry_common::layout::PROGRAMS {
        copy_program(&src.join(p), &tmp.path().join(p));
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let made = tmp.keep();
    // Another process may have staged the same build meanwhile: either copy will do.
    if std::fs::rename(&made, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&made);
    }
    // Stages of older builds go once nobody has used them for an hour.
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if old && e.path() != dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    dir
}

pub fn is_root() -> bool {
    ferry_sys::running_as_root()
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// A ferry root for one test.
pub struct Env {
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    pub users: Vec<users::TestUser>,
}

impl Env {
    /// A fresh root with `me` = test.example, `localhost` a catch-all mailbox domain and
    /// `virt.example` a mailbox domain without catch-all. No service is started.
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("root");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let staged = staged_bin_dir();
        for p in ferry_common::layout::PROGRAMS {
            let src = staged.join(p);
            // The setuid queue is copied (its owner and mode change); the rest is linked.
            if *p == "queue" || std::fs::hard_link(&src, bin.join(p)).is_err() {
                copy_program(&src, &bin.join(p));
            }
        }
        let env = Env {
            root,
            _dir: dir,
            children: Vec::new(),
            users: Vec::new(),
        };
        let out = env.ferryctl(&["init"]);
        assert!(
            out.status.success(),
            "ferryctl init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.control("me", "test.example");
        env.control("locals", "test.example");
        env.control("virtualdomains", "localhost:mail/*\nvirt.example:mail/\n");
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn control(&self, name: &str, value: &str) {
        std::fs::write(self.root.join("control").join(name), format!("{value}\n")).unwrap();
    }

    pub fn ferryctl(&self, args: &[&str]) -> Output {
        Command::new(self.root.join("bin/ferryctl"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `s6-supervise service/NAME` (which runs the service's `run` script and restarts it
    /// when it exits, as in production), its output in ROOT/LOG.
    fn supervise(&mut self, service: &str, log: &str) {
        let log = std::fs::File::create(self.root.join(log)).unwrap();
        let child = Command::new("s6-supervise")
            .arg(self.root.join("service").join(service))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("s6-supervise (package s6) must be installed");
        self.children.push(child);
    }

    /// Starts the send service; its output goes to ROOT/send.log.
    pub fn start_send(&mut self) {
        self.supervise("send", "send.log");
        self.wait_for("send to start", Duration::from_secs(20), || {
            self.log("send.log").contains("send: started")
        });
    }

    /// Starts the inject service (sendmail's socket); its output goes to ROOT/inject.log.
    pub fn start_inject(&mut self) {
        self.supervise("inject", "inject.log");
        self.wait_for("inject to listen", Duration::from_secs(20), || {
            self.log("inject.log").contains("listening on")
        });
    }

    /// Starts smtpd on a free loopback port; output in ROOT/smtpd.log. Returns the port.
    pub fn start_smtpd(&mut self) -> u16 {
        let port = free_port();
        self.control("smtplisten", &format!("127.0.0.1:{port}"));
        self.supervise("smtpd", "smtpd.log");
        self.wait_for("smtpd to listen", Duration::from_secs(20), || {
            self.log("smtpd.log").contains("listening on")
        });
        port
    }

    /// Starts the submission services, `smtpd -submission` and `smtpd -smtps`, on free loopback
    /// ports (with a test certificate for localhost when there is none; their `down` files
    /// removed); output in ROOT/submission.log and ROOT/smtps.log. Returns (587-like, 465-like).
    pub fn start_submission(&mut self) -> (u16, u16) {
        if !self.root.join("control/tlscert").exists() {
            write_test_certificate(&self.root, "localhost");
        }
        let (sub, smtps) = (free_port(), free_port());
        self.control("submissionlisten", &format!("127.0.0.1:{sub}"));
        self.control("smtpslisten", &format!("127.0.0.1:{smtps}"));
        for (svc, log) in [("submission", "submission.log"), ("smtps", "smtps.log")] {
            let _ = std::fs::remove_file(self.root.join("service").join(svc).join("down"));
            self.supervise(svc, log);
            self.wait_for(&format!("{svc} to listen"), Duration::from_secs(20), || {
                self.log(log).contains("listening on")
            });
        }
        (sub, smtps)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(name)).unwrap_or_default()
    }

    /// Runs ROOT/bin/sendmail with `args` and `message` on stdin.
    pub fn sendmail(&self, args: &[&str], message: &[u8]) -> Output {
        self.sendmail_as(None, args, message)
    }

    pub fn sendmail_as(
        &self,
        user: Option<&users::TestUser>,
        args: &[&str],
        message: &[u8],
    ) -> Output {
        let mut cmd = Command::new(self.root.join("bin/sendmail"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(u) = user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Waits until `cond` holds; panics with `what` and the logs after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > limit {
                panic!(
                    "timed out waiting for {what}\n--- send.log ---\n{}",
                    self.log("send.log")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The files in a Maildir's new/ (full paths), sorted.
    pub fn maildir_new(&self, maildir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(maildir.join("new"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits for `n` messages in `maildir`/new and returns their contents.
    pub fn wait_maildir(&self, maildir: &Path, n: usize) -> Vec<Vec<u8>> {
        self.wait_for(
            &format!("{n} messages in {}", maildir.display()),
            Duration::from_secs(30),
            || self.maildir_new(maildir).len() >= n,
        );
        self.maildir_new(maildir)
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    pub fn mailbox(&self, name: &str) -> PathBuf {
        self.root.join("mail").join(name).join("Maildir")
    }

    /// Files left anywhere in the queue (tmp, todo, mess, info), by relative path.
    pub fn queue_files(&self) -> Vec<String> {
        let q = self.root.join("queue");
        let mut out = Vec::new();
        for top in ["tmp", "todo", "mess", "info"] {
            walk(&q.join(top), &mut |p| {
                out.push(p.strip_prefix(&q).unwrap().display().to_string())
            });
        }
        out
    }

    /// Waits up to 90 s: a message committed just as its writer was killed (its trigger
    /// line lost) is taken by send's scan of todo/, which runs every minute.
    pub fn wait_queue_empty(&self) {
        self.wait_for("the queue to be empty", Duration::from_secs(90), || {
            self.queue_files().is_empty()
        });
    }

    /// Sends SIGALRM to send: retry everything now.
    pub fn flush(&self) {
        let out = self.ferryctl(&["flush"]);
        assert!(
            out.status.success(),
            "ferryctl flush: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        for name in [
            "service/smtpd",
            "service/submission",
            "service/smtps",
            "service/inject",
            "service/send",
        ] {
            let svc = self.root.join(name);
            if svc.join("supervise/control").exists() {
                let _ = Command::new("s6-svc")
                    .arg("-wD")
                    .arg("-T")
                    .arg("15000")
                    .arg("-d")
                    .arg(&svc)
                    .output();
                let _ = Command::new("s6-svc").arg("-x").arg(&svc).output();
            }
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
        self.children.clear();
        procs::kill_all_under(&self.root);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
        for u in self.users.drain(..) {
            u.remove();
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, f);
            } else {
                f(&p);
            }
        }
    }
}

/// Writes a fresh self-signed certificate for `name` into ROOT/control/tlscert and tlskey.
pub fn write_test_certificate(root: &Path, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(root.join("control/tlscert"), cert.pem()).unwrap();
    std::fs::write(root.join("control/tlskey"), key.serialize_pem()).unwrap();
}

/// A CA, and a certificate for `name` signed by it: (ca_pem, cert_pem, key_pem).
pub fn ca_and_leaf(name: &str) -> (String, String, String) {
    ca_and_leaf_for(&[name])
}

/// A CA, and one certificate signed by it for all of `names`: (ca_pem, cert_pem, key_pem).
pub fn ca_and_leaf_for(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// A loopback port that was free a moment ago.
/// Waits (10 s at most) until a server on 127.0.0.1:`port` greets with 220.
pub fn wait_for_greeting(port: u16) {
    use std::io::Read;
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 3];
            if s.read_exact(&mut b).is_ok() && &b == b"220" {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing greets on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port free on every loopback address the tests use (127.0.0.1, .2, .3 and ::1: receivers
/// listen on those, with the port the sender's remoteport names), and never handed out twice
/// in this process (tests of one binary run at the same time).
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free_everywhere = ["127.0.0.2", "127.0.0.3", "::1"]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if free_everywhere && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no loopback port free on 127.0.0.1-3 and ::1");
}

/// A message with a unique Subject, LF line ends.
pub fn message(subject: &str, body: &str) -> Vec<u8> {
    format!("From: Tester <tester@test.example>\nTo: somebody\nSubject: {subject}\nMessage-ID: <{subject}@test.example>\n\n{body}").into_bytes()
}

/// The part of a delivered file after the lines ferry adds (Return-Path, Delivered-To,
/// Received, Authentication-Results).
pub fn strip_trace(delivered: &[u8]) -> Vec<u8> {
    let mut rest = delivered;
    loop {
        let line_end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let line = &rest[..line_end];
        let is_trace = line.starts_with(b"Return-Path:")
            || line.starts_with(b"Delivered-To:")
            || line.starts_with(b"Received:")
            || line.starts_with(b"Authentication-Results:");
        let is_cont = line.starts_with(b"\t") || line.starts_with(b" ");
        if is_trace || is_cont {
            rest = &rest[line_end..];
        } else {
            return rest.to_vec();
        }
    }
}

/// Kills and reaps a peer process when the test ends, also when it fails: a peer left running
/// would keep the test's output pipe open (a piped `cargo test` would then never end).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Postfix's smtp-sink on 127.0.0.1:`port` with `args` before the address (as nobody when
/// root: it refuses to keep root's privileges), ready for connections, killed on drop.
pub fn smtp_sink(port: u16, args: &[&str], backlog: &str) -> KillOnDrop {
    let mut sink = Command::new("smtp-sink");
    if is_root() {
        sink.args(["-u", "nobody"]);
    }
    let child = sink
        .args(args)
        .arg(format!("127.0.0.1:{port}"))
        .arg(backlog)
        .spawn()
        .expect("smtp-sink (package postfix)");
    let guard = KillOnDrop(child);
    wait_for_greeting(port);
    guard
}
