//! Processes of a test root, found through /proc by the path of their executable.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

pub struct Proc {
    pub pid: i32,
    pub exe: PathBuf,
    /// Real, effective, saved uid from /proc/PID/status.
    pub uids: [u32; 3],
    pub gids: [u32; 3],
}

fn ids(status: &str, key: &str) -> [u32; 3] {
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or("");
    let v: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    [
        v.first().copied().unwrap_or(u32::MAX),
        v.get(1).copied().unwrap_or(u32::MAX),
        v.get(2).copied().unwrap_or(u32::MAX),
    ]
}

/// Every running process whose executable is in `root`/bin.
pub fn under(root: &Path) -> Vec<Proc> {
    let bin = root.join("bin");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if !exe.starts_with(&bin) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if status.contains("State:\tZ") {
            continue;
        }
        out.push(Proc {
            pid,
            exe,
            uids: ids(&status, "Uid:"),
            gids: ids(&status, "Gid:"),
        });
    }
    out
}

/// The processes of one program of `root`.
pub fn named(root: &Path, program: &str) -> Vec<Proc> {
    under(root)
        .into_iter()
        .filter(|p| p.exe.file_name().is_some_and(|n| n == program))
        .collect()
}

pub fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

pub fn kill_all_under(root: &Path) {
    for _ in 0..3 {
        let ps = under(root);
        if ps.is_empty() {
            return;
        }
        for p in ps {
            kill(p.pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
