//! A recipient whose home tests can write delivery files into: a real user with a home in the
//! test root (when the tests run as root), or a virtual mailbox `mail/NAME/` in virt.example
//! (always). Both take the same `.ferry` files, so most tests run against both.

#![allow(clippy::unwrap_used)]

use crate::Env;
use crate::users::TestUser;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

pub struct Rcpt {
    pub local: String,
    pub domain: String,
    pub home: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub is_user: bool,
}

impl Rcpt {
    pub fn addr(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
    pub fn ext_addr(&self, ext: &str) -> String {
        format!("{}-{ext}@{}", self.local, self.domain)
    }
    pub fn maildir(&self) -> PathBuf {
        self.home.join("Maildir")
    }
    /// Writes a delivery file (or any file) in the home, owned by the recipient, mode 0644.
    pub fn write(&self, name: &str, contents: &str) {
        let p = self.home.join(name);
        std::fs::write(&p, contents).unwrap();
        self.own(&p);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.home.join(name);
        std::fs::create_dir_all(&p).unwrap();
        self.own(&p);
        p
    }
    fn own(&self, p: &std::path::Path) {
        if crate::is_root() {
            nix::unistd::chown(
                p,
                Some(nix::unistd::Uid::from_raw(self.uid)),
                Some(nix::unistd::Gid::from_raw(self.gid)),
            )
            .unwrap();
        }
    }
    pub fn label(&self) -> &'static str {
        if self.is_user { "user" } else { "mailbox" }
    }
}

impl Env {
    /// A new virtual mailbox `mail/NAME/` in virt.example, owned by the mailbox user.
    pub fn mailbox_rcpt(&self, name: &str) -> Rcpt {
        let home = self.root.join("mail").join(name);
        std::fs::create_dir_all(&home).unwrap();
        let (uid, gid) = if crate::is_root() {
            let u = nix::unistd::User::from_name("ferrym").unwrap().unwrap();
            (u.uid.as_raw(), u.gid.as_raw())
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        };
        let r = Rcpt {
            local: name.to_string(),
            domain: "virt.example".into(),
            home,
            uid,
            gid,
            is_user: false,
        };
        r.own(&r.home.clone());
        r
    }

    /// A new passwd user in test.example (root only).
    pub fn user_rcpt(&mut self) -> Rcpt {
        let u = TestUser::create(&self.root);
        let r = Rcpt {
            local: u.name.clone(),
            domain: "test.example".into(),
            home: u.home.clone(),
            uid: u.uid,
            gid: u.gid,
            is_user: true,
        };
        self.users.push(u);
        r
    }

    /// The recipients to run a test against: a mailbox, and a real user when root.
    pub fn recipients(&mut self, tag: &str) -> Vec<Rcpt> {
        let mut v = vec![self.mailbox_rcpt(&format!("mb-{tag}"))];
        if crate::is_root() {
            v.push(self.user_rcpt());
        }
        v
    }
}
