//! `ferryctl queue`: the queue as mailq/qmail-qread show it, read straight from the queue
//! directory (changing nothing), and the actions that send carries out.

use anyhow::{Context, Result};
use ferry_common::id::{self, MsgId};
use ferry_common::info::{self, Channel, State};
use ferry_common::queue::{Queue, QueueFile};
use ferry_common::record::Record;
use ferry_common::{date, log};
use std::fmt::Write;

pub struct Entry {
    pub id: MsgId,
    pub age: u64,
    pub size: u64,
    pub sender: String,
    /// None: still in todo/, not yet taken by send.
    pub info: Option<info::Info>,
    pub new_rcpts: usize,
    /// The recipients of a message not yet taken by send (from its envelope).
    pub new_list: Vec<String>,
}

/// Every message in the queue, oldest first.
pub fn scan(q: &Queue) -> Result<Vec<Entry>> {
    let now = date::now_secs();
    let mut out = Vec::new();
    for split in id::splits() {
        let dir = q.dir().join("info").join(&split);
        let rd = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {} (run as root?)", dir.display()))?;
        for e in rd.flatten() {
            let Some(mid) = e.file_name().to_str().and_then(MsgId::parse) else {
                continue;
            };
            let Ok(i) = info::read_only(&e.path()) else {
                continue;
            };
            let size = QueueFile::open(&q.mess(&mid))
                .map(|f| f.message_len)
                .unwrap_or(0);
            out.push(Entry {
                id: mid,
                age: now.saturating_sub(i.birth),
                size,
                sender: i.sender.clone(),
                info: Some(i),
                new_rcpts: 0,
                new_list: Vec::new(),
            });
        }
    }
    for e in std::fs::read_dir(q.todo_dir())?.flatten() {
        let Some(mid) = e.file_name().to_str().and_then(MsgId::parse) else {
            continue;
        };
        if out.iter().any(|x| x.id == mid) {
            continue;
        }
        let Ok(qf) = QueueFile::open(&e.path()) else {
            continue;
        };
        let Ok(env) = qf.envelope() else { continue };
        let birth = qf.birth();
        out.push(Entry {
            id: mid,
            age: now.saturating_sub(birth),
            size: qf.message_len,
            sender: env.sender,
            info: None,
            new_rcpts: env.recipients.len(),
            new_list: env.recipients.clone(),
        });
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.age));
    Ok(out)
}

pub fn state_word(e: &Entry) -> &'static str {
    match &e.info {
        None => "new",
        Some(i) if i.hold => "held",
        Some(i)
            if i.rcpts
                .iter()
                .any(|r| r.attempts > 0 && r.state == State::Pending) =>
        {
            "deferred"
        }
        Some(_) => "active",
    }
}

fn size_text(n: u64) -> String {
    match n {
        0..=9999 => format!("{n}"),
        10_000..=9_999_999 => format!("{}K", n / 1024),
        _ => format!("{}M", n >> 20),
    }
}

pub fn list(q: &Queue) -> Result<String> {
    let entries = scan(q)?;
    let mut s = String::new();
    for e in &entries {
        let rcpts = e
            .info
            .as_ref()
            .map(|i| i.rcpts.len())
            .unwrap_or(e.new_rcpts);
        let sender = if e.sender.is_empty() {
            "<>".to_string()
        } else {
            format!("<{}>", log::quote(&e.sender, 80))
        };
        let _ = writeln!(
            s,
            "{}  {:>4}  {:>5}  {}  {} rcpt{}  {}",
            e.id,
            date::age(e.age),
            size_text(e.size),
            sender,
            rcpts,
            if rcpts == 1 { "" } else { "s" },
            state_word(e)
        );
        if e.info.is_none() {
            for r in &e.new_list {
                let _ = writeln!(s, "    {} (not yet sorted by send)", log::quote(r, 200));
            }
        }
        if let Some(i) = &e.info {
            for r in &i.rcpts {
                let _ = writeln!(s, "    {}", rcpt_line(r));
                if r.state == State::Pending
                    && let Some((_, err)) = &r.last_error
                {
                    let _ = writeln!(s, "        {}", log::quote(err, 300));
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "-- {} message{} in the queue",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
    Ok(s)
}

/// "joe@example.org [remote] deferred (2 attempts)": the same words in `queue` and `queue show`.
fn rcpt_line(r: &info::Rcpt) -> String {
    let st = match r.state {
        State::Delivered => "delivered".to_string(),
        State::Failed => "failed, bounce pending".to_string(),
        State::Pending if r.attempts == 0 => "waiting".to_string(),
        State::Pending => format!(
            "deferred ({} attempt{})",
            r.attempts,
            if r.attempts == 1 { "" } else { "s" }
        ),
    };
    let chan = if r.channel == Channel::Local {
        "local"
    } else {
        "remote"
    };
    format!("{} [{chan}] {st}", log::quote(&r.addr, 200))
}

pub fn show(q: &Queue, id: &str) -> Result<String> {
    let mid = parse_id(id)?;
    let path = if q.mess(&mid).exists() {
        q.mess(&mid)
    } else {
        q.todo(&mid)
    };
    let qf =
        QueueFile::open(&path).map_err(|_| crate::problem(format!("{mid} is not in the queue")))?;
    let env = qf.envelope()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "id: {mid}\nsize: {} bytes\nsender: <{}>",
        qf.message_len, env.sender
    );
    if let Ok(i) = info::read_only(&q.info(&mid)) {
        let _ = writeln!(
            s,
            "queued: {}{}",
            date::iso(i.birth),
            if i.hold { " (held)" } else { "" }
        );
        if let Some(t) = i.warned {
            let _ = writeln!(s, "delay warning sent: {}", date::iso(t));
        }
        for r in &i.rcpts {
            let _ = writeln!(s, "recipient: {}", rcpt_line(r));
            if let Some((t, e)) = &r.last_error {
                let _ = writeln!(s, "  last error {}: {}", date::iso(*t), log::quote(e, 500));
            }
            if let Some(f) = &r.failure {
                let _ = writeln!(s, "  failure: {}", log::quote(f, 500));
            }
        }
    } else {
        for r in &env.recipients {
            let _ = writeln!(s, "recipient: {r} (new)");
        }
    }
    let _ = writeln!(
        s,
        "\n{}",
        String::from_utf8_lossy(&qf.read_head(64 * 1024)?)
    );
    Ok(s)
}

pub fn parse_id(id: &str) -> Result<MsgId> {
    match MsgId::parse(id) {
        Some(m) => Ok(m),
        None => Err(crate::usage(format!(
            "{id:?} is not a message id (32 hex digits, as ferryctl queue lists them)"
        ))),
    }
}

pub fn action(q: &Queue, kind: u8, id: &str) -> Result<String> {
    let mid = parse_id(id)?;
    crate::ctlsock::request(q, Record::new(kind).with(mid.to_string()))
}
