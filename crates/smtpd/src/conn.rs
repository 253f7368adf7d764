//! One client connection: the socket, plaintext or TLS (rustls driven by hand under mio), the
//! bytes read but not yet consumed, and the session state machine.
//!
//! Replies wait in `wire` (plaintext, before TLS encrypts them) until the socket takes them;
//! the server stops consuming a session's input while [`Conn::backlog`] is above
//! [`crate::session::OUT_CAP`], so a client that never reads costs a bounded amount of memory.

use crate::session::Session;
use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    tls: Option<Box<ServerConnection>>,
    /// The TLS session has been announced to the session state machine.
    tls_up: bool,
    /// Reply bytes (plaintext) waiting for the socket, or for rustls to take them.
    wire: Vec<u8>,
    pub inbuf: Vec<u8>,
    pub session: Session,
    pub deadline: Instant,
    pub started: Instant,
    /// The writer transaction of the message being received.
    pub txn: Option<u64>,
    /// "220 Ready to start TLS" is queued: switch once it is on the wire.
    pub tls_pending: bool,
    pub eof: bool,
    pub limited: bool,
    /// Tarpit: replies and input wait until then.
    pub hold_until: Option<Instant>,
}

/// What [`Conn::flush`] did.
pub struct Flushed {
    /// Everything is on the wire.
    pub done: bool,
    /// Some bytes went out (the client reads: its deadline moves).
    pub wrote: bool,
}

pub enum ReadResult {
    /// New bytes arrived (and whether they hold a line end or a good amount of data).
    Got {
        progress: bool,
    },
    Nothing,
    Eof,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        session: Session,
        deadline: Instant,
        limited: bool,
    ) -> Conn {
        Conn {
            stream,
            peer,
            tls: None,
            tls_up: false,
            wire: Vec::new(),
            inbuf: Vec::new(),
            session,
            deadline,
            started: Instant::now(),
            txn: None,
            tls_pending: false,
            eof: false,
            limited,
            hold_until: None,
        }
    }

    /// Reads what the socket has, up to `cap` bytes waiting in `inbuf`.
    pub fn read_in(&mut self, scratch: &mut [u8], cap: usize) -> io::Result<ReadResult> {
        let mut got = false;
        let mut progress = false;
        while self.inbuf.len() < cap {
            let n = match &mut self.tls {
                None => match self.stream.read(scratch) {
                    Ok(0) => return Ok(ReadResult::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
                Some(tls) => {
                    // Plaintext rustls already decrypted comes first.
                    match tls.reader().read(scratch) {
                        Ok(0) => return Ok(ReadResult::Eof),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            match tls.read_tls(&mut self.stream) {
                                Ok(0) => return Ok(ReadResult::Eof),
                                Ok(_) => {
                                    if let Err(e) = tls.process_new_packets() {
                                        // Send the alert, then give up on the connection.
                                        let _ = tls.write_tls(&mut self.stream);
                                        return Err(io::Error::other(format!("TLS: {e}")));
                                    }
                                    continue;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                                Err(e) => return Err(e),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            got = true;
            let chunk = &scratch[..n];
            progress |= n >= 8192 || chunk.contains(&b'\n');
            self.inbuf.extend_from_slice(chunk);
        }
        if let Some(tls) = &self.tls
            && !self.tls_up
            && !tls.is_handshaking()
        {
            self.tls_up = true;
            self.session.tls_started(crate::tls::describe(tls));
            progress = true;
        }
        Ok(if got || progress {
            ReadResult::Got { progress }
        } else {
            ReadResult::Nothing
        })
    }

    /// Reply bytes not yet taken by the socket (or by rustls, whose own buffer is bounded).
    pub fn backlog(&self) -> usize {
        self.wire.len() + self.session.out.len()
    }

    /// Writes the session's replies (through TLS once it is on), as much as the socket takes.
    pub fn flush(&mut self) -> io::Result<Flushed> {
        let out = std::mem::take(&mut self.session.out);
        if self.wire.is_empty() {
            self.wire = out;
        } else {
            self.wire.extend_from_slice(&out);
        }
        let mut wrote = false;
        loop {
            match &mut self.tls {
                None => {
                    if self.wire.is_empty() {
                        break;
                    }
                    match self.stream.write(&self.wire) {
                        Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                        Ok(n) => {
                            self.wire.drain(..n);
                            wrote = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Flushed { done: false, wrote });
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(tls) => {
                    // rustls takes plaintext up to its buffer limit (64 KiB by default).
                    if !self.wire.is_empty() {
                        let n = tls.writer().write(&self.wire)?;
                        self.wire.drain(..n);
                    }
                    if !tls.wants_write() {
                        if self.wire.is_empty() {
                            break;
                        }
                        // rustls took nothing and has nothing to send: should not happen.
                        return Err(io::Error::from(io::ErrorKind::WriteZero));
                    }
                    match tls.write_tls(&mut self.stream) {
                        Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                        Ok(_) => wrote = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Flushed { done: false, wrote });
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if self.wire.capacity() > 64 * 1024 {
            self.wire = Vec::new();
        }
        Ok(Flushed { done: true, wrote })
    }

    /// Switches to TLS: everything written so far was plaintext, what follows is a handshake.
    pub fn start_tls(&mut self, cfg: Arc<ServerConfig>) -> io::Result<()> {
        let conn = ServerConnection::new(cfg).map_err(|e| io::Error::other(e.to_string()))?;
        self.tls = Some(Box::new(conn));
        self.tls_pending = false;
        Ok(())
    }

    pub fn send_close_notify(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
        }
    }

    pub fn tls_description(&self) -> String {
        self.session.tls.clone().unwrap_or_else(|| "-".to_string())
    }
}
