//! Fuzz target: the client-side reply parser.  The first input byte picks a
//! chunk size; feeding in chunks must give the same replies as feeding the
//! whole input at once, and every reply must respect the limits.
#![no_main]

use ferry_smtp::ReplyParser;
use ferry_smtp::reply::{MAX_REPLY_LINE, MAX_REPLY_LINES};
use libfuzzer_sys::fuzz_target;

fn parse(input: &[u8], step: usize) -> Vec<String> {
    let mut p = ReplyParser::new();
    let mut got = Vec::new();
    for chunk in input.chunks(step) {
        p.feed(chunk);
        while let Some(r) = p.next_reply() {
            let failed = r.is_err();
            if let Ok(reply) = &r {
                assert!((200..=559).contains(&reply.code));
                assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_REPLY_LINES);
                // Lossy UTF-8 may triple a byte; no line can exceed that.
                assert!(reply.lines.iter().all(|l| l.len() <= 3 * MAX_REPLY_LINE));
                assert!(reply.lines.iter().all(|l| !l.chars().any(char::is_control)));
            }
            got.push(format!("{r:?}"));
            if failed {
                return got;
            }
        }
    }
    got
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let step = usize::from(first).max(1);
    assert_eq!(parse(data, data.len().max(1)), parse(data, step));
});
