//! Where mail for a domain goes: `smtproutes` first (an exact domain, else the default route
//! `:host`), else the domain's MX records in preference order (equal preferences shuffled,
//! RFC 5321 §5.1), else its own A/AAAA (implicit MX). A null MX (RFC 7505) and a domain that
//! does not exist are permanent failures; a DNS server failure or timeout is temporary.
//! Every lookup of one job runs under one overall time limit. A server that is this host is
//! never used (myself.rs): mail for a domain whose best MX is us loops back (5.4.6).

use crate::myself::Myself;
use ferry_common::config::Config;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use std::net::IpAddr;
use std::time::Duration;

/// A server to try, with its addresses (IPv6 and IPv4, in the order to try).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// Named in smtproutes (only such a host gets smarthost credentials).
    pub routed: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    Permanent(String),
    Temporary(String),
}

/// Longest time all the lookups of one routing may take.
pub const DNS_LIMIT: Duration = Duration::from_secs(60);

pub fn resolver(cfg: &Config) -> Result<TokioResolver, String> {
    ferry_dns::resolver(&cfg.resolvconf, Duration::from_secs(5))
}

fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let mut b = [0u8; 4];
        let _ = ferry_sys::random_bytes(&mut b);
        let j = u32::from_ne_bytes(b) as usize % (i + 1);
        v.swap(i, j);
    }
}

/// `[1.2.3.4]` or `[IPv6:...]` as an address.
fn literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

pub async fn route(
    cfg: &Config,
    dns: &TokioResolver,
    me: &Myself,
    domain: &str,
) -> Result<Vec<Host>, RouteError> {
    match tokio::time::timeout(DNS_LIMIT, route_inner(cfg, dns, me, domain)).await {
        Ok(r) => r,
        Err(_) => Err(RouteError::Temporary(format!(
            "DNS lookups for {domain} took longer than {}s",
            DNS_LIMIT.as_secs()
        ))),
    }
}

fn loops(domain: &str) -> RouteError {
    RouteError::Permanent(format!(
        "5.4.6 mail for {domain} loops back to myself (its best mail server is this host)"
    ))
}

async fn route_inner(
    cfg: &Config,
    dns: &TokioResolver,
    me: &Myself,
    domain: &str,
) -> Result<Vec<Host>, RouteError> {
    if let Some(r) = cfg.route_for(domain) {
        let port = r.port.unwrap_or(25);
        if let Some(ip) = literal(&r.host) {
            return Ok(vec![Host {
                name: r.host.clone(),
                addrs: vec![ip],
                port,
                routed: true,
            }]);
        }
        let addrs = addresses(dns, &r.host).await?;
        return Ok(vec![Host {
            name: r.host.clone(),
            addrs,
            port,
            routed: true,
        }]);
    }
    if let Some(ip) = literal(domain) {
        if me.is_me(domain, ip, cfg.remoteport) {
            return Err(loops(domain));
        }
        return Ok(vec![Host {
            name: domain.to_string(),
            addrs: vec![ip],
            port: cfg.remoteport,
            routed: false,
        }]);
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let mut mx: Vec<(u16, String)> = match dns.mx_lookup(fqdn.as_str()).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((
                    m.preference,
                    m.exchange.to_ascii().trim_end_matches('.').to_lowercase(),
                )),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_nx_domain() => {
            return Err(RouteError::Permanent(format!(
                "5.1.2 domain {domain} does not exist (NXDOMAIN)"
            )));
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => {
            return Err(RouteError::Temporary(format!(
                "4.4.3 DNS lookup of MX for {domain} failed: {e}"
            )));
        }
    };
    if mx.is_empty() {
        // No MX: the domain itself is the mail server (RFC 5321 §5.1).
        let addrs = addresses(dns, domain).await?;
        if addrs.iter().any(|ip| me.is_me(domain, *ip, cfg.remoteport)) {
            return Err(loops(domain));
        }
        return Ok(vec![Host {
            name: domain.to_string(),
            addrs,
            port: cfg.remoteport,
            routed: false,
        }]);
    }
    if mx.iter().any(|(_, h)| h.is_empty()) {
        return Err(RouteError::Permanent(format!(
            "5.1.10 {domain} accepts no mail (null MX, RFC 7505)"
        )));
    }
    // Preference order; equal preferences in random order.
    shuffle(&mut mx);
    mx.sort_by_key(|m| m.0);
    let mut hosts = Vec::new();
    let mut last_err = None;
    for (pref, name) in mx {
        match addresses(dns, &name).await {
            Ok(addrs) => {
                if addrs.iter().any(|ip| me.is_me(&name, *ip, cfg.remoteport)) {
                    // We are an MX of this domain: only better ones may take the mail.
                    hosts.retain(|(p, _)| *p < pref);
                    if hosts.is_empty() && last_err.is_none() {
                        return Err(loops(domain));
                    }
                    break;
                }
                hosts.push((
                    pref,
                    Host {
                        name,
                        addrs,
                        port: cfg.remoteport,
                        routed: false,
                    },
                ))
            }
            Err(e) => last_err = Some(e),
        }
    }
    let hosts: Vec<Host> = hosts.into_iter().map(|(_, h)| h).collect();
    if hosts.is_empty() {
        return Err(match last_err {
            Some(RouteError::Permanent(t)) => {
                RouteError::Temporary(format!("no MX host of {domain} has an address: {t}"))
            }
            Some(e) => e,
            None => RouteError::Temporary(format!("no MX host of {domain} has an address")),
        });
    }
    Ok(hosts)
}

/// The IPv6 and IPv4 addresses of a host (both families, IPv6 first).
pub async fn addresses(dns: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, RouteError> {
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let (v6, v4) = tokio::join!(
        dns.ipv6_lookup(fqdn.as_str()),
        dns.ipv4_lookup(fqdn.as_str())
    );
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut nx = 0;
    for r in [v6, v4] {
        match r {
            Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if e.is_nx_domain() => nx += 1,
            Err(e) if e.is_no_records_found() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    if !errors.is_empty() {
        return Err(RouteError::Temporary(format!(
            "4.4.3 DNS lookup of {host} failed: {}",
            errors.join("; ")
        )));
    }
    if nx > 0 {
        return Err(RouteError::Permanent(format!(
            "5.1.2 host {host} does not exist (NXDOMAIN)"
        )));
    }
    Err(RouteError::Permanent(format!(
        "5.1.2 host {host} has no address (no A or AAAA record)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(
            literal("[127.0.0.1]"),
            Some("127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
        );
        assert!(literal("[IPv6:::1]").is_some_and(|ip| ip.is_ipv6()));
        assert_eq!(literal("example.org"), None);
    }
}
