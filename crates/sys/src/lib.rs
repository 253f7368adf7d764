//! ferry-sys: the only crate of ferry that may use `unsafe`.
//!
//! Everything here is a thin, documented wrapper around a system call that the
//! safe libraries (std, nix) do not offer in the form ferry needs: dropping
//! privileges between fork and exec, adopting inherited file descriptors,
//! receiving descriptors over a Unix socket, and the random id source.
//! Each `unsafe` block carries a `// SAFETY:` comment.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

pub use nix::unistd::{Gid, Uid};

/// A Unix identity to run as: numeric ids and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: std::path::PathBuf,
    pub shell: std::path::PathBuf,
}

impl Cred {
    /// Looks a user up in the password database, with its supplementary groups.
    pub fn lookup(name: &str) -> io::Result<Option<Cred>> {
        let user = match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(None),
            Err(e) => return Err(io::Error::from(e)),
        };
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(Some(Cred {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
            shell: user.shell,
        }))
    }

    /// The identity of the running process (for single-user mode).
    pub fn current() -> Cred {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        Cred {
            name: user
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_else(|| uid.to_string()),
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            groups: vec![gid.as_raw()],
            home: user
                .as_ref()
                .map(|u| u.dir.clone())
                .unwrap_or_else(|| "/".into()),
            shell: user.map(|u| u.shell).unwrap_or_else(|| "/bin/sh".into()),
        }
    }
}

/// True when the real user id is root.
pub fn running_as_root() -> bool {
    nix::unistd::getuid().is_root()
}

/// Drops the whole process to `cred` for good: supplementary groups, then gid, then uid,
/// each with the saved id too, so that nothing can be regained. Verifies the result.
pub fn drop_privileges(cred: &Cred) -> io::Result<()> {
    let groups: Vec<Gid> = cred.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups)?;
    let g = Gid::from_raw(cred.gid);
    nix::unistd::setresgid(g, g, g)?;
    let u = Uid::from_raw(cred.uid);
    nix::unistd::setresuid(u, u, u)?;
    let ids = nix::unistd::getresuid()?;
    if ids.real != u || ids.effective != u || ids.saved != u {
        return Err(io::Error::other("privilege drop did not take"));
    }
    if cred.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(io::Error::other(
            "privilege drop did not take: uid 0 regained",
        ));
    }
    Ok(())
}

/// Arranges for a child started by `cmd` to run as `cred` (groups, gid, uid set between
/// fork and exec with async-signal-safe system calls only).
pub fn command_as(cmd: &mut Command, cred: &Cred) {
    let groups: Vec<libc::gid_t> = cred.groups.clone();
    let (uid, gid) = (cred.uid, cred.gid);
    // SAFETY: the closure runs in the child between fork and exec. It calls only
    // setgroups/setresgid/setresuid, which are async-signal-safe system calls, on data
    // prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Arranges for a child started by `cmd` to receive `fds` at the given descriptor numbers
/// (in addition to stdin/stdout/stderr, which `Command` handles itself). The sources stay
/// owned by the caller; close them after spawning.
pub fn command_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: runs in the child between fork and exec; uses only fcntl and dup2, which are
    // async-signal-safe, on numbers prepared before the fork. Sources are first moved above
    // every target so that no dup2 overwrites a source that is still needed.
    unsafe {
        cmd.pre_exec(move || {
            let mut moved = [0 as RawFd; 32];
            if fds.len() > moved.len() {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            for (i, (src, _)) in fds.iter().enumerate() {
                let high = libc::fcntl(*src, libc::F_DUPFD, 64);
                if high < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = high;
            }
            for (i, (_, dst)) in fds.iter().enumerate() {
                if libc::dup2(moved[i], *dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(moved[i]);
            }
            Ok(())
        });
    }
}

/// Arranges for a child started by `cmd` to have no descriptor numbered `first` or above
/// at exec, whatever the parent inherited without close-on-exec (s6's notification fd, a
/// caller's leftovers): only the descriptors its protocol names reach it. Register this
/// after [`command_fds`], whose targets must be below `first`.
pub fn command_close_from(cmd: &mut Command, first: RawFd) {
    // They are marked close-on-exec rather than closed now: std's own close-on-exec pipe,
    // which reports a failed exec (or a failed later pre_exec step) to the parent, is among
    // them and must stay open until the exec.
    // SAFETY: runs in the child between fork and exec; close_range and fcntl are
    // async-signal-safe system calls on plain numbers, and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if r != 0 {
                // Kernels before 5.11: mark them one by one.
                let mut fd = first;
                while fd < 65_536 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    fd += 1;
                }
            }
            Ok(())
        });
    }
}

/// A sealed, in-memory copy of the given (offset, length) ranges of `file`, one after the
/// other (memfd_create, then F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL):
/// nobody can change it, and it holds nothing but those bytes. lspawn gives local deliveries
/// such a copy of the message instead of the queue file, which also holds the envelope
/// (every recipient). The kernel copies the bytes (sendfile: no trip through this process).
pub fn sealed_copy(file: &std::fs::File, ranges: &[(u64, u64)]) -> io::Result<std::fs::File> {
    let copy = new_memfd()?;
    for &(start, len) in ranges {
        copy_range(file, start, len, &copy)?;
    }
    seal(copy)
}

/// Appends `len` bytes of `from` at `start` to `to` at its current offset, copied by the
/// kernel (sendfile); the offset of `from` is left alone. Err if `from` is shorter.
pub fn copy_range(
    from: &std::fs::File,
    start: u64,
    len: u64,
    to: &std::fs::File,
) -> io::Result<()> {
    let mut offset = libc::off_t::try_from(start).map_err(|_| short_file())?;
    let end = start.checked_add(len).ok_or_else(short_file)?;
    while (offset as u64) < end {
        let want = usize::try_from(end - offset as u64)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: sendfile between two descriptors the caller holds open, with a pointer to
        // a local offset that it advances; it returns the bytes copied, or -1.
        let n = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut offset, want) };
        match n {
            n if n > 0 => {}
            0 => return Err(short_file()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn short_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "message file shorter than recorded",
    )
}

fn new_memfd() -> io::Result<std::fs::File> {
    let name = c"ferry-message";
    // SAFETY: memfd_create takes a NUL-terminated name (a C string literal) and flags; it
    // returns a new descriptor that we own, or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and nothing else refers to it.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Seals a copy against any change (write, grow, shrink, more seals).
fn seal(copy: std::fs::File) -> io::Result<std::fs::File> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(copy)
}

/// Is `file` a copy [`sealed_copy`] made as `uid` (or as root): a regular file owned by one
/// of them that nobody can change any more? `queue` trusts the results recorded in such a
/// copy, as only lspawn (root) makes one of a queued message.
pub fn is_sealed_copy(file: &std::fs::File, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.file_type().is_file() || (meta.uid() != 0 && meta.uid() != uid) {
        return false;
    }
    // SAFETY: fcntl(F_GET_SEALS) on a descriptor the caller holds open; no pointer.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    let wanted = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    seals >= 0 && seals & wanted == wanted
}

/// Waits at most `timeout` for `fd` to be readable (or at its end). True if it is.
pub fn wait_readable(
    fd: &impl std::os::fd::AsFd,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms =
        PollTimeout::try_from(timeout.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes the child the leader of a new session (so that a stray terminal signal does not hit it).
pub fn command_setsid(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Takes ownership of an inherited descriptor number, if it is open.
pub fn take_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 || nix::fcntl::fcntl(borrow(fd), nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return None;
    }
    // SAFETY: the descriptor is open (F_GETFD succeeded) and by the protocol of the
    // calling program it was passed to us to own; nothing else in the process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(owned)
}

fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: only used for a single fcntl(F_GETFD) probe, which is harmless on any number.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Signals readiness to s6: writes a newline to descriptor `fd` and closes it.
pub fn notify_ready(fd: RawFd) {
    if let Some(owned) = take_fd(fd) {
        let mut f = std::fs::File::from(owned);
        let _ = io::Write::write_all(&mut f, b"\n");
    }
}

/// Fills `buf` with random bytes from the kernel (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own mutably.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Sends `data` with descriptor `fd` attached (SCM_RIGHTS) over a Unix stream socket.
/// Returns how many bytes of `data` were sent (the descriptor goes with the first byte).
pub fn send_with_fd(sock: &impl AsRawFd, data: &[u8], fd: RawFd) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(data)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)
}

/// Receives bytes into `buf` and the descriptors passed with them (SCM_RIGHTS), in order.
pub fn recv_with_fds(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_fds(sock, buf, nix::sys::socket::MsgFlags::empty())
}

/// [`recv_with_fds`] without waiting: None when nothing is there now. A stream socket hands
/// out what each sendmsg with descriptors sent separately (the descriptors are a boundary),
/// so a reader that wants everything already sent asks again with this.
pub fn try_recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    match recv_fds(sock, buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

fn recv_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    flags: nix::sys::socket::MsgFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 64]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | flags,
    )
    .map_err(io::Error::from)?;
    let mut got = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in our table for us;
                // nobody else refers to it.
                got.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other(
            "descriptors lost: control message truncated",
        ));
    }
    Ok((msg.bytes, got))
}

/// Raises the soft open-file limit toward `want` (up to the hard limit). Returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let target = want.min(hard).max(soft);
            if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
                return target;
            }
            soft
        }
        Err(_) => 0,
    }
}

/// Sets the core file size limit to zero (setuid programs must not dump core).
pub fn no_core_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
}

/// The host name of the machine (gethostname), or "localhost".
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Sets the process umask.
pub fn set_umask(mask: u32) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// Returns `(ruid, euid)`.
pub fn uids() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::geteuid().as_raw(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_fill() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_copy_of_ranges() {
        use std::io::{Read, Seek, Write};
        let mut src = new_memfd().unwrap();
        src.write_all(b"streamed bytes|HEAD|envelope").unwrap();
        let mut c = sealed_copy(&src, &[(15, 5), (0, 14)]).unwrap();
        let mut got = String::new();
        c.rewind().unwrap();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "HEAD|streamed bytes");
        assert!(c.write_all(b"x").is_err(), "sealed against writes");
        assert!(is_sealed_copy(&c, nix::unistd::getuid().as_raw()));
        // A range beyond the end of the file is an error, not a short copy.
        assert!(sealed_copy(&src, &[(20, 100)]).is_err());
    }

    #[test]
    fn fd_passing_roundtrip() {
        use std::io::{Read, Seek, Write};
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile_in_tmp();
        f.write_all(b"hello").unwrap();
        f.rewind().unwrap();
        assert_eq!(send_with_fd(&a, b"x", f.as_raw_fd()).unwrap(), 1);
        let mut buf = [0u8; 8];
        let (n, mut fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!((n, fds.len()), (1, 1));
        let mut got = std::fs::File::from(fds.remove(0));
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let mut name = [0u8; 8];
        random_bytes(&mut name).unwrap();
        let p = std::env::temp_dir().join(format!("ferry-sys-test-{:x}", u64::from_ne_bytes(name)));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    #[test]
    fn take_fd_rejects_closed() {
        assert!(take_fd(987).is_none());
    }
}
