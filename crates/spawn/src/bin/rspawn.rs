//! rspawn — remote delivery for send (runs as ferryr).
//!
//! - fd 0, from send: `D job msgid where sender domain rcpt...` (where: `t` todo/, `m` mess/)
//! - fd 1, to send: `R job status text [status text]...`, one status/text pair per recipient.
//! - `H` from send (it got HUP): the workers finish what they are doing and new ones, which
//!   read the control files again, take the next jobs.
//!
//! Keeps a few long-lived `remote-deliver` workers (one per CPU, at most 4), each serving many
//! deliveries at once, and hands each job to a worker chosen by the job's domain, so that a
//! worker's kept connections to a destination get reused. A worker that dies fails its jobs
//! temporarily (send retries them) and is started again. Exits when send closes fd 0, after
//! the workers have reported what they were doing.

use ferry_common::log;
use ferry_common::record::{self, Record};
use ferry_common::root::Root;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

struct Slot {
    stdin: Option<ChildStdin>,
    /// Jobs handed out and not yet reported, with the generation of the worker that has them.
    jobs: HashMap<u64, u64>,
    generation: u64,
}

struct Shared {
    root: Root,
    slots: Mutex<Vec<Slot>>,
    out: Mutex<BufWriter<std::io::Stdout>>,
}

fn main() {
    log::init("rspawn");
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            log!("fatal: {e}");
            111
        }
    };
    std::process::exit(code);
}

fn reply(shared: &Shared, r: &Record) {
    if let Ok(mut out) = shared.out.lock() {
        // send gone: nothing to do but go on until fd 0 closes too.
        let _ = out.write_all(&r.encode()).and_then(|_| out.flush());
    }
}

fn fail_all(shared: &Shared, jobs: HashSet<u64>, why: &str) {
    for job in jobs {
        // The recipient count is unknown here: one pair tells send "temporary" for all.
        reply(
            shared,
            &Record::new(b'R').with_u64(job).with("111").with(why),
        );
    }
}

fn start(shared: &Arc<Shared>, i: usize, generation: u64) -> std::io::Result<()> {
    let mut child = Command::new(shared.root.bin("remote-deliver"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(shared.root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot start remote-deliver: {e}")))?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    if let Ok(mut slots) = shared.slots.lock() {
        slots[i].stdin = stdin;
        slots[i].generation = generation;
    }
    let shared = shared.clone();
    std::thread::spawn(move || listen(shared, i, generation, child, stdout));
    Ok(())
}

/// Relays one worker's results; when it exits, fails its jobs and starts another.
fn listen(
    shared: Arc<Shared>,
    i: usize,
    generation: u64,
    mut child: Child,
    stdout: std::process::ChildStdout,
) {
    let mut input = BufReader::new(stdout);
    while let Ok(Some(r)) = record::read_blocking(&mut input) {
        if let Ok(job) = r.u64(0)
            && let Ok(mut slots) = shared.slots.lock()
        {
            slots[i].jobs.remove(&job);
        }
        reply(&shared, &r);
    }
    let status = child.wait();
    let (orphans, closing) = match shared.slots.lock() {
        Ok(mut slots) => {
            let slot = &mut slots[i];
            let mine: HashSet<u64> = slot
                .jobs
                .iter()
                .filter(|(_, g)| **g == generation)
                .map(|(j, _)| *j)
                .collect();
            slot.jobs.retain(|_, g| *g != generation);
            // Replaced (reload) or shutting down: nobody to start again.
            let closing = slot.generation != generation || slot.stdin.is_none();
            (mine, closing)
        }
        Err(_) => return,
    };
    if closing {
        fail_all(
            &shared,
            orphans,
            "remote-deliver exited during the delivery",
        );
        return;
    }
    log!(
        "remote-deliver {} ended ({status:?}) with {} jobs; starting another",
        child.id(),
        orphans.len()
    );
    fail_all(
        &shared,
        orphans,
        "remote-deliver exited during the delivery",
    );
    if let Err(e) = start(&shared, i, generation + 1) {
        log!("{e}");
    }
}

/// New workers for new jobs; the old ones end when they have reported theirs.
fn reload(shared: &Arc<Shared>, workers: usize) {
    for i in 0..workers {
        let generation = match shared.slots.lock() {
            Ok(mut slots) => {
                // Closing its stdin tells the old worker to finish and exit; its listener
                // still relays its results (the jobs stay in the slot's set until then).
                slots[i].stdin = None;
                slots[i].generation + 1
            }
            Err(_) => return,
        };
        if let Err(e) = start(shared, i, generation) {
            log!("{e}");
        }
    }
    log!("remote-deliver workers restarted to read the control files again");
}

fn run() -> std::io::Result<()> {
    let root = Root::from_exe()?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let shared = Arc::new(Shared {
        root,
        slots: Mutex::new(
            (0..workers)
                .map(|_| Slot {
                    stdin: None,
                    jobs: HashMap::new(),
                    generation: 0,
                })
                .collect(),
        ),
        out: Mutex::new(BufWriter::new(std::io::stdout())),
    });
    for i in 0..workers {
        start(&shared, i, 0)?;
    }
    let mut input = BufReader::new(std::io::stdin().lock());
    while let Some(rec) = record::read_blocking(&mut input)? {
        if rec.kind == b'H' {
            reload(&shared, workers);
            continue;
        }
        let job = rec.u64(0).unwrap_or(0);
        let mut h = DefaultHasher::new();
        rec.bytes(4).unwrap_or(b"").hash(&mut h);
        let i = (h.finish() % workers as u64) as usize;
        let sent = match shared.slots.lock() {
            Ok(mut slots) => {
                let slot = &mut slots[i];
                let ok = slot
                    .stdin
                    .as_mut()
                    .is_some_and(|s| s.write_all(&rec.encode()).and_then(|_| s.flush()).is_ok());
                if ok {
                    slot.jobs.insert(job, slot.generation);
                }
                ok
            }
            Err(_) => false,
        };
        if !sent {
            reply(
                &shared,
                &Record::new(b'R')
                    .with_u64(job)
                    .with("111")
                    .with("remote-deliver is restarting"),
            );
        }
    }
    // send is gone: let the workers finish and report, then leave.
    if let Ok(mut slots) = shared.slots.lock() {
        for s in slots.iter_mut() {
            s.stdin = None;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    Ok(())
}
