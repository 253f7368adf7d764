//! A self-signed certificate for STARTTLS (rcgen, ECDSA P-256), written to control/tlscert
//! and control/tlskey when neither exists. Used by `ferryctl setup`, `ferryctl init --demo`
//! and the hidden `ferryctl tls-selfsigned [NAME]`.
//!
//! The key is mode 0640 root:ferryd with privilege separation (smtpd reads it again as
//! ferryd on HUP), 0600 otherwise.

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

#[cfg(test)]
mod tests {
    use super::*;

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
