//! The hop count of a message (mail loops, RFC 5321 §6.3): the number of `Received:` header
//! fields in its header section, counted as the message streams past (LF or CRLF line ends,
//! any piece boundaries). smtpd refuses a message with more than `maxhops` of them at the end
//! of DATA/BDAT with 554 5.4.6, and so does `queue` for local injection.

/// Counts `Received:` fields of the header section; stops at the empty line after it.
#[derive(Clone, Debug)]
pub struct HopCounter {
    count: u64,
    /// Still in the header section.
    in_header: bool,
    /// Bytes of the current line seen so far (only the first few matter).
    col: usize,
    /// The current line still matches `received:` (case-insensitive) in its first `col` bytes.
    matching: bool,
    /// The current line starts with CR (so CR LF alone is the empty line).
    first_cr: bool,
}

const FIELD: &[u8] = b"received:";

impl Default for HopCounter {
    fn default() -> Self {
        HopCounter::new()
    }
}

impl HopCounter {
    pub fn new() -> HopCounter {
        HopCounter {
            count: 0,
            in_header: true,
            col: 0,
            matching: true,
            first_cr: false,
        }
    }

    /// Received fields seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if !self.in_header {
                return;
            }
            if b == b'\n' {
                // An empty line (or a lone CR) ends the header section.
                if self.col == 0 || (self.col == 1 && self.first_cr) {
                    self.in_header = false;
                }
                self.col = 0;
                self.matching = true;
                continue;
            }
            if self.col < FIELD.len() {
                self.matching &= b.eq_ignore_ascii_case(&FIELD[self.col]);
                if self.matching && self.col + 1 == FIELD.len() {
                    self.count += 1;
                }
            }
            if self.col == 0 {
                self.first_cr = b == b'\r';
            }
            self.col = self.col.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn count(msg: &[u8]) -> u64 {
        let mut h = HopCounter::new();
        h.feed(msg);
        h.count()
    }

    #[test]
    fn counts_header_fields_only() {
        assert_eq!(
            count(b"Received: a\nreceived: b\n\tcont\nSubject: x\n\nReceived: body\n"),
            2
        );
        assert_eq!(
            count(b"RECEIVED:a\r\nReceived: b\r\n\r\nReceived: c\r\n"),
            2
        );
        assert_eq!(count(b"X-Received: a\nReceived-SPF: b\nReceived a\n\n"), 0);
        assert_eq!(count(b""), 0);
        assert_eq!(count(b"\nReceived: a\n"), 0);
    }

    #[test]
    fn pieces_do_not_matter() {
        let msg = b"Received: 1\r\nReceived: 2\nFrom: a\nReceived: 3\n\nReceived: 4\n";
        for cut in 0..msg.len() {
            let mut h = HopCounter::new();
            h.feed(&msg[..cut]);
            h.feed(&msg[cut..]);
            assert_eq!(h.count(), 3, "cut at {cut}");
        }
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: the same count, never more than the lines of the message.
        #[test]
        fn any_split_counts_the_same(msg in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b"Received: x\n".to_vec()),
                proptest::strategy::Just(b"\r\n".to_vec()),
                proptest::strategy::Just(b"\n".to_vec()),
                proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            ], 0..40).prop_map(|v| v.concat()), cut in 0usize..1000) {
            let whole = count(&msg);
            let cut = cut.min(msg.len());
            let mut h = HopCounter::new();
            h.feed(&msg[..cut]);
            h.feed(&msg[cut..]);
            proptest::prop_assert_eq!(h.count(), whole);
            proptest::prop_assert!(whole <= msg.iter().filter(|b| **b == b'\n').count() as u64 + 1);
        }
    }
}
