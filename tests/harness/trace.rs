//! strace output, parsed for the durability test (tests/durability.rs): which syscalls the
//! programs made, in which order, on which files; and a checker of the commit protocol of
//! docs/INTERNALS.md ("make the file durable, link it, make the directory durable, only then
//! acknowledge") that holds for any way of syncing (fsync, fdatasync, syncfs, sync).
//!
//! The trace must come from `strace -f -y -xx` into one file ([`STRACE_ARGS`]): `-xx` prints
//! every string and every `-y` path in hex, so nothing in a buffer or a file name can confuse
//! the parser. Order is the order of the lines: strace stops a process at every traced
//! syscall, so a call whose exit line comes before another call's entry line finished
//! before that call began.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The syscalls the checker looks at.
pub const SYSCALLS: &str = "fsync,fdatasync,syncfs,sync,link,linkat,rename,renameat,renameat2,\
write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,read,recvfrom,recvmsg,copy_file_range,\
sendfile,splice,openat,chdir,fchdir,clone,clone3,fork,vfork,exit_group";

/// The strace options the parser expects (then `-o FILE` and `-p PID`s or a command).
pub fn strace_args() -> Vec<String> {
    ["-f", "-y", "-xx", "-ttt", "-s", "1048576", "-e", SYSCALLS]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A token of a syscall's arguments or result that the checker uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A quoted string (decoded); true if strace cut it short (`"..."...`).
    Str(Vec<u8>, bool),
    /// A descriptor with its `-y` path (`AT_FDCWD` is -100).
    Fd(i64, PathBuf),
}

#[derive(Clone, Debug)]
pub struct Call {
    pub pid: u32,
    /// Line (0-based) of its entry and of its exit (the same for a call on one line).
    pub start: usize,
    pub end: usize,
    pub name: String,
    pub args: Vec<Tok>,
    /// The return value; None for `?` or something that is not a number.
    pub ret: Option<i64>,
    /// For link/rename calls: source and destination, absolute and normalised when the
    /// working directory was known.
    pub paths: Vec<PathBuf>,
}

impl Call {
    pub fn ok(&self) -> bool {
        self.ret.is_some_and(|r| r >= 0)
    }
    /// The first descriptor argument and its path.
    pub fn fd_path(&self) -> Option<&Path> {
        self.args.iter().find_map(|t| match t {
            Tok::Fd(_, p) => Some(p.as_path()),
            _ => None,
        })
    }
    fn strs(&self) -> Vec<&[u8]> {
        self.args
            .iter()
            .filter_map(|t| match t {
                Tok::Str(s, _) => Some(s.as_slice()),
                _ => None,
            })
            .collect()
    }
    /// For a write-like or read-like call: the bytes it moved (the strings of its arguments,
    /// up to the return value). Err if strace cut them short.
    pub fn data(&self) -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        let mut cut = false;
        for t in &self.args {
            if let Tok::Str(s, c) = t {
                v.extend_from_slice(s);
                cut |= *c;
            }
        }
        let n = self.ret.unwrap_or(0).max(0) as usize;
        if v.len() < n && cut {
            return Err(format!(
                "line {}: strace cut the data of {} short",
                self.start + 1,
                self.name
            ));
        }
        v.truncate(n);
        Ok(v)
    }
    fn is_write(&self) -> bool {
        matches!(
            self.name.as_str(),
            "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "sendto" | "sendmsg"
        )
    }
    fn is_read(&self) -> bool {
        matches!(self.name.as_str(), "read" | "recvfrom" | "recvmsg")
    }
    /// The descriptor a call writes file data into (copies included).
    fn written_path(&self) -> Option<&Path> {
        let fds: Vec<&Path> = self
            .args
            .iter()
            .filter_map(|t| match t {
                Tok::Fd(_, p) => Some(p.as_path()),
                _ => None,
            })
            .collect();
        match self.name.as_str() {
            n if self.is_write() && n != "sendto" && n != "sendmsg" => fds.first().copied(),
            "sendfile" => fds.first().copied(),
            "copy_file_range" | "splice" => fds.get(1).copied(),
            _ => None,
        }
    }
    fn is_link(&self) -> bool {
        matches!(
            self.name.as_str(),
            "link" | "linkat" | "rename" | "renameat" | "renameat2"
        )
    }
}

/// The end of a process: `+++ exited with N +++` (code) or killed (None).
#[derive(Clone, Debug)]
pub struct Exit {
    pub pid: u32,
    pub line: usize,
    pub code: Option<i32>,
}

#[derive(Default, Debug)]
pub struct Trace {
    pub calls: Vec<Call>,
    pub exits: Vec<Exit>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 4);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            let h = std::str::from_utf8(&b[i + 2..i + 4]).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 4;
        } else {
            // Not -xx output: take the byte as it is.
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn path_of(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// The tokens of an argument text: strings and annotated descriptors.
fn tokens(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let Some(len) = s[i + 1..].find('"') else {
                    break;
                };
                let body = &s[i + 1..i + 1 + len];
                i += len + 2;
                let cut = s[i..].starts_with("...");
                if cut {
                    i += 3;
                }
                out.push(Tok::Str(unhex(body).unwrap_or_default(), cut));
            }
            b'<' => {
                let Some(len) = s[i + 1..].find('>') else {
                    break;
                };
                let body = &s[i + 1..i + 1 + len];
                // The descriptor is the number (or AT_FDCWD) just before.
                let before = &s[..i];
                let word_start = before
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .map(|p| p + 1)
                    .unwrap_or(0);
                let word = &before[word_start..];
                let fd = if word == "AT_FDCWD" {
                    Some(-100)
                } else {
                    word.parse::<i64>().ok()
                };
                if let (Some(fd), Some(p)) = (fd, unhex(body)) {
                    out.push(Tok::Fd(fd, path_of(p)));
                }
                i += len + 2;
            }
            _ => i += 1,
        }
    }
    out
}

/// Lexical normalisation: drops `.`, folds `..`.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn resolve(base: Option<&Path>, p: &[u8]) -> PathBuf {
    let p = path_of(p.to_vec());
    match base {
        Some(b) if p.is_relative() => normalize(&b.join(p)),
        _ => normalize(&p),
    }
}

/// Splits `PID TIME REST` (TIME optional).
fn split_head(line: &str) -> Option<(u32, &str)> {
    let (pid, rest) = line.split_once(' ')?;
    let pid: u32 = pid.trim().parse().ok()?;
    let rest = rest.trim_start();
    let rest = match rest.split_once(' ') {
        Some((t, r)) if t.contains('.') && t.chars().all(|c| c.is_ascii_digit() || c == '.') => r,
        _ => rest,
    };
    Some((pid, rest))
}

/// Splits `ARGS) = RET` at the last ` = `.
fn split_ret(s: &str) -> (&str, Option<i64>) {
    match s.rfind(" = ") {
        Some(i) => {
            let ret_text = &s[i + 3..];
            let num = ret_text.split([' ', '<']).next().unwrap_or("");
            let ret = if let Some(h) = num.strip_prefix("0x") {
                i64::from_str_radix(h, 16).ok()
            } else {
                num.parse().ok()
            };
            (&s[..i], ret)
        }
        None => (s, None),
    }
}

impl Trace {
    pub fn read(path: &Path) -> Trace {
        Trace::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    pub fn parse(text: &str) -> Trace {
        let mut t = Trace::default();
        // Calls begun and not finished: pid -> (name, start line, argument text).
        let mut pending: HashMap<u32, (String, usize, String)> = HashMap::new();
        let mut cwd: HashMap<u32, PathBuf> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let Some((pid, rest)) = split_head(line) else {
                continue;
            };
            if let Some(r) = rest.strip_prefix("+++ ") {
                let code = r
                    .strip_prefix("exited with ")
                    .and_then(|x| x.split(' ').next())
                    .and_then(|x| x.parse().ok());
                t.exits.push(Exit { pid, line: n, code });
                continue;
            }
            if rest.starts_with("--- ") {
                continue;
            }
            let (name, start, whole) = if let Some(r) = rest.strip_prefix("<... ") {
                let Some((name, after)) = r.split_once(" resumed>") else {
                    continue;
                };
                let Some((pname, pstart, ptext)) = pending.remove(&pid) else {
                    continue;
                };
                if pname != name {
                    continue;
                }
                (pname, pstart, format!("{ptext}{after}"))
            } else {
                let Some(paren) = rest.find('(') else {
                    continue;
                };
                let name = rest[..paren].to_string();
                let args = &rest[paren + 1..];
                if let Some(a) = args.strip_suffix("<unfinished ...>") {
                    pending.insert(pid, (name, n, a.to_string()));
                    continue;
                }
                (name, n, args.to_string())
            };
            let (args_text, ret) = split_ret(&whole);
            let mut args = tokens(args_text);
            // The working directory, as AT_FDCWD<...> shows it.
            for a in &args {
                if let Tok::Fd(-100, p) = a {
                    cwd.insert(pid, p.clone());
                }
            }
            let mut call = Call {
                pid,
                start,
                end: n,
                name,
                args: Vec::new(),
                ret,
                paths: Vec::new(),
            };
            match call.name.as_str() {
                "link" | "rename" => {
                    let base = cwd.get(&pid).cloned();
                    call.args = std::mem::take(&mut args);
                    call.paths = call
                        .strs()
                        .iter()
                        .map(|s| resolve(base.as_deref(), s))
                        .collect();
                }
                "linkat" | "renameat" | "renameat2" => {
                    call.args = std::mem::take(&mut args);
                    let mut dir: Option<PathBuf> = None;
                    let mut paths = Vec::new();
                    for a in &call.args {
                        match a {
                            Tok::Fd(_, p) => dir = Some(p.clone()),
                            Tok::Str(s, _) => paths.push(resolve(dir.as_deref(), s)),
                        }
                    }
                    call.paths = paths;
                }
                "chdir" => {
                    call.args = std::mem::take(&mut args);
                    if call.ok()
                        && let Some(s) = call.strs().first()
                    {
                        let p = resolve(cwd.get(&pid).map(|p| p.as_path()), s);
                        cwd.insert(pid, p);
                    }
                }
                "fchdir" => {
                    call.args = std::mem::take(&mut args);
                    if call.ok()
                        && let Some(p) = call.fd_path()
                    {
                        cwd.insert(pid, p.to_path_buf());
                    }
                }
                "clone" | "clone3" | "fork" | "vfork" => {
                    if let (Some(child), Some(c)) = (ret, cwd.get(&pid).cloned())
                        && child > 0
                    {
                        cwd.insert(child as u32, c);
                    }
                    call.args = args;
                }
                _ => call.args = args,
            }
            t.calls.push(call);
        }
        t
    }

    /// The successful links or renames of `from` to `to`.
    pub fn links(&self, from: &Path, to: &Path) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.is_link() && c.ok() && c.paths.len() == 2)
            .filter(|c| c.paths[0] == from && c.paths[1] == to)
            .collect()
    }

    /// Every successful link or rename whose destination is in `dir`.
    pub fn links_into(&self, dir: &Path) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.is_link() && c.ok() && c.paths.len() == 2)
            .filter(|c| c.paths[1].parent() == Some(dir))
            .collect()
    }

    /// The records (crates/common/src/record.rs framing) that `pid` wrote (`write` true) or
    /// read on each socket, each with the index in `calls` of the call that carried its
    /// first byte. A socket whose bytes are not records (a log socket) is left out from its
    /// first bad record on. Err if strace cut a buffer short.
    pub fn records(
        &self,
        pid: u32,
        write: bool,
    ) -> Result<Vec<(ferry_common::record::Record, usize)>, String> {
        struct Stream {
            buf: Vec<u8>,
            /// (offset in buf where a call's bytes begin, call index).
            marks: Vec<(usize, usize)>,
            pos: usize,
            /// Not a record stream (a log socket carries text lines): ignored.
            dead: bool,
        }
        let mut streams: HashMap<PathBuf, Stream> = HashMap::new();
        let mut out = Vec::new();
        for (i, c) in self.calls.iter().enumerate() {
            if c.pid != pid || !c.ok() || (write && !c.is_write()) || (!write && !c.is_read()) {
                continue;
            }
            let Some(p) = c.fd_path() else { continue };
            if !p.to_string_lossy().starts_with("socket:") {
                continue;
            }
            let data = c.data()?;
            if data.is_empty() {
                continue;
            }
            let s = streams.entry(p.to_path_buf()).or_insert(Stream {
                buf: Vec::new(),
                marks: Vec::new(),
                pos: 0,
                dead: false,
            });
            if s.dead {
                continue;
            }
            s.marks.push((s.buf.len(), i));
            s.buf.extend_from_slice(&data);
            loop {
                let rest = &s.buf[s.pos..];
                if rest.len() < 4 {
                    break;
                }
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len > ferry_common::record::MAX_RECORD {
                    s.dead = true;
                    break;
                }
                if rest.len() < 4 + len {
                    break;
                }
                let mut r = ferry_common::record::Reader::new();
                r.feed(&rest[..4 + len]);
                let Ok(Some(rec)) = r.next_record() else {
                    s.dead = true;
                    break;
                };
                let call = s
                    .marks
                    .iter()
                    .rev()
                    .find(|(off, _)| *off <= s.pos)
                    .map(|(_, ci)| *ci)
                    .unwrap_or(i);
                out.push((rec, call));
                s.pos += 4 + len;
            }
        }
        Ok(out)
    }

    /// The first write by `pid` to a socket whose bytes contain `needle`.
    pub fn first_write_containing(&self, pid: u32, needle: &[u8]) -> Option<&Call> {
        self.calls.iter().find(|c| {
            c.pid == pid
                && c.is_write()
                && c.ok()
                && c.data()
                    .is_ok_and(|d| d.windows(needle.len()).any(|w| w == needle))
        })
    }

    /// The line where `pid` acknowledged by exiting 0: its `exit_group(0)` call, or its
    /// `exited with 0` line.
    pub fn exit0_line(&self, pid: u32) -> Option<usize> {
        let call = self
            .calls
            .iter()
            .find(|c| c.pid == pid && c.name == "exit_group")
            .map(|c| c.start);
        let exit = self
            .exits
            .iter()
            .find(|e| e.pid == pid && e.code == Some(0))?;
        Some(call.unwrap_or(exit.line).min(exit.line))
    }

    /// Checks the commit protocol for one file written as `tmp` and committed as `dest`,
    /// acknowledged by something that began on line `ack`:
    ///
    /// 1. the file was written (through a descriptor on `tmp` or `dest`);
    /// 2. after its last write, an fsync/fdatasync of it, or a syncfs of its filesystem, or a
    ///    sync, finished before
    /// 3. the link (or rename) of `tmp` to `dest`, which finished before
    /// 4. an fsync/fdatasync of `dest`'s directory, or a syncfs of its filesystem, or a sync,
    ///    which finished before the acknowledgement;
    /// 5. and nothing wrote into the file after that sync.
    ///
    /// `fs` gives the filesystem of a path (None: unknown, never matches). On success, the
    /// lines of the file sync, the link and the directory sync.
    pub fn check_commit(
        &self,
        tmp: &Path,
        dest: &Path,
        ack: usize,
        fs: &dyn Fn(&Path) -> Option<u64>,
    ) -> Result<[usize; 3], String> {
        let what = dest.display();
        let links = self.links(tmp, dest);
        let Some(link) = links.first() else {
            return Err(format!(
                "{what}: no link or rename of {} to it in the trace",
                tmp.display()
            ));
        };
        if link.end >= ack {
            return Err(format!(
                "{what}: acknowledged (line {}) before its link finished (line {})",
                ack + 1,
                link.end + 1
            ));
        }
        let is_file = |p: &Path| p == tmp || p == dest;
        let writes: Vec<&Call> = self
            .calls
            .iter()
            .filter(|c| c.ok() && c.written_path().is_some_and(is_file))
            .collect();
        let Some(last_write) = writes
            .iter()
            .filter(|c| c.start < link.start)
            .max_by_key(|c| c.end)
        else {
            return Err(format!("{what}: no write into the file before its link"));
        };
        let file_fs = fs(tmp);
        let dir = dest.parent().unwrap_or(Path::new("/"));
        let dir_fs = fs(dir);
        let syncs_file = |c: &Call| match c.name.as_str() {
            "fsync" | "fdatasync" => c.fd_path().is_some_and(is_file),
            "syncfs" => file_fs.is_some() && c.fd_path().and_then(fs) == file_fs,
            "sync" => true,
            _ => false,
        };
        let syncs_dir = |c: &Call| match c.name.as_str() {
            "fsync" | "fdatasync" => c.fd_path() == Some(dir),
            "syncfs" => dir_fs.is_some() && c.fd_path().and_then(fs) == dir_fs,
            "sync" => true,
            _ => false,
        };
        let Some(file_sync) = self
            .calls
            .iter()
            .find(|c| c.ok() && syncs_file(c) && c.start > last_write.end && c.end < link.start)
        else {
            return Err(format!(
                "{what}: the file was not synced (fsync/fdatasync, or syncfs of its filesystem) \
                 between its last write (line {}) and its link (line {})",
                last_write.end + 1,
                link.start + 1
            ));
        };
        let Some(dir_sync) = self
            .calls
            .iter()
            .find(|c| c.ok() && syncs_dir(c) && c.start > link.end && c.end < ack)
        else {
            return Err(format!(
                "{what}: the directory {} was not synced (fsync, or syncfs of its filesystem) \
                 between the link (line {}) and the acknowledgement (line {})",
                dir.display(),
                link.end + 1,
                ack + 1
            ));
        };
        if let Some(w) = writes
            .iter()
            .find(|c| c.start >= link.start && c.start < ack)
        {
            return Err(format!(
                "{what}: written again (line {}) after its link, before the acknowledgement",
                w.start + 1
            ));
        }
        Ok([file_sync.start, link.start, dir_sync.start])
    }
}
