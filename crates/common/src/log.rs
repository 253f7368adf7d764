//! Log lines: one line per event on stderr, which s6-log timestamps and rotates.
//!
//! Every line is written with a single write(2), so lines of processes sharing a log pipe
//! never interleave, and control characters from the network are made visible (`\n` → `\\n`)
//! so that nobody can forge a log line.

use std::io::Write;
use std::sync::OnceLock;

static NAME: OnceLock<&'static str> = OnceLock::new();

/// Sets the program name that starts every line.
pub fn init(name: &'static str) {
    let _ = NAME.set(name);
}

pub fn line(args: std::fmt::Arguments<'_>) {
    let name = NAME.get().copied().unwrap_or("ferry");
    let text = args.to_string();
    let mut out = String::with_capacity(name.len() + text.len() + 3);
    out.push_str(name);
    out.push_str(": ");
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c != '\t' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\n');
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// `log!("format", args...)`: one sanitized line on stderr, prefixed with the program name.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { $crate::log::line(format_args!($($t)*)) };
}

/// Makes a peer's text safe to quote in a log line or header: printable, bounded.
pub fn quote(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}
