//! Running deliveries and acting on their results.

use crate::sched::{Job, Scheduler};
use crate::state;
use ferry_common::id::MsgId;
use ferry_common::info::{self, Channel, State};
use ferry_common::record::Record;
use ferry_common::route::{Dest, Resolved};
use ferry_common::{addr, date, durable, log, status};
use std::fs::File;

/// Most recipients in one remote job (one SMTP transaction).
const MAX_RCPTS_PER_JOB: usize = 100;

impl Scheduler {
    /// Moves due recipients into the ready lists and starts deliveries while slots are free.
    pub fn dispatch(&mut self) {
        let now = date::now_secs();
        for (id, idx) in self.schedule.take_due(now) {
            let Some(m) = self.msgs.get_mut(&id) else {
                continue;
            };
            let Some(r) = m.rcpts.get_mut(idx) else {
                continue;
            };
            r.due = None;
            if r.state != State::Pending || r.busy || r.ready || m.hold || m.deleting {
                continue;
            }
            r.ready = true;
            match r.channel {
                Channel::Local => self.ready_local.push_back((id, idx)),
                Channel::Remote => self.ready_remote.push_back((id, idx)),
            }
        }
        self.unblock_users();
        while self.local_busy < self.cfg.concurrencylocal as usize {
            let Some((id, idx)) = self.ready_local.pop_front() else {
                break;
            };
            self.start_local(id, idx);
        }
        let mut waiting = Vec::new();
        while self.remote_busy < self.cfg.concurrencyremote as usize {
            let Some((id, idx)) = self.ready_remote.pop_front() else {
                break;
            };
            if !self.start_remote(id, idx) {
                waiting.push((id, idx));
            }
        }
        // Recipients whose domain is at its limit wait, in order, for the next turn.
        for e in waiting.into_iter().rev() {
            self.ready_remote.push_front(e);
        }
    }

    /// Takes a ready entry if it is still to be delivered now. A message being moved into
    /// mess/ waits: its entry is scheduled again for the next second.
    /// Would [`claim`](Self::claim) take it? (It changes nothing.)
    fn claimable(&self, id: MsgId, idx: usize) -> bool {
        self.msgs.get(&id).is_some_and(|m| {
            m.rcpts.get(idx).is_some_and(|r| {
                r.ready && r.state == State::Pending && !r.busy && !m.hold && !m.deleting
            })
        })
    }

    fn claim(&mut self, id: MsgId, idx: usize) -> bool {
        let Some(m) = self.msgs.get_mut(&id) else {
            return false;
        };
        let Some(r) = m.rcpts.get_mut(idx) else {
            return false;
        };
        let ok = r.ready && r.state == State::Pending && !r.busy && !m.hold && !m.deleting;
        r.ready = false;
        if ok && m.moving {
            self.schedule.add(m, idx, date::now_secs() + 1);
            return false;
        }
        ok
    }

    fn start_local(&mut self, id: MsgId, idx: usize) {
        if !self.claimable(id, idx) {
            return;
        }
        let Some(m) = self.msgs.get(&id) else { return };
        let rcpt = m.rcpts[idx].addr.clone();
        let orig = m.rcpts[idx].orig.clone().unwrap_or_default();
        let (sender, loc) = (m.sender.clone(), m.loc);
        let (local, domain) = addr::split(&rcpt);
        let (local, domain) = (addr::unquote_local(local), domain.to_lowercase());
        let (kind, name, ext) = match self.router().resolve(&rcpt) {
            Resolved::Deliver(Dest::User { user, ext }) => ("U", user, ext),
            Resolved::Deliver(Dest::Mailbox { name, ext }) => ("M", name, ext),
            Resolved::Deliver(Dest::Remote) => {
                // The configuration changed since the message came: deliver it remotely.
                if let Some(m) = self.msgs.get_mut(&id) {
                    m.rcpts[idx].channel = Channel::Remote;
                    m.rcpts[idx].ready = true;
                }
                self.ready_remote.push_back((id, idx));
                return;
            }
            Resolved::Deliver(Dest::Alias(_)) => {
                if !self.claim(id, idx) {
                    return;
                }
                self.record_result(
                    id,
                    idx,
                    100,
                    "5.4.6 alias loop: the address expands to itself",
                );
                return;
            }
            Resolved::Unknown(why) => {
                if !self.claim(id, idx) {
                    return;
                }
                self.record_result(id, idx, 100, &format!("5.1.1 <{rcpt}>: {why}"));
                return;
            }
        };
        // A user (or mailbox) takes one of the concurrencylocal slots, however many of its
        // deliveries run: its worker does them in batches, one commit for all of a batch.
        // It gets at most concurrencyuser deliveries at once; the rest of theirs waits.
        let user = format!("{kind} {name}");
        let busy = self.local_by_user.get(&user).copied().unwrap_or(0);
        if busy >= self.cfg.concurrencyuser as usize {
            self.blocked_local
                .entry(user)
                .or_default()
                .push_back((id, idx));
            return;
        }
        if !self.claim(id, idx) {
            return;
        }
        let jobs = self.local_by_user.entry(user.clone()).or_insert(0);
        if *jobs == 0 {
            self.local_busy += 1;
        }
        *jobs += 1;
        let job = self.new_job(Job {
            msg: id,
            rcpts: vec![idx],
            channel: Channel::Local,
            domain: domain.clone(),
            user: Some(user),
        });
        let rec = Record::new(b'D')
            .with_u64(job)
            .with(id.to_string())
            .with(loc.code())
            .with(kind)
            .with(name)
            .with(ext)
            .with(sender)
            .with(&rcpt)
            .with(local)
            .with(domain)
            .with(orig);
        self.lspawn.send(&rec);
    }

    /// Starts a remote job with this recipient and every other ready one of the same message
    /// and domain. False if the domain is at its concurrency limit (the entry is kept).
    fn start_remote(&mut self, id: MsgId, idx: usize) -> bool {
        let Some(m) = self.msgs.get(&id) else {
            return true;
        };
        let Some(r) = m.rcpts.get(idx) else {
            return true;
        };
        let domain = addr::split(&r.addr).1.to_lowercase();
        let busy = self.remote_by_domain.get(&domain).copied().unwrap_or(0);
        if busy >= self.cfg.concurrencydomain as usize && r.ready {
            return false;
        }
        if !self.claim(id, idx) {
            return true;
        }
        let Some(m) = self.msgs.get_mut(&id) else {
            return true;
        };
        // Recipients an alias forwards to leave with an SRS sender, so in jobs of their own.
        let forwarded = m.rcpts[idx].orig.is_some();
        let mut idxs = vec![idx];
        for (i, other) in m.rcpts.iter_mut().enumerate() {
            if i != idx
                && idxs.len() < MAX_RCPTS_PER_JOB
                && other.ready
                && other.state == State::Pending
                && !other.busy
                && other.orig.is_some() == forwarded
                && addr::split(&other.addr).1.eq_ignore_ascii_case(&domain)
            {
                other.ready = false;
                idxs.push(i);
            }
        }
        let sender = if forwarded {
            self.cfg.forward_sender(&m.sender)
        } else {
            m.sender.clone()
        };
        let mut rec = Record::new(b'D')
            .with_u64(0)
            .with(id.to_string())
            .with(m.loc.code())
            .with(&sender)
            .with(&domain);
        for i in &idxs {
            rec.push(&m.rcpts[*i].addr);
        }
        let job = self.new_job(Job {
            msg: id,
            rcpts: idxs,
            channel: Channel::Remote,
            domain: domain.clone(),
            user: None,
        });
        rec.fields[0] = job.to_string().into_bytes();
        self.rspawn.send(&rec);
        self.remote_busy += 1;
        *self.remote_by_domain.entry(domain).or_insert(0) += 1;
        true
    }

    fn new_job(&mut self, job: Job) -> u64 {
        let n = self.next_job;
        self.next_job += 1;
        if let Some(m) = self.msgs.get_mut(&job.msg) {
            for i in &job.rcpts {
                m.rcpts[*i].busy = true;
            }
        }
        self.jobs.insert(n, job);
        n
    }

    /// `R job status text [status text]...` from lspawn or rspawn.
    pub fn job_result(&mut self, r: Record) {
        let Ok(n) = r.u64(0) else { return };
        let Some(job) = self.jobs.remove(&n) else {
            log!("result for unknown job {n}");
            return;
        };
        match job.channel {
            Channel::Local => {
                if let Some(u) = &job.user {
                    self.user_done(u);
                }
            }
            Channel::Remote => {
                self.remote_busy = self.remote_busy.saturating_sub(1);
                if let Some(c) = self.remote_by_domain.get_mut(&job.domain) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        self.remote_by_domain.remove(&job.domain);
                    }
                }
            }
        }
        for (k, idx) in job.rcpts.iter().enumerate() {
            let code = r
                .str(1 + 2 * k)
                .ok()
                .and_then(|c| c.parse::<i32>().ok())
                .unwrap_or(111);
            let text = r
                .str(2 + 2 * k)
                .unwrap_or("no result for this recipient")
                .to_string();
            if let Some(m) = self.msgs.get_mut(&job.msg)
                && let Some(rc) = m.rcpts.get_mut(*idx)
            {
                rc.busy = false;
            }
            self.record_result(job.msg, *idx, code, &text);
        }
    }

    /// A local job of `user` ended: one of their waiting recipients may go now.
    fn user_done(&mut self, user: &str) {
        if let Some(c) = self.local_by_user.get_mut(user) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.local_by_user.remove(user);
                self.local_busy = self.local_busy.saturating_sub(1);
            }
        }
    }

    /// Recipients waiting for their user's slots go back to the ready list, as many as that
    /// user has free slots.
    fn unblock_users(&mut self) {
        let limit = self.cfg.concurrencyuser as usize;
        let free: Vec<(String, usize)> = self
            .blocked_local
            .keys()
            .filter_map(|u| {
                let busy = self.local_by_user.get(u).copied().unwrap_or(0);
                (busy < limit).then(|| (u.clone(), limit - busy))
            })
            .collect();
        for (u, n) in free {
            if let Some(q) = self.blocked_local.get_mut(&u) {
                let take = n.min(q.len());
                for e in q.drain(..take).rev() {
                    self.ready_local.push_front(e);
                }
                if q.is_empty() {
                    self.blocked_local.remove(&u);
                }
            }
        }
    }

    /// Records a delivery result: in memory, and in info/ when the message is persisted (synced
    /// at the end of this turn, before anything depends on it).
    pub fn record_result(&mut self, id: MsgId, idx: usize, code: i32, text: &str) {
        let now = date::now_secs();
        let lifetime = self.cfg.queuelifetime;
        let Some(m) = self.msgs.get_mut(&id) else {
            return;
        };
        let Some(rc) = m.rcpts.get(idx) else { return };
        let expired = now.saturating_sub(m.birth) >= lifetime;
        let expired_text;
        let (state, text) = match status::Outcome::from_code(code) {
            status::Outcome::Ok => (State::Delivered, text),
            status::Outcome::Permanent => (State::Failed, text),
            status::Outcome::Temporary if expired => {
                expired_text = format!(
                    "4.4.7 message expired after {} days in the queue; last error: {text}",
                    lifetime / 86_400
                );
                (State::Failed, expired_text.as_str())
            }
            status::Outcome::Temporary => (State::Pending, text),
        };
        let word = match state {
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Pending => "deferred",
        };
        log!("{id}: <{}> {word}: {text}", rc.addr);
        if let (Some(f), Some(rec)) = (&m.info, &rc.record) {
            let written = match state {
                State::Delivered => info::mark(f, rec, State::Delivered),
                State::Failed => info::append_note(f, true, idx, now, text)
                    .and_then(|_| info::mark(f, rec, State::Failed)),
                State::Pending => info::append_note(f, false, idx, now, text),
            };
            if let Err(e) = written {
                // The result could not be recorded: the delivery will be repeated.
                log!("{id}: cannot record the result in info: {e}");
                if !m.hold {
                    self.schedule.add(m, idx, now + 60);
                }
                self.touched.insert(id);
                return;
            }
            self.dirty.insert(id);
        }
        let asks_success = m.asks_success;
        let warn_at = self.cfg.delaywarningtime;
        if state == State::Pending
            && warn_at > 0
            && m.warned.is_none()
            && now.saturating_sub(m.birth) >= warn_at
        {
            self.warn.insert(id);
        }
        let rc = &mut m.rcpts[idx];
        rc.state = state;
        match state {
            State::Failed => rc.failure = Some((now, text.to_string())),
            State::Pending => {
                rc.attempts += 1;
                rc.last_error = Some((now, text.to_string()));
                let next = state::next_retry(now, rc.attempts, rc.channel);
                // One last attempt at the end of the lifetime, then bounce.
                let next = next.min(m.birth + lifetime).max(now + 1);
                if !m.hold && !m.deleting {
                    self.schedule.add(m, idx, next);
                }
                if m.info.is_none() {
                    m.persist = true;
                }
            }
            State::Delivered if asks_success => rc.last_result = Some(text.to_string()),
            State::Delivered => {}
        }
        self.touched.insert(id);
    }

    /// End of a turn: sync the info files changed in it (once for all), then finish the
    /// messages that are complete and persist the ones that must be.
    pub fn settle(&mut self) {
        if !self.warn.is_empty() {
            self.send_delay_warnings();
        }
        if !self.dirty.is_empty() {
            let ids: Vec<MsgId> = self.dirty.drain().collect();
            let files: Vec<&File> = ids
                .iter()
                .filter_map(|id| self.msgs.get(id).and_then(|m| m.info.as_ref()))
                .collect();
            if let Err(e) = durable::sync_all(&files, &[]) {
                log!("cannot sync info files: {e}");
            }
        }
        let mut to_persist = Vec::new();
        for id in std::mem::take(&mut self.touched) {
            let Some(m) = self.msgs.get(&id) else {
                continue;
            };
            if m.complete() {
                self.finish(id);
            } else if m.persist && m.info.is_none() && m.busy() == 0 {
                to_persist.push(id);
            }
        }
        if !to_persist.is_empty() {
            self.persist(to_persist);
        }
    }

    /// A message whose recipients all have their final state: report what its sender asked
    /// for (failures, and successes with NOTIFY=SUCCESS: crate::bounce), then remove it.
    pub fn finish(&mut self, id: MsgId) {
        let Some(m) = self.msgs.get(&id) else { return };
        let reportable = m.asks_success || m.rcpts.iter().any(|r| r.state == State::Failed);
        if !m.deleting
            && reportable
            && let Err(e) = self.send_report(m)
        {
            log!("{id}: cannot queue the delivery report ({e}); trying again in a minute");
            let when = date::now_secs() + 60;
            self.finish_later.insert((when, id));
            if let Some(m) = self.msgs.get_mut(&id) {
                m.finish_retry = Some(when);
            }
            return;
        }
        if self.msgs.get(&id).is_some_and(|m| m.info.is_some()) {
            let _ = std::fs::remove_file(self.queue.info(&id));
        }
        self.clean.send(&Record::new(b'D').with(id.to_string()));
        self.finishing.insert(id);
        self.msgs.remove(&id);
        log!("{id}: done");
    }

    pub fn retry_finishes(&mut self) {
        let now = date::now_secs();
        while let Some(&(when, id)) = self.finish_later.first() {
            if when > now {
                break;
            }
            self.finish_later.pop_first();
            if self
                .msgs
                .get(&id)
                .is_some_and(|m| m.finish_retry == Some(when))
            {
                self.finish(id);
            }
        }
    }

    /// Every pending recipient is due now (ferryctl flush, SIGALRM).
    pub fn flush_all(&mut self) -> usize {
        let ids: Vec<MsgId> = self.msgs.keys().copied().collect();
        let now = date::now_secs();
        for id in ids {
            self.schedule_pending(id, Some(now));
        }
        log!(
            "flush: {} due now",
            state::plural(self.schedule.len(), "recipient")
        );
        self.schedule.len()
    }
}
