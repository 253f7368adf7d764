//! The DNS resolver of ferry: hickory-resolver over tokio (it has no blocking interface), asking
//! the name servers of `control/resolvconf` (ip:port each, so that tests can use a server on a
//! loopback port) or those of /etc/resolv.conf. Names are always asked as given (ndots 0) and
//! /etc/hosts is not read: mail routing follows the DNS only.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::net::SocketAddr;
use std::time::Duration;

/// A resolver for `nameservers` (empty: /etc/resolv.conf), each query waiting `timeout` and
/// tried twice.
pub fn resolver(nameservers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.ndots = 0;
    o.timeout = timeout;
    o.attempts = 2;
    o.use_hosts_file = ResolveHosts::Never;
    // Answers are kept for their TTL: the SPF, DKIM and DMARC records of busy senders, MX.
    o.cache_size = 4096;
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}
