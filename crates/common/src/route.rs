//! Where an address goes: a local user (with an extension), a virtual mailbox under `mail/`,
//! an alias (replaced by its targets), or a remote domain. smtpd asks at RCPT time (so that
//! unknown local recipients are refused, never bounced later), send asks when it schedules.
//!
//! Local domains (`locals`): `user-ext@domain` is the passwd user `user` (the longest prefix
//! of the local part, at a `-`, that names a user) with extension `ext`; an extension needs a
//! `.ferry-ext` (or a matching `.ferry-...-default`) file in the user's home. Users with uid 0
//! and users whose home directory they do not own (system accounts) get no mail directly.
//! `root`, `mailer-daemon` and `abuse` are aliases of `postmaster` unless `aliases` says
//! otherwise, and `postmaster` falls back to the mailbox `mail/postmaster`, so postmaster@
//! always reaches someone.
//!
//! Virtual domains (`virtualdomains`): `domain:user` makes x@domain the user's extension x
//! (qmail); `domain:mail/` delivers x@domain into the mailbox `mail/x/` if it exists, and
//! `domain:mail/*` creates it on first delivery (a catch-all).

use crate::addr;
use crate::config::{Config, VirtualTarget};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Deliver over SMTP to the address's domain.
    Remote,
    /// A passwd user; `ext` may be empty.
    User { user: String, ext: String },
    /// A virtual mailbox `mail/NAME/`; `ext` may be empty.
    Mailbox { name: String, ext: String },
    /// Replace the address by these (fully qualified) addresses.
    Alias(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Deliver(Dest),
    /// A local address that does not exist, with the reason.
    Unknown(&'static str),
}

/// What routing needs to know about the system; a trait so that tests can fake users.
pub trait Accounts {
    /// The home directory of a user who may receive mail, if there is one.
    fn mail_user_home(&self, name: &str) -> Option<PathBuf>;
    /// Does this file exist? None when it cannot be told (a home directory we cannot read).
    fn exists(&self, path: &Path) -> Option<bool>;
}

/// The real system: passwd and the file system.
pub struct SystemAccounts {
    /// In single-user mode only the running user can receive mail as a user.
    pub only_uid: Option<u32>,
}

impl Accounts for SystemAccounts {
    fn mail_user_home(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let u = nix::unistd::User::from_name(name).ok()??;
        let uid = u.uid.as_raw();
        if uid == 0 || self.only_uid.is_some_and(|only| only != uid) {
            return None;
        }
        let meta = std::fs::metadata(&u.dir).ok()?;
        if !meta.is_dir() || meta.uid() != uid {
            return None;
        }
        Some(u.dir)
    }

    fn exists(&self, path: &Path) -> Option<bool> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Some(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
            Err(_) => None,
        }
    }
}

/// The delivery file names to try for an extension, most specific first (qmail's rule):
/// `a-b` → `.ferry-a-b`, `.ferry-a-default`, `.ferry-default`. Empty → `.ferry`.
/// Dots in the extension become `:` and letters are lowered.
pub fn dotfile_candidates(ext: &str) -> Vec<String> {
    if ext.is_empty() {
        return vec![".ferry".to_string()];
    }
    let ext = ext.to_lowercase().replace('.', ":");
    let mut v = vec![format!(".ferry-{ext}")];
    let mut rest = ext.as_str();
    while let Some(i) = rest.rfind('-') {
        rest = &rest[..i];
        v.push(format!(".ferry-{rest}-default"));
    }
    v.push(".ferry-default".to_string());
    v
}

/// A valid mailbox name: lower-case letters, digits, `.`, `_`, `+`, `-`, starting with a
/// letter or digit, at most 64 characters. Everything else (`%`, `!`, `@`, `/`, quotes) is no
/// mailbox, which is what stops relay tricks in catch-all domains.
pub fn is_mailbox_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && !s.contains("..")
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'+' | b'-')
        })
}

/// Does mail to `address` go on to another domain through `aliases` (followed at most 10
/// deep)? smtpd asks, so that such mail is sealed with ARC on receipt (crates/auth/src/arc.rs).
pub fn forwards_elsewhere(cfg: &Config, address: &str) -> bool {
    let mut todo = vec![(address.to_string(), 0)];
    let mut seen = 0;
    while let Some((a, depth)) = todo.pop() {
        let (local, domain) = addr::split(&a);
        let domain = domain.to_lowercase();
        if !cfg.is_ours(&domain) {
            if depth > 0 {
                return true;
            }
            continue;
        }
        seen += 1;
        if depth >= 10 || seen > 100 {
            continue;
        }
        let lp = addr::unquote_local(local).to_lowercase();
        let targets = cfg.aliases.get(&format!("{lp}@{domain}")).or_else(|| {
            cfg.is_local_domain(&domain)
                .then(|| cfg.aliases.get(&lp))
                .flatten()
        });
        for t in targets.into_iter().flatten() {
            todo.push((addr::qualify(t, &cfg.defaultdomain), depth + 1));
        }
    }
    false
}

pub struct Router<'a, A: Accounts> {
    pub cfg: &'a Config,
    pub mail_dir: PathBuf,
    pub accounts: A,
}

const BUILTIN_POSTMASTER_ALIASES: &[&str] = &["root", "mailer-daemon", "abuse"];

impl<A: Accounts> Router<'_, A> {
    pub fn resolve(&self, address: &str) -> Resolved {
        let (local, domain) = addr::split(address);
        let domain = domain.to_lowercase();
        if domain.is_empty() {
            return Resolved::Unknown("address has no domain");
        }
        // A bounce to an address SRS made for mail forwarded from here: back to its sender.
        if let Some(srs) = &self.cfg.srs
            && let Some(back) = srs.reverse(address, crate::date::now_secs())
        {
            return match back {
                Ok(sender) => Resolved::Deliver(Dest::Alias(vec![sender])),
                Err(e) => Resolved::Unknown(e.text()),
            };
        }
        let lp = addr::unquote_local(local).to_lowercase();
        if let Some(t) = self.cfg.aliases.get(&format!("{lp}@{domain}")) {
            return Resolved::Deliver(Dest::Alias(self.qualify(t)));
        }
        if self.cfg.is_local_domain(&domain) {
            return self.resolve_local(&lp, &domain);
        }
        match self.cfg.virtual_domain(&domain).map(|v| &v.target) {
            Some(VirtualTarget::User(u)) => self.resolve_virtual_user(u, &lp),
            Some(VirtualTarget::Mailboxes { catch_all }) => self.resolve_mailbox(&lp, *catch_all),
            None => Resolved::Deliver(Dest::Remote),
        }
    }

    fn qualify(&self, targets: &[String]) -> Vec<String> {
        targets
            .iter()
            .map(|t| addr::qualify(t, &self.cfg.defaultdomain))
            .collect()
    }

    fn resolve_local(&self, lp: &str, domain: &str) -> Resolved {
        if let Some(t) = self.cfg.aliases.get(lp) {
            return Resolved::Deliver(Dest::Alias(self.qualify(t)));
        }
        if BUILTIN_POSTMASTER_ALIASES.contains(&lp) {
            return Resolved::Deliver(Dest::Alias(vec![format!("postmaster@{domain}")]));
        }
        if let Some(d) = self.find_user(lp) {
            return Resolved::Deliver(d);
        }
        if lp == "postmaster" {
            return Resolved::Deliver(Dest::Mailbox {
                name: "postmaster".into(),
                ext: String::new(),
            });
        }
        Resolved::Unknown("no such user here")
    }

    /// The longest prefix of `lp` (cut at a `-`) that is a user who may receive mail.
    fn find_user(&self, lp: &str) -> Option<Dest> {
        if let Some(_home) = self
            .accounts
            .mail_user_home(lp)
            .filter(|_| crate::config::is_user_name(lp))
        {
            return Some(Dest::User {
                user: lp.to_string(),
                ext: String::new(),
            });
        }
        let mut cut = lp.len();
        while let Some(i) = lp[..cut].rfind('-') {
            cut = i;
            let (user, ext) = (&lp[..i], &lp[i + 1..]);
            if !crate::config::is_user_name(user) {
                continue;
            }
            if let Some(home) = self.accounts.mail_user_home(user) {
                return self.has_dotfile(&home, ext).then(|| Dest::User {
                    user: user.into(),
                    ext: ext.into(),
                });
            }
        }
        None
    }

    /// Is there a delivery file for `ext` in `home`? When we cannot look, say yes: the
    /// delivery itself will decide (and bounce), as qmail does.
    fn has_dotfile(&self, home: &Path, ext: &str) -> bool {
        dotfile_candidates(ext)
            .iter()
            .any(|f| self.accounts.exists(&home.join(f)) != Some(false))
    }

    fn resolve_virtual_user(&self, user: &str, lp: &str) -> Resolved {
        match self.accounts.mail_user_home(user) {
            Some(home) if self.has_dotfile(&home, lp) => Resolved::Deliver(Dest::User {
                user: user.to_string(),
                ext: lp.to_string(),
            }),
            Some(_) if lp == "postmaster" => Resolved::Deliver(Dest::Alias(vec![format!(
                "postmaster@{}",
                self.cfg.defaultdomain
            )])),
            Some(_) => Resolved::Unknown("no such address here"),
            None => Resolved::Unknown("the virtual domain's user does not exist"),
        }
    }

    fn resolve_mailbox(&self, lp: &str, catch_all: bool) -> Resolved {
        if !is_mailbox_name(lp) {
            return Resolved::Unknown("not a valid mailbox name");
        }
        if self.accounts.exists(&self.mail_dir.join(lp)) == Some(true) || lp == "postmaster" {
            return Resolved::Deliver(Dest::Mailbox {
                name: lp.to_string(),
                ext: String::new(),
            });
        }
        let mut cut = lp.len();
        while let Some(i) = lp[..cut].rfind('-') {
            cut = i;
            let (name, ext) = (&lp[..i], &lp[i + 1..]);
            let dir = self.mail_dir.join(name);
            if is_mailbox_name(name) && self.accounts.exists(&dir) == Some(true) {
                if self.has_dotfile(&dir, ext) {
                    return Resolved::Deliver(Dest::Mailbox {
                        name: name.into(),
                        ext: ext.into(),
                    });
                }
                break;
            }
        }
        if catch_all {
            Resolved::Deliver(Dest::Mailbox {
                name: lp.to_string(),
                ext: String::new(),
            })
        } else {
            Resolved::Unknown("no such mailbox here")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::Root;
    use std::collections::{HashMap, HashSet};

    struct Fake {
        users: HashMap<&'static str, PathBuf>,
        files: HashSet<PathBuf>,
    }

    impl Accounts for Fake {
        fn mail_user_home(&self, name: &str) -> Option<PathBuf> {
            self.users.get(name).cloned()
        }
        fn exists(&self, path: &Path) -> Option<bool> {
            if path.starts_with("/secret") {
                return None;
            }
            Some(self.files.contains(path))
        }
    }

    fn router(cfg: &Config) -> Router<'_, Fake> {
        let mut users = HashMap::new();
        users.insert("joe", PathBuf::from("/home/joe"));
        users.insert("www-data", PathBuf::from("/home/www"));
        users.insert("sec", PathBuf::from("/secret"));
        let files: HashSet<PathBuf> = [
            "/home/joe/.ferry-list",
            "/home/joe/.ferry-shop-default",
            "/m/ann",
            "/m/bob",
            "/m/bob/.ferry-x",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        Router {
            cfg,
            mail_dir: PathBuf::from("/m"),
            accounts: Fake { users, files },
        }
    }

    fn config(files: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("control")).unwrap();
        for (n, v) in files {
            std::fs::write(d.path().join("control").join(n), v).unwrap();
        }
        let c = Config::load(&Root::at(d.path())).unwrap();
        (d, c)
    }

    fn user(u: &str, e: &str) -> Resolved {
        Resolved::Deliver(Dest::User {
            user: u.into(),
            ext: e.into(),
        })
    }

    #[test]
    fn local_users_and_extensions() {
        let (_d, c) = config(&[
            ("me", "h.example"),
            ("aliases", "info: joe, ann@else.example\n"),
        ]);
        let r = router(&c);
        assert_eq!(r.resolve("Joe@H.Example"), user("joe", ""));
        assert_eq!(r.resolve("joe-list@h.example"), user("joe", "list"));
        assert_eq!(
            r.resolve("joe-shop-books@h.example"),
            user("joe", "shop-books")
        );
        assert!(matches!(
            r.resolve("joe-nothing@h.example"),
            Resolved::Unknown(_)
        ));
        assert_eq!(r.resolve("www-data@h.example"), user("www-data", ""));
        assert_eq!(r.resolve("sec-anything@h.example"), user("sec", "anything"));
        assert!(matches!(
            r.resolve("nobody@h.example"),
            Resolved::Unknown(_)
        ));
        assert_eq!(
            r.resolve("info@h.example"),
            Resolved::Deliver(Dest::Alias(vec![
                "joe@h.example".into(),
                "ann@else.example".into()
            ]))
        );
        assert_eq!(
            r.resolve("root@h.example"),
            Resolved::Deliver(Dest::Alias(vec!["postmaster@h.example".into()]))
        );
        assert_eq!(
            r.resolve("postmaster@h.example"),
            Resolved::Deliver(Dest::Mailbox {
                name: "postmaster".into(),
                ext: String::new()
            })
        );
        assert_eq!(
            r.resolve("x@elsewhere.example"),
            Resolved::Deliver(Dest::Remote)
        );
    }

    #[test]
    fn relay_tricks_are_not_local_users() {
        let (_d, c) = config(&[
            ("me", "h.example"),
            ("virtualdomains", "localhost:mail/*\n"),
        ]);
        let r = router(&c);
        for a in [
            "joe%other.example@h.example",
            "\"joe@other.example\"@h.example",
            "other!joe@h.example",
        ] {
            assert!(matches!(r.resolve(a), Resolved::Unknown(_)), "{a}");
        }
        for a in [
            "joe%other.example@localhost",
            "\"joe@other.example\"@localhost",
            "other!joe@localhost",
        ] {
            assert!(matches!(r.resolve(a), Resolved::Unknown(_)), "{a}");
        }
    }

    #[test]
    fn virtual_domains() {
        let (_d, c) = config(&[
            ("me", "h.example"),
            (
                "virtualdomains",
                "localhost:mail/*\nshop.example:joe\nbox.example:mail/\n",
            ),
        ]);
        let r = router(&c);
        let mb = |n: &str, e: &str| {
            Resolved::Deliver(Dest::Mailbox {
                name: n.into(),
                ext: e.into(),
            })
        };
        assert_eq!(r.resolve("New.Name@localhost"), mb("new.name", ""));
        assert_eq!(r.resolve("ann@box.example"), mb("ann", ""));
        assert_eq!(r.resolve("bob-x@box.example"), mb("bob", "x"));
        assert!(matches!(
            r.resolve("bob-y@box.example"),
            Resolved::Unknown(_)
        ));
        assert!(matches!(
            r.resolve("carl@box.example"),
            Resolved::Unknown(_)
        ));
        assert_eq!(r.resolve("postmaster@box.example"), mb("postmaster", ""));
        assert_eq!(r.resolve("shop-x@shop.example"), user("joe", "shop-x"));
        assert!(matches!(
            r.resolve("anything@shop.example"),
            Resolved::Unknown(_)
        ));
    }

    #[test]
    fn dotfiles() {
        assert_eq!(dotfile_candidates(""), vec![".ferry"]);
        assert_eq!(
            dotfile_candidates("A-b.c"),
            vec![".ferry-a-b:c", ".ferry-a-default", ".ferry-default"]
        );
        assert!(is_mailbox_name("ann.lee+x"));
        assert!(!is_mailbox_name(".hidden"));
        assert!(!is_mailbox_name("a/b"));
        assert!(!is_mailbox_name("a..b"));
    }
}
