//! Property tests of ferry-smtp:
//! 1. the DATA decoder gives the same result however its input is split;
//! 2. a parsed mailbox's canonical form parses back to the same mailbox;
//! 3. `parse_command` never panics;
//! 4. dot-stuffing a message and decoding it returns the message;
//!
//! Also: the reply parser is split-invariant and never panics.

use ferry_smtp::{
    DataDecoder, DataEvent, ForwardPath, Mailbox, ReplyParser, parse_command, parse_command_with,
    parse_forward_path, parse_mailbox,
};
use proptest::prelude::*;

/// Everything observable after decoding.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    out: Vec<u8>,
    end: Option<usize>,
    bare_cr: bool,
    bare_lf: bool,
    longest: usize,
    bytes_out: u64,
}

fn decode_chunks(input: &[u8], cuts: &[usize]) -> Decoded {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    let mut d = DataDecoder::new();
    let mut out = Vec::new();
    let mut end = None;
    let mut from = 0;
    for cut in cuts {
        if let DataEvent::End { consumed } = d.feed(&input[from..cut], &mut out) {
            assert!(consumed <= cut - from);
            end = Some(from + consumed);
            break;
        }
        from = cut;
    }
    Decoded {
        out,
        end,
        bare_cr: d.saw_bare_cr(),
        bare_lf: d.saw_bare_lf(),
        longest: d.longest_line(),
        bytes_out: d.bytes_out(),
    }
}

/// DATA-like bytes: mostly the interesting ones.
fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"a".to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

/// Strings that often are, or are close to, valid addresses.
fn address_like() -> impl Strategy<Value = String> {
    let local = prop_oneof![
        "[a-zA-Z0-9!#%+_'=?^`{|}~/-]{1,10}(\\.[a-zA-Z0-9%+_-]{1,8}){0,2}",
        "\"[ -~]{0,12}\"",
        "\"[a-z @.\\\\\"()äß]{0,10}\"",
        "[a-zäöüß]{1,6}(\\.[A-Zé]{1,4})?",
    ];
    let domain = prop_oneof![
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]{1,8}){0,3}",
        "[a-zA-ZäÄİßΣ0-9]{1,8}(\\.[a-zA-ZΣİK]{1,6}){0,2}",
        "\\[[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\]",
        "\\[[iI][pP]v6:[0-9a-fA-F:]{2,20}\\]",
    ];
    (local, domain).prop_map(|(l, d)| format!("<{l}@{d}>"))
}

fn check_roundtrip(s: &[u8], utf8: bool) -> Result<(), TestCaseError> {
    if let Ok((ForwardPath::Mailbox(m), _)) = parse_forward_path(s, utf8) {
        let canonical = m.to_string();
        let again: Result<Mailbox, _> = parse_mailbox(canonical.as_bytes(), utf8);
        prop_assert_eq!(again.as_ref(), Ok(&m), "canonical {:?}", canonical);
        let bracketed = format!("<{canonical}>");
        let (p, n) = parse_forward_path(bracketed.as_bytes(), utf8)
            .map_err(|e| TestCaseError::fail(format!("{bracketed}: {e}")))?;
        prop_assert_eq!(p, ForwardPath::Mailbox(m));
        prop_assert_eq!(n, bracketed.len());
    }
    Ok(())
}

fn parse_replies_split(input: &[u8], step: usize) -> Vec<String> {
    let mut p = ReplyParser::new();
    let mut got = Vec::new();
    for chunk in input.chunks(step.max(1)) {
        p.feed(chunk);
        while let Some(r) = p.next_reply() {
            let failed = r.is_err();
            got.push(format!("{r:?}"));
            if failed {
                return got;
            }
        }
    }
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn data_split_invariance(input in data_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = decode_chunks(&input, &[]);
        let split = decode_chunks(&input, &cuts);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.bytes_out, whole.out.len() as u64);
        // Only CR LF "." CR LF can end the data.
        if let Some(end) = whole.end {
            let marker_ok = input[..end].ends_with(b"\r\n.\r\n") || end == 3;
            prop_assert!(marker_ok && input[end - 3..end] == *b".\r\n");
        }
    }

    #[test]
    fn mailbox_roundtrip(s in address_like()) {
        check_roundtrip(s.as_bytes(), true)?;
        check_roundtrip(s.as_bytes(), false)?;
    }

    #[test]
    fn mailbox_roundtrip_bytes(s in prop::collection::vec(any::<u8>(), 0..40)) {
        let mut input = b"<".to_vec();
        input.extend_from_slice(&s);
        check_roundtrip(&input, true)?;
        check_roundtrip(&s, true)?;
    }

    #[test]
    fn parse_command_no_panic(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_command(&line);
        let _ = parse_command_with(&line, true);
    }

    #[test]
    fn parse_command_no_panic_structured(
        verb in prop::sample::select(vec![
            "MAIL FROM:", "RCPT TO:", "mail from: ", "EHLO ", "HELO ", "BDAT ", "AUTH ",
            "VRFY ", "HELP ", "DATA", "NOOP ",
        ]),
        rest in "[ -~äö\\x00\\r\\n]{0,60}",
    ) {
        let line = format!("{verb}{rest}");
        let _ = parse_command(line.as_bytes());
        let _ = parse_command_with(line.as_bytes(), true);
    }

    #[test]
    fn dot_stuffing_roundtrip(lines in prop::collection::vec("[^\r\n]{0,20}|\\.{1,3}[a\\.]{0,3}", 0..20)) {
        let mut message = Vec::new();
        let mut wire = Vec::new();
        for line in &lines {
            message.extend_from_slice(line.as_bytes());
            message.push(b'\n');
            if line.starts_with('.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let decoded = decode_chunks(&wire, &[]);
        prop_assert_eq!(decoded.out, message);
        prop_assert_eq!(decoded.end, Some(wire.len()));
        prop_assert!(!decoded.bare_cr && !decoded.bare_lf);
    }

    #[test]
    fn reply_split_invariance(
        input in prop::collection::vec(prop_oneof![
            Just(b"250-".to_vec()), Just(b"250 ".to_vec()), Just(b"550 5.1.1 ".to_vec()),
            Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b"x".to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ], 0..60).prop_map(|v| v.concat()),
        step in 1usize..10,
    ) {
        let whole = parse_replies_split(&input, input.len());
        prop_assert_eq!(whole, parse_replies_split(&input, step));
    }
}

/// Guards property 2 against vacuity: most generated addresses must parse.
#[test]
fn address_generator_is_meaningful() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = address_like();
    let (mut ok_utf8, mut ok_ascii, mut quoted) = (0, 0, 0);
    for _ in 0..1000 {
        let s = strategy.new_tree(&mut runner).expect("generate").current();
        if let Ok((ForwardPath::Mailbox(m), _)) = parse_forward_path(s.as_bytes(), true) {
            ok_utf8 += 1;
            quoted += usize::from(m.local_is_quoted_needed());
        }
        ok_ascii += usize::from(parse_forward_path(s.as_bytes(), false).is_ok());
    }
    eprintln!("parsed: {ok_utf8} with SMTPUTF8, {ok_ascii} without, {quoted} need quotes");
    assert!(ok_utf8 > 300 && ok_ascii > 100 && quoted > 50);
}
