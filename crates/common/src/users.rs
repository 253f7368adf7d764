//! The ferry users (DESIGN.md §2) and the run mode.
//!
//! Run as root, the suite separates privileges: each program runs under its own user.
//! Run as anybody else (a demo, a developer's laptop), every program runs as that user
//! ("single-user mode"): same protocols, no privilege drop.

use ferry_sys::Cred;
use std::io;

/// smtpd after binding its ports.
pub const SMTPD: &str = "ferryd";
/// Owner of the queue; the setuid `queue`, the queue writer and `clean` run as it.
pub const QUEUE: &str = "ferryq";
/// The scheduler `send`.
pub const SEND: &str = "ferrys";
/// Remote delivery (`rspawn`, `remote-deliver`).
pub const REMOTE: &str = "ferryr";
/// The loggers (s6-log).
pub const LOG: &str = "ferryl";
/// Owner of the virtual mailboxes under `mail/`.
pub const MAILBOX: &str = "ferrym";
/// smtpd's password checker (`smtpd -auth`): the only reader of `control/passwords`.
pub const AUTH: &str = "ferrya";
/// smtpd's verifier of received mail (`authverify`): parses what strangers send, owns nothing.
pub const VERIFY: &str = "ferryv";
/// The group of the programs that read queue files (queue, send, remote).
pub const GROUP: &str = "ferry";

/// Every ferry user with its role, for `make install` and `ferryctl check`.
pub const ALL: &[(&str, &str)] = &[
    (SMTPD, "smtpd after binding: talks to the network"),
    (QUEUE, "owns the queue: queue, queue writer, clean"),
    (SEND, "the scheduler send"),
    (REMOTE, "remote delivery"),
    (LOG, "the loggers (s6-log)"),
    (MAILBOX, "owns the virtual mailboxes under mail/"),
    (
        AUTH,
        "smtpd's password checker: the only reader of control/passwords",
    ),
    (
        VERIFY,
        "smtpd's verifier of received mail (SPF, DKIM, DMARC): owns nothing",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Started as root: each program under its own user.
    Separated,
    /// Started as a normal user: every program runs as that user.
    SingleUser,
}

impl Mode {
    /// The mode a program started as root or as anybody else sets up (start, smtpd, init).
    pub fn current() -> Mode {
        if ferry_sys::running_as_root() {
            Mode::Separated
        } else {
            Mode::SingleUser
        }
    }

    /// The mode of an install, for programs that already run under their own user: the queue
    /// belongs to ferryq when the suite separates privileges.
    pub fn of_root(root: &crate::root::Root) -> Mode {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(root.queue()).map(|m| m.uid()).ok();
        let ferryq = nix::unistd::User::from_name(QUEUE)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        match (owner, ferryq) {
            (Some(o), Some(q)) if o == q => Mode::Separated,
            _ => Mode::SingleUser,
        }
    }

    /// The identity a ferry role runs as in this mode.
    pub fn cred(self, user: &str) -> io::Result<Cred> {
        match self {
            Mode::SingleUser => Ok(Cred::current()),
            Mode::Separated => Cred::lookup(user)?.ok_or_else(|| {
                io::Error::other(format!(
                    "user {user} does not exist (make install creates the ferry users)"
                ))
            }),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::Separated => "privilege separation: each program under its own user",
            Mode::SingleUser => "single-user mode: every program runs as the invoking user",
        }
    }
}
