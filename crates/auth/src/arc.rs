//! ARC sealing (RFC 8617) of mail ferry forwards, so that the authentication results it saw
//! on receipt travel with the message: a receiver that trusts ferry can then accept a
//! forwarded message whose SPF (and DMARC through SPF) the forwarding broke.
//!
//! A set is three fields, added on top of the message:
//! - `ARC-Authentication-Results: i=N; ` and the value of ferry's own Authentication-Results
//!   (the one authverify wrote on receipt: [`trusted_results`] says which that is);
//! - `ARC-Message-Signature`: a DKIM-like signature (relaxed/relaxed, rsa-sha256) over the
//!   body and the fields of [`crate::sign::SIGNED`] and DKIM-Signature;
//! - `ARC-Seal`: a signature over every ARC set in order, this one's seal with `b=` empty,
//!   with `cv=none` for the first set, else `cv=pass` (the chain verified on receipt).
//!
//! mail-auth's own sealer wants the verification outputs of the same process; ferry seals
//! later (in the queue writer, or in `queue` for a `&forward`), from the results recorded in
//! the message, so the fields are put together here, with mail-auth's canonicalisation and
//! keys. The key is an RSA key of the forwarding address's domain (or its nearest parent)
//! under control/dkim, the DKIM key: ARC knows rsa-sha256 only (RFC 8617 §4.1.3).

use crate::keys::Key;
use base64::Engine;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{RsaKey, Sha256, SigningKey};
use mail_auth::dkim::Canonicalization;
use std::path::Path;

/// A header field as mail-auth parses it: name, and value with its line end.
type Field<'x> = (&'x [u8], &'x [u8]);

/// The most ARC sets a message may carry (RFC 8617 §4.2.1).
pub const MAX_SETS: u32 = 50;

struct SealKey {
    domain: String,
    selector: String,
    key: RsaKey<Sha256>,
}

/// The RSA keys under control/dkim, loaded once.
pub struct Sealer {
    keys: Vec<SealKey>,
}

/// Why a message was not sealed (for the log; the message goes on unsealed).
#[derive(Debug, PartialEq, Eq)]
pub enum NotSealed {
    /// No RSA key for the domain or a parent of it.
    NoKey(String),
    /// No Authentication-Results of ours above our first Received field.
    NoResults,
    /// The chain on receipt was not a pass (or ended in `cv=fail`, or is full).
    Chain(String),
    Error(String),
}

impl std::fmt::Display for NotSealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSealed::NoKey(d) => write!(f, "no RSA key for {d} under control/dkim"),
            NotSealed::NoResults => write!(f, "no Authentication-Results of ours to seal"),
            NotSealed::Chain(why) => write!(f, "ARC chain {why}"),
            NotSealed::Error(e) => write!(f, "{e}"),
        }
    }
}

impl Sealer {
    /// Loads the RSA keys of control/dkim (Ed25519 ones are left out: ARC does not use them).
    pub fn load(control: &Path) -> Sealer {
        let (keys, _problems) = crate::keys::load_all(&control.join("dkim"));
        let keys = keys
            .into_iter()
            .filter_map(|k| match k.key {
                Key::Rsa(key) => Some(SealKey {
                    domain: k.domain,
                    selector: k.selector,
                    key,
                }),
                Key::Ed25519(_) => None,
            })
            .collect();
        Sealer { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn key_for(&self, domain: &str) -> Option<&SealKey> {
        let d = crate::keys::nearest_domain(domain, |d| self.keys.iter().any(|k| k.domain == d))?;
        self.keys.iter().find(|k| k.domain == d)
    }

    /// The ARC set for a message that is `head` followed by the first `len` bytes of the file
    /// at `path`, sealing the results ferry recorded in it on receipt ([`trusted_results`],
    /// authserv-id `me`), with the key of `domain`. The message ferry recorded them in is
    /// what follows the first `skip` bytes (lines added since, such as a forward's).
    pub fn seal_file(
        &self,
        head: &[u8],
        path: &Path,
        len: u64,
        skip: usize,
        me: &str,
        domain: &str,
    ) -> Result<Vec<u8>, NotSealed> {
        use std::io::Read;
        let mut message = head.to_vec();
        std::fs::File::open(path)
            .and_then(|f| f.take(len).read_to_end(&mut message))
            .map_err(|e| NotSealed::Error(format!("cannot read the message: {e}")))?;
        let recorded = message.get(skip..).unwrap_or_default();
        let results = trusted_results(recorded, me).ok_or(NotSealed::NoResults)?;
        self.seal(recorded, &results, domain, ferry_common::date::now_secs())
    }

    /// The ARC set for `message` (LF or CR LF line ends) with the results `results` (the
    /// value of our Authentication-Results: `authserv-id; method=result ...`), signed with
    /// the key of `domain`, at time `now`: three fields with LF line ends, to put on top.
    pub fn seal(
        &self,
        message: &[u8],
        results: &str,
        domain: &str,
        now: u64,
    ) -> Result<Vec<u8>, NotSealed> {
        let key = self
            .key_for(domain)
            .ok_or_else(|| NotSealed::NoKey(domain.to_string()))?;
        let crlf = crate::verify::crlf(message);
        let msg = AuthenticatedMessage::parse(&crlf)
            .ok_or_else(|| NotSealed::Error("the header cannot be parsed".into()))?;
        let i = next_instance(&msg, results)?;
        let cv = if i == 1 { "none" } else { "pass" };
        let err = |e: mail_auth::Error| NotSealed::Error(format!("cannot sign: {e}"));

        let results = results.trim().replace("\r\n", "\n").replace('\n', "\r\n");
        let aar = format!(" i={i}; {results}\r\n");
        let body = crlf.get(msg.body_offset as usize..).unwrap_or_default();
        let bh = b64(key
            .key
            .hash(Canonicalization::Relaxed.canonical_body(body, 0))
            .as_ref());
        let (signed, names) = signed_fields(&msg);
        let ams_unsigned = fold(
            "ARC-Message-Signature:".len(),
            &format!(
                "i={i}; a=rsa-sha256; c=relaxed/relaxed; d={}; s={}; t={now}; h={}; bh={bh}; b=",
                key.domain,
                key.selector,
                names.join(":")
            ),
        );
        let mut input = Vec::new();
        Canonicalization::Relaxed.canonicalize_headers(signed.into_iter(), &mut input);
        Canonicalization::Relaxed.canonicalize_headers(
            std::iter::once((&b"ARC-Message-Signature"[..], ams_unsigned.as_bytes())),
            &mut input,
        );
        let b = key.key.sign(&input[..]).map_err(err)?;
        let ams = format!("{ams_unsigned}{}\r\n", fold_b64(&b64(&b)));

        let seal_unsigned = format!(
            " i={i}; a=rsa-sha256; t={now}; cv={cv}; d={}; s={}; b=",
            key.domain, key.selector
        );
        let mut input = Vec::new();
        for n in 1..i {
            let set = earlier_set(&msg, n)
                .ok_or_else(|| NotSealed::Chain(format!("misses set i={n}")))?;
            Canonicalization::Relaxed.canonicalize_headers(set.into_iter(), &mut input);
        }
        Canonicalization::Relaxed.canonicalize_headers(
            [
                (&b"ARC-Authentication-Results"[..], aar.as_bytes()),
                (&b"ARC-Message-Signature"[..], ams.as_bytes()),
                (&b"ARC-Seal"[..], seal_unsigned.as_bytes()),
            ]
            .into_iter(),
            &mut input,
        );
        let b = key.key.sign(&input[..]).map_err(err)?;
        let seal = format!("{seal_unsigned}{}\r\n", fold_b64(&b64(&b)));
        let fields =
            format!("ARC-Seal:{seal}ARC-Message-Signature:{ams}ARC-Authentication-Results:{aar}");
        Ok(fields.replace("\r\n", "\n").into_bytes())
    }
}

/// The value of the Authentication-Results field of `me` that ferry itself added on receipt:
/// one above the message's first Received field (what a sender writes is below the Received
/// field ferry adds, and smtpd removes what claims to be ours anyway). None if there is none.
pub fn trusted_results(message: &[u8], me: &str) -> Option<String> {
    for (name, value) in ferry_common::rfc5322::fields(header_of(message)) {
        if name.eq_ignore_ascii_case("received") {
            return None;
        }
        let field = format!("{name}:{value}");
        if ferry_common::rfc5322::claims_authserv_id(field.as_bytes(), me) {
            return Some(value);
        }
    }
    None
}

/// The header of a message (up to its first empty line).
fn header_of(message: &[u8]) -> &[u8] {
    let mut at = 0;
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line == b"\n" || line == b"\r\n" {
            break;
        }
        at += line.len();
    }
    &message[..at]
}

/// The instance this set gets: 1 without sets, else one more than the last, when the chain
/// passed on receipt (`arc=pass` in our results) and did not end in `cv=fail`.
fn next_instance(msg: &AuthenticatedMessage<'_>, results: &str) -> Result<u32, NotSealed> {
    let last = msg.as_headers.iter().map(|h| h.header.i).max().unwrap_or(0);
    if last == 0 && msg.ams_headers.is_empty() && msg.aar_headers.is_empty() {
        return Ok(1);
    }
    if last >= MAX_SETS {
        return Err(NotSealed::Chain(format!("has {last} sets already")));
    }
    if msg
        .as_headers
        .iter()
        .any(|h| h.header.i == last && h.header.cv == mail_auth::arc::ChainValidation::Fail)
    {
        return Err(NotSealed::Chain("ends in cv=fail".into()));
    }
    match method_result(results, "arc") {
        Some(r) if r == "pass" => Ok(last + 1),
        r => Err(NotSealed::Chain(format!(
            "did not pass on receipt (arc={})",
            r.unwrap_or_else(|| "absent".into())
        ))),
    }
}

/// The result word of `method` in an Authentication-Results value (`method=word`).
pub fn method_result(results: &str, method: &str) -> Option<String> {
    unfold(results).split(';').skip(1).find_map(|part| {
        let (m, rest) = part.trim().split_once('=')?;
        (m.trim().eq_ignore_ascii_case(method)).then(|| {
            rest.split(|c: char| c.is_whitespace() || c == '(')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
    })
}

/// The fields of set `i` already in the message, in the order the seal hashes them.
fn earlier_set<'x>(msg: &AuthenticatedMessage<'x>, i: u32) -> Option<Vec<Field<'x>>> {
    let aar = msg.aar_headers.iter().find(|h| h.header.i == i)?;
    let ams = msg.ams_headers.iter().find(|h| h.header.i == i)?;
    let seal = msg.as_headers.iter().find(|h| h.header.i == i)?;
    Some(vec![
        (aar.name, aar.value),
        (ams.name, ams.value),
        (seal.name, seal.value),
    ])
}

/// The fields the message signature covers, in the order hashed, and the `h=` names: every
/// instance of each name of [`crate::sign::SIGNED`] and DKIM-Signature, bottom-most first
/// for a repeated name (RFC 6376 §5.4.2).
fn signed_fields<'x>(msg: &AuthenticatedMessage<'x>) -> (Vec<Field<'x>>, Vec<String>) {
    let mut fields = Vec::new();
    let mut names = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for name in crate::sign::SIGNED
        .iter()
        .copied()
        .chain(["DKIM-Signature"])
    {
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        seen.push(name);
        for (n, v) in msg.headers.iter().rev() {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                fields.push((*n, *v));
                names.push(name.to_string());
            }
        }
    }
    (fields, names)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Joins folded lines (CR LF or LF before white space) into one.
fn unfold(s: &str) -> String {
    s.replace("\r\n", "").replace('\n', "")
}

/// A tag list folded after its `;` where a line would pass 76 characters, with a leading
/// space (it follows the field's colon, `start` characters into the line).
fn fold(start: usize, tags: &str) -> String {
    let mut out = String::from(" ");
    let mut line = start + 1;
    for (n, tag) in tags.split("; ").enumerate() {
        if n > 0 {
            if line + tag.len() + 2 > 76 {
                out.push_str(";\r\n\t");
                line = 1;
            } else {
                out.push_str("; ");
                line += 2;
            }
        }
        out.push_str(tag);
        line += tag.len();
    }
    out
}

/// A base64 value on lines of its own, 72 characters each (white space in `b=` is ignored,
/// RFC 6376 §3.5).
fn fold_b64(b: &str) -> String {
    b.as_bytes()
        .chunks(72)
        .map(|c| format!("\r\n\t{}", String::from_utf8_lossy(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_a_method() {
        let r = "mx.ours.example;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tarc=none; dmarc=fail (p=reject) header.from=b";
        assert_eq!(method_result(r, "arc").as_deref(), Some("none"));
        assert_eq!(method_result(r, "dmarc").as_deref(), Some("fail"));
        assert_eq!(method_result(r, "dkim"), None);
    }

    #[test]
    fn trusted_results_are_above_the_first_received_field() {
        let ours = b"Authentication-Results: mx.ours.example; arc=none\nReceived: from x\nSubject: s\n\nbody\n";
        assert_eq!(
            trusted_results(ours, "mx.ours.example").as_deref(),
            Some(" mx.ours.example; arc=none")
        );
        let below =
            b"Received: from x\nAuthentication-Results: mx.ours.example; arc=pass\n\nbody\n";
        assert_eq!(trusted_results(below, "mx.ours.example"), None);
        let other = b"Authentication-Results: mx.other.example; arc=pass\nReceived: x\n\n";
        assert_eq!(trusted_results(other, "mx.ours.example"), None);
    }

    #[test]
    fn folding_keeps_lines_short_and_tags_intact() {
        let tags = "i=1; a=rsa-sha256; c=relaxed/relaxed; d=ours.example; s=s1; t=1; h=From:From:To:Subject:Date:Message-ID:MIME-Version:Content-Type; bh=abc; b=";
        let f = fold(22, tags);
        let mut lines = f.split("\r\n");
        assert!(lines.next().is_some_and(|l| 22 + l.len() <= 80), "{f}");
        assert!(lines.all(|l| l.len() <= 80), "{f}");
        assert_eq!(f.replace(";\r\n\t", "; ").trim_start(), tags);
    }

    /// A TXT cache for mail-auth holding the one key record the test publishes.
    struct Txts(std::collections::HashMap<Box<str>, mail_auth::Txt>);

    impl mail_auth::ResolverCache<Box<str>, mail_auth::Txt> for Txts {
        fn get<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
        where
            Box<str>: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
        where
            Box<str>: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }
        fn insert(&self, _: Box<str>, _: mail_auth::Txt, _: std::time::Instant) {}
    }

    fn sealer_and_dns(dir: &Path) -> (Sealer, Txts) {
        use mail_auth::common::parse::TxtRecordParser;
        let der = crate::records::generate(crate::records::Algorithm::Rsa2048).unwrap();
        let pem = crate::records::pem(&der);
        std::fs::create_dir_all(dir.join("dkim/ours.example")).unwrap();
        std::fs::write(dir.join("dkim/ours.example/s1.key"), &pem).unwrap();
        let key = crate::keys::parse_pem(pem.as_bytes()).unwrap();
        let record = crate::records::record_value(&key);
        let dk = mail_auth::common::verify::DomainKey::parse(record.as_bytes()).unwrap();
        let mut map = std::collections::HashMap::new();
        map.insert(
            Box::from("s1._domainkey.ours.example."),
            mail_auth::Txt::DomainKey(std::sync::Arc::new(dk)),
        );
        (Sealer::load(dir), Txts(map))
    }

    fn verify(message: &[u8], dns: &Txts) -> mail_auth::DkimResult {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let auth = mail_auth::MessageAuthenticator::new_cloudflare().unwrap();
        let msg = AuthenticatedMessage::parse(message).unwrap();
        let params = mail_auth::Parameters::new(&msg).with_txt_cache(dns);
        rt.block_on(auth.verify_arc(params)).result().clone()
    }

    #[test]
    fn sealed_sets_verify_with_mail_auth_and_a_second_set_chains() {
        let dir = tempfile::tempdir().unwrap();
        let (sealer, dns) = sealer_and_dns(dir.path());
        let message = b"Received: from x\nFrom: A <a@far.example>\nTo: b@ours.example\nSubject: hello\n\nbody line\n";
        let results = " mx.ours.example;\n\tspf=pass smtp.mailfrom=a@far.example;\n\tarc=none";
        let set = sealer
            .seal(message, results, "ours.example", 1_800_000_000)
            .unwrap();
        let text = String::from_utf8(set.clone()).unwrap();
        assert!(text.starts_with("ARC-Seal: i=1; a=rsa-sha256;"), "{text}");
        assert!(text.contains("cv=none"), "{text}");
        assert!(
            text.contains("ARC-Authentication-Results: i=1; mx.ours.example;\n\tspf=pass"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.len() <= 80), "{text}");
        let once = crate::verify::crlf(&[set.as_slice(), message].concat());
        assert_eq!(verify(&once, &dns), mail_auth::DkimResult::Pass);

        // Changed after sealing: the chain fails.
        let changed = String::from_utf8(once.clone())
            .unwrap()
            .replace("hello", "hullo");
        assert_ne!(
            verify(changed.as_bytes(), &dns),
            mail_auth::DkimResult::Pass
        );

        // A second hop that saw arc=pass seals i=2 with cv=pass; both sets verify.
        let set2 = sealer
            .seal(
                &once,
                " mx.ours.example; arc=pass",
                "ours.example",
                1_800_000_100,
            )
            .unwrap();
        let text2 = String::from_utf8(set2.clone()).unwrap();
        assert!(
            text2.contains("i=2") && text2.contains("cv=pass"),
            "{text2}"
        );
        let twice = crate::verify::crlf(&[set2.as_slice(), &once].concat());
        assert_eq!(verify(&twice, &dns), mail_auth::DkimResult::Pass);

        // A chain that did not pass on receipt is not sealed again.
        assert!(matches!(
            sealer.seal(&once, " mx.ours.example; arc=fail", "ours.example", 1),
            Err(NotSealed::Chain(_))
        ));
        // No key for the domain, or a parent of it.
        assert_eq!(
            sealer.seal(message, results, "other.example", 1),
            Err(NotSealed::NoKey("other.example".into()))
        );
        assert!(sealer.seal(message, results, "mx.ours.example", 1).is_ok());
    }
}
