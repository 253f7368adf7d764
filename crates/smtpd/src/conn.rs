//! One client connection: the socket, plaintext or TLS (rustls driven by hand under mio), the
//! bytes read but not yet consumed, and the session state machine.

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
    /// Plaintext bytes waiting for the socket (before TLS).
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

    /// Writes the session's replies (through TLS once it is on). True when all is sent.
    pub fn flush(&mut self) -> io::Result<bool> {
        let out = std::mem::take(&mut self.session.out);
        match &mut self.tls {
            None => self.wire.extend_from_slice(&out),
            Some(tls) => {
                if !out.is_empty() {
                    tls.writer().write_all(&out)?;
                }
            }
        }
        while !self.wire.is_empty() {
            match self.stream.write(&self.wire) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.wire.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
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
