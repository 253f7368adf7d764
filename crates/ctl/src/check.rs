//! `ferryctl check`: is this install right? One line per item, `OK`, `WARN` or `FAIL`, what
//! was found and, when it is not OK, how to fix it. Exit 1 when anything FAILs.
//!
//! Checked: the control files (syntax with file and line, unknown names, the TLS pair), the
//! install manifest (owners, modes, the setuid queue), smtpd answering 220 on each address
//! of smtplisten, the certificate it serves over STARTTLS (the one in control/tlscert? days
//! left: WARN under 14, FAIL expired), the DKIM keys (each loads, belongs to the signer,
//! readable by nobody else: dkim.rs), and the DNS records the domains need (see dnscheck.rs).

use crate::dnscheck;
use anyhow::Result;
use ferry_common::config::Config;
use ferry_common::control;
use ferry_common::layout;
use ferry_common::root::Root;
use ferry_common::users::Mode;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One verdict: what was found, and the fix when it is not OK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

pub fn ok(what: impl Into<String>) -> Item {
    Item {
        level: Level::Ok,
        what: what.into(),
        fix: None,
    }
}
pub fn warn(what: impl Into<String>, fix: impl Into<String>) -> Item {
    Item {
        level: Level::Warn,
        what: what.into(),
        fix: Some(fix.into()),
    }
}
pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Item {
    Item {
        level: Level::Fail,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self.level {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        match &self.fix {
            Some(fix) => write!(f, "{word:<5} {} — {fix}", self.what),
            None => write!(f, "{word:<5} {}", self.what),
        }
    }
}

fn control_files(root: &Root, cfg: Option<&Config>) -> Vec<Item> {
    let errors = Config::check(root);
    let mut items: Vec<Item> = errors
        .iter()
        .map(|e| {
            let fix = if e.message.starts_with("unknown control file") {
                format!("rename or remove {}", root.control_file(&e.file).display())
            } else {
                format!(
                    "edit {} (formats: control/README)",
                    root.control_file(&e.file).display()
                )
            };
            fail(e.to_string(), fix)
        })
        .collect();
    if errors.is_empty() {
        let n = control::FILES
            .iter()
            .filter(|f| root.control_file(f.name).exists())
            .count();
        items.push(ok(format!(
            "control files: {n} set, the rest default, no errors"
        )));
    }
    let Some(cfg) = cfg else { return items };
    if !cfg.me.contains('.') && cfg.me != "localhost" {
        items.push(warn(
            format!("me is {:?}, not a fully qualified name", cfg.me),
            "ferryctl setup DOMAIN, or write the host's FQDN into control/me",
        ));
    }
    match (&cfg.tlscert, &cfg.tlskey) {
        (Some(c), Some(k)) => items.push(tls_pair(c, k)),
        (Some(_), None) => items.push(fail("control/tlscert without control/tlskey: no STARTTLS", "put the key into control/tlskey")),
        (None, Some(_)) => items.push(fail("control/tlskey without control/tlscert: no STARTTLS", "put the certificate chain into control/tlscert")),
        (None, None) => items.push(warn(
            "no control/tlscert: smtpd offers no STARTTLS",
            "ferryctl setup DOMAIN makes a self-signed one, or install a CA's (tlscert, tlskey) and ferryctl reload",
        )),
    }
    items
}

fn tls_pair(cert: &std::path::Path, key: &std::path::Path) -> Item {
    let head = |p: &std::path::Path| -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(p).map(|f| f.take(1 << 20).read_to_string(&mut s));
        s
    };
    if !head(cert).contains("-----BEGIN CERTIFICATE-----") {
        return fail(
            "control/tlscert holds no PEM certificate",
            "put the PEM certificate chain (leaf first) into control/tlscert",
        );
    }
    if let Err(e) = std::fs::File::open(key)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return warn(
            format!(
                "control/tlskey not checked: uid {} may not read it (it is for root and ferryd)",
                ferry_sys::uids().0
            ),
            "run ferryctl check as root",
        );
    }
    let k = head(key);
    if !k.contains("PRIVATE KEY-----") {
        return fail(
            "control/tlskey holds no PEM private key (or ferryctl cannot read it)",
            "put the PEM private key into control/tlskey",
        );
    }
    let mode = std::fs::metadata(key)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if mode & 0o004 != 0 {
        return fail(
            format!("control/tlskey is readable by everybody (mode {mode:o})"),
            format!("chmod 640 {} (0600 single-user)", key.display()),
        );
    }
    ok("control/tlscert and control/tlskey: STARTTLS offered")
}

/// Days under which a certificate's expiry is a WARN.
pub const EXPIRY_WARN_DAYS: i64 = 14;

/// The certificate smtpd serves on `addr` against control/tlscert, and its days left.
fn served_certificate(addr: SocketAddr, cert: &std::path::Path) -> Item {
    let on_disk = match crate::tls::disk(cert) {
        Ok(d) => d,
        Err(e) if e.contains("ermission denied") => {
            return warn(
                format!(
                    "served certificate not checked: uid {} may not read control/tlscert",
                    ferry_sys::uids().0
                ),
                "run ferryctl check as root",
            );
        }
        Err(e) => {
            return fail(
                format!("control/tlscert: {e}"),
                "put the PEM certificate chain (leaf first) into control/tlscert",
            );
        }
    };
    let served = match crate::tls::served(addr) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return fail(
                format!("smtpd on {addr} offers no STARTTLS, though control/tlscert exists"),
                "ferryctl log smtpd says why it did not load the pair (then ferryctl reload)",
            );
        }
        Err(e) => {
            return fail(
                format!("STARTTLS on {addr} failed: {e}"),
                "ferryctl log smtpd says why",
            );
        }
    };
    let days = |der: &[u8]| {
        crate::tls::not_after(der).map(|t| {
            (
                (t - ferry_common::date::now_secs() as i64).div_euclid(86_400),
                ferry_common::date::iso(t.max(0) as u64)
                    .chars()
                    .take(10)
                    .collect::<String>(),
            )
        })
    };
    if served != on_disk {
        let when = days(&served)
            .map(|(d, on)| format!(" (it expires {on}, {d} days left)"))
            .unwrap_or_default();
        return fail(
            format!("smtpd on {addr} serves another certificate than control/tlscert{when}"),
            "ferryctl reload; if it stays, ferryctl log smtpd says why (a key that does not match the certificate, an unreadable file)",
        );
    }
    match days(&served) {
        None => warn(
            format!("smtpd on {addr} serves control/tlscert, expiry unreadable"),
            "check the certificate with openssl x509 -noout -enddate",
        ),
        Some((d, on)) if d < 0 => fail(
            format!("smtpd on {addr} serves control/tlscert, which expired on {on}"),
            "renew it (certbot renew runs the deploy hook ferryctl reload)",
        ),
        Some((d, on)) if d < EXPIRY_WARN_DAYS => warn(
            format!("smtpd on {addr} serves control/tlscert: expires {on}, {d} days left"),
            "renew it (certbot renew runs the deploy hook ferryctl reload)",
        ),
        Some((d, on)) => ok(format!(
            "smtpd on {addr} serves control/tlscert over STARTTLS: expires {on}, {d} days left"
        )),
    }
}

fn manifest(root: &Root) -> Vec<Item> {
    let mode = Mode::of_root(root);
    // A normal user cannot look into a privilege-separated queue: say so once.
    if let Err(e) = std::fs::read_dir(root.queue().join("tmp"))
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return vec![warn(
            format!(
                "install: not checked: uid {} may not look into queue/",
                ferry_sys::uids().0
            ),
            "run ferryctl check as root",
        )];
    }
    let problems = layout::verify(root, mode);
    if problems.is_empty() {
        return vec![ok(format!(
            "install: owners and modes as the manifest says ({})",
            mode.describe()
        ))];
    }
    let fix = if mode == Mode::Separated {
        "run ferryctl init as root (it sets owners and modes)"
    } else {
        "run ferryctl init (it sets modes)"
    };
    problems
        .into_iter()
        .map(|p| fail(format!("install: {p}"), fix))
        .collect()
}

/// The address to try for a listen address: a wildcard is tried on loopback.
fn probe_addr(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
        }
        IpAddr::V6(v) if v.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port())
        }
        _ => a,
    }
}

/// The greeting line smtpd sends on `addr`, read with short time limits.
pub fn greeting(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"\n") && buf.len() < 2048 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = s.write_all(b"QUIT\r\n");
    Ok(String::from_utf8_lossy(&buf)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string())
}

fn listening(root: &Root, cfg: &Config) -> Vec<Item> {
    let fix = "ferryctl start; ferryctl log smtpd says why it does not listen";
    // Another ferry on the same port would answer for ours: first ask s6 about ours.
    let dir = crate::s6::service_dir(root, "smtpd");
    if let Ok(Some(st)) = crate::s6::status(&dir)
        && !st.up
    {
        let last = crate::s6::log_tail(root, "smtpd", 1)
            .pop()
            .unwrap_or_default();
        return vec![fail(
            format!(
                "smtpd is down (last log line: {})",
                ferry_common::log::quote(last.trim(), 200)
            ),
            "fix what the log says (a port in use: another mail server or another ferry), then ferryctl restart",
        )];
    }
    let mut items = Vec::new();
    let mut tls_checked = false;
    for a in &cfg.smtplisten {
        let p = probe_addr(*a);
        let item = match greeting(p) {
            Ok(g) if g.starts_with("220 ") && g.ends_with(" ESMTP ferry") => {
                // The certificate is the same on every address: it is looked at once.
                if let (Some(cert), Some(_), false) = (&cfg.tlscert, &cfg.tlskey, tls_checked) {
                    tls_checked = true;
                    items.push(ok(format!(
                        "smtpd answers on {a}: {}",
                        ferry_common::log::quote(&g, 100)
                    )));
                    served_certificate(p, cert)
                } else {
                    ok(format!(
                        "smtpd answers on {a}: {}",
                        ferry_common::log::quote(&g, 100)
                    ))
                }
            }
            // Someone else holds the port (another MTA), and ferry's smtpd cannot bind it.
            Ok(g) if g.starts_with("220") => fail(
                format!(
                    "another server answers on {a}, not ferry's smtpd: {:?}",
                    ferry_common::log::quote(&g, 100)
                ),
                format!(
                    "stop the other mail server on port {}, then ferryctl restart",
                    a.port()
                ),
            ),
            Ok(g) => fail(
                format!(
                    "smtpd on {a} greets with {:?}, not 220",
                    ferry_common::log::quote(&g, 100)
                ),
                fix,
            ),
            Err(e) => fail(
                format!("smtpd does not answer on {a} (tried {p}: {e})"),
                fix,
            ),
        };
        items.push(item);
    }
    items
}

/// Every verdict, in order: control files, install, listening, DNS.
pub fn items(root: &Root, with_dns: bool) -> Vec<Item> {
    let cfg = Config::load(root).ok();
    let mut items = control_files(root, cfg.as_ref());
    items.extend(manifest(root));
    items.extend(crate::mailbox::check(root));
    match &cfg {
        Some(cfg) => {
            items.extend(listening(root, cfg));
            items.extend(crate::passwd::check(root, cfg));
            items.extend(crate::srscheck::check(root, cfg));
            items.extend(crate::dkim::file_items(root));
            if with_dns {
                items.extend(dnscheck::check(root, cfg));
            }
        }
        None => items.push(warn(
            "smtpd and DNS not checked: the control files have errors",
            "fix the FAIL lines above, then run ferryctl check again",
        )),
    }
    items
}

pub fn run(root: &Root, with_dns: bool) -> Result<(String, i32)> {
    let items = items(root, with_dns);
    let mut out = String::new();
    for i in &items {
        out.push_str(&format!("{i}\n"));
    }
    let fails = items.iter().filter(|i| i.level == Level::Fail).count();
    let warns = items.iter().filter(|i| i.level == Level::Warn).count();
    out.push_str(&format!(
        "-- {} checked: {fails} FAIL, {warns} WARN\n",
        items.len()
    ));
    Ok((out, if fails > 0 { 1 } else { 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(ok("fine").to_string(), "OK    fine");
        assert_eq!(
            fail("control/x line 2: bad", "edit it").to_string(),
            "FAIL  control/x line 2: bad — edit it"
        );
    }

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:25".parse().unwrap()),
            "127.0.0.1:25".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:25".parse().unwrap()),
            "[::1]:25".parse().unwrap()
        );
        assert_eq!(
            probe_addr("192.0.2.1:2525".parse().unwrap()),
            "192.0.2.1:2525".parse().unwrap()
        );
    }

    #[test]
    fn broken_control_file_fails_with_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("control")).unwrap();
        std::fs::write(d.path().join("control/databytes"), "# size\nten\n").unwrap();
        let root = Root::at(d.path());
        let items = control_files(&root, None);
        assert!(
            items
                .iter()
                .any(|i| i.level == Level::Fail && i.what.contains("control/databytes line 2")),
            "{items:?}"
        );
    }
}
