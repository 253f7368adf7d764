//! `ferryctl spf IP HELO SENDER`: evaluates SPF as smtpd would for a client at IP that said
//! HELO and MAIL FROM:<SENDER> (empty or `<>`: the null sender, then the HELO name is
//! evaluated), through the name servers of control/resolvconf (else /etc/resolv.conf).
//! Prints the result word on the first line, then the explanation. Exit 0 whatever the
//! result; 2 for bad arguments.

use crate::{problem, usage};
use anyhow::Result;
use ferry_common::config::Config;
use ferry_common::root::Root;
use std::net::IpAddr;
use std::time::Duration;

pub fn run(root: &Root, ip: &str, helo: &str, sender: &str) -> Result<Vec<String>> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| usage(format!("{ip:?} is not an IP address")))?;
    if helo.trim().is_empty() {
        return Err(usage(
            "HELO is empty: give the name the client said HELO with",
        ));
    }
    if sender.len() > 1000 || sender.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(usage(format!("{sender:?} is not an address")));
    }
    let sender = sender
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(sender);
    let cfg = Config::load(root).map_err(|e| problem(format!("{e}")))?;
    let resolver = ferry_dns::resolver(&cfg.resolvconf, Duration::from_secs(3)).map_err(problem)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let a = rt.block_on(ferry_auth::spf::evaluate(
        &resolver, ip, helo, sender, &cfg.me,
    ));
    Ok(vec![a.word().to_string(), a.explanation])
}
