//! The delivery reports send queues for a message's sender (crate::bounce builds them): the
//! final one when the message is finished, and one delay warning for a message still being
//! retried after `delaywarningtime`.

use crate::bounce::{self, Action};
use crate::sched::Scheduler;
use crate::state::{self, Msg};
use ferry_common::envelope::{DSN_PASSED_ON, Envelope, Ret};
use ferry_common::id::MsgId;
use ferry_common::info::{self, Channel, State};
use ferry_common::queue::QueueFile;
use ferry_common::{date, inject, log};
use std::collections::HashMap;
use std::io::Read;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Every recipient has its final state.
    Final,
    /// The recipients still pending, whose senders want to hear of a delay.
    Delay,
}

impl Scheduler {
    /// The report of a finished message, from its recipients' states and the DSN parameters
    /// in its envelope (each recipient's own, or those of the envelope recipient an alias
    /// expanded it from).
    pub fn send_report(&self, m: &Msg) -> std::io::Result<()> {
        self.report(m, Kind::Final)
    }

    /// Warns the senders of the messages deferred past `delaywarningtime` this turn, once per
    /// message: the warning is queued, then noted in info/ (synced with this turn's results),
    /// so a crash between the two may repeat it but never loses it. A message that cannot be
    /// warned now (clean is moving it, or queueing failed) is tried at its next deferral.
    pub fn send_delay_warnings(&mut self) {
        let now = date::now_secs();
        for id in std::mem::take(&mut self.warn) {
            let Some(m) = self.msgs.get(&id) else {
                continue;
            };
            if m.warned.is_some() || m.pending() == 0 || m.deleting {
                continue;
            }
            if m.moving {
                self.warn.insert(id);
                continue;
            }
            if let Err(e) = self.report(m, Kind::Delay) {
                log!("{id}: cannot queue the delay warning ({e}); trying at the next deferral");
                continue;
            }
            self.note_warned(id, now);
        }
    }

    fn note_warned(&mut self, id: MsgId, now: u64) {
        let Some(m) = self.msgs.get_mut(&id) else {
            return;
        };
        m.warned = Some(now);
        if let Some(f) = &m.info {
            if let Err(e) = info::append_warned(f, now) {
                log!("{id}: cannot note the delay warning in info: {e}");
            }
            self.dirty.insert(id);
        }
    }

    fn report(&self, m: &Msg, kind: Kind) -> std::io::Result<()> {
        let path = if m.loc == state::Loc::Mess {
            self.queue.mess(&m.id)
        } else {
            self.queue.todo(&m.id)
        };
        let qf = QueueFile::open(&path);
        let env = qf
            .as_ref()
            .ok()
            .and_then(|q| q.envelope().ok())
            .unwrap_or_default();
        let entries = entries(m, &env, kind);
        if entries.is_empty() {
            return Ok(());
        }
        let failed = entries.iter().any(|e| e.action == Action::Failed);
        let full = match &qf {
            Ok(q)
                // A REQUIRETLS message's report returns its header only (RFC 8689 §5).
                if failed
                    && !env.requiretls
                    && env.dsn.ret == Some(Ret::Full)
                    && q.message_len as usize <= bounce::MAX_RETURNED =>
            {
                let mut v = Vec::new();
                q.message_reader_ref().read_to_end(&mut v).map(|_| v).ok()
            }
            _ => None,
        };
        let header = qf
            .as_ref()
            .ok()
            .and_then(|q| q.read_head(64 * 1024).ok())
            .unwrap_or_default();
        let original = match &full {
            Some(v) => bounce::Original::Full(v),
            None => bounce::Original::Header(&header),
        };
        let Some(mut b) = bounce::build(
            &self.cfg,
            &m.id.to_string(),
            &m.sender,
            m.birth,
            env.dsn.envid.as_deref(),
            &entries,
            original,
        ) else {
            if failed {
                log!("{}: a double bounce failed; dropped", m.id);
            }
            return Ok(());
        };
        // The report of a REQUIRETLS message asks the same of its own way back (RFC 8689 §5).
        b.envelope.requiretls = env.requiretls;
        let r = inject::run_queue(&self.root, &mut b.message.as_slice(), &b.envelope)?;
        if r.code == 0 {
            let what = match kind {
                Kind::Delay => "delay warning",
                Kind::Final if failed => "bounce",
                Kind::Final => "success report",
            };
            log!("{}: {what} to <{}> queued", m.id, b.envelope.recipients[0]);
            Ok(())
        } else {
            Err(std::io::Error::other(r.reason()))
        }
    }
}

/// The recipients a report of `kind` covers, as their senders asked (NOTIFY).
fn entries(m: &Msg, env: &Envelope, kind: Kind) -> Vec<bounce::Entry> {
    // Each envelope recipient's index, looked up once (an envelope may hold 100,000).
    let index: HashMap<&str, usize> = env
        .recipients
        .iter()
        .enumerate()
        .map(|(i, e)| (e.as_str(), i))
        .collect();
    let mut entries = Vec::new();
    for r in &m.rcpts {
        let key = r.orig.as_deref().unwrap_or(&r.addr);
        let dsn = index.get(key).map(|&i| env.dsn.rcpt(i)).unwrap_or_default();
        let wants = dsn.wants();
        let action = match (kind, r.state, r.channel) {
            (Kind::Delay, State::Pending, _) if wants.delay => Action::Delayed,
            (Kind::Delay, _, _) => continue,
            (Kind::Final, State::Failed, _) if wants.failure => Action::Failed,
            (Kind::Final, State::Delivered, Channel::Local) if wants.success => Action::Delivered,
            // A server that took the DSN parameters reports itself.
            (Kind::Final, State::Delivered, Channel::Remote)
                if wants.success
                    && !r
                        .last_result
                        .as_deref()
                        .is_some_and(|t| t.ends_with(DSN_PASSED_ON)) =>
            {
                Action::Relayed
            }
            _ => continue,
        };
        let text = match action {
            Action::Failed => r
                .failure
                .as_ref()
                .map(|f| f.1.clone())
                .unwrap_or_else(|| "failed".into()),
            Action::Delayed => r
                .last_error
                .as_ref()
                .map(|e| e.1.clone())
                .unwrap_or_else(|| "still being retried".into()),
            _ => r.last_result.clone().unwrap_or_default(),
        };
        entries.push(bounce::Entry {
            addr: r.addr.clone(),
            action,
            text,
            orcpt: dsn.orcpt,
        });
    }
    entries
}
