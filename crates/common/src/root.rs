//! The install root: one tree holding `bin/`, `control/`, `queue/`, `service/`, `log/`, `mail/`
//! (like qmail's /var/qmail). Every program takes the root as the parent of the directory that
//! holds its own executable, read from `/proc/self/exe`, so a tree installed or laid out anywhere
//! works without variables or options. The setuid `queue` relies on this too and reads nothing
//! else: see docs/SECURITY.md for why that is safe.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// The root of the running program: `/proc/self/exe` is ROOT/bin/PROGRAM.
    pub fn from_exe() -> io::Result<Root> {
        let exe = std::fs::read_link("/proc/self/exe")?;
        Self::from_exe_path(&exe)
    }

    fn from_exe_path(exe: &Path) -> io::Result<Root> {
        let bad = || {
            io::Error::other(format!(
                "cannot derive the ferry root from {}",
                exe.display()
            ))
        };
        if exe.to_string_lossy().ends_with(" (deleted)") {
            return Err(io::Error::other(format!(
                "{} was deleted while running",
                exe.display()
            )));
        }
        let bin = exe.parent().ok_or_else(bad)?;
        let root = bin.parent().ok_or_else(bad)?;
        Ok(Root {
            dir: root.to_path_buf(),
        })
    }

    /// A root at an explicit path (tests, and `ferryctl` acting on a tree it was given).
    pub fn at(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn bin(&self, program: &str) -> PathBuf {
        self.dir.join("bin").join(program)
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control")
    }
    pub fn control_file(&self, name: &str) -> PathBuf {
        self.control().join(name)
    }
    pub fn queue(&self) -> PathBuf {
        self.dir.join("queue")
    }
    pub fn mail(&self) -> PathBuf {
        self.dir.join("mail")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }
    /// The local injection socket, served by the `inject` service (crates/queue/src/bin/inject.rs).
    pub fn inject_socket(&self) -> PathBuf {
        self.dir.join("inject").join("socket")
    }
    /// The s6 scan directory: one service directory per supervised service.
    pub fn service(&self) -> PathBuf {
        self.dir.join("service")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_parent_of_bin() {
        let r = Root::from_exe_path(Path::new("/var/ferry/bin/queue")).unwrap();
        assert_eq!(r.path(), Path::new("/var/ferry"));
        assert_eq!(r.bin("send"), Path::new("/var/ferry/bin/send"));
        assert_eq!(r.control_file("me"), Path::new("/var/ferry/control/me"));
    }

    #[test]
    fn deleted_exe_is_an_error() {
        assert!(Root::from_exe_path(Path::new("/x/bin/queue (deleted)")).is_err());
    }
}
