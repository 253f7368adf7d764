//! The DNS part of `ferryctl check`, as the online checkers do it: A/AAAA of `me`; for each
//! local domain its MX (pointing at `me`, or at a name with one of me's addresses), SPF
//! (present, one record, authorising me's addresses: evaluated by ferry_auth::spf as a
//! receiver would, for MAIL FROM postmaster@DOMAIN and HELO me) and DMARC; the PTR of me's
//! addresses; for each DKIM key in control/dkim, its record (dkim.rs). Each verdict carries
//! the record to publish as the fix. The lookups are in dns.rs.

use crate::check::{Item, fail, ok, warn};
use crate::dns::{Answer, Dns};
use ferry_auth::spf::{self, SpfResult};
use ferry_common::config::Config;
use ferry_common::root::Root;
use std::net::IpAddr;
use std::time::Duration;

/// The whole DNS check gives up after this.
const OVERALL: Duration = Duration::from_secs(60);

fn ip_list(v: &[IpAddr]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn resolver_fix() -> &'static str {
    "check that the name servers answer (control/resolvconf, else /etc/resolv.conf), then ferryctl check again"
}

/// None when DNS cannot be asked at all (then nothing else is checked).
async fn check_me(dns: &Dns, me: &str, out: &mut Vec<Item>) -> Option<Vec<IpAddr>> {
    match dns.ips(me).await {
        Answer::Found(v) => {
            out.push(ok(format!("DNS: me ({me}) has address {}", ip_list(&v))));
            Some(v)
        }
        Answer::NoData | Answer::NxDomain => {
            out.push(fail(
                format!("DNS: me ({me}) has no A or AAAA record"),
                format!("publish: {me}. IN A <this server's public address>"),
            ));
            Some(Vec::new())
        }
        Answer::Error(e) => {
            out.push(warn(
                format!("DNS: not checked further: cannot look up me ({me}): {e}"),
                resolver_fix(),
            ));
            None
        }
    }
}

async fn check_mx(dns: &Dns, d: &str, me: &str, mine: &[IpAddr], out: &mut Vec<Item>) {
    let publish = format!("publish: {d}. IN MX 10 {me}.");
    match dns.mx(d).await {
        Answer::Found(v) if v.iter().all(|(_, h)| h.is_empty()) => {
            out.push(fail(
                format!("DNS: {d} publishes a null MX (it takes no mail)"),
                publish,
            ));
        }
        Answer::Found(v) => {
            if let Some((p, _)) = v.iter().find(|(_, h)| h == me) {
                out.push(ok(format!("DNS: MX of {d} → {me} (preference {p})")));
                return;
            }
            for (p, h) in &v {
                let addrs = dns.ips(h).await.found().unwrap_or_default();
                if addrs.iter().any(|a| mine.contains(a)) {
                    out.push(ok(format!(
                        "DNS: MX of {d} → {h} (preference {p}), an address of {me}"
                    )));
                    return;
                }
            }
            let hosts: Vec<&str> = v.iter().map(|(_, h)| h.as_str()).collect();
            out.push(fail(
                format!(
                    "DNS: MX of {d} points at {}, not at this host ({me})",
                    hosts.join(", ")
                ),
                format!("{publish} (and remove the others)"),
            ));
        }
        Answer::NoData => {
            let a = dns.ips(d).await.found().unwrap_or_default();
            if a.iter().any(|x| mine.contains(x)) {
                out.push(warn(
                    format!("DNS: {d} has no MX; mail goes to its address, which is this host's"),
                    publish,
                ));
            } else {
                out.push(fail(format!("DNS: {d} has no MX record"), publish));
            }
        }
        Answer::NxDomain => out.push(fail(
            format!("DNS: {d} does not exist"),
            format!("register it, then {publish} and the records below"),
        )),
        Answer::Error(e) => out.push(warn(
            format!("DNS: cannot look up the MX of {d}: {e}"),
            resolver_fix(),
        )),
    }
}

async fn check_spf(dns: &Dns, d: &str, me: &str, mine: &[IpAddr], out: &mut Vec<Item>) {
    let publish = format!("publish: {d}. IN TXT \"v=spf1 mx -all\"");
    // The record is looked up to be shown; ferry_auth::spf evaluates it (as a receiver
    // would: include:, redirect=, macros, the lookup limits).
    let records: Vec<String> = match dns.txt(d).await {
        Answer::Found(v) => v.into_iter().filter(|t| spf::is_spf_record(t)).collect(),
        Answer::Error(e) => {
            return out.push(warn(
                format!("DNS: cannot look up the SPF record of {d}: {e}"),
                resolver_fix(),
            ));
        }
        _ => Vec::new(),
    };
    let rec = match records.as_slice() {
        [] => {
            return out.push(warn(
                format!(
                    "DNS: {d} has no SPF record (receivers cannot tell its mail from forgeries)"
                ),
                publish,
            ));
        }
        [one] => one,
        many => {
            return out.push(fail(
                format!(
                    "DNS: {d} has {} SPF records (a permanent error for receivers)",
                    many.len()
                ),
                format!("keep one: {publish}"),
            ));
        }
    };
    if mine.is_empty() {
        return out.push(warn(
            format!("DNS: SPF of {d} not evaluated: me has no address"),
            "publish the A record of me first",
        ));
    }
    let sender = format!("postmaster@{d}");
    let mut worst: Option<Item> = None;
    for ip in mine {
        let a = spf::evaluate(dns.resolver(), *ip, me, &sender, me).await;
        let add = || format!("{publish}, or add {}", ip_term(*ip));
        let item = match a.result() {
            SpfResult::Pass => ok(format!("DNS: SPF of {d} authorises {ip}: \"{rec}\"")),
            SpfResult::Fail => fail(
                format!("DNS: SPF of {d} does not authorise {ip}: \"{rec}\""),
                add(),
            ),
            SpfResult::SoftFail => {
                warn(format!("DNS: SPF of {d} soft-fails {ip}: \"{rec}\""), add())
            }
            SpfResult::Neutral => warn(
                format!("DNS: SPF of {d} is neutral about {ip}: \"{rec}\""),
                add(),
            ),
            SpfResult::PermError => fail(
                format!(
                    "DNS: SPF of {d} is a permerror for receivers ({}): \"{rec}\"",
                    a.explanation
                ),
                format!("correct it, e.g. {publish}"),
            ),
            SpfResult::TempError | SpfResult::None => warn(
                format!("DNS: SPF of {d} not evaluated for {ip}: {}", a.explanation),
                resolver_fix(),
            ),
        };
        if worst.as_ref().is_none_or(|w| item.level > w.level) {
            worst = Some(item);
        }
    }
    out.extend(worst);
}

fn ip_term(ip: IpAddr) -> String {
    if ip.is_ipv4() {
        format!("ip4:{ip}")
    } else {
        format!("ip6:{ip}")
    }
}

async fn check_dmarc(dns: &Dns, d: &str, out: &mut Vec<Item>) {
    let publish =
        format!("publish: _dmarc.{d}. IN TXT \"v=DMARC1; p=none; rua=mailto:postmaster@{d}\"");
    let recs: Vec<String> = match dns.txt(&format!("_dmarc.{d}")).await {
        Answer::Found(v) => v
            .into_iter()
            .filter(|t| t.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
            .collect(),
        Answer::Error(e) => {
            return out.push(warn(
                format!("DNS: cannot look up the DMARC record of {d}: {e}"),
                resolver_fix(),
            ));
        }
        _ => Vec::new(),
    };
    match recs.as_slice() {
        [] => out.push(warn(format!("DNS: {d} has no DMARC record"), publish)),
        [one] => {
            let p = one
                .split(';')
                .map(str::trim)
                .find_map(|t| t.strip_prefix("p="))
                .unwrap_or("?")
                .to_string();
            out.push(ok(format!("DNS: DMARC of {d}: p={p}")));
        }
        many => out.push(fail(
            format!(
                "DNS: {d} has {} DMARC records (receivers ignore them all)",
                many.len()
            ),
            format!("keep one: {publish}"),
        )),
    }
}

async fn check_ptr(dns: &Dns, me: &str, mine: &[IpAddr], out: &mut Vec<Item>) {
    let fix =
        |ip: &IpAddr| format!("ask whoever runs {ip} (your provider) to set its PTR to {me}.");
    for ip in mine {
        match dns.ptr(*ip).await {
            Answer::Found(names) if names.iter().any(|n| n == me) => {
                out.push(ok(format!("DNS: PTR of {ip} → {me}")))
            }
            Answer::Found(names) => out.push(warn(
                format!("DNS: PTR of {ip} is {}, not {me}", names.join(", ")),
                fix(ip),
            )),
            Answer::NoData | Answer::NxDomain => out.push(fail(
                format!("DNS: {ip} has no PTR record (many receivers refuse mail from it)"),
                fix(ip),
            )),
            Answer::Error(e) => out.push(warn(
                format!("DNS: cannot look up the PTR of {ip}: {e}"),
                resolver_fix(),
            )),
        }
    }
}

async fn check_all(dns: &Dns, root: &Root, cfg: &Config, out: &mut Vec<Item>) {
    let me = cfg.me.as_str();
    let Some(mine) = check_me(dns, me, out).await else {
        return;
    };
    for d in cfg.locals.iter().filter(|d| *d != me && d.contains('.')) {
        check_mx(dns, d, me, &mine, out).await;
        check_spf(dns, d, me, &mine, out).await;
        check_dmarc(dns, d, out).await;
    }
    check_ptr(dns, me, &mine, out).await;
    crate::dkim::dns_items(dns, root, out).await;
}

/// Every host named in smtproutes must resolve, or every delivery routed to it is deferred.
async fn check_routes(dns: &Dns, cfg: &Config, out: &mut Vec<Item>) {
    for r in cfg.smtproutes.iter().filter(|r| !r.host.starts_with('[')) {
        let what = if r.domain.is_empty() {
            "every other domain".to_string()
        } else {
            r.domain.clone()
        };
        match dns.ips(&r.host).await {
            Answer::Found(v) => out.push(ok(format!(
                "DNS: smtproutes host {} (for {what}) has address {}",
                r.host,
                ip_list(&v)
            ))),
            Answer::NoData | Answer::NxDomain => out.push(fail(
                format!(
                    "DNS: smtproutes host {} (for {what}) has no A or AAAA record: its mail is deferred",
                    r.host
                ),
                "correct control/smtproutes (an address may be given bare, domain:192.0.2.1:25, or as [2001:db8::1]:25)",
            )),
            Answer::Error(e) => out.push(warn(
                format!(
                    "DNS: smtproutes host {} (for {what}) not checked: {e}",
                    r.host
                ),
                resolver_fix(),
            )),
        }
    }
}

/// Every DNS verdict for this configuration.
pub fn check(root: &Root, cfg: &Config) -> Vec<Item> {
    let demo = !cfg.me.contains('.');
    let demo_item = || {
        warn(
            format!("DNS: not checked: me is {:?} (a demo or test root)", cfg.me),
            "ferryctl setup DOMAIN gives this host a real name",
        )
    };
    if demo && cfg.smtproutes.is_empty() {
        return vec![demo_item()];
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![warn(
                format!("DNS: not checked: cannot start the resolver: {e}"),
                "run ferryctl check again",
            )];
        }
    };
    rt.block_on(async {
        let dns = match Dns::new(cfg) {
            Ok(d) => d,
            Err(e) => return vec![warn(format!("DNS: not checked: {e}"), resolver_fix())],
        };
        let mut out = Vec::new();
        if demo {
            out.push(demo_item());
        }
        let all = async {
            check_routes(&dns, cfg, &mut out).await;
            if !demo {
                check_all(&dns, root, cfg, &mut out).await;
            }
        };
        if tokio::time::timeout(OVERALL, all).await.is_err() {
            out.push(warn(
                format!(
                    "DNS: the checks did not finish within {} s",
                    OVERALL.as_secs()
                ),
                resolver_fix(),
            ));
        }
        out
    })
}
