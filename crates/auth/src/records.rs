//! New DKIM keys and the DNS records that publish them (`ferryctl dkim`, `ferryctl setup`,
//! `ferryctl check`).
//!
//! A key is made by aws-lc-rs (RSA 2048, Ed25519), as PKCS#8 (v1, which every tool reads),
//! and written as PEM "PRIVATE KEY", the form [`crate::keys`] reads. Its record is the TXT record
//! `SELECTOR._domainkey.DOMAIN` with the value `v=DKIM1; k=rsa; p=BASE64` (RFC 6376 §3.6.1;
//! k=ed25519, RFC 8463), which a zone file gives as strings of at most 255 bytes each.

use crate::keys::Key;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The kinds of key `ferryctl dkim keygen` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA, 2048 bits (rsa-sha256), which every verifier knows.
    Rsa2048,
    /// Ed25519 (ed25519-sha256, RFC 8463), beside an RSA key.
    Ed25519,
}

/// The longest string of a TXT record (RFC 1035 §3.3: a length byte).
pub const MAX_TXT_STRING: usize = 255;

/// A new private key, PKCS#8 DER.
pub fn generate(alg: Algorithm) -> Result<Vec<u8>, String> {
    match alg {
        Algorithm::Rsa2048 => {
            use aws_lc_rs::encoding::AsDer;
            use aws_lc_rs::rsa::{KeyPair, KeySize};
            let k = KeyPair::generate(KeySize::Rsa2048)
                .map_err(|e| format!("cannot make an RSA key: {e}"))?;
            k.as_der()
                .map(|d| d.as_ref().to_vec())
                .map_err(|e| format!("cannot encode the RSA key: {e}"))
        }
        // PKCS#8 v1 (RFC 8410), as `openssl genpkey -algorithm ed25519` writes it: OpenSSL
        // 3.0 cannot read the v2 form (with the public key) that mail-auth's generate_pkcs8
        // gives.
        Algorithm::Ed25519 => aws_lc_rs::signature::Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8v1())
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| format!("cannot make an Ed25519 key: {e}")),
    }
}

/// PKCS#8 DER as PEM ("PRIVATE KEY", 64 columns).
pub fn pem(pkcs8_der: &[u8]) -> String {
    let b = STANDARD.encode(pkcs8_der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// The name of the record: `SELECTOR._domainkey.DOMAIN` (no final dot).
pub fn record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{}", domain.trim_end_matches('.'))
}

/// The value of the record: `v=DKIM1; k=rsa; p=BASE64`.
pub fn record_value(key: &Key) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        key.kind(),
        STANDARD.encode(key.public_der())
    )
}

/// `value` as the strings of a TXT record, each at most 255 bytes: the tags before `p=` in
/// one, then `p=` and the key.
pub fn txt_strings(value: &str) -> Vec<String> {
    let (head, tail) = match value.find("p=") {
        Some(i) if i > 0 => value.split_at(i),
        _ => ("", value),
    };
    let mut out = Vec::new();
    for part in [head, tail] {
        let mut rest = part;
        while !rest.is_empty() {
            let mut n = rest.len().min(MAX_TXT_STRING);
            while !rest.is_char_boundary(n) {
                n -= 1;
            }
            let (a, b) = rest.split_at(n);
            out.push(a.to_string());
            rest = b;
        }
    }
    out
}

/// The record as a zone file line:
/// `s202612._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; " "p=..." "..." )`.
pub fn zone_line(selector: &str, domain: &str, key: &Key) -> String {
    let strings: Vec<String> = txt_strings(&record_value(key))
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    format!(
        "{}. IN TXT ( {} )",
        record_name(selector, domain),
        strings.join(" ")
    )
}

/// A published DKIM record (its strings joined): the key type (`k=`, rsa when absent) and
/// the public key bytes (`p=`). An error for a TXT record that is no DKIM key record, or
/// whose key was revoked (empty `p=`).
pub fn parse_record(txt: &str) -> Result<(String, Vec<u8>), String> {
    let mut kind = "rsa".to_string();
    let mut p = None;
    for (n, tag) in txt.split(';').enumerate() {
        let Some((name, value)) = tag.split_once('=') else {
            if tag.trim().is_empty() {
                continue;
            }
            return Err(format!("{:?} is no tag=value", tag.trim()));
        };
        let name = name.trim();
        let value: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match name {
            "v" if n == 0 && value == "DKIM1" => {}
            "v" => return Err(format!("v={value} is not DKIM1 first")),
            "k" => kind = value.to_ascii_lowercase(),
            "p" => p = Some(value),
            _ => {}
        }
    }
    match p {
        None => Err("no p= tag".into()),
        Some(v) if v.is_empty() => Err("the key is revoked (empty p=)".into()),
        Some(v) => STANDARD
            .decode(v.as_bytes())
            .map(|b| (kind, b))
            .map_err(|e| format!("p= is not base64: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys;

    #[test]
    fn rsa_key_round_trip() {
        let der = generate(Algorithm::Rsa2048).unwrap();
        let pem = pem(&der);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let key = keys::parse_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.kind(), "rsa");
        let value = record_value(&key);
        assert!(
            value.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
            "{value}"
        );
        let (kind, p) = parse_record(&value).unwrap();
        assert_eq!((kind.as_str(), p), ("rsa", key.public_der()));
        let strings = txt_strings(&value);
        assert_eq!(strings[0], "v=DKIM1; k=rsa; ");
        assert!(strings.iter().all(|s| s.len() <= MAX_TXT_STRING));
        assert!(strings.len() >= 3, "{strings:?}");
        assert_eq!(strings.concat(), value);
        let line = zone_line("s202612", "example.com", &key);
        assert!(
            line.starts_with(
                "s202612._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; \" \"p=MIIB"
            ),
            "{line}"
        );
        assert!(line.ends_with("\" )"));
        // Two keys differ.
        let other =
            keys::parse_pem(super::pem(&generate(Algorithm::Rsa2048).unwrap()).as_bytes()).unwrap();
        assert_ne!(other.public_der(), key.public_der());
    }

    #[test]
    fn ed25519_key_round_trip() {
        let der = generate(Algorithm::Ed25519).unwrap();
        // PKCS#8 v1 (version 0), the 32-byte seed: RFC 8410 §7.
        assert_eq!(der.len(), 48);
        assert_eq!(der[..5], [0x30, 0x2e, 0x02, 0x01, 0x00]);
        let key = keys::parse_pem(pem(&der).as_bytes()).unwrap();
        assert_eq!(key.kind(), "ed25519");
        assert_eq!(key.public_der().len(), 32);
        let value = record_value(&key);
        assert_eq!(
            txt_strings(&value),
            vec!["v=DKIM1; k=ed25519; ".to_string(), value[20..].to_string()]
        );
        assert_eq!(
            parse_record(&value).unwrap(),
            ("ed25519".to_string(), key.public_der())
        );
    }

    #[test]
    fn names_and_strings() {
        assert_eq!(
            record_name("sel", "example.org."),
            "sel._domainkey.example.org"
        );
        let long = format!("p={}", "A".repeat(600));
        let s = txt_strings(&long);
        assert_eq!(
            s.iter().map(String::len).collect::<Vec<_>>(),
            vec![255, 255, 92]
        );
        assert_eq!(txt_strings(""), Vec::<String>::new());
    }

    #[test]
    fn published_records() {
        assert_eq!(
            parse_record("v=DKIM1; k=rsa; p=AAEC").unwrap(),
            ("rsa".to_string(), vec![0, 1, 2])
        );
        // No k=: rsa. Spaces inside p= (a record split badly by hand) are folding.
        assert_eq!(parse_record("p=AA EC").unwrap().1, vec![0, 1, 2]);
        assert!(parse_record("v=DKIM1; p=").unwrap_err().contains("revoked"));
        assert!(parse_record("v=spf1 -all").is_err());
        assert!(parse_record("v=DKIM1; k=rsa").is_err());
        assert!(parse_record("v=DKIM1; p=!!").is_err());
        assert!(parse_record("k=rsa; v=DKIM1; p=AAEC").is_err());
    }
}
