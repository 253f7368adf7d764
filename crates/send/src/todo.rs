//! Taking new messages from todo/: read the envelope, expand aliases, decide local or remote
//! for each recipient, write info/XX/ID, make the batch durable with one sync, then ask clean
//! to move each message into mess/. Deliveries start when clean confirms the move.

use crate::recover::secs;
use crate::sched::{Scheduler, TODO_BATCH};
use crate::state::Msg;
use ferry_common::id::MsgId;
use ferry_common::info::{self, Channel};
use ferry_common::queue::QueueFile;
use ferry_common::record::Record;
use ferry_common::route::{Dest, Resolved, Router, SystemAccounts};
use ferry_common::users::Mode;
use ferry_common::{addr, date, durable, log};
use std::collections::HashSet;
use std::fs::File;
use std::io;

/// Deepest alias chain followed.
const MAX_ALIAS_DEPTH: usize = 10;

impl Scheduler {
    pub fn router(&self) -> Router<'_, SystemAccounts> {
        let only_uid = (Mode::of_root(&self.root) == Mode::SingleUser).then(|| ferry_sys::uids().0);
        Router { cfg: &self.cfg, mail_dir: self.root.mail(), accounts: SystemAccounts { only_uid } }
    }

    /// Takes up to TODO_BATCH new messages. Returns true if todo/ has more.
    pub fn take_todo(&mut self) -> io::Result<bool> {
        let mut ids = Vec::new();
        let mut more = false;
        for entry in std::fs::read_dir(self.queue.todo_dir())? {
            let Some(id) = entry?.file_name().to_str().and_then(MsgId::parse) else { continue };
            if self.taking.contains_key(&id) || self.msgs.contains_key(&id) || self.broken.contains(&id) {
                continue;
            }
            if ids.len() == TODO_BATCH {
                more = true;
                break;
            }
            ids.push(id);
        }
        let mut taken: Vec<(MsgId, File, info::Info)> = Vec::new();
        for id in ids {
            match self.take_one(id) {
                Ok(Some(t)) => taken.push(t),
                Ok(None) => {}
                Err(e) => {
                    log!("{id}: cannot take todo/{id}: {e}; it stays there");
                    self.broken.insert(id);
                }
            }
        }
        if taken.is_empty() {
            return Ok(more);
        }
        let files: Vec<&File> = taken.iter().map(|t| &t.1).collect();
        durable::sync_all(&files, &[])?;
        for (id, f, i) in taken {
            log!(
                "{id}: new message from <{}>, {} recipient{}",
                i.sender,
                i.rcpts.len(),
                if i.rcpts.len() == 1 { "" } else { "s" }
            );
            self.taking.insert(id, Msg::from_info(id, f, i));
            self.clean.send(&Record::new(b'M').with(id.to_string()));
        }
        Ok(more)
    }

    fn take_one(&mut self, id: MsgId) -> io::Result<Option<(MsgId, File, info::Info)>> {
        let qf = match QueueFile::open(&self.queue.todo(&id)) {
            Ok(q) => q,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let env = qf.envelope()?;
        let birth = qf.file.metadata()?.modified().ok().map(secs).unwrap_or_else(date::now_secs);
        let rcpts = self.classify(&env.recipients);
        let path = self.queue.info(&id);
        let bytes = info::encode(birth, &env.sender, &rcpts);
        let f = info::create(&path, &bytes)?;
        let parsed = info::parse(&bytes)?;
        Ok(Some((id, f, parsed)))
    }

    /// Expands aliases and decides the channel of each recipient; duplicates go.
    pub fn classify(&self, rcpts: &[String]) -> Vec<(String, Channel)> {
        let router = self.router();
        let mut out: Vec<(String, Channel)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack: Vec<(String, usize)> = rcpts.iter().rev().map(|r| (addr::normalize(r), 0)).collect();
        let mut expanded: HashSet<String> = HashSet::new();
        while let Some((a, depth)) = stack.pop() {
            let (_, domain) = addr::split(&a);
            let domain = domain.to_string();
            if self.cfg.is_ours(&domain) {
                if let Resolved::Deliver(Dest::Alias(targets)) = router.resolve(&a)
                    && depth < MAX_ALIAS_DEPTH
                    && expanded.insert(a.to_lowercase())
                {
                    for t in targets.into_iter().rev() {
                        stack.push((addr::normalize(&t), depth + 1));
                    }
                    continue;
                }
                if seen.insert(a.to_lowercase()) {
                    out.push((a, Channel::Local));
                }
            } else if seen.insert(a.to_lowercase()) {
                out.push((a, Channel::Remote));
            }
        }
        out
    }

    /// clean's answer to `M id` (moved into mess/) or `D id` (deleted).
    pub fn clean_reply(&mut self, r: Record) {
        let Ok(id) = r.str(0).map(|s| MsgId::parse(s)) else { return };
        let Some(id) = id else { return };
        let status = r.str(1).unwrap_or("?").to_string();
        if r.kind != b'm' {
            return;
        }
        let Some(m) = self.taking.remove(&id) else { return };
        if status != "ok" && !self.queue.mess(&id).exists() {
            log!("{id}: clean could not move it into mess/ ({status}); taking it again later");
            let _ = std::fs::remove_file(self.queue.info(&id));
            return;
        }
        self.msgs.insert(id, m);
        self.schedule_pending(id, Some(date::now_secs()));
    }
}
