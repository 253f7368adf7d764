//! `ferryctl dkim`: the DKIM signing keys, `control/dkim/DOMAIN/SELECTOR.key`
//! (ferry_auth::keys reads them, ferry_auth::records makes them and their DNS records).
//!
//! - `dkim keygen DOMAIN [SELECTOR] [--ed25519]` writes a new key (RSA 2048, or Ed25519)
//!   and prints the TXT record to publish. The default selector is dated: `sYYYYMM` for
//!   RSA, `eYYYYMM` for Ed25519 (so that both kinds can be made in one month). An existing
//!   key is never replaced (exit 1). The key file is mode 0600 and belongs to the signing
//!   user: ferryq with privilege separation (the owner of queue/), the invoking user
//!   single-user; control/dkim and control/dkim/DOMAIN are 0755 (names are public in DNS).
//! - `dkim list`: one line per key: domain, selector, kind, file, record value; the files
//!   that do not load are named (exit 1).
//!
//! For `ferryctl check`: [`file_items`] (each key loads, belongs to the signing user, is
//! readable by nobody else) and [`dns_items`] (the published record has the key on disk);
//! for `ferryctl setup`: [`setup_lines`].

use crate::check::{Item, fail, ok, warn};
use crate::dns::{Answer, Dns};
use crate::{problem, usage};
use anyhow::{Context, Result};
use ferry_auth::keys::{self, DomainKey};
use ferry_auth::records::{self, Algorithm};
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn dir(root: &Root) -> PathBuf {
    root.control().join("dkim")
}

/// The default selector for a new key made now: `sYYYYMM` (RSA), `eYYYYMM` (Ed25519).
pub fn default_selector(alg: Algorithm, now_secs: u64) -> String {
    let iso = ferry_common::date::iso(now_secs);
    let ym: String = iso.chars().take(7).filter(|c| c.is_ascii_digit()).collect();
    match alg {
        Algorithm::Rsa2048 => format!("s{ym}"),
        Algorithm::Ed25519 => format!("e{ym}"),
    }
}

/// The uid the key files must belong to: the owner of queue/ (ferryq with privilege
/// separation, the root's user single-user), None when queue/ cannot be looked at.
fn signer_uid(root: &Root) -> Option<u32> {
    std::fs::metadata(root.queue()).ok().map(|m| m.uid())
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn make_dir(p: &Path) -> Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", p.display())),
    }
}

fn rel(root: &Root, p: &Path) -> String {
    p.strip_prefix(root.path())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// The record lines printed for one key: the zone file line, the name and the value.
fn record_lines(k: &DomainKey, indent: &str) -> Vec<String> {
    vec![
        format!(
            "{indent}{}",
            records::zone_line(&k.selector, &k.domain, &k.key)
        ),
        format!(
            "{indent}(name {}, value {})",
            records::record_name(&k.selector, &k.domain),
            records::record_value(&k.key)
        ),
    ]
}

pub fn keygen(
    root: &Root,
    domain: &str,
    selector: Option<&str>,
    ed25519: bool,
) -> Result<Vec<String>> {
    let domain = ferry_common::config::parse_domain(domain).map_err(usage)?;
    if !domain.contains('.') {
        return Err(usage(format!(
            "{domain:?} is not a mail domain: give one like example.org"
        )));
    }
    let alg = if ed25519 {
        Algorithm::Ed25519
    } else {
        Algorithm::Rsa2048
    };
    let selector = match selector {
        Some(s) => s.to_string(),
        None => default_selector(alg, ferry_common::date::now_secs()),
    };
    if !keys::valid_selector(&selector) {
        return Err(usage(format!(
            "{selector:?} is not a selector (letters, digits, '-', '_', inner dots)"
        )));
    }
    if !root.control().is_dir() {
        return Err(problem(format!(
            "{} is missing: run {} init first",
            root.control().display(),
            root.bin("ferryctl").display()
        )));
    }
    let separated = Mode::of_root(root) == Mode::Separated;
    if separated && !ferry_sys::running_as_root() {
        return Err(problem(format!(
            "run ferryctl dkim keygen as root: the key must belong to {} (the signer) and be readable by nobody else",
            users::QUEUE
        )));
    }
    let domain_dir = dir(root).join(&domain);
    let path = domain_dir.join(format!("{selector}.key"));
    if path.exists() {
        return Err(problem(format!(
            "{} exists: a key is never replaced (give another selector, or remove the old key once its record is gone)",
            rel(root, &path)
        )));
    }
    let der = records::generate(alg).map_err(problem)?;
    let pem = records::pem(&der);
    // The key as the signer will read it back.
    let key = keys::parse_pem(pem.as_bytes()).map_err(problem)?;
    make_dir(&dir(root))?;
    make_dir(&domain_dir)?;
    let tmp = domain_dir.join(format!(".{selector}.key.new"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
    }
    let owner = if separated {
        let u = nix::unistd::User::from_name(users::QUEUE)?.ok_or_else(|| {
            problem(format!(
                "user {} does not exist (ferryctl init creates it)",
                users::QUEUE
            ))
        })?;
        if let Err(e) = nix::unistd::chown(&tmp, Some(u.uid), Some(u.gid)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(problem(format!("cannot chown {}: {e}", tmp.display())));
        }
        u.name
    } else {
        user_name(nix::unistd::getuid().as_raw())
    };
    // A link does not replace: two keygens at once cannot both win.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(problem(format!(
                "{} exists: a key is never replaced",
                rel(root, &path)
            )));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
    if let Ok(d) = std::fs::File::open(&domain_dir) {
        let _ = d.sync_all();
    }
    let what = match alg {
        Algorithm::Rsa2048 => "rsa 2048",
        Algorithm::Ed25519 => "ed25519",
    };
    let k = DomainKey {
        domain,
        selector,
        key,
    };
    let mut out = vec![
        format!(
            "wrote {} ({what}, mode 0600, owner {owner})",
            rel(root, &path)
        ),
        "ferry signs mail of the domain with every key in control/dkim: publish this TXT record now, then ferryctl check:".to_string(),
    ];
    out.extend(record_lines(&k, "  "));
    Ok(out)
}

/// `dkim list`: the lines and the exit code (1 when a key does not load).
pub fn list(root: &Root) -> (Vec<String>, i32) {
    let (keys, problems) = keys::load_all(&dir(root));
    let mut out = Vec::new();
    for k in &keys {
        out.push(format!(
            "{}  {}  {}  {}  {}",
            k.domain,
            k.selector,
            k.key.kind(),
            rel(
                root,
                &dir(root)
                    .join(&k.domain)
                    .join(format!("{}.key", k.selector))
            ),
            records::record_value(&k.key)
        ));
    }
    for p in &problems {
        out.push(format!("not loaded: {p}"));
    }
    if keys.is_empty() && problems.is_empty() {
        out.push("no DKIM keys (ferryctl dkim keygen DOMAIN makes one)".into());
    }
    (out, if problems.is_empty() { 0 } else { 1 })
}

/// Every `*.key` file under control/dkim/DOMAIN/.
fn key_files(root: &Root) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(domains) = std::fs::read_dir(dir(root)) else {
        return v;
    };
    for d in domains.flatten() {
        if d.file_name().to_string_lossy().starts_with('.') || !d.path().is_dir() {
            continue;
        }
        if let Ok(files) = std::fs::read_dir(d.path()) {
            v.extend(
                files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "key")),
            );
        }
    }
    v.sort();
    v
}

/// The key files: each loads, belongs to the signing user, and nobody else may read it.
pub fn file_items(root: &Root) -> Vec<Item> {
    let files = key_files(root);
    if files.is_empty() {
        return Vec::new();
    }
    let want = signer_uid(root);
    let mut items = Vec::new();
    let mut bad = std::collections::BTreeSet::new();
    for f in &files {
        let Ok(m) = std::fs::symlink_metadata(f) else {
            continue;
        };
        let shown = rel(root, f);
        let mode = m.permissions().mode() & 0o7777;
        if !m.is_file() {
            items.push(fail(
                format!("DKIM: {shown} is not a plain file"),
                "remove it, or make it one (ferryctl dkim keygen writes keys)",
            ));
            bad.insert(f.clone());
            continue;
        }
        if let Some(uid) = want
            && m.uid() != uid
        {
            items.push(fail(
                format!(
                    "DKIM: {shown} belongs to {}, not to the signer {}",
                    user_name(m.uid()),
                    user_name(uid)
                ),
                format!("chown {} {}", user_name(uid), f.display()),
            ));
            bad.insert(f.clone());
        }
        if mode & 0o077 != 0 {
            items.push(fail(
                format!("DKIM: {shown} is readable by others than its owner (mode {mode:o})"),
                format!("chmod 600 {}", f.display()),
            ));
            bad.insert(f.clone());
        }
    }
    let (keys, problems) = keys::load_all(&dir(root));
    for p in problems {
        if p.contains("ermission denied") {
            items.push(warn(
                format!(
                    "DKIM: not checked: uid {} may not read it: {p}",
                    ferry_sys::uids().0
                ),
                "run ferryctl check as root",
            ));
        } else {
            items.push(fail(
                format!("DKIM: key not loaded: {p}"),
                "replace it (ferryctl dkim keygen DOMAIN SELECTOR, after removing the file) or remove it",
            ));
        }
    }
    for k in &keys {
        let f = dir(root)
            .join(&k.domain)
            .join(format!("{}.key", k.selector));
        if !bad.contains(&f) {
            items.push(ok(format!(
                "DKIM: {} ({}): owner and mode right",
                rel(root, &f),
                k.key.kind()
            )));
        }
    }
    items
}

/// For each key: is its record published, with the same key?
pub async fn dns_items(dns: &Dns, root: &Root, out: &mut Vec<Item>) {
    let (keys, _) = keys::load_all(&dir(root));
    for k in &keys {
        let name = records::record_name(&k.selector, &k.domain);
        let file = rel(
            root,
            &dir(root)
                .join(&k.domain)
                .join(format!("{}.key", k.selector)),
        );
        let publish = format!(
            "publish: {}",
            records::zone_line(&k.selector, &k.domain, &k.key)
        );
        let txts = match dns.txt(&name).await {
            Answer::Found(v) => v,
            Answer::NoData | Answer::NxDomain => {
                out.push(warn(
                    format!(
                        "DNS: no DKIM record at {name} for {file}: receivers cannot verify its signatures"
                    ),
                    publish,
                ));
                continue;
            }
            Answer::Error(e) => {
                out.push(warn(
                    format!("DNS: cannot look up the DKIM record {name}: {e}"),
                    "check that the name servers answer (control/resolvconf, else /etc/resolv.conf)",
                ));
                continue;
            }
        };
        let mine = k.key.public_der();
        let parsed: Vec<Result<(String, Vec<u8>), String>> =
            txts.iter().map(|t| records::parse_record(t)).collect();
        if parsed
            .iter()
            .any(|p| matches!(p, Ok((kind, p)) if *p == mine && kind == k.key.kind()))
        {
            out.push(ok(format!(
                "DNS: DKIM record {name} publishes the key of {file} ({})",
                k.key.kind()
            )));
            continue;
        }
        let shown: Vec<String> = txts
            .iter()
            .zip(&parsed)
            .map(|(t, p)| match p {
                Ok(_) => format!("\"{}\"", abbreviate(t)),
                Err(e) => format!("\"{}\" ({e})", abbreviate(t)),
            })
            .collect();
        out.push(fail(
            format!(
                "DNS: DKIM record {name} does not publish the key of {file}: published {}, on disk \"{}\"",
                shown.join(", "),
                abbreviate(&records::record_value(&k.key))
            ),
            format!("{publish} (replacing the old one)"),
        ));
    }
}

/// A record value cut to a readable length.
fn abbreviate(s: &str) -> String {
    if s.chars().count() <= 60 {
        return s.to_string();
    }
    let head: String = s.chars().take(40).collect();
    let tail: String = s
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}")
}

/// For `ferryctl setup DOMAIN`: the records of the existing keys, or how to make one.
pub fn setup_lines(root: &Root, domain: &str) -> Vec<String> {
    let (keys, problems) = keys::load_all(&dir(root));
    let mut out = Vec::new();
    for k in &keys {
        out.extend(record_lines(k, "  "));
    }
    for p in problems {
        out.push(format!("  DKIM: a key not loaded: {p}"));
    }
    if !keys.iter().any(|k| k.domain == domain) {
        out.push(format!(
            "  DKIM: no key for {domain} yet: ferryctl dkim keygen {domain} makes one and prints its record (ferry signs with it at once)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn selectors_are_dated() {
        // 2026-12-01
        assert_eq!(
            default_selector(Algorithm::Rsa2048, 1_796_083_200),
            "s202612"
        );
        assert_eq!(
            default_selector(Algorithm::Ed25519, 1_796_083_200),
            "e202612"
        );
        assert!(keys::valid_selector(&default_selector(
            Algorithm::Rsa2048,
            ferry_common::date::now_secs()
        )));
    }

    #[test]
    fn long_values_are_cut() {
        assert_eq!(abbreviate("v=DKIM1; p=AB"), "v=DKIM1; p=AB");
        let long = format!("v=DKIM1; k=rsa; p={}xyz", "A".repeat(100));
        let a = abbreviate(&long);
        assert!(
            a.starts_with("v=DKIM1; k=rsa; p=AAA") && a.ends_with("AAAAAAAAAxyz"),
            "{a}"
        );
        assert!(a.chars().count() < 60);
    }
}
