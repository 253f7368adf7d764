//! Who may send what: the checks at MAIL and RCPT time.
//!
//! - `badmailfrom` / `badrcptto`: an address, or `@domain` for a whole domain: refused.
//! - A recipient in a domain of ours (`locals`, `virtualdomains`) must exist (crate
//!   ferry_common::route decides, the same code send uses): else 550 5.1.1, so that ferry
//!   never accepts mail it would have to bounce.
//! - Other `rcpthosts` domains (a backup MX) are accepted as they are.
//! - Anything else, including address literals, only from `relayclients`: else 554 5.7.1.
//!
//! - `postmaster` without a domain is always accepted (RFC 5321 §4.5.1), as the postmaster of
//!   `me` when `me` is ours, else of the first local or virtual domain.
//!
//! Lookups at RCPT run on smtpd's event loop, so they are bounded and cached: each address may
//! cost at most [`LOOKUPS_PER_ADDRESS`] passwd lookups and as many file checks (a local part
//! with more `-` prefixes than that is tried from its longest prefixes only and refused when
//! none matched), and passwd answers are cached for [`PASSWD_TTL`] (at most
//! [`PASSWD_CACHE`] names), so a flood of RCPTs costs table look-ups, not NSS calls.
//!
//! Relay tricks fail on their own: `user%other@ours`, `"user@other"@ours` and `other!user@ours`
//! are local parts of ours that name no user or mailbox (550 5.1.1), the source route of
//! `<@ours:user@other>` is dropped by the parser (so it is user@other: 5.7.1), trailing dots are
//! a syntax error, and domains are compared in lower case.

use ferry_common::addr;
use ferry_common::config::Config;
use ferry_common::route::{Accounts, Resolved, Router, SystemAccounts};
use ferry_smtp::Reply;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// passwd lookups (and, separately, file checks) one recipient address may cost.
pub const LOOKUPS_PER_ADDRESS: u32 = 8;
/// How long a passwd answer is kept.
pub const PASSWD_TTL: Duration = Duration::from_secs(60);
/// Most names in the passwd cache (it is emptied when full).
pub const PASSWD_CACHE: usize = 4096;

#[derive(Clone, Debug)]
pub struct Client {
    pub ip: IpAddr,
    /// In relayclients: may send to any domain.
    pub relay: bool,
}

pub trait Policy {
    fn hostname(&self) -> &str;
    /// This host's name (`me`), for the fields added to submitted mail.
    fn me(&self) -> &str;
    fn databytes(&self) -> u64;
    fn maxrcpt(&self) -> u64;
    fn maxhops(&self) -> u64;
    /// The address `RCPT TO:<postmaster>` stands for.
    fn postmaster(&self) -> String;
    fn check_mail(&self, sender: &str, client: &Client) -> Result<(), Reply>;
    fn check_rcpt(&self, rcpt: &str, client: &Client) -> Result<(), Reply>;
    /// May the authenticated `name` use `sender` as envelope sender? (553 5.7.1 if not.)
    fn check_auth_sender(&self, sender: &str, name: &str) -> Result<(), Reply>;
}

/// The senders an authenticated name owns by default: a virtual mailbox address is itself
/// and its `+ext`/`-ext` forms; a local user NAME is NAME and NAME-ext (and NAME+ext) at each
/// local domain. Then control/senders (`address: name`, or `@domain: name`).
pub fn sender_allowed(cfg: &Config, sender: &str, name: &str) -> bool {
    if sender.is_empty() {
        // Bounces and notifications (RFC 3798) of the user's own client.
        return true;
    }
    let s = sender.to_lowercase();
    let n = name.to_lowercase();
    let (local, domain) = addr::split(&s);
    let own_local = |mine: &str| {
        local == mine
            || local
                .strip_prefix(mine)
                .is_some_and(|r| r.starts_with('-') || r.starts_with('+'))
    };
    let owned = match n.rsplit_once('@') {
        Some((nl, nd)) => domain == nd && own_local(nl),
        None => cfg.is_local_domain(domain) && own_local(&n),
    };
    owned
        || cfg.senders.iter().any(|(a, who)| {
            who.to_lowercase() == n && (*a == s || a.strip_prefix('@') == Some(domain))
        })
}

pub struct ConfigPolicy {
    pub cfg: Config,
    pub mail_dir: PathBuf,
    /// Single-user mode: only this uid can receive mail as a user.
    pub only_uid: Option<u32>,
    pub passwd: PasswdCache,
}

impl ConfigPolicy {
    pub fn new(cfg: Config, mail_dir: PathBuf, only_uid: Option<u32>) -> ConfigPolicy {
        ConfigPolicy {
            cfg,
            mail_dir,
            only_uid,
            passwd: PasswdCache::default(),
        }
    }
}

/// Answers of [`SystemAccounts::mail_user_home`] by user name, with the time they were got.
#[derive(Default)]
pub struct PasswdCache {
    map: RefCell<HashMap<String, (Option<PathBuf>, Instant)>>,
}

impl PasswdCache {
    pub fn clear(&self) {
        self.map.borrow_mut().clear();
    }
}

/// The system's accounts for one address: cached passwd answers and a lookup budget.
struct Bounded<'a, A: Accounts> {
    system: A,
    cache: &'a PasswdCache,
    passwd_left: Cell<u32>,
    stats_left: Cell<u32>,
}

impl<A: Accounts> Accounts for Bounded<'_, A> {
    fn mail_user_home(&self, name: &str) -> Option<PathBuf> {
        let now = Instant::now();
        if let Some((home, at)) = self.cache.map.borrow().get(name)
            && now.duration_since(*at) < PASSWD_TTL
        {
            return home.clone();
        }
        let left = self.passwd_left.get();
        if left == 0 {
            return None;
        }
        self.passwd_left.set(left - 1);
        let home = self.system.mail_user_home(name);
        let mut map = self.cache.map.borrow_mut();
        if map.len() >= PASSWD_CACHE {
            map.clear();
        }
        map.insert(name.to_string(), (home.clone(), now));
        home
    }

    fn exists(&self, path: &Path) -> Option<bool> {
        let left = self.stats_left.get();
        if left == 0 {
            return Some(false);
        }
        self.stats_left.set(left - 1);
        self.system.exists(path)
    }
}

fn listed(list: &[String], address: &str) -> bool {
    let a = address.to_lowercase();
    let domain = addr::split(&a).1.to_string();
    list.iter()
        .any(|e| *e == a || (e.starts_with('@') && e[1..] == domain))
}

impl Policy for ConfigPolicy {
    fn hostname(&self) -> &str {
        &self.cfg.smtpgreeting
    }
    fn me(&self) -> &str {
        &self.cfg.me
    }
    fn databytes(&self) -> u64 {
        self.cfg.databytes
    }
    fn maxrcpt(&self) -> u64 {
        self.cfg.maxrcpt
    }
    fn maxhops(&self) -> u64 {
        self.cfg.maxhops
    }
    fn postmaster(&self) -> String {
        let me = self.cfg.me.to_lowercase();
        let domain = if self.cfg.is_ours(&me) {
            Some(me.as_str())
        } else {
            self.cfg
                .locals
                .first()
                .map(|d| d.as_str())
                .or_else(|| self.cfg.virtualdomains.first().map(|v| v.domain.as_str()))
        };
        format!("postmaster@{}", domain.unwrap_or(&me))
    }

    fn check_mail(&self, sender: &str, _client: &Client) -> Result<(), Reply> {
        if !sender.is_empty() && listed(&self.cfg.badmailfrom, sender) {
            return Err(Reply::new(
                553,
                "5.7.1",
                &format!("<{sender}>: Sender address rejected by policy"),
            ));
        }
        Ok(())
    }

    fn check_auth_sender(&self, sender: &str, name: &str) -> Result<(), Reply> {
        if sender_allowed(&self.cfg, sender, name) {
            Ok(())
        } else {
            Err(Reply::new(
                553,
                "5.7.1",
                &format!("<{sender}>: Sender address not owned by user {name}"),
            ))
        }
    }

    fn check_rcpt(&self, rcpt: &str, client: &Client) -> Result<(), Reply> {
        if listed(&self.cfg.badrcptto, rcpt) {
            return Err(Reply::new(
                550,
                "5.7.1",
                &format!("<{rcpt}>: Recipient address rejected by policy"),
            ));
        }
        let domain = addr::split(rcpt).1.to_lowercase();
        if self.cfg.is_ours(&domain) {
            let router = Router {
                cfg: &self.cfg,
                mail_dir: self.mail_dir.clone(),
                accounts: Bounded {
                    system: SystemAccounts {
                        only_uid: self.only_uid,
                    },
                    cache: &self.passwd,
                    passwd_left: Cell::new(LOOKUPS_PER_ADDRESS),
                    stats_left: Cell::new(LOOKUPS_PER_ADDRESS),
                },
            };
            return match router.resolve(rcpt) {
                Resolved::Unknown(why) => Err(Reply::new(
                    550,
                    "5.1.1",
                    &format!("<{rcpt}>: Recipient address rejected: {why}"),
                )),
                Resolved::Deliver(_) => Ok(()),
            };
        }
        if (self.cfg.is_rcpthost(&domain) && !domain.starts_with('[')) || client.relay {
            return Ok(());
        }
        Err(Reply::new(
            554,
            "5.7.1",
            &format!("<{rcpt}>: Relay access denied"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the calls that reach the system.
    struct Counting(Cell<u32>, Cell<u32>);
    impl Accounts for Counting {
        fn mail_user_home(&self, _: &str) -> Option<PathBuf> {
            self.0.set(self.0.get() + 1);
            None
        }
        fn exists(&self, _: &Path) -> Option<bool> {
            self.1.set(self.1.get() + 1);
            Some(false)
        }
    }

    #[test]
    fn senders_of_authenticated_names() {
        let d = tempfile::tempdir().unwrap();
        let root = ferry_common::root::Root::at(d.path());
        std::fs::create_dir_all(root.control()).unwrap();
        std::fs::write(root.control_file("locals"), "ours.example\nalso.example\n").unwrap();
        std::fs::write(
            root.control_file("senders"),
            "team@ours.example: bob\n@shared.example: ann@virt.example\n",
        )
        .unwrap();
        let cfg = Config::load(&root).unwrap();
        let ok = |s: &str, n: &str| sender_allowed(&cfg, s, n);
        assert!(ok("bob@ours.example", "bob"));
        assert!(ok("Bob-lists@ALSO.example", "bob"));
        assert!(ok("bob+x@ours.example", "bob"));
        assert!(ok("team@ours.example", "bob"));
        assert!(ok("", "bob"));
        assert!(!ok("bobby@ours.example", "bob"));
        assert!(!ok("bob@virt.example", "bob"));
        assert!(!ok("alice@ours.example", "bob"));
        assert!(ok("ann@virt.example", "ann@virt.example"));
        assert!(ok("ann+x@virt.example", "Ann@Virt.example"));
        assert!(ok("ann-x@virt.example", "ann@virt.example"));
        assert!(ok("any@shared.example", "ann@virt.example"));
        assert!(!ok("ann@ours.example", "ann@virt.example"));
        assert!(!ok("anne@virt.example", "ann@virt.example"));
        assert!(!ok("team@ours.example", "ann@virt.example"));
    }

    #[test]
    fn lookups_per_address_are_bounded_and_cached() {
        let cache = PasswdCache::default();
        let b = Bounded {
            system: Counting(Cell::new(0), Cell::new(0)),
            cache: &cache,
            passwd_left: Cell::new(LOOKUPS_PER_ADDRESS),
            stats_left: Cell::new(LOOKUPS_PER_ADDRESS),
        };
        for i in 0..100 {
            assert_eq!(b.mail_user_home(&format!("u{i}")), None);
            assert_eq!(b.exists(Path::new("/x")), Some(false));
        }
        assert_eq!(b.system.0.get(), LOOKUPS_PER_ADDRESS);
        assert_eq!(b.system.1.get(), LOOKUPS_PER_ADDRESS);
        // A name looked up before is answered from the cache, budget or not.
        let again = Bounded {
            system: Counting(Cell::new(0), Cell::new(0)),
            cache: &cache,
            passwd_left: Cell::new(LOOKUPS_PER_ADDRESS),
            stats_left: Cell::new(LOOKUPS_PER_ADDRESS),
        };
        for _ in 0..100 {
            assert_eq!(again.mail_user_home("u0"), None);
        }
        assert_eq!(again.system.0.get(), 0);
    }
}
