//! The message as it goes on the wire: read from the queue file by position (its head, then
//! the streamed bytes: crate ferry_common::queue), every line end
//! sent as CR LF (LF, CR LF, and a bare CR alike: a bare CR or LF never reaches the wire, so no
//! lax receiver can be smuggled into with "\r.\r"), every line that starts with "." dot-stuffed,
//! ended with CR LF "." CR LF.

use ferry_common::envelope::Envelope;
use ferry_common::queue::QueueFile;
use std::io;
use std::path::Path;

pub struct Message {
    qf: QueueFile,
    pub len: u64,
    /// The message has bytes above 127 (needs 8BITMIME).
    pub eightbit: bool,
    /// Its header section has bytes above 127 (UTF-8 headers, RFC 6532).
    pub utf8_head: bool,
    /// It was received with SMTPUTF8 (the envelope's `U` record).
    pub smtputf8: bool,
    /// Its envelope: the DSN parameters, and the recipients they belong to.
    pub env: Envelope,
}

const CHUNK: usize = 64 * 1024;

impl Message {
    pub fn open(path: &Path) -> io::Result<Message> {
        let qf = QueueFile::open(path)?;
        let env = qf.envelope()?;
        let mut m = Message {
            len: qf.message_len,
            qf,
            eightbit: false,
            utf8_head: false,
            smtputf8: env.smtputf8,
            env,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        let (mut head, mut line_start) = (true, true);
        while pos < m.len && (head || !m.eightbit) {
            let n = m.read(&mut buf, pos)?;
            for &b in &buf[..n] {
                if b >= 0x80 {
                    m.eightbit = true;
                    m.utf8_head |= head;
                }
                if head {
                    match b {
                        b'\n' if line_start => head = false,
                        b'\n' => line_start = true,
                        b'\r' => {}
                        _ => line_start = false,
                    }
                }
            }
            pos += n as u64;
        }
        Ok(m)
    }

    /// The message needs SMTPUTF8 from the next server (RFC 6531 §3.2): it was received with
    /// SMTPUTF8 and has UTF-8 in its header section (an address in the envelope is checked
    /// by the caller).
    pub fn needs_smtputf8(&self) -> bool {
        self.smtputf8 && self.utf8_head
    }

    /// `TLS-Required: No` in the header (RFC 8689 §4.3): the sender asks that recipient-side
    /// TLS policies (MTA-STS) be ignored for it; TLS is still used when offered.
    pub fn tls_optional(&self) -> bool {
        let head = self.qf.read_head(64 * 1024).unwrap_or_default();
        String::from_utf8_lossy(&head)
            .split('\n')
            .take_while(|l| !l.trim_end_matches('\r').is_empty())
            .filter_map(|l| l.split_once(':'))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("TLS-Required") && v.trim().eq_ignore_ascii_case("No")
            })
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.qf.read_at(buf, pos)
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
                        // A bare CR ends its line.
                        out.extend_from_slice(b"\r\n");
                        self.line_start = true;
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
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
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

    /// A temporary file name no other test thread uses.
    fn scratch(what: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("ferry-{what}-{}-{n}", std::process::id()))
    }

    fn open_with(body: &[u8], smtputf8: bool) -> (std::path::PathBuf, Option<Message>) {
        let dir = scratch("msg");
        let mut v = body.to_vec();
        v.extend(
            Envelope {
                sender: "a@b".into(),
                recipients: vec!["c@d".into()],
                smtputf8,
                requiretls: false,
                dsn: Default::default(),
            }
            .encode(),
        );
        v.extend_from_slice(ferry_common::queue::TRAILER1_MAGIC);
        v.extend_from_slice(&(body.len() as u64).to_le_bytes());
        std::fs::write(&dir, &v).unwrap_or(());
        let m = Message::open(&dir).ok();
        let _ = std::fs::remove_file(&dir);
        (dir, m)
    }

    #[test]
    fn utf8_headers_and_the_flag() {
        let (_, m) = open_with("Subject: caf\u{e9}\n\nbody\n".as_bytes(), true);
        let m = m.unwrap_or_else(|| panic!("open"));
        assert!(m.eightbit && m.utf8_head && m.smtputf8 && m.needs_smtputf8());
        let (_, m) = open_with("Subject: x\n\ncaf\u{e9}\n".as_bytes(), true);
        let m = m.unwrap_or_else(|| panic!("open"));
        assert!(m.eightbit && !m.utf8_head && !m.needs_smtputf8());
        let (_, m) = open_with("Subject: caf\u{e9}\r\n\r\nb\n".as_bytes(), false);
        let m = m.unwrap_or_else(|| panic!("open"));
        assert!(m.utf8_head && !m.smtputf8 && !m.needs_smtputf8());
    }

    fn wire_of(body: &[u8]) -> Vec<u8> {
        let dir = scratch("wire");
        let mut v = body.to_vec();
        v.extend(
            Envelope {
                sender: "a@b".into(),
                recipients: vec!["c@d".into()],
                smtputf8: false,
                requiretls: false,
                dsn: Default::default(),
            }
            .encode(),
        );
        v.extend_from_slice(ferry_common::queue::TRAILER1_MAGIC);
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

    #[test]
    fn no_bare_cr_or_lf_on_the_wire() {
        assert_eq!(wire_of(b"a\rb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(wire_of(b"x\r.\ry"), b"x\r\n..\r\ny\r\n.\r\n");
        assert_eq!(wire_of(b"x\r"), b"x\r\n.\r\n");
        assert_eq!(wire_of(b"x\r\r\n"), b"x\r\n\r\n.\r\n");
        // Whatever the input, every CR on the wire is followed by LF and every LF preceded by CR.
        for input in [&b"\r\r\n\n.\r.\n\r"[..], b"\n\r\n\r\r..\r", b"a\rb\nc\r\nd"] {
            let w = wire_of(input);
            for (i, b) in w.iter().enumerate() {
                if *b == b'\r' {
                    assert_eq!(w.get(i + 1), Some(&b'\n'), "{w:?}");
                }
                if *b == b'\n' {
                    assert!(i > 0 && w[i - 1] == b'\r', "{w:?}");
                }
            }
        }
    }
}
