//! A program's answer to HUP, read back from its log: `ferryctl reload` marks where
//! ROOT/log/SERVICE/current ends, sends HUP, and reads the lines written after the mark
//! (following s6-log's rotation) until one says `reloaded` or `reload refused`. smtpd has no
//! control socket (it runs as ferryd, facing the network), so this is how its verdict is
//! known; send's comes over queue/ctl/send and this is only its fallback.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a verdict is waited for after the HUP.
pub const WAIT: Duration = Duration::from_secs(5);
/// Most bytes read after the mark (s6-log's files are 1 MB).
const MAX_READ: u64 = 2 << 20;

/// Where the log ended before the HUP.
pub struct Mark {
    dir: PathBuf,
    ino: u64,
    len: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The line that says so, and warnings logged with it (`reload: ...`).
    Reloaded(String, Vec<String>),
    Refused(String),
    /// Why no verdict could be read.
    Unknown(String),
}

pub fn current(dir: &Path) -> PathBuf {
    dir.join("current")
}

/// Marks the end of DIR/current now.
pub fn mark(dir: &Path) -> Result<Mark, String> {
    let path = current(dir);
    let m = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // Readable too, not only there (a separated root's logs are ferryl's, 0750).
    std::fs::File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Mark {
        dir: dir.to_path_buf(),
        ino: m.ino(),
        len: m.len(),
    })
}

fn read_from(path: &Path, off: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(off))?;
    let room = MAX_READ.saturating_sub(out.len() as u64);
    f.take(room).read_to_end(out)?;
    Ok(())
}

/// The bytes written since the mark: the rest of the marked file (renamed to `@….s` by a
/// rotation) and then a new `current`.
fn since(mark: &Mark) -> Result<Vec<u8>, String> {
    let cur = current(&mark.dir);
    let m = std::fs::metadata(&cur).map_err(|e| format!("cannot read {}: {e}", cur.display()))?;
    let mut out = Vec::new();
    if m.ino() == mark.ino {
        read_from(&cur, mark.len, &mut out).map_err(|e| e.to_string())?;
        return Ok(out);
    }
    let rd = std::fs::read_dir(&mark.dir).map_err(|e| e.to_string())?;
    for e in rd.flatten() {
        if e.metadata().is_ok_and(|m| m.ino() == mark.ino) {
            let _ = read_from(&e.path(), mark.len, &mut out);
            break;
        }
    }
    read_from(&cur, 0, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The verdict in complete lines `text` of program `name`, if there is one yet.
pub fn parse(name: &str, text: &str) -> Option<Verdict> {
    let tag = format!("{name}: ");
    let mut warnings = Vec::new();
    // Only whole lines: the last one may still be being written.
    let whole = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => return None,
    };
    for line in whole.lines() {
        let Some(i) = line.find(&tag) else { continue };
        let said = line[i + tag.len()..].trim();
        if let Some(why) = said.strip_prefix("reload refused") {
            let why = why.trim_start_matches(':').trim();
            return Some(Verdict::Refused(if why.is_empty() {
                said.to_string()
            } else {
                why.to_string()
            }));
        } else if said.starts_with("reload: ") {
            warnings.push(said.to_string());
        } else if said.contains("reloaded") {
            return Some(Verdict::Reloaded(said.to_string(), warnings));
        }
    }
    None
}

/// Waits (at most `limit`) for the verdict of program `name` after `mark`.
pub fn wait(mark: &Mark, name: &str, limit: Duration) -> Verdict {
    let deadline = Instant::now() + limit;
    loop {
        match since(mark) {
            Ok(bytes) => {
                if let Some(v) = parse(name, &String::from_utf8_lossy(&bytes)) {
                    return v;
                }
            }
            Err(e) => return Verdict::Unknown(e),
        }
        if Instant::now() >= deadline {
            return Verdict::Unknown(format!(
                "no answer in {} within {} s",
                current(&mark.dir).display(),
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn verdicts() {
        let ts = "2026-01-02 03:04:05.678901234 ";
        assert_eq!(parse("smtpd", ""), None);
        assert_eq!(
            parse(
                "smtpd",
                &format!(
                    "{ts}smtpd: session ip=1\n{ts}smtpd: control files reloaded; STARTTLS on\n"
                )
            ),
            Some(Verdict::Reloaded(
                "control files reloaded; STARTTLS on".into(),
                vec![]
            ))
        );
        assert_eq!(
            parse(
                "smtpd",
                &format!("{ts}smtpd: reload refused: relayclients line 1: bad\n")
            ),
            Some(Verdict::Refused("relayclients line 1: bad".into()))
        );
        // Another program's line, and a line not yet finished, are no verdict.
        assert_eq!(
            parse("smtpd", &format!("{ts}send: control files reloaded\n")),
            None
        );
        assert_eq!(parse("smtpd", "smtpd: control files reloaded"), None);
        assert_eq!(
            parse(
                "smtpd",
                "smtpd: reload: cannot read the key; keeping the old TLS settings\nsmtpd: control files reloaded; STARTTLS on\n"
            ),
            Some(Verdict::Reloaded(
                "control files reloaded; STARTTLS on".into(),
                vec!["reload: cannot read the key; keeping the old TLS settings".into()]
            ))
        );
    }

    #[test]
    fn lines_after_the_mark_across_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let cur = d.path().join("current");
        std::fs::write(&cur, "old: reload refused: before the mark\n").unwrap();
        let m = mark(d.path()).unwrap();
        assert_eq!(since(&m).unwrap(), b"");
        let mut f = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
        f.write_all(b"a\n").unwrap();
        // s6-log rotates: current becomes @....s, a new current starts.
        std::fs::rename(&cur, d.path().join("@400000001.s")).unwrap();
        std::fs::write(&cur, "b\n").unwrap();
        assert_eq!(since(&m).unwrap(), b"a\nb\n");
    }
}
