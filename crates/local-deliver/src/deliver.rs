//! One delivery: find the delivery file for the address's extension, check it, and carry
//! out its instructions in order. Maildir writes are only prepared here; the caller commits
//! them for the whole batch (see crate::maildir) before reporting.

use crate::dotfile::{self, Instruction};
use crate::maildir;
use crate::message::{self, Message};
use crate::program::{self, ProgramResult};
use ferry_common::envelope::Envelope;
use ferry_common::root::Root;
use ferry_common::{date, inject, route, status};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct Job {
    pub id: u64,
    /// The queue id of the message (for the log).
    pub msgid: String,
    pub sender: String,
    pub recipient: String,
    pub local: String,
    pub domain: String,
    pub ext: String,
    pub msg: Message,
    /// The envelope recipient this one came from through aliases; empty if none.
    pub orig: String,
}

/// How a delivery ended (before the Maildir commit).
pub enum Outcome {
    /// Delivered: what was done ("Maildir ./Maildir/", "program", ...).
    Done(String),
    Permanent(String),
    Temporary(String),
}

pub struct Context<'a> {
    pub root: &'a Root,
    pub home: &'a Path,
    pub host: &'a str,
    pub default_delivery: &'a str,
    pub uid: u32,
    pub seq: &'a mut u64,
}

/// Delivers `job`; prepared Maildir files are appended to `pending`.
pub fn deliver(cx: &mut Context<'_>, job: &Job, pending: &mut Vec<maildir::Prepared>) -> Outcome {
    let header = match job.msg.header() {
        Ok(h) => h,
        Err(e) => return Outcome::Temporary(format!("cannot read the message: {e}")),
    };
    if let Some(why) = message::loop_check(&header, &job.recipient) {
        return Outcome::Permanent(format!("5.4.6 {why}"));
    }
    let (instructions, default_part) = match instructions(cx, &job.ext) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let dtline = format!("Delivered-To: {}\n", job.recipient);
    let rpline = format!("Return-Path: <{}>\n", job.sender);
    // Postfix's order: Return-Path, X-Original-To (only when an alias was expanded: the
    // address the sender used), Delivered-To (the loop check's line, as always).
    let prefix = format!("{rpline}{}{dtline}", original_to_line(job));
    let mut forwards: Vec<String> = Vec::new();
    let mut mine: Vec<maildir::Prepared> = Vec::new();
    let mut outcome = Outcome::Done(String::new());
    let mut done: Vec<String> = Vec::new();
    for ins in &instructions {
        done.push(match ins {
            Instruction::Maildir(p) => format!("Maildir {p}"),
            Instruction::Mbox(p) => format!("mbox {p}"),
            Instruction::Forward(a) => format!("forward to <{a}>"),
            Instruction::Program(_) => "program".to_string(),
        });
        let step = match ins {
            Instruction::Maildir(path) => {
                let dir = resolve(cx.home, path);
                let is_default = instructions.len() == 1 && path == cx.default_delivery;
                if is_default
                    && !maildir::is_maildir(&dir)
                    && let Err(e) = maildir::create(&dir)
                {
                    Some(Outcome::Temporary(format!(
                        "cannot create Maildir {}: {e}",
                        dir.display()
                    )))
                } else if !maildir::is_maildir(&dir) {
                    Some(Outcome::Temporary(format!(
                        "Maildir {} does not exist (no tmp/ or new/)",
                        dir.display()
                    )))
                } else {
                    *cx.seq += 1;
                    let size = prefix.len() as u64 + job.msg.len;
                    match maildir::prepare(
                        &dir,
                        cx.host,
                        *cx.seq,
                        prefix.as_bytes(),
                        &job.msg,
                        size,
                    ) {
                        Ok(p) => {
                            mine.push(p);
                            None
                        }
                        Err(e) => Some(Outcome::Temporary(io_text(
                            &format!("cannot write into {}", dir.display()),
                            &e,
                        ))),
                    }
                }
            }
            Instruction::Mbox(path) => {
                let file = resolve(cx.home, path);
                let sender = if job.sender.is_empty() {
                    "MAILER-DAEMON"
                } else {
                    job.sender.as_str()
                };
                let from = format!("From {} {}\n", sender, date::asctime(date::now_secs()));
                crate::mbox::deliver(&file, &from, prefix.as_bytes(), &mut job.msg.reader())
                    .err()
                    .map(|e| {
                        Outcome::Temporary(io_text(
                            &format!("cannot write mbox {}", file.display()),
                            &e,
                        ))
                    })
            }
            Instruction::Forward(a) => {
                forwards.push(ferry_common::addr::normalize(a));
                None
            }
            Instruction::Program(cmd) => {
                let env = environment(cx, job, &default_part, &dtline, &rpline);
                match program::run(cmd, cx.home, &env, prefix.as_bytes(), &mut job.msg.reader()) {
                    Ok(ProgramResult::Delivered) => None,
                    Ok(ProgramResult::DeliveredStop) => break,
                    Ok(ProgramResult::Permanent(t)) => Some(Outcome::Permanent(t)),
                    Ok(ProgramResult::Temporary(t)) => Some(Outcome::Temporary(t)),
                    Err(e) => Some(Outcome::Temporary(format!("cannot run program: {e}"))),
                }
            }
        };
        if let Some(o) = step {
            outcome = o;
            break;
        }
    }
    if matches!(outcome, Outcome::Done(_)) && !forwards.is_empty() {
        outcome = forward(cx.root, job, forwards);
    }
    if matches!(outcome, Outcome::Done(_)) {
        outcome = Outcome::Done(done.join(", "));
        pending.extend(mine);
    } else {
        for p in mine {
            let _ = std::fs::remove_file(&p.tmp);
        }
    }
    outcome
}

/// `X-Original-To: sales@example.org` when the recipient came through an alias.
fn original_to_line(job: &Job) -> String {
    if job.orig.is_empty() || job.orig.eq_ignore_ascii_case(&job.recipient) {
        String::new()
    } else {
        format!("X-Original-To: {}\n", job.orig)
    }
}

fn io_text(what: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::ENOSPC) => format!("{what}: disk full"),
        Some(nix::libc::EDQUOT) => format!("{what}: over quota"),
        _ => format!("{what}: {e}"),
    }
}

/// `./x` and `x` are relative to the home directory; `/x` is absolute.
fn resolve(home: &Path, path: &str) -> PathBuf {
    match path.strip_prefix("./") {
        Some(rel) => home.join(rel),
        None => PathBuf::from(path),
    }
}

/// The instructions for an extension, and the part of it matched by `-default`.
fn instructions(cx: &Context<'_>, ext: &str) -> Result<(Vec<Instruction>, String), Outcome> {
    let candidates = route::dotfile_candidates(ext);
    for name in &candidates {
        let path = cx.home.join(name);
        let text = match read_dotfile(&path, cx.uid) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(o) => return Err(o),
        };
        let list = dotfile::parse(&text).map_err(|(line, why)| {
            Outcome::Temporary(format!(
                "{} line {line}: {why} (fix the file; the mail waits)",
                path.display()
            ))
        })?;
        let default_part = default_part(ext, name);
        if list.is_empty() {
            // An empty .ferry means the default delivery, as in qmail.
            return Ok((vec![default_instruction(cx)], default_part));
        }
        return Ok((list, default_part));
    }
    if ext.is_empty() {
        Ok((vec![default_instruction(cx)], String::new()))
    } else {
        Err(Outcome::Permanent(format!(
            "5.1.1 no such address: no {} here",
            candidates[0]
        )))
    }
}

fn default_instruction(cx: &Context<'_>) -> Instruction {
    let d = cx.default_delivery.to_string();
    if d.ends_with('/') {
        Instruction::Maildir(d)
    } else {
        Instruction::Mbox(d)
    }
}

/// For `.ferry-shop-default` matching extension `shop-books`: "books".
fn default_part(ext: &str, file: &str) -> String {
    match file
        .strip_prefix(".ferry-")
        .and_then(|f| f.strip_suffix("default"))
    {
        Some(prefix) => ext.get(prefix.len()..).unwrap_or("").to_string(),
        None => String::new(),
    }
}

/// Reads a delivery file if it exists; it must belong to the user (or root) and not be
/// writable by group or others.
fn read_dotfile(path: &Path, uid: u32) -> Result<Option<String>, Outcome> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Outcome::Temporary(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let meta = f
        .metadata()
        .map_err(|e| Outcome::Temporary(format!("cannot stat {}: {e}", path.display())))?;
    if (meta.uid() != uid && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(Outcome::Temporary(format!(
            "{} is writable by others or not owned by the user: refusing to use it",
            path.display()
        )));
    }
    let mut text = String::new();
    f.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| Outcome::Temporary(format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(text))
}

fn environment(
    cx: &Context<'_>,
    job: &Job,
    default_part: &str,
    dtline: &str,
    rpline: &str,
) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, val: &str| v.push((k.to_string(), val.to_string()));
    for k in ["USER", "LOGNAME", "SHELL", "PATH"] {
        if let Ok(val) = std::env::var(k) {
            set(k, &val);
        }
    }
    set("HOME", &cx.home.to_string_lossy());
    set("SENDER", &job.sender);
    set("RECIPIENT", &job.recipient);
    set("LOCAL", &job.local);
    set("HOST", &job.domain);
    set("EXT", &job.ext);
    let parts: Vec<&str> = job.ext.splitn(4, '-').collect();
    for (i, name) in ["EXT2", "EXT3", "EXT4"].iter().enumerate() {
        set(name, &parts[(i + 1).min(parts.len())..].join("-"));
    }
    let labels: Vec<&str> = job.domain.split('.').collect();
    for (i, name) in ["HOST2", "HOST3", "HOST4"].iter().enumerate() {
        set(
            name,
            &labels[..labels.len().saturating_sub(i + 1)].join("."),
        );
    }
    set("DEFAULT", default_part);
    set("DTLINE", dtline);
    set("RPLINE", rpline);
    let sender = if job.sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        job.sender.as_str()
    };
    set(
        "UFLINE",
        &format!("From {} {}\n", sender, date::asctime(date::now_secs())),
    );
    v
}

/// Sends the message on to `targets` through `queue --forward`, which adds our Delivered-To
/// line, rewrites the sender by SRS and adds an ARC set.
fn forward(root: &Root, job: &Job, targets: Vec<String>) -> Outcome {
    let env = Envelope {
        sender: job.sender.clone(),
        recipients: targets,
        smtputf8: false,
        requiretls: false,
        dsn: Default::default(),
    };
    match inject::run_queue_forward(root, &job.msg.file, &job.recipient, &env) {
        Ok(r) if r.code == 0 => Outcome::Done(String::new()),
        Ok(r) if status::queue_exit_is_permanent(r.code) => {
            Outcome::Permanent(format!("forward refused: {}", r.reason()))
        }
        Ok(r) => Outcome::Temporary(format!("forward failed: {}", r.reason())),
        Err(e) => Outcome::Temporary(format!("forward failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parts() {
        assert_eq!(default_part("shop-books", ".ferry-shop-default"), "books");
        assert_eq!(default_part("anything", ".ferry-default"), "anything");
        assert_eq!(default_part("list", ".ferry-list"), "");
    }
}
