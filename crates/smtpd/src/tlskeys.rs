//! The TLS key pair across a privilege drop: `smtpd -tlskeys`, a helper that keeps root's
//! right to read `control/tlscert` and `control/tlskey` for smtpd, which runs as ferryd.
//!
//! A CA's key usually lives where only root may read it (certbot: `control/tlskey` a symlink
//! to `/etc/letsencrypt/live/DOMAIN/privkey.pem`, in 0700 directories). smtpd reads the pair
//! itself at start, as root; before it drops to ferryd it starts this helper (same executable,
//! as the user smtpd started as) with one end of a socket pair on fd 0. On HUP smtpd writes one
//! byte; the helper reads the two files again (following symlinks, at most [`MAX_PEM`] bytes
//! each) and answers one record (crate ferry_common::record):
//!
//! - `P cert key`: the PEM bytes of both files, for smtpd to parse and check;
//! - `N`: neither file exists (STARTTLS goes off);
//! - `E text`: why not (one file missing, unreadable, too big).
//!
//! The helper takes no input but that byte: no path, no data from the network or from smtpd
//! reaches it, it parses nothing (smtpd parses the PEM, as ferryd), and it can hand out only
//! what smtpd was given at start anyway. It exits when smtpd closes the socket.

use ferry_common::record::{self, Record};
use ferry_common::root::Root;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Most bytes read of each file (a certificate chain is a few KiB).
pub const MAX_PEM: u64 = 1 << 20;

/// How long smtpd waits for the helper's answer (it reads two local files).
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The PEM bytes of control/tlscert and control/tlskey; None when neither exists.
pub type Pair = Option<(Vec<u8>, Vec<u8>)>;

fn read_bounded(root: &Root, name: &str) -> Result<Option<Vec<u8>>, String> {
    let path = root.control_file(name);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("control/{name}: {e}")),
    };
    let mut buf = Vec::new();
    f.take(MAX_PEM + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("control/{name}: {e}"))?;
    if buf.len() as u64 > MAX_PEM {
        return Err(format!("control/{name}: longer than {MAX_PEM} bytes"));
    }
    Ok(Some(buf))
}

/// Reads the pair as the calling user (root at smtpd's start, and in the helper).
pub fn read_pair(root: &Root) -> Result<Pair, String> {
    match (
        read_bounded(root, "tlscert")?,
        read_bounded(root, "tlskey")?,
    ) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err("control/tlscert exists without control/tlskey".into()),
        (None, Some(_)) => Err("control/tlskey exists without control/tlscert".into()),
    }
}

/// `smtpd -tlskeys`: answers each request byte on fd 0 until smtpd closes it. Exit code.
pub fn serve(root: &Root) -> i32 {
    let _ = nix::sys::prctl::set_name(c"smtpd-tlskeys");
    let Some(fd) = ferry_sys::take_fd(0) else {
        return 111;
    };
    let mut sock = UnixStream::from(fd);
    let mut byte = [0u8; 1];
    loop {
        match sock.read(&mut byte) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 111,
        }
        let answer = match read_pair(root) {
            Ok(Some((c, k))) => Record::new(b'P').with(c).with(k),
            Ok(None) => Record::new(b'N'),
            Err(e) => Record::new(b'E').with(e),
        };
        if record::write_blocking(&mut sock, &answer).is_err() {
            return 111;
        }
    }
}

/// smtpd's end: asks the helper for the pair as it is on disk now.
pub struct Keeper {
    sock: UnixStream,
    /// A request failed half-way: the stream is out of step, so it is not used again.
    broken: bool,
}

impl Keeper {
    pub fn new(sock: UnixStream) -> io::Result<Keeper> {
        sock.set_read_timeout(Some(ANSWER_WAIT))?;
        sock.set_write_timeout(Some(ANSWER_WAIT))?;
        Ok(Keeper {
            sock,
            broken: false,
        })
    }

    pub fn fetch(&mut self) -> Result<Pair, String> {
        const GONE: &str = "the key helper (smtpd -tlskeys) is gone: restart smtpd";
        if self.broken {
            return Err(GONE.into());
        }
        self.broken = true;
        let failed = |e: io::Error| format!("the key helper (smtpd -tlskeys) failed: {e}");
        self.sock.write_all(b"R").map_err(failed)?;
        let r = record::read_blocking(&mut self.sock)
            .map_err(failed)?
            .ok_or_else(|| GONE.to_string())?;
        self.broken = false;
        match r.kind {
            b'P' => Ok(Some((
                r.bytes(0).map_err(|e| e.to_string())?.to_vec(),
                r.bytes(1).map_err(|e| e.to_string())?.to_vec(),
            ))),
            b'N' => Ok(None),
            _ => Err(r.str(0).unwrap_or("the key helper failed").to_string()),
        }
    }
}
