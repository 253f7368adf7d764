//! `make run` as README describes it: a complete root, started in the foreground, mail from
//! swaks and from ROOT/bin/sendmail landing in ROOT/mail/NAME/Maildir/new/, Ctrl-C (SIGINT to
//! the foreground process group) stopping everything cleanly, and the next run delivering
//! what was queued meanwhile, on the port it is given now.
//!
//! The tests run scripts/run.sh (what `make run` runs after building) with the binaries under
//! test (FERRY_BIN_DIR, which scripts/layout-root.sh reads). `make_run_target` runs the real
//! `make run`, with CARGO=true so that its `build` step does not start a second cargo on the
//! target directory the running `cargo test` holds locked (that would wait forever).

#![allow(clippy::unwrap_used)]

use ferry_e2e::supervision::{processes_of, teardown, wait_gone};
use ferry_e2e::{bin_dir, free_port, message};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A temporary directory other users can enter (the ferry users, when root).
fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("ferry-run-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// `make run` or run.sh in the foreground of its own process group, as in a terminal.
struct Foreground {
    child: Child,
    out: PathBuf,
    root: PathBuf,
}

impl Foreground {
    fn start(cmd: &mut Command, root: &Path, out: PathBuf) -> Foreground {
        let f = std::fs::File::create(&out).unwrap();
        let child = cmd
            .current_dir(repo())
            .env("FERRY_BIN_DIR", bin_dir())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap();
        Foreground {
            child,
            out,
            root: root.to_path_buf(),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.output();
            if out.contains("ferry is ready") {
                return out;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("it exited ({st}) before being ready:\n{out}");
            }
            assert!(Instant::now() < deadline, "not ready after 60 s:\n{out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (30 s at most) for the run to end by itself and say so.
    fn wait_stopped(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "still running:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.output().contains("ferry stopped"), "{}", self.output());
    }

    /// Ctrl-C: SIGINT to the whole foreground process group; waits for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "still running 30 s after SIGINT:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(2));
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
        teardown(&self.root);
    }
}

fn swaks(port: u16, to: &str, extra: &[&str]) {
    let out = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "30",
            "--from",
            "t@localhost",
            "--to",
            to,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn sendmail(root: &Path, to: &str, subject: &str) {
    let mut c = Command::new(root.join("bin/sendmail"))
        .arg(to)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(&message(subject, "hello\n"))
        .unwrap();
    assert!(c.wait().unwrap().success());
}

fn maildir_count(root: &Path, name: &str) -> usize {
    std::fs::read_dir(root.join("mail").join(name).join("Maildir/new"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn wait_delivered(root: &Path, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while maildir_count(root, name) < n {
        assert!(
            Instant::now() < deadline,
            "no mail for {name} in {}",
            root.join("mail").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_sh(root: &Path, port: u16, out: PathBuf) -> Foreground {
    Foreground::start(
        Command::new("scripts/run.sh")
            .arg(root)
            .arg(port.to_string())
            // Tests run side by side: never the default submission ports.
            .env("SUBMISSION_PORT", free_port().to_string())
            .env("SMTPS_PORT", free_port().to_string()),
        root,
        out,
    )
}

#[test]
fn run_delivers_stops_on_ctrl_c_and_the_next_run_delivers_the_queue() {
    let dir = tempdir();
    let root = dir.path().join("run");
    let port = free_port();
    let mut run = run_sh(&root, port, dir.path().join("out1"));
    let out = run.wait_ready();
    let mode = if ferry_e2e::is_root() {
        "ferry is starting (privilege separation"
    } else {
        "ferry is starting (single-user mode"
    };
    assert!(out.contains(mode), "{out}");
    assert!(
        out.contains(&format!("SMTP       127.0.0.1:{port} ")),
        "{out}"
    );
    assert!(
        out.contains("/mail/NAME/Maildir/new/") && out.contains("log/smtpd/current"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "swaks --server 127.0.0.1:{port} --to you@localhost"
        )),
        "{out}"
    );

    swaks(port, "alice@localhost", &[]);
    swaks(port, "alice@localhost", &["--tls"]);
    sendmail(&root, "bob@localhost", "from-sendmail");
    wait_delivered(&root, "alice", 2);
    wait_delivered(&root, "bob", 1);

    let st = run.interrupt();
    assert!(st.success(), "{st}: {}", run.output());
    assert!(
        run.output()
            .contains("ferry stopped; queue and mailboxes are kept"),
        "{}",
        run.output()
    );
    assert!(
        wait_gone(&root, Duration::from_secs(15)),
        "left after Ctrl-C: {:?}",
        processes_of(&root)
    );

    // While it is stopped, sendmail still queues (it only runs queue).
    sendmail(&root, "carol@localhost", "while-stopped");
    assert_eq!(
        std::fs::read_dir(root.join("queue/todo")).unwrap().count(),
        1
    );
    assert_eq!(maildir_count(&root, "carol"), 0);

    // The next run (on another port) delivers it; configuration and mail are kept.
    let port2 = free_port();
    let mut run2 = run_sh(&root, port2, dir.path().join("out2"));
    run2.wait_ready();
    assert_eq!(
        std::fs::read_to_string(root.join("control/smtplisten")).unwrap(),
        format!("127.0.0.1:{port2}\n")
    );
    wait_delivered(&root, "carol", 1);
    assert_eq!(maildir_count(&root, "alice"), 2);
    swaks(port2, "dave@localhost", &[]);
    wait_delivered(&root, "dave", 1);
    // A second run on the same root is refused while this one runs.
    let mut third = run_sh(&root, free_port(), dir.path().join("out3"));
    let st = third.child.wait().unwrap();
    assert!(
        !st.success() && third.output().contains("already running"),
        "{}",
        third.output()
    );
    assert!(run2.child.try_wait().unwrap().is_none());
    assert!(run2.interrupt().success());
    assert!(
        wait_gone(&root, Duration::from_secs(15)),
        "left after Ctrl-C: {:?}",
        processes_of(&root)
    );
    assert_eq!(
        std::fs::read_dir(root.join("queue/todo")).unwrap().count(),
        0
    );
}

#[test]
fn make_run_target() {
    let dir = tempdir();
    let root = dir.path().join("run");
    let port = free_port();
    let mut cmd = Command::new("make");
    cmd.args(["--no-print-directory", "run", "CARGO=true"])
        .arg(format!("ROOT={}", root.display()))
        .arg(format!("PORT={port}"))
        .arg(format!("SUBMISSION_PORT={}", free_port()))
        .arg(format!("SMTPS_PORT={}", free_port()));
    let mut run = Foreground::start(&mut cmd, &root, dir.path().join("out"));
    run.wait_ready();
    swaks(port, "erin@localhost", &[]);
    wait_delivered(&root, "erin", 1);
    let out = Command::new(root.join("bin/ferryctl"))
        .arg("stat")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    run.interrupt();
    assert!(run.output().contains("ferry stopped"), "{}", run.output());
    assert!(
        wait_gone(&root, Duration::from_secs(15)),
        "left after Ctrl-C: {:?}",
        processes_of(&root)
    );
}

/// A port another program holds is refused at once, with a hint; a run in the background
/// stops with `ferryctl stop --all`, or with SIGTERM to the script; nothing is left running.
#[test]
fn busy_port_is_refused_and_background_runs_stop_cleanly() {
    let dir = tempdir();
    let root = dir.path().join("run");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    let mut refused = run_sh(&root, busy, dir.path().join("out0"));
    let st = refused.child.wait().unwrap();
    assert!(!st.success(), "{}", refused.output());
    assert!(
        refused.output().contains(&format!(
            "port {busy} on 127.0.0.1 is in use by another program"
        )),
        "{}",
        refused.output()
    );
    drop(holder);

    // In the background: ferryctl stop --all ends the run.
    let mut run = run_sh(&root, free_port(), dir.path().join("out1"));
    run.wait_ready();
    let out = Command::new(root.join("bin/ferryctl"))
        .args(["stop", "--all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    run.wait_stopped();
    assert!(
        wait_gone(&root, Duration::from_secs(15)),
        "left after stop --all: {:?}",
        processes_of(&root)
    );

    // SIGTERM to the script alone (as a service manager or `kill` would send it).
    let mut run = run_sh(&root, free_port(), dir.path().join("out2"));
    run.wait_ready();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    run.wait_stopped();
    assert!(
        wait_gone(&root, Duration::from_secs(15)),
        "left after SIGTERM: {:?}",
        processes_of(&root)
    );
}
