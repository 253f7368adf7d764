//! Asking send to act on the queue (or to reload), over queue/ctl/send (see
//! crates/send/src/ctl.rs).

use crate::problem;
use anyhow::{Context, Result, bail};
use ferry_common::queue::Queue;
use ferry_common::record::{self, Record};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub fn request(q: &Queue, req: Record) -> Result<String> {
    match ask(q, req)? {
        Ok(text) => Ok(text),
        // send refused: the command ran and found a problem (exit 1).
        Err(text) => Err(problem(text)),
    }
}

/// One request; `Ok(Ok(text))` for `K text`, `Ok(Err(text))` for send's refusal `E text`,
/// `Err` when send cannot be asked.
pub fn ask(q: &Queue, req: Record) -> Result<std::result::Result<String, String>> {
    let path = q.ctl_socket();
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "send is not running (cannot connect to {}); start it with ferryctl start",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    record::write_blocking(&mut s, &req)?;
    match record::read_blocking(&mut s)? {
        Some(r) if r.kind == b'K' => Ok(Ok(r.str(0)?.to_string())),
        Some(r) => Ok(Err(r.str(0).unwrap_or("refused").to_string())),
        None => bail!("send closed the connection without an answer"),
    }
}
