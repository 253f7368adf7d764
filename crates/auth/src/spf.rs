//! One SPF evaluation (RFC 7208) with mail-auth's `check_host()`, and its explanation, for
//! `ferryctl spf`, `ferryctl check` and the verdict on received mail.
//!
//! The identity is the MAIL FROM domain; with a null sender (empty, or `<>`) it is the HELO
//! name (RFC 7208 §2.4: the sender is then postmaster@HELO). mail-auth evaluates the record
//! (include:, redirect=, exists:, ptr, macros, exp=, the limit of 10 DNS-querying terms); two
//! rules it leaves out are added here, from a log of the lookups it made (through the
//! [`ResolverCache`] hooks it offers, which store nothing: hickory-resolver caches the
//! answers):
//!
//! - more than 2 void lookups (NXDOMAIN or no answer, RFC 7208 §4.6.4) is a permerror;
//! - a domain publishing more than one SPF record is a permerror (RFC 7208 §4.5; mail-auth
//!   takes the first one that parses).
//!
//! The whole evaluation has [`TIME_LIMIT`]; past it the result is temperror. The runtime
//! must have its time driver on (`enable_all`).

use hickory_resolver::TokioResolver;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, Parameters, ResolverCache, SpfOutput};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

pub use mail_auth::SpfResult;

/// One evaluation gives up after this (temperror).
pub const TIME_LIMIT: Duration = Duration::from_secs(20);

/// More void lookups than this are a permerror (RFC 7208 §4.6.4).
pub const MAX_VOID_LOOKUPS: usize = 2;

/// Which identity was evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The domain of the MAIL FROM address (`smtp.mailfrom` in Authentication-Results).
    MailFrom,
    /// The HELO name, as the sender was null (`smtp.helo`).
    Helo,
}

/// The outcome of one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfAnswer {
    /// mail-auth's output with the rules above applied: its result, the domain evaluated,
    /// the exp= text of a fail; what mail-auth's DMARC verification and
    /// Authentication-Results take.
    pub output: SpfOutput,
    pub identity: Identity,
    /// One line for a person: the domain, what it says about the address, and why.
    pub explanation: String,
}

impl SpfAnswer {
    pub fn result(&self) -> SpfResult {
        self.output.result()
    }

    /// pass, fail, softfail, neutral, none, temperror or permerror.
    pub fn word(&self) -> &'static str {
        word(self.output.result())
    }

    /// The domain whose record was evaluated (the MAIL FROM domain or the HELO name).
    pub fn domain(&self) -> &str {
        self.output.domain()
    }
}

/// The result's name in RFC 7208 §2.6 and RFC 8601.
pub fn word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// Is this TXT string an SPF record (`v=spf1` alone or followed by a space)?
pub fn is_spf_record(txt: &str) -> bool {
    let t = txt.as_bytes();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// Evaluates SPF for a client at `ip` that said HELO `helo` and MAIL FROM `sender` (without
/// angle brackets; empty or `<>` for the null sender, then the HELO name is evaluated), as
/// host `me` (the `%{r}` macro). Never fails: DNS trouble is temperror.
pub async fn evaluate(
    resolver: &TokioResolver,
    ip: IpAddr,
    helo: &str,
    sender: &str,
    me: &str,
) -> SpfAnswer {
    let sender = sender.trim();
    let sender = if sender == "<>" { "" } else { sender };
    let helo = helo.trim().trim_end_matches('.');
    let identity = if sender.is_empty() {
        Identity::Helo
    } else {
        Identity::MailFrom
    };
    let domain = match identity {
        Identity::Helo => helo.to_ascii_lowercase(),
        Identity::MailFrom => sender
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .trim_end_matches('.')
            .to_ascii_lowercase(),
    };
    let auth = MessageAuthenticator(resolver.clone());
    let events = Mutex::new(Vec::new());
    let hook = |kind| Hook {
        kind,
        events: &events,
    };
    let (txt, mx, v4, v6, ptr) = (
        hook(Kind::Txt),
        hook(Kind::Mx),
        hook(Kind::V4),
        hook(Kind::V6),
        hook(Kind::Ptr),
    );
    let params = match identity {
        Identity::Helo => SpfParameters::verify_ehlo(ip, helo, me),
        Identity::MailFrom => SpfParameters::verify_mail_from(ip, helo, me, sender),
    };
    let params = Parameters::new(params)
        .with_txt_cache(&txt)
        .with_mx_cache(&mx)
        .with_ipv4_cache(&v4)
        .with_ipv6_cache(&v6)
        .with_ptr_cache(&ptr);
    let work = async {
        let output = auth.verify_spf(params).await;
        let log = events.lock().map(|e| e.clone()).unwrap_or_default();
        apply_limits(resolver, output, &log).await
    };
    match tokio::time::timeout(TIME_LIMIT, work).await {
        Ok((output, why)) => answer(output, identity, ip, why),
        Err(_) => {
            let o = SpfOutput::new(domain).with_result(SpfResult::TempError);
            let why = format!("no answer within {} s", TIME_LIMIT.as_secs());
            answer(o, identity, ip, Some(why))
        }
    }
}

fn answer(output: SpfOutput, identity: Identity, ip: IpAddr, why: Option<String>) -> SpfAnswer {
    let d = output.domain().to_string();
    let which = match identity {
        Identity::MailFrom => "the MAIL FROM domain",
        Identity::Helo => "the HELO name, as the sender is null",
    };
    let what = match output.result() {
        SpfResult::Pass => format!("authorises {ip}"),
        SpfResult::Fail => match output.explanation() {
            Some(exp) => format!("does not authorise {ip}; it explains: {exp}"),
            None => format!("does not authorise {ip}"),
        },
        SpfResult::SoftFail => {
            format!("does not authorise {ip}, softly (softfail: accept it, but suspect it)")
        }
        SpfResult::Neutral => format!("says nothing about {ip} (neutral)"),
        SpfResult::None if d.is_empty() || !d.contains('.') => {
            "is not a domain: nothing to evaluate".to_string()
        }
        SpfResult::None => "publishes no SPF record".to_string(),
        SpfResult::TempError => format!(
            "could not be evaluated: a DNS lookup failed ({}); try again later",
            why.as_deref().unwrap_or("timeout or server failure")
        ),
        SpfResult::PermError => format!(
            "has an SPF record that cannot be evaluated: {}",
            why.as_deref().unwrap_or(
                "a syntax error, more than 10 DNS-querying terms, or an include:/redirect= of a domain without an SPF record"
            )
        ),
    };
    let shown = if d.is_empty() { "(empty)" } else { d.as_str() };
    SpfAnswer {
        explanation: format!("{shown} ({which}) {what}"),
        output,
        identity,
    }
}

/// The lookups mail-auth made, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// A lookup began (mail-auth asks its cache first); the name when it could be read.
    Get(Kind, Option<String>),
    /// It found something (mail-auth stores answers only).
    Insert(Kind, Option<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Txt,
    Mx,
    V4,
    V6,
    Ptr,
}

/// A [`ResolverCache`] that stores nothing and logs each call.
struct Hook<'a> {
    kind: Kind,
    events: &'a Mutex<Vec<Event>>,
}

/// The bytes a key hashes: for `str`, its bytes then 0xff (std's `Hasher::write_str`). This
/// is how the hooks learn the names mail-auth asks for (the unit test `names_are_read`
/// keeps the assumption honest; a name that cannot be read is None and only counted).
#[derive(Default)]
struct Capture(Vec<u8>);

impl Hasher for Capture {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        if self.0.len() < 1024 {
            self.0.extend_from_slice(bytes);
        }
    }
}

fn name_of<Q: Hash + ?Sized>(q: &Q) -> Option<String> {
    let mut c = Capture::default();
    q.hash(&mut c);
    let b = c.0.strip_suffix(&[0xff])?;
    let s = std::str::from_utf8(b).ok()?;
    (!s.is_empty() && s.is_ascii()).then(|| s.to_ascii_lowercase())
}

impl<K: Hash, V> ResolverCache<K, V> for Hook<'_> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Ok(mut e) = self.events.lock()
            && e.len() < 1000
        {
            e.push(Event::Get(self.kind, name_of(name)));
        }
        None
    }

    fn remove<Q>(&self, _: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, key: K, _: V, _: std::time::Instant) {
        if let Ok(mut e) = self.events.lock()
            && e.len() < 1000
        {
            e.push(Event::Insert(self.kind, name_of(&key)));
        }
    }
}

/// What the log of one evaluation says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Lookups of a, mx (and its hosts), ptr, include: and redirect= that found nothing.
    voids: usize,
    /// The names whose TXT records were found (the records evaluated, an exp= text).
    txt_found: Vec<String>,
    /// The names exists: asked for (whether they exist is asked again: mail-auth does not
    /// say).
    exists: Vec<Option<String>>,
}

fn tally(events: &[Event], result: SpfResult) -> Tally {
    #[derive(PartialEq)]
    enum Last {
        Nothing,
        Found,
        Void(Kind),
        Exists,
    }
    let mut t = Tally::default();
    let mut last = Last::Nothing;
    let mut i = 0;
    while let Some(ev) = events.get(i) {
        let Event::Get(kind, name) = ev else {
            i += 1;
            continue;
        };
        // exists: asks the A cache, then the AAAA cache, for one name; a, mx and ptr ask
        // only the family of the client's address, once per name.
        if *kind == Kind::V4
            && matches!(events.get(i + 1), Some(Event::Get(Kind::V6, n)) if n == name)
        {
            t.exists.push(name.clone());
            last = Last::Exists;
            i += 2;
            continue;
        }
        if matches!(events.get(i + 1), Some(Event::Insert(k, _)) if k == kind) {
            if *kind == Kind::Txt
                && let Some(n) = name
            {
                t.txt_found.push(n.clone());
            }
            last = Last::Found;
            i += 2;
        } else {
            t.voids += 1;
            last = Last::Void(*kind);
            i += 1;
        }
    }
    // A fail's exp= lookup comes last and is no term (RFC 7208 §6.2); a temperror's last
    // lookup failed rather than found nothing.
    if (result == SpfResult::Fail && last == Last::Void(Kind::Txt))
        || (result == SpfResult::TempError && matches!(last, Last::Void(_)))
    {
        t.voids = t.voids.saturating_sub(1);
    }
    t
}

/// Does `name` have no A and no AAAA record (NXDOMAIN or an empty answer)? None when the
/// question got no answer.
async fn no_address(resolver: &TokioResolver, name: &str) -> Option<bool> {
    match resolver.lookup_ip(name).await {
        Ok(l) => Some(l.iter().next().is_none()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Some(true),
        Err(_) => None,
    }
}

/// The number of SPF records among the TXT records of `name` (None: no answer).
async fn spf_records(resolver: &TokioResolver, name: &str) -> Option<usize> {
    use hickory_resolver::proto::rr::RData;
    match resolver.txt_lookup(name).await {
        Ok(l) => Some(
            l.answers()
                .iter()
                .filter(|r| match &r.data {
                    RData::TXT(t) => {
                        let joined: Vec<u8> =
                            t.txt_data.iter().flat_map(|c| c.iter().copied()).collect();
                        is_spf_record(&String::from_utf8_lossy(&joined))
                    }
                    _ => false,
                })
                .count(),
        ),
        Err(_) => None,
    }
}

/// mail-auth's output with the void-lookup limit and the one-record rule applied; the reason
/// of a permerror found here.
async fn apply_limits(
    resolver: &TokioResolver,
    output: SpfOutput,
    events: &[Event],
) -> (SpfOutput, Option<String>) {
    let r = output.result();
    // none: no record was evaluated; temperror: DNS does not answer, asking again would
    // wait again.
    if matches!(r, SpfResult::None | SpfResult::TempError) {
        return (output, None);
    }
    let t = tally(events, r);
    let permerror = |why: String| {
        (
            SpfOutput::new(output.domain().to_string()).with_result(SpfResult::PermError),
            Some(why),
        )
    };
    for name in &t.txt_found {
        if let Some(n) = spf_records(resolver, name).await
            && n > 1
        {
            return permerror(format!(
                "{} publishes {n} SPF records (one is allowed)",
                name.trim_end_matches('.')
            ));
        }
    }
    let mut voids = t.voids;
    for name in t.exists.iter().flatten() {
        if no_address(resolver, name).await == Some(true) {
            voids += 1;
        }
    }
    if voids > MAX_VOID_LOOKUPS {
        return permerror(format!(
            "{voids} lookups found no record (more than {MAX_VOID_LOOKUPS} void lookups)"
        ));
    }
    (output, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn words() {
        assert_eq!(word(SpfResult::SoftFail), "softfail");
        assert_eq!(word(SpfResult::PermError), "permerror");
        assert_eq!(word(SpfResult::None), "none");
    }

    #[test]
    fn spf_records_are_told_apart() {
        assert!(is_spf_record("v=spf1 -all"));
        assert!(is_spf_record("V=SPF1"));
        assert!(!is_spf_record("v=spf10 -all"));
        assert!(!is_spf_record("v=DMARC1; p=none"));
        assert!(!is_spf_record(" v=spf1"));
    }

    #[test]
    fn names_are_read() {
        // What mail-auth passes: &str (get) and Box<str> (insert).
        assert_eq!(name_of("Example.ORG.").as_deref(), Some("example.org."));
        let b: Box<str> = "a.test.".into();
        assert_eq!(name_of(&b).as_deref(), Some("a.test."));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(name_of(&ip), None);
    }

    fn get(k: Kind, n: &str) -> Event {
        Event::Get(k, Some(n.into()))
    }
    fn ins(k: Kind, n: &str) -> Event {
        Event::Insert(k, Some(n.into()))
    }

    #[test]
    fn voids_and_exists_are_counted() {
        // v=spf1 a:gone exists:x include:inc mx -all, for an IPv4 client.
        let log = [
            get(Kind::Txt, "d."),
            ins(Kind::Txt, "d."),
            get(Kind::V4, "gone."),
            get(Kind::V4, "x."),
            get(Kind::V6, "x."),
            get(Kind::Txt, "inc."),
            ins(Kind::Txt, "inc."),
            get(Kind::Mx, "d."),
            ins(Kind::Mx, "d."),
            get(Kind::V4, "mx1."),
            ins(Kind::V4, "mx1."),
        ];
        let t = tally(&log, SpfResult::Fail);
        assert_eq!(t.voids, 1);
        assert_eq!(t.txt_found, vec!["d.", "inc."]);
        assert_eq!(t.exists, vec![Some("x.".to_string())]);
        // An IPv6 client: a asks AAAA only; exists asks A then AAAA.
        let log = [
            get(Kind::Txt, "d."),
            ins(Kind::Txt, "d."),
            get(Kind::V4, "x."),
            get(Kind::V6, "x."),
            get(Kind::V6, "x."),
            get(Kind::V6, "y."),
            ins(Kind::V6, "y."),
        ];
        let t = tally(&log, SpfResult::Pass);
        assert_eq!((t.voids, t.exists.len()), (1, 1));
        // A fail's exp= that is not there is no void lookup; a temperror's last lookup
        // neither.
        let log = [
            get(Kind::Txt, "d."),
            ins(Kind::Txt, "d."),
            get(Kind::V4, "a."),
            get(Kind::V4, "b."),
            get(Kind::Txt, "exp.d."),
        ];
        assert_eq!(tally(&log, SpfResult::Fail).voids, 2);
        assert_eq!(tally(&log, SpfResult::TempError).voids, 2);
        assert_eq!(tally(&log, SpfResult::Neutral).voids, 3);
    }

    #[test]
    fn explanations_name_the_domain() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let o = SpfOutput::new("example.org".into())
            .with_result(SpfResult::Fail)
            .with_explanation("not our server".into());
        let a = answer(o, Identity::MailFrom, ip, None);
        assert_eq!(a.word(), "fail");
        assert_eq!(
            a.explanation,
            "example.org (the MAIL FROM domain) does not authorise 192.0.2.1; it explains: not our server"
        );
        let o = SpfOutput::new("mx.example.org".into()).with_result(SpfResult::PermError);
        let a = answer(
            o,
            Identity::Helo,
            ip,
            Some("x publishes 2 SPF records".into()),
        );
        assert!(
            a.explanation.starts_with("mx.example.org (the HELO name"),
            "{}",
            a.explanation
        );
        assert!(
            a.explanation.ends_with("x publishes 2 SPF records"),
            "{}",
            a.explanation
        );
    }

    #[test]
    fn a_server_that_does_not_answer_is_a_temperror() {
        // A loopback port nobody listens on: refused at once, no DNS needed.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let r = ferry_dns::resolver(&[port], Duration::from_millis(300)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = rt.block_on(evaluate(&r, ip, "helo.test", "a@example.test", "me.test"));
        assert_eq!(a.word(), "temperror", "{}", a.explanation);
        assert_eq!(a.domain(), "example.test");
        assert_eq!(a.identity, Identity::MailFrom);
        let a = rt.block_on(evaluate(&r, ip, "helo.test", "<>", "me.test"));
        assert_eq!((a.domain(), a.identity), ("helo.test", Identity::Helo));
    }
}
