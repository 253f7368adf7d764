//! The message as it goes on the wire: read from the queue file by position, LF turned into
//! CR LF, every line that starts with "." dot-stuffed, ended with CR LF "." CR LF.

use ferry_common::queue::QueueFile;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct Message {
    file: File,
    pub len: u64,
    /// The message has bytes above 127 (needs 8BITMIME).
    pub eightbit: bool,
}

const CHUNK: usize = 64 * 1024;

impl Message {
    pub fn open(path: &Path) -> io::Result<Message> {
        let qf = QueueFile::open(path)?;
        let mut m = Message {
            file: qf.file,
            len: qf.message_len,
            eightbit: false,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < m.len {
            let n = m.read(&mut buf, pos)?;
            if buf[..n].iter().any(|b| *b >= 0x80) {
                m.eightbit = true;
                break;
            }
            pos += n as u64;
        }
        Ok(m)
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.len - pos) as usize;
        let n = self.file.read_at(&mut buf[..want], pos)?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "message file shorter than recorded",
            ));
        }
        Ok(n)
    }

    pub fn wire(&self) -> Wire<'_> {
        Wire {
            msg: self,
            pos: 0,
            line_start: true,
            pending_cr: false,
            done: false,
            buf: vec![0u8; CHUNK],
        }
    }
}

pub struct Wire<'a> {
    msg: &'a Message,
    pos: u64,
    line_start: bool,
    pending_cr: bool,
    done: bool,
    buf: Vec<u8>,
}

impl Wire<'_> {
    /// The next piece of the wire form, or None after the final dot.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
        if self.pos < self.msg.len {
            let n = self.msg.read(&mut self.buf, self.pos)?;
            self.pos += n as u64;
            for &b in &self.buf[..n] {
                if self.pending_cr {
                    self.pending_cr = false;
                    if b != b'\n' {
                        out.push(b'\r');
                        self.line_start = false;
                    }
                }
                match b {
                    b'\r' => self.pending_cr = true,
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.line_start = true;
                    }
                    b'.' if self.line_start => {
                        out.extend_from_slice(b"..");
                        self.line_start = false;
                    }
                    _ => {
                        out.push(b);
                        self.line_start = false;
                    }
                }
            }
            return Ok(Some(out));
        }
        if self.pending_cr {
            out.push(b'\r');
            self.line_start = false;
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.done = true;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::envelope::Envelope;

    fn wire_of(body: &[u8]) -> Vec<u8> {
        let dir =
            std::env::temp_dir().join(format!("ferry-wire-{}-{}", std::process::id(), body.len()));
        let mut v = body.to_vec();
        v.extend(
            Envelope {
                sender: "a@b".into(),
                recipients: vec!["c@d".into()],
                smtputf8: false,
            }
            .encode(),
        );
        v.extend_from_slice(ferry_common::queue::TRAILER_MAGIC);
        v.extend_from_slice(&(body.len() as u64).to_le_bytes());
        std::fs::write(&dir, &v).unwrap_or(());
        let m = Message::open(&dir).ok();
        let mut out = Vec::new();
        if let Some(m) = &m {
            let mut w = m.wire();
            while let Ok(Some(c)) = w.next_chunk() {
                out.extend(c);
            }
        }
        let _ = std::fs::remove_file(&dir);
        out
    }

    #[test]
    fn crlf_and_dots() {
        assert_eq!(wire_of(b"a\n.b\n..c\nd"), b"a\r\n..b\r\n...c\r\nd\r\n.\r\n");
        assert_eq!(wire_of(b""), b".\r\n");
        assert_eq!(wire_of(b"x\r\ny\n"), b"x\r\ny\r\n.\r\n");
        assert_eq!(wire_of(b".\n"), b"..\r\n.\r\n");
    }
}
