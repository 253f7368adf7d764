//! clean — changes the queue files that belong to ferryq, on send's request.
//!
//! Started by `start` as `ferryq`. send cannot write the directories of ferryq (todo/, mess/),
//! so it asks clean, over a pipe, with records (crates/common/src/record.rs):
//!
//! - fd 0, from send: `M id` take a new message: rename todo/ID to mess/XX/ID;
//!   `D id` delete a message: remove todo/ID and mess/XX/ID (its file, emptied, goes into
//!   queue/pool/ for a new message: crates/common/src/pool.rs).
//! - fd 1, to send: `m id status` / `d id status`, status "ok" or the error text.
//!
//! Requests that arrive together are done as a batch; moves are made durable with one sync
//! before any of them is confirmed (send starts deliveries only after the confirmation).
//! At start, and then every 10 seconds while it runs, clean removes tmp/ files whose writer
//! died: no lock held on them and not changed for a few seconds (docs/INTERNALS.md). So a
//! `queue` killed again and again in the middle of big messages cannot fill the disk.
//! Exits 0 when send closes fd 0; 111 on a broken pipe or record.

use ferry_common::id::MsgId;
use ferry_common::pool::Giver;
use ferry_common::queue::{self, Queue};
use ferry_common::record::{self, Record};
use ferry_common::root::Root;
use ferry_common::{durable, log};
use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How often tmp/ is swept for files whose writer died.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A tmp/ file younger than this is left alone even when unlocked: its writer may be
/// between creating it and taking the lock.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(3);

fn sweep(q: &Queue, min_age: Duration) {
    match queue::recover_tmp_older(q, min_age) {
        Ok(names) => {
            for name in names {
                log!("removed tmp/{name}: its writer died before the commit");
            }
        }
        Err(e) => log!("cannot sweep tmp/: {e}"),
    }
}

/// Waits until fd 0 has data or `until` passes; true if there is data (or an end).
fn readable_before(until: Instant) -> std::io::Result<bool> {
    let left = until.saturating_duration_since(Instant::now());
    ferry_sys::wait_readable(&std::io::stdin().as_fd(), left)
}

fn main() {
    log::init("clean");
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            log!("fatal: {e:#}");
            111
        }
    };
    std::process::exit(code);
}

fn run() -> std::io::Result<()> {
    let root = Root::from_exe()?;
    let q = Queue::new(&root);
    for name in queue::recover_tmp(&q)? {
        log!("removed tmp/{name}: its writer died before the commit");
    }
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    let mut giver = Giver::default();
    loop {
        if Instant::now() >= next_sweep {
            sweep(&q, SWEEP_MIN_AGE);
            next_sweep = Instant::now() + SWEEP_EVERY;
        }
        if input.buffer().is_empty() && !readable_before(next_sweep)? {
            continue;
        }
        let Some(first) = record::read_blocking(&mut input)? else {
            return Ok(());
        };
        let mut batch = vec![first];
        // Whatever else send has already written goes in the same batch.
        while !input.buffer().is_empty() {
            match record::read_blocking(&mut input)? {
                Some(r) => batch.push(r),
                None => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut moved = false;
        for req in &batch {
            let id = MsgId::parse(req.str(0)?)
                .ok_or_else(|| std::io::Error::other("bad message id from send"))?;
            let (kind, result) = match req.kind {
                b'M' => {
                    let r = std::fs::rename(q.todo(&id), q.mess(&id));
                    moved |= r.is_ok();
                    (b'm', r)
                }
                b'D' => (b'd', delete(&q, &mut giver, &id)),
                other => {
                    return Err(std::io::Error::other(format!(
                        "unknown request {:?} from send",
                        other as char
                    )));
                }
            };
            let status = match result {
                Ok(()) => "ok".to_string(),
                Err(e) => {
                    log!(
                        "{}: {} failed: {e}",
                        id,
                        if kind == b'm' { "move" } else { "delete" }
                    );
                    e.to_string()
                }
            };
            replies.push(Record::new(kind).with(id.to_string()).with(status));
        }
        if moved {
            durable::syncfs(&std::fs::File::open(q.dir())?)?;
        }
        for r in &replies {
            output.write_all_record(r)?;
        }
        std::io::Write::flush(&mut output)?;
    }
}

/// Removes a finished message: mess/XX/ID and todo/ID (a message delivered at once is never
/// moved out of todo/). Its file goes into queue/pool/ for a new message when the name is
/// its last link (crate::pool).
fn delete(q: &Queue, giver: &mut Giver, id: &MsgId) -> std::io::Result<()> {
    giver.give_back(q.dir(), &q.mess(id))?;
    giver.give_back(q.dir(), &q.todo(id))
}

trait WriteRecord {
    fn write_all_record(&mut self, r: &Record) -> std::io::Result<()>;
}

impl<W: std::io::Write> WriteRecord for W {
    fn write_all_record(&mut self, r: &Record) -> std::io::Result<()> {
        self.write_all(&r.encode())
    }
}
