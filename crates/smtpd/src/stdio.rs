//! `smtpd -bs` (what `sendmail -bs` runs): one SMTP session on stdin/stdout, as the invoking
//! user, for programs that submit mail by speaking SMTP to a pipe. The client is local, so it
//! may send to any address (as with sendmail itself); each message goes through `queue`, like
//! sendmail's, and is answered `250 2.0.0 Ok: queued as ID` only when queue exited 0. Routing
//! (who is a local recipient) follows the install's mode, never the caller's uid. A message
//! without Date, Message-ID or From gets them, as from sendmail (crate::headers).

use crate::policy::{Client, ConfigPolicy};
use crate::session::{Event, Session};
use ferry_common::envelope::Envelope;
use ferry_common::inject;
use ferry_common::root::Root;
use std::io::{Read, Write};

pub fn run(root: &Root, policy: &ConfigPolicy) -> std::io::Result<i32> {
    let client = Client {
        ip: std::net::IpAddr::from([127, 0, 0, 1]),
        relay: true,
    };
    let mut session = Session::new(client, false);
    session.greeting(&policy.cfg.smtpgreeting);
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut input = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut env: Option<Envelope> = None;
    let mut message: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    loop {
        stdout.write_all(&std::mem::take(&mut session.out))?;
        stdout.flush()?;
        if session.is_closed() {
            return Ok(0);
        }
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            return Ok(0);
        }
        input.extend_from_slice(&buf[..n]);
        while session.input(&mut input, policy, &mut events) {
            for ev in events.drain(..) {
                match ev {
                    Event::Begin {
                        sender,
                        rcpts,
                        smtputf8,
                        requiretls,
                        dsn,
                        ..
                    } => {
                        env = Some(Envelope {
                            sender,
                            recipients: rcpts,
                            smtputf8,
                            requiretls,
                            dsn,
                        });
                        message.clear();
                    }
                    Event::Chunk(c) => message.extend_from_slice(&c),
                    Event::Abort => {
                        env = None;
                        message.clear();
                    }
                    Event::End => {
                        let result = match env.take() {
                            Some(e) => match inject::run_queue(root, &mut message.as_slice(), &e) {
                                Ok(r) if r.code == 0 => Ok(queued_id(&r.message)),
                                Ok(r) => Err(r.code),
                                Err(_) => Err(ferry_common::status::QUEUE_BUG),
                            },
                            None => Err(ferry_common::status::QUEUE_BUG),
                        };
                        message.clear();
                        session.committed(result.as_deref().map_err(|c| (*c, "")));
                    }
                    // No TLS here, so no AUTH (smtpd -bs is never a submission service).
                    Event::StartTls
                    | Event::Auth(_)
                    | Event::Close
                    | Event::Refused { .. }
                    | Event::Denied { .. } => {}
                }
            }
        }
    }
}

/// The id in queue's success line (`queue: queued as ID`), or empty.
fn queued_id(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("queue: queued as "))
        .filter(|id| id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("")
        .to_string()
}
