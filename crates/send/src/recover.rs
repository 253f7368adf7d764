//! Recovery at start (docs/INTERNALS.md, "Crash states"): rebuild the picture from info/ and
//! todo/, finish what a crash interrupted, and remove what a crash left behind.
//!
//! - info/XX/ID.tmp: a persist that did not finish: removed (the message is still in todo/).
//! - info/XX/ID with mess/XX/ID: a persisted message: loaded, retried on its schedule.
//! - info/XX/ID with todo/ID: persisted, not yet moved: loaded, clean moves it.
//! - info/XX/ID alone: the message was being removed: the info goes too.
//! - mess/XX/ID alone: removed after its info: clean deletes it.
//! - todo/ID without info: taken again from the start (deliveries that had happened before the
//!   crash are repeated: at-least-once).

use crate::sched::Scheduler;
use crate::state::{Loc, Msg};
use ferry_common::id::{self, MsgId};
use ferry_common::info::{self, Channel, State};
use ferry_common::queue::QueueFile;
use ferry_common::record::Record;
use ferry_common::{date, log};
use std::collections::HashMap;
use std::io;

impl Scheduler {
    pub fn recover(&mut self) -> io::Result<()> {
        for split in id::splits() {
            let dir = self.queue.dir().join("info").join(&split);
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let Some(mid) = MsgId::parse(&name) else {
                    log!("stray file info/{split}/{name}: left alone");
                    continue;
                };
                let loc = if self.queue.mess(&mid).exists() {
                    Loc::Mess
                } else if self.queue.todo(&mid).exists() {
                    Loc::Todo
                } else {
                    log!("{mid}: removing info left by an interrupted removal");
                    let _ = std::fs::remove_file(&path);
                    continue;
                };
                let m = self.load(mid, &path, loc)?;
                self.msgs.insert(mid, m);
                if loc == Loc::Todo
                    && let Some(m) = self.msgs.get_mut(&mid)
                {
                    m.moving = true;
                    self.clean.send(&Record::new(b'M').with(mid.to_string()));
                }
                self.schedule_pending(mid, None);
            }
            let dir = self.queue.dir().join("mess").join(&split);
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if let Some(mid) = entry.file_name().to_str().and_then(MsgId::parse)
                    && !self.msgs.contains_key(&mid)
                {
                    log!("{mid}: removing a message whose delivery had finished");
                    self.clean.send(&Record::new(b'D').with(mid.to_string()));
                    self.finishing.insert(mid);
                }
            }
        }
        // Messages that were complete when send stopped are finished now.
        let done: Vec<MsgId> = self
            .msgs
            .iter()
            .filter(|(_, m)| m.complete())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.finish(id);
        }
        self.scan()
    }

    /// Reads info/XX/ID; if it is unreadable, rebuilds it from the message's envelope (all
    /// recipients pending: some may be delivered twice, none is lost).
    fn load(&mut self, mid: MsgId, path: &std::path::Path, loc: Loc) -> io::Result<Msg> {
        match info::read(path) {
            Ok((f, i)) => {
                let mut m = Msg::from_info(mid, f, loc, i);
                self.original_recipients(&mut m);
                Ok(m)
            }
            Err(e) => {
                log!("{mid}: info unreadable ({e}); rebuilding it from the envelope");
                let qpath = if loc == Loc::Mess {
                    self.queue.mess(&mid)
                } else {
                    self.queue.todo(&mid)
                };
                let qf = QueueFile::open(&qpath)?;
                let env = qf.envelope()?;
                let birth = qf.birth();
                let rcpts: Vec<(String, Channel)> = self
                    .classify(&env.recipients)
                    .into_iter()
                    .map(|c| (c.addr, c.channel))
                    .collect();
                let f = info::create(path, &info::encode(birth, &env.sender, &rcpts))?;
                f.sync_all()?;
                let (f, i) = info::read(path)?;
                let mut m = Msg::from_info(mid, f, loc, i);
                self.original_recipients(&mut m);
                Ok(m)
            }
        }
    }

    /// The envelope recipient each pending local recipient came from through aliases (for
    /// X-Original-To), which info/ does not keep: the envelope is expanded again. With the
    /// aliases changed since, a recipient the expansion does not reach gets none.
    fn original_recipients(&self, m: &mut Msg) {
        if !m
            .rcpts
            .iter()
            .any(|r| r.channel == Channel::Local && r.state == State::Pending)
        {
            return;
        }
        let path = match m.loc {
            Loc::Mess => self.queue.mess(&m.id),
            Loc::Todo => self.queue.todo(&m.id),
        };
        let Ok(env) = QueueFile::open(&path).and_then(|q| q.envelope()) else {
            return;
        };
        let origins: HashMap<String, String> = self
            .classify(&env.recipients)
            .into_iter()
            .filter_map(|c| c.orig.map(|o| (c.addr.to_lowercase(), o)))
            .collect();
        for r in &mut m.rcpts {
            r.orig = origins.get(&r.addr.to_lowercase()).cloned();
        }
    }

    /// Puts every pending recipient of a message that is not held into the schedule: at
    /// `due`, or (None) when its retry schedule says, counting from its last failure.
    pub fn schedule_pending(&mut self, mid: MsgId, due: Option<u64>) {
        let now = date::now_secs();
        let Some(m) = self.msgs.get_mut(&mid) else {
            return;
        };
        if m.hold || m.deleting {
            return;
        }
        for idx in 0..m.rcpts.len() {
            let r = &m.rcpts[idx];
            if r.state == State::Pending && !r.busy && !r.ready {
                let when = due.unwrap_or_else(|| match &r.last_error {
                    Some((t, _)) => crate::state::next_retry(*t, r.attempts, r.channel).max(now),
                    None => now,
                });
                self.schedule.add(m, idx, when);
            }
        }
    }
}
