//! Shared pieces of the spawners: the pipes to send on fds 0 and 1, as mio sources.

use ferry_common::record::{Outbox, Reader, Record};
use mio::unix::pipe;
use std::io;

/// The link to send: requests arrive on fd 0, replies go out on fd 1.
pub struct SendLink {
    pub rx: pipe::Receiver,
    pub tx: pipe::Sender,
    pub reader: Reader,
    pub outbox: Outbox,
}

impl SendLink {
    pub fn from_stdio() -> io::Result<SendLink> {
        let rx = ferry_sys::take_fd(0)
            .ok_or_else(|| io::Error::other("fd 0 (from send) is not open"))?;
        let tx =
            ferry_sys::take_fd(1).ok_or_else(|| io::Error::other("fd 1 (to send) is not open"))?;
        let rx = pipe::Receiver::from(rx);
        let tx = pipe::Sender::from(tx);
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(SendLink {
            rx,
            tx,
            reader: Reader::new(),
            outbox: Outbox::default(),
        })
    }

    pub fn reply(&mut self, r: &Record) {
        self.outbox.push(r);
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.outbox.flush_to(&mut self.tx)
    }
}

/// A result record for send: job id, status (0, 100, 111), text.
pub fn result(job: u64, status: i32, text: &str) -> Record {
    Record::new(b'R')
        .with_u64(job)
        .with(status.to_string())
        .with(text)
}
