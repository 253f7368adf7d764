//! Checking passwords outside smtpd: `smtpd -auth`, the password checker.
//!
//! smtpd in submission mode (`-submission`, `-smtps`) starts it as root before dropping to
//! ferryd; the child runs as `ferrya`, the only user that can read `control/passwords`
//! (0640 root:ferrya). It gets one end of a socket pair on fd 0 and nothing else: no network,
//! no queue. Records (crate ferry_common::record), one request at a time:
//!
//! smtpd → checker: `Q id name password` (id: smtpd's number for the session; name and
//! password at most [`ferry_smtp::sasl::MAX_PART`] bytes each).
//! checker → smtpd: `Y id name` (the name as the password file spells it), `N id` (unknown
//! name or wrong password: the same answer, after the same work), `T id text` (the file
//! cannot be read or is malformed: a temporary failure, 454).
//!
//! `control/passwords`: `name:$argon2id$v=19$m=...` per line (ferryctl passwd writes it);
//! names compare without regard to case. The file is read again when its mtime or size
//! changes. An unknown name is checked against a fixed dummy hash, so that it costs what a
//! wrong password costs — unless `control/checkpassword` names a program: then a name that is
//! not in the file is asked of it (qmail's checkpassword interface, [`checkpassword`]: so that
//! vpopmail's vchkpw or an LDAP wrapper plug in), as ferrya, at most [`CHECKPASSWORD_WAIT`].

use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
use ferry_common::log;
use ferry_common::record::{self, Outbox, Reader, Record};
use ferry_common::root::Root;
use mio::net::UnixStream;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The longest password file read (a line is about 120 bytes).
pub const MAX_FILE: u64 = 16 << 20;

/// A hash of a password nobody knows, with ferryctl passwd's parameters.
const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZmVycnlkdW1teXNhbHQ$6zoFQGQ2v6CWr8u4Kp5a1Jq1Qp1Yb8F2m5X2xKzS3Vw";

/// The parsed file: lowercase name → (name as written, hash).
type Table = HashMap<String, (String, String)>;

fn load(root: &Root) -> Result<Table, String> {
    let path = root.control_file("passwords");
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Table::new()),
        Err(e) => return Err(format!("control/passwords: {e}")),
    };
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("control/passwords: {e}"))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(format!("control/passwords: longer than {MAX_FILE} bytes"));
    }
    parse(&String::from_utf8_lossy(&buf))
}

/// `name:hash` lines; `#` comments and blank lines are ignored.
pub fn parse(text: &str) -> Result<Table, String> {
    let mut t = Table::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(format!(
                "control/passwords line {}: expected name:hash",
                n + 1
            ));
        };
        if name.is_empty() || PasswordHash::new(hash).is_err() {
            return Err(format!(
                "control/passwords line {}: expected name:$argon2id$...",
                n + 1
            ));
        }
        t.insert(name.to_lowercase(), (name.to_string(), hash.to_string()));
    }
    Ok(t)
}

/// The verdict for one name and password.
pub fn check(table: &Table, name: &str, password: &str) -> Option<String> {
    let argon = argon2::Argon2::default();
    match table.get(&name.to_lowercase()) {
        Some((written, hash)) => {
            let ok = PasswordHash::new(hash)
                .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok());
            ok.then(|| written.clone())
        }
        None => {
            if let Ok(h) = PasswordHash::new(DUMMY) {
                let _ = argon.verify_password(password.as_bytes(), &h);
            }
            None
        }
    }
}

/// How long a checkpassword program may take before the answer is "temporary".
pub const CHECKPASSWORD_WAIT: Duration = Duration::from_secs(10);

/// qmail's checkpassword interface: `program args... /bin/true` with `name\0password\0\0` on
/// fd 3 (at most 512 bytes). Exit 0: good; 1 (or any other failure of the program): bad;
/// 111, a timeout, or a program that cannot be started: temporary.
pub fn checkpassword(argv: &[String], name: &str, password: &str) -> Verdict {
    let Some((prog, args)) = argv.split_first() else {
        return Verdict::Bad;
    };
    let mut data = Vec::with_capacity(name.len() + password.len() + 3);
    data.extend_from_slice(name.as_bytes());
    data.push(0);
    data.extend_from_slice(password.as_bytes());
    data.extend_from_slice(b"\0\0");
    if data.len() > 512 || name.contains('\0') || password.contains('\0') {
        return Verdict::Bad;
    }
    let (rd, mut wr) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            log!("auth: checkpassword: {e}");
            return Verdict::Temporary;
        }
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .arg("/bin/true")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    ferry_sys::command_fds(&mut cmd, vec![(rd.as_raw_fd(), 3)]);
    ferry_sys::command_close_from(&mut cmd, 4);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log!("auth: cannot run checkpassword {prog}: {e}");
            return Verdict::Temporary;
        }
    };
    drop(cmd);
    drop(rd);
    // 512 bytes fit in any pipe: this never blocks.
    let _ = std::io::Write::write_all(&mut wr, &data);
    drop(wr);
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return match st.code() {
                    Some(0) => Verdict::Ok(name.to_string()),
                    Some(111) => Verdict::Temporary,
                    _ => Verdict::Bad,
                };
            }
            Ok(None) if start.elapsed() < CHECKPASSWORD_WAIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                log!("auth: checkpassword {prog} took longer than {CHECKPASSWORD_WAIT:?}: killed");
                let _ = child.kill();
                let _ = child.wait();
                return Verdict::Temporary;
            }
        }
    }
}

/// `smtpd -auth`: answers requests on fd 0 until smtpd closes it. Exit code.
pub fn serve(root: &Root, checkpassword_argv: &[String]) -> i32 {
    let _ = nix::sys::prctl::set_name(c"smtpd-auth");
    let Some(fd) = ferry_sys::take_fd(0) else {
        return 111;
    };
    let mut sock = std::os::unix::net::UnixStream::from(fd);
    let mut cache: Option<((i64, u64), Table)> = None;
    loop {
        let r = match record::read_blocking(&mut sock) {
            Ok(Some(r)) => r,
            Ok(None) => return 0,
            Err(e) => {
                log!("auth: {e}");
                return 111;
            }
        };
        let (Ok(id), Ok(name), Ok(password)) = (r.u64(0), r.str(1), r.str(2)) else {
            log!("auth: malformed request");
            return 111;
        };
        let stamp = std::fs::metadata(root.control_file("passwords"))
            .map(|m| (m.mtime_nsec() ^ m.mtime(), m.size()))
            .unwrap_or((0, 0));
        if cache.as_ref().is_none_or(|(s, _)| *s != stamp) {
            cache = match load(root) {
                Ok(t) => Some((stamp, t)),
                Err(e) => {
                    log!("auth: {e}");
                    None
                }
            };
        }
        let answer = match &cache {
            None => Record::new(b'T')
                .with_u64(id)
                .with("the password file cannot be read"),
            // A name not in the file goes to the checkpassword program, if there is one.
            Some((_, t))
                if !checkpassword_argv.is_empty() && !t.contains_key(&name.to_lowercase()) =>
            {
                match checkpassword(checkpassword_argv, name, password) {
                    Verdict::Ok(n) => Record::new(b'Y').with_u64(id).with(n),
                    Verdict::Bad => Record::new(b'N').with_u64(id),
                    Verdict::Temporary => Record::new(b'T')
                        .with_u64(id)
                        .with("checkpassword failed temporarily"),
                }
            }
            Some((_, t)) => match check(t, name, password) {
                Some(n) => Record::new(b'Y').with_u64(id).with(n),
                None => Record::new(b'N').with_u64(id),
            },
        };
        if record::write_blocking(&mut sock, &answer).is_err() {
            return 111;
        }
    }
}

/// The checker's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The name as the password file has it.
    Ok(String),
    Bad,
    Temporary,
}

/// smtpd's end of the checker's socket (non-blocking, in the event loop).
pub struct Checker {
    pub sock: UnixStream,
    input: Reader,
    out: Outbox,
}

impl Checker {
    pub fn new(sock: std::os::unix::net::UnixStream) -> io::Result<Checker> {
        sock.set_nonblocking(true)?;
        Ok(Checker {
            sock: UnixStream::from_std(sock),
            input: Reader::new(),
            out: Outbox::default(),
        })
    }

    pub fn ask(&mut self, id: u64, name: &str, password: &str) {
        self.out
            .push(&Record::new(b'Q').with_u64(id).with(name).with(password));
        if let Err(e) = self.out.flush_to(&mut self.sock) {
            log!("auth: cannot reach the password checker: {e}");
        }
    }

    /// Writes what waits; reads the answers there are. Err when the checker is gone.
    pub fn event(&mut self) -> io::Result<Vec<(u64, Verdict)>> {
        self.out.flush_to(&mut self.sock)?;
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return Err(io::Error::other("the password checker exited")),
                Ok(n) => self.input.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut got = Vec::new();
        while let Some(r) = self.input.next_record()? {
            let id = r.u64(0)?;
            got.push((
                id,
                match r.kind {
                    b'Y' => Verdict::Ok(r.str(1)?.to_string()),
                    b'N' => Verdict::Bad,
                    _ => Verdict::Temporary,
                },
            ));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher;

    #[test]
    fn names_and_passwords() {
        let hash = argon2::Argon2::default()
            .hash_password(b"secret")
            .map(|h| h.to_string())
            .unwrap_or_default();
        let t = parse(&format!("# users\nBob@Virt.example:{hash}\n\n")).unwrap();
        assert_eq!(
            check(&t, "bob@virt.example", "secret").as_deref(),
            Some("Bob@Virt.example")
        );
        assert_eq!(check(&t, "bob@virt.example", "Secret"), None);
        assert_eq!(check(&t, "nobody", "secret"), None);
        assert!(parse("bob:plaintext\n").is_err());
        assert!(parse("bob\n").is_err());
        assert!(PasswordHash::new(DUMMY).is_ok());
    }
}
