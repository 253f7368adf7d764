//! New messages, and persisting the ones that cannot be finished at once.
//!
//! Writers announce each committed message by writing its id into lock/trigger; send also
//! scans todo/ at start and every minute. Taking a message means reading its envelope,
//! expanding aliases and deciding local or remote for each recipient — in memory only: its
//! deliveries start right away from todo/ID. A message that gets a deferred recipient or a
//! hold is persisted: its state goes into info/XX/ID (written as ID.tmp, synced, renamed,
//! synced: always whole), then clean moves the message to mess/XX/ID.

use crate::sched::{MAX_ACTIVE, Scheduler, TODO_BATCH};
use crate::state::{Classified, Loc, Msg, plural};
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

/// Envelope recipients that were aliases, each with the addresses it came to.
pub type Aliases = Vec<(String, Vec<String>)>;

/// Most addresses of one expansion named in the log line (then "and N more").
const MAX_LOGGED_TARGETS: usize = 20;

/// `ann@d, bob@d` (the first 20, then `and N more`); `nobody` for an alias that came to
/// nothing (a loop).
fn expansion_text(to: &[String]) -> String {
    if to.is_empty() {
        return "nobody (an alias loop)".into();
    }
    let mut s = to
        .iter()
        .take(MAX_LOGGED_TARGETS)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if to.len() > MAX_LOGGED_TARGETS {
        s.push_str(&format!(" and {} more", to.len() - MAX_LOGGED_TARGETS));
    }
    s
}

impl Scheduler {
    pub fn router(&self) -> Router<'_, SystemAccounts> {
        let only_uid = (self.mode == Mode::SingleUser).then(|| ferry_sys::uids().0);
        Router {
            cfg: &self.cfg,
            mail_dir: self.root.mail(),
            accounts: SystemAccounts { only_uid },
        }
    }

    /// Reads what writers announced on the trigger FIFO: message ids, one per line.
    pub fn read_trigger(&mut self, data: &[u8]) {
        for line in data.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match std::str::from_utf8(line).ok().and_then(MsgId::parse) {
                Some(id) => self.announce(id),
                // Not an id (a lone byte, or a line cut by a full FIFO): look at todo/ itself.
                None => self.scan_todo = true,
            }
        }
    }

    fn announce(&mut self, id: MsgId) {
        if !self.msgs.contains_key(&id)
            && !self.broken.contains(&id)
            && !self.finishing.contains(&id)
            && self.new_set.insert(id)
        {
            self.new_ids.push_back(id);
        }
    }

    /// Lists todo/ for messages nobody announced (send was down, the FIFO was full).
    pub fn scan(&mut self) -> io::Result<()> {
        for entry in std::fs::read_dir(self.queue.todo_dir())? {
            if let Some(id) = entry?.file_name().to_str().and_then(MsgId::parse) {
                self.announce(id);
            }
        }
        Ok(())
    }

    /// Takes up to TODO_BATCH announced messages (fewer when MAX_ACTIVE are in hand).
    pub fn take_new(&mut self) {
        let now = date::now_secs();
        let mut n = 0;
        while n < TODO_BATCH && self.msgs.len() < MAX_ACTIVE {
            let Some(id) = self.new_ids.pop_front() else {
                break;
            };
            self.new_set.remove(&id);
            if self.msgs.contains_key(&id) || self.finishing.contains(&id) {
                continue;
            }
            match self.take_one(id) {
                Ok(Some((m, aliases))) => {
                    log!(
                        "{id}: new message from <{}>, {}",
                        m.sender,
                        plural(m.rcpts.len(), "recipient")
                    );
                    for (orig, to) in aliases {
                        log!("{id}: <{orig}> → {}", expansion_text(&to));
                    }
                    self.msgs.insert(id, m);
                    self.schedule_pending(id, Some(now));
                    n += 1;
                }
                Ok(None) => {}
                Err(_) if std::fs::metadata(self.queue.todo(&id)).is_ok_and(|m| m.len() == 0) => {
                    // No writer links an empty file: this is a finished message's file that
                    // clean emptied for the pool, its old name brought back by a crash.
                    log!("{id}: todo/{id} is empty (a finished message's recycled file); removed");
                    self.finishing.insert(id);
                    self.clean.send(&Record::new(b'D').with(id.to_string()));
                }
                Err(e) => {
                    log!("{id}: cannot take todo/{id}: {e}; it stays there");
                    self.broken.insert(id);
                }
            }
        }
    }

    fn take_one(&mut self, id: MsgId) -> io::Result<Option<(Msg, Aliases)>> {
        let qf = match QueueFile::open(&self.queue.todo(&id)) {
            Ok(q) => q,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let env = qf.envelope()?;
        let birth = qf.birth();
        let (rcpts, aliases) = self.expand(&env.recipients);
        let asks_success = env.dsn.rcpts.iter().any(|d| d.wants().success);
        if env.requiretls {
            log!(
                "{id}: REQUIRETLS: it goes on only over verified TLS, to servers that offer REQUIRETLS"
            );
        }
        let mut m = Msg::new(id, birth, env.sender, rcpts);
        m.asks_success = asks_success;
        Ok(Some((m, aliases)))
    }

    /// Expands aliases and decides the channel of each recipient; duplicates go.
    pub fn classify(&self, rcpts: &[String]) -> Vec<Classified> {
        self.expand(rcpts).0
    }

    /// [`classify`](Self::classify), and each envelope recipient that was an alias with the
    /// addresses it came to (for the log), in envelope order.
    pub fn expand(&self, rcpts: &[String]) -> (Vec<Classified>, Aliases) {
        let router = self.router();
        let mut out: Vec<Classified> = Vec::new();
        let mut aliases: Aliases = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // (address, depth, index into `aliases` of the envelope recipient it came from)
        let mut stack: Vec<(String, usize, Option<usize>)> = rcpts
            .iter()
            .rev()
            .map(|r| (addr::normalize(r), 0, None))
            .collect();
        let mut expanded: HashSet<String> = HashSet::new();
        while let Some((a, depth, from)) = stack.pop() {
            let domain = addr::split(&a).1.to_string();
            let channel = if self.cfg.is_ours(&domain) {
                if let Resolved::Deliver(Dest::Alias(targets)) = router.resolve(&a)
                    && depth < MAX_ALIAS_DEPTH
                    && expanded.insert(a.to_lowercase())
                {
                    let from = from.or_else(|| {
                        aliases.push((a.clone(), Vec::new()));
                        Some(aliases.len() - 1)
                    });
                    for t in targets.into_iter().rev() {
                        stack.push((addr::normalize(&t), depth + 1, from));
                    }
                    continue;
                }
                Channel::Local
            } else {
                Channel::Remote
            };
            let orig = from.and_then(|i| aliases.get_mut(i)).map(|(o, to)| {
                if !to.iter().any(|t| t.eq_ignore_ascii_case(&a)) {
                    to.push(a.clone());
                }
                o.clone()
            });
            if seen.insert(a.to_lowercase()) {
                out.push(Classified {
                    addr: a,
                    channel,
                    orig,
                });
            }
        }
        (out, aliases)
    }

    /// Writes info/XX/ID for each of `ids` (as ID.tmp, one sync for all, renamed, one sync),
    /// then asks clean to move each message into mess/.
    pub fn persist(&mut self, ids: Vec<MsgId>) {
        let mut written: Vec<(MsgId, File)> = Vec::new();
        for id in ids {
            let Some(m) = self.msgs.get(&id) else {
                continue;
            };
            let tmp = self.queue.info(&id).with_extension("tmp");
            match info::create(&tmp, &m.encode_info()) {
                Ok(f) => written.push((id, f)),
                Err(e) => log!(
                    "{id}: cannot write {}: {e}; the message stays in todo/",
                    tmp.display()
                ),
            }
        }
        if written.is_empty() {
            return;
        }
        let files: Vec<&File> = written.iter().map(|w| &w.1).collect();
        if let Err(e) = durable::sync_all(&files, &[]) {
            log!("cannot sync info files: {e}");
            return;
        }
        let mut renamed = Vec::new();
        for (id, _) in written {
            let path = self.queue.info(&id);
            match std::fs::rename(path.with_extension("tmp"), &path) {
                Ok(()) => renamed.push(id),
                Err(e) => log!("{id}: cannot rename its info file: {e}"),
            }
        }
        if let Some(first) = renamed.first()
            && let Err(e) =
                std::fs::File::open(self.queue.info(first)).and_then(|f| durable::syncfs(&f))
        {
            log!("cannot sync info directories: {e}");
            return;
        }
        for id in renamed {
            let path = self.queue.info(&id);
            match info::read(&path) {
                Ok((f, i)) => {
                    if let Some(m) = self.msgs.get_mut(&id) {
                        m.persist = false;
                        for (r, rec) in m.rcpts.iter_mut().zip(i.rcpts) {
                            r.record = Some(rec);
                        }
                        m.info = Some(f);
                        if m.loc == Loc::Todo {
                            m.moving = true;
                            self.clean.send(&Record::new(b'M').with(id.to_string()));
                        }
                    }
                }
                Err(e) => log!("{id}: cannot reopen its info file: {e}"),
            }
        }
    }

    /// clean's answer to `M id` (moved into mess/) or `D id` (deleted).
    pub fn clean_reply(&mut self, r: Record) {
        let Some(id) = r.str(0).ok().and_then(MsgId::parse) else {
            return;
        };
        let status = r.str(1).unwrap_or("?").to_string();
        if r.kind == b'd' {
            // Only a confirmed removal lets the id be taken again (it is new then). A failed
            // one leaves the file for the next start of send (at-least-once), never for a
            // scan of this one, which would deliver the finished message again.
            if status == "ok" {
                self.finishing.remove(&id);
            } else {
                log!(
                    "{id}: clean could not remove it ({status}); it stays finished until send restarts"
                );
            }
            return;
        }
        if r.kind != b'm' {
            return;
        }
        let mess = self.queue.mess(&id).exists();
        if let Some(m) = self.msgs.get_mut(&id) {
            m.moving = false;
            if status == "ok" || mess {
                m.loc = Loc::Mess;
            } else {
                log!(
                    "{id}: clean could not move it into mess/ ({status}); it is delivered from todo/"
                );
            }
        }
        self.touched.insert(id);
    }
}
