//! Making writes durable: fsync of files and directories, and group commit with syncfs.
//!
//! ferry makes both the file contents and the directory entries durable before it confirms
//! anything (DESIGN.md §3). One fsync per file and per directory is the simple way; a
//! long-lived writer with several messages in flight instead issues one `syncfs` for all of
//! them (group commit): it flushes every dirty page and the journal of the filesystem once.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

/// fsync of a directory, so that the entries made in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One syncfs(2) of the filesystem holding `f`.
pub fn syncfs(f: &impl AsFd) -> io::Result<()> {
    nix::unistd::syncfs(f).map_err(io::Error::from)
}

/// Above this many files plus directories, one syncfs is cheaper than an fsync each.
pub const GROUP_COMMIT_MIN: usize = 3;

/// Makes `files` and `dirs` durable: an fsync each when there are few, else one syncfs per
/// filesystem among them (a delivery may write into Maildirs on several filesystems, and a
/// syncfs covers only its own). Returns how many syncfs calls were made.
pub fn sync_all(files: &[&File], dirs: &[&Path]) -> io::Result<usize> {
    if files.len() + dirs.len() < GROUP_COMMIT_MIN {
        for f in files {
            f.sync_all()?;
        }
        for d in dirs {
            sync_dir(d)?;
        }
        return Ok(0);
    }
    use std::os::unix::fs::MetadataExt;
    // One open file per filesystem (device) touched; directories are opened only when no
    // file of theirs has already named their filesystem.
    let mut seen: Vec<u64> = Vec::new();
    let mut count = 0;
    for f in files {
        let dev = f.metadata()?.dev();
        if !seen.contains(&dev) {
            seen.push(dev);
            syncfs(*f)?;
            count += 1;
        }
    }
    for d in dirs {
        let dev = std::fs::metadata(d)?.dev();
        if !seen.contains(&dev) {
            seen.push(dev);
            syncfs(&File::open(d)?)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17, item 17: files and directories on two filesystems (the temporary directory
    /// and /dev/shm, a tmpfs) get one syncfs each, not one for the first file only.
    #[test]
    fn group_commit_syncs_every_filesystem() {
        use std::os::unix::fs::MetadataExt;
        let a = tempfile::tempdir().unwrap();
        let Ok(b) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm: skipped");
            return;
        };
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(a.path()) == dev(b.path()) {
            eprintln!(
                "{} and /dev/shm are one filesystem: skipped",
                a.path().display()
            );
            return;
        }
        let mk = |d: &Path, n: &str| {
            let p = d.join(n);
            std::fs::write(&p, n).unwrap();
            File::open(p).unwrap()
        };
        let fa = [mk(a.path(), "1"), mk(a.path(), "2"), mk(a.path(), "5")];
        let fb = [mk(b.path(), "3"), mk(b.path(), "4")];
        let files: Vec<&File> = fa.iter().chain(fb.iter()).collect();
        assert_eq!(sync_all(&files, &[]).unwrap(), 2);
        assert_eq!(sync_all(&fa.iter().collect::<Vec<_>>(), &[]).unwrap(), 1);
        assert_eq!(sync_all(&[], &[a.path(), b.path(), a.path()]).unwrap(), 2);
        assert_eq!(sync_all(&[&fa[0], &fa[1]], &[b.path()]).unwrap(), 2);
        assert_eq!(sync_all(&[&fa[0]], &[a.path()]).unwrap(), 0);
    }
}
