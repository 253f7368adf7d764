//! send's in-memory picture of the queue: one [`Msg`] per message being delivered, rebuilt
//! from `info/` at start, and the retry schedule.

use ferry_common::id::MsgId;
use ferry_common::info::{self, Channel, State};
use std::collections::BTreeSet;
use std::fs::File;

pub struct Rcpt {
    pub addr: String,
    pub channel: Channel,
    pub state: State,
    pub record: info::Rcpt,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub failure: Option<String>,
    /// When it is due (unix seconds), while it sits in the schedule.
    pub due: Option<u64>,
    /// Due and waiting in a ready list for a free delivery slot.
    pub ready: bool,
    /// A delivery of it is running.
    pub busy: bool,
}

pub struct Msg {
    pub id: MsgId,
    pub info: File,
    pub birth: u64,
    pub sender: String,
    pub hold: bool,
    pub rcpts: Vec<Rcpt>,
    /// `ferryctl queue delete`: finish without a bounce once no delivery runs.
    pub deleting: bool,
    /// The bounce could not be queued: try to finish again at this time.
    pub finish_retry: Option<u64>,
}

impl Msg {
    pub fn from_info(id: MsgId, file: File, i: info::Info) -> Msg {
        let rcpts = i
            .rcpts
            .into_iter()
            .map(|r| Rcpt {
                addr: r.addr.clone(),
                channel: r.channel,
                state: r.state,
                attempts: r.attempts,
                last_error: r.last_error.as_ref().map(|e| e.1.clone()),
                failure: r.failure.clone(),
                due: None,
                ready: false,
                busy: false,
                record: r,
            })
            .collect();
        Msg { id, info: file, birth: i.birth, sender: i.sender, hold: i.hold, rcpts, deleting: false, finish_retry: None }
    }

    pub fn pending(&self) -> usize {
        self.rcpts.iter().filter(|r| r.state == State::Pending).count()
    }
    pub fn busy(&self) -> usize {
        self.rcpts.iter().filter(|r| r.busy).count()
    }
    /// Every recipient has its final state and nothing runs.
    pub fn complete(&self) -> bool {
        self.busy() == 0 && (self.deleting || self.pending() == 0)
    }
}

/// Retry base in seconds per channel: attempts at birth + base·k² (k = 1, 2, 3, ...), so the
/// interval grows with the age of the message (qmail's schedule): local 10 s, 40 s, 90 s, ...;
/// remote 60 s, 4 min, 9 min, ..., about every 75 minutes after a day.
pub fn base(channel: Channel) -> u64 {
    match channel {
        Channel::Local => 10,
        Channel::Remote => 60,
    }
}

/// The next attempt after a failure at `now` for a message born at `birth`.
pub fn next_retry(birth: u64, now: u64, channel: Channel) -> u64 {
    let b = base(channel);
    let age = now.saturating_sub(birth);
    let k = (age / b).isqrt() + 1;
    let mut t = birth + b * k * k;
    if t <= now {
        t = now + 1;
    }
    t
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
    /// Takes every entry due at or before `now`, earliest first (at most `max`).
    pub fn take_due(&mut self, now: u64, max: usize) -> Vec<(MsgId, usize)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.set.first() {
                Some(&(due, id, idx)) if due <= now => {
                    self.set.remove(&(due, id, idx));
                    out.push((id, idx));
                }
                _ => break,
            }
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
    fn retry_grows() {
        let b = 1_000_000;
        assert_eq!(next_retry(b, b, Channel::Local), b + 10);
        assert_eq!(next_retry(b, b + 10, Channel::Local), b + 40);
        assert_eq!(next_retry(b, b + 45, Channel::Local), b + 90);
        let day = 86_400;
        let gap = next_retry(b, b + day, Channel::Remote) - (b + day);
        assert!(gap > 3000 && gap < 5000, "{gap}");
    }
}
