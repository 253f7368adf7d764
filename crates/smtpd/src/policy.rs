//! Who may send what: the checks at MAIL and RCPT time.
//!
//! - `badmailfrom` / `badrcptto`: an address, or `@domain` for a whole domain: refused.
//! - A recipient in a domain of ours (`locals`, `virtualdomains`) must exist (crate
//!   ferry_common::route decides, the same code send uses): else 550 5.1.1, so that ferry
//!   never accepts mail it would have to bounce.
//! - Other `rcpthosts` domains (a backup MX) are accepted as they are.
//! - Anything else, including address literals, only from `relayclients`: else 554 5.7.1.
//!
//! Relay tricks fail on their own: `user%other@ours`, `"user@other"@ours` and `other!user@ours`
//! are local parts of ours that name no user or mailbox (550 5.1.1), the source route of
//! `<@ours:user@other>` is dropped by the parser (so it is user@other: 5.7.1), trailing dots are
//! a syntax error, and domains are compared in lower case.

use ferry_common::addr;
use ferry_common::config::Config;
use ferry_common::route::{Resolved, Router, SystemAccounts};
use ferry_smtp::Reply;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Client {
    pub ip: IpAddr,
    /// In relayclients: may send to any domain.
    pub relay: bool,
}

pub trait Policy {
    fn hostname(&self) -> &str;
    fn me(&self) -> &str;
    fn databytes(&self) -> u64;
    fn maxrcpt(&self) -> u64;
    fn check_mail(&self, sender: &str, client: &Client) -> Result<(), Reply>;
    fn check_rcpt(&self, rcpt: &str, client: &Client) -> Result<(), Reply>;
}

pub struct ConfigPolicy {
    pub cfg: Config,
    pub mail_dir: PathBuf,
    /// Single-user mode: only this uid can receive mail as a user.
    pub only_uid: Option<u32>,
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
                accounts: SystemAccounts {
                    only_uid: self.only_uid,
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
