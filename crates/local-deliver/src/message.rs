//! The message being delivered: read from the descriptor lspawn passed, by position (pread),
//! so that nothing depends on a shared file offset. Also the loop check on its header.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

pub struct Message {
    pub file: File,
    pub len: u64,
}

/// Reads `len` bytes of `file` from offset 0.
pub struct MessageReader<'a> {
    msg: &'a Message,
    pos: u64,
}

impl Read for MessageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.msg.len - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(left) as usize;
        let n = self.msg.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "message file shorter than recorded",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Message {
    pub fn reader(&self) -> MessageReader<'_> {
        MessageReader { msg: self, pos: 0 }
    }

    /// The header section (up to the first empty line), at most 256 KiB.
    pub fn header(&self) -> io::Result<Vec<u8>> {
        let want = self.len.min(256 * 1024) as usize;
        let mut buf = vec![0u8; want];
        self.file.read_exact_at(&mut buf, 0)?;
        if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            buf.truncate(end + 1);
        }
        Ok(buf)
    }
}

/// Most Received and Delivered-To lines a message may carry before it counts as looping.
pub const MAX_HOPS: usize = 100;

/// Some(reason) if delivering to `recipient` would loop: the header already has
/// `Delivered-To: recipient` (we delivered it here before), or too many hops.
pub fn loop_check(header: &[u8], recipient: &str) -> Option<String> {
    let mut hops = 0;
    for line in header.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"received") {
            hops += 1;
        } else if name.eq_ignore_ascii_case(b"delivered-to") {
            hops += 1;
            let value = String::from_utf8_lossy(&line[colon + 1..]);
            if value.trim().eq_ignore_ascii_case(recipient) {
                return Some(format!(
                    "this message is looping: it already has my Delivered-To line ({recipient})"
                ));
            }
        }
    }
    (hops > MAX_HOPS).then(|| format!("this message is looping: more than {MAX_HOPS} hops"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops() {
        let h = b"Received: x\nDelivered-To: Joe@Example.org\nSubject: s\n";
        assert!(loop_check(h, "joe@example.org").is_some());
        assert!(loop_check(h, "ann@example.org").is_none());
        let many = "Received: x\n".repeat(101);
        assert!(loop_check(many.as_bytes(), "a@b").is_some());
    }
}
