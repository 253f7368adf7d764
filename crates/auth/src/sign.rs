//! DKIM signing (RFC 6376, RFC 8463) of mail from our own domains, done once before the
//! message is committed to the queue (by `queue` for local injection and by smtpd's queue
//! writer for relay clients and authenticated users), so that every delivery attempt sends
//! the same bytes.
//!
//! The domain signed for is the one of the message's (first) From address, or the nearest
//! parent of it that has keys under control/dkim (relaxed alignment, RFC 7489 §3.1.1); every
//! key of that domain signs, rsa-sha256 and ed25519-sha256 alike, relaxed/relaxed, over
//! [`SIGNED`] (each listed field that is present; From once more than present, so that no
//! From can be added without breaking the signature).

use crate::keys::{DomainKey, Key};
use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, NeedDomain};
use std::path::Path;

/// The fields signed, in this order; From is listed twice (oversigned).
pub const SIGNED: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Autocrypt",
];

enum KeySigner {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct Loaded {
    domain: String,
    selector: String,
    signer: KeySigner,
}

/// The keys of this host, loaded once (at start; smtpd's writer again on reload).
pub struct Signer {
    keys: Vec<Loaded>,
}

impl Signer {
    /// Loads control/dkim; also returns the problems (each naming its file), which the
    /// caller logs: a broken key signs nothing, the others still sign.
    pub fn load(control: &Path) -> (Signer, Vec<String>) {
        let (keys, problems) = crate::keys::load_all(&control.join("dkim"));
        let keys = keys
            .into_iter()
            .map(|k: DomainKey| {
                let signer = match k.key {
                    Key::Rsa(key) => {
                        KeySigner::Rsa(configure(DkimSigner::from_key(key), &k.domain, &k.selector))
                    }
                    Key::Ed25519(key) => KeySigner::Ed25519(configure(
                        DkimSigner::from_key(key),
                        &k.domain,
                        &k.selector,
                    )),
                };
                Loaded {
                    domain: k.domain,
                    selector: k.selector,
                    signer,
                }
            })
            .collect();
        (Signer { keys }, problems)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The domain whose keys sign mail From `domain`: itself or its nearest parent with keys.
    fn domain_for(&self, domain: &str) -> Option<String> {
        crate::keys::nearest_domain(domain, |d| self.keys.iter().any(|k| k.domain == d))
    }

    /// [`Signer::sign`] for the first `len` bytes of the file at `path` (a message being
    /// written into the queue, flushed).
    pub fn sign_file(&self, path: &Path, len: u64) -> (Vec<u8>, Option<String>) {
        use std::io::Read;
        if self.keys.is_empty() {
            return (Vec::new(), None);
        }
        let mut bytes = Vec::new();
        let read = std::fs::File::open(path).and_then(|f| f.take(len).read_to_end(&mut bytes));
        match read {
            Ok(_) => self.sign(&[&bytes]),
            Err(e) => (
                Vec::new(),
                Some(format!("cannot read the message to sign it: {e}")),
            ),
        }
    }

    /// The DKIM-Signature fields for `message` (the chunks, in order, make the whole message:
    /// LF or CR LF line ends), LF line ends, each field ending in LF; empty when its From
    /// domain has no key, or when the header cannot be parsed. Errors name the key.
    pub fn sign(&self, message: &[&[u8]]) -> (Vec<u8>, Option<String>) {
        if self.keys.is_empty() {
            return (Vec::new(), None);
        }
        let whole;
        let bytes: &[u8] = if message.len() == 1 {
            message[0]
        } else {
            whole = message.concat();
            &whole
        };
        let Some(parsed) = AuthenticatedMessage::parse(bytes) else {
            return (Vec::new(), None);
        };
        let Some(from_domain) = parsed
            .from
            .first()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
        else {
            return (Vec::new(), None);
        };
        let Some(domain) = self.domain_for(&from_domain) else {
            return (Vec::new(), None);
        };
        let domain = domain.as_str();
        let mut out = Vec::new();
        let mut error = None;
        for k in self.keys.iter().filter(|k| k.domain == domain) {
            let signed = match &k.signer {
                KeySigner::Rsa(s) => s.sign(bytes),
                KeySigner::Ed25519(s) => s.sign(bytes),
            };
            match signed {
                Ok(sig) => out.extend(sig.to_header().replace("\r\n", "\n").into_bytes()),
                Err(e) => {
                    error = Some(format!(
                        "cannot sign with control/dkim/{}/{}.key: {e}",
                        k.domain, k.selector
                    ))
                }
            }
        }
        (out, error)
    }
}

fn configure<T: SigningKey>(
    s: DkimSigner<T, NeedDomain>,
    domain: &str,
    selector: &str,
) -> DkimSigner<T, Done> {
    s.domain(domain)
        .selector(selector)
        .headers(SIGNED.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}
