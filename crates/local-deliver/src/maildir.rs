//! Maildir delivery in two phases, so that a batch of deliveries shares its syncs:
//! [`prepare`] writes the file into `tmp/` under a unique name; [`commit`] makes every prepared
//! file durable, links each into `new/` (link, never overwrite), removes the `tmp/` name and
//! makes the `new/` directories durable. Only then is a delivery reported done.
//!
//! Unique names follow the Maildir convention: `SECONDS.MmicrosPpidQcount.HOST,S=SIZE`.

use crate::message::Message;
use ferry_common::durable;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct Prepared {
    pub tmp: PathBuf,
    pub new: PathBuf,
    pub file: File,
}

/// Creates `dir` as a Maildir (dir, tmp/, new/, cur/), mode 0700; existing parts are kept.
pub fn create(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700).recursive(true);
    for sub in ["tmp", "new", "cur"] {
        b.create(dir.join(sub))?;
    }
    Ok(())
}

pub fn is_maildir(dir: &Path) -> bool {
    dir.join("tmp").is_dir() && dir.join("new").is_dir()
}

fn host_part(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// Writes `prefix` then the message into DIR/tmp/NAME (not yet synced); the kernel copies
/// the message bytes from lspawn's copy (ferry_sys::copy_range).
pub fn prepare(
    dir: &Path,
    host: &str,
    seq: u64,
    prefix: &[u8],
    msg: &Message,
    size: u64,
) -> io::Result<Prepared> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.M{}P{}Q{}.{},S={}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        seq,
        host_part(host),
        size
    );
    let tmp = dir.join("tmp").join(&name);
    let new = dir.join("new").join(&name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file
        .write_all(prefix)
        .and_then(|()| ferry_sys::copy_range(&msg.file, 0, msg.len, &file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Prepared { tmp, new, file })
}

/// Commits prepared files. Returns one result per file, in order.
pub fn commit(batch: Vec<Prepared>) -> Vec<io::Result<()>> {
    if batch.is_empty() {
        return Vec::new();
    }
    let files: Vec<&File> = batch.iter().map(|p| &p.file).collect();
    if let Err(e) = durable::sync_all(&files, &[]) {
        return batch
            .iter()
            .map(|p| {
                let _ = std::fs::remove_file(&p.tmp);
                Err(io::Error::new(
                    e.kind(),
                    format!("cannot sync {}: {e}", p.tmp.display()),
                ))
            })
            .collect();
    }
    let mut results = Vec::with_capacity(batch.len());
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in &batch {
        let r = std::fs::hard_link(&p.tmp, &p.new);
        let _ = std::fs::remove_file(&p.tmp);
        if r.is_ok()
            && let Some(d) = p.new.parent()
            && !dirs.iter().any(|x| x == d)
        {
            dirs.push(d.to_path_buf());
        }
        results.push(r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot link into {}: {e}", p.new.display()),
            )
        }));
    }
    let dir_refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    if let Err(e) = durable::sync_all(&[], &dir_refs) {
        for r in results.iter_mut() {
            if r.is_ok() {
                *r = Err(io::Error::new(e.kind(), format!("cannot sync new/: {e}")));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_commit() {
        let d = tempfile::tempdir().unwrap();
        let md = d.path().join("Maildir");
        create(&md).unwrap();
        let mut batch = Vec::new();
        for i in 0..4 {
            let body = format!("body {i}\n");
            let path = d.path().join(format!("msg{i}"));
            std::fs::write(&path, &body).unwrap();
            let msg = Message {
                file: File::open(&path).unwrap(),
                len: body.len() as u64,
            };
            batch.push(prepare(&md, "h/x:y", i, b"Delivered-To: a@b\n", &msg, 0).unwrap());
        }
        let first = std::fs::read(&batch[0].tmp).unwrap();
        assert_eq!(first, b"Delivered-To: a@b\nbody 0\n");
        assert!(batch[0].new.to_string_lossy().contains("h\\057x\\072y"));
        assert!(commit(batch).iter().all(|r| r.is_ok()));
        assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 4);
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    }
}
