//! DNS lookups for `ferryctl check` (dnscheck.rs), with hickory-resolver: A/AAAA, MX, TXT
//! and PTR, each answer sorted into found / no such record / no such name / error. SPF is
//! evaluated by ferry_auth::spf on the same resolver.
//!
//! hickory-resolver is async only: the caller runs one current-thread tokio runtime. Each
//! lookup has 3 s and 2 attempts, and a limit of its own. The name servers are
//! control/resolvconf when it lists any, else /etc/resolv.conf.

use ferry_common::config::Config;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData};
use std::net::IpAddr;
use std::time::Duration;

const PER_LOOKUP: Duration = Duration::from_secs(8);

/// What one lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Found(T),
    /// The name exists, with no record of this type.
    NoData,
    NxDomain,
    /// Timeout, SERVFAIL, REFUSED, no server: nothing can be said.
    Error(String),
}

impl<T> Answer<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Answer::Found(v) => Some(v),
            _ => None,
        }
    }
}

pub struct Dns {
    r: TokioResolver,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn plain(n: &Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl Dns {
    pub fn new(cfg: &Config) -> Result<Dns, String> {
        ferry_dns::resolver(&cfg.resolvconf, Duration::from_secs(3)).map(|r| Dns { r })
    }

    /// The resolver itself, for ferry_auth::spf.
    pub fn resolver(&self) -> &TokioResolver {
        &self.r
    }

    async fn query<T>(
        &self,
        fut: impl std::future::Future<
            Output = Result<hickory_resolver::lookup::Lookup, hickory_resolver::net::NetError>,
        >,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Answer<Vec<T>> {
        match tokio::time::timeout(PER_LOOKUP, fut).await {
            Err(_) => Answer::Error("timed out".into()),
            Ok(Ok(l)) => {
                let v: Vec<T> = l.answers().iter().filter_map(|r| pick(&r.data)).collect();
                if v.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Found(v)
                }
            }
            Ok(Err(e)) if e.is_nx_domain() => Answer::NxDomain,
            Ok(Err(e)) if e.is_no_records_found() => Answer::NoData,
            Ok(Err(e)) => Answer::Error(e.to_string()),
        }
    }

    /// A and AAAA together.
    pub async fn ips(&self, name: &str) -> Answer<Vec<IpAddr>> {
        let n = fqdn(name);
        // Both at once: an unreachable server costs one time limit, not two.
        let (a, aaaa) = tokio::join!(
            self.query(self.r.ipv4_lookup(n.as_str()), |d| if let RData::A(a) = d {
                Some(IpAddr::V4(a.0))
            } else {
                None
            }),
            self.query(self.r.ipv6_lookup(n.as_str()), |d| {
                if let RData::AAAA(a) = d {
                    Some(IpAddr::V6(a.0))
                } else {
                    None
                }
            }),
        );
        match (a, aaaa) {
            (Answer::Found(mut x), Answer::Found(y)) => {
                x.extend(y);
                Answer::Found(x)
            }
            (Answer::Found(x), _) | (_, Answer::Found(x)) => Answer::Found(x),
            (Answer::Error(e), _) | (_, Answer::Error(e)) => Answer::Error(e),
            (Answer::NxDomain, _) => Answer::NxDomain,
            _ => Answer::NoData,
        }
    }

    /// MX records, most preferred first: (preference, host without the final dot).
    pub async fn mx(&self, name: &str) -> Answer<Vec<(u16, String)>> {
        let mut a = self
            .query(self.r.mx_lookup(fqdn(name).as_str()), |d| {
                if let RData::MX(m) = d {
                    Some((m.preference, plain(&m.exchange)))
                } else {
                    None
                }
            })
            .await;
        if let Answer::Found(v) = &mut a {
            v.sort();
        }
        a
    }

    /// TXT records, each one's strings joined.
    pub async fn txt(&self, name: &str) -> Answer<Vec<String>> {
        self.query(self.r.txt_lookup(fqdn(name).as_str()), |d| {
            if let RData::TXT(t) = d {
                Some(
                    t.txt_data
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect(),
                )
            } else {
                None
            }
        })
        .await
    }

    pub async fn ptr(&self, ip: IpAddr) -> Answer<Vec<String>> {
        self.query(self.r.reverse_lookup(Name::from(ip)), |d| {
            if let RData::PTR(p) = d {
                Some(plain(&p.0))
            } else {
                None
            }
        })
        .await
    }
}
