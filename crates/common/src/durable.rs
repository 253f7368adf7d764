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

/// Makes `files` and `dirs` durable: an fsync each when there are few, else one syncfs.
pub fn sync_all(files: &[&File], dirs: &[&Path]) -> io::Result<()> {
    if files.len() + dirs.len() < GROUP_COMMIT_MIN {
        for f in files {
            f.sync_all()?;
        }
        for d in dirs {
            sync_dir(d)?;
        }
        return Ok(());
    }
    match (files.first(), dirs.first()) {
        (Some(f), _) => syncfs(*f),
        (None, Some(d)) => syncfs(&File::open(d)?),
        (None, None) => Ok(()),
    }
}
