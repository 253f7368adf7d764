//! send's per-message state file, `queue/info/XX/ID` (owned by ferrys).
//!
//! ```text
//! ferry-info 1
//! H0                      hold flag: 0 or 1, rewritten in place
//! B1795808217             birth: when the message was queued (unix seconds)
//! Fsender@example.org     envelope sender ("" for bounces, "#@[]" for double bounces)
//! R L joe@example.org     one line per recipient: state byte, channel (L local, R remote), address
//! RDRann@example.net      state ' ' pending, 'D' delivered, 'F' failed (bounce note below)
//! E1 1795808300 text      appended: a temporary failure of recipient 1 (0-based), with time
//! P0 1795808400 text      appended: the permanent failure of recipient 0, for the bounce
//! W1795822617             appended: a delay warning was sent then (delaywarningtime)
//! ```
//!
//! A recipient is marked by rewriting its one state byte in place and syncing the file
//! (after the delivery succeeded), so a crash may repeat a delivery but never loses one.
//! Failure notes are appended before the state byte changes to 'F'.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const MAGIC: &str = "ferry-info 1\n";
const HOLD_OFF: u64 = MAGIC.len() as u64 + 1;
/// Longest failure text kept per note.
pub const MAX_NOTE: usize = 600;
/// Largest info file read (a message with very many recipients and years of notes).
pub const MAX_INFO: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Local,
    Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Delivered,
    Failed,
}

impl State {
    pub fn byte(self) -> u8 {
        match self {
            State::Pending => b' ',
            State::Delivered => b'D',
            State::Failed => b'F',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rcpt {
    pub addr: String,
    pub channel: Channel,
    pub state: State,
    /// Offset of the state byte in the file.
    pub state_off: u64,
    /// Temporary failures so far, and the last one (time, text).
    pub attempts: u32,
    pub last_error: Option<(u64, String)>,
    /// The permanent failure text, for the bounce.
    pub failure: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub birth: u64,
    pub sender: String,
    pub hold: bool,
    pub rcpts: Vec<Rcpt>,
    /// When the delay warning was sent, if it was.
    pub warned: Option<u64>,
}

/// A recipient as send writes it into a new info file.
pub struct RcptInit<'a> {
    pub addr: &'a str,
    pub channel: Channel,
    pub state: State,
    /// Temporary failures so far: (time, text), oldest first.
    pub errors: &'a [(u64, String)],
    /// The permanent failure (time, text), for the bounce.
    pub failure: Option<(u64, &'a str)>,
}

/// The contents of an info file (recipients pending unless said otherwise).
pub fn encode(birth: u64, sender: &str, rcpts: &[(String, Channel)]) -> Vec<u8> {
    let init: Vec<RcptInit<'_>> = rcpts
        .iter()
        .map(|(a, c)| RcptInit {
            addr: a,
            channel: *c,
            state: State::Pending,
            errors: &[],
            failure: None,
        })
        .collect();
    encode_state(birth, sender, false, None, &init)
}

/// The contents of an info file for a message whose deliveries have already begun.
pub fn encode_state(
    birth: u64,
    sender: &str,
    hold: bool,
    warned: Option<u64>,
    rcpts: &[RcptInit<'_>],
) -> Vec<u8> {
    let mut s = String::with_capacity(64 + rcpts.iter().map(|r| r.addr.len() + 4).sum::<usize>());
    s.push_str(MAGIC);
    s.push_str(if hold { "H1\n" } else { "H0\n" });
    s.push_str(&format!("B{birth}\nF{sender}\n"));
    for r in rcpts {
        s.push('R');
        s.push(r.state.byte() as char);
        s.push(if r.channel == Channel::Local {
            'L'
        } else {
            'R'
        });
        s.push_str(r.addr);
        s.push('\n');
    }
    for (i, r) in rcpts.iter().enumerate() {
        for (t, text) in r.errors {
            s.push_str(&note_line(false, i, *t, text));
        }
        if let Some((t, text)) = r.failure {
            s.push_str(&note_line(true, i, t, text));
        }
    }
    if let Some(t) = warned {
        s.push_str(&format!("W{t}\n"));
    }
    s.into_bytes()
}

fn note_line(permanent: bool, idx: usize, when: u64, text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_NOTE)
        .collect();
    format!(
        "{}{idx} {when} {clean}\n",
        if permanent { 'P' } else { 'E' }
    )
}

fn bad(line: usize, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("info line {line}: {why}"),
    )
}

pub fn parse(buf: &[u8]) -> io::Result<Info> {
    let text = std::str::from_utf8(buf).map_err(|_| bad(0, "not UTF-8"))?;
    if !text.starts_with(MAGIC) {
        return Err(bad(1, "not a ferry info file"));
    }
    let mut info = Info {
        birth: 0,
        sender: String::new(),
        hold: false,
        rcpts: Vec::new(),
        warned: None,
    };
    let mut off = 0u64;
    let mut seen_sender = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let start = off;
        off += line.len() as u64;
        if n == 0 {
            continue;
        }
        let Some(body) = line.strip_suffix('\n') else {
            // A torn last line (a crash while appending a note): ignore it.
            break;
        };
        let (tag, rest) = body.split_at(body.len().min(1));
        match tag {
            "H" => info.hold = rest == "1",
            "B" => info.birth = rest.parse().map_err(|_| bad(n + 1, "bad birth"))?,
            "W" => info.warned = Some(rest.parse().map_err(|_| bad(n + 1, "bad warning time"))?),
            "F" => {
                info.sender = rest.to_string();
                seen_sender = true;
            }
            "R" => {
                let b = rest.as_bytes();
                if b.len() < 3 {
                    return Err(bad(n + 1, "short recipient line"));
                }
                let state = match b[0] {
                    b' ' => State::Pending,
                    b'D' => State::Delivered,
                    b'F' => State::Failed,
                    _ => return Err(bad(n + 1, "bad state")),
                };
                let channel = match b[1] {
                    b'L' => Channel::Local,
                    b'R' => Channel::Remote,
                    _ => return Err(bad(n + 1, "bad channel")),
                };
                info.rcpts.push(Rcpt {
                    addr: rest[2..].to_string(),
                    channel,
                    state,
                    state_off: start + 1,
                    attempts: 0,
                    last_error: None,
                    failure: None,
                });
            }
            "E" | "P" => {
                let mut parts = rest.splitn(3, ' ');
                let idx: usize = parts
                    .next()
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(|| bad(n + 1, "bad note"))?;
                let when: u64 = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                let text = parts.next().unwrap_or("").to_string();
                let r = info
                    .rcpts
                    .get_mut(idx)
                    .ok_or_else(|| bad(n + 1, "note for unknown recipient"))?;
                if tag == "E" {
                    r.attempts += 1;
                    r.last_error = Some((when, text));
                } else {
                    r.failure = Some(text);
                }
            }
            _ => return Err(bad(n + 1, "unknown line")),
        }
    }
    if !seen_sender || info.rcpts.is_empty() {
        return Err(bad(0, "incomplete (no sender or no recipient)"));
    }
    Ok(info)
}

/// Writes a new info file (replacing a partial one left by a crash). The caller syncs it.
/// (send writes `ID.tmp`, syncs, and renames it, so that an info file is always whole.)
pub fn create(path: &Path, contents: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    Ok(f)
}

pub fn read(path: &Path) -> io::Result<(File, Info)> {
    use std::io::Read;
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut buf = Vec::new();
    (&f).take(MAX_INFO).read_to_end(&mut buf)?;
    let info = parse(&buf)?;
    Ok((f, info))
}

/// Reads an info file without opening it for writing (ferryctl).
pub fn read_only(path: &Path) -> io::Result<Info> {
    use std::io::Read;
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_INFO).read_to_end(&mut buf)?;
    parse(&buf)
}

/// Rewrites one recipient's state byte (not synced: the caller syncs, possibly in a batch).
pub fn mark(f: &File, r: &Rcpt, state: State) -> io::Result<()> {
    f.write_all_at(&[state.byte()], r.state_off)
}

pub fn set_hold(f: &File, hold: bool) -> io::Result<()> {
    f.write_all_at(if hold { b"1" } else { b"0" }, HOLD_OFF)
}

/// Appends a failure note: `E` temporary, `P` permanent. The text is made one safe line.
pub fn append_note(f: &File, permanent: bool, idx: usize, when: u64, text: &str) -> io::Result<()> {
    let line = note_line(permanent, idx, when, text);
    let end = f.metadata()?.len();
    f.write_all_at(line.as_bytes(), end)
}

/// Appends the note that the delay warning was sent (not synced: the caller syncs).
pub fn append_warned(f: &File, when: u64) -> io::Result<()> {
    let end = f.metadata()?.len();
    f.write_all_at(format!("W{when}\n").as_bytes(), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_mark_note_reread() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("info");
        let rc = vec![
            ("joe@a.example".to_string(), Channel::Local),
            ("ann@b.example".to_string(), Channel::Remote),
        ];
        let f = create(&p, &encode(1000, "s@x.example", &rc)).unwrap();
        let (_, info) = read(&p).unwrap();
        assert_eq!(info.birth, 1000);
        assert_eq!(info.sender, "s@x.example");
        assert_eq!(info.rcpts.len(), 2);
        assert_eq!(info.rcpts[1].channel, Channel::Remote);
        append_note(&f, false, 1, 1001, "421 try\nlater").unwrap();
        append_note(&f, false, 1, 1002, "451 again").unwrap();
        mark(&f, &info.rcpts[0], State::Delivered).unwrap();
        append_note(&f, true, 1, 1003, "550 no such user").unwrap();
        mark(&f, &info.rcpts[1], State::Failed).unwrap();
        set_hold(&f, true).unwrap();
        let (_, again) = read(&p).unwrap();
        assert!(again.hold);
        assert_eq!(again.rcpts[0].state, State::Delivered);
        assert_eq!(again.rcpts[1].state, State::Failed);
        assert_eq!(again.rcpts[1].attempts, 2);
        assert_eq!(again.rcpts[1].last_error, Some((1002, "451 again".into())));
        assert_eq!(again.rcpts[1].failure.as_deref(), Some("550 no such user"));
        assert_eq!(again.warned, None);
        append_warned(&f, 1003).unwrap();
        assert_eq!(read(&p).unwrap().1.warned, Some(1003));
    }

    #[test]
    fn encode_state_keeps_marks_and_notes() {
        let errs = vec![(7u64, "451 later".to_string())];
        let rc = [
            RcptInit {
                addr: "a@b",
                channel: Channel::Local,
                state: State::Delivered,
                errors: &[],
                failure: None,
            },
            RcptInit {
                addr: "c@d",
                channel: Channel::Remote,
                state: State::Pending,
                errors: &errs,
                failure: None,
            },
            RcptInit {
                addr: "e@f",
                channel: Channel::Remote,
                state: State::Failed,
                errors: &[],
                failure: Some((8, "550 no")),
            },
        ];
        let i = parse(&encode_state(5, "s@x", true, Some(7), &rc)).unwrap();
        assert!(i.hold);
        assert_eq!(i.warned, Some(7));
        assert_eq!(i.rcpts[0].state, State::Delivered);
        assert_eq!(
            (i.rcpts[1].attempts, i.rcpts[1].last_error.clone()),
            (1, Some((7, "451 later".into())))
        );
        assert_eq!(i.rcpts[2].failure.as_deref(), Some("550 no"));
    }

    #[test]
    fn torn_note_is_ignored_but_garbage_is_not() {
        let mut v = encode(5, "", &[("a@b".into(), Channel::Local)]);
        v.extend_from_slice(b"E0 7 half a no");
        assert_eq!(parse(&v).unwrap().rcpts[0].attempts, 0);
        assert!(parse(b"ferry-info 1\nH0\nB1\n").is_err());
        assert!(parse(b"garbage").is_err());
    }
}
