//! Message ids: 128 random bits in lower-case hex (32 characters). Queue files are spread
//! over subdirectories named by the first two hex digits.

use std::fmt;
use std::io;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId([u8; 16]);

impl MsgId {
    pub fn random() -> io::Result<MsgId> {
        let mut b = [0u8; 16];
        ferry_sys::random_bytes(&mut b)?;
        Ok(MsgId(b))
    }

    /// Parses exactly 32 lower-case hex digits.
    pub fn parse(s: &str) -> Option<MsgId> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            b[i] = (hexval(pair[0])? << 4) | hexval(pair[1])?;
        }
        Some(MsgId(b))
    }

    /// The subdirectory name: the first two hex digits.
    pub fn split(&self) -> String {
        format!("{:02x}", self.0[0])
    }

    /// A short form for log lines (the first 12 digits).
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({self})")
    }
}

/// All 256 subdirectory names, "00" to "ff".
pub fn splits() -> impl Iterator<Item = String> {
    (0..=255u8).map(|i| format!("{i:02x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_roundtrip() {
        let id = MsgId::random().unwrap();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(MsgId::parse(&s), Some(id));
        assert_eq!(&s[..2], id.split());
        assert!(MsgId::parse("XYZ").is_none());
        assert!(MsgId::parse(&s.to_uppercase()).is_none() || s.chars().all(|c| c.is_ascii_digit()));
        assert_eq!(splits().count(), 256);
    }
}
