//! Recipient users for tests run as root: created with useradd under a unique name, with a
//! home directory inside the test root, and removed when the test ends.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/etc/.ferry-users.lock")
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// Removes the test users (ftXXXXXXXX) whose home is gone: left by a run that was killed
/// before it could remove them. Once per test process.
fn remove_stale_users() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
            return;
        };
        let _held = lock();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(home)) = (f.first(), f.get(5)) else {
                continue;
            };
            let ours = name.len() == 10
                && name.starts_with("ft")
                && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
                && home.starts_with("/tmp/ferry-test-");
            if ours && !Path::new(home).exists() {
                let _ = Command::new("userdel").arg(name).output();
            }
        }
    });
}

impl TestUser {
    /// Creates a user with a home directory `root`/home/NAME (mode 0755, owned by the user).
    pub fn create(root: &Path) -> TestUser {
        remove_stale_users();
        let mut r = [0u8; 4];
        ferry_sys::random_bytes(&mut r).unwrap();
        let name = format!("ft{:08x}", u32::from_ne_bytes(r));
        let homes = root.join("home");
        std::fs::create_dir_all(&homes).unwrap();
        std::fs::set_permissions(&homes, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = homes.join(&name);
        {
            let _held = lock();
            let out = Command::new("useradd")
                .args([
                    "--no-create-home",
                    "--user-group",
                    "--shell",
                    "/bin/sh",
                    "--home-dir",
                ])
                .arg(&home)
                .arg(&name)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "useradd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        std::fs::create_dir(&home).unwrap();
        nix::unistd::chown(&home, Some(u.uid), Some(u.gid)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        TestUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home,
        }
    }

    /// Writes a file in the home directory owned by the user (mode 0644).
    pub fn write(&self, rel: &str, contents: &str) {
        let p = self.home.join(rel);
        std::fs::write(&p, contents).unwrap();
        nix::unistd::chown(
            &p,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn remove(self) {
        let _held = lock();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
