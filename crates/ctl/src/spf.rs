//! A small SPF evaluator for `ferryctl check` (RFC 7208, simply): does the domain's record
//! authorise this host's addresses? `ip4:`, `ip6:`, `a`, `mx` (with their `:domain` and
//! `/prefix` forms) and `all` are evaluated; `include:`, `exists:`, `ptr`, `redirect=` and
//! macros are reported as not evaluated, so the person checks them by hand.

use ferry_common::config::Cidr;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mech {
    All,
    Ip(Cidr),
    A {
        domain: Option<String>,
        v4: u8,
        v6: u8,
    },
    Mx {
        domain: Option<String>,
        v4: u8,
        v6: u8,
    },
    /// include:, exists:, ptr: not evaluated here.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub qualifier: char,
    pub mech: Mech,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub terms: Vec<Term>,
    pub redirect: Option<String>,
}

/// Is this TXT string an SPF record?
pub fn is_spf(txt: &str) -> bool {
    let t = txt.trim_start();
    t.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("v=spf1"))
        && t.get(6..)
            .is_some_and(|r| r.is_empty() || r.starts_with(' '))
}

fn split_prefixes(s: &str) -> Result<(Option<String>, u8, u8), String> {
    // domain/v4//v6, domain/v4, /v4, //v6
    let (rest, v6) = match s.split_once("//") {
        Some((r, p)) => (
            r,
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= 128)
                .ok_or(format!("bad prefix {p:?}"))?,
        ),
        None => (s, 128),
    };
    let (dom, v4) = match rest.split_once('/') {
        Some((d, p)) => (
            d,
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or(format!("bad prefix {p:?}"))?,
        ),
        None => (rest, 32),
    };
    let dom = dom.strip_prefix(':').map(|d| d.to_ascii_lowercase());
    Ok((dom.filter(|d| !d.is_empty()), v4, v6))
}

pub fn parse(txt: &str) -> Result<Record, String> {
    if !is_spf(txt) {
        return Err("not an SPF record".into());
    }
    let mut terms = Vec::new();
    let mut redirect = None;
    for word in txt.split_whitespace().skip(1) {
        let lower = word.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("redirect=") {
            redirect = Some(v.to_string());
            continue;
        }
        if lower.contains('=') {
            continue; // exp= and unknown modifiers do not change the result.
        }
        let (qualifier, body) = match lower.chars().next() {
            Some(q @ ('+' | '-' | '~' | '?')) => (q, &lower[1..]),
            _ => ('+', lower.as_str()),
        };
        let name_end = body.find([':', '/']).unwrap_or(body.len());
        let (name, arg) = body.split_at(name_end);
        let mech = match name {
            "all" if arg.is_empty() => Mech::All,
            "ip4" | "ip6" => {
                let c = arg
                    .strip_prefix(':')
                    .and_then(Cidr::parse)
                    .ok_or(format!("bad {word}"))?;
                if (name == "ip4") != c.addr.is_ipv4() {
                    return Err(format!("bad {word}"));
                }
                Mech::Ip(c)
            }
            "a" | "mx" => {
                let (domain, v4, v6) = split_prefixes(arg)?;
                if domain.as_deref().is_some_and(|d| d.contains('%')) {
                    Mech::Other(word.to_string())
                } else if name == "a" {
                    Mech::A { domain, v4, v6 }
                } else {
                    Mech::Mx { domain, v4, v6 }
                }
            }
            "include" | "exists" | "ptr" => Mech::Other(word.to_string()),
            _ => return Err(format!("unknown mechanism {word:?}")),
        };
        terms.push(Term {
            qualifier,
            mech,
            text: word.to_string(),
        });
    }
    Ok(Record { terms, redirect })
}

/// The result for one address, with the term that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(String),
    Fail(String),
    SoftFail(String),
    Neutral(String),
    /// A term this evaluator does not follow came first.
    NotEvaluated(String),
}

/// The lookups the evaluation needs.
pub trait Lookups {
    async fn addrs(&self, name: &str) -> Vec<IpAddr>;
    async fn mx_hosts(&self, name: &str) -> Vec<String>;
}

fn matches(addrs: &[IpAddr], ip: IpAddr, v4: u8, v6: u8) -> bool {
    addrs.iter().any(|a| {
        Cidr {
            addr: *a,
            prefix: if a.is_ipv4() { v4 } else { v6 },
        }
        .contains(ip)
    })
}

fn by_qualifier(q: char, text: &str) -> Verdict {
    match q {
        '-' => Verdict::Fail(text.into()),
        '~' => Verdict::SoftFail(text.into()),
        '?' => Verdict::Neutral(text.into()),
        _ => Verdict::Pass(text.into()),
    }
}

/// Evaluates `rec` of `domain` for `ip`. At most 10 DNS-querying terms, as RFC 7208 allows.
pub async fn evaluate(dns: &impl Lookups, domain: &str, rec: &Record, ip: IpAddr) -> Verdict {
    let mut lookups = 0;
    for t in &rec.terms {
        let hit = match &t.mech {
            Mech::All => true,
            Mech::Ip(c) => c.contains(ip),
            Mech::Other(w) => return Verdict::NotEvaluated(w.clone()),
            Mech::A { domain: d, v4, v6 } => {
                lookups += 1;
                matches(
                    &dns.addrs(d.as_deref().unwrap_or(domain)).await,
                    ip,
                    *v4,
                    *v6,
                )
            }
            Mech::Mx { domain: d, v4, v6 } => {
                lookups += 1;
                let mut hit = false;
                for h in dns
                    .mx_hosts(d.as_deref().unwrap_or(domain))
                    .await
                    .iter()
                    .take(10)
                {
                    if matches(&dns.addrs(h).await, ip, *v4, *v6) {
                        hit = true;
                        break;
                    }
                }
                hit
            }
        };
        if lookups > 10 {
            return Verdict::Fail("more than 10 DNS lookups (permerror)".into());
        }
        if hit {
            return by_qualifier(t.qualifier, &t.text);
        }
    }
    match &rec.redirect {
        Some(r) => Verdict::NotEvaluated(format!("redirect={r}")),
        None => Verdict::Neutral("no term matched".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl Lookups for Fake {
        async fn addrs(&self, name: &str) -> Vec<IpAddr> {
            match name {
                "mx.example.org" => vec!["192.0.2.10".parse().unwrap()],
                "example.org" | "web.example.org" => vec!["192.0.2.80".parse().unwrap()],
                _ => vec![],
            }
        }
        async fn mx_hosts(&self, name: &str) -> Vec<String> {
            if name == "example.org" {
                vec!["mx.example.org".into()]
            } else {
                vec![]
            }
        }
    }

    fn eval(rec: &str, ip: &str) -> Verdict {
        let r = parse(rec).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(evaluate(&Fake, "example.org", &r, ip.parse().unwrap()))
    }

    #[test]
    fn records() {
        assert!(
            is_spf("v=spf1 -all") && is_spf("V=SPF1") && !is_spf("v=spf10") && !is_spf("v=DMARC1")
        );
        assert_eq!(
            eval("v=spf1 mx -all", "192.0.2.10"),
            Verdict::Pass("mx".into())
        );
        assert_eq!(
            eval("v=spf1 mx -all", "192.0.2.11"),
            Verdict::Fail("-all".into())
        );
        assert_eq!(
            eval("v=spf1 a ~all", "192.0.2.80"),
            Verdict::Pass("a".into())
        );
        assert_eq!(
            eval("v=spf1 a:web.example.org/24 ~all", "192.0.2.99"),
            Verdict::Pass("a:web.example.org/24".into())
        );
        assert_eq!(
            eval("v=spf1 ip4:192.0.2.0/28 -all", "192.0.2.10"),
            Verdict::Pass("ip4:192.0.2.0/28".into())
        );
        assert_eq!(
            eval("v=spf1 ip6:2001:db8::/32 ~all", "192.0.2.10"),
            Verdict::SoftFail("~all".into())
        );
        assert_eq!(
            eval("v=spf1 include:_spf.example.net -all", "192.0.2.10"),
            Verdict::NotEvaluated("include:_spf.example.net".into())
        );
        assert_eq!(
            eval("v=spf1 mx include:x.example -all", "192.0.2.10"),
            Verdict::Pass("mx".into())
        );
        assert_eq!(
            eval("v=spf1 ip4:10.0.0.1", "192.0.2.10"),
            Verdict::Neutral("no term matched".into())
        );
        assert_eq!(
            eval("v=spf1 redirect=_spf.example.org", "192.0.2.10"),
            Verdict::NotEvaluated("redirect=_spf.example.org".into())
        );
        assert!(parse("v=spf1 ip4:nonsense -all").is_err());
        assert!(parse("v=spf1 bogus -all").is_err());
    }
}
