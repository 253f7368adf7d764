//! The DATA decoder: end-of-data detection, dot-unstuffing and CR LF to LF
//! (RFC 5321 §4.1.1.4, §4.5.2), written against SMTP smuggling.
//!
//! The rules (project decisions):
//! * Only the exact bytes CR LF "." CR LF end the message; the first CR LF may
//!   be the start of the data.  A bare LF or bare CR never takes part in an
//!   end marker: `\n.\n`, `\r.\r`, `\n.\r\n`, `\r\n.\n`, `\r.\r\n` are data.
//! * Lines end with CR LF only; each CR LF is output as LF.  A bare LF is
//!   output as LF and a bare CR as CR, and both are recorded
//!   ([`DataDecoder::saw_bare_lf`], [`DataDecoder::saw_bare_cr`]) for the
//!   caller to decide.
//! * A line that starts with "." (at the start of the data or after CR LF)
//!   loses that dot; after a bare LF there is no line start.
//! * The final "." CR LF is not part of the message, the CR LF before it is.
//!
//! The decoder is a byte-at-a-time state machine whose state holds the bytes
//! it has seen but not yet decided on (a dot at line start, a CR), so input
//! may be split anywhere between calls.  It allocates only by appending to
//! the caller's output buffer, at most one byte per input byte.

/// What [`DataDecoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEvent {
    /// All the input was message data; feed more.
    More,
    /// The end marker was seen: the first `consumed` bytes of the input
    /// belonged to the message (end marker included); the rest, if any, is
    /// what the client sent next (pipelined commands).
    End {
        /// Bytes of this input that were part of the DATA stream.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: the previous bytes were CR LF, or nothing.
    LineStart,
    /// Inside a line.
    Text,
    /// Inside a line after a CR that is not yet output.
    Cr,
    /// After a "." at line start, not yet output.
    Dot,
    /// After "." CR at line start, neither yet output.
    DotCr,
    /// The end marker has been seen.
    Done,
}

/// Decodes the DATA stream; see the module documentation.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    bare_cr: bool,
    bare_lf: bool,
    line_len: usize,
    longest_line: usize,
    bytes_out: u64,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    /// A decoder at the start of the data (right after the 354 reply).
    pub fn new() -> Self {
        DataDecoder {
            state: State::LineStart,
            bare_cr: false,
            bare_lf: false,
            line_len: 0,
            longest_line: 0,
            bytes_out: 0,
        }
    }

    /// True when a CR not followed by LF was seen (and output as CR).
    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr
    }

    /// True when an LF not preceded by CR was seen (and output as LF).
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf
    }

    /// The longest line of the output in octets, not counting its LF: the
    /// SMTP line length without CR LF and without a stuffed dot.  RFC 5321
    /// §4.5.3.1.6 allows 998.  A bare LF ends an output line too.
    pub fn longest_line(&self) -> usize {
        self.longest_line.max(self.line_len)
    }

    /// Octets appended to the output so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// True once the end marker has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn put(&mut self, out: &mut Vec<u8>, b: u8) {
        out.push(b);
        self.bytes_out += 1;
        if b == b'\n' {
            self.longest_line = self.longest_line.max(self.line_len);
            self.line_len = 0;
        } else {
            self.line_len += 1;
        }
    }

    /// Copies ordinary text up to the next CR or LF; returns bytes taken.
    fn copy_text(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let n = memchr::memchr2(b'\r', b'\n', input).unwrap_or(input.len());
        out.extend_from_slice(&input[..n]);
        self.bytes_out += n as u64;
        self.line_len += n;
        n
    }

    /// A byte inside a line (state Text): returns the next state.
    fn text_byte(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        match b {
            b'\r' => State::Cr,
            b'\n' => {
                self.bare_lf = true;
                self.put(out, b'\n');
                State::Text
            }
            _ => {
                self.put(out, b);
                State::Text
            }
        }
    }

    /// Decodes the next chunk of DATA bytes, appending message bytes to
    /// `out`.  After [`DataEvent::End`], further calls consume nothing and
    /// return `End { consumed: 0 }`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataEvent {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Done {
                return DataEvent::End { consumed: 0 };
            }
            if self.state == State::Text {
                i += self.copy_text(&input[i..], out);
                // The common line end, CR LF, without a trip through the state machine; a
                // next line that starts with an ordinary byte is text at once.
                if input.get(i) == Some(&b'\r') && input.get(i + 1) == Some(&b'\n') {
                    self.put(out, b'\n');
                    i += 2;
                    self.state = match input.get(i) {
                        Some(b'.' | b'\r' | b'\n') | None => State::LineStart,
                        Some(_) => State::Text,
                    };
                    continue;
                }
                let Some(&b) = input.get(i) else { break };
                i += 1;
                self.state = self.text_byte(b, out);
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart, _) => self.text_byte(b, out),
                (State::Cr, b'\n') => {
                    self.put(out, b'\n');
                    State::LineStart
                }
                (State::Cr, _) => {
                    self.bare_cr = true;
                    self.put(out, b'\r');
                    self.text_byte(b, out)
                }
                (State::Dot, b'\r') => State::DotCr,
                // A line starting with "." and more: the dot is dropped.
                (State::Dot, _) => self.text_byte(b, out),
                (State::DotCr, b'\n') => {
                    self.state = State::Done;
                    return DataEvent::End { consumed: i };
                }
                (State::DotCr, _) => {
                    // "." CR x: a stuffed line whose text starts with a bare CR.
                    self.bare_cr = true;
                    self.put(out, b'\r');
                    self.text_byte(b, out)
                }
                (State::Text | State::Done, _) => self.state, // handled above
            };
        }
        if self.state == State::Done {
            return DataEvent::End { consumed: 0 };
        }
        DataEvent::More
    }
}

/// Which line-end irregularities [`normalize_crlf`] met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineEndFlags {
    /// A CR not followed by LF (kept as CR).
    pub bare_cr: bool,
    /// An LF not preceded by CR (kept as LF).
    pub bare_lf: bool,
}

/// Converts CR LF to LF in a BDAT chunk, keeping bare CR and bare LF.
/// `pending_cr` carries a CR that ended the previous chunk; start with
/// `false`.  After the last chunk call [`finish_crlf`], which outputs a CR
/// still pending.  The result is the same however the body is chunked.
pub fn normalize_crlf(input: &[u8], pending_cr: &mut bool, out: &mut Vec<u8>) -> LineEndFlags {
    let mut flags = LineEndFlags::default();
    let mut rest = input;
    if *pending_cr {
        match rest.first() {
            None => return flags,
            Some(b'\n') => {
                out.push(b'\n');
                rest = &rest[1..];
            }
            Some(_) => {
                out.push(b'\r');
                flags.bare_cr = true;
            }
        }
        *pending_cr = false;
    }
    while let Some(n) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.extend_from_slice(&rest[..n]);
        if rest[n] == b'\n' {
            flags.bare_lf = true;
            out.push(b'\n');
            rest = &rest[n + 1..];
        } else if let Some(&next) = rest.get(n + 1) {
            if next == b'\n' {
                out.push(b'\n');
                rest = &rest[n + 2..];
            } else {
                flags.bare_cr = true;
                out.push(b'\r');
                rest = &rest[n + 1..];
            }
        } else {
            *pending_cr = true;
            return flags;
        }
    }
    out.extend_from_slice(rest);
    flags
}

/// Ends a BDAT body: outputs a CR left pending by [`normalize_crlf`] and
/// returns true if there was one (a bare CR at the very end).
pub fn finish_crlf(pending_cr: &mut bool, out: &mut Vec<u8>) -> bool {
    let had = *pending_cr;
    if had {
        out.push(b'\r');
        *pending_cr = false;
    }
    had
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one piece: (output, end position).
    fn decode(input: &[u8]) -> (Vec<u8>, Option<usize>, DataDecoder) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        let end = match d.feed(input, &mut out) {
            DataEvent::End { consumed } => Some(consumed),
            DataEvent::More => None,
        };
        (out, end, d)
    }

    /// Decodes byte by byte.
    fn decode_bytewise(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            if let DataEvent::End { consumed } = d.feed(std::slice::from_ref(b), &mut out) {
                assert_eq!(consumed, 1);
                return (out, Some(i + 1));
            }
        }
        (out, None)
    }

    fn check(input: &[u8], output: &[u8], end: Option<usize>) {
        let (out, got_end, d) = decode(input);
        assert_eq!(out, output, "input {:?}", input.escape_ascii().to_string());
        assert_eq!(got_end, end, "input {:?}", input.escape_ascii().to_string());
        assert_eq!(d.bytes_out(), out.len() as u64);
        assert_eq!(decode_bytewise(input), (out, end));
    }

    #[test]
    fn end_of_data() {
        check(b"a\r\nb\r\n.\r\n", b"a\nb\n", Some(9));
        check(b".\r\n", b"", Some(3));
        check(b".\r\nQUIT\r\n", b"", Some(3));
        check(b"x\r\n.\r\nRSET\r\n", b"x\n", Some(6));
        check(b"\r\n.\r\n", b"\n", Some(5));
        check(b"a\r\n", b"a\n", None);
        check(b"a\r\n.", b"a\n", None);
        check(b"a\r\n.\r", b"a\n", None);
    }

    #[test]
    fn dot_unstuffing() {
        check(b"..x\r\n.\r\n", b".x\n", Some(8));
        check(b"a\r\n..\r\n.\r\n", b"a\n.\n", Some(10));
        check(b".x\r\n.\r\n", b"x\n", Some(7));
        check(b"a.\r\n.b\r\n.\r\n", b"a.\nb\n", Some(11));
        check(b"...\r\n.\r\n", b"..\n", Some(8));
    }

    #[test]
    fn smuggling_never_ends() {
        for evil in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b".\n",
            b".\r",
            b"\n.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"a\r\n.\r\r\n",
            b"a\r\n. \r\n",
            b"a\r\n\0.\r\n",
        ] {
            let (_, end, _) = decode(evil);
            assert_eq!(end, None, "{:?}", evil.escape_ascii().to_string());
            assert_eq!(decode_bytewise(evil).1, None);
        }
    }

    #[test]
    fn bare_line_ends_are_kept_and_flagged() {
        let (out, end, d) = decode(b"a\nb\r\n.\r\n");
        assert_eq!((out.as_slice(), end), (&b"a\nb\n"[..], Some(8)));
        assert!(d.saw_bare_lf() && !d.saw_bare_cr());
        let (out, _, d) = decode(b"a\rb\r\n.\r\n");
        assert_eq!(out, b"a\rb\n");
        assert!(d.saw_bare_cr() && !d.saw_bare_lf());
        let (out, _, d) = decode(b"a\r\r\n.\r\n");
        assert_eq!(out, b"a\r\n");
        assert!(d.saw_bare_cr());
        let (_, _, d) = decode(b"a\r\nb\r\n.\r\n");
        assert!(!d.saw_bare_cr() && !d.saw_bare_lf());
        // A dot after a bare LF is data, not a stuffed dot.
        check(b"a\n..\r\n.\r\n", b"a\n..\n", Some(9));
        check(b"a\r\n.\nb\r\n.\r\n", b"a\n\nb\n", Some(11));
        check(b".\r\r\n.\r\n", b"\r\n", Some(7));
        check(b"\r\r\n.\r\n", b"\r\n", Some(6));
        check(b"\n\r\n.\r\n", b"\n\n", Some(6));
    }

    #[test]
    fn line_lengths() {
        let (_, _, d) = decode(b"abc\r\n..de\r\nf\r\n.\r\n");
        assert_eq!(d.longest_line(), 3);
        let (_, _, d) = decode(b"abcdef\nab\r\n.\r\n");
        assert_eq!(d.longest_line(), 6);
        let (_, _, d) = decode(b"abcdef");
        assert_eq!(d.longest_line(), 6);
        let mut long = vec![b'x'; 1000];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&long).2.longest_line(), 1000);
    }

    #[test]
    fn after_end() {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        assert_eq!(
            d.feed(b"a\r\n.\r\nb", &mut out),
            DataEvent::End { consumed: 6 }
        );
        assert!(d.is_done());
        assert_eq!(
            d.feed(b"more\r\n.\r\n", &mut out),
            DataEvent::End { consumed: 0 }
        );
        assert_eq!(d.feed(b"", &mut out), DataEvent::End { consumed: 0 });
        assert_eq!(out, b"a\n");
        let mut fresh = DataDecoder::default();
        assert_eq!(fresh.feed(b"", &mut out), DataEvent::More);
    }

    fn normalize_chunks(chunks: &[&[u8]]) -> (Vec<u8>, LineEndFlags) {
        let mut pending = false;
        let mut out = Vec::new();
        let mut flags = LineEndFlags::default();
        for c in chunks {
            let f = normalize_crlf(c, &mut pending, &mut out);
            flags.bare_cr |= f.bare_cr;
            flags.bare_lf |= f.bare_lf;
        }
        flags.bare_cr |= finish_crlf(&mut pending, &mut out);
        (out, flags)
    }

    #[test]
    fn bdat_normalize() {
        let clean = LineEndFlags::default();
        assert_eq!(
            normalize_chunks(&[b"a\r\nb\r\n"]),
            (b"a\nb\n".to_vec(), clean)
        );
        assert_eq!(
            normalize_chunks(&[b"a\r", b"\nb\r", b"", b"\n"]),
            (b"a\nb\n".to_vec(), clean)
        );
        let cr = LineEndFlags {
            bare_cr: true,
            bare_lf: false,
        };
        let lf = LineEndFlags {
            bare_cr: false,
            bare_lf: true,
        };
        assert_eq!(normalize_chunks(&[b"a\r", b"b"]), (b"a\rb".to_vec(), cr));
        assert_eq!(normalize_chunks(&[b"a\r"]), (b"a\r".to_vec(), cr));
        assert_eq!(
            normalize_chunks(&[b"a\rb\r\r\n"]),
            (b"a\rb\r\n".to_vec(), cr)
        );
        assert_eq!(
            normalize_chunks(&[b"a\nb", b"\n"]),
            (b"a\nb\n".to_vec(), lf)
        );
        // Dots are not special in BDAT.
        assert_eq!(
            normalize_chunks(&[b".\r\n..\r\n"]),
            (b".\n..\n".to_vec(), clean)
        );
        let input = b"x\r\ny\rz\n\r\r\n.\r";
        let whole = normalize_chunks(&[input]);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let parts = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(normalize_chunks(&parts), whole, "{i} {j}");
            }
        }
    }
}
