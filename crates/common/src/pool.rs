//! Recycled queue files: queue/pool/ holds emptied files of delivered messages, and a new
//! message takes one instead of creating a file.
//!
//! Why: on ext4 without a journal (these machines), allocating an inode skips every free
//! inode of the group that was freed in the last 60 to 360 seconds (ialloc.c's
//! `recently_deleted`), reading the inode table for each. A queue that creates and deletes a
//! file per message makes that scan grow with the rate: it was 40 % of ferry's CPU per
//! message under load (docs/BENCHMARKS.md). A renamed file needs no new inode.
//!
//! - Taking ([`Pool::take`]): open pool/NAME, lock it (flock, not blocking: whoever holds the
//!   lock owns it), check that the name is its only link, rename it to tmp/ID, empty it.
//!   (Renames are not synced: after a crash a pool name may come back beside the todo/ name
//!   of the message that took the file; the link count tells, and only the name goes.) A name another writer took fails the lock
//!   or the rename and is skipped; with no name left the caller creates a file as before.
//! - Giving back ([`give_back`], by clean, once a message is finished): only a regular file
//!   with no other link, locked, renamed to a new random name, emptied, unlocked (a writer
//!   takes only what it can lock, so it never finds a file still being emptied); at most
//!   [`MAX_POOL`] files (beyond that, or on any error, it is removed as before).
//! - A file in the pool is garbage: nothing reads it, a crash leaves nothing to recover, and
//!   it keeps its owner, group and mode (ferryq:ferry 0640, as tmp/ made it).

use nix::fcntl::{Flock, FlockArg};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Most files kept in queue/pool/.
pub const MAX_POOL: usize = 512;
/// Names read from queue/pool/ at a time.
const NAMES_PER_READ: usize = 64;

#[derive(Clone, Debug)]
pub struct Pool {
    dir: PathBuf,
    /// Names read from the directory and not tried yet.
    names: Arc<Mutex<Vec<OsString>>>,
}

impl Pool {
    pub fn new(queue_dir: &Path) -> Pool {
        Pool {
            dir: queue_dir.join("pool"),
            names: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A pooled file renamed to `to`, locked and empty; None when the pool has none.
    pub fn take(&self, to: &Path) -> Option<Flock<File>> {
        let mut names = self.names.lock().ok()?;
        for _ in 0..2 {
            while let Some(name) = names.pop() {
                if let Some(f) = self.try_take(&self.dir.join(&name), to) {
                    return Some(f);
                }
            }
            // Read more names (a miss is cheap: one readdir per NAMES_PER_READ messages).
            *names = std::fs::read_dir(&self.dir)
                .ok()?
                .flatten()
                .map(|e| e.file_name())
                .take(NAMES_PER_READ)
                .collect();
            if names.is_empty() {
                return None;
            }
        }
        None
    }

    fn try_take(&self, from: &Path, to: &Path) -> Option<Flock<File>> {
        use std::os::unix::fs::MetadataExt;
        let file = OpenOptions::new().read(true).write(true).open(from).ok()?;
        let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
        // A pool name that is not the file's only link (a crash kept a name the rename had
        // removed, next to the message now using the file): drop the name, keep the file.
        if !locked
            .metadata()
            .is_ok_and(|m| m.is_file() && m.nlink() == 1)
        {
            let _ = std::fs::remove_file(from);
            return None;
        }
        // Only the holder of the lock renames; a name gone meanwhile is someone else's.
        std::fs::rename(from, to).ok()?;
        match locked.set_len(0) {
            Ok(()) => Some(locked),
            Err(_) => {
                let _ = std::fs::remove_file(to);
                None
            }
        }
    }
}

/// Counts what clean gives back, so that the pool stays under [`MAX_POOL`] without a
/// readdir per message (writers take files without telling it).
#[derive(Debug, Default)]
pub struct Giver {
    /// Files in the pool when last counted, plus those given since.
    count: usize,
    since_count: usize,
}

impl Giver {
    /// Removes the finished message file at `path`, or empties it and puts it into the
    /// pool of `queue_dir`. Err only when it could not be removed either (NotFound is Ok).
    pub fn give_back(&mut self, queue_dir: &Path, path: &Path) -> io::Result<()> {
        if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
            return Ok(());
        }
        if self.since_count == 0 || self.since_count >= NAMES_PER_READ {
            self.count = std::fs::read_dir(queue_dir.join("pool"))
                .map(|d| d.count())
                .unwrap_or(MAX_POOL);
            self.since_count = 0;
        }
        if self.count < MAX_POOL && self.pool(queue_dir, path).is_ok() {
            self.count += 1;
            self.since_count += 1;
            return Ok(());
        }
        self.since_count += 1;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn pool(&self, queue_dir: &Path, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let file = OpenOptions::new().write(true).open(path)?;
        // Locked from before the rename until emptied: a writer may find the pool name as
        // soon as it exists, and it takes only a file whose lock it gets; without the lock
        // the emptying here could cut a new message it had begun to write (it did, in CI).
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::other(format!("locked: {e}")))?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(io::Error::other("not a lone regular file"));
        }
        let mut r = [0u8; 8];
        ferry_sys::random_bytes(&mut r)?;
        let name = format!("{:016x}", u64::from_ne_bytes(r));
        // Renamed first, emptied after: a clean killed between the two leaves a full file in
        // the pool (a taker empties it), never an empty file under the message's name, which
        // send would find in todo/ as a broken message (crashstates found it).
        std::fs::rename(path, queue_dir.join("pool").join(name))?;
        file.set_len(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_go_round_and_keep_their_inode() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["pool", "tmp", "mess"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        let done = d.path().join("mess/a");
        std::fs::write(&done, b"an old message").unwrap();
        let ino = std::fs::metadata(&done).unwrap().ino();
        let mut giver = Giver::default();
        giver.give_back(d.path(), &done).unwrap();
        assert!(!done.exists());
        let pool = Pool::new(d.path());
        let to = d.path().join("tmp/b");
        let f = pool.take(&to).unwrap();
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!((meta.ino(), meta.len()), (ino, 0), "emptied, same inode");
        // Held by its lock: nobody else can take it meanwhile.
        assert!(Flock::lock(File::open(&to).unwrap(), FlockArg::LockExclusiveNonblock).is_err());
        drop(f);
        // Empty pool: nothing to take.
        assert!(pool.take(&d.path().join("tmp/c")).is_none());
    }

    #[test]
    fn a_file_with_another_link_is_removed_not_pooled() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["pool", "mess", "todo"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        let done = d.path().join("mess/a");
        std::fs::write(&done, b"x").unwrap();
        std::fs::hard_link(&done, d.path().join("todo/a")).unwrap();
        Giver::default().give_back(d.path(), &done).unwrap();
        assert!(!done.exists());
        assert_eq!(std::fs::read_dir(d.path().join("pool")).unwrap().count(), 0);
        assert_eq!(std::fs::read(d.path().join("todo/a")).unwrap(), b"x");
    }

    #[test]
    fn a_file_someone_holds_locked_is_removed_not_pooled() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["pool", "mess"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        let done = d.path().join("mess/a");
        std::fs::write(&done, b"x").unwrap();
        let held = Flock::lock(File::open(&done).unwrap(), FlockArg::LockExclusiveNonblock);
        assert!(held.is_ok());
        Giver::default().give_back(d.path(), &done).unwrap();
        assert!(!done.exists());
        assert_eq!(std::fs::read_dir(d.path().join("pool")).unwrap().count(), 0);
    }

    #[test]
    fn the_pool_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["pool", "mess"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        let mut giver = Giver::default();
        for i in 0..MAX_POOL + 10 {
            let p = d.path().join(format!("mess/{i}"));
            std::fs::write(&p, b"x").unwrap();
            giver.give_back(d.path(), &p).unwrap();
            assert!(!p.exists());
        }
        assert_eq!(
            std::fs::read_dir(d.path().join("pool")).unwrap().count(),
            MAX_POOL
        );
    }
}
