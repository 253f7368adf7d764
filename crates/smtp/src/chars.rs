//! Byte classes shared by the parsers (RFC 5321 / RFC 5322 character sets).

/// RFC 5321 `atext`: the characters of an unquoted local-part atom.
pub(crate) fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// ASCII control characters: 0x00-0x1f and DEL.
pub(crate) fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Decodes the UTF-8 character starting at `s[i]`, returning it and its
/// length in bytes, or `None` if the bytes there are not valid UTF-8.
pub(crate) fn utf8_char_at(s: &[u8], i: usize) -> Option<(char, usize)> {
    let rest = s.get(i..)?;
    for len in 1..=4.min(rest.len()) {
        if let Ok(text) = std::str::from_utf8(&rest[..len]) {
            return text.chars().next().map(|c| (c, len));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atext() {
        assert!(is_atext(b'a') && is_atext(b'Z') && is_atext(b'9') && is_atext(b'%'));
        assert!(is_atext(b'!') && is_atext(b'~') && is_atext(b'/'));
        for b in [
            b'@', b'.', b' ', b'"', b'(', b'<', b'>', b'[', b',', b':', b'\\', 0x80,
        ] {
            assert!(!is_atext(b), "{b}");
        }
    }

    #[test]
    fn control() {
        assert!(is_control(0) && is_control(b'\t') && is_control(0x1f) && is_control(0x7f));
        assert!(!is_control(b' ') && !is_control(b'~') && !is_control(0x80));
    }

    #[test]
    fn utf8() {
        let s = "aé€😀".as_bytes();
        assert_eq!(utf8_char_at(s, 0), Some(('a', 1)));
        assert_eq!(utf8_char_at(s, 1), Some(('é', 2)));
        assert_eq!(utf8_char_at(s, 3), Some(('€', 3)));
        assert_eq!(utf8_char_at(s, 6), Some(('😀', 4)));
        assert_eq!(utf8_char_at(s, 2), None); // continuation byte
        assert_eq!(utf8_char_at(s, 10), None);
        assert_eq!(utf8_char_at(&[0xe2, 0x82], 0), None); // truncated
        assert_eq!(utf8_char_at(&[0xc0, 0x80], 0), None); // overlong
        assert_eq!(utf8_char_at(&[0xed, 0xa0, 0x80], 0), None); // surrogate
    }
}
