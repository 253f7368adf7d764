//! A self-signed certificate for STARTTLS (rcgen, ECDSA P-256), written to control/tlscert
//! and control/tlskey when neither exists. Used by `ferryctl setup`, `ferryctl init --demo`
//! and the hidden `ferryctl tls-selfsigned [NAME]`.
//!
//! The key is mode 0640 root:ferryd with privilege separation, 0600 otherwise (smtpd's root
//! helper reads it on HUP, so a root-only 0600 key, certbot's, works as well).
//!
//! Also what `ferryctl check` needs to see the certificate smtpd serves: [`served`] (EHLO,
//! STARTTLS, the handshake, the leaf certificate), [`disk`] (the first certificate of
//! control/tlscert) and [`not_after`] (its expiry, from the DER).

use anyhow::{Context, Result};
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The certificate and key, PEM.
pub fn generate(name: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).context("bad certificate name")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let (y, m, d) = today();
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn today() -> (i32, u8, u8) {
    let iso = ferry_common::date::iso(ferry_common::date::now_secs());
    let num = |r: std::ops::Range<usize>| iso.get(r).and_then(|s| s.parse::<i32>().ok());
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m as u8, d as u8),
        _ => (2026, 1, 1),
    }
}

/// What `ensure` did or would do.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    WouldWrite,
    /// Both files exist: nothing to do.
    Present,
    /// Only one of the two exists: left alone, with the reason.
    Partial(String),
}

/// Writes a self-signed pair for `name` if neither control/tlscert nor control/tlskey exists.
pub fn ensure(root: &Root, name: &str, dry_run: bool) -> Result<Outcome> {
    let cert = root.control_file("tlscert");
    let key = root.control_file("tlskey");
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(Outcome::Present),
        (true, false) => {
            return Ok(Outcome::Partial(
                "control/tlscert exists without control/tlskey: put its key there, or remove tlscert to get a self-signed pair".into(),
            ));
        }
        (false, true) => {
            return Ok(Outcome::Partial(
                "control/tlskey exists without control/tlscert: put its certificate there, or remove tlskey to get a self-signed pair".into(),
            ));
        }
        (false, false) => {}
    }
    if dry_run {
        return Ok(Outcome::WouldWrite);
    }
    let (cert_pem, key_pem) = generate(name)?;
    write_new(&key, &key_pem, 0o600)?;
    if Mode::of_root(root) == Mode::Separated && ferry_sys::running_as_root() {
        let gid = nix::unistd::Group::from_name(users::SMTPD)?.map(|g| g.gid);
        nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(0)), gid)
            .with_context(|| format!("cannot give {} to root:{}", key.display(), users::SMTPD))?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
    }
    write_new(&cert, &cert_pem, 0o644)?;
    Ok(Outcome::Written)
}

/// Creates `path` (never replacing a file) with `mode` from the start.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// Reads one SMTP reply (all its lines), at most 64 KiB.
fn reply(r: &mut impl std::io::BufRead) -> Result<(u16, String), String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut std::io::Read::take(&mut *r, 4096), &mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        all.push_str(&line);
        let b = line.as_bytes();
        if b.len() < 4 || b[3] != b'-' || all.len() > 65_536 {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, all));
        }
    }
}

/// What smtpd on `addr` serves: Ok(Some(leaf certificate DER)), Ok(None) when it offers no
/// STARTTLS.
pub fn served(addr: std::net::SocketAddr) -> Result<Option<Vec<u8>>, String> {
    use std::io::{BufReader, Write};
    use std::time::Duration;
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let step = |r: &mut BufReader<std::net::TcpStream>, want: u16, what: &str| {
        let (code, text) = reply(r)?;
        if code == want {
            Ok(text)
        } else {
            Err(format!("{what}: {}", text.trim()))
        }
    };
    step(&mut r, 220, "greeting")?;
    w.write_all(b"EHLO ferryctl.check\r\n")
        .map_err(|e| e.to_string())?;
    let ehlo = step(&mut r, 250, "EHLO")?;
    if !ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|x| x.trim().eq_ignore_ascii_case("STARTTLS"))
    }) {
        let _ = w.write_all(b"QUIT\r\n");
        return Ok(None);
    }
    w.write_all(b"STARTTLS\r\n").map_err(|e| e.to_string())?;
    step(&mut r, 220, "STARTTLS")?;
    if !r.buffer().is_empty() {
        return Err("the server sent more after 220 to STARTTLS".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(ferry_tls::AcceptAny(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("ferry.invalid")
        .map_err(|e| e.to_string())?
        .to_owned();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut sock = r.into_inner();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("no certificate in the handshake")?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let _ = tls.write_all(b"QUIT\r\n");
    Ok(Some(leaf))
}

/// The first certificate of a PEM file (DER).
pub fn disk(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut it =
        rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())?;
    match it.next() {
        Some(Ok(c)) => Ok(c.as_ref().to_vec()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no certificate in it".into()),
    }
}

/// One DER element: (tag, content, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

/// The notAfter of an X.509 certificate (DER), in seconds since 1970.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = tlv(der).filter(|t| t.0 == 0x30)?;
    let (_, tbs, _) = tlv(cert).filter(|t| t.0 == 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2; // version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = tlv(rest).filter(|t| t.0 == 0x30)?;
    let (_, _, after) = tlv(validity)?;
    let (tag, t, _) = tlv(after)?;
    let t = std::str::from_utf8(t).ok()?;
    let digits = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(t.get(0..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, t.get(2..)?)
        }
        0x18 => (digits(t.get(0..4)?)?, t.get(4..)?),
        _ => return None,
    };
    let f = |r: std::ops::Range<usize>| rest.get(r).and_then(digits);
    let (mo, d, h, mi, s) = (f(0..2)?, f(2..4)?, f(4..6)?, f(6..8)?, f(8..10)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-03-04 00:00:00 UTC
        assert_eq!(not_after(cert.der()), Some(1_930_348_800));
        params.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(2_840_140_800));
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None);
    }

    #[test]
    fn pair_is_written_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("control")).unwrap();
        let root = Root::at(d.path());
        assert_eq!(
            ensure(&root, "mail.example.org", true).unwrap(),
            Outcome::WouldWrite
        );
        assert!(!root.control_file("tlscert").exists());
        assert_eq!(
            ensure(&root, "mail.example.org", false).unwrap(),
            Outcome::Written
        );
        let cert = std::fs::read_to_string(root.control_file("tlscert")).unwrap();
        let key = std::fs::read_to_string(root.control_file("tlskey")).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.contains("PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.control_file("tlskey"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert!(mode == 0o600 || mode == 0o640, "{mode:o}");
        assert_eq!(ensure(&root, "x", false).unwrap(), Outcome::Present);
        std::fs::remove_file(root.control_file("tlskey")).unwrap();
        assert!(matches!(
            ensure(&root, "x", false).unwrap(),
            Outcome::Partial(_)
        ));
    }
}
