//! Fuzz target: `parse_command` on arbitrary bytes must not panic, and a
//! parsed MAIL/RCPT mailbox must survive its canonical form.
#![no_main]

use ferry_smtp::{Command, ForwardPath, ReversePath, parse_command_with, parse_mailbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    for smtputf8 in [false, true] {
        let mailbox = match parse_command_with(line, smtputf8) {
            Ok(Command::Mail(ReversePath::Mailbox(m), _)) => m,
            Ok(Command::Rcpt(ForwardPath::Mailbox(m), _)) => m,
            _ => continue,
        };
        let canonical = mailbox.to_string();
        let again = parse_mailbox(canonical.as_bytes(), true);
        assert_eq!(again.as_ref(), Ok(&mailbox), "canonical form {canonical:?}");
    }
});
