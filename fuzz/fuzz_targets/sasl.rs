//! Fuzz target: SMTP AUTH's SASL parsing. The input is split at its first newline into an
//! `AUTH` argument and the lines that follow; every exchange must end in credentials or an
//! error without a panic, base64 must round-trip, and decoded parts stay within MAX_PART.
#![no_main]

use ferry_smtp::sasl::{self, Exchange, MAX_PART, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Some(d) = sasl::decode(input) {
        assert_eq!(sasl::encode(&d).as_bytes(), input);
    }
    let mut lines = input.split(|b| *b == b'\n');
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut words = first.split(' ');
    let mech = words.next().unwrap_or("");
    let initial = words.next();
    let Ok((mut ex, mut step)) = Exchange::start(mech, initial) else {
        return;
    };
    loop {
        if let Step::Done(c) = &step {
            assert!(c.user.len() <= MAX_PART && c.password.len() <= MAX_PART);
            assert!(!c.user.is_empty() && !c.password.is_empty());
            return;
        }
        let (Some(e), Some(line)) = (ex.take(), lines.next()) else {
            return;
        };
        match e.line(line) {
            Ok((e, s)) => {
                ex = e;
                step = s;
            }
            Err(_) => return,
        }
    }
});
