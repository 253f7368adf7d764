//! Records between ferry programs (send ↔ lspawn/rspawn/clean, lspawn ↔ local-deliver,
//! smtpd ↔ queue writer): never free text to parse.
//!
//! A record on the wire: a 4-byte big-endian length of what follows, then the version byte
//! [`VERSION`], a kind byte (a letter, defined by each protocol in docs/INTERNALS.md), and
//! fields, each a 4-byte big-endian length and that many bytes. Records are bounded by
//! [`MAX_RECORD`]; a bad record is an error that ends the conversation.

use std::io::{self, Read, Write};

pub const VERSION: u8 = 1;
pub const MAX_RECORD: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub fields: Vec<Vec<u8>>,
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Record {
    pub fn new(kind: u8) -> Record {
        Record {
            kind,
            fields: Vec::new(),
        }
    }
    pub fn with(mut self, f: impl AsRef<[u8]>) -> Record {
        self.fields.push(f.as_ref().to_vec());
        self
    }
    pub fn with_u64(self, n: u64) -> Record {
        self.with(n.to_string())
    }
    pub fn push(&mut self, f: impl AsRef<[u8]>) {
        self.fields.push(f.as_ref().to_vec());
    }

    pub fn encode(&self) -> Vec<u8> {
        let body: usize = 2 + self.fields.iter().map(|f| 4 + f.len()).sum::<usize>();
        let mut v = Vec::with_capacity(4 + body);
        v.extend_from_slice(&(body as u32).to_be_bytes());
        v.push(VERSION);
        v.push(self.kind);
        for f in &self.fields {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    fn decode(body: &[u8]) -> io::Result<Record> {
        if body.len() < 2 || body[0] != VERSION {
            return Err(invalid("record of an unknown version"));
        }
        let mut r = Record::new(body[1]);
        let mut rest = &body[2..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(invalid("truncated field length"));
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n > rest.len() {
                return Err(invalid("field longer than its record"));
            }
            r.fields.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        Ok(r)
    }

    pub fn bytes(&self, i: usize) -> io::Result<&[u8]> {
        self.fields
            .get(i)
            .map(|f| f.as_slice())
            .ok_or_else(|| invalid(format!("record {} lacks field {i}", self.kind as char)))
    }
    pub fn str(&self, i: usize) -> io::Result<&str> {
        std::str::from_utf8(self.bytes(i)?).map_err(|_| invalid("field is not UTF-8"))
    }
    pub fn u64(&self, i: usize) -> io::Result<u64> {
        self.str(i)?
            .parse()
            .map_err(|_| invalid("field is not a number"))
    }
}

/// Reassembles records from a byte stream that arrives in pieces (non-blocking pipes).
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Reads from a non-blocking source until it would block. Returns false at end of file.
    pub fn fill_from(&mut self, src: &mut impl Read) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match src.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.feed(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete record, if one has arrived.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            self.compact();
            return Ok(None);
        }
        let n = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if n > MAX_RECORD {
            return Err(invalid(format!("record of {n} bytes exceeds the limit")));
        }
        if avail.len() < 4 + n {
            self.compact();
            return Ok(None);
        }
        let rec = Record::decode(&avail[4..4 + n])?;
        self.start += 4 + n;
        Ok(Some(rec))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Reads one record from a blocking stream; Ok(None) at a clean end of file.
pub fn read_blocking(src: &mut impl Read) -> io::Result<Option<Record>> {
    read_blocking_max(src, MAX_RECORD)
}

/// [`read_blocking`] with a smaller bound on the record: for a peer that is not trusted to
/// keep to the protocol's sizes (what is allocated is at most `max` bytes).
pub fn read_blocking_max(src: &mut impl Read, max: usize) -> io::Result<Option<Record>> {
    let mut len = [0u8; 4];
    match src.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max.min(MAX_RECORD) {
        return Err(invalid(format!("record of {n} bytes exceeds the limit")));
    }
    let mut body = vec![0u8; n];
    src.read_exact(&mut body)?;
    Record::decode(&body).map(Some)
}

pub fn write_blocking(dst: &mut impl Write, r: &Record) -> io::Result<()> {
    dst.write_all(&r.encode())?;
    dst.flush()
}

/// Bytes waiting to go out on a non-blocking pipe or socket.
#[derive(Default)]
pub struct Outbox {
    buf: Vec<u8>,
    sent: usize,
}

impl Outbox {
    pub fn push(&mut self, r: &Record) {
        self.buf.extend_from_slice(&r.encode());
    }
    pub fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }
    /// Writes until done or the destination would block.
    pub fn flush_to(&mut self, dst: &mut impl Write) -> io::Result<()> {
        while self.sent < self.buf.len() {
            match dst.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_in_pieces() {
        let a = Record::new(b'J').with("abc").with_u64(42).with(b"");
        let b = Record::new(b'R').with(vec![0u8, 1, 2]);
        let mut wire = a.encode();
        wire.extend(b.encode());
        let mut r = Reader::new();
        let mut got = Vec::new();
        for byte in &wire {
            r.feed(&[*byte]);
            while let Some(rec) = r.next_record().unwrap() {
                got.push(rec);
            }
        }
        assert_eq!(got, vec![a.clone(), b]);
        assert_eq!(got[0].u64(1).unwrap(), 42);
        assert!(got[0].str(9).is_err());
        let mut cur = std::io::Cursor::new(a.encode());
        assert_eq!(read_blocking(&mut cur).unwrap(), Some(a));
        assert_eq!(read_blocking(&mut cur).unwrap(), None);
    }

    #[test]
    fn oversized_and_bad_records_are_errors() {
        let mut r = Reader::new();
        r.feed(&u32::MAX.to_be_bytes());
        assert!(r.next_record().is_err());
        let mut r = Reader::new();
        r.feed(&[0, 0, 0, 6, 9, b'X', 0, 0, 0, 1]);
        assert!(r.next_record().is_err());
        let mut r = Reader::new();
        r.feed(&[0, 0, 0, 7, 1, b'X', 0, 0, 0, 9, 1]);
        assert!(r.next_record().is_err());
    }
}
