//! Credentials for smarthosts: `control/smtpauth`, `HOST USER PASSWORD` per line (HOST as the
//! smtproutes line writes it: a name or `[ip]`; the password is the rest of the line). The file
//! should be readable by remote delivery's user only (mode 0600, owner ferryr): it is not
//! part of crate::config (which every program loads) and is read here, once at start.
//!
//! A host with credentials gets mail only over STARTTLS with a verified certificate (as for
//! `tlsdestinations`: the system's roots or `tlsca`), then AUTH PLAIN (or LOGIN when PLAIN is
//! not offered): never a password in plaintext, never to a server whose name is not proven.

use ferry_common::control;
use ferry_common::root::Root;
use std::collections::HashMap;

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

/// The meaningful lines of the file (as control::read_lines gives them, with their numbers).
pub fn parse(lines: &[(usize, String)]) -> Result<Table, String> {
    let mut t = Table::new();
    for (n, line) in lines {
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
                    "control/smtpauth line {n}: expected HOST USER PASSWORD"
                ));
            }
        }
    }
    Ok(t)
}

/// control/smtpauth, read as every control file is (bounded, comments skipped); none: no
/// credentials.
pub fn load(root: &Root) -> Result<Table, String> {
    match control::read_lines(&root.control(), "smtpauth") {
        Ok(Some(lines)) => parse(&lines),
        Ok(None) => Ok(Table::new()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let lines = |v: &[&str]| -> Vec<(usize, String)> {
            v.iter()
                .enumerate()
                .map(|(i, l)| (i + 1, l.to_string()))
                .collect()
        };
        let t = parse(&lines(&[
            "Relay.Example bob pass word",
            "[192.0.2.1] a@b.example x",
        ]))
        .unwrap();
        let c = &t["relay.example"];
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "pass word"));
        assert_eq!(t["[192.0.2.1]"].user, "a@b.example");
        assert!(!format!("{c:?}").contains("pass"));
        assert!(parse(&lines(&["relay.example bob"])).is_err());
    }
}
