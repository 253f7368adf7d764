//! send — the scheduler of ferry (runs as ferrys).
//!
//! Usage: `send [READY-FD]`, exec'd by `start`, never run by hand. READY-FD (s6's
//! notification fd) gets a newline once recovery is done and send is serving.
//!
//! Descriptors (set up by start):
//! - 3 → lspawn, 4 ← lspawn: `D job msgid where kind name ext sender recipient local domain
//!   orig` / `R job status text` (one local recipient per job; `orig` is the envelope
//!   recipient it came from through aliases, empty if none: local-deliver writes it as
//!   X-Original-To).
//! - 5 → rspawn, 6 ← rspawn: `D job msgid sender domain rcpt...` /
//!   `R job (status text)...` (the recipients of one domain per job; recipients an alias
//!   forwards there get jobs of their own, whose sender is rewritten by SRS: config.rs's
//!   `forward_sender`).
//! - 7 → clean, 8 ← clean: `M id` (take todo/ID into mess/) and `D id` (delete) / `m|d id status`.
//!
//! Also: queue/lock/trigger (a FIFO, one byte wakes send), queue/ctl/send (a Unix socket for
//! ferryctl: flush, hold, release, delete, reload with its verdict), signals: ALRM = flush,
//! HUP = reload the control files, TERM/INT = stop after the running deliveries report (at
//! most 10 s). Logs `ID: <alias> → a, b` for each envelope recipient that is an alias.
//!
//! The loop: take new messages from todo/ in bounded batches (into memory only: a message
//! whose deliveries all succeed is never written by send); run due deliveries up to
//! `concurrencylocal` and `concurrencyremote`; when a recipient is deferred, persist the
//! message (write info/XX/ID, sync, have clean move it into mess/) and from then on record
//! each result there and sync before acting on it; retry temporary failures on a growing
//! schedule; warn the sender once after `delaywarningtime`; after `queuelifetime` or on a
//! permanent failure send an RFC 3464 report through `queue` (and success reports asked for
//! with NOTIFY=SUCCESS); then have clean remove the message. docs/INTERNALS.md has the states
//! and the recovery rule for each. If a helper dies, send stops (exit 111) and s6
//! restarts the service; nothing is lost.

mod bounce;
mod ctl;
mod dispatch;
mod recover;
mod report;
mod sched;
mod state;
mod todo;

use ferry_common::log;

fn main() {
    log::init("send");
    let ready_fd = std::env::args().nth(1).and_then(|a| a.parse::<i32>().ok());
    match sched::Scheduler::start().and_then(|mut s| s.run(ready_fd)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log!("fatal: {e}");
            std::process::exit(111);
        }
    }
}
