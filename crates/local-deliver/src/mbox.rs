//! mbox delivery: append one message in the mboxo/mboxrd style every mail reader knows:
//! a `From sender date` line, the header lines ferry adds, the message with `>From ` quoting
//! of lines that start with `>*From `, and a blank line. Locked with a dot-lock file (when the
//! directory allows it) and an fcntl lock; synced; on any error the file is cut back to its
//! old length, so that nothing is left half-written.

use nix::fcntl::{FcntlArg, fcntl};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LOCK_WAIT: Duration = Duration::from_secs(60);
const STALE_DOTLOCK: Duration = Duration::from_secs(300);

struct DotLock(Option<PathBuf>);

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn dotlock(path: &Path) -> io::Result<DotLock> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let start = Instant::now();
    loop {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&lock)
        {
            Ok(_) => return Ok(DotLock(Some(lock))),
            // A directory we may not write (e.g. /var/mail without group mail): fcntl only.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(DotLock(None)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > STALE_DOTLOCK)
                    .unwrap_or(false);
                if stale {
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                if start.elapsed() > LOCK_WAIT {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{} is locked", path.display()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn fcntl_lock(f: &File) -> io::Result<()> {
    let lk = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let start = Instant::now();
    loop {
        match fcntl(f, FcntlArg::F_SETLK(&lk)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EACCES | nix::errno::Errno::EAGAIN)
                if start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Appends the message to the mbox at `path` (created 0600 if missing).
pub fn deliver(path: &Path, from_line: &str, prefix: &[u8], msg: &mut dyn Read) -> io::Result<()> {
    let _dot = dotlock(path)?;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    fcntl_lock(&f)?;
    let old_len = f.metadata()?.len();
    let res = (|| -> io::Result<()> {
        let mut out = io::BufWriter::with_capacity(64 * 1024, &mut f);
        out.write_all(from_line.as_bytes())?;
        out.write_all(prefix)?;
        let mut last_nl = true;
        let mut r = BufReader::with_capacity(64 * 1024, msg);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let unquoted = line
                .iter()
                .position(|b| *b != b'>')
                .map(|i| &line[i..])
                .unwrap_or(&[]);
            if unquoted.starts_with(b"From ") {
                out.write_all(b">")?;
            }
            out.write_all(&line)?;
            last_nl = line.ends_with(b"\n");
        }
        if !last_nl {
            out.write_all(b"\n")?;
        }
        out.write_all(b"\n")?;
        out.flush()?;
        drop(out);
        f.sync_all()
    })();
    if res.is_err() {
        let _ = f.set_len(old_len);
        let _ = f.sync_all();
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_with_quoting() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mbox");
        deliver(
            &p,
            "From a@b Fri Nov 27 19:36:57 2026\n",
            b"Return-Path: <a@b>\n",
            &mut &b"S: x\n\nFrom me\n>From you\nend"[..],
        )
        .unwrap();
        deliver(
            &p,
            "From c@d Fri Nov 27 19:36:58 2026\n",
            b"",
            &mut &b"S: y\n\nhi\n"[..],
        )
        .unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            got,
            "From a@b Fri Nov 27 19:36:57 2026\nReturn-Path: <a@b>\nS: x\n\n>From me\n>>From you\nend\n\n\
             From c@d Fri Nov 27 19:36:58 2026\nS: y\n\nhi\n\n"
        );
        assert!(!d.path().join("mbox.lock").exists());
    }
}
