//! Fuzz target: the DATA decoder.  The first input byte picks where to split
//! the rest; decoding in two pieces must give exactly what decoding in one
//! piece gives (output, end position, flags), and the end must be a real
//! CR LF "." CR LF.
#![no_main]

use ferry_smtp::{DataDecoder, DataEvent};
use libfuzzer_sys::fuzz_target;

fn decode(parts: &[&[u8]]) -> (Vec<u8>, Option<usize>, bool, bool, usize) {
    let mut d = DataDecoder::new();
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for part in parts {
        if let DataEvent::End { consumed } = d.feed(part, &mut out) {
            assert!(consumed <= part.len());
            end = Some(offset + consumed);
            break;
        }
        offset += part.len();
    }
    assert_eq!(d.bytes_out(), out.len() as u64);
    (out, end, d.saw_bare_cr(), d.saw_bare_lf(), d.longest_line())
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let cut = if data.is_empty() {
        0
    } else {
        usize::from(first) % (data.len() + 1)
    };
    let whole = decode(&[data]);
    let (a, b) = data.split_at(cut);
    assert_eq!(whole, decode(&[a, b]));
    if let Some(end) = whole.1 {
        assert!(data[..end].ends_with(b".\r\n"));
        assert!(end == 3 || data[..end].ends_with(b"\r\n.\r\n"));
    }
    assert!(whole.0.len() <= data.len());
});
