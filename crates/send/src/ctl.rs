//! The control socket queue/ctl/send: ferryctl asks send to change the queue (only send
//! changes queue state). One request record per connection, one reply record:
//!
//! - `F` flush: every pending recipient is due now.
//! - `H id` hold: not retried until released. `U id` release. `D id` delete without a bounce.
//! - `R` reload: re-read the control files, as on HUP. `K reloaded`, or `E refused: why`
//!   (the old settings stay), so that `ferryctl reload` can report send's verdict.
//! - Replies: `K text` done, `E text` refused.
//!
//! The socket is mode 0600, owned by send's user: root (ferryctl) or that user may connect.

use crate::sched::{FIRST_CTL_CONN, Scheduler};
use crate::state::plural;
use ferry_common::id::MsgId;
use ferry_common::info::{self, State};
use ferry_common::log;
use ferry_common::record::{Reader, Record};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub struct Ctl {
    pub listener: UnixListener,
    conns: HashMap<usize, (UnixStream, Reader)>,
    next: usize,
}

impl Ctl {
    pub fn bind(path: &Path) -> io::Result<Ctl> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| io::Error::other(format!("cannot bind {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Ctl {
            listener,
            conns: HashMap::new(),
            next: FIRST_CTL_CONN,
        })
    }
}

/// Most connections kept open at once; more wait in the listen queue.
const MAX_CONNS: usize = 16;

impl Scheduler {
    pub fn ctl_accept(&mut self) {
        while self.ctl.conns.len() < MAX_CONNS {
            match self.ctl.listener.accept() {
                Ok((mut s, _)) => {
                    let t = self.ctl.next;
                    self.ctl.next += 1;
                    if self
                        .poll
                        .registry()
                        .register(&mut s, Token(t), Interest::READABLE)
                        .is_ok()
                    {
                        self.ctl.conns.insert(t, (s, Reader::new()));
                    }
                }
                Err(_) => break,
            }
        }
    }

    pub fn ctl_event(&mut self, t: usize) {
        let Some((mut s, mut reader)) = self.ctl.conns.remove(&t) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut open = true;
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => reader.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        match reader.next_record() {
            Ok(Some(req)) => {
                let reply = self.ctl_request(&req);
                let _ = s.write_all(&reply.encode());
                let _ = self.poll.registry().deregister(&mut s);
            }
            Ok(None) if open => {
                self.ctl.conns.insert(t, (s, reader));
            }
            _ => {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    fn ctl_request(&mut self, req: &Record) -> Record {
        let ok = |t: String| Record::new(b'K').with(t);
        let err = |t: String| Record::new(b'E').with(t);
        if req.kind == b'F' {
            let n = self.flush_all();
            return ok(format!("flushed: {} due now", plural(n, "recipient")));
        }
        if req.kind == b'R' {
            return match self.reload() {
                Ok(()) => ok("reloaded".into()),
                Err(why) => err(format!("refused: {why}")),
            };
        }
        let Some(id) = req.str(0).ok().and_then(MsgId::parse) else {
            return err("expected a message id (32 hex digits)".into());
        };
        let Some(m) = self.msgs.get_mut(&id) else {
            return err(format!(
                "{id} is not in the queue (or send has not taken it yet)"
            ));
        };
        match req.kind {
            b'H' | b'U' => {
                let hold = req.kind == b'H';
                match &m.info {
                    Some(f) => {
                        if let Err(e) = info::set_hold(f, hold).and_then(|_| f.sync_data()) {
                            return err(format!("cannot write the hold mark: {e}"));
                        }
                    }
                    // Not persisted yet: it will be as soon as no delivery runs.
                    None => m.persist = true,
                }
                self.touched.insert(id);
                m.hold = hold;
                if hold {
                    for idx in 0..m.rcpts.len() {
                        self.schedule.remove(m, idx);
                    }
                } else {
                    self.schedule_pending(id, Some(ferry_common::date::now_secs()));
                }
                log!("{id}: {}", if hold { "held" } else { "released" });
                ok(format!("{id} {}", if hold { "held" } else { "released" }))
            }
            b'D' => {
                m.deleting = true;
                for idx in 0..m.rcpts.len() {
                    self.schedule.remove(m, idx);
                }
                let pending = m.rcpts.iter().filter(|r| r.state == State::Pending).count();
                log!(
                    "{id}: deleted by the administrator ({} undelivered, no bounce)",
                    plural(pending, "recipient")
                );
                self.touched.insert(id);
                ok(format!("{id} deleted"))
            }
            _ => err(format!("unknown request {:?}", req.kind as char)),
        }
    }
}
