//! The DKIM signing keys: `control/dkim/DOMAIN/SELECTOR.key`, one private key per file in PEM
//! (PKCS#8, or PKCS#1 "RSA PRIVATE KEY" as opendkim-genkey and openssl write them); RSA or
//! Ed25519, told apart by the key itself. Every key of a domain signs its mail: a message
//! from a domain with an RSA and an Ed25519 key carries two signatures (RFC 8463 §4 asks for
//! that, as not every receiver knows Ed25519). The files belong to the signing user (ferryq)
//! with mode 0600; `ferryctl dkim keygen` writes them.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;

/// The largest key file read (an RSA 8192 key is about 6 KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

pub enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

impl Key {
    /// The `k=` tag of the DNS record: rsa or ed25519.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "rsa",
            Key::Ed25519(_) => "ed25519",
        }
    }

    /// The public key as DKIM publishes it in `p=` (RFC 6376 §3.6.1, RFC 8463 §4.2): for RSA
    /// the SubjectPublicKeyInfo DER, for Ed25519 the 32 raw bytes.
    pub fn public_der(&self) -> Vec<u8> {
        match self {
            Key::Rsa(k) => spki_rsa(&k.public_key()),
            Key::Ed25519(k) => k.public_key(),
        }
    }
}

/// The first of `domain` and its parents (never a bare top-level domain) for which `has`
/// holds, lower case without a trailing dot: the domain whose keys sign (or seal) for it
/// (relaxed alignment, RFC 7489 §3.1.1).
pub fn nearest_domain(domain: &str, has: impl Fn(&str) -> bool) -> Option<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut d = domain.as_str();
    loop {
        if has(d) {
            return Some(d.to_string());
        }
        match d.split_once('.') {
            Some((_, parent)) if parent.contains('.') => d = parent,
            _ => return None,
        }
    }
}

/// A signing key of a domain.
pub struct DomainKey {
    /// Lower case, without a trailing dot.
    pub domain: String,
    pub selector: String,
    pub key: Key,
}

/// Parses a PEM private key: RSA (PKCS#8 or PKCS#1) or Ed25519 (PKCS#8).
pub fn parse_pem(pem: &[u8]) -> Result<Key, String> {
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    if let PrivateKeyDer::Pkcs8(p8) = &der
        && let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
    {
        return Ok(Key::Ed25519(k));
    }
    RsaKey::<Sha256>::from_key_der(der)
        .map(Key::Rsa)
        .map_err(|e| format!("neither an RSA nor an Ed25519 key: {e}"))
}

/// Is `s` a usable selector (and so a file name)? Letters, digits, '-', '_' and inner dots
/// (RFC 6376 §3.1: a sequence of labels).
pub fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Reads one key file, bounded.
pub fn read_key(path: &Path) -> Result<Key, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{}: larger than {MAX_KEY_FILE} bytes",
            path.display()
        ));
    }
    parse_pem(&buf).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every key under `dir` (control/dkim), sorted by domain and selector, and the problems
/// found (a file that is no key, a name that is no selector), each naming its file. A
/// missing `dir` is no key and no problem.
pub fn load_all(dir: &Path) -> (Vec<DomainKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let Ok(domains) = std::fs::read_dir(dir) else {
        return (keys, problems);
    };
    let mut domains: Vec<_> = domains.flatten().collect();
    domains.sort_by_key(|e| e.file_name());
    for d in domains {
        let Some(domain) = d.file_name().to_str().map(|s| s.to_ascii_lowercase()) else {
            continue;
        };
        if domain.starts_with('.') || !d.path().is_dir() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path()) else {
            problems.push(format!("{}: cannot be read", d.path().display()));
            continue;
        };
        let mut files: Vec<_> = files.flatten().collect();
        files.sort_by_key(|e| e.file_name());
        for f in files {
            let name = f.file_name();
            let Some(selector) = name.to_str().and_then(|n| n.strip_suffix(".key")) else {
                continue;
            };
            if !valid_selector(selector) {
                problems.push(format!(
                    "{}: {selector:?} is not a DKIM selector",
                    f.path().display()
                ));
                continue;
            }
            match read_key(&f.path()) {
                Ok(key) => keys.push(DomainKey {
                    domain: domain.trim_end_matches('.').to_string(),
                    selector: selector.to_string(),
                    key,
                }),
                Err(e) => problems.push(e),
            }
        }
    }
    (keys, problems)
}

/// Wraps an RSAPublicKey (PKCS#1 DER) into a SubjectPublicKeyInfo with the rsaEncryption
/// algorithm, the form `openssl rsa -pubout` writes and DKIM records carry.
fn spki_rsa(pkcs1: &[u8]) -> Vec<u8> {
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALG.to_vec();
    inner.push(0x03);
    der_len(&mut inner, bits.len());
    inner.extend_from_slice(&bits);
    let mut out = vec![0x30];
    der_len(&mut out, inner.len());
    out.extend_from_slice(&inner);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert!(valid_selector("s2026"));
        assert!(valid_selector("mail.2026-12"));
        assert!(!valid_selector(""));
        assert!(!valid_selector("../x"));
        assert!(!valid_selector("a..b"));
        assert!(!valid_selector("a b"));
    }

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        der_len(&mut v, 0x7f);
        der_len(&mut v, 0x80);
        der_len(&mut v, 0x10e);
        assert_eq!(v, [0x7f, 0x81, 0x80, 0x82, 0x01, 0x0e]);
    }

    #[test]
    fn garbage_is_no_key() {
        assert!(parse_pem(b"hello").is_err());
        assert!(
            parse_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
    }
}
