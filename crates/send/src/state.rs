//! send's in-memory picture of the queue and the retry schedule.
//!
//! A message send has taken is a [`Msg`]. While its deliveries go well it lives only here and
//! in todo/ID: nothing is written for it until it is done (then clean removes todo/ID). Only
//! a message with a deferred recipient (or one held by the administrator) is *persisted*:
//! its state is written to info/XX/ID and the message moves to mess/XX/ID. A crash before that
//! repeats the deliveries of the message (at-least-once), never loses it, because todo/ID stays
//! until the message is finished.

use ferry_common::id::MsgId;
use ferry_common::info::{self, Channel, State};
use std::collections::BTreeSet;
use std::fs::File;

pub struct Rcpt {
    pub addr: String,
    /// The envelope recipient it came from through aliases (None: it is one itself). Not in
    /// info/: recovery recomputes it from the envelope.
    pub orig: Option<String>,
    pub channel: Channel,
    pub state: State,
    /// Where its state byte is, once the message is persisted.
    pub record: Option<info::Rcpt>,
    pub attempts: u32,
    pub last_error: Option<(u64, String)>,
    /// The permanent failure, for the bounce.
    pub failure: Option<(u64, String)>,
    /// What the delivery said, kept only for a success report (NOTIFY=SUCCESS).
    pub last_result: Option<String>,
    /// When it is due (unix seconds), while it sits in the schedule.
    pub due: Option<u64>,
    /// Due and waiting in a ready list for a free delivery slot.
    pub ready: bool,
    /// A delivery of it is running.
    pub busy: bool,
}

impl Rcpt {
    pub fn new(addr: String, channel: Channel) -> Rcpt {
        Rcpt {
            addr,
            orig: None,
            channel,
            state: State::Pending,
            record: None,
            attempts: 0,
            last_error: None,
            failure: None,
            last_result: None,
            due: None,
            ready: false,
            busy: false,
        }
    }
}

/// A recipient after alias expansion: where it goes, and the envelope recipient it came
/// from when that was an alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub addr: String,
    pub channel: Channel,
    pub orig: Option<String>,
}

/// `1 message`, `2 messages`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else if let Some(stem) = word.strip_suffix('y') {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {word}s")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Todo,
    Mess,
}

impl Loc {
    pub fn code(self) -> &'static str {
        match self {
            Loc::Todo => "t",
            Loc::Mess => "m",
        }
    }
}

pub struct Msg {
    pub id: MsgId,
    /// info/XX/ID, once persisted.
    pub info: Option<File>,
    pub loc: Loc,
    /// clean is moving it from todo/ to mess/: no delivery starts meanwhile.
    pub moving: bool,
    /// It must be persisted as soon as no delivery runs (a deferral, a hold).
    pub persist: bool,
    pub birth: u64,
    pub sender: String,
    pub hold: bool,
    pub rcpts: Vec<Rcpt>,
    /// `ferryctl queue delete`: finish without a bounce once no delivery runs.
    pub deleting: bool,
    /// The bounce could not be queued: try to finish again at this time.
    pub finish_retry: Option<u64>,
    /// A recipient may have asked for a success report (NOTIFY=SUCCESS): the envelope is
    /// read again when the message is finished. Unknown (true) for a message read from info/.
    pub asks_success: bool,
    /// When its delay warning was sent (delaywarningtime), if it was: one per message.
    pub warned: Option<u64>,
}

impl Msg {
    pub fn new(id: MsgId, birth: u64, sender: String, rcpts: Vec<Classified>) -> Msg {
        Msg {
            id,
            info: None,
            loc: Loc::Todo,
            moving: false,
            persist: false,
            birth,
            sender,
            hold: false,
            rcpts: rcpts
                .into_iter()
                .map(|c| {
                    let mut r = Rcpt::new(c.addr, c.channel);
                    r.orig = c.orig;
                    r
                })
                .collect(),
            deleting: false,
            finish_retry: None,
            asks_success: false,
            warned: None,
        }
    }

    pub fn from_info(id: MsgId, file: File, loc: Loc, i: info::Info) -> Msg {
        let rcpts = i
            .rcpts
            .into_iter()
            .map(|r| Rcpt {
                addr: r.addr.clone(),
                orig: None,
                channel: r.channel,
                state: r.state,
                attempts: r.attempts,
                last_error: r.last_error.clone(),
                failure: r.failure.clone().map(|f| (0, f)),
                last_result: None,
                due: None,
                ready: false,
                busy: false,
                record: Some(r),
            })
            .collect();
        Msg {
            id,
            info: Some(file),
            loc,
            moving: false,
            persist: false,
            birth: i.birth,
            sender: i.sender,
            hold: i.hold,
            rcpts,
            deleting: false,
            finish_retry: None,
            asks_success: true,
            warned: i.warned,
        }
    }

    pub fn pending(&self) -> usize {
        self.rcpts
            .iter()
            .filter(|r| r.state == State::Pending)
            .count()
    }
    pub fn busy(&self) -> usize {
        self.rcpts.iter().filter(|r| r.busy).count()
    }
    /// Every recipient has its final state and nothing runs.
    pub fn complete(&self) -> bool {
        !self.moving && self.busy() == 0 && (self.deleting || self.pending() == 0)
    }

    /// The info file for this message as it stands now.
    pub fn encode_info(&self) -> Vec<u8> {
        let errors: Vec<Vec<(u64, String)>> = self
            .rcpts
            .iter()
            .map(|r| r.last_error.iter().cloned().collect())
            .collect();
        let init: Vec<info::RcptInit<'_>> = self
            .rcpts
            .iter()
            .zip(&errors)
            .map(|(r, e)| info::RcptInit {
                addr: &r.addr,
                channel: r.channel,
                state: r.state,
                errors: e,
                failure: r.failure.as_ref().map(|(t, s)| (*t, s.as_str())),
            })
            .collect();
        info::encode_state(self.birth, &self.sender, self.hold, self.warned, &init)
    }
}

/// Exponential backoff per recipient: the wait after the n-th temporary failure is
/// base·2^(n-1), at most `cap` (local: 10 s, 20 s, 40 s, ... up to 30 minutes; remote: 1, 2, 4,
/// 8, ... minutes up to an hour, like Postfix's backoff between 300 and 4000 seconds but
/// starting sooner). The attempt count survives a restart (one note per failure in info/).
pub fn backoff(channel: Channel, attempts: u32) -> u64 {
    let (base, cap) = match channel {
        Channel::Local => (10u64, 1800u64),
        Channel::Remote => (60, 3600),
    };
    let n = attempts.max(1) - 1;
    base.saturating_mul(1u64 << n.min(20)).min(cap)
}

/// When to try again after the `attempts`-th failure, which happened at `failed_at`.
pub fn next_retry(failed_at: u64, attempts: u32, channel: Channel) -> u64 {
    failed_at + backoff(channel, attempts)
}

/// The retry schedule: (due, message, recipient index), earliest first.
#[derive(Default)]
pub struct Schedule {
    set: BTreeSet<(u64, MsgId, usize)>,
}

impl Schedule {
    pub fn add(&mut self, m: &mut Msg, idx: usize, due: u64) {
        if let Some(r) = m.rcpts.get_mut(idx) {
            if let Some(old) = r.due.take() {
                self.set.remove(&(old, m.id, idx));
            }
            r.due = Some(due);
            self.set.insert((due, m.id, idx));
        }
    }
    pub fn remove(&mut self, m: &mut Msg, idx: usize) {
        if let Some(r) = m.rcpts.get_mut(idx)
            && let Some(old) = r.due.take()
        {
            self.set.remove(&(old, m.id, idx));
        }
    }
    pub fn first_due(&self) -> Option<u64> {
        self.set.iter().next().map(|e| e.0)
    }
    /// Takes every entry due at or before `now`, earliest first.
    pub fn take_due(&mut self, now: u64) -> Vec<(MsgId, usize)> {
        let mut out = Vec::new();
        while let Some(&(due, id, idx)) = self.set.first() {
            if due > now {
                break;
            }
            self.set.remove(&(due, id, idx));
            out.push((id, idx));
        }
        out
    }
    pub fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(0, "recipient"), "0 recipients");
        assert_eq!(plural(2, "delivery"), "2 deliveries");
        assert_eq!(plural(1, "delivery"), "1 delivery");
    }

    #[test]
    fn retry_grows() {
        let t = 1_000_000;
        assert_eq!(next_retry(t, 1, Channel::Local), t + 10);
        assert_eq!(next_retry(t, 2, Channel::Local), t + 20);
        assert_eq!(next_retry(t, 3, Channel::Remote), t + 240);
        assert_eq!(next_retry(t, 40, Channel::Remote), t + 3600);
        assert_eq!(next_retry(t, 40, Channel::Local), t + 1800);
    }
}
