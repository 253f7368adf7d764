//! rspawn — remote delivery for send (ferryr).
//!
//! - fd 0, from send: `D job msgid where sender domain rcpt...` (where: `t` todo/, `m` mess/)
//! - fd 1, to send: `R job status text [status text]...`, one status/text pair per recipient.
//!
//! Until remote delivery lands (issue 4) every job fails temporarily, so remote mail stays
//! queued and is retried on send's schedule, then bounces after queuelifetime.

use ferry_common::log;
use ferry_common::record::{self, Record};
use std::io::{BufReader, BufWriter, Write};

fn main() {
    log::init("rspawn");
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    loop {
        let rec = match record::read_blocking(&mut input) {
            Ok(Some(r)) => r,
            Ok(None) => std::process::exit(0),
            Err(e) => {
                log!("fatal: {e}");
                std::process::exit(111);
            }
        };
        let job = rec.u64(0).unwrap_or(0);
        let mut reply = Record::new(b'R').with_u64(job);
        for _ in 5..rec.fields.len() {
            reply.push("111");
            reply.push("remote delivery is not built yet");
        }
        if output.write_all(&reply.encode()).and_then(|_| output.flush()).is_err() {
            std::process::exit(111);
        }
    }
}
