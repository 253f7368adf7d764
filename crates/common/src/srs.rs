//! The Sender Rewriting Scheme (Shevek's SRS, as libsrs2 and postsrsd write it), so that SPF
//! survives forwarding: mail ferry forwards to another domain (an alias or a `&address`
//! forward) leaves with an envelope sender in ferry's own domain (`srsdomain`, default `me`),
//! whose SPF record names this host; a bounce to that address comes back here, is checked
//! and goes on to the original sender.
//!
//! - `user@orig` becomes `SRS0=HHHHHH=TT=orig=user@srsdomain`: TT the day (base32, modulo
//!   1024), HHHHHH a keyed hash (HMAC-SHA256 with `srssecret`, base32) of TT, orig and user
//!   in lower case, so that nobody else can make addresses that ferry forwards bounces to.
//! - An SRS0 address of another forwarder, `SRS0=hash=TT=orig=user@fwd`, becomes
//!   `SRS1=HHHHHH=fwd==hash=TT=orig=user@srsdomain` (the first forwarder's part kept as it
//!   is), and an SRS1 address `SRS1=h=fwd==rest@other` becomes `SRS1=HHHHHH=fwd==rest@ours`:
//!   bounces go back along the chain one hop at a time.
//! - Reversing checks the hash and the age (at most [`MAX_AGE_DAYS`]): SRS0 gives the
//!   original sender, SRS1 the previous forwarder's SRS0 address.

use aws_lc_rs::hmac;

/// How long a rewritten address is honoured, in days (postsrsd's default).
pub const MAX_AGE_DAYS: u64 = 21;
/// Characters of the hash (30 bits).
const HASH_LEN: usize = 6;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The rewriting of one host: its secret and its domain.
#[derive(Clone)]
pub struct Srs {
    key: hmac::Key,
    /// Lower case.
    pub domain: String,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Srs({})", self.domain)
    }
}

/// Why an SRS address of ours is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SrsError {
    Malformed,
    BadHash,
    Expired,
}

impl SrsError {
    pub fn text(&self) -> &'static str {
        match self {
            SrsError::Malformed => "not a well-formed SRS address",
            SrsError::BadHash => "an SRS address this host did not make",
            SrsError::Expired => "an SRS address older than 21 days",
        }
    }
}

impl Srs {
    pub fn new(secret: &[u8], domain: &str) -> Srs {
        Srs {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    fn hash(&self, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(p.to_ascii_lowercase().as_bytes());
            ctx.update(b"\0");
        }
        let tag = ctx.sign();
        base32(tag.as_ref(), HASH_LEN)
    }

    /// `sender` rewritten into our domain at time `now` (seconds). Unchanged: the null
    /// sender, an address without a domain, and one already in our SRS domain.
    pub fn forward(&self, sender: &str, now: u64) -> String {
        let Some((local, domain)) = sender.rsplit_once('@') else {
            return sender.to_string();
        };
        if local.is_empty() || domain.is_empty() || domain.eq_ignore_ascii_case(&self.domain) {
            return sender.to_string();
        }
        if let Some(rest) = strip_tag(local, "srs1") {
            // SRS1=h=fwd==rest: keep fwd==rest, hash again with our key.
            if let Some((_, kept)) = rest.split_once('=')
                && let Some((fwd, tail)) = kept.split_once("==")
            {
                let h = self.hash(&[fwd, tail]);
                return format!("SRS1={h}={fwd}=={tail}@{}", self.domain);
            }
        }
        if let Some(rest) = strip_tag(local, "srs0") {
            let h = self.hash(&[domain, rest]);
            return format!("SRS1={h}={domain}=={rest}@{}", self.domain);
        }
        let tt = day_stamp(now);
        let h = self.hash(&[&tt, domain, local]);
        format!("SRS0={h}={tt}={domain}={local}@{}", self.domain)
    }

    /// The address a bounce to `rcpt` goes on to: None when `rcpt` is not an SRS address of
    /// our domain, an error when it is one but was not made here or is too old.
    pub fn reverse(&self, rcpt: &str, now: u64) -> Option<Result<String, SrsError>> {
        let (local, domain) = rcpt.rsplit_once('@')?;
        if !domain
            .trim_end_matches('.')
            .eq_ignore_ascii_case(&self.domain)
        {
            return None;
        }
        if let Some(rest) = strip_tag(local, "srs0") {
            return Some(self.reverse0(rest, now));
        }
        let rest = strip_tag(local, "srs1")?;
        Some(self.reverse1(rest))
    }

    fn reverse0(&self, rest: &str, now: u64) -> Result<String, SrsError> {
        let mut parts = rest.splitn(4, '=');
        let (Some(h), Some(tt), Some(domain), Some(user)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SrsError::Malformed);
        };
        if domain.is_empty() || user.is_empty() || tt.len() != 2 {
            return Err(SrsError::Malformed);
        }
        if !h.eq_ignore_ascii_case(&self.hash(&[tt, domain, user])) {
            return Err(SrsError::BadHash);
        }
        let then = day_value(tt).ok_or(SrsError::Malformed)?;
        let today = (now / 86_400) % 1024;
        if (today + 1024 - then) % 1024 > MAX_AGE_DAYS {
            return Err(SrsError::Expired);
        }
        Ok(format!("{user}@{domain}"))
    }

    fn reverse1(&self, rest: &str) -> Result<String, SrsError> {
        let (h, kept) = rest.split_once('=').ok_or(SrsError::Malformed)?;
        let (fwd, tail) = kept.split_once("==").ok_or(SrsError::Malformed)?;
        if fwd.is_empty() || tail.is_empty() {
            return Err(SrsError::Malformed);
        }
        if !h.eq_ignore_ascii_case(&self.hash(&[fwd, tail])) {
            return Err(SrsError::BadHash);
        }
        Ok(format!("SRS0={tail}@{fwd}"))
    }
}

/// `SRS0=rest` (any case; `=`, `-` or `+` after the tag, as libsrs2 accepts) → `rest`.
fn strip_tag<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..tag.len())?;
    if !head.eq_ignore_ascii_case(tag) {
        return None;
    }
    let rest = &local[tag.len()..];
    rest.strip_prefix(['=', '-', '+'])
}

/// Today as two base32 characters: days since 1970, modulo 1024.
fn day_stamp(now: u64) -> String {
    let d = ((now / 86_400) % 1024) as usize;
    let b = BASE32;
    format!("{}{}", b[d >> 5] as char, b[d & 31] as char)
}

fn day_value(tt: &str) -> Option<u64> {
    let v = |c: u8| {
        BASE32
            .iter()
            .position(|b| *b == c.to_ascii_lowercase())
            .map(|p| p as u64)
    };
    let t = tt.as_bytes();
    Some(v(*t.first()?)? << 5 | v(*t.get(1)?)?)
}

/// The first `len` base32 characters of `bytes`.
fn base32(bytes: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 && out.len() < len {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
        if out.len() == len {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn forward_and_back() {
        let s = Srs::new(b"secret", "Fwd.Example");
        let f = s.forward("Joe@Far.Example", NOW);
        assert!(
            f.starts_with("SRS0=") && f.ends_with("=Far.Example=Joe@fwd.example"),
            "{f}"
        );
        assert_eq!(s.reverse(&f, NOW), Some(Ok("Joe@Far.Example".into())));
        // Receivers may change the case of the local part.
        assert_eq!(
            s.reverse(&f.to_uppercase(), NOW + 86_400),
            Some(Ok("JOE@FAR.EXAMPLE".into()))
        );
        assert_eq!(
            s.reverse(&f, NOW + 22 * 86_400),
            Some(Err(SrsError::Expired))
        );
        // Another key did not make it.
        let other = Srs::new(b"other", "fwd.example");
        assert_eq!(other.reverse(&f, NOW), Some(Err(SrsError::BadHash)));
        let forged = f.replace("=Joe@", "=Ann@");
        assert_eq!(s.reverse(&forged, NOW), Some(Err(SrsError::BadHash)));
        assert_eq!(
            s.reverse("SRS0=abc@fwd.example", NOW),
            Some(Err(SrsError::Malformed))
        );
        // Not ours: not an SRS address of this domain.
        assert_eq!(s.reverse("joe@fwd.example", NOW), None);
        assert_eq!(
            s.reverse(&f.replace("@fwd.example", "@x.example"), NOW),
            None
        );
    }

    #[test]
    fn left_alone() {
        let s = Srs::new(b"secret", "fwd.example");
        assert_eq!(s.forward("", NOW), "");
        assert_eq!(s.forward("ann@fwd.example", NOW), "ann@fwd.example");
        let f = s.forward("joe@far.example", NOW);
        assert_eq!(s.forward(&f, NOW), f);
    }

    #[test]
    fn a_second_forwarder_makes_srs1_and_bounces_go_back_one_hop() {
        let first = Srs::new(b"one", "first.example");
        let second = Srs::new(b"two", "second.example");
        let a = first.forward("joe@far.example", NOW);
        let b = second.forward(&a, NOW);
        assert!(
            b.starts_with("SRS1=")
                && b.contains("=first.example==")
                && b.ends_with("@second.example"),
            "{b}"
        );
        // Back to the first forwarder's address, which the first forwarder reverses.
        assert_eq!(second.reverse(&b, NOW), Some(Ok(a.clone())));
        assert_eq!(first.reverse(&a, NOW), Some(Ok("joe@far.example".into())));
        // A third forwarder keeps the first forwarder's part.
        let third = Srs::new(b"three", "third.example");
        let c = third.forward(&b, NOW);
        assert!(
            c.starts_with("SRS1=")
                && c.contains("=first.example==")
                && c.ends_with("@third.example"),
            "{c}"
        );
        assert_eq!(third.reverse(&c, NOW), Some(Ok(a)));
        // A changed forwarder part is refused.
        assert_eq!(
            second.reverse(&b.replace("=first.example==", "=evil.example=="), NOW),
            Some(Err(SrsError::BadHash))
        );
    }

    #[test]
    fn day_stamps_round_trip() {
        for d in [0u64, 1, 31, 32, 1023, 1024, 20_000] {
            let tt = day_stamp(d * 86_400);
            assert_eq!(day_value(&tt), Some(d % 1024));
        }
    }
}
