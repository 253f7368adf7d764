//! Credentials for smarthosts: `control/smtpauth`, `HOST USER PASSWORD` per line (HOST as the
//! smtproutes line writes it: a name or `[ip]`; the password is the rest of the line). The file
//! should be readable by remote delivery's user only (mode 0600, owner ferryr): it is not
//! part of crate::config (which every program loads) and is read here, once at start.
//!
//! A host with credentials gets mail only over STARTTLS with a verified certificate (as for
//! `tlsdestinations`: the system's roots or `tlsca`), then AUTH PLAIN (or LOGIN when PLAIN is
//! not offered): never a password in plaintext, never to a server whose name is not proven.

use ferry_common::root::Root;
use std::collections::HashMap;
use std::io::Read;

/// Longest file read.
const MAX_FILE: u64 = 1 << 20;

#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <hidden>)", self.user)
    }
}

/// Lowercase host → credentials.
pub type Table = HashMap<String, Credentials>;

pub fn parse(text: &str) -> Result<Table, String> {
    let mut t = Table::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.splitn(3, char::is_whitespace);
        match (it.next(), it.next(), it.next().map(str::trim)) {
            (Some(h), Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
                t.insert(
                    h.to_lowercase(),
                    Credentials {
                        user: u.to_string(),
                        password: p.to_string(),
                    },
                );
            }
            _ => {
                return Err(format!(
                    "control/smtpauth line {}: expected HOST USER PASSWORD",
                    n + 1
                ));
            }
        }
    }
    Ok(t)
}

pub fn load(root: &Root) -> Result<Table, String> {
    let path = root.control_file("smtpauth");
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Table::new()),
        Err(e) => return Err(format!("control/smtpauth: {e}")),
    };
    let mut buf = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut buf)
        .map_err(|e| format!("control/smtpauth: {e}"))?;
    parse(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let t = parse("# smarthosts\nRelay.Example bob pass word\n[192.0.2.1] a@b.example x\n")
            .unwrap();
        let c = &t["relay.example"];
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "pass word"));
        assert_eq!(t["[192.0.2.1]"].user, "a@b.example");
        assert!(!format!("{c:?}").contains("pass"));
        assert!(parse("relay.example bob\n").is_err());
    }
}
