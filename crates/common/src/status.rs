//! Result codes shared by every ferry program (DESIGN.md §4).
//!
//! A delivery or a one-shot program ends in one of three results: 0 success, 100 permanent
//! failure, 111 temporary failure. Anything unexpected is temporary.
//!
//! `queue` exits with a finer code (the qmail-queue convention: below 41 permanent, otherwise
//! temporary) so that its caller can give the right SMTP reply; [`QUEUE_EXITS`] is the one table
//! mapping each code to its meaning, SMTP reply code and enhanced status code (RFC 3463).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Permanent,
    Temporary,
}

impl Outcome {
    pub fn code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Permanent => 100,
            Outcome::Temporary => 111,
        }
    }
    pub fn from_code(code: i32) -> Outcome {
        match code {
            0 => Outcome::Ok,
            100 => Outcome::Permanent,
            _ => Outcome::Temporary,
        }
    }
}

/// One row of the queue exit code table.
pub struct QueueExit {
    pub code: i32,
    pub meaning: &'static str,
    pub smtp: u16,
    pub enhanced: &'static str,
}

pub const QUEUE_OK: i32 = 0;
/// An envelope address is longer than [`crate::envelope::MAX_ADDRESS`] or has control characters.
pub const QUEUE_BAD_ADDRESS: i32 = 11;
/// The message is larger than `databytes`.
pub const QUEUE_TOO_BIG: i32 = 31;
/// The message has more than `maxhops` Received lines: a mail loop.
pub const QUEUE_TOO_MANY_HOPS: i32 = 32;
/// Refused by the checks of mail authentication (SPF, DMARC under `enforce`): the reply is
/// the writer's text.
pub const QUEUE_AUTH_REFUSED: i32 = 21;
/// Out of memory.
pub const QUEUE_NO_MEMORY: i32 = 51;
/// Mail authentication could not be checked now (DNS) under `enforce`: the writer's text.
pub const QUEUE_AUTH_DEFERRED: i32 = 71;
/// Timed out reading the message or envelope.
pub const QUEUE_TIMEOUT: i32 = 52;
/// Write error in the queue (disk full, quota).
pub const QUEUE_WRITE_ERROR: i32 = 53;
/// Could not read the message or the envelope (the caller went away).
pub const QUEUE_READ_ERROR: i32 = 54;
/// A control file is unreadable or malformed.
pub const QUEUE_CONFIG_ERROR: i32 = 55;
/// The queue directory is missing or has the wrong permissions.
pub const QUEUE_DIR_ERROR: i32 = 62;
/// An internal error (a bug): temporary.
pub const QUEUE_BUG: i32 = 81;
/// The envelope is malformed (no final NUL, bad record, no recipient).
pub const QUEUE_BAD_ENVELOPE: i32 = 91;

pub const QUEUE_EXITS: &[QueueExit] = &[
    qe(QUEUE_OK, "message queued", 250, "2.0.0"),
    qe(
        QUEUE_BAD_ADDRESS,
        "envelope address too long or with control characters",
        554,
        "5.1.3",
    ),
    qe(QUEUE_TOO_BIG, "message larger than databytes", 552, "5.3.4"),
    qe(
        QUEUE_TOO_MANY_HOPS,
        "too many hops (Received lines): mail loop",
        554,
        "5.4.6",
    ),
    qe(
        QUEUE_AUTH_REFUSED,
        "refused by SPF or DMARC policy",
        550,
        "5.7.1",
    ),
    qe(QUEUE_NO_MEMORY, "out of memory", 451, "4.3.0"),
    qe(
        QUEUE_AUTH_DEFERRED,
        "SPF or DMARC cannot be checked now",
        451,
        "4.7.1",
    ),
    qe(
        QUEUE_TIMEOUT,
        "timeout reading the message or envelope",
        451,
        "4.4.2",
    ),
    qe(
        QUEUE_WRITE_ERROR,
        "cannot write to the queue (disk full?)",
        452,
        "4.3.1",
    ),
    qe(
        QUEUE_READ_ERROR,
        "cannot read the message or envelope",
        451,
        "4.3.0",
    ),
    qe(
        QUEUE_CONFIG_ERROR,
        "cannot read a control file",
        451,
        "4.3.5",
    ),
    qe(
        QUEUE_DIR_ERROR,
        "queue directory missing or unusable",
        451,
        "4.3.0",
    ),
    qe(QUEUE_BUG, "internal error in queue", 451, "4.3.0"),
    qe(QUEUE_BAD_ENVELOPE, "envelope format error", 554, "5.6.0"),
];

const fn qe(code: i32, meaning: &'static str, smtp: u16, enhanced: &'static str) -> QueueExit {
    QueueExit {
        code,
        meaning,
        smtp,
        enhanced,
    }
}

/// The table row for an exit code; unknown codes are treated as a temporary internal error.
pub fn queue_exit(code: i32) -> &'static QueueExit {
    QUEUE_EXITS
        .iter()
        .find(|e| e.code == code)
        .unwrap_or_else(|| {
            QUEUE_EXITS
                .iter()
                .find(|e| e.code == QUEUE_BUG)
                .unwrap_or(&QUEUE_EXITS[0])
        })
}

/// qmail's rule: exit codes 11..=40 are permanent refusals, others (but 0) temporary.
pub fn queue_exit_is_permanent(code: i32) -> bool {
    (11..=40).contains(&code) || code == QUEUE_BAD_ENVELOPE
}

/// The SMTP reply an SMTP server gives for a `queue` exit code, e.g. "452 4.3.1 ...".
pub fn queue_exit_reply(code: i32) -> String {
    let e = queue_exit(code);
    format!("{} {} {}", e.smtp, e.enhanced, e.meaning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for e in QUEUE_EXITS {
            let perm = e.smtp >= 500;
            assert_eq!(queue_exit_is_permanent(e.code), perm, "code {}", e.code);
            if e.code != 0 {
                assert_eq!(e.enhanced.as_bytes()[0], if perm { b'5' } else { b'4' });
            }
        }
        assert_eq!(queue_exit(99).code, QUEUE_BUG);
        assert!(queue_exit_reply(QUEUE_WRITE_ERROR).starts_with("452 4.3.1"));
    }
}
