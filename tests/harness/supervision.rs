//! Helpers for the tests of ferryctl and `make run`: a guard that tears down the s6 tree of a
//! test root whatever happens, finding that root's processes (its programs, and the s6
//! processes working in it), and dnsmasq on a loopback port for the DNS checks.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every live process of `root`: its programs (executable in ROOT/bin) and the s6 processes
/// working in it (s6-svscan, s6-supervise, s6-log have their cwd inside ROOT). (pid, name)
pub fn processes_of(root: &Path) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if !exe.starts_with(root.join("bin")) && !cwd.starts_with(root) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if status.is_empty() || status.contains("State:\tZ") {
            continue;
        }
        let name = status
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("Name:")
            .trim()
            .to_string();
        out.push((pid, name));
    }
    out
}

/// Waits until no process of `root` is left; false if some remain after `limit`.
pub fn wait_gone(root: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if processes_of(root).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    processes_of(root).is_empty()
}

/// Stops the s6 tree of `root` cleanly (s6-svscanctl -t) and kills whatever is left.
pub fn teardown(root: &Path) {
    let _ = Command::new("s6-svscanctl")
        .arg("-t")
        .arg(root.join("service"))
        .stderr(Stdio::null())
        .status();
    if !wait_gone(root, Duration::from_secs(15)) {
        for _ in 0..3 {
            for (pid, _) in processes_of(root) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Tears the s6 tree of a root down when dropped, even when the test fails.
pub struct Tree {
    pub root: PathBuf,
}

impl Tree {
    pub fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_path_buf(),
        }
    }

    pub fn ferryctl(&self, args: &[&str]) -> Output {
        Command::new(self.root.join("bin/ferryctl"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// smtplisten on a free port, then `ferryctl start` from nothing: the tree and both
    /// services. Returns the guard and the port.
    pub fn start(env: &crate::Env) -> (Tree, u16) {
        let port = crate::free_port();
        env.control("smtplisten", &format!("127.0.0.1:{port}"));
        let tree = Tree::new(&env.root);
        let out = tree.expect(&["start"], 0);
        assert!(out.contains("supervision: started s6-svscan on"), "{out}");
        assert!(
            out.contains("send: started (pid ") && out.contains("smtpd: started (pid "),
            "{out}"
        );
        (tree, port)
    }

    /// Runs ferryctl, asserts the exit code, returns stdout.
    pub fn expect(&self, args: &[&str], code: i32) -> String {
        let out = self.ferryctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "ferryctl {args:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The pid of a service as s6 reports it (None when down or unsupervised).
    pub fn pid(&self, service: &str) -> Option<u32> {
        let out = Command::new("s6-svstat")
            .args(["-o", "pid"])
            .arg(self.root.join("service").join(service))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| p as u32)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        teardown(&self.root);
    }
}

/// dnsmasq on 127.0.0.1:port answering only from its arguments (names under .test), killed
/// by its pid when dropped.
pub struct Dnsmasq {
    pub port: u16,
    child: Child,
}

impl Dnsmasq {
    pub fn start(dir: &Path, records: &[String]) -> Dnsmasq {
        for _ in 0..5 {
            let port = crate::free_port();
            let log = std::fs::File::create(dir.join("dnsmasq.log")).unwrap();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--local=/test/",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("dnsmasq (package dnsmasq-base) must be installed");
            // Ready when it answers on TCP (it listens on both); gone if the port was taken.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dnsmasq { port, child };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start: {}",
            std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
        );
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
